"""Product features: categorical vocabularies with OOV buckets, and the encoded product table.

Product features: department, category, product_type, brand are mapped to
integer ids for Keras ``Embedding`` layers. Id layout per field:
``0 .. n_oov-1`` are out-of-vocabulary buckets (an unknown value v goes to
``crc32(v) % n_oov``; the empty string always goes to bucket 0), and
``n_oov + i`` is the i-th vocabulary value. Vocabularies are stored in the
artifact metadata, so encoding is identical at training and scoring time.

Pair features of the ranker live in :mod:`bundling_ml.ranking`
(``ANON_FEATURES``, ``SHOPPER_FEATURES``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd


CATEGORICAL_FIELDS = ("department", "category", "product_type", "brand")
COUNT_SCALE = 100_000.0


@dataclass
class ProductVocab:
    """Vocabularies of the categorical product fields.

    Attributes:
        vocab: field -> list of known values (str), in id order.
        n_oov: number of OOV buckets per field (>= 1).
    """

    vocab: dict
    n_oov: int = 2

    @classmethod
    def fit(cls, products: pd.DataFrame, product_ids=None, *, min_count: int = 1, n_oov: int = 2) -> "ProductVocab":
        """Learn vocabularies from a products frame.

        Args:
            products: prepared products frame (see
                :func:`bundling_ml.data.prepare_products`).
            product_ids: optional ids (str) restricting which products count
                (e.g. products seen in training).
            min_count: a value needs at least this many products to get its
                own id; rarer values share the OOV buckets.
            n_oov: number of OOV buckets (>= 1).

        Returns:
            ProductVocab with values sorted by descending frequency, then
            alphabetically; the empty string is never a vocabulary value.
        """
        p = products if product_ids is None else products[products["product_id"].isin(pd.Index(product_ids))]
        vocab = {}
        for f in CATEGORICAL_FIELDS:
            vc = p[f].astype(str).value_counts()
            vc = vc[(vc.index != "") & (vc >= min_count)]
            items = sorted(vc.items(), key=lambda kv: (-kv[1], kv[0]))
            vocab[f] = [k for k, _ in items]
        return cls(vocab=vocab, n_oov=max(1, int(n_oov)))

    def input_dim(self, field: str) -> int:
        """Number of ids of ``field`` (vocabulary size + OOV buckets)."""
        return len(self.vocab[field]) + self.n_oov

    def encode(self, products: pd.DataFrame) -> dict:
        """Encode products to ids.

        Args:
            products: frame with the categorical fields (str).

        Returns:
            dict field -> (n,) int32 ids, in the row order of ``products``.
        """
        out = {}
        for f in CATEGORICAL_FIELDS:
            values = products[f].astype(str).to_numpy()
            idx = pd.Index(self.vocab[f]).get_indexer(values)
            ids = np.where(idx >= 0, idx + self.n_oov, -1).astype(np.int64)
            unknown = np.flatnonzero(ids < 0)
            if len(unknown):
                ids[unknown] = [0 if v == "" else zlib.crc32(v.encode("utf-8")) % self.n_oov for v in values[unknown]]
            out[f] = ids.astype(np.int32)
        return out

    def to_json(self) -> dict:
        """JSON-serialisable form (stored in metadata.json)."""
        return {"vocab": self.vocab, "n_oov": self.n_oov}

    @classmethod
    def from_json(cls, d: dict) -> "ProductVocab":
        """Inverse of :meth:`to_json`."""
        return cls(vocab={k: list(v) for k, v in d["vocab"].items()}, n_oov=int(d["n_oov"]))


@dataclass
class ProductTable:
    """Encoded product features aligned to a product index.

    Attributes:
        product_ids: pd.Index of product ids (str).
        codes: field -> (n_products,) int32 ids (see :class:`ProductVocab`).
        log_price: (n_products,) float32 log(1 + unit price); 0 when unknown.
        category: (n_products,) int64 raw category code (-1 for ""), used for
            the same-category flag and category back-fill.
        department: (n_products,) int64 raw department code (-1 for "").
    """

    product_ids: pd.Index
    codes: dict
    log_price: np.ndarray
    category: np.ndarray
    department: np.ndarray

    @classmethod
    def build(cls, products: pd.DataFrame, product_ids: pd.Index, vocab: ProductVocab) -> "ProductTable":
        """Align a prepared products frame to ``product_ids`` and encode it.

        Products missing from ``products`` get empty attributes and unknown
        price.
        """
        p = products.drop_duplicates("product_id").set_index("product_id").reindex(pd.Index(product_ids))
        for f in CATEGORICAL_FIELDS:
            p[f] = p[f].fillna("").astype(str)
        price = pd.to_numeric(p["price"], errors="coerce").to_numpy(dtype=np.float64)
        log_price = np.log1p(np.where(np.isfinite(price) & (price > 0), price, 0.0)).astype(np.float32)

        def raw_codes(col):
            c, _ = pd.factorize(p[col].to_numpy())
            c = c.astype(np.int64)
            c[p[col].to_numpy() == ""] = -1
            return c

        return cls(
            product_ids=pd.Index(product_ids),
            codes=vocab.encode(p.reset_index()),
            log_price=log_price,
            category=raw_codes("category"),
            department=raw_codes("department"),
        )
