"""Diagnostic: does the query's time slot change *which companions go with the anchor*? Store-free.

The anonymous ranker knows the query time through the candidate's lift in
the time slot (``cand_hour_lift``, ``cand_dow_lift``: is the candidate
bought more at this hour / on this weekday) and through the likely-shopper
posterior. The store, the one context that moved the table, acts mostly
through the *pair*: the anchor-candidate confidence within the store's
baskets. This measures the same pair statistic for the time context:

0. ``pair_slot_conf_log_ratio``: log((conf_s + 1e-4) / (conf + 1e-4)),
   conf_s = (n_acs + 10 conf) / (n_as + 10), the confidence P(c | a) among
   the training baskets of the query's slot s (3-hour bucket x weekday,
   ``ranking.time_slots``: 56 slots) shrunk towards the global confidence
   with 10 pseudo-baskets, as the store confidence
   (``ranking.STORE_FEATURES``);
1. the same within the query's 3-hour bucket (8 buckets, any weekday);
2. the same within the query's weekday (7 days, any hour).

Computed from each context's own statistics lines (label context: the lines
before the label weeks; test: the whole training window), cached with
``anon_experiments.prep`` (label window 0 and the test lists); then the
store-free ranker is trained with and without them on ``--seeds``
(``anon_experiments.run``: 40,000 label queries, 2 epochs).

Run: ``.venv/bin/python benchmarks/slot_pair_confidence.py --seeds 0,1``
(prep 63 s, then about 20-30 s per ranker; peak RSS 4.9 GiB).
Result (session 9; docs/quality.md, "Ablation / what we tried"), seeds
0 / 1: without 0.1455 / 0.1460, with the 3 columns 0.1460 / 0.1464, with
the slot column only 0.1460 / 0.1463: +0.0003 to +0.0005, at the edge of
the one-seed noise (about ±0.0005). Not kept.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import anon_experiments as ax  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402
from bundling_ml.data import basket_matrix  # noqa: E402

NAMES = ("pair_slot_conf_log_ratio", "pair_hour_conf_log_ratio", "pair_dow_conf_log_ratio")


def slot_extra(feat: pd.DataFrame, ctx: rk.Context, pidx: pd.Index, end, anchors, cands, times) -> np.ndarray:
    """(n, M, 3) float32 slot / hour-bucket / weekday pair confidence log ratios (module docstring)."""
    X, bids = basket_matrix(feat, pidx)
    bslot = rk.time_slots(ax.basket_times_of(feat, bids))
    qslot = rk.time_slots(times)
    n, m = cands.shape
    S = ctx.S
    A = np.repeat(np.asarray(anchors, np.int64), m)
    C = np.where(cands >= 0, cands, 0).ravel()
    na = S.item_counts[A].astype(np.float64)
    conf = np.divide(rk._sparse_values(S.co, A, C), na, out=np.zeros(len(A)), where=na > 0)
    out = np.zeros((n * m, len(NAMES)), np.float32)
    qrep = np.repeat(qslot, m)
    keys = (lambda s: s, lambda s: s // 7, lambda s: s % 7)  # slot = bucket * 7 + weekday
    for j, key in enumerate(keys):
        bk, qk = np.where(bslot >= 0, key(bslot), -1), np.where(qrep >= 0, key(qrep), -1)
        for v in np.unique(qk[qk >= 0]):
            idx = np.flatnonzero(qk == v)
            sub = ax.SubsetStats(X, bk == v)
            out[idx, j] = ax._conf_ratio(sub, A[idx], C[idx], conf[idx])
    out = out.reshape(n, m, len(NAMES))
    out[cands < 0] = 0.0
    return out


def main() -> int:
    return ax.extra_columns_main(__doc__, slot_extra, {"base+slotpair": [0, 1, 2], "base+slotpair56": [0]},
                                 "/tmp/slot_cache")


if __name__ == "__main__":
    sys.exit(main())
