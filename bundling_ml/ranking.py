"""Listwise bundle ranker: context statistics, candidate generation, features,
the Keras listwise model, and the SAR / repeat baselines.

A *context* (:class:`Context`) holds everything the ranker knows about a
window of order lines that ends at ``end``:

* pair statistics (:class:`bundling_ml.stats.PairStats`) and a time-decayed
  co-occurrence matrix (each basket weighted ``0.5 ** (age_days /
  half_life_days)``, as SAR decays user affinities; Aggarwal 2016 ch. 2);
* recent popularity (baskets of the last ``recent_days``);
* category-pair lift (basket x category co-occurrence) for back-fill and
  cold anchors;
* per-shopper history: how many of the shopper's baskets held each product,
  and when the shopper last bought it (personalised protocol variant: only
  the shopper's own history in the window is used).

Candidates for an anchor (:func:`anchor_candidates`), in this order, without
duplicates, never the anchor: top co-purchase count, top time-decayed
Jaccard, the most recently popular products of the anchor's category, then
recent popularity (candidates from the categories with the highest
category-pair lift are off by default: they displaced back-fill that holds
the truth more often; ``docs/quality.md``, "Candidate generation ablation").
For a known shopper (:func:`shopper_candidates`) the shopper's most bought
products come first.

Pair features (:data:`ANON_FEATURES`, then :data:`SHOPPER_FEATURES` for the
personalised model) are listed in :func:`pair_features`.

The model (:func:`build_listwise_model`) scores each candidate of a list with
a wide & deep network (shared product-attribute embeddings of anchor and
candidate, their element-wise product, normalised pair features) and is
trained with a softmax cross-entropy over the candidate list of each query
(ListNet top-1, Cao et al. 2007): the target distribution is uniform over the
candidates that are in the query basket.

TensorFlow / Keras are imported inside the functions that need them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bundling_ml.data import basket_matrix
from bundling_ml.features import CATEGORICAL_FIELDS, COUNT_SCALE, ProductTable
from bundling_ml.stats import PairStats

#: Embedding width per categorical field (shared by anchor and candidate).
EMBED_DIMS = {"department": 4, "category": 12, "product_type": 16, "brand": 2}

ANON_FEATURES = (
    "log1p_count", "log_lift", "confidence", "jaccard", "cand_log_pop", "anchor_log_pop",
    "same_category", "same_department", "reverse_confidence",
    "log1p_decayed_count", "decayed_jaccard", "decayed_confidence",
    "cand_recent_log_pop", "cand_trend", "category_pair_log_lift", "same_product_type", "same_brand",
    "cand_log_price", "anchor_log_price",
    "cand_display", "cand_mailer", "anchor_promo",
    "cand_hour_lift", "cand_dow_lift", "cand_log_basket_size", "cand_log_codegree", "anchor_log_basket_size",
    "store_known", "store_confidence", "store_conf_log_ratio", "store_cand_log_lift", "store_anchor_log_baskets",
    "hh_log_rate", "hh_log_lift", "hh_anchor_log_lift", "hh_context_shift", "hh_log_effective",
)
#: the store-context features (a subset of ANON_FEATURES; see :func:`pair_features`)
STORE_FEATURES = ANON_FEATURES[27:32]
#: the likely-shopper (household posterior) features (a subset of ANON_FEATURES; see :func:`household_features`)
HOUSEHOLD_FEATURES = ANON_FEATURES[32:37]
SHOPPER_FEATURES = ("shopper_bought", "shopper_log_count", "shopper_share", "shopper_recency", "shopper_log_baskets", "shopper_anchor_share", "shopper_category_share")
ALL_FEATURES = ANON_FEATURES + SHOPPER_FEATURES

#: feature groups used by the ablation (names of ANON_FEATURES / SHOPPER_FEATURES)
FEATURE_GROUPS = {
    "time_decay": ("log1p_decayed_count", "decayed_jaccard", "decayed_confidence"),
    "recent_popularity": ("cand_recent_log_pop", "cand_trend"),
    "category_pair": ("category_pair_log_lift",),
    "promotions": ("cand_display", "cand_mailer", "anchor_promo"),
    "attributes": ("same_category", "same_department", "same_product_type", "same_brand", "cand_log_price", "anchor_log_price"),
    "query_time": ("cand_hour_lift", "cand_dow_lift"),
    "basket_size": ("cand_log_basket_size", "cand_log_codegree", "anchor_log_basket_size"),
    "store": STORE_FEATURES,
    "household": HOUSEHOLD_FEATURES,
}

#: hours per time-of-day bucket of the query-time features (8 buckets of 3 h)
HOUR_BUCKET_HOURS = 3
#: time slots (time-of-day bucket x weekday) of :func:`time_slots`
N_TIME_SLOTS = (24 // HOUR_BUCKET_HOURS) * 7

#: shrinkage of the store-conditional confidence towards the global one
#: (pseudo-baskets) and of the candidate's store share towards its overall share
STORE_CONF_PRIOR = 10.0
STORE_SHARE_PRIOR = 20.0

HALF_LIFE_DAYS = 56.0
RECENT_DAYS = 28

#: shrinkage (pseudo-baskets) of a shopper's time-slot and store shares towards the chain's (household posterior)
HH_SLOT_PRIOR = 10.0
HH_STORE_PRIOR = 10.0
#: groups (distinct anchor, slot, store) per block of :func:`household_features`, and the cap on the
#: dense (block x shoppers) posterior it holds (float32 cells)
HH_BLOCK = 500
HH_MAX_CELLS = 50_000_000


@dataclass
class ShrunkShares:
    """Each shopper's shares of a categorical context (time slot, store), shrunk towards the chain's.

    P(cell | h) = (cnt[h, cell] + prior * share[cell]) / (total[h] + prior), with
    ``cnt`` the shopper's baskets per cell (sparse: a shop may have millions of
    shoppers and hundreds of stores), ``total`` the shopper's baskets with a known
    cell and ``share`` the chain's share of baskets per cell (beta-binomial /
    Dirichlet posterior mean with the chain's shares as prior mean).
    """

    cnt: sp.csc_matrix
    total: np.ndarray
    share: np.ndarray
    prior: float

    @classmethod
    def count(cls, shopper: np.ndarray, cell: np.ndarray, n_shoppers: int, n_cells: int, prior: float) -> "ShrunkShares":
        """From (n_baskets,) int64 shopper rows and cells (-1 unknown: not counted)."""
        ok = cell >= 0
        cnt = sp.csc_matrix((np.ones(int(ok.sum()), np.float64), (shopper[ok], cell[ok])), shape=(n_shoppers, n_cells))
        cnt.sum_duplicates()
        share = np.asarray(cnt.sum(axis=0)).ravel() / max(float(ok.sum()), 1.0)
        return cls(cnt=cnt, total=np.asarray(cnt.sum(axis=1)).ravel(), share=share, prior=prior)

    def columns(self, cells: np.ndarray) -> np.ndarray:
        """(n_shoppers, len(cells)) float32 P(cell | shopper) for each of ``cells`` (int64, all >= 0)."""
        num = self.cnt[:, cells].toarray() + self.prior * self.share[cells][None, :]
        return (num / (self.total[:, None] + self.prior)).astype(np.float32)


def _codes(values: np.ndarray) -> np.ndarray:
    c, _ = pd.factorize(values)
    c = c.astype(np.int64)
    c[values == ""] = -1
    return c


@dataclass
class Context:
    """Statistics of one window of cleaned order lines (see module docstring).

    Attributes:
        S: pair statistics on ``product_index``.
        table: encoded products (same index).
        cod: (n_products, n_products) CSR float32 time-decayed co-occurrence.
        nd: (n_products,) float64 time-decayed basket counts; Nd their basket total.
        recent: (n_products,) int64 baskets in the last ``recent_days``; n_recent total.
        cat: (n_products,) int64 category code (-1 unknown); cat_log_lift
            (n_cat, n_cat) float32 log lift of category pairs.
        ptype, brand: (n_products,) int64 codes (-1 unknown).
        users: pd.Index of shopper ids (str); u_indptr / u_items / u_count /
            u_last: per shopper (rows of users), the products bought, sorted by
            count desc then recency, with basket counts and days since last
            purchase at ``end``; u_nb: baskets per shopper; u_keys: sorted
            (user * n_products + product) keys with u_pos their position.
        uc_keys / uc_share: sorted (user * n_cat + cat) keys and the share of
            the shopper's baskets holding that category.
        hour_lift: (24 / HOUR_BUCKET_HOURS, n_products) float32 and dow_lift:
            (7, n_products) float32 log lift of the product in baskets of that
            time-of-day bucket / weekday: log(((n_bp + 1) / (n_p + n_buckets))
            / (N_b / N)) (add-one smoothed share of the product's baskets in
            bucket b over the share of all baskets in b; 0 = no preference, and
            0 for a bucket without training baskets).
        log_basket_size: (n_products,) float32 log1p(mean number of distinct
            products of the baskets holding the product).
        log_codegree: (n_products,) float32 log1p(co-purchase pairs of the
            product per 100k baskets) = log1p(sum_b n_pb * 100k / N).
        stores: pd.Index of store ids (str) seen in the window, or None when
            the lines carry no ``store_id``; b_store: (n_baskets,) int64 store
            row of each basket (-1 unknown); X: (n_baskets, n_products) binary
            CSR basket matrix and Xcsc the same in CSC (anchor -> baskets);
            store_n: (n_stores,) float64 baskets per store; store_item:
            (n_stores, n_products) CSR float32 baskets per store and product.
        hh_C: (n_users, n_products) CSC float32 baskets of each shopper (rows of
            ``users``) holding the product; hh_Rt: (n_products, n_users) CSR
            float32 the same over the shopper's baskets (share of the shopper's
            baskets holding the product, transposed); hh_slot:
            :class:`ShrunkShares` P(slot | shopper), slot = 3-hour bucket * 7 +
            weekday (56), shrunk towards the chain's slot shares with
            :data:`HH_SLOT_PRIOR` pseudo-baskets; hh_store: :class:`ShrunkShares`
            P(store | shopper) shrunk likewise (:data:`HH_STORE_PRIOR`), None
            without stores; hh_p: (n_products,) float64 share of the shoppers'
            baskets holding the product. None when no line carries a customer id.
    """

    S: PairStats
    table: ProductTable
    cod: sp.csr_matrix
    nd: np.ndarray
    Nd: float
    recent: np.ndarray
    n_recent: int
    cat: np.ndarray
    cat_log_lift: np.ndarray
    ptype: np.ndarray
    brand: np.ndarray
    end: pd.Timestamp
    users: pd.Index
    u_indptr: np.ndarray
    u_items: np.ndarray
    u_count: np.ndarray
    u_last: np.ndarray
    u_nb: np.ndarray
    u_keys: np.ndarray
    u_pos: np.ndarray
    uc_keys: np.ndarray
    uc_share: np.ndarray
    rec_order: np.ndarray = None
    promo_origin: pd.Timestamp | None = None
    promo_keys: np.ndarray | None = None
    promo_vals: np.ndarray | None = None
    hour_lift: np.ndarray | None = None
    dow_lift: np.ndarray | None = None
    log_basket_size: np.ndarray | None = None
    log_codegree: np.ndarray | None = None
    stores: pd.Index | None = None
    b_store: np.ndarray | None = None
    X: sp.csr_matrix | None = None
    Xcsc: sp.csc_matrix | None = None
    store_n: np.ndarray | None = None
    store_item: sp.csr_matrix | None = None
    hh_C: sp.csc_matrix | None = None
    hh_Rt: sp.csr_matrix | None = None
    hh_slot: ShrunkShares | None = None
    hh_store: ShrunkShares | None = None
    hh_p: np.ndarray | None = None

    @property
    def n_products(self) -> int:
        return self.S.n_products


def build_context(lines: pd.DataFrame, product_index: pd.Index, table: ProductTable, products: pd.DataFrame, *, end=None,
                  half_life_days: float = HALF_LIFE_DAYS, recent_days: int = RECENT_DAYS) -> Context:
    """Build a :class:`Context` from cleaned lines of one window.

    Args:
        lines: cleaned lines (``prepare_lines``) of the window.
        product_index: column space (str ids); products outside are ignored.
        table: encoded products on ``product_index``.
        products: prepared products frame (for product_type and brand).
        end: end of the window (default: the day after the last line).
    """
    product_index = pd.Index(product_index)
    nP = len(product_index)
    end = pd.Timestamp(end) if end is not None else lines["time"].max().normalize() + pd.Timedelta(days=1)
    X, bids = basket_matrix(lines, product_index)
    S = PairStats.from_lines(lines, product_index)
    bt = lines.groupby("basket_id", sort=False)["time"].first().reindex(bids).to_numpy()
    age = (end - pd.DatetimeIndex(bt)).total_seconds().to_numpy() / 86400.0
    w = np.power(0.5, age / half_life_days).astype(np.float32)
    Xf = X.astype(np.float32)
    cod = (Xf.T.tocsr() @ sp.diags(w).tocsr() @ Xf).tocsr()
    cod.setdiag(0)
    cod.eliminate_zeros()
    cod.sort_indices()
    nd = np.asarray(Xf.T @ w).ravel().astype(np.float64)
    rec = age <= recent_days
    recent = np.asarray(X[rec].sum(axis=0)).ravel().astype(np.int64)
    p = products.drop_duplicates("product_id").set_index("product_id").reindex(product_index)
    cat = table.category
    ncat = int(cat.max()) + 1 if len(cat) and cat.max() >= 0 else 1
    # basket x category
    Xc = X.tocoo()
    cc = cat[Xc.col]
    ok = cc >= 0
    Y = sp.csr_matrix((np.ones(ok.sum(), np.float32), (Xc.row[ok], cc[ok])), shape=(X.shape[0], ncat))
    Y.data[:] = 1.0
    Y.sum_duplicates()
    Y.data[:] = 1.0
    ycount = np.asarray(Y.sum(axis=0)).ravel()
    C = (Y.T @ Y).toarray()
    N = max(X.shape[0], 1)
    cat_log_lift = np.log((C + 1.0) / (np.outer(ycount, ycount) / N + 1.0)).astype(np.float32)
    np.fill_diagonal(cat_log_lift, np.log((np.diag(C) + 1.0) / (ycount * ycount / N + 1.0)))
    del Xc, Y, C
    ptype = _codes(p["product_type"].fillna("").astype(str).to_numpy())
    brand = _codes(p["brand"].fillna("").astype(str).to_numpy())
    # shopper history
    cust = lines["customer_id"]
    has = cust.notna().to_numpy().copy()
    col = product_index.get_indexer(lines["product_id"])
    has &= col >= 0
    ul = pd.DataFrame({"u": cust[has].astype(str).to_numpy(), "p": col[has], "t": lines["time"].to_numpy()[has], "b": lines["basket_id"].to_numpy()[has]})
    users = pd.Index(np.sort(ul["u"].unique()))
    ul["ui"] = users.get_indexer(ul["u"])
    u_nb = ul.groupby("ui")["b"].nunique().reindex(np.arange(len(users)), fill_value=0).to_numpy().astype(np.float64)
    g = ul.groupby(["ui", "p"], sort=False).agg(n=("b", "size"), last=("t", "max")).reset_index()
    g["days"] = (end - g["last"]).dt.total_seconds() / 86400.0
    g = g.sort_values(["ui", "n", "days", "p"], ascending=[True, False, True, True], kind="stable")
    ui = g["ui"].to_numpy().astype(np.int64)
    u_indptr = np.searchsorted(ui, np.arange(len(users) + 1)).astype(np.int64)
    u_items = g["p"].to_numpy().astype(np.int64)
    u_count = g["n"].to_numpy().astype(np.float32)
    u_last = g["days"].to_numpy().astype(np.float32)
    keys = ui * nP + u_items
    u_pos = np.argsort(keys, kind="stable")
    u_keys = keys[u_pos]
    ul["c"] = cat[ul["p"].to_numpy()]
    uc = ul[ul["c"] >= 0].groupby(["ui", "c"])["b"].nunique()
    uck = uc.index.get_level_values(0).to_numpy().astype(np.int64) * ncat + uc.index.get_level_values(1).to_numpy().astype(np.int64)
    o = np.argsort(uck)
    uc_share = (uc.to_numpy()[o] / np.maximum(u_nb[uc.index.get_level_values(0).to_numpy()[o]], 1)).astype(np.float32)
    ctx = Context(S=S, table=table, cod=cod, nd=nd, Nd=float(w.sum()), recent=recent, n_recent=int(rec.sum()), cat=cat,
                  cat_log_lift=cat_log_lift, ptype=ptype, brand=brand, end=end, users=users, u_indptr=u_indptr, u_items=u_items,
                  u_count=u_count, u_last=u_last, u_nb=u_nb, u_keys=u_keys, u_pos=u_pos, uc_keys=uck[o], uc_share=uc_share)
    # query-time and basket-size profiles of each product
    bts = pd.DatetimeIndex(bt)
    n_h = 24 // HOUR_BUCKET_HOURS
    hb = (bts.hour.to_numpy() // HOUR_BUCKET_HOURS).astype(np.int64)
    dw = bts.day_of_week.to_numpy().astype(np.int64)
    nb_ = X.shape[0]
    n_item = S.item_counts.astype(np.float64)

    def _bucket_lift(b, k):
        counts = (sp.csr_matrix((np.ones(nb_, np.float32), (b, np.arange(nb_))), shape=(k, nb_)) @ Xf).toarray()
        share = np.bincount(b, minlength=k) / max(nb_, 1)
        lift = np.log((counts + 1.0) / (n_item[None, :] + k) / np.maximum(share, 1e-12)[:, None])
        lift[share == 0] = 0.0  # no training basket at that time: no evidence
        return lift.astype(np.float32)

    ctx.hour_lift = _bucket_lift(hb, n_h)
    ctx.dow_lift = _bucket_lift(dw, 7)
    size = np.diff(X.indptr).astype(np.float32)
    ctx.log_basket_size = np.log1p(np.divide(np.asarray(Xf.T @ size).ravel(), n_item, out=np.zeros(nP), where=n_item > 0)).astype(np.float32)
    ctx.log_codegree = np.log1p(np.asarray(S.co.sum(axis=1)).ravel() * COUNT_SCALE / N).astype(np.float32)
    if "store_id" in lines.columns and lines["store_id"].notna().any():
        bs = lines.groupby("basket_id", sort=False)["store_id"].first().reindex(bids)
        ctx.stores = pd.Index(np.sort(bs.dropna().astype(str).unique()))
        ctx.b_store = ctx.stores.get_indexer(bs.astype("object").where(bs.notna(), None)).astype(np.int64)
        ctx.X, ctx.Xcsc = X, X.tocsc()
        okb = ctx.b_store >= 0
        Sm = sp.csr_matrix((np.ones(okb.sum(), np.float32), (ctx.b_store[okb], np.flatnonzero(okb))), shape=(len(ctx.stores), nb_))
        ctx.store_n = np.bincount(ctx.b_store[okb], minlength=len(ctx.stores)).astype(np.float64)
        ctx.store_item = (Sm @ Xf).tocsr()
    if len(users):
        _attach_households(ctx, g, ul, bids)
    key = ctx.recent.astype(np.float64) + 1e-6 * S.item_counts
    idx = np.flatnonzero(S.item_counts > 0)
    ctx.rec_order = idx[np.lexsort((idx, -key[idx]))]
    return ctx


def time_slots(times) -> np.ndarray:
    """(n,) int64 time slot (3-hour bucket * 7 + weekday, 0..N_TIME_SLOTS - 1) of ``times``; -1 for NaT.

    The query context the backtest, ``recommend`` and the likely-shopper posterior group by."""
    t = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
    nat = t.isna()
    t = t.where(~nat, pd.Timestamp(0))
    slot = (t.hour.to_numpy() // HOUR_BUCKET_HOURS).astype(np.int64) * 7 + t.day_of_week.to_numpy().astype(np.int64)
    return np.where(nat, -1, slot)


def _attach_households(ctx: Context, g: pd.DataFrame, ul: pd.DataFrame, bids) -> None:
    """Set the ``hh_*`` fields of ``ctx`` from the per (shopper row ``ui``, product ``p``) basket counts ``g``
    (column ``n``) and the shoppers' lines ``ul`` (ui, t, b)."""
    H, nP = len(ctx.users), ctx.n_products
    C = sp.csr_matrix((g["n"].to_numpy(np.float32), (g["ui"].to_numpy(), g["p"].to_numpy())), shape=(H, nP))
    nb = np.maximum(ctx.u_nb, 1.0)
    ctx.hh_C = C.tocsc()
    ctx.hh_Rt = (sp.diags((1.0 / nb).astype(np.float32)) @ C).T.tocsr()
    ctx.hh_p = np.asarray(C.sum(axis=0)).ravel().astype(np.float64) / max(float(ctx.u_nb.sum()), 1.0)
    ub = ul.drop_duplicates("b")
    ui = ub["ui"].to_numpy().astype(np.int64)
    ctx.hh_slot = ShrunkShares.count(ui, time_slots(ub["t"]), H, N_TIME_SLOTS, HH_SLOT_PRIOR)
    if ctx.stores is not None:
        brow = pd.Index(bids).get_indexer(ub["b"])
        ctx.hh_store = ShrunkShares.count(ui, np.where(brow >= 0, ctx.b_store[np.maximum(brow, 0)], -1), H, len(ctx.stores), HH_STORE_PRIOR)


def household_features(ctx: Context, a: np.ndarray, c: np.ndarray, times=None, stores: np.ndarray | None = None) -> np.ndarray:
    """Likely-shopper features of (anchor, candidate) pairs for a query without a shopper id.

    Most of a shop's baskets come from returning shoppers, who differ in what
    they buy, when and where they shop. The anchor, the query's time slot
    (3-hour bucket x weekday) and its store give a posterior over the
    window's shoppers (naive Bayes; slot and store independent of the anchor
    given the shopper):

        P(h | a, slot, store) ∝ C[h, a] · P(slot | h) · P(store | h)

    with C[h, a] the shopper's baskets holding the anchor (∝ P(h, a)) and the
    slot / store shares of :class:`Context` (a factor is left out when the
    query's time or store is unknown). The candidate's *profile rate* is the
    expected share of a likely shopper's baskets holding it,
    rate(c) = Σ_h P(h | ·) · C[h, c] / n_h.

    Args:
        ctx: context with ``hh_*`` fields (else all columns are 0).
        a, c: (n,) int64 anchor and candidate indices.
        times: (n,) datetime64 query times (NaT / None: no slot factor).
        stores: (n,) int64 store rows (-1 / None: no store factor).

    Returns:
        (n, 5) float32 columns :data:`HOUSEHOLD_FEATURES`: log(rate + 1e-4);
        log((rate + 1e-4) / (p_c + 1e-4)) with p_c the candidate's share of
        the shoppers' baskets; the same lift with P(h | a) alone (no slot, no
        store); the first column minus log(rate_anchor_only + 1e-4); log of
        the posterior's effective number of shoppers 1 / Σ_h P(h | ·)². All 0
        for an anchor no known shopper bought.
    """
    a = np.asarray(a, np.int64)
    c = np.asarray(c, np.int64)
    n = len(a)
    out = np.zeros((n, 5), np.float32)
    if n == 0 or ctx.hh_C is None:
        return out
    slot = time_slots(times) if times is not None else np.full(n, -1, np.int64)
    st = np.asarray(stores, np.int64) if stores is not None and ctx.hh_store is not None else np.full(n, -1, np.int64)
    n_slot = len(ctx.hh_slot.share)
    n_st = len(ctx.hh_store.share) if ctx.hh_store is not None else 0
    keys = (a * (n_slot + 1) + slot + 1) * (n_st + 1) + st + 1
    uk, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(uk) + 1))
    H = ctx.hh_C.shape[0]
    block = max(1, min(HH_BLOCK, HH_MAX_CELLS // max(2 * H, 1)))
    log_p = np.log(ctx.hh_p + 1e-4)
    for g0 in range(0, len(uk), block):
        g1 = min(g0 + block, len(uk))
        f = first[g0:g1]
        A = ctx.hh_C[:, a[f]].T.toarray()  # (k, H) baskets of each shopper with the anchor
        W = A.copy()
        ks = slot[f] >= 0
        W[ks] *= ctx.hh_slot.columns(slot[f][ks]).T
        kt = st[f] >= 0
        if kt.any():
            W[kt] *= ctx.hh_store.columns(st[f][kt]).T
        za, zw = A.sum(axis=1, keepdims=True), W.sum(axis=1, keepdims=True)
        A = np.divide(A, za, out=np.zeros_like(A), where=za > 0)
        W = np.divide(W, zw, out=np.zeros_like(W), where=zw > 0)
        idx = order[bounds[g0]:bounds[g1]]
        uc, cpos = np.unique(c[idx], return_inverse=True)
        k = g1 - g0
        rates = ctx.hh_Rt[uc] @ np.concatenate([W, A], axis=0).T  # (U, 2k)
        grp = inv[idx] - g0
        r_ctx, r_a = rates[cpos.ravel(), grp], rates[cpos.ravel(), k + grp]
        has = (za[grp, 0] > 0)
        lc, la, lp = np.log(r_ctx + 1e-4), np.log(r_a + 1e-4), log_p[c[idx]]
        eff = np.log(1.0 / np.maximum((W ** 2).sum(axis=1), 1e-12))[grp]
        out[idx] = np.where(has[:, None], np.stack([lc, lc - lp, la - lp, lc - la, eff], axis=1), 0.0)
    return out


def attach_promotions(ctx: Context, promotions: pd.DataFrame | None) -> Context:
    """Attach weekly promotions (product_id, week_start, display, mailer: number of
    stores with the product on display / in the mailer that week) to ``ctx``."""
    if promotions is None or len(promotions) == 0:
        return ctx
    pm = promotions
    col = ctx.S.product_ids.get_indexer(pm["product_id"].astype(str))
    ok = col >= 0
    ws = pd.to_datetime(pm["week_start"]).to_numpy()[ok]
    origin = pd.Timestamp(ws.min())
    wk = ((ws - origin.to_datetime64()) // np.timedelta64(7, "D")).astype(np.int64)
    keys = wk * ctx.n_products + col[ok]
    o = np.argsort(keys, kind="stable")
    ctx.promo_origin = origin
    ctx.promo_keys = keys[o]
    ctx.promo_vals = np.log1p(np.stack([pm["display"].to_numpy(np.float64)[ok][o], pm["mailer"].to_numpy(np.float64)[ok][o]], 1)).astype(np.float32)
    return ctx


def week_index(ctx: Context, times) -> np.ndarray:
    """(n,) int64 promotion-week index of each time (-1 without promotions)."""
    t = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
    if ctx.promo_origin is None:
        return np.full(len(t), -1, np.int64)
    return ((t - ctx.promo_origin) // pd.Timedelta(days=7)).to_numpy().astype(np.int64)


def _promo(ctx: Context, p: np.ndarray, weeks: np.ndarray) -> np.ndarray:
    out = np.zeros((len(p), 2), np.float32)
    if ctx.promo_keys is None or weeks is None:
        return out
    ok = weeks >= 0
    pos = np.full(len(p), -1, np.int64)
    pos[ok] = _lookup(weeks[ok] * ctx.n_products + p[ok], ctx.promo_keys)
    out[pos >= 0] = ctx.promo_vals[pos[pos >= 0]]
    return out


def _lookup(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, np.int64)
    return np.where(sorted_keys[pos] == keys, pos, -1)


def _sparse_values(M: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0:
        return np.zeros(0)
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), 2_000_000):
        out[s:s + 2_000_000] = np.asarray(M[a[s:s + 2_000_000], b[s:s + 2_000_000]]).ravel()
    return out


def store_index(ctx: Context, store_ids) -> np.ndarray:
    """(n,) int64 store rows of ``store_ids`` (str / None); -1 for unknown or when ``ctx`` has no stores."""
    s = pd.Series(store_ids, dtype="object").fillna("").astype(str).str.strip().to_numpy()
    if ctx.stores is None:
        return np.full(len(s), -1, np.int64)
    return ctx.stores.get_indexer(s).astype(np.int64)


def shrunk_store_confidence(n_sac: np.ndarray, n_sa: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """The store's confidence P(c | a, store) shrunk towards the chain-wide ``conf``.

    (n_sac + k * conf) / (n_sa + k), k = :data:`STORE_CONF_PRIOR` (10
    pseudo-baskets; a beta-binomial posterior mean with the chain-wide
    confidence as prior mean). Used for the ``store_confidence`` feature, the
    store-aware count baseline and the storefront's per-store offer order
    (``pipeline.score_offers_by_store``'s ``attach_rate``).

    Args:
        n_sac: baskets of the store holding the anchor and the companion(s) (float or array).
        n_sa: baskets of the store holding the anchor.
        conf: the chain-wide confidence (0..1).

    Returns:
        float or float64 array in 0..1, shaped like the inputs.
    """
    return (n_sac + STORE_CONF_PRIOR * conf) / (n_sa + STORE_CONF_PRIOR)


def store_pair_counts(ctx: Context, s: np.ndarray, a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Co-purchase counts within the query's store.

    Args:
        s, a, c: (n,) int64 store rows (-1 unknown), anchor and candidate indices.

    Returns:
        (n_sac, n_sa): (n,) float64 baskets of store ``s`` holding both ``a``
        and ``c``, and baskets of store ``s`` holding ``a`` (0 where the store
        is unknown). Computed per distinct (store, anchor) from the anchor's
        baskets in that store (no per-store pair matrix is kept).
    """
    n = len(a)
    n_sac, n_sa = np.zeros(n), np.zeros(n)
    if ctx.stores is None or n == 0:
        return n_sac, n_sa
    ok = np.flatnonzero(s >= 0)
    if len(ok) == 0:
        return n_sac, n_sa
    nP = ctx.n_products
    keys = s[ok] * nP + a[ok]
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    ends = np.r_[starts[1:], len(ks)]
    X, Xc = ctx.X, ctx.Xcsc
    for lo, hi in zip(starts, ends):
        st, an = divmod(int(ks[lo]), nP)
        rows = Xc.indices[Xc.indptr[an]:Xc.indptr[an + 1]]
        rows = rows[ctx.b_store[rows] == st]
        if len(rows) == 0:
            continue
        idx = ok[order[lo:hi]]
        cnt = np.bincount(X[rows].indices, minlength=nP)
        n_sac[idx] = cnt[c[idx]]
        n_sa[idx] = len(rows)
    return n_sac, n_sa


def user_index(ctx: Context, customers) -> np.ndarray:
    """(n,) int64 shopper rows of ``customers`` (str / None); -1 for unknown or guest."""
    c = pd.Series(customers, dtype="object").fillna("").astype(str).to_numpy()
    return ctx.users.get_indexer(c).astype(np.int64)


def pair_features(ctx: Context, a: np.ndarray, c: np.ndarray, u: np.ndarray | None = None, *, shopper: bool = False, weeks: np.ndarray | None = None,
                  times=None, stores: np.ndarray | None = None, household: bool = True) -> np.ndarray:
    """Features of (anchor, candidate[, shopper]) triples.

    Args:
        ctx: context of the window the features describe.
        a, c: (n,) int64 product indices; u: (n,) int64 shopper rows (-1 = unknown).
        shopper: also compute :data:`SHOPPER_FEATURES`.

    Returns:
        (n, F) float32 with columns :data:`ANON_FEATURES` (+ :data:`SHOPPER_FEATURES`):
        counts per 100k baskets (log1p), add-one smoothed log lift, confidence
        both ways, Jaccard, their time-decayed versions, recent popularity and
        its trend (log ratio of recent to overall share), category-pair log
        lift, same category / department / product_type / brand flags, log
        prices, log1p(stores with the candidate on display / in the mailer in
        the query's week ``weeks``) and log1p(display + mailer stores) of the
        anchor; shopper: bought before (0/1), log1p(baskets with it), share of
        the shopper's baskets, exp(-days since last purchase / 30), log1p
        (shopper's baskets), share of the shopper's baskets with the anchor,
        share with the candidate's category. Query time ``times`` ((n,)
        datetime64, optional): the candidate's time-of-day and weekday log lift
        (:class:`Context` ``hour_lift`` / ``dow_lift``) at that time; 0 (no
        preference) when ``times`` is None or NaT. Basket size: log mean basket
        size of the candidate and of the anchor, the candidate's log co-purchase
        degree. Store context ``stores`` ((n,) int64 rows of
        :func:`store_index`, -1 unknown; optional): ``store_known`` (0/1);
        ``store_confidence`` = (n_sac + k * conf) / (n_sa + k), the
        confidence P(candidate | anchor) among the store's baskets, shrunk
        towards the global confidence ``conf`` with k =
        :data:`STORE_CONF_PRIOR` pseudo-baskets (empirical-Bayes style
        shrinkage; equals ``conf`` when the store is unknown);
        ``store_conf_log_ratio`` = log((store_confidence + 1e-4) / (conf +
        1e-4)); ``store_cand_log_lift`` = log of the candidate's smoothed share
        of the store's baskets, (n_sc + k' * p_c) / (n_s + k'), over its
        overall share p_c (k' = :data:`STORE_SHARE_PRIOR`); and
        ``store_anchor_log_baskets`` = log1p(n_sa). All 0 (and the confidence
        global) for an unknown store. Likely shopper (:data:`HOUSEHOLD_FEATURES`,
        computed when ``household`` and the context has shopper ids, else 0):
        see :func:`household_features` (uses ``times`` and ``stores``).
    """
    a = np.asarray(a, np.int64)
    c = np.asarray(c, np.int64)
    S = ctx.S
    n = len(a)
    F = len(ALL_FEATURES) if shopper else len(ANON_FEATURES)
    out = np.zeros((n, F), np.float32)
    if n == 0:
        return out
    N = float(max(S.n_baskets, 1))
    nab = _sparse_values(S.co, a, c)
    na = S.item_counts[a].astype(np.float64)
    nb = S.item_counts[c].astype(np.float64)
    sc = COUNT_SCALE / N
    out[:, 0] = np.log1p(nab * sc)
    out[:, 1] = np.log((nab + 1.0) / (na * nb / N + 1.0))
    out[:, 2] = np.divide(nab, na, out=np.zeros(n), where=na > 0)
    den = na + nb - nab
    out[:, 3] = np.divide(nab, den, out=np.zeros(n), where=den > 0)
    out[:, 4] = np.log1p(nb * sc)
    out[:, 5] = np.log1p(na * sc)
    t = ctx.table
    ca, cc = ctx.cat[a], ctx.cat[c]
    out[:, 6] = (ca == cc) & (ca >= 0)
    out[:, 7] = (t.department[a] == t.department[c]) & (t.department[a] >= 0)
    out[:, 8] = np.divide(nab, nb, out=np.zeros(n), where=nb > 0)
    dab = _sparse_values(ctx.cod, a, c)
    da, db = ctx.nd[a], ctx.nd[c]
    out[:, 9] = np.log1p(dab * COUNT_SCALE / max(ctx.Nd, 1e-9))
    dd = da + db - dab
    out[:, 10] = np.divide(dab, dd, out=np.zeros(n), where=dd > 1e-9)
    out[:, 11] = np.divide(dab, da, out=np.zeros(n), where=da > 1e-9)
    nr = max(ctx.n_recent, 1)
    rb = ctx.recent[c].astype(np.float64)
    out[:, 12] = np.log1p(rb * COUNT_SCALE / nr)
    out[:, 13] = np.log((rb + 1.0) / nr) - np.log((nb + 1.0) / N)
    okc = (ca >= 0) & (cc >= 0)
    out[okc, 14] = ctx.cat_log_lift[ca[okc], cc[okc]]
    out[:, 15] = (ctx.ptype[a] == ctx.ptype[c]) & (ctx.ptype[a] >= 0)
    out[:, 16] = (ctx.brand[a] == ctx.brand[c]) & (ctx.brand[a] >= 0)
    out[:, 17] = t.log_price[c]
    out[:, 18] = t.log_price[a]
    if weeks is not None:
        weeks = np.asarray(weeks, np.int64)
        pc_ = _promo(ctx, c, weeks)
        out[:, 19] = pc_[:, 0]
        out[:, 20] = pc_[:, 1]
        out[:, 21] = _promo(ctx, a, weeks).sum(1)
    if times is not None and ctx.hour_lift is not None:
        tt = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
        ok = ~tt.isna()
        if ok.any():
            hb = (tt.hour.to_numpy()[ok] // HOUR_BUCKET_HOURS).astype(np.int64)
            out[ok, 22] = ctx.hour_lift[hb, c[ok]]
            out[ok, 23] = ctx.dow_lift[tt.day_of_week.to_numpy()[ok].astype(np.int64), c[ok]]
    if ctx.log_basket_size is not None:
        out[:, 24] = ctx.log_basket_size[c]
        out[:, 25] = ctx.log_codegree[c]
        out[:, 26] = ctx.log_basket_size[a]
    out[:, 28] = out[:, 2]
    if stores is not None and ctx.stores is not None:
        st = np.asarray(stores, np.int64)
        known_s = st >= 0
        if known_s.any():
            n_sac, n_sa = store_pair_counts(ctx, st, a, c)
            conf = out[:, 2].astype(np.float64)
            sconf = shrunk_store_confidence(n_sac, n_sa, conf)
            out[:, 27] = known_s
            out[known_s, 28] = sconf[known_s]
            out[known_s, 29] = np.log((sconf[known_s] + 1e-4) / (conf[known_s] + 1e-4))
            p_c = (nb[known_s] + 1.0) / (N + 1.0)
            n_sc = _sparse_values(ctx.store_item, st[known_s], c[known_s])
            out[known_s, 30] = np.log((n_sc + STORE_SHARE_PRIOR * p_c) / (ctx.store_n[st[known_s]] + STORE_SHARE_PRIOR) / p_c)
            out[known_s, 31] = np.log1p(n_sa[known_s])
    if household and ctx.hh_C is not None:
        out[:, 32:37] = household_features(ctx, a, c, times, stores)
    if shopper:
        u = np.asarray(u, np.int64) if u is not None else np.full(n, -1, np.int64)
        k0 = len(ANON_FEATURES)
        known = u >= 0
        nP = ctx.n_products
        pos = np.full(n, -1, np.int64)
        pos[known] = _lookup(u[known] * nP + c[known], ctx.u_keys)
        hit = pos >= 0
        j = ctx.u_pos[pos[hit]]
        cnt = np.zeros(n, np.float32)
        cnt[hit] = ctx.u_count[j]
        last = np.full(n, np.inf, np.float32)
        last[hit] = ctx.u_last[j]
        unb = np.zeros(n)
        unb[known] = ctx.u_nb[u[known]]
        out[:, k0] = hit
        out[:, k0 + 1] = np.log1p(cnt)
        out[:, k0 + 2] = np.divide(cnt, unb, out=np.zeros(n), where=unb > 0)
        out[:, k0 + 3] = np.exp(-last / 30.0)
        out[:, k0 + 4] = np.log1p(unb)
        pa = np.full(n, -1, np.int64)
        pa[known] = _lookup(u[known] * nP + a[known], ctx.u_keys)
        ha = pa >= 0
        acnt = np.zeros(n)
        acnt[ha] = ctx.u_count[ctx.u_pos[pa[ha]]]
        out[:, k0 + 5] = np.divide(acnt, unb, out=np.zeros(n), where=unb > 0)
        ncat = ctx.cat_log_lift.shape[0]
        okk = known & (cc >= 0)
        pc = np.full(n, -1, np.int64)
        pc[okk] = _lookup(u[okk] * ncat + cc[okk], ctx.uc_keys)
        out[pc >= 0, k0 + 6] = ctx.uc_share[pc[pc >= 0]]
    return out


# ----------------------------------------------------------------------------- candidates

def _row_top(M: sp.csr_matrix, a: int, k: int, tie: np.ndarray) -> np.ndarray:
    lo, hi = M.indptr[a], M.indptr[a + 1]
    idx = M.indices[lo:hi].astype(np.int64)
    v = M.data[lo:hi]
    if len(idx) > k:
        sel = np.argpartition(-v, k - 1)[:k]
        kth = v[sel].min()
        keep = v >= kth
        idx, v = idx[keep], v[keep]
    o = np.lexsort((idx, -tie[idx], -v))[:k]
    return idx[o]


def decayed_jaccard_matrix(ctx: Context) -> sp.csr_matrix:
    """(n_products, n_products) CSR float32 time-decayed Jaccard similarity (SAR-style)."""
    M = ctx.cod.tocoo()
    d = ctx.nd[M.row] + ctx.nd[M.col] - M.data
    v = np.divide(M.data, d, out=np.zeros(len(d)), where=d > 1e-9).astype(np.float32)
    J = sp.csr_matrix((v, (M.row, M.col)), shape=ctx.cod.shape)
    J.sort_indices()
    return J


def anchor_candidates(ctx: Context, anchors: np.ndarray, m: int = 100, *, n_count: int = 50, n_jaccard: int = 30, n_category: int = 12,
                      J: sp.csr_matrix | None = None, allowed: np.ndarray | None = None, own_category: bool = True,
                      n_related: int = 0, n_per_related: int = 4) -> np.ndarray:
    """Candidate companions per anchor (order in the module docstring).

    Args:
        ctx: statistics context (:func:`build_context`).
        anchors: (n_anchors,) int64 product indices (-1: no anchor, back-fill only).
        m: list length (default 100).
        n_count: top products by co-purchase count with the anchor (default 50).
        n_jaccard: top products by time-decayed Jaccard (default 30; 0 = none, ``J`` not built).
        n_category: most recently popular products kept per category (default 12;
            0 = no category candidates at all, own or related).
        J: (n_products, n_products) CSR decayed Jaccard (:func:`decayed_jaccard_matrix`), built if None.
        allowed: (n_products,) bool mask of products that may be candidates.
        own_category: add the ``n_category`` recently popular products of the
            anchor's own category (default True).
        n_related: number of categories with the highest category-pair log lift
            with the anchor's category to draw from (default 0 = none; the
            anchor's own category is skipped if it is among them). 3 was the
            default until the candidate ablation measured that those
            candidates lower NDCG@10 (cold anchors most: 0.1162 -> 0.1204 with
            store, 0.0991 -> 0.1061 without, on the full backtest).
        n_per_related: recently popular products per related category (default 4,
            at most ``n_category``).

    Defaults are the product's candidates; the keyword switches exist for
    the candidate-generation ablation (``benchmarks/candidate_ablation.py``).

    Returns:
        (n_anchors, m) int64 product indices, -1 padded; never the anchor; only
        products with a training count > 0 (and ``allowed``).
    """
    anchors = np.asarray(anchors, np.int64)
    S = ctx.S
    ok = S.item_counts > 0
    if allowed is not None:
        ok = ok & allowed
    J = decayed_jaccard_matrix(ctx) if (J is None and n_jaccard > 0) else J
    pop = S.item_counts.astype(np.float64)
    rec_order = ctx.rec_order[ok[ctx.rec_order]]
    head = rec_order[: m + 1]
    # most recently popular products per category
    cat_top: dict = {}
    for j in rec_order[:20000]:
        cj = int(ctx.cat[j])
        if cj >= 0:
            l = cat_top.setdefault(cj, [])
            if len(l) < n_category:
                l.append(int(j))
    out = np.full((len(anchors), m), -1, np.int64)
    for r, a in enumerate(anchors.tolist()):
        parts = []
        if a >= 0:
            parts.append(_row_top(S.co, a, n_count, pop))
            if n_jaccard > 0:
                parts.append(_row_top(J, a, n_jaccard, pop))
            ca = int(ctx.cat[a])
            if ca >= 0 and n_category > 0:
                if own_category:
                    parts.append(np.asarray(cat_top.get(ca, []), np.int64))
                rel = np.argsort(-ctx.cat_log_lift[ca])[:n_related] if n_related > 0 else []
                for cr in rel:
                    if cr != ca:
                        parts.append(np.asarray(cat_top.get(int(cr), [])[:n_per_related], np.int64))
        parts.append(head)
        allc = np.concatenate(parts) if parts else head
        allc = allc[ok[allc] & (allc != a)]
        _, first = np.unique(allc, return_index=True)
        allc = allc[np.sort(first)][:m]
        out[r, : len(allc)] = allc
    return out


def shopper_top(ctx: Context, u: int, k: int, exclude: int = -1) -> np.ndarray:
    """The shopper's ``k`` most bought products (baskets desc, then most recent), minus ``exclude``."""
    if u < 0:
        return np.zeros(0, np.int64)
    items = ctx.u_items[ctx.u_indptr[u]: ctx.u_indptr[u + 1]]
    items = items[items != exclude]
    return items[:k]


def shopper_candidates(ctx: Context, anchors: np.ndarray, users: np.ndarray, anon: np.ndarray, anchor_row: np.ndarray, m: int = 100,
                       n_shopper: int = 40, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per query: the shopper's top ``n_shopper`` products, then the anchor's candidates.

    Args:
        anchors, users: (n,) anchor and shopper rows; anon: (n_unique, m0)
            anchor candidates; anchor_row: (n,) row of ``anon`` for each query.

    Returns:
        (n, m) int64, -1 padded.
    """
    out = np.full((len(anchors), m), -1, np.int64)
    for r in range(len(anchors)):
        a, u = int(anchors[r]), int(users[r])
        own = shopper_top(ctx, u, n_shopper, a)
        if allowed is not None:
            own = own[allowed[own]]
        base = anon[anchor_row[r]]
        base = base[base >= 0]
        allc = np.concatenate([own, base])
        _, first = np.unique(allc, return_index=True)
        allc = allc[np.sort(first)][:m]
        out[r, : len(allc)] = allc
    return out


# ----------------------------------------------------------------------------- baselines

def sar_rank(ctx: Context, anchors: np.ndarray, k: int = 10, J: sp.csr_matrix | None = None) -> np.ndarray:
    """SAR-style baseline: companions by time-decayed Jaccard, back-filled by popularity."""
    J = decayed_jaccard_matrix(ctx) if J is None else J
    pop = ctx.S.item_counts.astype(np.float64)
    from bundling_ml.candidates import popular_order
    head = popular_order(ctx.S)[: k + 1]
    out = np.full((len(anchors), k), -1, np.int64)
    for r, a in enumerate(np.asarray(anchors, np.int64).tolist()):
        top = _row_top(J, a, k, pop)
        allc = np.concatenate([top, head])
        allc = allc[allc != a]
        _, first = np.unique(allc, return_index=True)
        allc = allc[np.sort(first)][:k]
        out[r, : len(allc)] = allc
    return out


def repeat_count_rank(ctx: Context, anchors: np.ndarray, users: np.ndarray, cooc: np.ndarray, k: int = 10) -> np.ndarray:
    """"repeat + count" baseline: the shopper's most bought products, back-filled
    by the anchor's co-occurrence-count list ``cooc`` ((n, >=k) rows per query)."""
    out = np.full((len(anchors), k), -1, np.int64)
    for r in range(len(anchors)):
        a = int(anchors[r])
        own = shopper_top(ctx, int(users[r]), k, a)
        base = cooc[r]
        allc = np.concatenate([own, base[(base >= 0) & (base != a)]])
        _, first = np.unique(allc, return_index=True)
        allc = allc[np.sort(first)][:k]
        out[r, : len(allc)] = allc
    return out


# ----------------------------------------------------------------------------- substitutes

def store_count_rank(ctx: Context, anchors: np.ndarray, stores: np.ndarray, k: int = 10, m: int = 100) -> np.ndarray:
    """Store-aware co-occurrence baseline: (n, k) int64 companions, -1 padded.

    The anchor's top ``m`` companions by co-purchase count (ties by
    popularity, back-filled by popularity, as the count baseline) re-ranked by
    the shrunk store-conditional confidence ``store_confidence`` of
    :func:`pair_features` in the query's store (``stores``: (n,) int64 rows of
    :func:`store_index`; an unknown store keeps the count order).
    """
    from bundling_ml.candidates import candidate_companions

    anchors = np.asarray(anchors, np.int64)
    stores = np.asarray(stores, np.int64)
    uniq, inv = np.unique(anchors, return_inverse=True)
    cands = candidate_companions(ctx.S, uniq, n_total=m, n_cooc=m, n_category=0)[inv]
    n, mm = cands.shape
    valid = cands >= 0
    A = np.repeat(anchors, mm)
    C = np.where(valid, cands, 0).ravel()
    na = ctx.S.item_counts[A].astype(np.float64)
    conf = np.divide(_sparse_values(ctx.S.co, A, C), na, out=np.zeros(len(A)), where=na > 0)
    score = shrunk_store_confidence(*store_pair_counts(ctx, np.repeat(stores, mm), A, C), conf).reshape(n, mm)
    score = score - 1e-9 * np.arange(mm)[None, :]  # ties: count order
    return top_k(cands, np.where(valid, score, -np.inf), k)[0]


def substitute_mask(ctx: Context, a: np.ndarray, c: np.ndarray, *, min_lift: float = 1.5, min_count: int = 5) -> np.ndarray:
    """True where (anchor, candidate) look like substitutes: same non-empty
    product_type and not (lift > ``min_lift`` and co-purchase count >= ``min_count``)."""
    a = np.asarray(a, np.int64)
    c = np.asarray(c, np.int64)
    same = (ctx.ptype[a] == ctx.ptype[c]) & (ctx.ptype[a] >= 0) & (a >= 0) & (c >= 0)
    if not same.any():
        return same
    idx = np.flatnonzero(same)
    cnt = _sparse_values(ctx.S.co, a[idx], c[idx])
    N = float(max(ctx.S.n_baskets, 1))
    den = ctx.S.item_counts[a[idx]].astype(np.float64) * ctx.S.item_counts[c[idx]]
    lift = np.divide(cnt * N, den, out=np.zeros(len(idx)), where=den > 0)
    together = (lift > min_lift) & (cnt >= min_count)
    same[idx[together]] = False
    return same


# ----------------------------------------------------------------------------- model

def feature_columns(names) -> np.ndarray:
    """Column indices of ``names`` in :data:`ALL_FEATURES`."""
    return np.asarray([ALL_FEATURES.index(n) for n in names], np.int64)


def list_scoring_head(x, norm, bias):
    """The ranker's wide & deep head: ``x`` (B, M, D) concatenated per-candidate
    inputs -> Dense(96) -> Dense(48) -> deep logit, plus a linear (wide) logit of
    the normalised pair features ``norm`` (B, M, F), plus ``bias`` (B, M; 0 valid,
    -1e4 padding). Returns the (B, M) masked logits (Keras tensor)."""
    from keras import layers

    x = layers.Dense(96, activation="relu", name="dense1")(x)
    x = layers.Dense(48, activation="relu", name="dense2")(x)
    deep = layers.Dense(1, name="deep_logit")(x)
    wide = layers.Dense(1, name="wide_logit")(norm)
    logit = layers.Reshape((-1,), name="flat")(layers.Add(name="logit")([deep, wide]))
    return layers.Add(name="masked_logit")([logit, bias])


def build_listwise_model(vocab, n_features: int, *, mean=None, var=None, seed: int = 0, lr: float = 2e-3, use_embeddings: bool = True,
                         name: str = "bundle_list_ranker"):
    """Keras listwise scorer: inputs ``a_<field>``, ``c_<field>`` (B, M) int32,
    ``pair`` (B, M, F) float32, ``bias`` (B, M) float32 (0 valid, -1e4 padding);
    output (B, M) logits. Compiled with softmax cross-entropy over the list."""
    import keras
    from keras import layers


    keras.utils.set_random_seed(seed)
    inputs, parts = {}, []
    if use_embeddings:
        for f in CATEGORICAL_FIELDS:
            ia = keras.Input(shape=(None,), dtype="int32", name=f"a_{f}")
            ic = keras.Input(shape=(None,), dtype="int32", name=f"c_{f}")
            inputs[ia.name], inputs[ic.name] = ia, ic
            emb = layers.Embedding(vocab.input_dim(f), EMBED_DIMS[f], name=f"emb_{f}")
            ea, ec = emb(ia), emb(ic)
            parts += [ea, ec, layers.Multiply(name=f"cross_{f}")([ea, ec])]
    pair = keras.Input(shape=(None, n_features), dtype="float32", name="pair")
    bias = keras.Input(shape=(None,), dtype="float32", name="bias")
    inputs["pair"], inputs["bias"] = pair, bias
    mean = np.zeros(n_features, np.float32) if mean is None else np.asarray(mean, np.float32)
    var = np.ones(n_features, np.float32) if var is None else np.maximum(np.asarray(var, np.float32), 1e-6)
    norm = layers.Normalization(mean=mean, variance=var, name="pair_norm")(pair)
    x = layers.Concatenate(name="concat")(parts + [norm]) if parts else norm
    model = keras.Model(inputs=inputs, outputs=list_scoring_head(x, norm, bias), name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return model


def list_inputs(ctx: Context, anchors: np.ndarray, cands: np.ndarray, users: np.ndarray | None, cols: np.ndarray, weeks: np.ndarray | None = None,
                times=None, stores: np.ndarray | None = None) -> dict:
    """Keras inputs for (n, M) candidate lists (see :func:`build_listwise_model`);
    ``weeks`` (n,) promotion-week indices, ``times`` (n,) datetime64 query
    times and ``stores`` (n,) int64 store rows are optional (see :func:`pair_features`)."""
    n, m = cands.shape
    valid = cands >= 0
    cc = np.where(valid, cands, 0)
    A = np.repeat(np.asarray(anchors, np.int64), m)
    U = np.repeat(np.asarray(users, np.int64), m) if users is not None else None
    shopper = bool(cols.max() >= len(ANON_FEATURES))
    W = np.repeat(np.asarray(weeks, np.int64), m) if weeks is not None else None
    T = np.repeat(pd.to_datetime(np.asarray(times)).to_numpy(), m) if times is not None else None
    St = np.repeat(np.asarray(stores, np.int64), m) if stores is not None else None
    household = bool(np.isin(cols, feature_columns(HOUSEHOLD_FEATURES)).any())
    feats = pair_features(ctx, A, cc.ravel(), U, shopper=shopper, weeks=W, times=T, stores=St, household=household)[:, cols]
    x = {"pair": feats.reshape(n, m, len(cols)), "bias": np.where(valid, 0.0, -1e4).astype(np.float32)}
    for f in CATEGORICAL_FIELDS:
        x[f"a_{f}"] = np.broadcast_to(ctx.table.codes[f][np.asarray(anchors, np.int64)][:, None], (n, m)).astype(np.int32)
        x[f"c_{f}"] = ctx.table.codes[f][cc].astype(np.int32)
    return x


def list_labels(baskets: sp.csr_matrix, rows: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """(n, M) float32 1 where the candidate is in the basket ``rows[i]``."""
    n, m = cands.shape
    flat = cands.ravel()
    rr = np.repeat(rows, m)
    y = np.zeros(n * m, np.float32)
    v = flat >= 0
    y[v] = np.asarray(baskets[rr[v], flat[v]]).ravel() > 0
    return y.reshape(n, m)


def fit_listwise(vocab, x: dict, y: np.ndarray, *, epochs: int = 3, batch_size: int = 128, seed: int = 0, progress=None, use_embeddings=True,
                 name: str = "bundle_list_ranker", list_weight: np.ndarray | None = None):
    """Train :func:`build_listwise_model` on lists with >= 1 positive; 10 % of lists
    are held out for ``val_loss``. Returns (model, {"loss": [...], "val_loss": [...]}).

    ``list_weight``: optional (n_lists,) float weight of each list's loss (Keras
    ``sample_weight``; rescaled to mean 1 over the kept lists). The default, equal
    weights, is what the product trains with; ``benchmarks/metric_weighting.py``
    measured NDCG-matched weights and found them worse."""
    import keras

    keep = y.sum(axis=1) > 0
    x = {k: v[keep] for k, v in x.items()}
    y = y[keep]
    sw = None
    if list_weight is not None:
        sw = np.asarray(list_weight, np.float64)[keep]
        sw = (sw / sw.mean()).astype(np.float32)
    y = y / y.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    n = len(y)
    is_val = np.zeros(n, bool)
    is_val[rng.choice(n, size=n // 10, replace=False)] = True
    valid = x["bias"][~is_val] == 0
    P = x["pair"][~is_val][valid]
    model = build_listwise_model(vocab, x["pair"].shape[2], mean=P.mean(0), var=P.var(0), seed=seed, use_embeddings=use_embeddings, name=name)
    del P
    names = {t.name for t in model.inputs}
    xt = {k: v[~is_val] for k, v in x.items() if k in names}
    xv = {k: v[is_val] for k, v in x.items() if k in names}
    cbs = []
    if progress is not None:
        class _P(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                progress((epoch + 1) / epochs, f"training epoch {epoch + 1}/{epochs}")
        cbs.append(_P())
    fit_w = {} if sw is None else {"sample_weight": sw[~is_val]}
    val = (xv, y[is_val]) if sw is None else (xv, y[is_val], sw[is_val])
    h = model.fit(xt, y[~is_val], validation_data=val, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0, callbacks=cbs, **fit_w)
    return model, {"loss": [float(v) for v in h.history["loss"]], "val_loss": [float(v) for v in h.history.get("val_loss", [])]}


def average_models(models: list, name: str = "bundle_list_ranker_ensemble"):
    """One Keras model whose logits are the mean of ``models``' logits.

    The members (built by :func:`build_listwise_model` with distinct names,
    e.g. different seeds) must take the same inputs; the result has the same
    inputs and output shape (B, M), so :func:`predict_lists` and the artifact
    code use it unchanged. Averaging the logits of a few independently seeded
    rankers reduces the variance of the learned scores (a plain seed ensemble).
    A single model is returned as is.
    """
    if len(models) == 1:
        return models[0]
    import keras
    from keras import layers

    inputs = {t.name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in models[0].inputs}
    outs = [m({k: inputs[k] for k in (t.name for t in m.inputs)}) for m in models]
    return keras.Model(inputs=inputs, outputs=layers.Average(name="mean_logit")(outs), name=name)


def predict_lists(model, ctx: Context, anchors: np.ndarray, cands: np.ndarray, users, cols: np.ndarray, *, chunk: int = 2000, weeks=None,
                  times=None, stores=None) -> np.ndarray:
    """(n, M) float32 logits (padding gets about -1e4); ``weeks`` / ``times`` /
    ``stores`` as in :func:`list_inputs`."""
    names = {t.name for t in model.inputs}
    out = []
    for s in range(0, len(anchors), chunk):
        x = list_inputs(ctx, anchors[s:s + chunk], cands[s:s + chunk], None if users is None else users[s:s + chunk], cols,
                        None if weeks is None else weeks[s:s + chunk], None if times is None else times[s:s + chunk],
                        None if stores is None else stores[s:s + chunk])
        x = {k: v for k, v in x.items() if k in names}
        out.append(np.asarray(model.predict(x, batch_size=256, verbose=0)))
    if not out:
        return np.zeros(cands.shape, np.float32)
    return np.concatenate(out).astype(np.float32)


def top_k(cands: np.ndarray, scores: np.ndarray, k: int, drop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each list by score (ties: list order); -1 where empty.
    ``drop``: (n, M) bool mask of candidates to remove (e.g. substitutes)."""
    s = np.where(cands >= 0, scores, -np.inf)
    if drop is not None:
        s = np.where(drop, -np.inf, s)
    o = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(cands, o, axis=1).copy()
    sc = np.take_along_axis(s, o, axis=1)
    top[~np.isfinite(sc)] = -1
    return top, sc
