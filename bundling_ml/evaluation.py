"""HR@K, NDCG@K and the protocol's baselines (steps 4-6 of the offline
evaluation protocol in ``ARCHITECTURE.md``).

* HR@K: share of queries with at least one of the K returned companions in
  the truth set.
* NDCG@K: binary gains; DCG = sum_{j=1..K} hit_j / log2(j + 1); ideal DCG
  over min(K, |truth|) positions (Jarvelin & Kekalainen 2002). Averaged over
  queries.

Systems are non-personalised: the companions depend only on the anchor, so
they are computed once per distinct anchor (``rank_fn(anchors) ->
(n_anchors, K) indices``) and broadcast to the queries.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from bundling_ml.candidates import candidate_companions, popular_order
from bundling_ml.data import Queries
from bundling_ml.stats import PairStats


def hits_matrix(queries: Queries, recs: np.ndarray) -> np.ndarray:
    """Binary hits of per-query recommendations.

    Args:
        queries: protocol queries.
        recs: (n_queries, K) int product indices, -1 for an empty slot.

    Returns:
        (n_queries, K) bool; True where the companion is in the truth set
        (the basket's other seen products). The anchor itself never counts.
    """
    recs = np.asarray(recs, dtype=np.int64)
    n, k = recs.shape
    rows = np.repeat(queries.query_basket, k)
    cols = recs.ravel()
    valid = cols >= 0
    vals = np.zeros(n * k, dtype=bool)
    if valid.any():
        vals[valid] = np.asarray(queries.baskets[rows[valid], cols[valid]]).ravel() > 0
    hits = vals.reshape(n, k)
    hits &= recs != queries.anchor[:, None]
    return hits


def hr_ndcg(hits: np.ndarray, truth_sizes: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@K and NDCG@K from a hits matrix.

    Args:
        hits: (n_queries, >=K) bool hits, rank order.
        truth_sizes: (n_queries,) int size of each truth set (>= 1).
        k: cut-off K.

    Returns:
        (hr, ndcg) floats in [0, 1], means over queries (0.0 for no queries).

    Raises:
        ValueError: if shapes disagree.
    """
    hits = np.asarray(hits, dtype=bool)[:, :k]
    truth_sizes = np.asarray(truth_sizes)
    if hits.shape[0] != len(truth_sizes):
        raise ValueError("hits and truth_sizes have different numbers of queries")
    if hits.shape[0] == 0:
        return 0.0, 0.0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * disc[: hits.shape[1]]).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.clip(truth_sizes, 0, k)]
    ndcg = np.divide(dcg, idcg, out=np.zeros(len(dcg)), where=idcg > 0)
    return float(hits.any(axis=1).mean()), float(ndcg.mean())


def evaluate_system(queries: Queries, rank_fn: Callable[[np.ndarray], np.ndarray], *, name: str, k: int = 10) -> dict:
    """Run one system on the queries and score it.

    Args:
        queries: protocol queries.
        rank_fn: maps (n_anchors,) int64 distinct anchor indices to an
            (n_anchors, >=K) int matrix of companions (-1 = empty slot).
        name: system name for the result row.
        k: cut-off.

    Returns:
        {"system": name, "hr@K": float, "ndcg@K": float, "queries": int,
        "seconds": float} where seconds is the wall time of ranking plus
        scoring.

    Raises:
        ValueError: if a system returns an anchor as its own companion.
    """
    t0 = time.perf_counter()
    uniq, inv = np.unique(queries.anchor, return_inverse=True)
    ranked = np.asarray(rank_fn(uniq), dtype=np.int64)[:, :k]
    if np.any(ranked == uniq[:, None]):
        raise ValueError(f"system {name!r} returned an anchor as its own companion")
    recs = ranked[inv]
    hr, ndcg = hr_ndcg(hits_matrix(queries, recs), queries.truth_sizes(), k)
    return {"system": name, f"hr@{k}": hr, f"ndcg@{k}": ndcg, "queries": queries.n_queries, "seconds": round(time.perf_counter() - t0, 3)}


def popularity_ranker(stats: PairStats, k: int = 10, allowed: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Popularity baseline: the K most frequent training products, minus the anchor.

    Returns:
        rank_fn for :func:`evaluate_system`.
    """
    head = popular_order(stats, allowed)[: k + 1]

    def rank(anchors: np.ndarray) -> np.ndarray:
        out = np.full((len(anchors), k), -1, dtype=np.int64)
        for r, a in enumerate(anchors):
            lst = head[head != a][:k]
            out[r, : len(lst)] = lst
        return out

    return rank


def cooccurrence_ranker(stats: PairStats, k: int = 10, allowed: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Co-occurrence count baseline: companions by co-purchase count with the
    anchor, ties broken by popularity, back-filled by popularity.

    Returns:
        rank_fn for :func:`evaluate_system`.
    """

    def rank(anchors: np.ndarray) -> np.ndarray:
        return candidate_companions(stats, anchors, n_total=k, n_cooc=k, n_category=0, allowed=allowed)

    return rank


def metrics_table(rows: list[dict], k: int = 10) -> str:
    """Plain-text protocol table: system, HR@K, NDCG@K, queries, seconds."""
    head = f"{'system':<20} {'HR@' + str(k):>8} {'NDCG@' + str(k):>9} {'queries':>9} {'seconds':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['system']:<20} {r[f'hr@{k}']:>8.4f} {r[f'ndcg@{k}']:>9.4f} {r['queries']:>9d} {r['seconds']:>9.1f}")
    return "\n".join(lines)
