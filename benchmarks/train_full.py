"""Full Complete Journey benchmark: train (with backtest) + score bundles.

Run: ``.venv/bin/python benchmarks/train_full.py [--sample-baskets 3000] [--split-date 2017-10-30]``

Prints wall times, peak RSS (resource.getrusage, the process's maximum
resident set size) and the protocol table (system, HR@10, NDCG@10, queries,
seconds), then the number of bundles scored. Not a test: nothing is asserted.
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

from bundling_ml import pipeline  # noqa: E402
from bundling_ml.data import completejourney_frames  # noqa: E402
from bundling_ml.evaluation import metrics_table  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample-baskets", type=int, default=3000)
    ap.add_argument("--split-date", default="2017-10-30")
    ap.add_argument("--min-anchor-baskets", type=int, default=20)
    args = ap.parse_args()
    t0 = time.perf_counter()
    lines, products = completejourney_frames()
    t_load = time.perf_counter() - t0
    print(f"loaded {len(lines):,} lines, {len(products):,} products in {t_load:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        res = pipeline.train_model(lines, products, out_dir=Path(tmp) / "model", split_date=args.split_date, seed=0, sample_baskets=args.sample_baskets)
        t_train = time.perf_counter() - t1
        rss_train = peak_rss_mib()
        t2 = time.perf_counter()
        bundles = pipeline.score_bundles(res.artifact_dir, lines, products, min_anchor_baskets=args.min_anchor_baskets, excluded_departments=("FUEL", "COUPON"))
        t_score = time.perf_counter() - t2
    m = res.metrics
    print()
    print(f"train_model (incl. backtest): {t_train:.1f} s   peak RSS after training: {rss_train:.0f} MiB")
    print(f"score_bundles:                {t_score:.1f} s   peak RSS overall:        {peak_rss_mib():.0f} MiB")
    print(f"training examples: {res.metadata['training']['examples']:,}; loss {['%.4f' % v for v in res.history['loss']]}; val_loss {['%.4f' % v for v in res.history['val_loss']]}")
    print(f"split {m['split_date']}, {m['baskets']} sampled test baskets (seed 0), {m['queries']} queries")
    print(metrics_table(m["rows"]))
    n2 = int((bundles["items"].map(len) == 2).sum())
    print(f"\nbundles scored: {len(bundles)} ({n2} two-item, {len(bundles) - n2} three-item)")
    with __import__("pandas").option_context("display.width", 250, "display.max_colwidth", 140):
        print(bundles.head(8)[["items", "score", "co_purchase_count", "lift", "confidence", "suggested_discount_percent"]].to_string())
        for r in bundles["reasons"].head(5):
            print(" -", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
