"""Diagnostic: does weighting by what NDCG@10 rewards move the anonymous (store-free) table?

NDCG@10 divides a query's DCG by the ideal DCG over min(10, |truth|)
positions, so one hit is worth 1.0 in a 2-product basket and 1 / 4.54 in a
basket of 11 or more. For a ranking that depends only on the anchor (and the
query's context), the expected NDCG@10 over the anchor's queries is linear in
the per-position gains, so by the rearrangement inequality the best ranking
sorts companions j by

    g(j | a) = E[ 1[j in T] / IDCG(min(10, |T|)) | anchor a ]

(T: the query's truth set), not by the co-purchase probability P(j | a) that
counting estimates. The product's listwise loss (softmax cross-entropy with a
uniform target over the list's positives) weights a positive by 1 / |T ∩ L|
instead (L: the candidate list), i.e. it discounts large baskets even more
than NDCG does. Two measurements, store-free, on the protocol's 35,236 test
queries (split 2017-10-30, 3,000 baskets, seed 0):

* ``--phase count`` (no model, ~1 min): co-occurrence count with each training
  basket weighted by 1, 1 / IDCG(min(10, |b| - 1)), 1 / (|b| - 1), IDCG and
  |b| - 1, ties by popularity; NDCG@10 overall and by the anchor's training
  baskets (< 20, 20-99, 100-499, 500-1,999, >= 2,000).
* ``--phase loss`` (after ``household_posterior.py --phase prep``, same cache):
  the product's store-free ranker with the likely-shopper columns
  (``base+hh``), 2 epochs, 40,000 label queries of weeks 41-44, trained with
  each label list's loss weighted by 1 (the product), |T ∩ L| / IDCG(min(10,
  |T|)) (``:idcg``, every positive weighted as NDCG weights it) or |T ∩ L|
  (``:count``, every positive weighted 1, as counting does).

Results (docs/quality.md, "Where the remaining signal is"): weighting by
1 / IDCG helps only the most frequent anchors and costs the rare ones
(count 0.1349 -> 0.1317); in the loss both weightings lose 0.0007-0.0011 on
both seeds. The product's equal list weights stay.

Run::

    .venv/bin/python benchmarks/metric_weighting.py --phase count
    .venv/bin/python benchmarks/household_posterior.py --phase prep    # once, cache /tmp/hh_cache
    .venv/bin/python benchmarks/metric_weighting.py --phase loss --seeds 0,1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import anon_experiments as ae  # noqa: E402
import household_posterior  # noqa: E402,F401  (registers the base+hh variant)
from bundling_ml.data import basket_matrix, build_queries, completejourney_frames, prepare_lines, temporal_split  # noqa: E402
from bundling_ml.evaluation import hits_matrix, hr_ndcg  # noqa: E402

K = 10
#: ideal DCG over the first n positions, n = 0..K (binary gains)
IDCG = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, K + 2)))])
ANCHOR_BINS = ((0, 20), (20, 100), (100, 500), (500, 2000), (2000, 10 ** 9))
BASKET_WEIGHTS = {  # name: weight of a training basket with truth size t = |b| - 1
    "count (weight 1)": lambda t: np.ones(len(t)),
    "weight 1 / IDCG(min(10, t))": lambda t: 1.0 / IDCG[np.minimum(t, K)],
    "weight 1 / t": lambda t: 1.0 / t,
    "weight IDCG(min(10, t))": lambda t: IDCG[np.minimum(t, K)],
    "weight t": lambda t: t.astype(np.float64),
}
LOSS_WEIGHTS = ("idcg", "count")


def weighted_count_top(X: sp.csr_matrix, w: np.ndarray, anchors: np.ndarray, pop: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """Top-K companions of each anchor by basket-weighted co-purchase count.

    Args:
        X: (n_baskets, n_products) binary CSR training basket matrix.
        w: (n_baskets,) float weight of each basket.
        anchors: (n,) int64 distinct product columns.
        pop: (n_products,) popularity, used only to break ties (and back-fill).

    Returns:
        (n, K) int64 product columns, never the anchor.
    """
    WXt = (sp.diags(w) @ X).T.tocsr()
    tie = 1e-6 * pop / pop.max()
    out = []
    for s in range(0, len(anchors), chunk):
        a = anchors[s:s + chunk]
        score = (WXt[a] @ X).toarray() + tie[None, :]
        score[np.arange(len(a)), a] = -np.inf
        top = np.argpartition(-score, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(score, top, 1), axis=1, kind="stable")
        out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out)


def phase_count() -> None:
    lines, _ = completejourney_frames()
    train, test = temporal_split(prepare_lines(lines), ae.SPLIT)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    X, _ = basket_matrix(train, pidx)
    X = X.astype(np.float64).tocsr()
    X.data[:] = 1.0
    q = build_queries(test, pidx, sample_baskets=3000, seed=0)
    ts = q.truth_sizes()
    t = np.maximum(np.diff(X.indptr) - 1, 1)
    pop = np.asarray(X.sum(axis=0)).ravel()
    uniq, inv = np.unique(q.anchor, return_inverse=True)
    fa = pop[q.anchor]
    ae.log(f"{q.n_queries:,} queries, {len(uniq):,} anchors")
    print(f"{'basket weight':<30} {'HR@10':>7} {'NDCG@10':>8}  " + "  ".join(f"{lo}-{hi if hi < 10 ** 9 else 'max'}" for lo, hi in ANCHOR_BINS))
    for name, fn in BASKET_WEIGHTS.items():
        recs = weighted_count_top(X, fn(t), uniq, pop)[inv]
        H = hits_matrix(q, recs)
        hr, nd = hr_ndcg(H, ts, K)
        per = [hr_ndcg(H[(fa >= lo) & (fa < hi)], ts[(fa >= lo) & (fa < hi)], K)[1] for lo, hi in ANCHOR_BINS]
        print(f"{name:<30} {hr:7.4f} {nd:8.4f}  " + "  ".join(f"{p:.4f}" for p in per), flush=True)


def label_truth_sizes() -> np.ndarray:
    """(50,000,) truth sizes |T| of window 0's cached label pool, in the pool's order.

    Rebuilds the pool's queries exactly as ``anon_experiments.prep`` sampled them
    (labels weeks 41-44, products seen in weeks 1-40, ``default_rng(1000)``).
    """
    lines, _ = completejourney_frames()
    train, _ = temporal_split(prepare_lines(lines), ae.SPLIT)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    start = ae.SPLIT - pd.Timedelta(weeks=ae.WINDOWS[0][0])
    feat, lab = train[train["time"] < start], train[train["time"] >= start]
    seen = pidx[pidx.isin(feat["product_id"].unique())]
    q = build_queries(lab, seen)
    sel = np.sort(np.random.default_rng(1000).choice(q.n_queries, size=min(ae.WINDOWS[0][2], q.n_queries), replace=False))
    return q.truth_sizes()[sel]


def phase_loss(cache: Path, seeds, out_json=None) -> None:
    truth = label_truth_sizes()
    n_pool = len(np.load(cache / "w0_y.npy", mmap_mode="r"))
    if n_pool != len(truth):
        raise ValueError(f"cached pool has {n_pool} lists, rebuilt truth sizes {len(truth)} (re-run household_posterior.py --phase prep)")

    def weights(kind):
        def fn(window, sel, y):
            in_list = y.sum(axis=1)
            return in_list / IDCG[np.minimum(truth[sel], K)] if kind == "idcg" else in_list.astype(np.float64)
        return fn

    ae.VARIANTS.update({f"base+hh:{k}": ae.VARIANTS["base+hh"] for k in LOSS_WEIGHTS})
    variants = ["base+hh"] + [f"base+hh:{k}" for k in LOSS_WEIGHTS]
    ae.run(cache, variants, seeds, out_json=out_json, list_weights={f"base+hh:{k}": weights(k) for k in LOSS_WEIGHTS})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=("count", "loss"), required=True)
    ap.add_argument("--cache", default="/tmp/hh_cache")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default=None, help="loss: append one JSON line per result")
    args = ap.parse_args()
    if args.phase == "count":
        phase_count()
    else:
        phase_loss(Path(args.cache), [int(s) for s in args.seeds.split(",")], args.out)
    ae.log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
