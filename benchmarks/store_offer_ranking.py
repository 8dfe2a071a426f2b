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

Run: ``.venv/bin/python benchmarks/store_offer_ranking.py [--offers 300] [--sample-baskets 3000]
[--artifact DIR | --save-artifact DIR] [--json OUT] [--exclusion-check]``

Prints wall times and peak RSS (resource.getrusage maximum resident set size)
of each stage, the offers and score rows, then one markdown table per hit
definition and the bootstrap intervals, the most viewed pages, and the same
tables without the most viewed page (one hub product, e.g. bananas, can sit in
most offers and dominate the views). ``--exclusion-check`` also scores the
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
    return {(int(o), p, s): (sc, int(n), int(na)) for o, p, s, sc, n, na in scores[pipeline.OFFER_SCORE_COLUMNS].itertuples(index=False, name=None)}


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


def bootstrap_diff(views: list, kind: str, n_baskets: int, a: str, b: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % basket-bootstrap intervals of (a - b) for HR@1, MRR and NDCG over the views with a ``kind`` hit."""
    hv = [v for v in views if kind in v and a in v[kind] and b in v[kind]]
    if not hv:
        return {}
    cnt = np.zeros(n_baskets)
    sums = np.zeros((n_baskets, 3))
    for v in hv:
        cnt[v["basket"]] += 1
        sums[v["basket"]] += np.subtract(v[kind][a], v[kind][b])
    rng = np.random.default_rng(seed)
    W = rng.multinomial(n_baskets, np.full(n_baskets, 1.0 / n_baskets), size=n_boot).astype(np.float64)
    den = W @ cnt
    ok = den > 0
    boot = (W @ sums)[ok] / den[ok, None]
    point = sums.sum(0) / cnt.sum()
    out = {}
    for j, m in enumerate(("hr@1", "mrr", "ndcg")):
        lo, hi = np.percentile(boot[:, j], [2.5, 97.5])
        out[m] = {"diff": float(point[j]), "lo": float(lo), "hi": float(hi)}
    out["views"] = int(cnt.sum())
    out["baskets_with_views"] = int((cnt > 0).sum())
    return out


def table(summary: dict) -> str:
    rows = ["| ordering | HR@1 | MRR | NDCG | views |", "|---|---|---|---|---|"]
    for name, r in summary["rows"].items():
        rows.append(f"| {name} | {r['hr@1']:.4f} | {r['mrr']:.4f} | {r['ndcg']:.4f} | {r['views']} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split-date", default="2017-10-30", help="first test day")
    ap.add_argument("--train-split-date", default=None, help="train_model's own backtest split, inside the training window (default: its last ~20 %% of weeks)")
    ap.add_argument("--offers", type=int, default=300, help="live offers = the best N score_bundles rows")
    ap.add_argument("--max-bundles", type=int, default=5000)
    ap.add_argument("--min-store-baskets", type=int, default=5)
    ap.add_argument("--sample-baskets", type=int, default=3000, help="test baskets with a store (seed 0); 0 = all")
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
    page_offers: dict = {}
    for o, p in chain[["offer_id", "product_id"]].itertuples(index=False, name=None):
        page_offers.setdefault(p, []).append(int(o))
    page_offers = {p: sorted(v) for p, v in page_offers.items() if len(v) >= 2}
    ev = evaluate(baskets, page_offers, offer_items, lookups)
    views = ev["views"]
    timings["evaluate"] = time.perf_counter() - t5
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
    if args.json:
        out = {"split_date": str(split.date()), "offers": len(offers), "artifact": str(art), "internal_split": meta["data_window"]["split_date"],
               "counts": counts, "summaries": summaries, "bootstrap": boots, "timings_s": timings, "peak_rss_mib": {**rss, "end": peak_rss_mib()},
               "exclusion_check": check, "score_rows": len(scores), "by_page": by_page}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
