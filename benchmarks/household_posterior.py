"""Anonymous ranker experiment: who is likely shopping? (household posterior from anchor + query time).

An anonymous product-page query carries an anchor and a time, not a shopper.
But most of a grocer's baskets come from returning shoppers, and shoppers
differ both in what they buy and in when they shop. So the anchor and the
query's 3-hour time-of-day bucket and weekday give a posterior over the
training period's shoppers (households), and the rest of the basket is
likely to look like those shoppers' usual baskets:

    P(h | a, slot) ∝ C[h, a] · P(slot | h)

where C[h, a] is the number of training baskets of household h holding the
anchor a (so C[h, a] / N ∝ P(h, a)) and P(slot | h) is h's share of baskets
in the query's (time-of-day bucket, weekday) slot, shrunk towards the
chain-wide slot share with 10 pseudo-baskets (naive-Bayes assumption: slot
independent of the anchor given the household). The profile rate of a
candidate c is then

    rate(c | a, slot) = Σ_h P(h | a, slot) · C[h, c] / n_h

the expected share of a likely shopper's baskets holding c (n_h: h's
baskets). Without the slot (P(h | a) ∝ C[h, a]) it is the "buyers' profile"
of the anchor: what the anchor's buyers buy in any basket, not only in the
baskets with the anchor.

Extra columns: the product's :data:`bundling_ml.ranking.HOUSEHOLD_FEATURES`
(:func:`bundling_ml.ranking.household_features`; the store factor is absent
here), from the context's lines only (no label or test basket is in them):

0. ``hh_log_rate``: log(rate(c | a, slot) + 1e-4)
1. ``hh_log_lift``: log((rate(c | a, slot) + 1e-4) / (p_c + 1e-4)), p_c the
   candidate's share of the shoppers' baskets
2. ``hh_anchor_log_lift``: the same without the slot (P(h | a) ∝ C[h, a])
3. ``hh_context_shift``: column 0 minus log(rate(c | a) + 1e-4)
4. ``hh_log_effective``: log of the posterior's effective number of households
   1 / Σ_h P(h | a, slot)² (a list-level column: how sharp the guess is)

Results (seed 0 / seed 1, docs/quality.md "Likely shopper"): base 0.1455 /
0.1460, + the 5 columns 0.1475 / 0.1484. An earlier version of this script
also tried the same columns with time-decayed basket weights (half-life 56
days) and a pair column (the anchor's baskets reweighted by their shopper's
P(slot | h)): decayed instead of plain 0.1474 / 0.1486, both 0.1480 /
0.1486, the 5 plain columns + the pair column 0.1478 / 0.1481, all 11
0.1483 / 0.1484 - within noise of the 5 plain columns, not kept.

The experiment reuses ``anon_experiments``: same store-free setting, the
label window 41-44 (pool of 50,000, statistics weeks 1-40), 80 training /
100 test candidates, 2 epochs, one ranker per seed, scored on the
protocol's 35,236 test queries.

Run: ``.venv/bin/python benchmarks/household_posterior.py --phase prep`` then
``--phase run --variants base,base+hh --seeds 0,1`` (prep 80 s, each variant
15-20 s of training on this machine; peak RSS 3.5 / 5 GiB).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import anon_experiments as ae  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402

def product_columns(feat: pd.DataFrame, ctx: rk.Context, pidx: pd.Index, end: pd.Timestamp, anchors, cands, times) -> np.ndarray:
    """(n, M, 5) float32 :data:`bundling_ml.ranking.HOUSEHOLD_FEATURES` as the product computes them
    (:func:`bundling_ml.ranking.household_features`; no store here) for lists ``cands`` of ``anchors``
    at query ``times`` (the ``extra_fn`` of ``anon_experiments.prep``)."""
    n, m = cands.shape
    A = np.repeat(np.asarray(anchors, np.int64), m)
    T = np.repeat(pd.to_datetime(np.asarray(times)).to_numpy(), m)
    cc = np.where(cands >= 0, cands, 0).ravel()
    out = rk.household_features(ctx, A, cc, T).reshape(n, m, -1)
    out[cands < 0] = 0.0
    return out


ae.VARIANTS.update({
    "base+hh": ((0,), [0, 1, 2, 3, 4]),
    "base+hh_anchor": ((0,), [2]),
    "base+hh_time": ((0,), [0, 1, 3, 4]),
})


HISTORY_BINS = ((1, 10), (10, 30), (30, 100), (100, 10 ** 9))


def history_groups() -> dict[str, np.ndarray]:
    """Protocol test queries grouped by their household's training-window baskets.

    Returns:
        {"hh_baskets_<lo>-<hi>": (n_queries,) bool}, bins :data:`HISTORY_BINS`
        (Complete Journey is a panel: every test household has training baskets).
    """
    from bundling_ml.data import build_queries, completejourney_frames, prepare_lines, temporal_split

    lines, _ = completejourney_frames()
    train, test = temporal_split(prepare_lines(lines), ae.SPLIT)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    q = build_queries(test, pidx, sample_baskets=3000, seed=0)
    owner = test.drop_duplicates("basket_id").set_index("basket_id")["customer_id"]
    n_hist = train.groupby("customer_id")["basket_id"].nunique()
    hh = owner.reindex(pd.Index(q.basket_ids)).to_numpy()[q.query_basket]
    n = n_hist.reindex(pd.Index(hh)).fillna(0).to_numpy()
    out = {}
    for lo, hi in HISTORY_BINS:
        mask = (n >= lo) & (n < hi)
        out[f"hh_baskets_{lo}-{hi if hi < 10 ** 9 else 'max'}"] = mask
        ae.log(f"queries whose household has {lo}..{hi - 1} training baskets: {mask.sum():,}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("prep", "run"), required=True)
    ap.add_argument("--cache", default="/tmp/hh_cache")
    ap.add_argument("--variants", default="base,base+hh")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default=None, help="append one JSON line per result")
    ap.add_argument("--by-history", action="store_true",
                    help="run: also NDCG@10 by the query household's training baskets (HISTORY_BINS)")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.phase == "prep":
        ae.prep(cache, [0], test_lists=True, extra_fn=product_columns)
    else:
        groups = history_groups() if args.by_history else None
        for res in ae.run(cache, args.variants.split(","), [int(s) for s in args.seeds.split(",")], out_json=args.out,
                          groups=groups):
            if groups:
                ae.log(f"{res['variant']:<14} seed {res['seed']}: " + ", ".join(
                    f"{g[len('hh_baskets_'):]} {res['ndcg@10_' + g]:.4f}" for g in groups))
    ae.log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
