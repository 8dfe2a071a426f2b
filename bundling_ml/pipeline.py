"""End-to-end training (with backtest) and bundle scoring.

``train_model``: clean -> exclude departments -> temporal split -> pair
statistics on the early part of the training window, labels from its last
weeks -> train the Keras pair scorer -> backtest (protocol steps 3-6) against
the popularity and co-occurrence count baselines on the test period -> save
``model.keras`` + ``metadata.json``.

``score_bundles``: statistics on all given lines -> candidate companions of
every anchor with enough baskets -> model scores -> 2-item and 3-item bundles
with evidence (counts, support, confidence, lift, attach rate), a suggested
discount and plain-word reasons.

The saved model is the one measured by the backtest. Its pair features are
scale-free or normalised per 100k baskets (:mod:`bundling_ml.features`), so it
is applied to statistics of the full history at scoring time.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from bundling_ml import artifacts
from bundling_ml import ranking as rk
from bundling_ml.candidates import candidate_companions
from bundling_ml.data import (
    basket_matrix,
    default_split_date,
    exclude_departments,
    prepare_lines,
    prepare_products,
    promotions_for_ranker,
    temporal_split,
)
from bundling_ml.features import CATEGORICAL_FIELDS, COUNT_SCALE, ProductTable, ProductVocab
from bundling_ml.pricing import suggested_discount_percent

log = logging.getLogger("bundling_ml")

ProgressFn = Callable[[float, str], None]

#: Candidate list used for training and the backtest.
CANDIDATES = {"n_total": 100, "n_cooc": 80, "n_category": 10}
K = 10


@dataclass
class TrainResult:
    """Result of :func:`train_model`.

    Attributes:
        artifact_dir: Path holding ``model.keras`` + ``metadata.json``.
        metadata: the dict written to ``metadata.json``.
        metrics: {"split_date": "YYYY-MM-DD", "queries": int, "rows": [{"system":
            "model" | "popularity" | "cooccurrence_count", "hr@10": float,
            "ndcg@10": float, "queries": int, "seconds": float}]}.
        history: {"loss": [float per epoch], "val_loss": [float per epoch]}.
    """

    artifact_dir: Path
    metadata: dict
    metrics: dict
    history: dict = field(default_factory=dict)


class _Progress:
    """Maps stage-local fractions onto [0, 1] and calls the user callback."""

    def __init__(self, fn: Optional[ProgressFn]):
        self.fn = fn

    def __call__(self, fraction: float, stage: str) -> None:
        log.info("%3.0f%% %s", 100 * fraction, stage)
        if self.fn is not None:
            self.fn(float(min(max(fraction, 0.0), 1.0)), stage)

    def span(self, lo: float, hi: float) -> ProgressFn:
        return lambda f, stage: self(lo + (hi - lo) * f, stage)


def train_model(
    lines: pd.DataFrame,
    products: pd.DataFrame,
    *,
    out_dir,
    split_date=None,
    seed: int = 0,
    excluded_departments=(),
    progress: Optional[ProgressFn] = None,
    max_queries: Optional[int] = None,
    sample_baskets: Optional[int] = None,
    epochs: int = 2,
    label_weeks: Optional[int] = None,
    shopper: bool = True,
    promotions: Optional[pd.DataFrame] = None,
    anon_seeds: Optional[int] = None,
) -> TrainResult:
    """Train the bundle model, backtest it, and save it.

    Args:
        lines: order-lines frame (``docs/contracts.md``); cleaned here with
            :func:`bundling_ml.data.prepare_lines`.
        products: products frame (product_id, department, category,
            product_type, brand, price).
        out_dir: directory that becomes the artifact (``model.keras`` +
            ``metadata.json``); replaced atomically if it exists.
        split_date: first day of the test period (str / date / Timestamp);
            None = the last ~20 % of weeks are the test period.
        seed: seed of the query sample, example sampling and Keras.
        excluded_departments: departments (e.g. "FUEL", "COUPON") removed
            before mining; their products are never anchors or companions.
        progress: optional callable(fraction in [0, 1], stage: str).
        max_queries: optional cap on backtest queries (baskets sampled with
            ``seed`` until the cap).
        sample_baskets: optional number of test baskets sampled with
            ``seed`` (the protocol's fixed random sample, e.g. 3000).
        epochs: training epochs.
        label_weeks: weeks at the end of the training window whose baskets
            give the training labels (pair statistics use the weeks before);
            default round(10 % of training weeks), clipped to 1..4.
        shopper: also train (and backtest) the personalised ranker.
        promotions: optional weekly promotions (product_id, week_start,
            display, mailer store counts; e.g.
            :func:`bundling_ml.data.completejourney_promotions`); the rankers
            then see each candidate's promotion status in the query's week.
        anon_seeds: rankers (seeds ``seed``, ``seed + 1``, ...) averaged into
            the anonymous model; default
            :data:`bundling_ml.backtest.ANON_SEEDS` (3). 1 trains a single
            ranker (about a third of the anonymous training time).

    ``metrics`` also holds "shopper_rows" (known-shopper table), "cold_rows"
    (anchors with < 5 training baskets) and "info"; "rows" holds "model",
    "model+substitute_rule", "sar_jaccard_decay", "cooccurrence_count",
    "popularity".

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: if the lines are empty, the split leaves no training or
            no test baskets, or there are no usable training examples.
    """
    from bundling_ml import backtest as bt

    t_start = time.perf_counter()
    prog = _Progress(progress)
    prog(0.0, "preparing lines")
    L = prepare_lines(lines)
    if len(L) == 0:
        raise ValueError("no usable order lines")
    P = prepare_products(products, L)
    L = exclude_departments(L, P, excluded_departments)
    split = pd.Timestamp(split_date) if split_date is not None else default_split_date(L)
    train, test = temporal_split(L, split)
    if train.empty or test.empty:
        raise ValueError(f"split date {split.date()} leaves {len(train)} training and {len(test)} test lines "
                         f"(orders from {L['time'].min().date()} to {L['time'].max().date()}); a model needs orders on both "
                         "sides of the split: import more history or choose another split date")
    train_start = train["time"].min().normalize()
    train_weeks = max(1, int(np.ceil((split - train_start).days / 7)))
    if label_weeks is None:
        label_weeks = int(np.clip(round(0.1 * train_weeks), 1, 4))
    label_start = split - pd.Timedelta(weeks=label_weeks)

    prog(0.02, "counting co-purchases")
    if promotions is not None:
        promotions = promotions_for_ranker(promotions)
    product_index = pd.Index(np.sort(train["product_id"].unique()))
    vocab = ProductVocab.fit(P, product_index)
    table = ProductTable.build(P, product_index, vocab)
    rankers = bt.fit_rankers(train, P, product_index, vocab, table, split, label_weeks=label_weeks, seed=seed, epochs=epochs,
                             shopper=shopper, progress=prog.span(0.02, 0.7), promotions=promotions,
                             anon_seeds=bt.ANON_SEEDS if anon_seeds is None else int(anon_seeds))
    prog(0.7, "backtest")
    metrics = bt.run_backtest(rankers, train, test, P, product_index, table, split, sample_baskets=sample_baskets, max_queries=max_queries,
                              seed=seed, progress=prog.span(0.7, 0.95), promotions=promotions)
    history = rankers.history

    prog(0.95, "saving artifact")
    metadata = {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": "bundle_list_ranker",
        "seed": seed,
        "vocab": vocab.to_json(),
        "categorical_fields": list(CATEGORICAL_FIELDS),
        "pair_features": [rk.ALL_FEATURES[i] for i in rankers.anon_cols],
        "shopper_features": [rk.ALL_FEATURES[i] for i in rankers.shopper_cols] if rankers.shopper_cols is not None else [],
        "count_scale": COUNT_SCALE,
        "candidates": {"m_train": bt.M_TRAIN, "m_test": bt.M_TEST},
        "excluded_departments": sorted({str(d).strip().upper() for d in excluded_departments}),
        "data_window": {
            "first_line": str(L["time"].min()),
            "last_line": str(L["time"].max()),
            "split_date": str(split.date()),
            "label_start": str(label_start.date()),
            "train_lines": int(len(train)),
            "train_baskets": int(train["basket_id"].nunique()),
            "train_products": int(len(product_index)),
            "test_lines": int(len(test)),
        },
        "promotions": promotions is not None,
        "training": {"epochs": epochs, "label_weeks": label_weeks, **rankers.info},
        "metrics": metrics,
        "history": history,
        "train_seconds": round(time.perf_counter() - t_start, 1),
    }
    extra = {"shopper.keras": rankers.shopper} if rankers.shopper is not None else {}
    artifact_dir = artifacts.save_model(rankers.anon, metadata, out_dir, extra_models=extra)
    metadata = artifacts.load_metadata(artifact_dir)
    prog(1.0, "done")
    return TrainResult(artifact_dir=Path(artifact_dir), metadata=metadata, metrics=metrics, history=history)


def _label(products: pd.DataFrame) -> pd.Series:
    """Human label per product id: name, else product_type (title case), else category, else the id."""
    p = products.set_index("product_id")
    lab = p["name"].where(p["name"] != "", p["product_type"].str.title())
    lab = lab.where(lab != "", p["category"].str.title())
    lab = lab.where(lab != "", pd.Series(p.index, index=p.index))
    return lab


def _name_codes(products: pd.DataFrame, product_index: pd.Index) -> np.ndarray:
    """(n_products,) int64 code of each product's display name (case and spacing folded); -1 when it has none."""
    names = products.drop_duplicates("product_id").set_index("product_id")["name"].reindex(product_index)
    folded = names.fillna("").astype(str).str.casefold().str.split().str.join(" ").to_numpy(dtype=object)
    codes, _ = pd.factorize(folded)
    codes = codes.astype(np.int64)
    codes[folded == ""] = -1
    return codes


def _reasons(count: int, lift: float, conf: float, anchor: str, others: list[str]) -> str:
    what = others[0] if len(others) == 1 else f"both {others[0]} and {others[1]}"
    chance = f"{lift:.1f}x more often than chance" if lift >= 1.05 else ("about as often as chance" if lift >= 0.95 else f"{lift:.1f}x as often as chance")
    return f"Bought together in {count:,} baskets; {chance}; {conf:.0%} of baskets with {anchor} also have {what}"


def _load_ranker(artifact_dir):
    """(model, metadata, pair-feature columns) of a :func:`train_model` artifact.

    Raises:
        FileNotFoundError: if the artifact is missing.
        ValueError: if the artifact was written by the earlier pointwise model.
    """
    model, meta = artifacts.load_model(artifact_dir)
    if meta.get("model") != "bundle_list_ranker":
        raise ValueError(f"artifact {artifact_dir} holds a {meta.get('model')!r} model from an older version; retrain it with train_model")
    return model, meta, rk.feature_columns(meta.get("pair_features", rk.ANON_FEATURES))


def _scoring_lines(lines: pd.DataFrame, products: pd.DataFrame, meta: dict, excluded_departments=()):
    """(lines, products) cleaned (protocol step 1), without the model's and the caller's excluded departments."""
    excluded = set(meta.get("excluded_departments", [])) | {str(d).strip().upper() for d in excluded_departments}
    L = prepare_lines(lines)
    P = prepare_products(products, L)
    return exclude_departments(L, P, excluded), P


def _scoring_context(L: pd.DataFrame, P: pd.DataFrame, meta: dict, promotions, week_start):
    """(product_index, ranking context of ``L``, promotion week index or None) for scoring with a saved model.

    The scoring week's promotions are attached only when the model was trained
    with promotions (a model trained without them never saw them).
    """
    product_index = pd.Index(np.sort(L["product_id"].unique()))
    table = ProductTable.build(P, product_index, ProductVocab.from_json(meta["vocab"]))
    ctx = rk.build_context(L, product_index, table, P)
    week = None
    if promotions is not None and len(promotions) and meta.get("promotions"):
        ctx = rk.attach_promotions(ctx, promotions_for_ranker(promotions))
        week = int(rk.week_index(ctx, [pd.Timestamp(week_start) if week_start is not None else ctx.end])[0])
    return product_index, ctx, week


def score_bundles(
    artifact_dir,
    lines: pd.DataFrame,
    products: pd.DataFrame,
    *,
    min_anchor_baskets: int = 20,
    max_bundles: int = 5000,
    excluded_departments=(),
    progress: Optional[ProgressFn] = None,
    min_co_purchase: int = 3,
    n_candidates: int = 30,
    n_three_way: int = 5,
    count_prior: float = 20.0,
    promotions: Optional[pd.DataFrame] = None,
    week_start=None,
) -> pd.DataFrame:
    """Propose 2- and 3-item bundles with evidence.

    For every anchor bought in at least ``min_anchor_baskets`` baskets, the
    ``n_candidates`` companions with the highest co-purchase counts (count >=
    ``min_co_purchase``) are scored by the model (listwise ranker logits
    mapped to 0..1 with the logistic function). Substitutes are never
    bundled: two products of the same non-empty product_type only when their
    lift is > 1.5 and count >= 5 (:func:`bundling_ml.ranking.substitute_mask`),
    and never two products with the same display name (case and spacing
    folded; e.g. two flavours both named "Yogurt Not Multi-Packs 6 OZ"),
    which a shopper could not tell apart in the offer. Bundles:

    * 2 items: anchor + best-scored companion; score = its model probability.
    * 3 items: anchor + two of the ``n_three_way`` best companions that also
      co-occur with each other, with >= ``min_co_purchase`` baskets holding
      all three; the pair with the highest score is kept, score = geometric
      mean of p(anchor, c1), p(anchor, c2), p(c1, c2).

    The reported score is that probability shrunk by the evidence:
    ``score * n / (n + count_prior)`` with n = baskets holding all items, so
    a bundle seen in a handful of baskets (often one household's habit) does
    not outrank a well-supported one. Item sets are deduplicated (highest
    score kept); the best ``max_bundles`` are returned.

    Evidence (N = baskets in ``lines`` that still hold a product after the
    department exclusion, n_x = baskets holding x):
    co_purchase_count = baskets holding all items; support = count / N;
    confidence = expected_attach_rate = count / n_anchor (the attach rate of
    the companions given the anchor); lift = count * N / (n_anchor *
    n_companions), where n_companions = baskets holding all companions (rule
    lift of anchor -> companions).

    Args:
        artifact_dir: directory written by :func:`train_model`.
        lines: order lines (all history to mine; cleaned here).
        products: products frame.
        min_anchor_baskets: minimum baskets an anchor must appear in.
        max_bundles: maximum rows returned.
        excluded_departments: departments whose products are never anchors or
            companions (combined with the model's own exclusions).
        progress: optional callable(fraction, stage).
        min_co_purchase: minimum baskets holding all items of a bundle.
        n_candidates: companions scored per anchor.
        n_three_way: best companions considered for 3-item bundles.
        count_prior: shrinkage constant of the score (baskets).
        promotions: optional weekly promotions of the shop (product_id,
            week_start, display / mailer store counts, as
            ``shop_bundles.ml_bridge.promotions_frame`` or
            :func:`bundling_ml.data.completejourney_promotions` return them;
            ``display_stores`` / ``mailer_stores`` are accepted too). The
            model then sees each product's promotions in the scoring week;
            without them the promotion features are 0 ("no promotion").
        week_start: a day in the week the bundles are scored for (default:
            the day after the last order line).

    Returns:
        DataFrame with columns anchor (str), items (tuple of str, anchor
        first), score (float 0..1), co_purchase_count (int64), support,
        confidence, lift, expected_attach_rate, suggested_discount_percent
        (float64), reasons (str); sorted by score descending (ties: higher
        count first), each item set once. Empty (with these columns) when no
        anchor qualifies.

    Raises:
        FileNotFoundError: if the artifact is missing.
        ValueError: if the artifact was written by the earlier pointwise model.
    """
    prog = _Progress(progress)
    prog(0.0, "loading model")
    model, meta, cols = _load_ranker(artifact_dir)
    prog(0.05, "preparing lines")
    L, P = _scoring_lines(lines, products, meta, excluded_departments)
    columns = ["anchor", "items", "score", "co_purchase_count", "support", "confidence", "lift", "expected_attach_rate", "suggested_discount_percent", "reasons"]
    if L.empty:
        return pd.DataFrame(columns=columns)
    prog(0.1, "counting co-purchases")
    product_index, ctx, week = _scoring_context(L, P, meta, promotions, week_start)
    S = ctx.S
    anchors = np.flatnonzero(S.item_counts >= min_anchor_baskets)
    anchors = anchors[np.lexsort((anchors, -S.item_counts[anchors]))]

    prog(0.25, f"candidates for {len(anchors)} anchors")
    cands = candidate_companions(S, anchors, n_total=n_candidates, n_cooc=n_candidates, n_category=0, show_progress=True)
    counts = np.zeros(cands.shape, dtype=np.int64)
    valid = cands >= 0
    counts[valid] = S.count(np.repeat(anchors, cands.shape[1])[valid.ravel()], cands[valid])
    cands[counts < min_co_purchase] = -1

    prog(0.4, "scoring pairs")
    logits = rk.predict_lists(model, ctx, anchors, cands, None, cols, weeks=None if week is None else np.full(len(anchors), week))
    # complements, not substitutes: same product_type only with lift > 1.5 and count >= 5
    drop = rk.substitute_mask(ctx, np.repeat(anchors, cands.shape[1]), cands.ravel()).reshape(cands.shape)
    # and never two products the shopper sees under the same name
    name = _name_codes(P, product_index)
    cand_name = np.where(cands >= 0, name[np.maximum(cands, 0)], -2)
    drop |= (cand_name == name[anchors][:, None]) & (name[anchors][:, None] >= 0)
    top, lg = rk.top_k(cands, logits, max(n_three_way, 1), drop)
    sc = np.where(top >= 0, 1.0 / (1.0 + np.exp(-np.clip(lg, -50, 50))), -1.0)

    prog(0.6, "building 3-item bundles")
    # all companion pairs among the top n_three_way of each anchor
    ii, jj = np.triu_indices(top.shape[1], k=1)
    A = np.repeat(anchors, len(ii))
    C1 = top[:, ii].ravel()
    C2 = top[:, jj].ravel()
    P1 = sc[:, ii].ravel()
    P2 = sc[:, jj].ravel()
    ok = (C1 >= 0) & (C2 >= 0)
    ok[ok] = S.count(C1[ok], C2[ok]) >= min_co_purchase
    ok[ok] = ~rk.substitute_mask(ctx, C1[ok], C2[ok])
    ok[ok] = ~((name[C1[ok]] == name[C2[ok]]) & (name[C1[ok]] >= 0))
    A, C1, C2, P1, P2 = A[ok], C1[ok], C2[ok], P1[ok], P2[ok]
    l12 = rk.predict_lists(model, ctx, C1, C2.reshape(-1, 1), None, cols, weeks=None if week is None else np.full(len(C1), week)).reshape(-1)
    P12 = 1.0 / (1.0 + np.exp(-np.clip(l12, -50, 50)))
    tri_score = np.cbrt(P1 * P2 * P12)
    order = np.lexsort((-tri_score, A))
    A, C1, C2, tri_score = A[order], C1[order], C2[order], tri_score[order]
    triples = []
    done = set()
    for a, c1, c2, s in tqdm(zip(A.tolist(), C1.tolist(), C2.tolist(), tri_score.tolist()), total=len(A), desc="3-item bundles", mininterval=2.0):
        if a in done:
            continue
        n_all = S.baskets_with_all((a, c1, c2))
        if n_all >= min_co_purchase:
            triples.append((a, c1, c2, s, n_all))
            done.add(a)

    prog(0.85, "evidence")
    N = float(S.n_baskets)
    rows = []
    has = top[:, 0] >= 0
    a2, c2_, s2 = anchors[has], top[has, 0], sc[has, 0]
    n2 = S.count(a2, c2_)
    for a, c, s, n in zip(a2.tolist(), c2_.tolist(), s2.tolist(), n2.tolist()):
        rows.append((a, (a, c), s * n / (n + count_prior), n, int(S.item_counts[c])))
    for a, c1, c2, s, n in triples:
        rows.append((a, (a, c1, c2), s * n / (n + count_prior), n, int(S.count([c1], [c2])[0])))
    if not rows:
        return pd.DataFrame(columns=columns)
    rows.sort(key=lambda r: (-r[2], -r[3], r[1]))
    seen, kept = set(), []
    for r in rows:
        key = frozenset(r[1])
        if key in seen:
            continue
        seen.add(key)
        kept.append(r)
        if len(kept) >= max_bundles:
            break
    ids = product_index.to_numpy()
    labels = _label(P).reindex(product_index).fillna("").to_numpy()
    out = []
    for a, items, s, n, n_comp in kept:
        na = float(S.item_counts[a])
        conf = n / na
        lift = n * N / (na * n_comp) if n_comp else 0.0
        out.append(
            {
                "anchor": str(ids[a]),
                "items": tuple(str(ids[i]) for i in items),
                "score": float(s),
                "co_purchase_count": int(n),
                "support": n / N,
                "confidence": conf,
                "lift": lift,
                "expected_attach_rate": conf,
                "suggested_discount_percent": float(suggested_discount_percent(lift, conf)),
                "reasons": _reasons(int(n), lift, conf, labels[a] or str(ids[a]), [labels[i] or str(ids[i]) for i in items[1:]]),
            }
        )
    df = pd.DataFrame(out, columns=columns)
    df["co_purchase_count"] = df["co_purchase_count"].astype("int64")
    prog(1.0, f"{len(df)} bundles")
    return df


OFFER_SCORE_COLUMNS = ["offer_id", "product_id", "store_id", "score", "attach_rate", "co_purchase_count", "anchor_baskets"]


def score_offers_by_store(
    artifact_dir,
    lines: pd.DataFrame,
    products: pd.DataFrame,
    offers: pd.DataFrame,
    *,
    min_store_baskets: int = 5,
    excluded_departments=(),
    promotions: Optional[pd.DataFrame] = None,
    week_start=None,
    progress: Optional[ProgressFn] = None,
) -> pd.DataFrame:
    """Score live offers for each product page, chain-wide and in each store.

    The storefront shows the first few live offers that hold the page's
    product; this gives what to order them by, for a shopper with or without
    a chosen store: an attach rate and a model score. For each offer and each
    of its items taken as the page product (the anchor), the model scores the offer's other items as companions of the anchor,
    once with no store (the "anonymous, no store" query of the protocol) and
    once in every store where the anchor was bought in at least
    ``min_store_baskets`` baskets (the store context features of
    :func:`bundling_ml.ranking.pair_features`: store-conditional confidence
    shrunk towards the global one, the candidate's store lift, ...). The
    model's pair logits do not depend on the other candidates of a list, so a
    companion's logit here is the one ``recommend`` gives it for the same
    anchor, store and week.

    Score of an offer = geometric mean over its companions of
    sigmoid(logit(anchor, companion, store)): a 0..1 number comparable
    between the offers of one product page in one store (all are scored for
    the same anchor and store).

    Attach rate of an offer on a page = the share of baskets with the page's
    product that also hold all the offer's other items: chain-wide, count /
    anchor baskets (the rule's confidence); in a store, the store's own
    share shrunk towards the chain-wide one with 10 pseudo-baskets
    (:func:`bundling_ml.ranking.shrunk_store_confidence`). This, not the
    model score, is what the storefront orders a page's offers by:
    ``benchmarks/store_offer_ranking.py`` (full Complete Journey, split
    2017-10-30) found that it predicts which offer a test basket takes whole
    better than the model's store-aware score, which is better at "takes at
    least one companion" (``docs/quality.md``, "Store-aware offer order").

    Args:
        artifact_dir: directory written by :func:`train_model`.
        lines: order lines (the history the statistics are computed on; cleaned here).
        products: products frame.
        offers: DataFrame with ``offer_id`` (any hashable, returned as str)
            and ``items`` (sequence of product ids, str; 2 or more).
        min_store_baskets: a store gets its own rows for a page product only
            when that product was bought there in at least this many baskets
            (fewer: the store-conditional statistics are nearly all prior, and
            the chain-wide row serves the store).
        excluded_departments: departments left out of the statistics (and
            offers holding one of their products get no rows), combined with
            the model's own exclusions, as in :func:`score_bundles`.
        promotions: weekly promotions as for :func:`score_bundles` (display /
            mailer features of the scoring week); optional.
        week_start: a day of the week scored for (default: the day after the
            last order line).
        progress: optional callable(fraction, stage).

    Returns:
        DataFrame with columns offer_id (str), product_id (str: the page
        product), store_id (str; "" = no store, the chain-wide row), score
        (float64, 0..1, the model's), attach_rate (float64, 0..1, see above),
        co_purchase_count (int64: baskets, in that store or
        chain-wide, holding all the offer's items), anchor_baskets (int64:
        baskets holding the page product, in that store or chain-wide);
        sorted by offer_id, product_id, store_id. An offer with an item never
        bought in ``lines`` (or of an excluded department) has no rows
        (nothing to score it with); the lines
        without ``store_id`` give only chain-wide rows.

    Raises:
        FileNotFoundError: if the artifact is missing.
        ValueError: if the artifact holds the earlier pointwise model, or
            ``offers`` lacks ``offer_id`` / ``items``.
    """
    prog = _Progress(progress)
    missing = {"offer_id", "items"} - set(offers.columns)
    if missing:
        raise ValueError(f"offers: missing column(s) {sorted(missing)}; expected offer_id and items")
    prog(0.0, "loading model")
    model, meta, cols = _load_ranker(artifact_dir)
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        OFFER_SCORE_COLUMNS, [str, str, str, "float64", "float64", "int64", "int64"])})
    prog(0.05, "preparing lines")
    L, P = _scoring_lines(lines, products, meta, excluded_departments)
    if L.empty or offers.empty:
        return empty
    prog(0.2, "counting co-purchases")
    product_index, ctx, week = _scoring_context(L, P, meta, promotions, week_start)
    use_stores = ctx.stores is not None and any(f in rk.STORE_FEATURES for f in meta.get("pair_features", ()))

    # (offer, page product, companions) with every item known to the history
    pages: list[tuple[str, int, tuple[int, ...]]] = []
    for offer_id, items in zip(offers["offer_id"].tolist(), offers["items"].tolist()):
        idx = product_index.get_indexer([str(i) for i in items])
        if len(idx) < 2 or (idx < 0).any():
            continue
        for j, a in enumerate(idx.tolist()):
            pages.append((str(offer_id), a, tuple(int(c) for k, c in enumerate(idx.tolist()) if k != j)))
    if not pages:
        return empty
    companions: dict[int, list[int]] = {}
    for _, a, comps in pages:
        companions.setdefault(a, [])
        companions[a].extend(c for c in comps if c not in companions[a])

    prog(0.4, f"store lists for {len(companions)} page products")
    Xc = ctx.Xcsc
    list_anchor, list_store = [], []
    store_baskets: dict[tuple[int, int], np.ndarray] = {}  # (anchor, store row) -> basket rows
    for a in companions:
        list_anchor.append(a)
        list_store.append(-1)
        if not use_stores:
            continue
        rows = Xc.indices[Xc.indptr[a]:Xc.indptr[a + 1]]
        st = ctx.b_store[rows]
        for s in np.flatnonzero(np.bincount(st[st >= 0], minlength=len(ctx.stores)) >= min_store_baskets).tolist():
            list_anchor.append(a)
            list_store.append(s)
            store_baskets[(a, s)] = rows[st == s]
    # One single-candidate list per (page product, store, companion): a pair's logit does not depend on
    # the other candidates of its list, and padding every list to the widest page (a hub product such as
    # bananas in hundreds of offers) would score mostly padding.
    offsets = np.zeros(len(list_anchor) + 1, np.int64)
    offsets[1:] = np.cumsum([len(companions[a]) for a in list_anchor])
    pair_anchor = np.repeat(np.asarray(list_anchor, np.int64), np.diff(offsets))
    pair_store = np.repeat(np.asarray(list_store, np.int64), np.diff(offsets))
    pair_cand = np.concatenate([np.asarray(companions[a], np.int64) for a in list_anchor])
    prog(0.6, f"scoring {len(pair_anchor)} (page, store, companion) pairs")
    logits = rk.predict_lists(model, ctx, pair_anchor, pair_cand.reshape(-1, 1), None, cols, chunk=20_000,
                              weeks=None if week is None else np.full(len(pair_anchor), week),
                              stores=pair_store if use_stores else None).reshape(-1)
    prob = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -50, 50)))
    stores = np.asarray(list_store, np.int64)
    lists_of: dict[int, list[int]] = {}
    for i, a in enumerate(list_anchor):
        lists_of.setdefault(a, []).append(i)

    prog(0.85, "evidence")
    S = ctx.S
    ids = product_index.to_numpy()
    store_ids = ctx.stores.to_numpy() if use_stores else None
    out = []
    for offer_id, a, comps in pages:
        pos = [companions[a].index(c) for c in comps]
        items = (a, *comps)
        chain_conf = 0.0
        for i in lists_of[a]:  # the chain-wide list first
            s = int(stores[i])
            score = float(np.exp(np.mean(np.log(prob[offsets[i] + np.asarray(pos)]))))
            if s < 0:
                n_all, n_a, store = S.baskets_with_all(items), int(S.item_counts[a]), ""
                chain_conf = rate = n_all / n_a if n_a else 0.0
            else:
                rows = store_baskets[(a, s)]
                sub = ctx.X[rows][:, list(comps)]
                n_all = int((np.diff((sub > 0).astype(np.int8).tocsr().indptr) == len(comps)).sum())
                n_a, store = len(rows), str(store_ids[s])
                rate = float(rk.shrunk_store_confidence(n_all, n_a, chain_conf))
            out.append((offer_id, str(ids[a]), store, score, rate, int(n_all), int(n_a)))
    df = pd.DataFrame(out, columns=OFFER_SCORE_COLUMNS)
    df["co_purchase_count"] = df["co_purchase_count"].astype("int64")
    df["anchor_baskets"] = df["anchor_baskets"].astype("int64")
    df = df.sort_values(["offer_id", "product_id", "store_id"], kind="stable").reset_index(drop=True)
    prog(1.0, f"{len(df)} offer scores")
    return df


STORE_BUNDLE_COLUMNS = ["anchor", "items", "score", "co_purchase_count", "support", "confidence", "lift",
                        "expected_attach_rate", "suggested_discount_percent", "reasons", "store_ids", "store_evidence"]


def store_specific_bundles(
    lines: pd.DataFrame,
    products: pd.DataFrame,
    *,
    exclude_item_sets=(),
    excluded_departments=(),
    min_store_count: int = 8,
    min_ratio: float = 2.0,
    min_store_lift: float = 1.5,
    min_shoppers: int = 5,
    max_per_store: int = 3,
    max_bundles: int = 100,
    count_prior: float = 20.0,
    progress: Optional[ProgressFn] = None,
) -> pd.DataFrame:
    """Pairs that sell together in some stores far more than chain-wide: store-specific bundle suggestions.

    Chain-wide suggestions (:func:`score_bundles`) rank pairs by their
    evidence over all stores, so a pair bought together mostly in a few
    stores (a regional product, a store's own display or shoppers) rarely
    makes the list. For every store and every pair bought together in at
    least ``min_store_count`` of that store's baskets, each direction
    anchor a -> companion c is measured:

    * store attach rate = P(c | a, store) shrunk towards the chain-wide
      confidence with 10 pseudo-baskets,
      (n_sac + 10 * conf) / (n_sa + 10)
      (:func:`bundling_ml.ranking.shrunk_store_confidence`, beta-binomial
      posterior mean), where conf = n_ac / n_a over all stores;
    * ratio = store attach rate / conf;
    * store lift = n_sac * N_s / (n_sa * n_sc) (N_s = the store's baskets).

    A direction qualifies when ratio >= ``min_ratio`` and store lift >=
    ``min_store_lift`` and the store's baskets holding both come from at
    least ``min_shoppers`` shoppers (distinct ``customer_id``; a basket
    without one counts as its own shopper), so one household's weekly habit
    is not offered to a whole store; of a pair's two directions the one with the higher
    store attach rate is kept (the anchor is the product whose page shows the
    offer best). Substitutes are left out as in :func:`score_bundles`: the
    same non-empty product_type only when the chain-wide lift is > 1.5 with
    >= 5 baskets together, and never two products with the same display
    name. Each store keeps its ``max_per_store`` best pairs by score =
    store attach rate * n_sac / (n_sac + ``count_prior``) (the same evidence
    shrinkage as :func:`score_bundles`); a pair kept in several stores
    becomes one suggestion for all of them with the best store's score.
    Item sets in ``exclude_item_sets`` (e.g. the chain-wide suggestions)
    are skipped.

    No model is used: the evidence is the stores' own counts, which is what
    ``benchmarks/store_offer_ranking.py`` found orders offers within a store
    best (``docs/quality.md``, "Store-aware offer order").

    Args:
        lines: order lines with ``store_id`` (cleaned here, as :func:`score_bundles` does).
        products: products frame.
        exclude_item_sets: iterable of item collections (product ids, str) not to suggest again.
        excluded_departments: departments whose products are never in a bundle.
        min_store_count: minimum baskets of the store holding both products.
        min_ratio: minimum store attach rate / chain-wide confidence.
        min_store_lift: minimum lift of the pair within the store.
        min_shoppers: minimum distinct shoppers among the store's baskets holding both.
        max_per_store: pairs kept per store.
        max_bundles: maximum rows returned.
        count_prior: evidence shrinkage of the score (baskets).
        progress: optional callable(fraction, stage).

    Returns:
        DataFrame with the columns of :func:`score_bundles` (chain-wide
        co_purchase_count, support, confidence and lift of anchor ->
        companion; score as above, float 0..1; expected_attach_rate = the
        mean store attach rate over the suggestion's stores weighted by their
        anchor baskets; suggested_discount_percent from the chain-wide lift and that
        attach rate; reasons naming the best store) plus store_ids (tuple of
        str, sorted) and store_evidence (list of dicts, best first: store_id
        str, co_purchase_count int, anchor_baskets int, attach_rate float
        (shrunk), chain_attach_rate float, lift float (in the store),
        shoppers int); sorted
        by score descending, then chain-wide count. Empty (same columns) when
        the lines carry no store.
    """
    prog = _Progress(progress)
    empty = pd.DataFrame(columns=STORE_BUNDLE_COLUMNS)
    prog(0.0, "preparing lines")
    L = prepare_lines(lines)
    P = prepare_products(products, L)
    L = exclude_departments(L, P, {str(d).strip().upper() for d in excluded_departments})
    if L.empty or "store_id" not in L.columns or not L["store_id"].notna().any():
        return empty
    prog(0.1, "counting co-purchases")
    product_index = pd.Index(np.sort(L["product_id"].unique()))
    X, basket_ids = basket_matrix(L, product_index)
    item_counts = np.asarray(X.sum(axis=0)).ravel().astype(np.int64)
    N = float(X.shape[0])
    first = L.drop_duplicates("basket_id").set_index("basket_id")  # one row per basket: its store and shopper
    store_of = first["store_id"].reindex(basket_ids).astype("string").fillna("").to_numpy(dtype=object)
    ptype = P.drop_duplicates("product_id").set_index("product_id")["product_type"].reindex(product_index).fillna("")
    ptype_code, _ = pd.factorize(ptype.to_numpy(dtype=object))
    ptype_code = np.where(ptype.to_numpy(dtype=object) == "", -1, ptype_code)
    name = _name_codes(P, product_index)
    excluded = {frozenset(str(i) for i in s) for s in exclude_item_sets}
    ids = product_index.to_numpy()
    Xc = X.tocsc()
    if "customer_id" in first.columns:
        # guests (<NA>, as ml_bridge and prepare_lines give them, or "") count as one shopper per basket
        cust = first["customer_id"].astype("string").reindex(basket_ids).fillna("").to_numpy(dtype=object)
        cust = np.where(cust == "", "basket:" + pd.Index(basket_ids).astype(str).to_numpy(dtype=object), cust)
    else:
        cust = np.asarray(["basket:" + str(b) for b in basket_ids], dtype=object)

    def baskets_of(p: int) -> np.ndarray:
        return Xc.indices[Xc.indptr[p]:Xc.indptr[p + 1]]

    def chain_count(a: int, c: int) -> int:
        return int(np.intersect1d(baskets_of(a), baskets_of(c), assume_unique=True).size)

    stores = sorted(s for s in set(store_of.tolist()) if s)
    found: dict[tuple[int, int], list[dict]] = {}  # (anchor, companion) -> evidence per store
    chain_counts: dict[frozenset, int] = {}  # baskets holding both, over all stores
    for store in tqdm(stores, desc="store pairs", mininterval=2.0):
        rows = np.flatnonzero(store_of == store)
        if len(rows) < min_store_count:
            continue
        Xs = X[rows]
        n_s = np.asarray(Xs.sum(axis=0)).ravel().astype(np.float64)
        co = sp.triu(Xs.T @ Xs, k=1).tocoo()
        keep = co.data >= min_store_count
        if not keep.any():
            continue
        a0, c0, n_ac = co.row[keep].astype(np.int64), co.col[keep].astype(np.int64), co.data[keep].astype(np.float64)
        store_lift = n_ac * len(rows) / (n_s[a0] * n_s[c0])
        cand = []
        for a, c, n, lift_s in zip(a0.tolist(), c0.tolist(), n_ac.tolist(), store_lift.tolist()):
            if lift_s < min_store_lift or (name[a] >= 0 and name[a] == name[c]):
                continue
            if frozenset((str(ids[a]), str(ids[c]))) in excluded:
                continue
            pair = frozenset((a, c))
            if pair not in chain_counts:
                chain_counts[pair] = chain_count(a, c)
            n_chain = chain_counts[pair]
            best = None
            for x, y in ((a, c), (c, a)):
                conf = n_chain / item_counts[x]
                rate = float(rk.shrunk_store_confidence(n, n_s[x], conf))
                if conf > 0 and rate / conf >= min_ratio and (best is None or rate > best[2]):
                    best = (x, y, rate, conf)
            if best is None:
                continue
            if ptype_code[a] >= 0 and ptype_code[a] == ptype_code[c]:
                chain_lift = n_chain * N / (float(item_counts[a]) * item_counts[c])
                if not (chain_lift > 1.5 and n_chain >= 5):
                    continue  # substitutes (two brands of the same type)
            both = np.intersect1d(np.intersect1d(baskets_of(a), baskets_of(c), assume_unique=True), rows,
                                  assume_unique=True)
            shoppers = len(set(cust[both].tolist()))
            if shoppers < min_shoppers:
                continue  # one or two households' habit, not the store's
            x, y, rate, conf = best
            cand.append((rate * n / (n + count_prior), x, y, {
                "store_id": str(store), "co_purchase_count": int(n), "anchor_baskets": int(n_s[x]),
                "attach_rate": float(rate), "chain_attach_rate": float(conf), "lift": float(lift_s), "shoppers": int(shoppers)}))
        cand.sort(key=lambda t: (-t[0], t[1], t[2]))
        for score, x, y, ev in cand[:max_per_store]:
            ev["score"] = score
            # one suggestion per item set: a pair kept with different anchors in two stores joins the first
            key = next(((u, v) for (u, v) in ((x, y), (y, x)) if (u, v) in found), (x, y))
            found.setdefault(key, []).append(ev)
    prog(0.8, "evidence")
    if not found:
        return empty
    labels = _label(P).reindex(product_index).fillna("").to_numpy()
    out = []
    for (a, c), evs in found.items():
        evs.sort(key=lambda e: (-e["score"], e["store_id"]))
        n_chain = chain_counts[frozenset((a, c))]
        conf = n_chain / float(item_counts[a])
        lift = n_chain * N / (float(item_counts[a]) * item_counts[c])
        weight = sum(e["anchor_baskets"] for e in evs)
        attach = sum(e["attach_rate"] * e["anchor_baskets"] for e in evs) / weight
        best = evs[0]
        anchor_label, comp_label = labels[a] or str(ids[a]), labels[c] or str(ids[c])
        where = f"store {best['store_id']}" + (f" and {len(evs) - 1} more store(s)" if len(evs) > 1 else "")
        reasons = (f"Sells together in {where} far more than across the shop: at store {best['store_id']} bought together "
                   f"in {best['co_purchase_count']:,} baskets by {best['shoppers']:,} shoppers, {best['attach_rate']:.0%} of baskets with {anchor_label} "
                   f"there also have {comp_label} ({conf:.0%} across all stores); "
                   f"{best['lift']:.1f}x more often than chance in that store")
        out.append({
            "anchor": str(ids[a]), "items": (str(ids[a]), str(ids[c])), "score": float(best["score"]),
            "co_purchase_count": int(n_chain), "support": n_chain / N, "confidence": conf, "lift": lift,
            "expected_attach_rate": float(attach),
            "suggested_discount_percent": float(suggested_discount_percent(lift, attach)),
            "reasons": reasons,
            "store_ids": tuple(sorted(e["store_id"] for e in evs)),
            "store_evidence": [{k: v for k, v in e.items() if k != "score"} for e in evs],
        })
    df = pd.DataFrame(out, columns=STORE_BUNDLE_COLUMNS)
    df = df.sort_values(["score", "co_purchase_count"], ascending=[False, False], kind="stable").head(max_bundles)
    df["co_purchase_count"] = df["co_purchase_count"].astype("int64")
    prog(1.0, f"{len(df)} store-specific bundles")
    return df.reset_index(drop=True)
