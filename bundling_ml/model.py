"""The Keras pair-scoring model, its training examples and its training loop.

The model scores an (anchor, candidate) pair with the probability that the
candidate is in the same basket as the anchor. Inputs (see
:func:`bundling_ml.features.model_inputs`):

* product features of both sides: department, category, product_type and
  brand ids (shared ``Embedding`` per field, OOV buckets included in the
  vocabulary ids) and log(1 + price);
* pair statistics (:data:`bundling_ml.features.PAIR_FEATURES`), standardised
  by a ``Normalization`` layer adapted on the training examples.

Architecture: [anchor embeddings, candidate embeddings, their element-wise
products, log prices, normalised pair features] -> Dense(64, relu) ->
Dense(32, relu) -> Dense(1), plus a linear ("wide") term on the normalised
pair features (Cheng et al. 2016, "Wide & Deep Learning"), -> sigmoid.
Trained with binary cross-entropy on positives and sampled negatives from the
candidate lists (:func:`training_examples`).

Label leakage: :func:`training_examples` takes statistics computed on an
*earlier* window than the label baskets (the pipeline uses the training
window minus its last weeks for statistics and the last weeks for labels), so
a label basket never contributes to its own pair features.

TensorFlow / Keras are imported inside the functions.
"""
from __future__ import annotations

import numpy as np

from bundling_ml.candidates import candidate_companions
from bundling_ml.data import Queries
from bundling_ml.features import CATEGORICAL_FIELDS, PAIR_FEATURES, ProductTable, ProductVocab, model_inputs
from bundling_ml.stats import PairStats

EMBED_DIMS = {"department": 4, "category": 12, "product_type": 16, "brand": 2}


def build_model(vocab: ProductVocab, *, pair_mean: np.ndarray | None = None, pair_var: np.ndarray | None = None, seed: int = 0):
    """Create the (compiled) Keras pair-scoring model.

    Args:
        vocab: vocabularies (sets the embedding input sizes).
        pair_mean, pair_var: optional (len(PAIR_FEATURES),) statistics for the
            ``Normalization`` layer; default mean 0, variance 1.
        seed: seed for weight initialisation (``keras.utils.set_random_seed``).

    Returns:
        compiled ``keras.Model``; output (batch, 1) float32 probability.
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs, a_parts, c_parts, cross = {}, [], [], []
    for f in CATEGORICAL_FIELDS:
        ia = keras.Input(shape=(), dtype="int32", name=f"a_{f}")
        ic = keras.Input(shape=(), dtype="int32", name=f"c_{f}")
        inputs[ia.name], inputs[ic.name] = ia, ic
        emb = layers.Embedding(vocab.input_dim(f), EMBED_DIMS[f], name=f"emb_{f}")
        ea, ec = emb(ia), emb(ic)
        a_parts.append(ea)
        c_parts.append(ec)
        cross.append(layers.Multiply(name=f"cross_{f}")([ea, ec]))
    ap = keras.Input(shape=(1,), dtype="float32", name="a_log_price")
    cp = keras.Input(shape=(1,), dtype="float32", name="c_log_price")
    pair = keras.Input(shape=(len(PAIR_FEATURES),), dtype="float32", name="pair")
    inputs.update({"a_log_price": ap, "c_log_price": cp, "pair": pair})
    n = len(PAIR_FEATURES)
    mean = np.zeros(n, np.float32) if pair_mean is None else np.asarray(pair_mean, np.float32)
    var = np.ones(n, np.float32) if pair_var is None else np.maximum(np.asarray(pair_var, np.float32), 1e-6)
    norm = layers.Normalization(mean=mean, variance=var, name="pair_norm")(pair)
    x = layers.Concatenate(name="concat")(a_parts + c_parts + cross + [ap, cp, norm])
    x = layers.Dense(64, activation="relu", name="dense1")(x)
    x = layers.Dense(32, activation="relu", name="dense2")(x)
    deep = layers.Dense(1, name="deep_logit")(x)
    wide = layers.Dense(1, name="wide_logit")(norm)
    out = layers.Activation("sigmoid", name="score")(layers.Add(name="logit")([deep, wide]))
    model = keras.Model(inputs=inputs, outputs=out, name="bundle_pair_scorer")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=2e-3), loss="binary_crossentropy")
    return model


def training_examples(
    stats: PairStats,
    table: ProductTable,
    queries: Queries,
    *,
    n_total: int = 100,
    n_cooc: int = 80,
    n_category: int = 10,
    n_negatives: int = 12,
    max_queries: int = 60_000,
    allowed: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Labelled (anchor, candidate) pairs for training.

    For up to ``max_queries`` randomly chosen label queries (seeded), the
    anchor's candidate list is built from ``stats``; every candidate in the
    query's basket is a positive, and ``n_negatives`` other candidates are
    drawn uniformly without replacement as negatives.

    Args:
        stats: statistics of an earlier window than the label baskets.
        table: encoded products (same index as ``stats``).
        queries: label queries (columns in the ``stats`` product index).
        n_total, n_cooc, n_category: candidate list parameters
            (:func:`bundling_ml.candidates.candidate_companions`).
        n_negatives: negatives per query.
        max_queries: cap on the number of queries used.
        allowed: optional candidate mask.
        seed: sampling seed.

    Returns:
        (x, y, group): x the Keras input dict (see
        :func:`bundling_ml.features.model_inputs`), y (n,) float32 labels in
        {0, 1}, group (n,) int64 label-basket row of each example (for a
        basket-level validation split).
    """
    rng = np.random.default_rng(seed)
    q = np.arange(queries.n_queries)
    if len(q) > max_queries:
        q = np.sort(rng.choice(q, size=max_queries, replace=False))
    anchors = queries.anchor[q]
    uniq, inv = np.unique(anchors, return_inverse=True)
    cands_u = candidate_companions(stats, uniq, n_total=n_total, n_cooc=n_cooc, n_category=n_category, categories=table.category, allowed=allowed)
    cands = cands_u[inv]  # (nq, n_total)
    rows = np.repeat(queries.query_basket[q], n_total)
    flat = cands.ravel()
    valid = flat >= 0
    pos = np.zeros(flat.shape, dtype=bool)
    pos[valid] = np.asarray(queries.baskets[rows[valid], flat[valid]]).ravel() > 0
    pos = pos.reshape(cands.shape)
    keys = rng.random(cands.shape)
    keys[pos | (cands < 0)] = np.inf
    kneg = min(n_negatives, n_total)
    neg_cols = np.argpartition(keys, kneg - 1, axis=1)[:, :kneg]
    neg_ok = np.isfinite(np.take_along_axis(keys, neg_cols, axis=1))
    pr, pc = np.nonzero(pos)
    nr = np.repeat(np.arange(len(q)), kneg)[neg_ok.ravel()]
    nc = neg_cols.ravel()[neg_ok.ravel()]
    ex_q = np.concatenate([pr, nr])
    ex_c = np.concatenate([cands[pr, pc], cands[nr, nc]])
    y = np.concatenate([np.ones(len(pr), np.float32), np.zeros(len(nr), np.float32)])
    perm = rng.permutation(len(y))
    ex_q, ex_c, y = ex_q[perm], ex_c[perm], y[perm]
    x = model_inputs(stats, table, anchors[ex_q], ex_c)
    return x, y, queries.query_basket[q][ex_q]


def fit_model(
    vocab: ProductVocab,
    x: dict,
    y: np.ndarray,
    group: np.ndarray,
    *,
    epochs: int = 4,
    batch_size: int = 2048,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress=None,
):
    """Train the pair scorer.

    Args:
        vocab: vocabularies.
        x, y, group: output of :func:`training_examples`.
        epochs: passes over the training examples.
        batch_size: examples per step.
        val_fraction: share of label baskets held out for ``val_loss``.
        seed: seed for the split, initialisation and shuffling.
        progress: optional callable(fraction in [0, 1], stage) called after
            each epoch.

    Returns:
        (model, history) where history is {"loss": [...], "val_loss": [...]}
        (floats, one per epoch; val_loss empty when no basket is held out).

    Raises:
        ValueError: if there are no positive or no negative examples.
    """
    import keras

    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("training examples need both positives and negatives")
    rng = np.random.default_rng(seed)
    baskets = np.unique(group)
    n_val = int(round(val_fraction * len(baskets))) if len(baskets) >= 10 else 0
    val_b = rng.choice(baskets, size=n_val, replace=False) if n_val else np.zeros(0, dtype=baskets.dtype)
    is_val = np.isin(group, val_b)
    tr = ~is_val
    pair = x["pair"][tr]
    model = build_model(vocab, pair_mean=pair.mean(axis=0), pair_var=pair.var(axis=0), seed=seed)
    xt = {k: v[tr] for k, v in x.items()}
    xv = {k: v[is_val] for k, v in x.items()}
    callbacks = []
    if progress is not None:
        class _Progress(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                progress((epoch + 1) / epochs, f"training epoch {epoch + 1}/{epochs}")

        callbacks.append(_Progress())
    hist = model.fit(
        xt,
        y[tr],
        validation_data=(xv, y[is_val]) if is_val.any() else None,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    history = {"loss": [float(v) for v in hist.history.get("loss", [])], "val_loss": [float(v) for v in hist.history.get("val_loss", [])]}
    return model, history


def predict_pairs(model, stats: PairStats, table: ProductTable, anchors: np.ndarray, cands: np.ndarray, *, batch_size: int = 16384) -> np.ndarray:
    """Model scores of (anchor, candidate) pairs.

    Args:
        model: trained pair scorer.
        stats, table: statistics and products (same product index).
        anchors, cands: (n,) int product indices.

    Returns:
        (n,) float32 probabilities in [0, 1].
    """
    if len(anchors) == 0:
        return np.zeros(0, dtype=np.float32)
    out = []
    for s in range(0, len(anchors), 262_144):
        x = model_inputs(stats, table, anchors[s : s + 262_144], cands[s : s + 262_144])
        out.append(np.asarray(model.predict(x, batch_size=batch_size, verbose=0)).reshape(-1))
    return np.concatenate(out).astype(np.float32)


def rank_candidates(model, stats: PairStats, table: ProductTable, anchors: np.ndarray, cands: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate lists with the model.

    Args:
        anchors: (n_anchors,) int product indices.
        cands: (n_anchors, m) int candidate indices, -1 = empty.
        k: how many to keep.

    Returns:
        (top, scores): (n_anchors, k) int64 indices (-1 = empty) and
        (n_anchors, k) float32 scores (-1 where empty), best first.
    """
    anchors = np.asarray(anchors, dtype=np.int64)
    m = cands.shape[1]
    flat = cands.ravel()
    valid = flat >= 0
    s = np.full(flat.shape, -1.0, dtype=np.float32)
    s[valid] = predict_pairs(model, stats, table, np.repeat(anchors, m)[valid], flat[valid])
    s = s.reshape(cands.shape)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(cands, order, axis=1)
    sc = np.take_along_axis(s, order, axis=1)
    top[sc < 0] = -1
    return top, sc
