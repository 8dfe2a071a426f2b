"""Train the listwise rankers and run the offline evaluation protocol.

:func:`fit_rankers` trains on one training window: pair statistics and shopper
histories come from the window minus its last ``label_weeks`` weeks, labels
from the baskets of those last weeks (so a label basket never feeds its own
features). :func:`run_backtest` then rebuilds the statistics on the whole
training window and scores every system on the protocol queries of the test
period (``ARCHITECTURE.md``, "Offline evaluation protocol"):

* anonymous (product page) table: popularity, co-occurrence count, SAR
  (time-decayed Jaccard), the model, and the model with the substitute rule;
* known-shopper table: co-occurrence count, repeat + count, the personalised
  model (query carries the customer id; only that shopper's training history
  is used);
* cold-start rows: the same systems on queries whose anchor has fewer than 5
  training baskets.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bundling_ml import ranking as rk
from bundling_ml.candidates import candidate_companions, popular_order
from bundling_ml.data import Queries, build_queries, temporal_split
from bundling_ml.evaluation import hits_matrix, hr_ndcg
from bundling_ml.features import ProductTable, ProductVocab

K = 10
M_TRAIN = 80
M_TEST = 100
COLD_MAX_BASKETS = 5
#: rankers averaged into the anonymous model (seed ensemble)
ANON_SEEDS = 3
#: share of label queries trained with their store hidden, so the model also
#: ranks well without store context (the shop's per-product scoring has none)
STORE_DROPOUT = 0.3


@dataclass
class Rankers:
    """Trained models and their feature columns."""

    anon: object
    anon_cols: np.ndarray
    shopper: object | None
    shopper_cols: np.ndarray | None
    history: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def basket_customers(lines: pd.DataFrame, basket_ids) -> np.ndarray:
    """(n,) object array: the customer id (str, "" for guests) of each basket id."""
    m = lines.drop_duplicates("basket_id").set_index("basket_id")["customer_id"]
    return m.reindex(pd.Index(basket_ids)).astype("object").fillna("").astype(str).to_numpy()


def basket_times(lines: pd.DataFrame, basket_ids) -> np.ndarray:
    """(n,) datetime64 time of each basket id."""
    m = lines.drop_duplicates("basket_id").set_index("basket_id")["time"]
    return m.reindex(pd.Index(basket_ids)).to_numpy()


def basket_stores(lines: pd.DataFrame, basket_ids) -> np.ndarray:
    """(n,) object array: the store id (str, "" when unknown or absent) of each basket id."""
    if "store_id" not in lines.columns:
        return np.full(len(basket_ids), "", dtype=object)
    m = lines.drop_duplicates("basket_id").set_index("basket_id")["store_id"]
    return m.reindex(pd.Index(basket_ids)).astype("object").fillna("").astype(str).to_numpy()


def remap_queries(q: Queries, cols: pd.Index, target: pd.Index) -> Queries:
    import scipy.sparse as sp

    remap = target.get_indexer(cols).astype(np.int64)
    B = q.baskets
    B2 = sp.csr_matrix((B.data, remap[B.indices], B.indptr), shape=(B.shape[0], len(target)))
    B2.sort_indices()
    return Queries(baskets=B2, basket_ids=q.basket_ids, query_basket=q.query_basket, anchor=remap[q.anchor])


def fit_rankers(train: pd.DataFrame, products: pd.DataFrame, product_index: pd.Index, vocab: ProductVocab, table: ProductTable, split: pd.Timestamp, *,
                label_weeks: int = 4, seed: int = 0, max_label_queries: int = 40_000, epochs: int = 2, shopper: bool = True,
                anon_features=rk.ANON_FEATURES, use_embeddings: bool = True, progress=None, promotions: pd.DataFrame | None = None,
                anon_seeds: int = ANON_SEEDS) -> Rankers:
    """Train the anonymous (and personalised) listwise rankers on ``train``.

    ``promotions`` (product_id, week_start, display, mailer; optional) gives
    the candidates' promotion status in the label basket's week; the label
    basket's time gives the query-time features. The anonymous ranker is the
    average of ``anon_seeds`` rankers trained with seeds ``seed``,
    ``seed + 1``, ... (:func:`bundling_ml.ranking.average_models`); the
    shopper ranker is one model."""
    prog = progress or (lambda f, s: None)
    label_start = split - pd.Timedelta(weeks=label_weeks)
    feat, lab = temporal_split(train, label_start)
    if feat.empty or lab.empty:
        raise ValueError(f"training window too short to separate feature and label weeks: the {label_weeks} label weeks "
                         f"from {label_start.date()} to {split.date()} hold {lab['basket_id'].nunique()} orders and the weeks "
                         f"before them {feat['basket_id'].nunique()}; both need orders (import more history)")
    prog(0.0, "training statistics")
    ctx = rk.attach_promotions(rk.build_context(feat, product_index, table, products, end=label_start), promotions)
    seen = product_index[ctx.S.item_counts > 0]
    q = remap_queries(build_queries(lab, seen), seen, product_index)
    rng = np.random.default_rng(seed)
    sel = np.arange(q.n_queries)
    if len(sel) > max_label_queries:
        sel = np.sort(rng.choice(sel, size=max_label_queries, replace=False))
    anchors = q.anchor[sel]
    rows = q.query_basket[sel]
    users = rk.user_index(ctx, basket_customers(lab, q.basket_ids)[rows])
    times = basket_times(lab, q.basket_ids)[rows]
    weeks = rk.week_index(ctx, times)
    stores = rk.store_index(ctx, basket_stores(lab, q.basket_ids)[rows])
    stores[rng.random(len(stores)) < STORE_DROPOUT] = -1
    prog(0.1, f"candidates for {len(sel)} label queries")
    J = rk.decayed_jaccard_matrix(ctx)
    uniq, inv = np.unique(anchors, return_inverse=True)
    cand_u = rk.anchor_candidates(ctx, uniq, M_TEST, J=J)
    cands = cand_u[inv][:, :M_TRAIN]
    anon_cols = rk.feature_columns(anon_features)
    x = rk.list_inputs(ctx, anchors, cands, users, anon_cols, weeks, times, stores)
    y = rk.list_labels(q.baskets, rows, cands)
    info = {"label_queries": int(len(sel)), "label_start": str(label_start.date()), "anon_recall@M": float((y.sum(1) > 0).mean()),
            "anon_seeds": int(anon_seeds), "label_store_share": float((stores >= 0).mean())}
    prog(0.2, "training anonymous ranker")
    members, hists = [], []
    n_seeds = max(1, int(anon_seeds))
    for i in range(n_seeds):
        lo = 0.2 + 0.35 * i / n_seeds
        m_i, h_i = rk.fit_listwise(vocab, x, y, epochs=epochs, seed=seed + i, use_embeddings=use_embeddings, name=f"bundle_list_ranker_s{i}",
                                   progress=lambda f, s, lo=lo, tag=("anonymous " if i == 0 else f"anonymous ranker {i + 1}/{n_seeds} "):
                                   prog(lo + 0.35 * f / n_seeds, tag + s))
        members.append(m_i)
        hists.append(h_i)
    m_anon = rk.average_models(members)
    h_anon = {k: [float(np.mean(v)) for v in zip(*(h[k] for h in hists))] for k in ("loss", "val_loss")}
    del x, y
    m_shop = shop_cols = None
    h_shop = {}
    if shopper:
        prog(0.55, "shopper candidates")
        sc = rk.shopper_candidates(ctx, anchors, users, cand_u, inv, M_TRAIN + 20)
        # the shopper ranker knows the shopper: the likely-shopper posterior is left out (measured: 0.2824 with it,
        # 0.2823 without; it costs memory and time on the longer shopper lists)
        shop_cols = rk.feature_columns(tuple(f for f in anon_features if f not in rk.HOUSEHOLD_FEATURES) + rk.SHOPPER_FEATURES)
        x = rk.list_inputs(ctx, anchors, sc, users, shop_cols, weeks, times, stores)
        y = rk.list_labels(q.baskets, rows, sc)
        info["shopper_recall@M"] = float((y.sum(1) > 0).mean())
        prog(0.6, "training shopper ranker")
        m_shop, h_shop = rk.fit_listwise(vocab, x, y, epochs=epochs, seed=seed, use_embeddings=use_embeddings,
                                         progress=lambda f, s: prog(0.6 + 0.4 * f, "shopper " + s))
        del x, y
    return Rankers(anon=m_anon, anon_cols=anon_cols, shopper=m_shop, shopper_cols=shop_cols,
                   history={"loss": h_anon["loss"], "val_loss": h_anon["val_loss"], "shopper_loss": h_shop.get("loss", []), "shopper_val_loss": h_shop.get("val_loss", [])},
                   info=info)


def _row(name, queries: Queries, recs: np.ndarray, seconds: float, mask: np.ndarray | None = None) -> dict:
    recs = np.asarray(recs, np.int64)[:, :K]
    if np.any(recs == queries.anchor[:, None]):
        raise ValueError(f"system {name!r} returned an anchor as its own companion")
    hits = hits_matrix(queries, recs)
    ts = queries.truth_sizes()
    if mask is not None:
        hits, ts = hits[mask], ts[mask]
    hr, ndcg = hr_ndcg(hits, ts, K)
    return {"system": name, f"hr@{K}": hr, f"ndcg@{K}": ndcg, "queries": int(len(ts)), "seconds": round(seconds, 2)}


def run_backtest(rankers: Rankers, train: pd.DataFrame, test: pd.DataFrame, products: pd.DataFrame, product_index: pd.Index, table: ProductTable,
                 split: pd.Timestamp, *, sample_baskets: int | None = 3000, max_queries: int | None = None, seed: int = 0, progress=None,
                 ctx: rk.Context | None = None, promotions: pd.DataFrame | None = None) -> dict:
    """Score all systems on the protocol queries; returns the metrics dict
    ({"split_date", "queries", "baskets", "rows", "shopper_rows", "cold_rows", "cold_queries"})."""
    prog = progress or (lambda f, s: None)
    prog(0.0, "backtest statistics")
    if ctx is None:
        ctx = rk.attach_promotions(rk.build_context(train, product_index, table, products, end=split), promotions)
    S = ctx.S
    queries = build_queries(test, product_index, sample_baskets=sample_baskets, max_queries=max_queries, seed=seed)
    users = rk.user_index(ctx, basket_customers(test, queries.basket_ids)[queries.query_basket])
    qtimes = basket_times(test, queries.basket_ids)[queries.query_basket]
    weeks = rk.week_index(ctx, qtimes)
    qstores = rk.store_index(ctx, basket_stores(test, queries.basket_ids)[queries.query_basket])
    # the model sees the query week's promotions, the query's time of day and
    # weekday and its store: score each distinct (anchor, week, hour bucket, weekday, store)
    slot = rk.time_slots(qtimes)
    aw_keys = np.stack([queries.anchor, weeks, slot, qstores], axis=1)
    aw, aw_first, aw_inv = np.unique(aw_keys, axis=0, return_index=True, return_inverse=True)
    aw_inv = aw_inv.ravel()
    aw_anchor, aw_week, aw_time, aw_store = queries.anchor[aw_first], weeks[aw_first], qtimes[aw_first], qstores[aw_first]
    # the same without the store (what the shop's per-product scoring sees)
    nw_keys = np.stack([queries.anchor, weeks, slot], axis=1)
    nw, nw_first, nw_inv = np.unique(nw_keys, axis=0, return_index=True, return_inverse=True)
    nw_inv = nw_inv.ravel()
    uniq, inv = np.unique(queries.anchor, return_inverse=True)
    cold = S.item_counts[queries.anchor] < COLD_MAX_BASKETS
    recs, secs = {}, {}

    def timed(name, fn):
        t = time.perf_counter()
        recs[name] = fn()
        secs[name] = time.perf_counter() - t

    head = popular_order(S)[: K + 1]
    timed("popularity", lambda: np.stack([head[head != a][:K] for a in uniq])[inv])
    timed("cooccurrence_count", lambda: candidate_companions(S, uniq, n_total=K, n_cooc=K, n_category=0)[inv])
    J = rk.decayed_jaccard_matrix(ctx)
    timed("sar_jaccard_decay", lambda: rk.sar_rank(ctx, uniq, K, J=J)[inv])
    prog(0.2, "backtest: candidates")
    t0 = time.perf_counter()
    cand_u = rk.anchor_candidates(ctx, uniq, M_TEST, J=J)
    t_cand = time.perf_counter() - t0
    prog(0.3, "backtest: anonymous model")
    t0 = time.perf_counter()
    aw_cands = cand_u[np.searchsorted(uniq, aw_anchor)]
    s_u = rk.predict_lists(rankers.anon, ctx, aw_anchor, aw_cands, None, rankers.anon_cols, weeks=aw_week, times=aw_time, stores=aw_store)
    t_model = time.perf_counter() - t0 + t_cand
    recs["model"] = rk.top_k(aw_cands, s_u, K)[0][aw_inv]
    secs["model"] = t_model
    has_store = ctx.stores is not None and bool((qstores >= 0).any())
    names = ["model", "model+substitute_rule"]
    if has_store:
        t0 = time.perf_counter()
        nw_anchor = queries.anchor[nw_first]
        nw_cands = cand_u[np.searchsorted(uniq, nw_anchor)]
        s_n = rk.predict_lists(rankers.anon, ctx, nw_anchor, nw_cands, None, rankers.anon_cols, weeks=weeks[nw_first], times=qtimes[nw_first])
        recs["model_without_store"] = rk.top_k(nw_cands, s_n, K)[0][nw_inv]
        secs["model_without_store"] = time.perf_counter() - t0 + t_cand
        del s_n
        timed("store_count", lambda: rk.store_count_rank(ctx, queries.anchor, qstores, K))
        names += ["model_without_store", "store_count"]
    t0 = time.perf_counter()
    drop = rk.substitute_mask(ctx, np.repeat(aw_anchor, aw_cands.shape[1]), aw_cands.ravel()).reshape(aw_cands.shape)
    recs["model+substitute_rule"] = rk.top_k(aw_cands, s_u, K, drop)[0][aw_inv]
    secs["model+substitute_rule"] = t_model + time.perf_counter() - t0
    info = {"store_known_share": float((qstores >= 0).mean()), "candidate_recall": float((list_hits := rk.list_labels(queries.baskets, queries.query_basket, cand_u[inv])).sum(1).astype(bool).mean()),
            "substitutes_dropped_share": float(drop[aw_cands >= 0].mean())}
    del list_hits
    rows = [_row(n, queries, recs[n], secs[n]) for n in (*names, "sar_jaccard_decay", "cooccurrence_count", "popularity")]
    cold_rows = [_row(n, queries, recs[n], secs[n], cold) for n in ("model", *names[2:3], "sar_jaccard_decay", "cooccurrence_count", "popularity")]
    shopper_rows = []
    if rankers.shopper is not None:
        prog(0.6, "backtest: shopper model")
        timed("repeat_count", lambda: rk.repeat_count_rank(ctx, queries.anchor, users, recs["cooccurrence_count"], K))
        t0 = time.perf_counter()
        sc = rk.shopper_candidates(ctx, queries.anchor, users, cand_u, inv, M_TEST + 20)
        s_s = rk.predict_lists(rankers.shopper, ctx, queries.anchor, sc, users, rankers.shopper_cols, weeks=weeks, times=qtimes, stores=qstores)
        recs["shopper_model"] = rk.top_k(sc, s_s, K)[0]
        secs["shopper_model"] = time.perf_counter() - t0
        known = users >= 0
        shopper_rows = [_row(n, queries, recs[n], secs[n], known) for n in ("shopper_model", "repeat_count", "cooccurrence_count", "sar_jaccard_decay", "model")]
        cold_rows.append(_row("shopper_model", queries, recs["shopper_model"], secs["shopper_model"], cold & known))
        cold_rows.append(_row("repeat_count", queries, recs["repeat_count"], secs["repeat_count"], cold & known))
    prog(1.0, "backtest done")
    return {"split_date": str(split.date()), "queries": queries.n_queries, "baskets": int(queries.baskets.shape[0]), "rows": rows,
            "shopper_rows": shopper_rows, "cold_rows": cold_rows, "cold_queries": int(cold.sum()), "info": info}
