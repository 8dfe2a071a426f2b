"""Anonymous ranker experiments: rolling label windows and seasonality features.

Store-free setting: ``store_id`` is dropped from the lines before anything
else, so the baseline and every variant are trained and tested without a
store (the store features are left out of the feature columns: without a
store they are constant). Everything else follows
``backtest.fit_rankers`` / ``backtest.run_backtest`` (anonymous ranker, one
seed, 2 epochs, 80 training / 100 test candidates, the protocol's 35,236 test
queries scored per distinct (anchor, week, time-of-day bucket, weekday)).

Two phases (the second reads the cache of the first):

* ``--phase prep``: builds the label contexts of label windows 0, 1, 2
  (:data:`WINDOWS`; window w = the 4 weeks ending ``4 * w`` weeks before the split; its
  statistics come from the lines before it), a pool of label queries per
  window (50,000 for window 0, 30,000 for windows 1 and 2, sampled with a
  fixed seed), their candidate lists, list inputs and labels, and the same
  for the test queries on the whole training window; plus the extra
  seasonality columns (:func:`season_features`). Saved as .npy in ``--cache``.
* ``--phase run --variants base,roll2,...  --seeds 0,1``: for each seed,
  draws that seed's label queries from the pools (40,000 in total, split
  evenly over the variant's windows), trains one ranker with that seed and
  scores the test lists. Prints HR@10 / NDCG@10 per variant and seed.

Seasonality columns (all computed only from lines before the context's end;
the query's date is known at query time):

0. ``cand_season_lift``: the candidate's log lift in training baskets within
   +-14 days (day of year, circular) of the query date mirrored around
   20 January (temperature-driven seasonality is roughly symmetric around the
   coldest / warmest weeks: Nov-Dec queries read Feb-Apr baskets, Oct label
   queries read Apr-May baskets); lift = log(((n_cW + k p_c) / (N_W + k)) / p_c),
   p_c = (n_c + 1) / (N + 1), k = 20 pseudo-baskets.
1. ``pair_season_conf_log_ratio``: log((conf_W + 1e-4) / (conf + 1e-4)) with
   conf_W = (n_acW + 10 conf) / (n_aW + 10), the pair's confidence in those
   baskets shrunk towards the global confidence (as the store features).
2. ``cand_holiday_lift``: the candidate's lift (as 0.) in baskets of the
   7 days up to and including a holiday (New Year, Super Bowl Sunday, Easter,
   Memorial Day, July 4, Labor Day, Halloween, Thanksgiving, Christmas),
   times the gate "the query date is in such a 7-day period".
3. ``pair_holiday_conf_log_ratio``: as 1. for the holiday baskets, gated.
4. ``cand_trend8``: log of the candidate's shrunk share in the last 4 weeks
   of the window over its share in the 4 weeks before.
5. ``pair_recent8_conf_log_ratio``: as 1. for the baskets of the last 8 weeks.

Windows ``L2`` / ``L6`` / ``L8`` (one label window of 2 / 6 / 8 weeks ending at
the split, statistics up to its start) are built with ``--phase prep
--windows L2,L6,L8 --no-test``. Variant names are the keys of
:data:`VARIANTS`, optionally with the suffixes ``-noemb`` (no attribute
embeddings) and ``-nopromo`` (no promotion features).

Run: ``.venv/bin/python benchmarks/anon_experiments.py --phase prep`` then
``--phase run --variants base,roll2,roll3,base+season,roll3+season --seeds 0,1``.
Results (docs/quality.md, "Ablation / what we tried"): rolling windows
-0.0025 to -0.0032 NDCG@10 on two seeds, seasonality columns within +-0.0004.
Keep at most ~4 variants per run process: the memory-mapped caches read add
to the RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from bundling_ml import backtest as bt  # noqa: E402
from bundling_ml import ranking as rk  # noqa: E402
from bundling_ml.candidates import candidate_companions  # noqa: E402
from bundling_ml.evaluation import hits_matrix, hr_ndcg  # noqa: E402
from bundling_ml.data import (basket_matrix, build_queries, completejourney_frames, completejourney_promotions, prepare_lines,  # noqa: E402
                              prepare_products, temporal_split)
from bundling_ml.features import ProductTable, ProductVocab  # noqa: E402

SPLIT = pd.Timestamp("2017-10-30")
#: the candidate generator these experiments were measured with (3 related categories: the product's default
#: until the candidate ablation, benchmarks/candidate_ablation.py, turned them off)
MEASURED_CANDIDATES = dict(n_related=3)
#: label windows: name -> (weeks before the split the labels start, weeks before the split they end, pool of label queries);
#: statistics come from the lines before the labels' start
WINDOWS = {0: (4, 0, 50_000), 1: (8, 4, 30_000), 2: (12, 8, 30_000), "L2": (2, 0, 40_000), "L6": (6, 0, 40_000), "L8": (8, 0, 40_000)}
#: the feature columns these experiments were measured with: the anonymous features without the store (constant
#: here) and without the likely-shopper features (added later, benchmarks/household_posterior.py)
COLS_NAMES = tuple(f for f in rk.ANON_FEATURES if f not in rk.STORE_FEATURES + rk.HOUSEHOLD_FEATURES)
SEASON_NAMES = ("cand_season_lift", "pair_season_conf_log_ratio", "cand_holiday_lift", "pair_holiday_conf_log_ratio", "cand_trend8",
                "pair_recent8_conf_log_ratio")
SEASON_GROUPS = {"season": [0, 1], "holiday": [2, 3], "trend": [4, 5], "all": [0, 1, 2, 3, 4, 5]}
MIRROR_DOY = 20
SEASON_HALF_WIDTH = 14
CAND_PRIOR = 20.0
CONF_PRIOR = 10.0
T0 = time.perf_counter()


def log(msg):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"[{time.perf_counter() - T0:7.0f} s, peak {rss:6.0f} MiB] {msg}", flush=True)


def easter(y: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm, Meeus/Jones/Butcher)."""
    a, b, c = y % 19, y // 100, y % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return date(y, month, day)


def nth_weekday(y: int, month: int, weekday: int, n: int) -> date:
    """n-th (1-based; -1 = last) ``weekday`` (Mon=0) of the month."""
    if n > 0:
        d = date(y, month, 1)
        d += timedelta(days=(weekday - d.weekday()) % 7)
        return d + timedelta(weeks=n - 1)
    d = date(y + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    return d - timedelta(days=(d.weekday() - weekday) % 7)


def holidays(y: int) -> list[date]:
    return [date(y, 1, 1), nth_weekday(y, 2, 6, 1), easter(y), nth_weekday(y, 5, 0, -1), date(y, 7, 4), nth_weekday(y, 9, 0, 1),
            date(y, 10, 31), nth_weekday(y, 11, 3, 4), date(y, 12, 25)]


def holiday_flags(times) -> np.ndarray:
    """(n,) bool: the date is within the 7 days up to and including a holiday."""
    d = pd.DatetimeIndex(pd.to_datetime(np.asarray(times))).normalize()
    out = np.zeros(len(d), bool)
    for y in range(d.year.min(), d.year.max() + 2):
        for h in holidays(y):
            hts = pd.Timestamp(h)
            out |= (d >= hts - pd.Timedelta(days=6)) & (d <= hts)
    return out


def mirror_doy(times) -> np.ndarray:
    doy = pd.DatetimeIndex(pd.to_datetime(np.asarray(times))).day_of_year.to_numpy()
    return (2 * MIRROR_DOY - doy) % 365


def circ_dist(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b)) % 365
    return np.minimum(d, 365 - d)


class SubsetStats:
    """Item counts and pair counts within a subset of the window's baskets."""

    def __init__(self, X: sp.csr_matrix, mask: np.ndarray):
        Xs = X[mask].astype(np.float32)
        self.N = float(Xs.shape[0])
        self.n = np.asarray(Xs.sum(axis=0)).ravel().astype(np.float64)
        self.C = (Xs.T @ Xs).tocsr() if self.N > 0 else sp.csr_matrix(X.shape[1:] * 2, dtype=np.float32)


def _cand_lift(sub: SubsetStats, c, p_c):
    if sub.N <= 0:
        return np.zeros(len(c), np.float32)
    return np.log((sub.n[c] + CAND_PRIOR * p_c[c]) / (sub.N + CAND_PRIOR) / p_c[c]).astype(np.float32)


def _conf_ratio(sub: SubsetStats, a, c, conf):
    if sub.N <= 0:
        return np.zeros(len(a), np.float32)
    nac = rk._sparse_values(sub.C, a, c)
    cw = (nac + CONF_PRIOR * conf) / (sub.n[a] + CONF_PRIOR)
    return np.log((cw + 1e-4) / (conf + 1e-4)).astype(np.float32)


def season_features(ctx: rk.Context, X: sp.csr_matrix, btimes: np.ndarray, end: pd.Timestamp, anchors, cands, times) -> np.ndarray:
    """(n, M, 6) float32 seasonality columns (module docstring) for lists ``cands`` of ``anchors`` at query ``times``."""
    n, m = cands.shape
    out = np.zeros((n, m, len(SEASON_NAMES)), np.float32)
    S = ctx.S
    N = float(max(S.n_baskets, 1))
    p_c = (S.item_counts.astype(np.float64) + 1.0) / (N + 1.0)
    bts = pd.DatetimeIndex(btimes)
    age = (end - bts).total_seconds().to_numpy() / 86400.0
    A = np.repeat(np.asarray(anchors, np.int64), m)
    C = np.where(cands >= 0, cands, 0).ravel()
    na = S.item_counts[A].astype(np.float64)
    conf = np.divide(rk._sparse_values(S.co, A, C), na, out=np.zeros(len(A)), where=na > 0)
    flat = out.reshape(n * m, -1)
    # 0/1 seasonal mirror, per distinct (mirrored) query week
    qt = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
    wk = qt.normalize() - pd.to_timedelta(qt.day_of_week, unit="D")
    bdoy = bts.day_of_year.to_numpy()
    for w in np.unique(wk):
        rows = np.flatnonzero(wk == w)
        centre = mirror_doy([pd.Timestamp(w) + pd.Timedelta(days=3)])[0]
        sub = SubsetStats(X, circ_dist(bdoy, centre) <= SEASON_HALF_WIDTH)
        idx = (rows[:, None] * m + np.arange(m)[None, :]).ravel()
        flat[idx, 0] = _cand_lift(sub, C[idx], p_c)
        flat[idx, 1] = _conf_ratio(sub, A[idx], C[idx], conf[idx])
    # 2/3 holidays (gated by the query date)
    gate = np.repeat(holiday_flags(times), m)
    if gate.any():
        sub = SubsetStats(X, holiday_flags(btimes))
        idx = np.flatnonzero(gate)
        flat[idx, 2] = _cand_lift(sub, C[idx], p_c)
        flat[idx, 3] = _conf_ratio(sub, A[idx], C[idx], conf[idx])
    # 4/5 trend over the last 8 weeks
    last4, prev4 = SubsetStats(X, age <= 28), SubsetStats(X, (age > 28) & (age <= 56))
    s1 = (last4.n[C] + CAND_PRIOR * p_c[C]) / (last4.N + CAND_PRIOR)
    s0 = (prev4.n[C] + CAND_PRIOR * p_c[C]) / (prev4.N + CAND_PRIOR)
    flat[:, 4] = np.log(s1 / s0)
    flat[:, 5] = _conf_ratio(SubsetStats(X, age <= 56), A, C, conf)
    out[cands < 0] = 0.0
    return out


def basket_times_of(lines: pd.DataFrame, bids) -> np.ndarray:
    return lines.groupby("basket_id", sort=False)["time"].first().reindex(bids).to_numpy()


def append_json(path, res: dict) -> None:
    """Append ``res`` as one JSON line to ``path`` (no-op when ``path`` is None): the experiments' ``--out`` log."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(res) + "\n")


def save(cache: Path, prefix: str, arrays: dict):
    for k, v in arrays.items():
        np.save(cache / f"{prefix}_{k}.npy", v)


def load(cache: Path, prefix: str, keys, mmap=False) -> dict:
    return {k: np.load(cache / f"{prefix}_{k}.npy", mmap_mode="r" if mmap else None) for k in keys}


def setup():
    lines, products = completejourney_frames()
    promotions = completejourney_promotions()
    L = prepare_lines(lines)
    if "store_id" in L.columns:
        L = L.drop(columns=["store_id"])  # store-free setting
    P = prepare_products(products, L)
    train, test = temporal_split(L, SPLIT)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    vocab = ProductVocab.fit(P, pidx)
    table = ProductTable.build(P, pidx, vocab)
    return train, test, P, pidx, vocab, table, promotions


X_KEYS = ("pair",) + tuple(f"{s}_{f}" for f in ("department", "category", "product_type", "brand") for s in ("a", "c")) + ("bias",)


def label_pool(train: pd.DataFrame, pidx: pd.Index, table, P: pd.DataFrame, promotions, lab_start: pd.Timestamp, lab_end: pd.Timestamp,
               pool_n: int, seed: int):
    """A label window's context and its pool of sampled label queries, as ``fit_rankers`` builds them.

    Statistics come from the lines before ``lab_start``; the label queries are
    the protocol queries of the baskets in [``lab_start``, ``lab_end``), of
    which ``pool_n`` are sampled with ``numpy.random.default_rng(seed)``.

    Returns:
        (feat, lab, ctx, q, sel, anchors, rows, times, weeks, J, uniq, inv):
        the statistics and label lines, then :func:`sample_pool`'s tuple.
    """
    feat = train[train["time"] < lab_start]
    lab = train[(train["time"] >= lab_start) & (train["time"] < lab_end)]
    return (feat, lab) + sample_pool(feat, lab, pidx, table, P, promotions, lab_start, pool_n, seed)


def sample_pool(feat: pd.DataFrame, lab: pd.DataFrame, pidx: pd.Index, table, P: pd.DataFrame, promotions, end: pd.Timestamp,
                pool_n: int, seed: int):
    """The context of the statistics lines ``feat`` (ending at ``end``) and ``pool_n`` label queries of ``lab``.

    Returns:
        (ctx, q, sel, anchors, rows, times, weeks, J, uniq, inv): the context,
        the label :class:`~bundling_ml.data.Queries` and the (pool,) sorted
        sample of its query indices (``numpy.random.default_rng(seed)``), the
        sampled queries' anchors, basket rows, times and promotion weeks, the
        decayed Jaccard matrix, the sorted distinct anchors and each sampled
        query's row in them.
    """
    ctx = rk.attach_promotions(rk.build_context(feat, pidx, table, P, end=end), promotions)
    seen = pidx[ctx.S.item_counts > 0]
    q = bt.remap_queries(build_queries(lab, seen), seen, pidx)
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(q.n_queries, size=min(pool_n, q.n_queries), replace=False))
    anchors, rows = q.anchor[sel], q.query_basket[sel]
    times = bt.basket_times(lab, q.basket_ids)[rows]
    weeks = rk.week_index(ctx, times)
    J = rk.decayed_jaccard_matrix(ctx)
    uniq, inv = np.unique(anchors, return_inverse=True)
    return ctx, q, sel, anchors, rows, times, weeks, J, uniq, inv


def save_pool(cache: Path, name: str, feat: pd.DataFrame, pidx: pd.Index, end: pd.Timestamp, pool, extra_fn) -> np.ndarray:
    """Candidate lists, inputs, labels and ``extra_fn`` columns of a :func:`sample_pool` tuple, cached as ``name``.

    Returns:
        (pool, M_TRAIN) labels (1 where the candidate is in the query's basket).
    """
    ctx, q, sel, anchors, rows, times, weeks, J, uniq, inv = pool
    cands = rk.anchor_candidates(ctx, uniq, bt.M_TEST, J=J, **MEASURED_CANDIDATES)[inv][:, :bt.M_TRAIN]
    x = rk.list_inputs(ctx, anchors, cands, None, rk.feature_columns(COLS_NAMES), weeks, times)
    y = rk.list_labels(q.baskets, rows, cands)
    extra = extra_fn(feat, ctx, pidx, end, anchors, cands, times)
    save(cache, name, {**{k: x[k] for k in X_KEYS}, "y": y, "extra": extra})
    return y


def predict_cached(model, test: dict, keys, extra=None, chunk: int = 4000) -> np.ndarray:
    """Logits of ``model`` on cached (possibly memory-mapped) test lists.

    Args:
        model: a Keras list ranker; only its named inputs are fed.
        test: arrays by input name, each (n_lists, M, ...), plus ``cands`` (n_lists, M).
        keys: the input names to read from ``test``.
        extra: optional ``extra(rows: slice, x: dict) -> dict`` giving inputs to add or
            replace for that chunk of lists (column subsets, history inputs).
        chunk: lists per ``model.predict`` call (bounds memory).

    Returns:
        (n_lists, M) float32 logits.
    """
    names = {t.name for t in model.inputs}
    n = len(test["cands"])
    out = []
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        xi = {k: np.asarray(test[k][sl]) for k in keys if k in names}
        if extra is not None:
            xi.update({k: v for k, v in extra(sl, xi).items() if k in names})
        out.append(np.asarray(model.predict(xi, batch_size=256, verbose=0)))
    return np.concatenate(out)


def protocol_test_lists(ctx: rk.Context, test: pd.DataFrame, pidx: pd.Index):
    """The protocol's test queries (3,000 baskets, seed 0) grouped into the lists the backtest scores.

    As ``backtest.run_backtest``: one candidate list per distinct (anchor, query
    week, 3-hour time-of-day bucket, weekday).

    Returns:
        (queries, qtimes, weeks, nw_first, nw_inv, uniq, inv): the
        :class:`~bundling_ml.data.Queries`; (n_queries,) query times and
        promotion-week rows; (n_lists,) index of each list's first query and
        (n_queries,) each query's list; the sorted distinct anchors and each
        query's row in them.
    """
    queries = build_queries(test, pidx, sample_baskets=3000, seed=0)
    qtimes = bt.basket_times(test, queries.basket_ids)[queries.query_basket]
    weeks = rk.week_index(ctx, qtimes)
    slot = rk.time_slots(qtimes)
    _, nw_first, nw_inv = np.unique(np.stack([queries.anchor, weeks, slot], axis=1), axis=0, return_index=True, return_inverse=True)
    uniq, inv = np.unique(queries.anchor, return_inverse=True)
    return queries, qtimes, weeks, nw_first, nw_inv.ravel(), uniq, inv


def season_extra(feat: pd.DataFrame, ctx: rk.Context, pidx: pd.Index, end: pd.Timestamp, anchors, cands, times) -> np.ndarray:
    """:func:`season_features` from the context's lines ``feat`` (the ``extra_fn`` of :func:`prep`)."""
    X, bids = basket_matrix(feat, pidx)
    return season_features(ctx, X, basket_times_of(feat, bids), end, anchors, cands, times)


def prep(cache: Path, windows=(0, 1, 2), test_lists=True, extra_fn=season_extra):
    """Build and cache the label pools of ``windows`` and the test lists (module docstring).

    ``extra_fn(feat, ctx, pidx, end, anchors, cands, times) -> (n, M, F) float32`` gives the
    extra columns saved as ``extra`` (default: the seasonality columns), from the context's
    lines ``feat`` only.
    """
    train, test, P, pidx, vocab, table, promotions = setup()
    cols = rk.feature_columns(COLS_NAMES)
    log(f"loaded: {len(train):,} train lines, {len(test):,} test lines, {len(pidx):,} products")
    for w in windows:
        w_start, w_end, pool_n = WINDOWS[w]
        lab_end = SPLIT - pd.Timedelta(weeks=w_end)
        lab_start = SPLIT - pd.Timedelta(weeks=w_start)
        feat, lab, *pool = label_pool(
            train, pidx, table, P, promotions, lab_start, lab_end, pool_n, 1000 + (w if isinstance(w, int) else 10 + w_start))
        y = save_pool(cache, f"w{w}", feat, pidx, lab_start, pool, extra_fn)
        q, sel, times = pool[1], pool[2], pool[5]
        log(f"window {w}: labels {lab_start.date()}..{(lab_end - pd.Timedelta(days=1)).date()}, {q.n_queries:,} queries, pool {len(sel):,}, "
            f"recall@80 {(y.sum(1) > 0).mean():.3f}, holiday-gated label queries {holiday_flags(times).mean():.3f}")
        del pool, y, q
    if not test_lists:
        return
    ctx = rk.attach_promotions(rk.build_context(train, pidx, table, P, end=SPLIT), promotions)
    queries, qtimes, weeks, nw_first, nw_inv, uniq, inv = protocol_test_lists(ctx, test, pidx)
    J = rk.decayed_jaccard_matrix(ctx)
    cand_u = rk.anchor_candidates(ctx, uniq, bt.M_TEST, J=J, **MEASURED_CANDIDATES)
    del J
    nw_anchor = queries.anchor[nw_first]
    nw_cands = cand_u[np.searchsorted(uniq, nw_anchor)]
    x = rk.list_inputs(ctx, nw_anchor, nw_cands, None, cols, weeks[nw_first], qtimes[nw_first])
    extra = extra_fn(train, ctx, pidx, SPLIT, nw_anchor, nw_cands, qtimes[nw_first])
    count = candidate_companions(ctx.S, uniq, n_total=bt.K, n_cooc=bt.K, n_category=0)[inv]
    r = bt._row("cooccurrence_count", queries, count, 0.0)
    save(cache, "test", {**{k: x[k] for k in X_KEYS}, "extra": extra, "cands": nw_cands, "inv": nw_inv})
    sp.save_npz(cache / "test_baskets.npz", queries.baskets)
    save(cache, "test", {"query_basket": queries.query_basket, "anchor": queries.anchor})
    log(f"test: {queries.n_queries:,} queries, {len(nw_first):,} lists, holiday-gated {holiday_flags(qtimes).mean():.3f}; "
        f"count NDCG@10 {r['ndcg@10']:.4f} HR@10 {r['hr@10']:.4f}")
    (cache / "prep_done").write_text(json.dumps({"count": r}))


VARIANTS = {  # name: (label windows, seasonality columns[, label queries per window; default: 40,000 split evenly])
    "base": ((0,), []),
    "roll2": ((0, 1), []),
    "roll3": ((0, 1, 2), []),
    "base+season": ((0,), SEASON_GROUPS["all"]),
    "roll3+season": ((0, 1, 2), SEASON_GROUPS["all"]),
    "roll2+season": ((0, 1), SEASON_GROUPS["all"]),
    "base+mirror": ((0,), SEASON_GROUPS["season"]),
    "base+holiday": ((0,), SEASON_GROUPS["holiday"]),
    "base+trend": ((0,), SEASON_GROUPS["trend"]),
    "roll3+holiday": ((0, 1, 2), SEASON_GROUPS["holiday"]),
    "roll3+mirror": ((0, 1, 2), SEASON_GROUPS["season"]),
    "roll3+trend": ((0, 1, 2), SEASON_GROUPS["trend"]),
    # diagnostics / more data: explicit label queries per window
    "w0_30k": ((0,), [], (30_000,)),
    "w1_30k": ((1,), [], (30_000,)),
    "w2_30k": ((2,), [], (30_000,)),
    "w0_40k+w1_20k": ((0, 1), [], (40_000, 20_000)),
    "w0_40k+w1_20k+w2_20k": ((0, 1, 2), [], (40_000, 20_000, 20_000)),
    # one label window of 2 / 6 / 8 weeks before the split (statistics up to its start), 40,000 label queries
    "L2": (("L2",), []),
    "L6": (("L6",), []),
    "L8": (("L8",), []),
    "L8+season": (("L8",), SEASON_GROUPS["all"]),
    "L2+season": (("L2",), SEASON_GROUPS["all"]),
    "L2+holiday": (("L2",), SEASON_GROUPS["holiday"]),
}


def base_name(name: str) -> str:
    return name.replace("-noemb", "").replace("-nopromo", "")


def run(cache: Path, variants, seeds, total=40_000, out_json=None, groups=None, list_weights=None):
    """Train and score ``variants`` x ``seeds`` on the cached pools (module docstring).

    ``list_weights``: optional {variant name: fn(window, sel, y) -> (len(sel),) weights} giving the
    loss weight of each sampled label list of that window (``rk.fit_listwise(list_weight=)``);
    variants not in it train with equal weights. Returns one result dict per (seed, variant)."""
    import keras

    from bundling_ml.data import Queries

    _, _, P, pidx, vocab, table, qtimes = setup_light()
    q_week = ((pd.DatetimeIndex(qtimes) - SPLIT) // pd.Timedelta(days=7)).to_numpy()
    q_hol = holiday_flags(qtimes)
    test = load(cache, "test", X_KEYS + ("extra", "cands", "inv", "query_basket", "anchor"))
    queries = Queries(baskets=sp.load_npz(cache / "test_baskets.npz").tocsr(), basket_ids=None, query_basket=test["query_basket"], anchor=test["anchor"])
    need = sorted({str(w) for name in variants for w in VARIANTS[base_name(name)][0]})
    if len(qtimes) != queries.n_queries:
        raise ValueError("cached test queries do not match the protocol's (re-run --phase prep)")
    pools = {w: load(cache, f"w{w}", X_KEYS + ("y", "extra"), mmap=True) for w in need}
    results = []
    for seed in seeds:
        for name in variants:
            # suffixes: "-noemb" without the attribute embeddings, "-nopromo" without the promotion features
            emb, promo = "-noemb" not in name, "-nopromo" not in name
            windows, ecols, *counts = VARIANTS[base_name(name)]
            keep = np.asarray([i for i, f in enumerate(COLS_NAMES) if promo or f not in rk.FEATURE_GROUPS["promotions"]])
            t = time.perf_counter()
            rng = np.random.default_rng(seed)
            per = counts[0] if counts else [total // len(windows) + (1 if i < total % len(windows) else 0) for i in range(len(windows))]
            xs, ys, ws = [], [], []
            weight_fn = (list_weights or {}).get(name)
            for w, n_w in zip(windows, per):
                pool = pools[str(w)]
                sel = np.sort(rng.choice(len(pool["y"]), size=n_w, replace=False))
                x = {k: np.asarray(pool[k][sel]) for k in X_KEYS}
                x["pair"] = x["pair"][:, :, keep]
                if ecols:
                    x["pair"] = np.concatenate([x["pair"], np.asarray(pool["extra"][sel])[:, :, ecols]], axis=2)
                xs.append(x)
                ys.append(np.asarray(pool["y"][sel]))
                if weight_fn is not None:
                    ws.append(weight_fn(w, sel, ys[-1]))
            x = {k: np.concatenate([d[k] for d in xs]) for k in X_KEYS}
            y = np.concatenate(ys)
            del xs, ys
            model, hist = rk.fit_listwise(vocab, x, y, epochs=2, seed=seed, name=f"r_{seed}", use_embeddings=emb,
                                          list_weight=np.concatenate(ws) if ws else None)
            del x, y
            t_fit = time.perf_counter() - t
            def columns(sl, xi, keep=keep, ecols=ecols):
                pair = xi["pair"][:, :, keep]
                return {"pair": np.concatenate([pair, np.asarray(test["extra"][sl])[:, :, ecols]], axis=2) if ecols else pair}

            s_n = predict_cached(model, test, X_KEYS, columns)
            recs = rk.top_k(test["cands"], s_n, bt.K)[0][test["inv"]]
            r = bt._row(name, queries, recs, 0.0)
            res = {"variant": name, "seed": seed, "hr@10": r["hr@10"], "ndcg@10": r["ndcg@10"], "queries": r["queries"], "fit_s": round(t_fit, 1),
                   "total_s": round(time.perf_counter() - t, 1), "val_loss": hist["val_loss"]}
            hits, ts = hits_matrix(queries, recs), queries.truth_sizes()
            res["ndcg@10_by_week"] = [round(hr_ndcg(hits[q_week == w], ts[q_week == w], bt.K)[1], 4) for w in range(int(q_week.max()) + 1)]
            res["ndcg@10_holiday_period"] = round(hr_ndcg(hits[q_hol], ts[q_hol], bt.K)[1], 4)
            res["ndcg@10_other"] = round(hr_ndcg(hits[~q_hol], ts[~q_hol], bt.K)[1], 4)
            for g, mask in (groups or {}).items():  # caller's query groups: {label: (n_queries,) bool}
                res[f"ndcg@10_{g}"] = round(hr_ndcg(hits[mask], ts[mask], bt.K)[1], 4)
            results.append(res)
            log(f"{name:<14} seed {seed}: HR@10 {r['hr@10']:.4f}  NDCG@10 {r['ndcg@10']:.4f}  (fit {t_fit:.0f} s, total {time.perf_counter() - t:.0f} s, "
                f"val_loss {hist['val_loss']}); holiday-period queries {res['ndcg@10_holiday_period']:.4f}, other {res['ndcg@10_other']:.4f}, "
                f"by test week {res['ndcg@10_by_week']}")
            append_json(out_json, res)
            del model
            keras.backend.clear_session()
    return results


def extra_columns_main(doc: str, extra_fn, variants: dict, default_cache: str) -> int:
    """Command line of a one-window extra-column experiment (``--seeds``, ``--cache``, ``--skip-prep``, ``--out``):
    :func:`prep` window 0 and the test lists with ``extra_fn``, then :func:`run` ``base`` and ``variants``
    ({name: extra column indices}) on each seed."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--cache", default=default_cache)
    ap.add_argument("--skip-prep", action="store_true", help="the cache is already built")
    ap.add_argument("--out", default=None, help="append one JSON line per result")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if not args.skip_prep:
        prep(cache, windows=(0,), extra_fn=extra_fn)
    VARIANTS.update({name: ((0,), cols) for name, cols in variants.items()})
    run(cache, ["base", *variants], [int(s) for s in args.seeds.split(",")], out_json=args.out)
    log("done")
    return 0


def setup_light():
    """Products, index, vocab and table (the run phase needs only the vocabulary),
    and the (n_queries,) datetime64 times of the protocol's test queries (for the per-week rows)."""
    lines, products = completejourney_frames()
    L = prepare_lines(lines)
    P = prepare_products(products, L)
    train, test = temporal_split(L, SPLIT)
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    vocab = ProductVocab.fit(P, pidx)
    table = ProductTable.build(P, pidx, vocab)
    q = build_queries(test, pidx, sample_baskets=3000, seed=0)
    qtimes = bt.basket_times(test, q.basket_ids)[q.query_basket]
    return None, None, P, pidx, vocab, table, qtimes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("prep", "run"), required=True)
    ap.add_argument("--cache", default="/tmp/anon_cache")
    ap.add_argument("--variants", default="base,roll2,roll3,base+season,roll3+season")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--windows", default="0,1,2", help="prep: label windows to build (keys of WINDOWS)")
    ap.add_argument("--no-test", action="store_true", help="prep: skip the test lists (already cached)")
    ap.add_argument("--out", default=None, help="append one JSON line per result")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.phase == "prep":
        prep(cache, [int(w) if w.isdigit() else w for w in args.windows.split(",")], test_lists=not args.no_test)
    else:
        run(cache, args.variants.split(","), [int(s) for s in args.seeds.split(",")], out_json=args.out)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
