"""Issue 3 targets measured with the ``recommend`` command itself (one command, Complete Journey).

Run::

    .venv/bin/python benchmarks/recommend_protocol.py [--split-date 2017-10-30] [--sample-baskets 3000] [--work-dir DIR]

What it does:

1. Builds the protocol queries of ``ARCHITECTURE.md`` ("Offline evaluation
   protocol"): Complete Journey converted with the import's rules, temporal
   split at ``--split-date``, ``--sample-baskets`` test baskets sampled with
   seed 0, every training-seen product of a basket an anchor once
   (``bundling_ml.data.build_queries``).
2. Writes them to one QUERIES.csv in three copies:

   * ``a:<i>`` anonymous, with the basket's time and store (``store_id``);
   * ``n:<i>`` anonymous, time only (no store: anchor + time, the
     protocol's product-page query);
   * ``k:<i>`` known shopper: the household id, time and store, only for
     households with training history (the personalised variant).

3. Runs ``python -m bundling_ml recommend --preset completejourney
   --train-until <split> --queries QUERIES.csv --k 10 --out RECS.csv`` as a
   subprocess (wall time and the child's peak RSS are reported).
4. Scores RECS.csv against each query's truth set (HR@10, NDCG@10 with
   ``bundling_ml.evaluation``) and the baselines on the same queries:
   popularity, co-occurrence count, the store-aware count
   (``ranking.store_count_rank``) and repeat + count.

Prints the table and writes ``benchmarks/results/recommend_protocol.json``.
Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bundling_ml import ranking as rk  # noqa: E402
from bundling_ml.backtest import basket_customers, basket_stores, basket_times  # noqa: E402
from bundling_ml.candidates import candidate_companions, popular_order  # noqa: E402
from bundling_ml.data import build_queries, completejourney_frames, prepare_lines, prepare_products, temporal_split  # noqa: E402
from bundling_ml.evaluation import hits_matrix, hr_ndcg  # noqa: E402
from bundling_ml.features import ProductTable, ProductVocab  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "recommend_protocol.json"
K = 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split-date", default="2017-10-30")
    ap.add_argument("--sample-baskets", type=int, default=3000)
    ap.add_argument("--work-dir", default=None, help="keep QUERIES.csv and RECS.csv here (default: a temporary directory)")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args()
    split = pd.Timestamp(args.split_date)

    lines, products = completejourney_frames()
    L = prepare_lines(lines)
    train, test = temporal_split(L, split)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    q = build_queries(test, pidx, sample_baskets=args.sample_baskets, seed=0)
    qb = q.query_basket
    cust = basket_customers(test, q.basket_ids)[qb]
    times = pd.DatetimeIndex(basket_times(test, q.basket_ids)[qb]).strftime("%Y-%m-%d %H:%M:%S")
    stores = basket_stores(test, q.basket_ids)[qb]
    anchors = pidx.to_numpy()[q.anchor]
    n = q.n_queries
    P = prepare_products(products, L)
    table = ProductTable.build(P, pidx, ProductVocab.fit(P, pidx))
    ctx = rk.build_context(train, pidx, table, P, end=split)
    users = rk.user_index(ctx, cust)
    known = users >= 0
    ids = np.arange(n).astype(str)
    frames = [
        pd.DataFrame({"query_id": np.char.add("a:", ids), "product_id": anchors, "time": times, "store_id": stores}),
        pd.DataFrame({"query_id": np.char.add("n:", ids), "product_id": anchors, "time": times, "store_id": ""}),
        pd.DataFrame({"query_id": np.char.add("k:", ids[known]), "product_id": anchors[known], "customer_id": cust[known],
                      "time": times[known], "store_id": stores[known]}),
    ]
    qdf = pd.concat(frames, ignore_index=True).fillna("")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        qpath, rpath = work / "QUERIES.csv", work / "RECS.csv"
        qdf.to_csv(qpath, index=False)
        cmd = [sys.executable, "-m", "bundling_ml", "recommend", "--preset", "completejourney", "--train-until", args.split_date,
               "--queries", str(qpath), "--k", str(K), "--out", str(rpath)]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
        recs = pd.read_csv(rpath, dtype=str, keep_default_na=False)

    recs["rank"] = recs["rank"].astype(int)
    recs = recs[recs["rank"] <= K]
    col = pidx.get_indexer(recs["product_id"])

    def rec_matrix(prefix: str) -> np.ndarray:
        m = np.full((n, K), -1, np.int64)
        sel = recs["query_id"].str.startswith(prefix).to_numpy()
        qi = recs["query_id"][sel].str.slice(len(prefix)).astype(int).to_numpy()
        m[qi, recs["rank"][sel].to_numpy() - 1] = col[sel]
        return m

    truth = q.truth_sizes()
    S = ctx.S
    uniq, inv = np.unique(q.anchor, return_inverse=True)
    head = popular_order(S)[: K + 1]
    count = candidate_companions(S, uniq, n_total=K, n_cooc=K, n_category=0)[inv]
    systems = {
        "recommend, anchor + time + store": (rec_matrix("a:"), None),
        "recommend, anchor + time (no store)": (rec_matrix("n:"), None),
        "store-aware count (baseline)": (rk.store_count_rank(ctx, q.anchor, rk.store_index(ctx, stores), K), None),
        "co-occurrence count (baseline)": (count, None),
        "popularity (baseline)": (np.stack([head[head != a][:K] for a in uniq])[inv], None),
        "recommend, known shopper (household id + time + store)": (rec_matrix("k:"), known),
        "repeat + count (baseline)": (rk.repeat_count_rank(ctx, q.anchor, users, count, K), known),
        "co-occurrence count, known-shopper queries": (count, known),
    }
    rows = []
    for name, (m, mask) in systems.items():
        h = hits_matrix(q, m)
        sel = np.ones(n, bool) if mask is None else mask
        hr, nd = hr_ndcg(h[sel], truth[sel], K)
        rows.append({"system": name, "hr@10": round(hr, 4), "ndcg@10": round(nd, 4), "queries": int(sel.sum())})
    by = {r["system"]: r["ndcg@10"] for r in rows}
    base = by["co-occurrence count (baseline)"]
    for r in rows[:5]:
        r["vs_count"] = round(r["ndcg@10"] / base, 3)
    for r in rows[5:]:
        r["vs_repeat_count"] = round(r["ndcg@10"] / by["repeat + count (baseline)"], 3)
    print(f"\nsplit {args.split_date}, {q.baskets.shape[0]} test baskets, {n} queries ({int(known.sum())} with a known shopper); "
          f"recommend wall time {wall:.0f} s, child peak RSS {peak_gib:.2f} GiB\n")
    print(f"{'system':<58} {'HR@10':>7} {'NDCG@10':>8} {'queries':>8}  ratio")
    for r in rows:
        ratio = r.get("vs_count", r.get("vs_repeat_count"))
        print(f"{r['system']:<58} {r['hr@10']:>7.4f} {r['ndcg@10']:>8.4f} {r['queries']:>8}  {ratio:.3f}x")
    out = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "split_date": args.split_date,
           "sample_baskets": args.sample_baskets, "queries": n, "known_shopper_queries": int(known.sum()),
           "recommend_wall_s": round(wall, 1), "recommend_peak_rss_gib": round(peak_gib, 2), "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
