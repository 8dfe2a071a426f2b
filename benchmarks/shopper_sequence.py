"""Known-shopper ranker with a sequence encoder over the shopper's history (DIN-style attention).

What: issue 3 suggested encoding the shopper's purchase history with a
sequence model (a GRU or attention over past baskets) for the known-shopper
model. This benchmark measures it against the current shopper ranker
(hand-made :data:`bundling_ml.ranking.SHOPPER_FEATURES`) on the protocol's
known-shopper queries.

Setting (store-free, as ``anon_experiments.py``): full Complete Journey with
``store_id`` dropped, split 2017-10-30, statistics and shopper histories of
the label context from the lines before the last 4 training weeks (weeks
41-44 are the labels), 40,000 label queries (sampled with
``numpy.random.default_rng(0)`` as ``fit_rankers(seed=0)`` does; the same
sample for both training seeds, the seed sets the Keras initialisation and
the 10 % validation split), shopper candidate lists as ``fit_rankers`` builds
them (``M_TRAIN + 20`` = 100 for training) and as ``run_backtest`` builds them
for the test queries (``M_TEST + 20`` = 120, statistics and histories on the
whole training window), 2 epochs, Adam 2e-3, batch 128 lists, seeds 0 and 1.
Feature columns: ``ANON_FEATURES`` minus the store and likely-shopper features, plus
``SHOPPER_FEATURES``. Metrics on the 35,210 known-shopper test queries of the
protocol (3,000 test baskets, seed 0) and on the cold-start subset (anchor
with < 5 training baskets, 1,914 queries).

Variants (``--variants``):

* ``base``: the current shopper ranker (``ranking.build_listwise_model``).
* ``din50`` / ``din100``: the same network plus a target-attention encoder
  (Deep Interest Network, Zhou et al. 2018) over the last L = 50 / 100
  distinct products the shopper bought before the context's end, most
  recent first. Each history item = the ranker's shared attribute
  embeddings (department / category / product_type / brand) + a learned
  product-id embedding (16 d; products with >= 20 baskets in the label
  context's statistics, one OOV bucket otherwise) + 3 history features
  (exp(-days since last purchase / 30), log1p(baskets with it) / 3,
  exp(-days / 180)). Keys / values: Dense(32) of that; query: Dense(32) of
  the candidate's attribute + id embeddings; scaled dot-product attention
  over the valid history items; the pooled vector, its element-wise product
  with the query, and their dot product feed Dense(96) alongside the
  existing embeddings and features.
* ``din50-noid``: ``din50`` without the product-id embedding (attributes only).
* Suffixes (see :data:`VARIANTS`): ``-score`` only scalar match scores reach
  the ranker (dot product, best attention logit, attention-weighted history
  features), ``-hid`` the id embedding on the history side only, ``-drop``
  dropout 0.5 on the pooled vector, ``-hdrop`` each history item dropped with
  p 0.5 in training, ``-svd`` frozen id embeddings from the label context's
  co-purchase statistics (:func:`svd_embeddings`).
* ``gru20``: a GRU(32) over the shopper's last 20 baskets (oldest first; each
  basket = mean of its items' attribute + id embeddings, up to 24 items
  per basket, most bought items first); its final state, its element-wise
  product with the candidate query and their dot product feed the ranker.

No leakage: a context's histories are built from the lines before its end
(the label window's start for the label queries, the split for the test
queries), so a label or test query's own basket is never in its history.

Run (two phases; the second reads the cache of the first)::

    .venv/bin/python benchmarks/shopper_sequence.py --phase prep --cache /tmp/seq-cache
    .venv/bin/python benchmarks/shopper_sequence.py --phase run --cache /tmp/seq-cache --variants base --seeds 0 --out res.jsonl

Run one variant and seed per process to read its peak RSS.

Diagnostic phases / flags: ``--phase rows`` caches the label basket of each
label list (for ``--val-by-basket`` / ``--max-per-basket``), ``--phase svd``
the frozen co-purchase id embeddings of the ``*-svd`` variants
(:func:`svd_embeddings`); ``--val-by-user`` holds out 10 % of the label
shoppers for the validation loss.

Results (docs/quality.md, "Shopper sequence encoder (GRU / attention)" has
the full table): known-shopper NDCG@10, seeds 0 / 1, 35,210 queries:

    repeat + count (no training)          0.2403
    base (current shopper ranker)         0.2794 / 0.2783
    din50  (learned id)                   0.2567 / 0.2491
    din100 (learned id)                   0.2543 / 0.2491
    gru20  (learned id)                   0.2500 / 0.2500
    din50-svd (frozen co-purchase ids)    0.2774 / 0.2730
    gru20-svd                             0.2790 / 0.2719
    din50-noid (attributes only)          0.2754 / 0.2754
    din50-score-noid-hdrop                0.2791 / 0.2777
    gru20-noid                            0.2777 / 0.2732

No encoder beats the current ranker on either seed; learned product-id
embeddings memorise the label weeks' baskets per shopper (validation loss
4.20 vs 3.84 with label baskets held out, though far lower on the random
list split). Cost: 8-21 s per epoch (DIN, L = 50) vs 6-8 s, peak RSS
3.1-3.3 GiB (DIN) / 3.9-4.1 GiB (GRU) vs 2.9 GiB per run process.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import anon_experiments as ax  # noqa: E402  (same store-free data setup)
from bundling_ml import backtest as bt  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402
from bundling_ml.candidates import candidate_companions  # noqa: E402
from bundling_ml.data import Queries, build_queries, completejourney_frames, prepare_lines, temporal_split  # noqa: E402
from bundling_ml.features import CATEGORICAL_FIELDS  # noqa: E402

SPLIT = pd.Timestamp("2017-10-30")
LABEL_WEEKS = 4
N_LABEL = 40_000
L_MAX = 100
ID_MIN_BASKETS = 20
N_BASKETS = 20
BASKET_ITEMS = 24
COLS_NAMES = tuple(f for f in rk.ANON_FEATURES if f not in rk.STORE_FEATURES + rk.HOUSEHOLD_FEATURES) + rk.SHOPPER_FEATURES
X_KEYS = ("pair", "bias") + tuple(f"{s}_{f}" for f in CATEGORICAL_FIELDS for s in ("a", "c"))
T0 = time.perf_counter()


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def log(msg):
    print(f"[{time.perf_counter() - T0:7.0f} s, peak {peak_mib():6.0f} MiB] {msg}", flush=True)


def save(cache: Path, prefix: str, arrays: dict):
    for k, v in arrays.items():
        np.save(cache / f"{prefix}_{k}.npy", v)


def load(cache: Path, prefix: str, keys, mmap=False) -> dict:
    return {k: np.load(cache / f"{prefix}_{k}.npy", mmap_mode="r" if mmap else None) for k in keys}


# ----------------------------------------------------------------------------- histories

def user_histories(ctx: rk.Context, L: int = L_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Per shopper row (plus one all-padding row at index -1 for unknown
    shoppers): the last ``L`` distinct products bought before ``ctx.end``,
    most recent first (ties: more baskets first), -1 padded, and their
    (n_users + 1, L, 3) float32 features (exp(-days/30), log1p(count)/3,
    exp(-days/180)). Built from the context's own per-shopper arrays, i.e.
    only from lines before the context's end."""
    n_u = len(ctx.users)
    lens = np.diff(ctx.u_indptr)
    ui = np.repeat(np.arange(n_u), lens)
    o = np.lexsort((ctx.u_items, -ctx.u_count, ctx.u_last, ui))
    uo = ui[o]
    pos = np.arange(len(o)) - ctx.u_indptr[uo]
    keep = pos < L
    H = np.full((n_u + 1, L), -1, np.int32)
    F = np.zeros((n_u + 1, L, 3), np.float32)
    r, c, j = uo[keep], pos[keep], o[keep]
    H[r, c] = ctx.u_items[j]
    d = ctx.u_last[j]
    F[r, c, 0] = np.exp(-d / 30.0)
    F[r, c, 1] = np.log1p(ctx.u_count[j]) / 3.0
    F[r, c, 2] = np.exp(-d / 180.0)
    return H, F


def user_baskets(lines: pd.DataFrame, ctx: rk.Context, product_index: pd.Index, item_rank: np.ndarray, nb: int = N_BASKETS,
                 ni: int = BASKET_ITEMS) -> np.ndarray:
    """(n_users + 1, nb, ni) int32: each shopper's last ``nb`` baskets in
    ``lines`` (the context's window, before its end), oldest first
    (right-aligned, padding first), each basket's products ordered by
    ``item_rank`` (ascending: most bought first), at most ``ni``; -1 padded."""
    col = product_index.get_indexer(lines["product_id"])
    u = ctx.users.get_indexer(lines["customer_id"].astype("object").fillna("").astype(str))
    ok = (col >= 0) & (u >= 0)
    df = pd.DataFrame({"u": u[ok], "b": lines["basket_id"].to_numpy()[ok], "t": lines["time"].to_numpy()[ok], "p": col[ok]})
    bt_ = df.groupby(["u", "b"], sort=False)["t"].first().reset_index()
    bt_ = bt_.sort_values(["u", "t", "b"], ascending=[True, False, True], kind="stable")
    bt_["k"] = bt_.groupby("u").cumcount()
    bt_ = bt_[bt_["k"] < nb]
    df = df.merge(bt_[["u", "b", "k"]], on=["u", "b"])
    df["r"] = item_rank[df["p"].to_numpy()]
    df = df.sort_values(["u", "k", "r", "p"], kind="stable")
    df["i"] = df.groupby(["u", "k"]).cumcount()
    df = df[df["i"] < ni]
    out = np.full((len(ctx.users) + 1, nb, ni), -1, np.int32)
    out[df["u"].to_numpy(), nb - 1 - df["k"].to_numpy(), df["i"].to_numpy()] = df["p"].to_numpy()
    return out


# ----------------------------------------------------------------------------- prep

def chunked_inputs(ctx, anchors, cands, users, cols, weeks, times, chunk=5000) -> dict:
    parts = [rk.list_inputs(ctx, anchors[s:s + chunk], cands[s:s + chunk], users[s:s + chunk], cols, weeks[s:s + chunk], times[s:s + chunk])
             for s in range(0, len(anchors), chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in X_KEYS}


def prep(cache: Path):
    train, test, P, pidx, vocab, table, promotions = ax.setup()
    cols = rk.feature_columns(COLS_NAMES)
    log(f"loaded: {len(train):,} train lines, {len(test):,} test lines, {len(pidx):,} products")
    # --- label context (weeks 41-44 labels, statistics and histories before them)
    label_start = SPLIT - pd.Timedelta(weeks=LABEL_WEEKS)
    feat, lab = temporal_split(train, label_start)
    ctx = rk.attach_promotions(rk.build_context(feat, pidx, table, P, end=label_start), promotions)
    seen = pidx[ctx.S.item_counts > 0]
    q = bt.remap_queries(build_queries(lab, seen), seen, pidx)
    rng = np.random.default_rng(0)
    sel = np.arange(q.n_queries)
    if len(sel) > N_LABEL:
        sel = np.sort(rng.choice(sel, size=N_LABEL, replace=False))
    anchors, rows = q.anchor[sel], q.query_basket[sel]
    users = rk.user_index(ctx, bt.basket_customers(lab, q.basket_ids)[rows])
    times = bt.basket_times(lab, q.basket_ids)[rows]
    weeks = rk.week_index(ctx, times)
    J = rk.decayed_jaccard_matrix(ctx)
    uniq, inv = np.unique(anchors, return_inverse=True)
    cand_u = rk.anchor_candidates(ctx, uniq, bt.M_TEST, J=J, **ax.MEASURED_CANDIDATES)
    del J
    sc = rk.shopper_candidates(ctx, anchors, users, cand_u, inv, bt.M_TRAIN + 20)
    x = chunked_inputs(ctx, anchors, sc, users, cols, weeks, times)
    y = rk.list_labels(q.baskets, rows, sc)
    # product-id vocabulary: products with >= ID_MIN_BASKETS baskets in the label context (0 = OOV / padding)
    cnt = ctx.S.item_counts
    frequent = np.flatnonzero(cnt >= ID_MIN_BASKETS)
    id_code = np.zeros(len(pidx), np.int32)
    id_code[frequent] = np.arange(1, len(frequent) + 1)
    item_rank = np.argsort(np.argsort(-cnt, kind="stable"), kind="stable")
    H, F = user_histories(ctx)
    B = user_baskets(feat, ctx, pidx, item_rank)
    save(cache, "lab", {**x, "y": y, "cands": sc, "users": users, "H": H, "HF": F, "B": B})
    log(f"label: {q.n_queries:,} queries, {len(sel):,} sampled, known shopper {(users >= 0).mean():.3f}, shopper recall@100 {(y.sum(1) > 0).mean():.3f}, "
        f"id vocabulary {len(frequent):,} products, history length mean {(H[users] >= 0).sum(1).mean():.1f}")
    del ctx, x, y, q, feat, lab, H, F, B
    # --- test context (whole training window)
    ctx = rk.attach_promotions(rk.build_context(train, pidx, table, P, end=SPLIT), promotions)
    queries = build_queries(test, pidx, sample_baskets=3000, seed=0)
    users = rk.user_index(ctx, bt.basket_customers(test, queries.basket_ids)[queries.query_basket])
    qtimes = bt.basket_times(test, queries.basket_ids)[queries.query_basket]
    weeks = rk.week_index(ctx, qtimes)
    uniq, inv = np.unique(queries.anchor, return_inverse=True)
    J = rk.decayed_jaccard_matrix(ctx)
    cand_u = rk.anchor_candidates(ctx, uniq, bt.M_TEST, J=J, **ax.MEASURED_CANDIDATES)
    del J
    sc = rk.shopper_candidates(ctx, queries.anchor, users, cand_u, inv, bt.M_TEST + 20)
    x = chunked_inputs(ctx, queries.anchor, sc, users, cols, weeks, qtimes)
    count = candidate_companions(ctx.S, uniq, n_total=bt.K, n_cooc=bt.K, n_category=0)[inv]
    rc = rk.repeat_count_rank(ctx, queries.anchor, users, count, bt.K)
    known = users >= 0
    cold = ctx.S.item_counts[queries.anchor] < bt.COLD_MAX_BASKETS
    H, F = user_histories(ctx)
    B = user_baskets(train, ctx, pidx, item_rank)
    save(cache, "test", {**x, "cands": sc, "users": users, "H": H, "HF": F, "B": B, "known": known, "cold": cold,
                         "query_basket": queries.query_basket, "anchor": queries.anchor, "repeat_count": rc, "count": count})
    sp.save_npz(cache / "test_baskets.npz", queries.baskets)
    save(cache, "meta", {"id_code": id_code, **{f"code_{f}": table.codes[f].astype(np.int32) for f in CATEGORICAL_FIELDS}})
    dims = {f: int(vocab.input_dim(f)) for f in CATEGORICAL_FIELDS}
    res = {}
    for name, recs in (("repeat_count", rc), ("cooccurrence_count", count)):
        r = bt._row(name, queries, recs, 0.0, known)
        rcold = bt._row(name, queries, recs, 0.0, known & cold)
        res[name] = {"hr@10": r["hr@10"], "ndcg@10": r["ndcg@10"], "queries": r["queries"], "cold_hr@10": rcold["hr@10"],
                     "cold_ndcg@10": rcold["ndcg@10"], "cold_queries": rcold["queries"]}
        log(f"{name}: known shopper HR@10 {r['hr@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} ({r['queries']:,} queries); cold "
            f"{rcold['hr@10']:.4f} / {rcold['ndcg@10']:.4f} ({rcold['queries']:,})")
    (cache / "prep_done.json").write_text(json.dumps({"dims": dims, "n_ids": int(len(frequent)), "baselines": res,
                                                      "queries": int(queries.n_queries), "known": int(known.sum())}))


# ----------------------------------------------------------------------------- model

class _Vocab:
    def __init__(self, dims):
        self.dims = dims

    def input_dim(self, f):
        return self.dims[f]


VARIANTS = {  # name: dict(kind, L, use_id)
    "base": {"kind": "base"},
    "din50": {"kind": "din", "L": 50, "use_id": True},
    "din100": {"kind": "din", "L": 100, "use_id": True},
    "din50-noid": {"kind": "din", "L": 50, "use_id": False},
    "din50-hid": {"kind": "din", "L": 50, "use_id": True, "cand_id": False},
    "din100-hid": {"kind": "din", "L": 100, "use_id": True, "cand_id": False},
    "gru20-hid": {"kind": "gru", "use_id": True, "cand_id": False},
    # only scalar match scores (dot product, best attention logit, attention-weighted recency / count) feed the ranker
    "din50-score": {"kind": "din", "L": 50, "use_id": True, "out": "score"},
    "din50-score-noid": {"kind": "din", "L": 50, "use_id": False, "out": "score"},
    "din100-score": {"kind": "din", "L": 100, "use_id": True, "out": "score"},
    "din50-drop": {"kind": "din", "L": 50, "use_id": True, "dropout": 0.5},
    "din50-score-noid-hdrop": {"kind": "din", "L": 50, "use_id": False, "out": "score", "hdrop": 0.5},
    "din50-hdrop": {"kind": "din", "L": 50, "use_id": True, "hdrop": 0.5},
    "din50-noid-hdrop": {"kind": "din", "L": 50, "use_id": False, "hdrop": 0.5},
    "din50-svd": {"kind": "din", "L": 50, "use_id": True, "svd": True},
    "din50-svd-score": {"kind": "din", "L": 50, "use_id": True, "svd": True, "out": "score"},
    "din50-svd-hid": {"kind": "din", "L": 50, "use_id": True, "svd": True, "cand_id": False},
    "gru20-noid": {"kind": "gru", "use_id": False},
    "gru20-svd": {"kind": "gru", "use_id": True, "svd": True},
    "gru20-score": {"kind": "gru", "use_id": True, "out": "score"},
    "gru20": {"kind": "gru", "use_id": True},
}


def build_seq_model(vocab, n_features: int, *, mean, var, seed: int, spec: dict, n_ids: int, lr: float = 2e-3, id_dim: int = 16, d: int = 32):
    """``ranking.build_listwise_model`` plus a history encoder (module docstring)."""
    import keras
    from keras import layers, ops

    keras.utils.set_random_seed(seed)
    use_id = spec.get("use_id", True)
    cand_id = use_id and spec.get("cand_id", True)
    inputs, parts, c_parts = {}, [], []
    embs = {}
    for f in CATEGORICAL_FIELDS:
        ia = keras.Input(shape=(None,), dtype="int32", name=f"a_{f}")
        ic = keras.Input(shape=(None,), dtype="int32", name=f"c_{f}")
        inputs[ia.name], inputs[ic.name] = ia, ic
        emb = layers.Embedding(vocab.input_dim(f), rk.EMBED_DIMS[f], name=f"emb_{f}")
        embs[f] = emb
        ea, ec = emb(ia), emb(ic)
        parts += [ea, ec, layers.Multiply(name=f"cross_{f}")([ea, ec])]
        c_parts.append(ec)
    pair = keras.Input(shape=(None, n_features), dtype="float32", name="pair")
    bias = keras.Input(shape=(None,), dtype="float32", name="bias")
    inputs["pair"], inputs["bias"] = pair, bias
    norm = layers.Normalization(mean=np.asarray(mean, np.float32), variance=np.maximum(np.asarray(var, np.float32), 1e-6), name="pair_norm")(pair)
    if use_id and spec.get("svd"):  # frozen co-purchase embeddings (svd_embeddings)
        svd = np.load(spec["svd_path"])
        id_emb = layers.Embedding(svd.shape[0], svd.shape[1], embeddings_initializer=keras.initializers.Constant(svd), trainable=False, name="emb_id")
    else:
        id_emb = layers.Embedding(n_ids + 1, id_dim, name="emb_id") if use_id else None
    if cand_id:
        ci = keras.Input(shape=(None,), dtype="int32", name="c_id")
        inputs["c_id"] = ci
        c_parts.append(id_emb(ci))
    c_repr = layers.Concatenate(name="cand_repr")(c_parts)
    qv = layers.Dense(d, name="seq_query")(c_repr)  # (B, M, d)
    if spec["kind"] == "din":
        h_parts = []
        for f in CATEGORICAL_FIELDS:
            ih = keras.Input(shape=(None,), dtype="int32", name=f"h_{f}")
            inputs[ih.name] = ih
            h_parts.append(embs[f](ih))
        if use_id:
            hi = keras.Input(shape=(None,), dtype="int32", name="h_id")
            inputs["h_id"] = hi
            h_parts.append(id_emb(hi))
        hf = keras.Input(shape=(None, 3), dtype="float32", name="h_feat")
        hm = keras.Input(shape=(None,), dtype="float32", name="h_mask")
        inputs["h_feat"], inputs["h_mask"] = hf, hm
        if spec.get("hdrop"):  # training only: drop each history item with probability hdrop (weakens the history as a shopper fingerprint)
            hm = layers.Lambda(lambda t: ops.cast(t > 0, "float32"), name="hist_keep")(layers.Dropout(spec["hdrop"], name="hist_dropout")(hm))
        h_repr = layers.Concatenate(name="hist_repr")(h_parts + [hf])
        kv = layers.Dense(d, name="seq_key")(h_repr)  # (B, L, d)
        vv = layers.Dense(d, name="seq_value")(h_repr)

        def attend(t):
            q_, k_, v_, m_, f_ = t
            s = ops.einsum("bmd,bld->bml", q_, k_) / float(np.sqrt(d)) + (m_[:, None, :] - 1.0) * 1e4
            a = ops.softmax(s, axis=-1)
            has = ops.cast(ops.sum(m_, axis=1) > 0, "float32")[:, None, None]
            pooled_ = ops.einsum("bml,bld->bmd", a, v_) * has
            smax = ops.max(s, axis=-1, keepdims=True) * has  # best match of the candidate in the history
            wf = ops.einsum("bml,blf->bmf", a, f_) * has  # recency / count of the attended items
            return ops.concatenate([pooled_, smax, wf], axis=-1)

        att = layers.Lambda(attend, name="din_attention")([qv, kv, vv, hm, hf])
        pooled = layers.Lambda(lambda t: t[..., :d], name="din_pooled")(att)
        att_scalars = layers.Lambda(lambda t: t[..., d:], name="din_scalars")(att)
    else:  # GRU over the last baskets
        bparts = []
        for f in CATEGORICAL_FIELDS:
            ib = keras.Input(shape=(N_BASKETS, BASKET_ITEMS), dtype="int32", name=f"b_{f}")
            inputs[ib.name] = ib
            bparts.append(embs[f](ib))
        if use_id:
            bi = keras.Input(shape=(N_BASKETS, BASKET_ITEMS), dtype="int32", name="b_id")
            inputs["b_id"] = bi
            bparts.append(id_emb(bi))
        bm = keras.Input(shape=(N_BASKETS, BASKET_ITEMS), dtype="float32", name="b_mask")
        inputs["b_mask"] = bm
        b_repr = layers.Concatenate(name="bitem_repr")(bparts)  # (B, T, I, e)

        def basket_mean(t):
            r, m_ = t
            return ops.sum(r * m_[..., None], axis=2) / ops.maximum(ops.sum(m_, axis=2), 1.0)[..., None]

        bvec = layers.Lambda(basket_mean, name="basket_mean")([b_repr, bm])  # (B, T, e)
        bvec = layers.Dense(d, activation="relu", name="basket_proj")(bvec)
        state = layers.GRU(d, name="gru")(bvec)  # (B, d)

        def tile(t):
            s_, q_ = t
            return ops.zeros_like(q_) + s_[:, None, :]

        pooled = layers.Lambda(tile, name="tile_state")([state, qv])
    if spec.get("dropout"):
        pooled = layers.Dropout(spec["dropout"], name="seq_dropout")(pooled)
    cross = layers.Multiply(name="seq_cross")([pooled, qv])
    dot = layers.Lambda(lambda t: ops.sum(t, axis=-1, keepdims=True), name="seq_dot")(cross)
    if spec.get("out", "full") == "score":  # only scalar match scores reach the ranker (no shopper vector)
        seq = [dot] + ([att_scalars] if spec["kind"] == "din" else [])
    else:
        seq = [pooled, cross, dot]
    x = layers.Concatenate(name="concat")(parts + [norm] + seq)
    model = keras.Model(inputs=inputs, outputs=rk.list_scoring_head(x, norm, bias), name="shopper_seq_ranker")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return model


def seq_inputs(spec: dict, meta: dict, d: dict, rows: slice | np.ndarray) -> dict:
    """History inputs for the queries ``rows`` of a cached split ``d``."""
    out = {}
    if spec["kind"] == "base":
        return out
    users = np.asarray(d["users"][rows])
    cands = np.asarray(d["cands"][rows])
    if spec.get("use_id", True) and spec.get("cand_id", True):
        out["c_id"] = np.where(cands >= 0, meta["id_code"][np.maximum(cands, 0)], 0).astype(np.int32)
    if spec["kind"] == "din":
        L = spec["L"]
        out.update(item_inputs("h", np.asarray(d["H"])[users][:, :L], meta, spec.get("use_id", True)))  # users == -1 -> the all-padding last row
        out["h_feat"] = np.asarray(d["HF"])[users][:, :L]
    else:
        out.update(item_inputs("b", np.asarray(d["B"])[users], meta, spec.get("use_id", True)))
    return out


def item_inputs(prefix: str, items: np.ndarray, meta: dict, use_id: bool) -> dict:
    """Attribute codes (``<prefix>_<field>``), optional id codes (``<prefix>_id``) and the
    validity mask (``<prefix>_mask``) of an int array of product rows, -1 = padding."""
    valid = items >= 0
    ic = np.maximum(items, 0)
    out = {f"{prefix}_{f}": meta[f"code_{f}"][ic].astype(np.int32) for f in CATEGORICAL_FIELDS}
    if use_id:
        out[f"{prefix}_id"] = np.where(valid, meta["id_code"][ic], 0).astype(np.int32)
    out[f"{prefix}_mask"] = valid.astype(np.float32)
    return out


def label_rows(cache: Path):
    """Cache the label basket row of each sampled label query (``lab_rows``; for ``--val-by-basket``),
    recomputed exactly as :func:`prep` samples them."""
    lines, _ = completejourney_frames()
    L = prepare_lines(lines)
    train, _ = temporal_split(L, SPLIT)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    label_start = SPLIT - pd.Timedelta(weeks=LABEL_WEEKS)
    feat, lab = temporal_split(train, label_start)
    seen = pidx[pidx.isin(feat["product_id"].unique())]
    q = bt.remap_queries(build_queries(lab, seen), seen, pidx)
    rng = np.random.default_rng(0)
    sel = np.arange(q.n_queries)
    if len(sel) > N_LABEL:
        sel = np.sort(rng.choice(sel, size=N_LABEL, replace=False))
    for f in CATEGORICAL_FIELDS:  # the cached lists' anchor codes must match the recomputed sample
        if not np.array_equal(np.load(cache / f"meta_code_{f}.npy")[q.anchor[sel]], np.load(cache / f"lab_a_{f}.npy", mmap_mode="r")[:, 0]):
            raise ValueError("label sample mismatch (re-run --phase prep)")
    save(cache, "lab", {"rows": q.query_basket[sel], "anchor": q.anchor[sel]})
    log(f"label rows: {len(sel):,} queries from {len(np.unique(q.query_basket[sel])):,} baskets")


def svd_embeddings(cache: Path, dim: int = 32):
    """Frozen product-id embeddings from co-purchase statistics of the label
    context (lines before the label weeks only): truncated SVD of the positive
    PMI matrix of the id-vocabulary products (``meta_id_code``), rows scaled
    by sqrt(singular value) and L2-normalised; row 0 (OOV / padding) = 0.
    Saved as ``meta_svd``; used by the ``*-svd`` variants (not trained, so they
    cannot learn label-week specifics per product)."""
    from scipy.sparse.linalg import svds

    from bundling_ml.data import basket_matrix

    lines, _ = completejourney_frames()
    L = prepare_lines(lines)
    train, _ = temporal_split(L, SPLIT)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    feat = train[train["time"] < SPLIT - pd.Timedelta(weeks=LABEL_WEEKS)]
    id_code = np.load(cache / "meta_id_code.npy")
    cols = np.flatnonzero(id_code > 0)
    cols = cols[np.argsort(id_code[cols])]
    X, _ = basket_matrix(feat, pidx)
    Xs = X[:, cols].astype(np.float32).tocsc()
    C = (Xs.T @ Xs).tocoo()
    n = np.asarray(Xs.sum(axis=0)).ravel().astype(np.float64)
    N = float(X.shape[0])
    off = C.row != C.col
    pmi = np.log(C.data[off] * N / (n[C.row[off]] * n[C.col[off]]))
    pos = pmi > 0
    M = sp.csr_matrix((pmi[pos].astype(np.float32), (C.row[off][pos], C.col[off][pos])), shape=(len(cols), len(cols)))
    U, S, _ = svds(M, k=dim, random_state=0)
    E = U * np.sqrt(S)[None, :]
    E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-9)
    out = np.zeros((len(cols) + 1, dim), np.float32)
    out[1:] = E
    np.save(cache / "meta_svd.npy", out)
    log(f"svd embeddings: {len(cols):,} products, PPMI nnz {M.nnz:,}, singular values {S.min():.2f}..{S.max():.2f}")


def run_one(cache: Path, name: str, seed: int, epochs: int = 2, val_by_basket=False, max_per_basket: int = 0) -> dict:
    import keras

    spec = dict(VARIANTS[name], svd_path=str(cache / "meta_svd.npy"))
    pre = json.loads((cache / "prep_done.json").read_text())
    vocab = _Vocab(pre["dims"])
    meta = load(cache, "meta", ["id_code"] + [f"code_{f}" for f in CATEGORICAL_FIELDS])
    lab = load(cache, "lab", X_KEYS + ("y", "cands", "users", "H", "HF", "B"), mmap=True)
    t_start = time.perf_counter()
    y = np.asarray(lab["y"])
    keep = np.flatnonzero(y.sum(axis=1) > 0)
    if max_per_basket:  # at most k lists per label basket (fixed sample, the same for every variant and seed)
        rows_k = np.load(cache / "lab_rows.npy")[keep]
        perm = np.random.default_rng(123).permutation(len(keep))
        rank = pd.Series(rows_k[perm]).groupby(rows_k[perm]).cumcount().to_numpy()
        keep = np.sort(keep[perm[rank < max_per_basket]])
    x = {k: np.asarray(lab[k][keep]) for k in X_KEYS}
    x.update(seq_inputs(spec, meta, lab, keep))
    y = y[keep]
    y = y / y.sum(axis=1, keepdims=True)
    # as ranking.fit_listwise: 10 % of the lists (rng(seed)) held out for val_loss
    rng = np.random.default_rng(seed)
    n = len(y)
    is_val = np.zeros(n, bool)
    if val_by_basket:  # diagnostic: hold out 10 % of the label baskets ("user": shoppers) with all their lists, not 10 % of the lists
        rows = np.load(cache / ("lab_users.npy" if val_by_basket == "user" else "lab_rows.npy"))[keep]
        ub = np.unique(rows)
        is_val = np.isin(rows, rng.choice(ub, size=len(ub) // 10, replace=False))
    else:
        is_val[rng.choice(n, size=n // 10, replace=False)] = True
    valid = x["bias"][~is_val] == 0
    P = x["pair"][~is_val][valid]
    mean, var = P.mean(0), P.var(0)
    del P, valid
    if spec["kind"] == "base":
        model = rk.build_listwise_model(vocab, x["pair"].shape[2], mean=mean, var=var, seed=seed, name=f"r_{seed}")
    else:
        model = build_seq_model(vocab, x["pair"].shape[2], mean=mean, var=var, seed=seed, spec=spec, n_ids=pre["n_ids"])
    names = {t.name for t in model.inputs}
    xt = {k: v[~is_val] for k, v in x.items() if k in names}
    xv = {k: v[is_val] for k, v in x.items() if k in names}
    del x
    ep_times = []

    class _T(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            ep_times.append(round(time.perf_counter() - self.t, 1))
            log(f"{name} seed {seed}: epoch {epoch + 1} {ep_times[-1]:.0f} s, loss {logs.get('loss'):.4f}, val_loss {logs.get('val_loss'):.4f}")

    t_fit = time.perf_counter()
    h = model.fit(xt, y[~is_val], validation_data=(xv, y[is_val]), epochs=epochs, batch_size=128, shuffle=True, verbose=0, callbacks=[_T()])
    t_fit = time.perf_counter() - t_fit
    del xt, xv, y
    # --- test
    test = load(cache, "test", X_KEYS + ("cands", "users", "H", "HF", "B", "known", "cold", "query_basket", "anchor"), mmap=True)
    queries = Queries(baskets=sp.load_npz(cache / "test_baskets.npz").tocsr(), basket_ids=None, query_basket=np.asarray(test["query_basket"]),
                      anchor=np.asarray(test["anchor"]))
    t_pred = time.perf_counter()
    logits = ax.predict_cached(model, test, X_KEYS, lambda sl, xi: seq_inputs(spec, meta, test, np.arange(sl.start, sl.stop)), chunk=2000)
    t_pred = time.perf_counter() - t_pred
    cands = np.asarray(test["cands"])
    recs = rk.top_k(cands, logits, bt.K)[0]
    known, cold = np.asarray(test["known"]), np.asarray(test["cold"])
    r = bt._row(name, queries, recs, 0.0, known)
    rc = bt._row(name, queries, recs, 0.0, known & cold)
    res = {"variant": name + (f"@val-by-{'user' if val_by_basket == 'user' else 'basket'}" if val_by_basket else "")
           + (f"@max{max_per_basket}-per-basket" if max_per_basket else ""), "seed": seed, "train_lists": int(len(keep)), "hr@10": r["hr@10"], "ndcg@10": r["ndcg@10"], "queries": r["queries"], "cold_hr@10": rc["hr@10"],
           "cold_ndcg@10": rc["ndcg@10"], "cold_queries": rc["queries"], "epoch_s": ep_times, "fit_s": round(t_fit, 1),
           "predict_s": round(t_pred, 1), "total_s": round(time.perf_counter() - t_start, 1), "val_loss": [float(v) for v in h.history["val_loss"]],
           "params": int(model.count_params()), "peak_rss_mib": round(peak_mib())}
    log(f"{name:<12} seed {seed}: known shopper HR@10 {r['hr@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} ({r['queries']:,}); cold {rc['hr@10']:.4f} / "
        f"{rc['ndcg@10']:.4f} ({rc['queries']:,}); epochs {ep_times} s, predict {t_pred:.0f} s, peak RSS {peak_mib():.0f} MiB")
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("prep", "rows", "svd", "run"), required=True)
    ap.add_argument("--val-by-basket", action="store_true", help="run: hold out 10 %% of the label baskets for val_loss (needs --phase rows)")
    ap.add_argument("--cache", default="/tmp/seq-cache")
    ap.add_argument("--variants", default="base")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--val-by-user", action="store_true", help="run: hold out 10 %% of the label shoppers for val_loss")
    ap.add_argument("--max-per-basket", type=int, default=0, help="run: train on at most k label lists per label basket (needs --phase rows)")
    ap.add_argument("--out", default=None, help="append one JSON line per result")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.phase == "prep":
        prep(cache)
    elif args.phase == "rows":
        label_rows(cache)
    elif args.phase == "svd":
        svd_embeddings(cache)
    else:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.variants.split(","):
                res = run_one(cache, name, seed, val_by_basket="user" if args.val_by_user else args.val_by_basket,
                              max_per_basket=args.max_per_basket)
                ax.append_json(args.out, res)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
