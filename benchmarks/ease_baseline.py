"""Diagnostic: EASE (Steck 2019) item-item regression, alone and as a ranker feature, store-free.

EASE learns an item-item weight matrix B with a zero diagonal by ridge
regression of the basket matrix on itself (H. Steck, "Embarrassingly
Shallow Autoencoders for Sparse Data", WWW 2019, eq. 8):
``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` (column-wise), ``B_jj = 0``.
For a single-item query (the protocol's anchor ``a``) the score of
candidate ``c`` is ``B[a, c]``: the weight of ``a`` in predicting ``c``
*given all other products* - a partial, not a marginal, association. It is
the strongest classical item-item model for basket completion from several
items; this measures whether it helps from one anchor.

X is the binary training basket matrix restricted to products with at least
``--min-baskets`` training baskets (default 20: 11,654 of 62,280 products,
82 % of the test queries' anchors); anchors outside it fall back to the
co-occurrence count list. Lines without the store (as
``benchmarks/anon_experiments.py``).

Two parts:

* ``--alone``: EASE's top 10 as a system on the protocol's 35,236 queries,
  for each ``--lambdas`` value, next to co-occurrence count.
* ``--feature``: three extra ranker columns per (anchor, candidate) - B[a, c],
  "both in EASE's vocabulary", asinh(1000 B[a, c]) - computed from each
  context's own statistics lines (label context: lines before the label
  weeks; test: the whole training window), cached with
  ``anon_experiments.prep`` (label window 0 and the test lists), then the
  store-free ranker is trained with and without them on ``--seeds``
  (``anon_experiments.run``: 40,000 label queries, 2 epochs).

Run: ``.venv/bin/python benchmarks/ease_baseline.py --alone`` (about 25 s
per λ after 25 s of loading), ``.venv/bin/python benchmarks/ease_baseline.py
--feature --seeds 0,1`` (prep 97 s, then about 22 s per ranker; peak RSS
4.9 GiB).
Result (session 9; docs/quality.md, "Ablation / what we tried"): count
0.1349; EASE alone 0.1034 / 0.1100 / 0.1221 / 0.1306 / 0.1330 for
λ = 200 / 1,000 / 5,000 / 20,000 / 100,000, never above count; the ranker
with the 3 EASE columns 0.1461 / 0.1461 vs 0.1455 / 0.1460 without (seeds
0 / 1): noise. Not kept.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.linalg as sla  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import anon_experiments as ax  # noqa: E402
from bundling_ml import backtest as bt  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402
from bundling_ml.candidates import candidate_companions  # noqa: E402
from bundling_ml.data import basket_matrix, build_queries  # noqa: E402

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def ease_weights(X: sp.csr_matrix, min_baskets: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE weights over the products with at least ``min_baskets`` baskets.

    Args:
        X: (n_baskets, n_products) binary CSR basket matrix.
        min_baskets: products with fewer baskets (column sums) are left out.
        lam: ridge strength λ (in baskets), added to the Gram matrix's diagonal.

    Returns:
        (keep, B): (n_keep,) int64 product columns of X in the model, and the
        (n_keep, n_keep) float64 weights, B[i, j] = weight of product keep[i]
        for predicting keep[j], zero diagonal (Steck 2019, eq. 8).
    """
    cnt = np.asarray(X.sum(0)).ravel()
    keep = np.flatnonzero(cnt >= min_baskets)
    Xs = X[:, keep].astype(np.float64)
    G = (Xs.T @ Xs).toarray()
    G[np.diag_indices_from(G)] += lam
    Pm = sla.inv(G, overwrite_a=True, check_finite=False)
    B = -Pm / np.diag(Pm)[None, :]
    np.fill_diagonal(B, 0.0)
    return keep, B


def ease_top_k(keep: np.ndarray, B: np.ndarray, anchors: np.ndarray, fallback: np.ndarray, k: int) -> np.ndarray:
    """(n, k) product indices: the k largest B[a, ·] per anchor (never the anchor); ``fallback`` rows where a is outside ``keep``."""
    pos = pd.Index(keep).get_indexer(anchors)
    out = np.array(fallback[:, :k], dtype=np.int64, copy=True)
    for i in np.flatnonzero(pos >= 0):
        row = B[pos[i]].copy()
        row[pos[i]] = -np.inf
        top = np.argpartition(-row, k)[:k]
        out[i] = keep[top[np.argsort(-row[top], kind="stable")]]
    return out


def alone(lambdas, min_baskets: int) -> None:
    train, test, P, pidx, vocab, table, _ = ax.setup()
    X, _ = basket_matrix(train, pidx)
    q = build_queries(test, pidx, sample_baskets=3000, seed=0)
    ctx = rk.build_context(train, pidx, table, P, end=ax.SPLIT)
    uniq, inv = np.unique(q.anchor, return_inverse=True)
    count_u = candidate_companions(ctx.S, uniq, n_total=bt.K, n_cooc=bt.K, n_category=0)
    r = bt._row("count", q, count_u[inv], 0.0)
    log(f"co-occurrence count: HR@10 {r['hr@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} ({r['queries']:,} queries)")
    for lam in lambdas:
        t = time.perf_counter()
        keep, B = ease_weights(X, min_baskets, lam)
        r = bt._row("ease", q, ease_top_k(keep, B, uniq, count_u, bt.K)[inv], 0.0)
        log(f"EASE λ={lam:g} ({len(keep):,} products, anchors covered {np.isin(q.anchor, keep).mean():.3f}): "
            f"HR@10 {r['hr@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} ({time.perf_counter() - t:.0f} s)")
        del B


def ease_extra_fn(min_baskets: int, lam: float):
    """An ``anon_experiments.prep`` ``extra_fn`` giving the 3 EASE columns (module docstring) from the context's lines."""
    def extra(feat, ctx, pidx, end, anchors, cands, times) -> np.ndarray:
        X, _ = basket_matrix(feat, pidx)
        keep, B = ease_weights(X, min_baskets, lam)
        pos = np.full(len(pidx), -1, np.int64)
        pos[keep] = np.arange(len(keep))
        pa, pc = pos[anchors][:, None].repeat(cands.shape[1], 1), pos[cands]
        ok = (pa >= 0) & (pc >= 0)
        b = np.zeros(cands.shape, np.float64)
        b[ok] = B[pa[ok], pc[ok]]
        del B
        return np.stack([b, ok.astype(np.float64), np.arcsinh(1000.0 * b)], axis=2).astype(np.float32)
    return extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alone", action="store_true")
    ap.add_argument("--feature", action="store_true")
    ap.add_argument("--lambdas", default="200,1000,5000,20000,100000", help="--alone: ridge strengths λ")
    ap.add_argument("--lam", type=float, default=1000.0, help="--feature: λ of the feature columns")
    ap.add_argument("--min-baskets", type=int, default=20)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--cache", default="/tmp/ease_cache")
    ap.add_argument("--skip-prep", action="store_true", help="--feature: the cache is already built")
    args = ap.parse_args()
    if args.alone:
        alone([float(x) for x in args.lambdas.split(",")], args.min_baskets)
    if args.feature:
        cache = Path(args.cache)
        cache.mkdir(parents=True, exist_ok=True)
        if not args.skip_prep:
            ax.prep(cache, windows=(0,), extra_fn=ease_extra_fn(args.min_baskets, args.lam))
        ax.VARIANTS["base+ease"] = ((0,), [0, 1, 2])
        ax.run(cache, ["base", "base+ease"], [int(s) for s in args.seeds.split(",")])
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
