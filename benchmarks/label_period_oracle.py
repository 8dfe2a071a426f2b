"""Diagnostic: how far can the anonymous ranker's features go if the labels came from the test period itself?

The store-free anonymous ranker is trained on label queries of the 4 weeks
before the split (statistics from the weeks before them), and the ablations
found that the label period matters: October labels transfer to the Nov-Dec
test weeks 0.005-0.008 better than August or September labels
(docs/quality.md, "Rolling label windows"). This script bounds that effect
from above. It trains the same ranker on label queries drawn from the *test
period* (the test baskets that are not among the protocol's 3,000 sampled
baskets), with every feature computed, exactly as for the test lists, from
the whole training window (statistics weeks 1-44, end 2017-10-30). No
protocol test basket is in the labels, but their neighbours in time are: a
product cannot do this (it never has labels from the weeks it is asked
about), so the figure is a ceiling for what better label choice, weighting
or drift correction could give with these features, not a result.

Variants (``anon_experiments.run``; the test lists and the label window 41-44
come from ``household_posterior.py --phase prep`` in the same cache):

* ``base`` / ``base+hh``: labels weeks 41-44 (the product's setting), without
  / with the 5 likely-shopper columns;
* ``oracle`` / ``oracle+hh``: 40,000 label queries of the test period's
  other baskets, the same columns.

Run (after ``household_posterior.py --phase prep``)::

    .venv/bin/python benchmarks/label_period_oracle.py --phase prep
    .venv/bin/python benchmarks/label_period_oracle.py --phase run --variants base+hh,oracle,oracle+hh --seeds 0,1

Results: docs/quality.md, "Where the remaining signal is".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import anon_experiments as ae  # noqa: E402
import household_posterior as hp  # noqa: E402
from bundling_ml.data import build_queries  # noqa: E402

ae.VARIANTS.update({
    "oracle": (("oracle",), []),
    "oracle+hh": (("oracle",), [0, 1, 2, 3, 4]),
})

POOL = 50_000


def prep(cache: Path) -> None:
    """Cache the test-period label pool as window ``oracle`` (keys as ``anon_experiments.prep``)."""
    train, test, P, pidx, vocab, table, promotions = ae.setup()
    proto = build_queries(test, pidx, sample_baskets=3000, seed=0)
    lab = test[~test["basket_id"].isin(set(proto.basket_ids))]
    ae.log(f"test period: {test['basket_id'].nunique():,} baskets, {len(set(proto.basket_ids)):,} protocol baskets left out, "
           f"{lab['basket_id'].nunique():,} label baskets")
    pool = ae.sample_pool(train, lab, pidx, table, P, promotions, ae.SPLIT, POOL, 2000)
    y = ae.save_pool(cache, "woracle", train, pidx, ae.SPLIT, pool, hp.product_columns)
    q, sel = pool[1], pool[2]
    ae.log(f"oracle pool: {q.n_queries:,} queries, pool {len(sel):,}, recall@80 {(y.sum(1) > 0).mean():.3f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("prep", "run"), required=True)
    ap.add_argument("--cache", default="/tmp/hh_cache")
    ap.add_argument("--variants", default="base+hh,oracle,oracle+hh")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default=None, help="append one JSON line per result")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.phase == "prep":
        prep(cache)
    else:
        ae.run(cache, args.variants.split(","), [int(s) for s in args.seeds.split(",")], out_json=args.out)
    ae.log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
