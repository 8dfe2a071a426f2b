"""Candidate-generation ablation for the anonymous ranker (issue 3: "candidate generation beyond raw co-occurrence").

Store-free setting exactly as ``benchmarks/anon_experiments.py`` (``store_id``
dropped from the lines before anything else, the 5 store features left out of
the columns; same data loading, label pool and test lists): full Complete
Journey, split 2017-10-30, the protocol's 35,236 test queries (3,000 test
baskets, seed 0), labels from weeks 41-44 with statistics from weeks 1-40, a
pool of 50,000 label queries (seed 1000) from which each seed draws 40,000,
80 training / 100 test candidates (the first 80 of the 100-long list, as
``backtest.fit_rankers``), 2 epochs, one anonymous ranker per (variant, seed).
Only the candidate generator (:func:`bundling_ml.ranking.anchor_candidates`)
changes between variants (:data:`VARIANTS`), in training and in testing:

* ``default``: top-50 count ∪ top-30 decayed Jaccard ∪ 12 recently popular of
  the anchor's category ∪ 4 from each of 3 related categories (category-pair
  lift) ∪ recent-popularity back-fill;
* ``count_only``: top-100 by co-purchase count, recent-popularity back-fill
  (raw co-occurrence candidate generation);
* ``no_jaccard``: default without the Jaccard part (count takes its 30 slots: top-80 count);
* ``no_own_category``: default without the anchor's own category's popular products;
* ``no_related``: default without the related categories;
* ``no_category`` (follow-up): default without both category parts (count 50 ∪ Jaccard 30 ∪ back-fill).

Per variant it reports the candidate lists' recall on the test queries
(share of queries with >= 1 truth item in the 100 candidates; mean share of a
query's truth items in the list; oracle NDCG@10 = the truth items ranked
first), the same on cold-start anchors (< 5 training baskets, 1,916 queries),
the label lists' recall@80 (lists without a positive are dropped from
training), and the model's HR@10 / NDCG@10 (all queries and cold-start) per seed.
The co-occurrence count baseline (0.1349) is computed in the same run as a
sanity check.

``--phase lgbm`` is a diagnostic: a LightGBM LambdaMART ranker
(``lgb.train`` with ``objective="lambdarank"``, the native API of
``lgb.LGBMRanker(objective="lambdarank")``, which would also need scikit-learn) trained on a variant's exact label
lists (the same 40,000 queries per seed, lists without a positive dropped, a
10 % validation split of lists for early stopping, chosen as in
``rk.fit_listwise``) with the flat pair features the Keras ranker gets plus
the 8 attribute codes (anchor / candidate department, category, product_type,
brand) as categorical features, query groups = the lists; it scores the same
test lists. Needs ``pip install -r benchmarks/requirements.txt`` (lightgbm).

Run (the cache is ~1 GiB per variant):
``.venv/bin/python benchmarks/candidate_ablation.py --phase prep --cache /tmp/cand-cache``
then, one process per variant (keeps the RSS low),
``... --phase run --variants default --seeds 0,1 --out /tmp/cand-cache/results.jsonl``
(the extra seeds 2-5 and the crossed rows: ``--seeds 2,3,4,5``;
``--variants default --test-variant count_only``), and
``... --phase lgbm --variants default --seeds 0,1 --out ...`` (``--codes
categorical|numeric|none``, ``--min-data-per-group 2000 --cat-l2 100``);
``--phase report --out FILE1,FILE2`` prints the markdown tables.

Results (docs/quality.md, "Candidate generation ablation" and "Gradient-boosted
trees (LambdaMART) diagnostic"; co-occurrence count 0.1349): default NDCG@10
0.1455 / 0.1460 (seeds 0 / 1, = anon_experiments' baseline), count only
0.1416 / 0.1445 (6-seed mean -0.0014 +- 0.0006), without Jaccard -0.0009,
without own-category or related-category candidates +0.0006 / +0.0007
overall and +0.003 on cold-start anchors. Every part beyond raw co-occurrence
lowers recall@100 (default 0.829, count only 0.835); the Jaccard part helps
as training lists, not as test-time recall (crossed train / test runs).
LambdaMART on the same features: 0.1452 / 0.1460 (codes numeric), 0.1426 /
0.1423 (codes categorical): the features, not the network, limit the model.
Cost: prep 122 s / 3.4 GiB for 5 variants, run 35-40 s per variant and 2
seeds / 3.7 GiB, LambdaMART 1-7 min per seed / 1.8 GiB.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import anon_experiments as ax  # noqa: E402  (same store-free setup, cache helpers, log)
from bundling_ml import backtest as bt  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402
from bundling_ml.candidates import candidate_companions  # noqa: E402
from bundling_ml.data import Queries  # noqa: E402
from bundling_ml.evaluation import hits_matrix, hr_ndcg  # noqa: E402

SPLIT = ax.SPLIT
LABEL_WEEKS = 4
POOL = 50_000
TOTAL = 40_000
#: variant name -> keyword arguments of rk.anchor_candidates. "default" is the
#: generator this ablation measured (with 3 related categories); the product's
#: default is now "no_related" (rk.anchor_candidates n_related=0), chosen from
#: this ablation and confirmed on the full store-aware backtest (docs/quality.md).
VARIANTS = {
    "default": dict(n_related=3),
    "count_only": dict(n_count=100, n_jaccard=0, n_category=0),
    "no_jaccard": dict(n_count=80, n_jaccard=0, n_related=3),
    "no_own_category": dict(own_category=False, n_related=3),
    "no_related": dict(n_related=0),
    # follow-up (not in the list): neither category part, count 50 + Jaccard 30 + back-fill
    "no_category": dict(n_category=0),
}
X_KEYS = ax.X_KEYS
CAT_KEYS = tuple(k for k in X_KEYS if k not in ("pair", "bias"))
log = ax.log


def list_quality(queries: Queries, cands_q: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Recall of per-query candidate lists ``cands_q`` (n_queries, M): share of queries with
    >= 1 truth item, mean share of the truth in the list, oracle NDCG@10 (truth first)."""
    hits = hits_matrix(queries, cands_q)
    ts = queries.truth_sizes()
    if mask is not None:
        hits, ts = hits[mask], ts[mask]
    n_in = hits.sum(1)
    oracle = np.arange(bt.K)[None, :] < n_in[:, None]
    return {"recall": float((n_in > 0).mean()), "truth_share": float((n_in / ts).mean()),
            "oracle_ndcg@10": hr_ndcg(oracle, ts, bt.K)[1], "mean_len": float((cands_q >= 0).sum(1).mean())}


def prep(cache: Path, variants):
    train, test, P, pidx, vocab, table, promotions = ax.setup()
    cols = rk.feature_columns(ax.COLS_NAMES)
    log(f"loaded: {len(train):,} train lines, {len(test):,} test lines, {len(pidx):,} products")
    info = json.loads((cache / "prep.json").read_text()) if (cache / "prep.json").exists() else {}
    # label lists: window weeks 41-44, statistics weeks 1-40 (as anon_experiments window 0)
    lab_start = SPLIT - pd.Timedelta(weeks=LABEL_WEEKS)
    feat, lab, ctx, q, sel, anchors, rows, times, weeks, J, uniq, inv = ax.label_pool(train, pidx, table, P, promotions, lab_start, SPLIT, POOL, 1000)
    for v in variants:
        t = time.perf_counter()
        cands = rk.anchor_candidates(ctx, uniq, bt.M_TEST, J=J, **VARIANTS[v])[inv][:, :bt.M_TRAIN]
        x = rk.list_inputs(ctx, anchors, cands, None, cols, weeks, times)
        y = rk.list_labels(q.baskets, rows, cands)
        ax.save(cache, f"lab_{v}", {**{k: x[k] for k in X_KEYS}, "y": y})
        info.setdefault(v, {})["label_recall@80"] = float((y.sum(1) > 0).mean())
        info[v]["label_positives_per_list"] = float(y.sum(1).mean())
        log(f"label lists {v}: {len(sel):,} of {q.n_queries:,} queries, recall@80 {(y.sum(1) > 0).mean():.4f} ({time.perf_counter() - t:.0f} s)")
        del x, y, cands
    del ctx, J, q, feat, lab
    # test lists on the whole training window
    ctx = rk.attach_promotions(rk.build_context(train, pidx, table, P, end=SPLIT), promotions)
    queries, qtimes, weeks, nw_first, nw_inv, uniq, inv = ax.protocol_test_lists(ctx, test, pidx)
    nw_anchor = queries.anchor[nw_first]
    cold = ctx.S.item_counts[queries.anchor] < bt.COLD_MAX_BASKETS
    J = rk.decayed_jaccard_matrix(ctx)
    count = candidate_companions(ctx.S, uniq, n_total=bt.K, n_cooc=bt.K, n_category=0)[inv]
    r = bt._row("cooccurrence_count", queries, count, 0.0)
    rc = bt._row("cooccurrence_count", queries, count, 0.0, cold)
    info["count"] = {"hr@10": r["hr@10"], "ndcg@10": r["ndcg@10"], "cold_hr@10": rc["hr@10"], "cold_ndcg@10": rc["ndcg@10"],
                     "queries": r["queries"], "cold_queries": int(cold.sum())}
    sp.save_npz(cache / "test_baskets.npz", queries.baskets)
    ax.save(cache, "test", {"query_basket": queries.query_basket, "anchor": queries.anchor, "inv": nw_inv, "cold": cold})
    log(f"test: {queries.n_queries:,} queries ({int(cold.sum()):,} cold), {len(nw_first):,} lists; count NDCG@10 {r['ndcg@10']:.4f} "
        f"HR@10 {r['hr@10']:.4f}, cold NDCG@10 {rc['ndcg@10']:.4f}")
    for v in variants:
        t = time.perf_counter()
        cand_u = rk.anchor_candidates(ctx, uniq, bt.M_TEST, J=J, **VARIANTS[v])
        info[v]["test"] = list_quality(queries, cand_u[inv])
        info[v]["test_cold"] = list_quality(queries, cand_u[inv], cold)
        nw_cands = cand_u[np.searchsorted(uniq, nw_anchor)]
        x = rk.list_inputs(ctx, nw_anchor, nw_cands, None, cols, weeks[nw_first], qtimes[nw_first])
        ax.save(cache, f"test_{v}", {**{k: x[k] for k in X_KEYS}, "cands": nw_cands})
        log(f"test lists {v}: {info[v]['test']} cold {info[v]['test_cold']} ({time.perf_counter() - t:.0f} s)")
        del x, nw_cands, cand_u
        (cache / "prep.json").write_text(json.dumps(info, indent=1))
    (cache / "prep.json").write_text(json.dumps(info, indent=1))


def load_test(cache: Path):
    t = ax.load(cache, "test", ("query_basket", "anchor", "inv", "cold"))
    queries = Queries(baskets=sp.load_npz(cache / "test_baskets.npz").tocsr(), basket_ids=None, query_basket=t["query_basket"], anchor=t["anchor"])
    if queries.n_queries != 35_236:
        raise ValueError(f"{queries.n_queries} test queries, expected the protocol's 35,236")
    return queries, t["inv"], t["cold"].astype(bool)


def draw_labels(cache: Path, v: str, seed: int, keys=X_KEYS):
    """The seed's 40,000 label lists of variant ``v`` (same rows as anon_experiments' window-0 draw)."""
    pool = ax.load(cache, f"lab_{v}", tuple(keys) + ("y",), mmap=True)
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(len(pool["y"]), size=TOTAL, replace=False))
    x = {k: np.asarray(pool[k][sel]) for k in keys}
    return x, np.asarray(pool["y"][sel])


def evaluate(name, v, seed, queries, inv, cold, cands, s_n, extra: dict) -> dict:
    recs = rk.top_k(cands, s_n, bt.K)[0][inv]
    r = bt._row(v, queries, recs, 0.0)
    rc = bt._row(v, queries, recs, 0.0, cold)
    res = {"model": name, "variant": v, "seed": seed, "hr@10": r["hr@10"], "ndcg@10": r["ndcg@10"], "cold_hr@10": rc["hr@10"],
           "cold_ndcg@10": rc["ndcg@10"], "queries": r["queries"], "cold_queries": rc["queries"], **extra}
    log(f"{name} {v:<16} seed {seed}: HR@10 {r['hr@10']:.4f}  NDCG@10 {r['ndcg@10']:.4f}  cold HR@10 {rc['hr@10']:.4f} "
        f"NDCG@10 {rc['ndcg@10']:.4f}  {extra}")
    return res


def run(cache: Path, variants, seeds, out_json=None, test_variant=None):
    """Train one Keras ranker per (variant, seed) on the variant's label lists and score the
    variant's test lists (or ``test_variant``'s: the same model on another generator's lists)."""
    import keras

    _, _, P, pidx, vocab, table, _ = ax.setup_light()
    queries, inv, cold = load_test(cache)
    results = []
    for v in variants:
        tv = test_variant or v
        test = ax.load(cache, f"test_{tv}", X_KEYS + ("cands",), mmap=True)
        for seed in seeds:
            t = time.perf_counter()
            x, y = draw_labels(cache, v, seed)
            n_lists = int((y.sum(1) > 0).sum())
            model, hist = rk.fit_listwise(vocab, x, y, epochs=2, seed=seed, name=f"r_{seed}")
            del x, y
            t_fit = time.perf_counter() - t
            s_n = ax.predict_cached(model, test, X_KEYS)
            res = evaluate("keras", v, seed, queries, inv, cold, np.asarray(test["cands"]), s_n,
                           {"test_variant": tv, "train_lists": n_lists, "fit_s": round(t_fit, 1), "total_s": round(time.perf_counter() - t, 1),
                            "val_loss": hist["val_loss"]})
            results.append(res)
            ax.append_json(out_json, res)
            del model
            keras.backend.clear_session()
    return results


def flat_lists(x: dict, keep_rows=None):
    """(n * M, F + 8) float32 flat features: the pair features then the 8 attribute codes; and the validity mask."""
    n, m, f = x["pair"].shape
    valid = (np.asarray(x["bias"]) == 0).ravel()
    cols = [np.asarray(x["pair"]).reshape(n * m, f)] + [np.asarray(x[k]).reshape(n * m, 1).astype(np.float32) for k in CAT_KEYS]
    return np.concatenate(cols, axis=1), valid


def run_lgbm(cache: Path, variants, seeds, out_json=None, n_estimators=2000, learning_rate=0.05, num_leaves=63, min_child_samples=100,
             threads=2, codes="categorical", min_data_per_group=100, cat_l2=10.0):
    """LambdaMART diagnostic (module docstring). ``codes``: the 8 attribute codes as
    "categorical" features, as plain "numeric" ids, or "none" (pair features only);
    ``min_data_per_group`` / ``cat_l2``: LightGBM's categorical-split regularisation."""
    import lightgbm as lgb

    queries, inv, cold = load_test(cache)
    feat_names = [f.replace("@", "_") for f in ax.COLS_NAMES] + list(CAT_KEYS)
    cat_idx = list(range(len(ax.COLS_NAMES), len(feat_names))) if codes == "categorical" else []
    n_cols = len(feat_names) if codes != "none" else len(ax.COLS_NAMES)
    feat_names = feat_names[:n_cols]
    results = []
    for v in variants:
        test = ax.load(cache, f"test_{v}", X_KEYS + ("cands",), mmap=True)
        for seed in seeds:
            t = time.perf_counter()
            x, y = draw_labels(cache, v, seed)
            keep = y.sum(1) > 0
            x = {k: a[keep] for k, a in x.items()}
            y = y[keep]
            n, m = y.shape
            # the same 10 % validation lists as rk.fit_listwise with this seed
            rng = np.random.default_rng(seed)
            is_val = np.zeros(n, bool)
            is_val[rng.choice(n, size=n // 10, replace=False)] = True
            F, valid = flat_lists(x)
            del x
            lab = y.ravel()
            lst = np.repeat(np.arange(n), m)
            parts = {}
            for nm, sel_l in (("train", ~is_val), ("val", is_val)):
                r = valid & sel_l[lst]
                parts[nm] = (F[r][:, :n_cols], lab[r], np.bincount(lst[r], minlength=n)[sel_l])
            del F
            Ft, yt, gt = parts["train"]
            Fv, yv, gv = parts["val"]
            params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": learning_rate, "num_leaves": num_leaves,
                      "min_data_in_leaf": min_child_samples, "bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.8,
                      "max_cat_to_onehot": 4, "cat_smooth": 10.0, "cat_l2": cat_l2, "min_data_per_group": min_data_per_group, "seed": seed, "num_threads": threads, "verbose": -1}
            dtrain = lgb.Dataset(Ft, yt.astype(np.int32), group=gt[gt > 0], feature_name=feat_names, categorical_feature=cat_idx)
            dval = lgb.Dataset(Fv, yv.astype(np.int32), group=gv[gv > 0], reference=dtrain)
            booster = lgb.train(params, dtrain, num_boost_round=n_estimators, valid_sets=[dval], valid_names=["val"],
                                callbacks=[lgb.early_stopping(50, verbose=False), lgb.log_evaluation(100)])
            del parts, Ft, Fv, dtrain, dval
            t_fit = time.perf_counter() - t
            scores = []
            nt = len(test["cands"])
            for s in range(0, nt, 4000):
                xi = {k: test[k][s:s + 4000] for k in X_KEYS}
                Fi, vi = flat_lists(xi)
                si = booster.predict(Fi[:, :n_cols], num_iteration=booster.best_iteration, num_threads=threads).astype(np.float32)
                si[~vi] = -1e9
                scores.append(si.reshape(len(xi["bias"]), -1))
            s_n = np.concatenate(scores)
            imp = dict(sorted(zip(feat_names, booster.feature_importance("gain").round(0).tolist()), key=lambda kv: -kv[1])[:10])
            tag = "lgbm" if (codes, min_data_per_group, cat_l2) == ("categorical", 100, 10.0) else f"lgbm[{codes},mdpg={min_data_per_group},cat_l2={cat_l2:g}]"
            res = evaluate(tag, v, seed, queries, inv, cold, np.asarray(test["cands"]), s_n,
                           {"best_iteration": int(booster.best_iteration), "val_ndcg@10": float(booster.best_score["val"]["ndcg@10"]),
                            "fit_s": round(t_fit, 1), "total_s": round(time.perf_counter() - t, 1), "top_gain": imp,
                            "params": {"num_leaves": num_leaves, "learning_rate": learning_rate, "min_child_samples": min_child_samples,
                                       "codes": codes, "min_data_per_group": min_data_per_group, "cat_l2": cat_l2}})
            results.append(res)
            ax.append_json(out_json, res)
    return results


def report(cache: Path, results_files):
    """Markdown tables from prep.json and the results JSON lines (mean over the seeds present)."""
    info = json.loads((cache / "prep.json").read_text())
    rows = []
    for fn in results_files:
        if Path(fn).exists():
            rows += [json.loads(line) for line in Path(fn).read_text().splitlines() if line.strip()]
    c = info["count"]
    print(f"co-occurrence count: HR@10 {c['hr@10']:.4f} NDCG@10 {c['ndcg@10']:.4f}, cold NDCG@10 {c['cold_ndcg@10']:.4f}\n")
    print("| variant | label recall@80 | recall@100 | truth share | oracle NDCG@10 | cold recall@100 | cold oracle NDCG@10 |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        if v in info and "test" in info[v]:
            t, tc = info[v]["test"], info[v]["test_cold"]
            print(f"| {v} | {info[v]['label_recall@80']:.4f} | {t['recall']:.4f} | {t['truth_share']:.4f} | {t['oracle_ndcg@10']:.4f} | "
                  f"{tc['recall']:.4f} | {tc['oracle_ndcg@10']:.4f} |")
    print()
    print("| model | train lists | test lists | seeds | HR@10 per seed | NDCG@10 per seed | mean NDCG@10 | cold NDCG@10 per seed | mean cold |")
    print("|---|---|---|---|---|---|---|---|---|")
    keys = []
    for r in rows:
        k = (r["model"], r["variant"], r.get("test_variant", r["variant"]))
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = sorted([r for r in rows if (r["model"], r["variant"], r.get("test_variant", r["variant"])) == k], key=lambda r: r["seed"])
        f = lambda key: " / ".join(f"{r[key]:.4f}" for r in rs)  # noqa: E731
        print(f"| {k[0]} | {k[1]} | {k[2]} | {','.join(str(r['seed']) for r in rs)} | {f('hr@10')} | {f('ndcg@10')} | "
              f"{np.mean([r['ndcg@10'] for r in rs]):.4f} | {f('cold_ndcg@10')} | {np.mean([r['cold_ndcg@10'] for r in rs]):.4f} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("prep", "run", "lgbm", "report"), required=True)
    ap.add_argument("--cache", default="/tmp/cand-cache")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default=None, help="append one JSON line per result")
    ap.add_argument("--test-variant", default=None, help="run: score this variant's test lists instead of each variant's own")
    ap.add_argument("--num-leaves", type=int, default=63)
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--min-child-samples", type=int, default=100)
    ap.add_argument("--codes", choices=("categorical", "numeric", "none"), default="categorical", help="lgbm: attribute codes as ...")
    ap.add_argument("--min-data-per-group", type=int, default=100)
    ap.add_argument("--cat-l2", type=float, default=10.0)
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.phase == "prep":
        prep(cache, variants)
    elif args.phase == "report":
        report(cache, args.out.split(",") if args.out else [cache / "results.jsonl"])
        return 0
    elif args.phase == "run":
        run(cache, variants, seeds, out_json=args.out, test_variant=args.test_variant)
    else:
        run_lgbm(cache, variants, seeds, out_json=args.out, num_leaves=args.num_leaves, learning_rate=args.learning_rate,
                 min_child_samples=args.min_child_samples, codes=args.codes, min_data_per_group=args.min_data_per_group, cat_l2=args.cat_l2)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
