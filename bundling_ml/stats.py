"""Co-purchase statistics on scipy.sparse.

Definitions (Agrawal, Imielinski & Swami 1993, "Mining association rules
between sets of items in large databases"; Jaccard 1901), for products a, b
over N baskets with basket counts n_a, n_b and co-purchase count n_ab:

* support(a, b)    = n_ab / N
* confidence(a->b) = n_ab / n_a            (the attach rate of b given a)
* lift(a, b)       = n_ab * N / (n_a * n_b)  (1 = independent)
* jaccard(a, b)    = n_ab / (n_a + n_b - n_ab)

All "count" arrays count baskets, never units.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bundling_ml.data import basket_matrix


def cooccurrence_counts(baskets: sp.csr_matrix) -> sp.csr_matrix:
    """Count how many baskets contain each pair of products.

    Args:
        baskets: (n_baskets, n_products) binary CSR matrix; 1 where the basket
            holds the product at least once.

    Returns:
        (n_products, n_products) CSR matrix of int32 counts, zero diagonal
        (explicit zeros removed), sorted indices. Computed as X^T X.

    Raises:
        ValueError: if ``baskets`` holds values other than 0 and 1.
    """
    X = sp.csr_matrix(baskets, dtype=np.int32)
    if X.nnz and not np.all((X.data == 0) | (X.data == 1)):
        raise ValueError("baskets must be a binary (0/1) matrix")
    co = (X.T.tocsr() @ X).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    co = co.astype(np.int32)
    co.sort_indices()
    return co


@dataclass
class PairStats:
    """Basket counts and co-purchase counts of a set of order lines.

    Attributes:
        product_ids: pd.Index of product ids (str); position = product index.
        n_baskets: number of baskets N (int).
        item_counts: (n_products,) int64 number of baskets holding each product.
        co: (n_products, n_products) CSR int32 co-purchase counts, symmetric,
            zero diagonal.
        X: (n_baskets, n_products) binary CSR int32 basket matrix (kept for
            counting baskets that hold 3 products).
    """

    product_ids: pd.Index
    n_baskets: int
    item_counts: np.ndarray
    co: sp.csr_matrix
    X: sp.csr_matrix | None = None
    _Xcsc: sp.csc_matrix | None = field(default=None, repr=False)

    @classmethod
    def from_lines(cls, lines: pd.DataFrame, product_ids=None) -> "PairStats":
        """Build statistics from a lines frame.

        Args:
            lines: lines frame (basket_id, product_id as str).
            product_ids: optional index of product ids (str) fixing the column
                space (products of ``lines`` outside it are ignored; products
                absent from ``lines`` get count 0). Default: sorted unique
                product ids of ``lines``.

        Returns:
            PairStats.
        """
        if product_ids is None:
            product_ids = pd.Index(np.sort(lines["product_id"].astype(str).unique()))
        product_ids = pd.Index(product_ids)
        X, _ = basket_matrix(lines, product_ids)
        item_counts = np.asarray(X.sum(axis=0)).ravel().astype(np.int64)
        return cls(product_ids=product_ids, n_baskets=int(X.shape[0]), item_counts=item_counts, co=cooccurrence_counts(X), X=X)

    @property
    def n_products(self) -> int:
        """Number of products in the column space."""
        return len(self.product_ids)

    def index_of(self, ids) -> np.ndarray:
        """(n,) int64 product indices of ``ids`` (str); -1 for unknown ids."""
        return self.product_ids.get_indexer(pd.Index(np.asarray(ids, dtype=object).astype(str)))

    def count(self, a, b) -> np.ndarray:
        """(n,) int64 co-purchase counts n_ab for index arrays ``a``, ``b`` of shape (n,)."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        if len(a) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.co[a, b]).ravel().astype(np.int64)

    def support(self, a, b) -> np.ndarray:
        """(n,) float64 support n_ab / N."""
        return self.count(a, b) / max(self.n_baskets, 1)

    def confidence(self, a, b) -> np.ndarray:
        """(n,) float64 confidence(a -> b) = n_ab / n_a (0 when n_a = 0)."""
        na = self.item_counts[np.asarray(a, dtype=np.int64)]
        return np.divide(self.count(a, b), na, out=np.zeros(len(na)), where=na > 0)

    def lift(self, a, b) -> np.ndarray:
        """(n,) float64 lift n_ab * N / (n_a * n_b) (0 when n_a or n_b is 0)."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        den = self.item_counts[a].astype(np.float64) * self.item_counts[b]
        return np.divide(self.count(a, b) * float(self.n_baskets), den, out=np.zeros(len(a)), where=den > 0)

    def jaccard(self, a, b) -> np.ndarray:
        """(n,) float64 Jaccard index n_ab / (n_a + n_b - n_ab) (0 when undefined)."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        nab = self.count(a, b)
        den = self.item_counts[a] + self.item_counts[b] - nab
        return np.divide(nab, den, out=np.zeros(len(a)), where=den > 0)

    def top_companions(self, anchor: int, k: int, *, popularity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Companions of one anchor with the highest co-purchase counts.

        Args:
            anchor: product index.
            k: maximum number of companions.
            popularity: optional (n_products,) tie-break key (higher first);
                default ``item_counts``. Remaining ties: lower index first.

        Returns:
            (indices int64 (<=k,), counts int64 (<=k,)), counts descending;
            only companions with count > 0; never the anchor.
        """
        pop = self.item_counts if popularity is None else popularity
        lo, hi = self.co.indptr[anchor], self.co.indptr[anchor + 1]
        idx = self.co.indices[lo:hi].astype(np.int64)
        cnt = self.co.data[lo:hi].astype(np.int64)
        if len(idx) > 4 * k:
            # keep everything tied with the k-th largest count, then sort exactly
            kth = np.partition(cnt, len(cnt) - k)[len(cnt) - k]
            sel = cnt >= kth
            idx, cnt = idx[sel], cnt[sel]
        order = np.lexsort((idx, -pop[idx], -cnt))[:k]
        return idx[order], cnt[order]

    def baskets_with_all(self, items) -> int:
        """Number of baskets holding every product index in ``items`` (needs ``X``).

        Raises:
            ValueError: if the statistics were built without a basket matrix.
        """
        if self.X is None:
            raise ValueError("PairStats has no basket matrix X")
        if self._Xcsc is None:
            self._Xcsc = self.X.tocsc()
            self._Xcsc.sort_indices()
        M = self._Xcsc
        common = None
        for j in items:
            rows = M.indices[M.indptr[j]:M.indptr[j + 1]]
            common = rows if common is None else np.intersect1d(common, rows, assume_unique=True)
            if len(common) == 0:
                return 0
        return int(len(common))
