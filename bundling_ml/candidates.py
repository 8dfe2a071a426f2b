"""Candidate companions per anchor.

For each anchor the candidate list is, in this order and without duplicates
(never the anchor, never a product outside ``allowed``):

1. up to ``n_cooc`` products with the highest co-purchase count with the
   anchor (count > 0; ties by popularity, then index);
2. up to ``n_category`` most popular products of the anchor's category
   (the attribute fallback that gives cold anchors - products never or rarely
   bought with anything - sensible candidates);
3. the most popular products overall, until the list holds ``n_total``.

Popularity = number of training baskets holding the product.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from bundling_ml.stats import PairStats


def popular_order(stats: PairStats, allowed: np.ndarray | None = None) -> np.ndarray:
    """Product indices with count > 0 (and ``allowed``), by popularity descending.

    Args:
        stats: statistics of the training baskets.
        allowed: optional (n_products,) bool mask.

    Returns:
        (m,) int64 indices; ties broken by lower index.
    """
    ok = stats.item_counts > 0
    if allowed is not None:
        ok &= allowed
    idx = np.flatnonzero(ok)
    return idx[np.lexsort((idx, -stats.item_counts[idx]))].astype(np.int64)


def category_popular(categories: np.ndarray, order: np.ndarray, k: int) -> dict:
    """Top-``k`` products of each category.

    Args:
        categories: (n_products,) int64 category codes (-1 = unknown, skipped).
        order: (m,) int64 product indices by popularity descending.
        k: products per category.

    Returns:
        dict category code -> (<=k,) int64 product indices, most popular first.
    """
    out: dict = {}
    if k <= 0:
        return out
    for j in order:
        c = int(categories[j])
        if c < 0:
            continue
        lst = out.setdefault(c, [])
        if len(lst) < k:
            lst.append(int(j))
    return {c: np.asarray(v, dtype=np.int64) for c, v in out.items()}


def candidate_companions(
    stats: PairStats,
    anchors: np.ndarray,
    *,
    n_total: int = 100,
    n_cooc: int = 80,
    n_category: int = 10,
    categories: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Candidate companions for each anchor (see module docstring for the order).

    Args:
        stats: co-purchase statistics of the training baskets.
        anchors: (n_anchors,) int product indices.
        n_total: list length.
        n_cooc: maximum number of co-purchase candidates.
        n_category: maximum number of same-category candidates (needs
            ``categories``).
        categories: (n_products,) int64 category codes, -1 unknown.
        allowed: (n_products,) bool mask of products that may be candidates
            (default: all products with a training count > 0).
        show_progress: show a tqdm bar.

    Returns:
        (n_anchors, n_total) int64 matrix of product indices, padded with -1
        when fewer products qualify.
    """
    anchors = np.asarray(anchors, dtype=np.int64)
    allowed_mask = (stats.item_counts > 0) if allowed is None else (np.asarray(allowed, dtype=bool) & (stats.item_counts > 0))
    popular = popular_order(stats, allowed_mask)
    pop_head = popular[: n_total + n_cooc + n_category + 1]
    cat_top = category_popular(categories, popular, n_category) if (categories is not None and n_category > 0) else {}
    out = np.full((len(anchors), n_total), -1, dtype=np.int64)
    it = tqdm(anchors, desc="candidates", unit="anchor", mininterval=2.0, disable=not show_progress)
    for r, a in enumerate(it):
        a = int(a)
        co_idx, _ = stats.top_companions(a, n_cooc) if (n_cooc > 0 and a >= 0) else (np.zeros(0, np.int64), None)
        if allowed is not None and len(co_idx):
            co_idx = co_idx[allowed_mask[co_idx]]
        chosen = list(co_idx[:n_total])
        seen = set(chosen)
        seen.add(a)
        if cat_top and a >= 0 and len(chosen) < n_total:
            for j in cat_top.get(int(categories[a]), ()):
                if j not in seen:
                    chosen.append(int(j))
                    seen.add(int(j))
        for j in pop_head:
            if len(chosen) >= n_total:
                break
            if j not in seen:
                chosen.append(int(j))
                seen.add(int(j))
        chosen = chosen[:n_total]
        out[r, : len(chosen)] = chosen
    return out
