"""Full Complete Journey benchmark: train (with backtest) + score bundles, and
optionally the feature ablation.

Run: ``.venv/bin/python benchmarks/train_full.py [--sample-baskets 3000] [--split-date 2017-10-30] [--ablation]``

Prints wall times, peak RSS (resource.getrusage, the process's maximum
resident set size), the protocol tables (anonymous shopper, known shopper,
cold-start anchors: system, HR@10, NDCG@10, queries, seconds), then the
number of bundles scored. With ``--ablation`` the anonymous ranker is
retrained without each feature group and the NDCG@10 of each variant is printed (anonymous ranker only, one
seed instead of the 3-seed ensemble, no shopper model, otherwise the same settings). Not a test: nothing is asserted.
The backtest uses no department exclusions, so its numbers compare with the
reference numbers in ARCHITECTURE.md; scoring excludes FUEL and COUPON.
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bundling_ml import backtest as bt  # noqa: E402
from bundling_ml import pipeline  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402
from bundling_ml.cli import print_tables  # noqa: E402
from bundling_ml.data import completejourney_frames, completejourney_promotions, prepare_lines, prepare_products, temporal_split  # noqa: E402
from bundling_ml.features import ProductTable, ProductVocab  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ablation(lines, products, split, sample_baskets, epochs=2, promotions=None, max_label_queries=40_000):
    """NDCG@10 of the anonymous ranker without each feature group."""
    L = prepare_lines(lines)
    P = prepare_products(products, L)
    split = pd.Timestamp(split)
    train, test = temporal_split(L, split)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    vocab = ProductVocab.fit(P, pidx)
    table = ProductTable.build(P, pidx, vocab)
    ctx = rk.attach_promotions(rk.build_context(train, pidx, table, P, end=split), promotions)
    variants = [("all features", rk.ANON_FEATURES, True)]
    for g, names in rk.FEATURE_GROUPS.items():
        variants.append((f"- {g}", tuple(f for f in rk.ANON_FEATURES if f not in names), True))
    variants.append(("- attribute embeddings", rk.ANON_FEATURES, False))
    base = ("log1p_count", "log_lift", "confidence", "jaccard", "cand_log_pop", "anchor_log_pop", "same_category", "same_department", "reverse_confidence")
    variants.append(("previous 9 pair features only", base, True))
    out = []
    for name, feats, emb in variants:
        t = time.perf_counter()
        R = bt.fit_rankers(train, P, pidx, vocab, table, split, seed=0, epochs=epochs, shopper=False, anon_features=feats, use_embeddings=emb,
                           promotions=promotions, max_label_queries=max_label_queries, anon_seeds=1)
        m = bt.run_backtest(R, train, test, P, pidx, table, split, sample_baskets=sample_baskets, seed=0, ctx=ctx, promotions=promotions)
        row = m["rows"][0]
        out.append((name, row["hr@10"], row["ndcg@10"], time.perf_counter() - t))
        print(f"  {name:<32} HR@10 {row['hr@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample-baskets", type=int, default=3000)
    ap.add_argument("--split-date", default="2017-10-30")
    ap.add_argument("--min-anchor-baskets", type=int, default=20)
    ap.add_argument("--ablation", action="store_true", help="also retrain the anonymous ranker without each feature group")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lines, products = completejourney_frames()
    promotions = completejourney_promotions()
    t_load = time.perf_counter() - t0
    print(f"loaded {len(lines):,} lines, {len(products):,} products in {t_load:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        res = pipeline.train_model(lines, products, out_dir=Path(tmp) / "model", split_date=args.split_date, seed=0, sample_baskets=args.sample_baskets,
                                    promotions=promotions)
        t_train = time.perf_counter() - t1
        rss_train = peak_rss_mib()
        t2 = time.perf_counter()
        bundles = pipeline.score_bundles(res.artifact_dir, lines, products, min_anchor_baskets=args.min_anchor_baskets, excluded_departments=("FUEL", "COUPON"),
                                        promotions=promotions)
        t_score = time.perf_counter() - t2
    m = res.metrics
    print()
    print(f"train_model (both rankers + backtest): {t_train:.1f} s   peak RSS after training: {rss_train:.0f} MiB")
    print(f"score_bundles:                         {t_score:.1f} s   peak RSS overall:        {peak_rss_mib():.0f} MiB")
    print(f"training: {res.metadata['training']}; loss {['%.4f' % v for v in res.history['loss']]}; val_loss {['%.4f' % v for v in res.history['val_loss']]}")
    print(f"backtest info: {m.get('info')}")
    print_tables(m)
    n2 = int((bundles["items"].map(len) == 2).sum())
    print(f"\nbundles scored: {len(bundles)} ({n2} two-item, {len(bundles) - n2} three-item)")
    with pd.option_context("display.width", 250, "display.max_colwidth", 140):
        print(bundles.head(8)[["items", "score", "co_purchase_count", "lift", "confidence", "suggested_discount_percent"]].to_string())
        for r in bundles["reasons"].head(5):
            print(" -", r)
    if args.ablation:
        print("\nAblation (anonymous ranker, same queries):")
        ablation(lines, products, args.split_date, args.sample_baskets, promotions=promotions, max_label_queries=20_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
