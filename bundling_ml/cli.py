"""Command line: ``python -m bundling_ml backtest|score ...``.

Examples::

    python -m bundling_ml backtest --preset completejourney --split-date 2017-10-30 --sample-baskets 3000
    python -m bundling_ml score --preset completejourney --artifact-dir var/model --out bundles.csv

``backtest`` trains the model on the training period, runs the offline
evaluation protocol and prints the table: system, HR@10, NDCG@10, queries,
seconds. ``score`` writes bundle suggestions of a saved model as CSV.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time

PRESETS = ("completejourney",)


def _load(preset: str):
    from bundling_ml.data import completejourney_frames

    if preset == "completejourney":
        return completejourney_frames()
    raise SystemExit(f"unknown preset {preset!r}; choose from {PRESETS}")


def main(argv=None) -> int:
    """Run the CLI; returns the process exit code (0 on success)."""
    ap = argparse.ArgumentParser(prog="python -m bundling_ml", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backtest", help="train, backtest and print the protocol table")
    b.add_argument("--preset", choices=PRESETS, required=True)
    b.add_argument("--split-date", default=None, help="first test day, YYYY-MM-DD (default: last ~20%% of weeks)")
    b.add_argument("--sample-baskets", type=int, default=None, help="fixed random sample of test baskets (seed --seed)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--epochs", type=int, default=3)
    b.add_argument("--exclude-department", action="append", default=[], help="repeatable, e.g. FUEL")
    b.add_argument("--out-dir", default=None, help="artifact directory (default: a temporary directory)")
    s = sub.add_parser("score", help="score bundles with a saved model and write CSV")
    s.add_argument("--preset", choices=PRESETS, required=True)
    s.add_argument("--artifact-dir", required=True)
    s.add_argument("--out", default="-", help="CSV path or - for stdout")
    s.add_argument("--min-anchor-baskets", type=int, default=20)
    s.add_argument("--max-bundles", type=int, default=5000)
    s.add_argument("--exclude-department", action="append", default=[])
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")

    from bundling_ml import pipeline
    from bundling_ml.evaluation import metrics_table

    lines, products = _load(args.preset)
    if args.command == "backtest":
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = pipeline.train_model(
                lines,
                products,
                out_dir=args.out_dir or f"{tmp}/model",
                split_date=args.split_date,
                seed=args.seed,
                excluded_departments=tuple(args.exclude_department),
                sample_baskets=args.sample_baskets,
                epochs=args.epochs,
            )
        m = res.metrics
        print(f"split {m['split_date']}, {m['baskets']} test baskets, {m['queries']} queries, total {time.perf_counter() - t0:.0f} s")
        print(metrics_table(m["rows"]))
        return 0
    df = pipeline.score_bundles(
        args.artifact_dir,
        lines,
        products,
        min_anchor_baskets=args.min_anchor_baskets,
        max_bundles=args.max_bundles,
        excluded_departments=tuple(args.exclude_department),
    )
    df = df.assign(items=df["items"].map(lambda t: "|".join(t)))
    df.to_csv(sys.stdout if args.out == "-" else args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
