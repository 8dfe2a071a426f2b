"""What is ordering a product page's live offers by the store-aware model score worth?

Offline measurement of :func:`bundling_ml.pipeline.score_offers_by_store` on the
Complete Journey data, with the temporal protocol of ``docs/quality.md``
(split 2017-10-30; nothing of the test period is seen by the model, the offers
or the scores):

1. full Complete Journey lines / products / promotions (as ``train_full.py``);
   training lines = cleaned lines before the split date, test = after;
2. ``pipeline.train_model`` on the training lines only (its own backtest uses a
   split date inside the training window, default: the last ~20 % of the
   training weeks), FUEL and COUPON excluded - or ``--artifact DIR`` reuses a
   trained artifact (``--save-artifact DIR`` keeps the one trained here);
3. "approved campaigns": ``pipeline.score_bundles`` on the training lines
   (max 5000 bundles), the best ``--offers N`` by score become the live offers
   (offer_id = row number 0..N-1, so offer_id order = score_bundles order);
4. ``pipeline.score_offers_by_store`` on the training lines (timed);
5. evaluation on ``--sample-baskets`` test baskets with a store (seed 0): every
   product p of a basket that belongs to >= 2 offers is a product-page view
   whose list is the offers holding p. An offer is an *attach* hit when the
   basket holds all its other items, an *any companion* hit when it holds at
   least one of them. Orderings compared (ties: lower offer_id first):

   * store-aware model: score of the (offer, p, basket's store) row, else the
     chain-wide (offer, p, "") row;
   * chain-wide model: the (offer, p, "") row;
   * co-purchase count: the offer's chain-wide co_purchase_count;
   * store confidence: co_purchase_count / anchor_baskets of the store row,
     else of the chain-wide row;
   * campaign order (offer_id ascending: today's storefront, all offers at 0 %);
   * random order (expected value over 200 shuffles per view, seed 0).

   Metrics over the views with >= 1 hit: HR@1, MRR, NDCG over the whole list
   (binary gains). A basket bootstrap (1000 resamples, seed 0) gives 95 %
   intervals of store-aware minus chain-wide HR@1 and NDCG.

6. ordering rules a storefront can compute from the rows
   ``score_offers_by_store`` returns (each falls back, per offer, to the
   chain-wide row when the store has none; chain_conf = chain-wide
   co_purchase_count / anchor_baskets):

   * chain confidence: chain_conf alone (no store);
   * shrunk store confidence, k in 2, 5, 10, 20, 50:
     (store co_purchase_count + k * chain_conf) / (store anchor_baskets + k);
     k = 10 is the storefront's order (``OfferStoreScore.attach_rate``, the
     ``attach_rate`` column of ``score_offers_by_store``; the storefront breaks
     ties by the chain-wide model score, this benchmark by offer_id);
   * chain-wide model score x (shrunk store confidence k=10 / chain_conf)
     (ratio 1 where chain_conf is 0);
   * rank average: mean of the chain-wide model rank and the shrunk k=10 rank
     within the page's list (average ranks; ties: higher chain-wide model
     score, then lower offer_id).

   Every rule (and the orderings of 5) is reported on all pages, on all pages
   but the hub page (the page with the most offers), and on pages with 2-10
   offers, with a basket bootstrap (1000 resamples, seed 0, the same
   resamples for every rule) of each rule minus the chain-wide model - on the
   first sample and on a second, disjoint sample of test baskets with a store
   (``--second-sample-baskets``: ``rest`` = every test basket not in the
   first, the default; ``N`` drawn with ``--second-seed``; ``none``). Choosing
   k (or a rule) on the first sample and reading its value off the second
   keeps the choice from being graded on the data it was picked on.

Run: ``.venv/bin/python benchmarks/store_offer_ranking.py [--offers 300] [--sample-baskets 3000]
[--second-sample-baskets rest|N|none] [--second-seed 1]
[--artifact DIR | --save-artifact DIR] [--json OUT] [--exclusion-check]``

Prints wall times and peak RSS (resource.getrusage maximum resident set size)
of each stage, the offers and score rows, then one markdown table per hit
definition and the bootstrap intervals, the most viewed pages, and the same
tables without the most viewed page (one hub product, e.g. bananas, can sit in
most offers and dominate the views), then the ordering-rule tables of 6 per
sample and segment. ``--exclusion-check`` also scores the
offers on the training lines with the model's excluded departments (FUEL,
COUPON) removed first - the statistics the model was trained on - and adds those
orderings and the largest score differences. ``--sample-baskets 0`` uses every
test basket with a store. A benchmark: nothing is asserted.
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

from bundling_ml import artifacts  # noqa: E402
from bundling_ml import pipeline  # noqa: E402
from bundling_ml.data import (  # noqa: E402
    completejourney_frames,
    completejourney_promotions,
    exclude_departments,
    prepare_lines,
    prepare_products,
    temporal_split,
)

EXCLUDED = ("FUEL", "COUPON")
ORDERINGS = ("store-aware model", "chain-wide model", "co-purchase count", "store confidence", "campaign order (offer_id)", "random (expected)")
SHRINK_KS = (2, 5, 10, 20, 50)
REF_K = 10  # the shrunk store confidence the combined orderings use
BASELINE = "chain-wide model"


def shrunk_name(k: int) -> str:
    return f"shrunk store conf k={k}"


REWEIGHTED = f"chain model x shrunk k={REF_K} / chain conf"
RANK_AVG = f"rank-avg(chain model, shrunk k={REF_K})"
# the ordering rules a storefront can compute from score_offers_by_store's rows (compared in every segment and sample)
RULES = ("chain-wide model", "store-aware model", "store confidence", "chain confidence", *(shrunk_name(k) for k in SHRINK_KS),
         REWEIGHTED, RANK_AVG, "co-purchase count", "campaign order (offer_id)", "random (expected)")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rank_metrics(keys: np.ndarray, offer_ids: np.ndarray, hits: np.ndarray) -> tuple[float, float, float]:
    """HR@1, reciprocal rank and NDCG (binary gains, whole list) of the list ordered by ``keys`` descending (ties: lower offer_id)."""
    order = np.lexsort((offer_ids, -keys))
    h = hits[order].astype(np.float64)
    first = int(np.argmax(h > 0))
    disc = 1.0 / np.log2(np.arange(2, len(h) + 2))
    ndcg = float((h * disc).sum() / disc[: int(h.sum())].sum())
    return float(h[0]), 1.0 / (first + 1), ndcg


def random_metrics(hits: np.ndarray, rng: np.random.Generator, n: int = 200) -> tuple[float, float, float]:
    """Expected HR@1 (exact), MRR and NDCG (mean over ``n`` shuffles) of a random order."""
    h = hits.astype(np.float64)
    m = len(h)
    disc = 1.0 / np.log2(np.arange(2, m + 2))
    idcg = disc[: int(h.sum())].sum()
    perm = np.argsort(rng.random((n, m)), axis=1)
    hp = h[perm]
    first = np.argmax(hp > 0, axis=1)
    return float(h.mean()), float((1.0 / (first + 1)).mean()), float(((hp * disc).sum(1) / idcg).mean())


def score_lookup(scores: pd.DataFrame) -> dict:
    """(offer_id int, page product, store) -> (score, co_purchase_count, anchor_baskets)."""
    return {(int(o), p, s): (sc, int(n), int(na)) for o, p, s, sc, n, na in scores[["offer_id", "product_id", "store_id", "score", "co_purchase_count", "anchor_baskets"]].itertuples(index=False, name=None)}


def rule_keys(offs: np.ndarray, chain: list, srow: list) -> dict:
    """Sort keys (descending) of the extra ordering rules of one page view.

    Args:
        offs: (m,) offer ids of the page's list.
        chain: m chain-wide rows (score, co_purchase_count, anchor_baskets).
        srow: m store rows of the same shape, None where the store has no row
            (then every rule falls back to the chain-wide row).

    Returns:
        name -> (m,) key: chain confidence; shrunk store confidence
        (n_store + k * chain_conf) / (n_store_anchor + k) for k in
        :data:`SHRINK_KS`; the chain-wide model score times (shrunk k=10 /
        chain confidence); the mean of the chain-wide model rank and the
        shrunk k=10 rank (average ranks, 1 = best; ties: higher chain-wide model
        score, then lower offer_id - the key is minus the list position).
    """
    c = np.asarray(chain, np.float64)
    has = np.array([r is not None for r in srow])
    s = np.array([r if r is not None else (np.nan, 0.0, 0.0) for r in srow], np.float64)
    c_conf = c[:, 1] / np.maximum(c[:, 2], 1.0)
    out = {"chain confidence": c_conf}
    for k in SHRINK_KS:
        out[shrunk_name(k)] = np.where(has, (s[:, 1] + k * c_conf) / (s[:, 2] + k), c_conf)
    ref = out[shrunk_name(REF_K)]
    ratio = np.divide(ref, c_conf, out=np.ones_like(ref), where=c_conf > 0)
    out[REWEIGHTED] = c[:, 0] * ratio
    avg = (rankdata(-c[:, 0], method="average") + rankdata(-ref, method="average")) / 2.0
    pos = np.empty(len(offs))
    pos[np.lexsort((offs, -c[:, 0], avg))] = np.arange(len(offs))
    out[RANK_AVG] = -pos
    return out


def evaluate(baskets: list, page_offers: dict, offer_items: dict, lookups: dict, seed: int = 0) -> dict:
    """Per page view: the list, the hits and each ordering's metrics.

    Args:
        baskets: [(basket_id, store_id, frozenset of products)].
        page_offers: page product -> sorted offer ids holding it (>= 2).
        offer_items: offer id -> tuple of items.
        lookups: name -> score_lookup dict; "main" is required.

    Returns:
        dict with "views" (list of per-view dicts) and counts.
    """
    rng = np.random.default_rng(seed)
    main = lookups["main"]
    views = []
    for bi, (bid, store, items) in enumerate(baskets):
        for p in sorted(items & page_offers.keys()):
            offs = np.asarray(page_offers[p], np.int64)
            attach = np.array([all(i in items for i in offer_items[o] if i != p) for o in offs])
            anyc = np.array([any(i in items for i in offer_items[o] if i != p) for o in offs])
            chain = [main[(o, p, "")] for o in offs.tolist()]
            srow = [main.get((o, p, store)) for o in offs.tolist()]
            has_store = srow[0] is not None
            keys = {
                "store-aware model": np.array([(s or c)[0] for s, c in zip(srow, chain)]),
                "chain-wide model": np.array([c[0] for c in chain]),
                "co-purchase count": np.array([float(c[1]) for c in chain]),
                "store confidence": np.array([(s or c)[1] / max((s or c)[2], 1) for s, c in zip(srow, chain)]),
                "campaign order (offer_id)": -offs.astype(np.float64),
            }
            keys.update(rule_keys(offs, chain, srow))
            for name, lk in lookups.items():
                if name == "main":
                    continue
                ch = [lk.get((o, p, "")) for o in offs.tolist()]
                st = [lk.get((o, p, store)) for o in offs.tolist()]
                if any(c is None for c in ch):
                    continue
                keys[f"store-aware model [{name}]"] = np.array([(s or c)[0] for s, c in zip(st, ch)])
                keys[f"chain-wide model [{name}]"] = np.array([c[0] for c in ch])
            v = {"basket": bi, "page": p, "n_offers": len(offs), "store_rows": has_store,
                 "store_order_differs": bool(np.any(np.lexsort((offs, -keys["store-aware model"])) != np.lexsort((offs, -keys["chain-wide model"]))))}
            for kind, hits in (("attach", attach), ("any", anyc)):
                v[f"{kind}_hits"] = int(hits.sum())
                if hits.any():
                    v[kind] = {name: rank_metrics(k, offs, hits) for name, k in keys.items()}
                    v[kind]["random (expected)"] = random_metrics(hits, rng)
            views.append(v)
    return {"views": views}


def summarise(views: list, kind: str) -> dict:
    """Mean HR@1 / MRR / NDCG per ordering over the views with a ``kind`` hit."""
    hv = [v for v in views if kind in v]
    out = {"views_with_hit": len(hv), "rows": {}}
    if not hv:
        return out
    for name in hv[0][kind]:
        vals = [v[kind][name] for v in hv if name in v[kind]]
        if not vals:
            continue
        a = np.asarray(vals)
        out["rows"][name] = {"hr@1": float(a[:, 0].mean()), "mrr": float(a[:, 1].mean()), "ndcg": float(a[:, 2].mean()), "views": len(vals)}
    out["store_rows_share"] = float(np.mean([v["store_rows"] for v in hv]))
    return out


class BasketBootstrap:
    """One set of basket resamples (multinomial weights over the sampled baskets) shared by every comparison of a sample.

    Baskets without a page view weigh in no comparison, so only the columns of
    ``cols`` (the baskets with views) are kept; drawn 100 resamples at a time
    (the same draws as one call of size ``n_boot``).
    """

    def __init__(self, n_baskets: int, cols, n_boot: int = 1000, seed: int = 0):
        rng = np.random.default_rng(seed)
        cols = np.asarray(sorted(set(cols)), np.int64)
        pv = np.full(n_baskets, 1.0 / n_baskets)
        chunks = [rng.multinomial(n_baskets, pv, size=min(100, n_boot - i))[:, cols] for i in range(0, n_boot, 100)]
        self.W = np.vstack(chunks).astype(np.float64) if chunks else np.zeros((0, len(cols)))
        self.col = {int(b): j for j, b in enumerate(cols)}
        self.n_boot = n_boot

    def diff(self, views: list, kind: str, a: str, b: str) -> dict:
        """95 % intervals of (a - b) for HR@1, MRR and NDCG over the views with a ``kind`` hit."""
        hv = [v for v in views if kind in v and a in v[kind] and b in v[kind]]
        if not hv:
            return {}
        m = len(self.col)
        cnt = np.zeros(m)
        sums = np.zeros((m, 3))
        for v in hv:
            j = self.col[v["basket"]]
            cnt[j] += 1
            sums[j] += np.subtract(v[kind][a], v[kind][b])
        den = self.W @ cnt
        ok = den > 0
        boot = (self.W @ sums)[ok] / den[ok, None]
        point = sums.sum(0) / cnt.sum()
        out = {}
        for j, name in enumerate(("hr@1", "mrr", "ndcg")):
            lo, hi = np.percentile(boot[:, j], [2.5, 97.5])
            out[name] = {"diff": float(point[j]), "lo": float(lo), "hi": float(hi)}
        out["views"] = int(cnt.sum())
        out["baskets_with_views"] = int((cnt > 0).sum())
        return out


def bootstrap_diff(views: list, kind: str, n_baskets: int, a: str, b: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % basket-bootstrap intervals of (a - b) for HR@1, MRR and NDCG over the views with a ``kind`` hit."""
    return BasketBootstrap(n_baskets, [v["basket"] for v in views], n_boot, seed).diff(views, kind, a, b)


def table(summary: dict) -> str:
    rows = ["| ordering | HR@1 | MRR | NDCG | views |", "|---|---|---|---|---|"]
    for name, r in summary["rows"].items():
        rows.append(f"| {name} | {r['hr@1']:.4f} | {r['mrr']:.4f} | {r['ndcg']:.4f} | {r['views']} |")
    return "\n".join(rows)


def segments(views: list, page_offers: dict, hub) -> dict:
    """The page-view subsets every rule is reported on: all pages, all but the hub page (most offers), pages with 2-10 offers."""
    return {
        "all pages": views,
        f"without hub page {hub} ({len(page_offers[hub])} offers)": [v for v in views if v["page"] != hub],
        "pages with 2-10 offers": [v for v in views if 2 <= v["n_offers"] <= 10],
    }


def rule_report(views: list, n_baskets: int, page_offers: dict, hub, seed: int = 0) -> dict:
    """segment -> kind -> summary (every ordering) and basket bootstrap of each rule minus the chain-wide model."""
    boot = BasketBootstrap(n_baskets, [v["basket"] for v in views], seed=seed)
    out = {}
    for seg, vs in segments(views, page_offers, hub).items():
        out[seg] = {"pages": len({v["page"] for v in vs}), "views": len(vs)}
        for kind in ("attach", "any"):
            summ = summarise(vs, kind)
            diffs = {name: boot.diff(vs, kind, name, BASELINE) for name in RULES if name != BASELINE and name in summ["rows"]}
            out[seg][kind] = {"summary": summ, "bootstrap_vs_chain_model": diffs}
    return out


def print_rule_report(title: str, rep: dict) -> None:
    fmt = lambda d, m: f"{d[m]['diff']:+.4f} [{d[m]['lo']:+.4f}, {d[m]['hi']:+.4f}]" if d else ""  # noqa: E731
    for seg, r in rep.items():
        a, y = r["attach"]["summary"], r["any"]["summary"]
        print(f"\n{title}, {seg}: {r['pages']} pages, {r['views']} views, {a['views_with_hit']} with an attach hit, {y['views_with_hit']} with an any-companion hit")
        print()
        print("| ordering | attach HR@1 | attach MRR | attach NDCG | any HR@1 | any MRR | any NDCG |")
        print("|---|---|---|---|---|---|---|")
        for name in RULES:
            ra, ry = a["rows"].get(name), y["rows"].get(name)
            cells = [f"{ra[m]:.4f}" if ra else "" for m in ("hr@1", "mrr", "ndcg")] + [f"{ry[m]:.4f}" if ry else "" for m in ("hr@1", "mrr", "ndcg")]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print(f"\nminus {BASELINE}, 95 % basket bootstrap (1000 resamples, seed 0):")
        print()
        print("| ordering | attach HR@1 | attach MRR | attach NDCG | any HR@1 | any NDCG |")
        print("|---|---|---|---|---|---|")
        for name in RULES:
            if name == BASELINE:
                continue
            da, dy = r["attach"]["bootstrap_vs_chain_model"].get(name), r["any"]["bootstrap_vs_chain_model"].get(name)
            print(f"| {name} | {fmt(da, 'hr@1')} | {fmt(da, 'mrr')} | {fmt(da, 'ndcg')} | {fmt(dy, 'hr@1')} | {fmt(dy, 'ndcg')} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split-date", default="2017-10-30", help="first test day")
    ap.add_argument("--train-split-date", default=None, help="train_model's own backtest split, inside the training window (default: its last ~20 %% of weeks)")
    ap.add_argument("--offers", type=int, default=300, help="live offers = the best N score_bundles rows")
    ap.add_argument("--max-bundles", type=int, default=5000)
    ap.add_argument("--min-store-baskets", type=int, default=5)
    ap.add_argument("--sample-baskets", type=int, default=3000, help="test baskets with a store (seed 0); 0 = all")
    ap.add_argument("--second-sample-baskets", default="rest",
                    help="a second, disjoint sample of test baskets with a store: 'rest' (all not in the first), N (seed --second-seed), or 'none'")
    ap.add_argument("--second-seed", type=int, default=1)
    ap.add_argument("--train-sample-baskets", type=int, default=3000, help="baskets of train_model's internal backtest")
    ap.add_argument("--artifact", default=None, help="reuse this trained artifact (skip training)")
    ap.add_argument("--save-artifact", default=None, help="write the trained artifact here")
    ap.add_argument("--exclusion-check", action="store_true", help="also score on lines without the model's excluded departments")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--households", type=int, default=0, help="keep only this many households (seed 0): a quick smoke run, not the benchmark")
    args = ap.parse_args()
    timings, rss = {}, {}
    split = pd.Timestamp(args.split_date)

    t0 = time.perf_counter()
    lines, products = completejourney_frames()
    promotions = completejourney_promotions()
    L = prepare_lines(lines)
    if args.households:
        hh = np.sort(L["customer_id"].dropna().unique())
        keep = np.random.default_rng(0).choice(hh, size=min(args.households, len(hh)), replace=False)
        L = L[L["customer_id"].isin(keep)].reset_index(drop=True)
    train, test = temporal_split(L, split)
    del lines
    timings["load"] = time.perf_counter() - t0
    rss["load"] = peak_rss_mib()
    print(f"loaded {len(L):,} clean lines ({len(train):,} train, {len(test):,} test), {len(products):,} products, "
          f"{len(promotions):,} promotion rows in {timings['load']:.1f} s")
    del L

    tmp = tempfile.TemporaryDirectory()
    if args.artifact:
        art = Path(args.artifact)
        meta = artifacts.load_metadata(art)
        last = pd.Timestamp(meta["data_window"]["last_line"])
        print(f"reusing artifact {art} (lines {meta['data_window']['first_line']} .. {last}, internal split {meta['data_window']['split_date']})")
        if last >= split:
            print(f"WARNING: the artifact saw lines on or after {split.date()} - the test period leaks into the model")
        timings["train"] = None
    else:
        out_dir = Path(args.save_artifact) if args.save_artifact else Path(tmp.name) / "model"
        t1 = time.perf_counter()
        res = pipeline.train_model(train, products, out_dir=out_dir, split_date=args.train_split_date, seed=0, promotions=promotions,
                                   excluded_departments=EXCLUDED, sample_baskets=args.train_sample_baskets)
        timings["train"] = time.perf_counter() - t1
        art, meta = res.artifact_dir, res.metadata
        print(f"train_model: {timings['train']:.1f} s (internal split {meta['data_window']['split_date']}, label_start {meta['data_window']['label_start']}); "
              f"internal backtest: " + ", ".join(f"{r['system']} NDCG@10 {r['ndcg@10']:.4f}" for r in res.metrics["rows"]))
    rss["train"] = peak_rss_mib()

    t2 = time.perf_counter()
    bundles = pipeline.score_bundles(art, train, products, excluded_departments=EXCLUDED, promotions=promotions, max_bundles=args.max_bundles)
    timings["score_bundles"] = time.perf_counter() - t2
    rss["score_bundles"] = peak_rss_mib()
    top = bundles.sort_values("score", ascending=False, kind="stable").head(args.offers).reset_index(drop=True)
    offers = pd.DataFrame({"offer_id": np.arange(len(top)), "items": top["items"].tolist()})
    offer_items = {int(o): tuple(it) for o, it in zip(offers["offer_id"], offers["items"])}
    n3 = int((offers["items"].map(len) == 3).sum())
    print(f"score_bundles: {len(bundles)} bundles in {timings['score_bundles']:.1f} s; offers: {len(offers)} ({len(offers) - n3} two-item, {n3} three-item), "
          f"score {top['score'].min():.3f}..{top['score'].max():.3f}")

    t3 = time.perf_counter()
    scores = pipeline.score_offers_by_store(art, train, products, offers, min_store_baskets=args.min_store_baskets, promotions=promotions)
    timings["score_offers_by_store"] = time.perf_counter() - t3
    rss["score_offers_by_store"] = peak_rss_mib()
    chain = scores[scores["store_id"] == ""]
    print(f"score_offers_by_store: {len(scores):,} rows ({len(chain):,} chain-wide, {len(scores) - len(chain):,} store rows, "
          f"{scores.loc[scores['store_id'] != '', 'store_id'].nunique()} stores, {chain['product_id'].nunique()} page products) "
          f"in {timings['score_offers_by_store']:.1f} s")

    lookups = {"main": score_lookup(scores)}
    check = {}
    if args.exclusion_check:
        excl = tuple(meta.get("excluded_departments", EXCLUDED))
        P = prepare_products(products, train)
        train_x = exclude_departments(train, P, excl)
        t4 = time.perf_counter()
        scores_x = pipeline.score_offers_by_store(art, train_x, products, offers, min_store_baskets=args.min_store_baskets, promotions=promotions)
        timings["score_offers_by_store_excluded"] = time.perf_counter() - t4
        lookups["excl"] = score_lookup(scores_x)
        m = scores.merge(scores_x, on=["offer_id", "product_id", "store_id"], how="outer", suffixes=("", "_x"), indicator=True)
        both = m[m["_merge"] == "both"]
        d = (both["score"] - both["score_x"]).abs()
        check = {"rows": len(scores), "rows_excluded": len(scores_x), "rows_only_in_one": int((m["_merge"] != "both").sum()),
                 "abs_score_diff_mean": float(d.mean()), "abs_score_diff_max": float(d.max()),
                 "abs_score_diff_chain_max": float(d[both["store_id"] == ""].max()),
                 "count_differs": int((both["co_purchase_count"] != both["co_purchase_count_x"]).sum()),
                 "lines_removed": int(len(train) - len(train_x)),
                 "baskets_removed": int(train["basket_id"].nunique() - train_x["basket_id"].nunique())}
        print(f"exclusion check: scoring on lines without {excl} ({check['lines_removed']:,} lines, {check['baskets_removed']:,} whole baskets fewer) "
              f"in {timings['score_offers_by_store_excluded']:.1f} s; |score difference| mean {check['abs_score_diff_mean']:.4f}, "
              f"max {check['abs_score_diff_max']:.4f} (chain-wide rows max {check['abs_score_diff_chain_max']:.4f}); rows only in one: {check['rows_only_in_one']}")

    # test baskets with a store
    t5 = time.perf_counter()
    tb = test[test["store_id"].notna()]
    groups = tb.groupby("basket_id", sort=True)
    items_of = groups["product_id"].agg(frozenset)
    store_of = groups["store_id"].first().astype(str)
    ids = items_of.index.to_numpy()
    if args.sample_baskets and args.sample_baskets < len(ids):
        ids = np.sort(np.random.default_rng(0).choice(ids, size=args.sample_baskets, replace=False))
    baskets = [(b, store_of[b], items_of[b]) for b in ids]
    rest_ids = np.setdiff1d(items_of.index.to_numpy(), ids)
    second = str(args.second_sample_baskets).strip().lower()
    if second in ("none", "0", "") or len(rest_ids) == 0:
        ids2 = rest_ids[:0]
    elif second == "rest":
        ids2 = rest_ids
    else:
        n2 = int(second)
        ids2 = np.sort(np.random.default_rng(args.second_seed).choice(rest_ids, size=min(n2, len(rest_ids)), replace=False))
    baskets2 = [(b, store_of[b], items_of[b]) for b in ids2]
    page_offers: dict = {}
    for o, p in chain[["offer_id", "product_id"]].itertuples(index=False, name=None):
        page_offers.setdefault(p, []).append(int(o))
    page_offers = {p: sorted(v) for p, v in page_offers.items() if len(v) >= 2}
    ev = evaluate(baskets, page_offers, offer_items, lookups)
    views = ev["views"]
    timings["evaluate"] = time.perf_counter() - t5
    # hub page = the page with the most offers (ties: most views in the first sample)
    n_views = pd.Series([v["page"] for v in views], dtype=object).value_counts()
    hub_rules = max(page_offers, key=lambda q: (len(page_offers[q]), int(n_views.get(q, 0))))
    t6 = time.perf_counter()
    rules = {"first sample": rule_report(views, len(baskets), page_offers, hub_rules)}
    timings["rules_first"] = time.perf_counter() - t6
    views2 = []
    if baskets2:
        t7 = time.perf_counter()
        views2 = evaluate(baskets2, page_offers, offer_items, lookups)["views"]
        rules["second sample"] = rule_report(views2, len(baskets2), page_offers, hub_rules)
        timings["evaluate_second"] = time.perf_counter() - t7
    summaries = {k: summarise(views, k) for k in ("attach", "any")}
    boots = {k: bootstrap_diff(views, k, len(baskets), "store-aware model", "chain-wide model") for k in ("attach", "any")}
    if args.exclusion_check:
        boots["attach [excl] store-aware vs store-aware"] = bootstrap_diff(views, "attach", len(baskets), "store-aware model [excl]", "store-aware model")
    counts = {
        "test_baskets_with_store": int(len(items_of)),
        "baskets_sampled": len(baskets),
        "pages_with_2plus_offers": len(page_offers),
        "page_views": len(views),
        "baskets_with_views": len({v["basket"] for v in views}),
        "mean_offers_per_view": float(np.mean([v["n_offers"] for v in views])) if views else 0.0,
        "views_with_attach_hit": summaries["attach"]["views_with_hit"],
        "views_with_any_hit": summaries["any"]["views_with_hit"],
        "store_rows_share": float(np.mean([v["store_rows"] for v in views])) if views else 0.0,
        "store_order_differs_share": float(np.mean([v["store_order_differs"] for v in views])) if views else 0.0,
    }

    print()
    print(f"Store offer ranking, Complete Journey, split {split.date()}, {args.offers} offers, {len(baskets)} test baskets with a store (seed 0)")
    print(f"page views (basket product on >= 2 offers): {counts['page_views']} in {counts['baskets_with_views']} baskets, "
          f"{counts['pages_with_2plus_offers']} product pages with >= 2 offers, {counts['mean_offers_per_view']:.2f} offers per view; "
          f"views whose store has its own rows: {counts['store_rows_share']:.1%}; store-aware order differs from chain-wide: {counts['store_order_differs_share']:.1%}")
    for kind, title in (("attach", "Attach hit (basket holds all the offer's other items)"), ("any", "Any-companion hit (basket holds >= 1 other item)")):
        s = summaries[kind]
        print(f"\n{title}: {s['views_with_hit']} views with a hit" + (f", {s['store_rows_share']:.1%} of them with store rows" if s["views_with_hit"] else ""))
        if s["rows"]:
            print()
            print(table(s))
        for name, b in boots.items():
            if b and name.split(" ")[0] == kind:
                label = "store-aware minus chain-wide" if name == kind else name
                print(f"\n{kind}: {label}, 95 % basket bootstrap (1000 resamples, {b['views']} views in {b['baskets_with_views']} baskets): "
                      + "; ".join(f"{m.upper()} {b[m]['diff']:+.4f} [{b[m]['lo']:+.4f}, {b[m]['hi']:+.4f}]" for m in ("hr@1", "mrr", "ndcg")))
    # one hub product (e.g. bananas) can sit in most offers: show how much of the result is that one page
    names = products.drop_duplicates("product_id").set_index("product_id")["name"]
    per_page = pd.Series([v["page"] for v in views], dtype=object).value_counts()
    print("\nmost viewed pages: " + "; ".join(f"{p} {names.get(p, '')!r}: {n} views, {len(page_offers[p])} offers" for p, n in per_page.head(5).items()))
    by_page = {"top_pages": [{"product_id": p, "name": str(names.get(p, "")), "views": int(n), "offers": len(page_offers[p])} for p, n in per_page.head(10).items()]}
    if len(per_page) > 1:
        hub = per_page.index[0]
        rest = [v for v in views if v["page"] != hub]
        for kind in ("attach", "any"):
            s_ = summarise(rest, kind)
            b_ = bootstrap_diff(rest, kind, len(baskets), "store-aware model", "chain-wide model")
            by_page[f"{kind}_without_hub"] = {"summary": s_, "bootstrap": b_}
            print(f"\n{kind} hits, views of pages other than {hub} {names.get(hub, '')!r}: {s_['views_with_hit']} views with a hit")
            if s_["rows"]:
                print()
                print(table(s_))
            if b_:
                print(f"\nstore-aware minus chain-wide (95 % basket bootstrap, {b_['views']} views in {b_['baskets_with_views']} baskets): "
                      + "; ".join(f"{m.upper()} {b_[m]['diff']:+.4f} [{b_[m]['lo']:+.4f}, {b_[m]['hi']:+.4f}]" for m in ("hr@1", "mrr", "ndcg")))
    # the ordering rules a storefront can compute from score_offers_by_store's rows, on both samples
    samples_desc = {"first sample": f"{len(baskets)} test baskets with a store (seed 0)",
                    "second sample": f"{len(baskets2)} other test baskets with a store ("
                                     + ("all not in the first" if second == "rest" else f"seed {args.second_seed}") + ", disjoint from the first)"}
    print(f"\n## Ordering rules (hub page = most offers: {hub_rules} {names.get(hub_rules, '')!r}, {len(page_offers[hub_rules])} offers)")
    for name, rep in rules.items():
        print(f"\n### {name}: {samples_desc[name]}")
        print_rule_report(name, rep)
    print()
    print("| stage | wall s | peak RSS MiB (process, so far) |")
    print("|---|---|---|")
    print(f"| load + clean + split | {timings['load']:.1f} | {rss['load']:.0f} |")
    t_train = "reused artifact" if timings["train"] is None else f"{timings['train']:.1f}"
    print(f"| train_model | {t_train} | {rss['train']:.0f} |")
    print(f"| score_bundles | {timings['score_bundles']:.1f} | {rss['score_bundles']:.0f} |")
    print(f"| score_offers_by_store | {timings['score_offers_by_store']:.1f} | {rss['score_offers_by_store']:.0f} |")
    if "score_offers_by_store_excluded" in timings:
        print(f"| score_offers_by_store (excluded lines) | {timings['score_offers_by_store_excluded']:.1f} | |")
    print(f"| evaluation + bootstrap | {timings['evaluate']:.1f} | {peak_rss_mib():.0f} |")
    print(f"| ordering rules, first sample (segments + bootstrap) | {timings['rules_first']:.1f} | |")
    if "evaluate_second" in timings:
        print(f"| second sample ({len(baskets2)} baskets): evaluation + rules | {timings['evaluate_second']:.1f} | {peak_rss_mib():.0f} |")
    if args.json:
        out = {"split_date": str(split.date()), "offers": len(offers), "artifact": str(art), "internal_split": meta["data_window"]["split_date"],
               "counts": counts, "summaries": summaries, "bootstrap": boots, "timings_s": timings, "peak_rss_mib": {**rss, "end": peak_rss_mib()},
               "exclusion_check": check, "score_rows": len(scores), "by_page": by_page,
               "rules": {"hub_page": hub_rules, "hub_offers": len(page_offers[hub_rules]), "samples": samples_desc,
                         "second_sample_baskets": len(baskets2), "second_sample_page_views": len(views2), **rules}}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
