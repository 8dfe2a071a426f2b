"""Command line: ``python -m bundling_ml backtest|recommend|score ...``.

Data options (backtest and recommend)::

    --preset completejourney
    --orders FILE [--products FILE] --columns basket=COL,product=COL,time=COL[,customer=COL,quantity=COL,price=COL,name=COL,store=COL]
        [--encoding cp1252] [--delimiter ';'] [--decimal ','] [--date-format '%d/%m/%Y %H:%M']

``store=COL`` (optional) maps the order's store, branch or channel: the
ranker then learns store-conditional co-purchase features, and a query that
carries ``store_id`` is ranked for that store. A raw export given with ``--orders`` is always read with ``bundling_ml.ingest``
(``read_orders_csv``: the Django import's cleaning rules: dates, rejected
rows, cancellations, adjustments, non-product codes, guest orders); without
quantity and price columns every line counts one unit at an unknown price.
``--products`` is a CSV with a product_id column and any of department,
category, product_type (or type), brand, price, name.

Examples::

    python -m bundling_ml backtest --preset completejourney --split-date 2017-10-30 --sample-baskets 3000
    python -m bundling_ml recommend --preset completejourney --train-until 2017-10-30 --queries q.csv --k 10 --out recs.csv
    python -m bundling_ml score --preset completejourney --artifact-dir var/model --out bundles.csv

``backtest`` trains on the lines before --split-date, runs the offline
evaluation protocol on the rest and prints the tables (anonymous, known
shopper, cold-start anchors): system, HR@10, NDCG@10, queries, seconds.
``recommend`` trains on the lines before --train-until and writes, for every
query (query_id, product_id[, customer_id, time, store_id]), up to k
companions (query_id, rank, product_id, score); never the anchor; ids are
text. An anchor bought in training is ranked by the model (score = the
ranker's logit; with too little history to train, by co-purchase count, and
the score is that count); an anchor never bought in training (a new product,
a non-product code, a fully cancelled one) gets the recently popular products
of its category (when --products gives one), else overall, with score 0.0.
``--delimiter``, ``--decimal`` and ``--date-format`` read exports as the
Django import does.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

PRESETS = ("completejourney",)
#: the most companions ``recommend --k`` returns per query
MAX_K = 1000


def _load_preset(preset: str):
    from bundling_ml.data import completejourney_frames

    if preset == "completejourney":
        return completejourney_frames()
    raise SystemExit(f"unknown preset {preset!r}; choose from {PRESETS}")


def _read_products(path):
    import pandas as pd

    p = pd.read_csv(path, dtype=str, keep_default_na=False)
    p = p.rename(columns={c: c.strip().lower() for c in p.columns})
    if "product_id" not in p.columns:
        raise SystemExit(f"{path}: needs a product_id column")
    if "product_type" not in p.columns and "type" in p.columns:
        p = p.rename(columns={"type": "product_type"})
    if "product_category" in p.columns and "category" not in p.columns:
        p = p.rename(columns={"product_category": "category"})
    return p


def load_orders(path, columns: str, products_path=None, encoding: str = "utf-8", *, delimiter: str = ",",
                decimal: str = ".", date_format: str | None = None):
    """(lines, products) frames from a retailer CSV (see the module docstring).

    Always read with :func:`bundling_ml.ingest.read_orders_csv`, the Django
    import's rules (dates with day/month order inferred and refused when
    undecidable, rejected rows reported and skipped, duplicates, non-product
    codes, cancellations, adjustments); without quantity and price columns
    every line counts one unit at an unknown price (``require_amounts=False``).
    A file that is not text in ``encoding`` is refused, as the import
    refuses it (no silent fallback to another encoding): pass the export's
    encoding, e.g. ``"cp1252"`` for Windows exports. ``delimiter``, ``decimal`` and ``date_format`` are passed to
    ``read_orders_csv`` (the Django import's ``--delimiter``, ``--decimal``
    and ``--date-format``, which its error messages name). Rejected rows are
    printed to stderr with their line, field and reason; the good rows are kept.
    Orders whose lines span more than an hour are counted on stderr with a
    few examples, as in the import report (:func:`bundling_ml.ingest.basket_time_spread`).

    Returns:
        ``(lines, products)`` pandas frames (``docs/contracts.md``).

    Raises:
        SystemExit: the file is refused as a whole (the message of
            :class:`bundling_ml.ingest.IngestError`, e.g. "orders.csv is not text in
            encoding 'utf-8' (byte 0xa3 cannot be decoded); pass --encoding, e.g.
            cp1252 for Windows exports"), no line of it is usable (:func:`no_lines_message`,
            e.g. "orders.csv: no order line was imported: 13 of 13 lines were rejected; ..."),
            or ``columns`` lacks basket, product or time.
    """
    from bundling_ml import ingest

    mapping = {}
    for part in str(columns).split(","):
        if part.strip():
            k, _, v = part.partition("=")
            mapping[k.strip()] = v.strip()
    for need in ("basket", "product", "time"):
        if not mapping.get(need):
            raise SystemExit(f"--columns needs {need}=COL")
    options = dict(mapping=mapping, require_amounts=False, delimiter=delimiter, decimal=decimal, date_format=date_format)
    try:
        res = ingest.read_orders_csv(path, encoding=encoding, **options)
    except ingest.IngestError as exc:
        raise SystemExit(str(exc)) from exc
    for r in res.report.rejections[:20]:
        print(f"{path}: line {r.line}: {r.field}: {r.reason} (row skipped)", file=sys.stderr)
    if len(res.report.rejections) > 20:
        print(f"{path}: ... {len(res.report.rejections) - 20} more rejected rows", file=sys.stderr)
    notes = res.report.notes
    for text in ingest.time_spread_lines(notes.get("time_spread")) + ingest.skipped_lines_text(  # the import report's lines
            notes.get("skipped_lines"), res.report.skipped_reasons):
        print(f"{path}: {text.strip()}", file=sys.stderr)
    if res.report.imported == 0:  # said here, not later as "no order lines before --train-until"
        raise SystemExit(f"{path}: {no_lines_message(res.report)}")
    lines, products = res.lines, res.products
    if products_path:
        extra = _read_products(products_path)
        products = extra.merge(products[["product_id"]], how="outer", on="product_id")
    return lines, products


def no_lines_message(report) -> str:
    """Why an export gave no order line, from its :class:`bundling_ml.ingest.ImportReport`.

    Worded as ``manage.py import_orders`` says it ("no order line was imported:
    12 of 13 lines were rejected"), then the most common rejection: the file
    column most rejected lines name (lines rejected only because another line
    of their order was are left out of this count when there are others), with
    its count and first line, e.g. ``most often InvoiceDate (12 lines), e.g. line 2: date
    '2011-01-04 09:10:00' does not match '%Y'``. Skipped lines (cancellations,
    adjustments, non-product codes, ...) are counted by reason.
    """
    from collections import Counter

    parts = []
    if report.rejected:
        parts.append(f"{report.rejected:,} of {report.read:,} lines were rejected")
    if report.skipped:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(report.skipped_reasons.items()))
        parts.append(f"{report.skipped:,} of {report.read:,} lines were skipped ({reasons})")
    text = "no order line was imported: " + (", ".join(parts) or f"none of the {report.read:,} lines was kept")
    if report.rejections:
        own = [r for r in report.rejections if " has a rejected line" not in r.reason] or report.rejections
        field, n = Counter(r.field for r in own).most_common(1)[0]
        first = next(r for r in own if r.field == field)
        text += f"; most often {field} ({n:,} lines), e.g. line {first.line}: {first.reason}"
    return text


def _data(args):
    """(lines, products, promotions or None) of the data options."""
    if args.preset:
        from bundling_ml.data import completejourney_promotions

        return (*_load_preset(args.preset), completejourney_promotions())
    if not args.orders or not args.columns:
        raise SystemExit("give --preset or --orders FILE --columns basket=COL,product=COL,time=COL")
    return (*load_orders(args.orders, args.columns, args.products, args.encoding, delimiter=args.delimiter,
                         decimal=args.decimal, date_format=args.date_format), None)


def int_option(low: int, high: int | None = None, hint: str = ""):
    """argparse ``type=`` for a whole number from ``low`` (to ``high``); ``hint`` explains ``low``.

    A bad value is refused by argparse before anything is read, with the option
    named: "argument --epochs: must be at least 1, not 0". Also used by the
    shop's management commands (standard library only, no data imports).

    Returns:
        ``parse(text) -> int``, raising ``argparse.ArgumentTypeError`` for text that is not a
        whole number or is out of range.
    """
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}") from None
        if n < low or (high is not None and n > high):
            bounds = f"at least {low}{hint}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {n}")
        return n

    return parse


def iso_date(value: str) -> "dt.date":
    """argparse ``type=`` for a calendar date written YYYY-MM-DD.

    Refused by argparse with the option named, no traceback: "argument
    --split-date: must be a date YYYY-MM-DD, not 'tomorrow'", or "'2017-02-30'
    is not a date (day is out of range for month)". Also used by the shop's
    management commands.

    Returns:
        ``datetime.date``.
    """
    import datetime as dt
    import re

    text = str(value).strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, not {value!r}")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:  # e.g. 2017-02-30: "day is out of range for month"
        raise argparse.ArgumentTypeError(f"{value!r} is not a date ({exc})") from None


def _add_data_options(p):
    p.add_argument("--preset", choices=PRESETS)
    p.add_argument("--orders", help="order-lines CSV")
    p.add_argument("--products", help="products CSV: product_id + attribute columns")
    p.add_argument("--columns", help="basket=COL,product=COL,time=COL[,customer=COL,quantity=COL,price=COL,name=COL,store=COL]")
    p.add_argument("--encoding", default="utf-8", help="text encoding of --orders, e.g. cp1252 (default utf-8; a file that is not "
                   "text in it is refused, as by manage.py import_orders)")
    p.add_argument("--delimiter", default=",", help="field separator of --orders (e.g. ';'; '\\t' for tab)")
    p.add_argument("--decimal", default=".", choices=(".", ","), help="decimal mark of --orders (',' = decimal comma)")
    p.add_argument("--date-format", default=None,
                   help="strptime format of the time column, e.g. '%%d/%%m/%%Y %%H:%%M' (default: inferred, refused when ambiguous)")
    p.add_argument("--seed", type=int_option(0, 2**32 - 1), default=0, help="random seed, 0 to 2**32-1 (default 0)")
    p.add_argument("--epochs", type=int_option(1), default=2, help="training epochs per ranker, at least 1 (default 2)")
    p.add_argument("--exclude-department", action="append", default=[], help="repeatable, e.g. FUEL")


def print_tables(m: dict, total_seconds: float | None = None, out=sys.stdout) -> None:
    """Print the anonymous, known-shopper and cold-start tables of a backtest.

    ``m`` is ``TrainResult.metrics``, optionally with ``train_products`` (the
    training catalogue's size): with 11 or fewer products a warning says the
    metrics mean nothing. The known-shopper and cold-start tables are left out when they have no query.
    """
    from bundling_ml.evaluation import metrics_table

    tail = f", total {total_seconds:.0f} s" if total_seconds is not None else ""
    print(f"split {m['split_date']}, {m['baskets']} test baskets, {m['queries']} queries{tail}", file=out)
    n_products = m.get("train_products")
    if n_products is not None and n_products <= 11:  # the anchor + 10 companions: every list holds everything
        print(f"WARNING: only {n_products} products in training: 10 companions cover the whole catalogue, so "
              "HR@10 and NDCG@10 say nothing about the ranking; use more data.", file=out)
    print("\nAnonymous shopper (product page):", file=out)
    print(metrics_table(m["rows"]), file=out)
    if m.get("shopper_rows") and any(r.get("queries") for r in m["shopper_rows"]):  # none: no customer ids
        print("\nKnown shopper (query carries the customer id; queries of known customers):", file=out)
        print(metrics_table(m["shopper_rows"]), file=out)
    if m.get("cold_rows") and m.get("cold_queries", 0):
        print(f"\nCold-start anchors (< 5 training baskets; {m.get('cold_queries', 0)} queries):", file=out)
        print(metrics_table(m["cold_rows"]), file=out)


def recommend(lines, products, *, train_until, queries, k: int = 10, seed: int = 0, epochs: int = 2, excluded_departments=(), progress=None, promotions=None):
    """Train on lines before ``train_until`` and recommend ``k`` companions per query.

    Args:
        lines, products: raw frames (``docs/contracts.md``).
        queries: frame with query_id, product_id and optionally customer_id
            (text) and time (the query's date and time, e.g. "2017-11-03
            18:20"; empty = unknown).
        promotions: optional weekly promotions; the week of the query's time
            (without a time: the week starting at ``train_until``) is used as
            the query week. The query's time also gives the time-of-day and
            weekday features; without it they are neutral (0). An optional
            ``store_id`` column (text, empty = unknown) ranks the query for
            that store when the lines carry ``store_id`` (store features of
            ``bundling_ml.ranking.pair_features``); an unknown store is ranked
            without store context.

    Returns:
        DataFrame query_id, rank (1..k), product_id, score (str ids). Queries
        whose anchor is not a training product get companions from its
        category (most recently popular products) when the products frame
        knows its category, else from recent popularity (score 0.0). With
        too little history to train (no label weeks), candidates are ranked
        by their co-purchase count with the anchor, and the score is that
        count (baskets in the training lines holding both).

    Raises:
        SystemExit: no line is left after ``excluded_departments``, or every line is on or after
            ``train_until`` (the message gives the lines' first and last day).
    """
    import numpy as np
    import pandas as pd

    from bundling_ml import backtest as bt
    from bundling_ml import ranking as rk
    from bundling_ml.data import exclude_departments, prepare_lines, prepare_products, temporal_split
    from bundling_ml.features import ProductTable, ProductVocab

    q = queries.astype(str)
    qtimes = None
    if "time" in q.columns:  # checked before training: a bad query file fails fast
        raw_t = q["time"].str.strip()
        parsed = pd.to_datetime(raw_t.mask(raw_t == ""), errors="coerce")
        bad = parsed.isna() & (raw_t != "")
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"queries row {r + 1}: field time: cannot parse {q['time'].iat[r]!r} as a date/time")
        qtimes = parsed.to_numpy()
    L = prepare_lines(lines)
    P = prepare_products(products, L)
    L = exclude_departments(L, P, excluded_departments)
    if L.empty:
        excluded = f" after --exclude-department {', '.join(excluded_departments)}" if excluded_departments else ""
        raise SystemExit(f"no order lines left to train on{excluded}")
    split = pd.Timestamp(train_until)
    train, _ = temporal_split(L, split)
    if train.empty:  # lines were read, all of them on or after the day
        raise SystemExit(f"no order lines before {split.date()} (--train-until): the {len(L):,} order lines read are "
                         f"from {L['time'].min().date()} to {L['time'].max().date()}")
    pidx = pd.Index(np.sort(train["product_id"].unique()))
    vocab = ProductVocab.fit(P, pidx)
    table = ProductTable.build(P, pidx, vocab)
    weeks = max(1, int(np.ceil((split - train["time"].min().normalize()).days / 7)))
    try:
        rankers = bt.fit_rankers(train, P, pidx, vocab, table, split, label_weeks=int(np.clip(round(0.1 * weeks), 1, 4)), seed=seed, epochs=epochs,
                                 progress=progress, promotions=promotions)
    except ValueError as exc:  # too little history to train: rank candidates by co-purchase count
        logging.getLogger("bundling_ml").warning("no model trained (%s); ranking by co-purchase count", exc)
        rankers = None
    ctx = rk.attach_promotions(rk.build_context(train, pidx, table, P, end=split), promotions)
    if qtimes is not None:
        qweeks = rk.week_index(ctx, np.where(pd.isna(qtimes), split.to_datetime64(), qtimes))
    else:
        qweeks = np.full(len(q), rk.week_index(ctx, [split])[0])
    qstores = rk.store_index(ctx, q["store_id"]) if "store_id" in q.columns else None
    qa = pidx.get_indexer(q["product_id"].str.strip())
    users = rk.user_index(ctx, q["customer_id"].str.strip() if "customer_id" in q.columns else [None] * len(q))
    known = qa >= 0
    uniq, inv = np.unique(qa[known], return_inverse=True)
    J = rk.decayed_jaccard_matrix(ctx)
    cand_u = rk.anchor_candidates(ctx, uniq, bt.M_TEST, J=J)
    top = np.full((len(q), k), -1, np.int64)
    sc = np.full((len(q), k), np.nan)
    if len(uniq):
        if rankers is None:  # no model: the co-purchase count with the anchor is the score (ties: list order)
            s_u = np.zeros(cand_u.shape, np.float32)
            has = cand_u >= 0
            s_u[has] = ctx.S.count(np.repeat(uniq, cand_u.shape[1])[has.ravel()], cand_u[has])
        else:
            s_u = None
        if s_u is not None or (qtimes is None and qstores is None):
            if s_u is None:
                s_u = rk.predict_lists(rankers.anon, ctx, uniq, cand_u, None, rankers.anon_cols, weeks=np.full(len(uniq), qweeks[0]))
            t, s = rk.top_k(cand_u, s_u, k)
            top[known], sc[known] = t[inv], s[inv]
        else:  # per-query time / store: score each distinct (anchor, week, time slot, store) once
            kq = np.flatnonzero(known)
            slot = np.full(len(kq), -1, np.int64) if qtimes is None else rk.time_slots(qtimes[kq])
            st = np.full(len(kq), -1, np.int64) if qstores is None else qstores[kq]
            _, first, back = np.unique(np.stack([qa[kq], qweeks[kq], slot, st], 1), axis=0, return_index=True, return_inverse=True)
            back = back.ravel()
            f = kq[first]
            lists = cand_u[inv[first]]
            s_q = rk.predict_lists(rankers.anon, ctx, qa[f], lists, None, rankers.anon_cols, weeks=qweeks[f],
                                   times=None if qtimes is None else qtimes[f], stores=None if qstores is None else qstores[f])
            t, s = rk.top_k(lists, s_q, k)
            top[kq], sc[kq] = t[back], s[back]
        shop = np.flatnonzero(known & (users >= 0))
        if len(shop) and rankers is not None and rankers.shopper is not None:
            row = inv[np.searchsorted(np.flatnonzero(known), shop)]
            cs = rk.shopper_candidates(ctx, qa[shop], users[shop], cand_u, row, bt.M_TEST + 20)
            ss = rk.predict_lists(rankers.shopper, ctx, qa[shop], cs, users[shop], rankers.shopper_cols, weeks=qweeks[shop],
                                  times=None if qtimes is None else qtimes[shop], stores=None if qstores is None else qstores[shop])
            t, s = rk.top_k(cs, ss, k)
            top[shop], sc[shop] = t, s
    # unknown anchors: products of the same category, most recently popular first
    pcat = P.set_index("product_id")["category"]
    rec = ctx.rec_order
    rec_cat = pcat.reindex(pidx[rec]).fillna("").to_numpy()
    for r in np.flatnonzero(~known):
        c = pcat.get(q["product_id"].iat[r].strip(), "")
        pool = rec[rec_cat == c][:k] if c else rec[:0]
        pool = np.concatenate([pool, rec[: 2 * k]])
        _, first = np.unique(pool, return_index=True)
        pool = pool[np.sort(first)][:k]
        top[r, : len(pool)] = pool
        sc[r, : len(pool)] = 0.0
    out = []
    ids = pidx.to_numpy()
    for r in range(len(q)):
        rank = 0
        for j in range(k):
            if top[r, j] >= 0 and ids[top[r, j]] != q["product_id"].iat[r].strip():
                rank += 1
                out.append((q["query_id"].iat[r], rank, str(ids[top[r, j]]), float(sc[r, j])))
    return pd.DataFrame(out, columns=["query_id", "rank", "product_id", "score"])


def main(argv=None) -> int:
    """Run the CLI; returns the process exit code: 0 on success, 2 for refused input or usage (the message,
    naming the file, line, field and reason, goes to stderr)."""
    ap = argparse.ArgumentParser(prog="python -m bundling_ml", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backtest", help="train, backtest and print the protocol tables",
                       description="Train on the lines before --split-date, run the offline evaluation protocol "
                                   "(ARCHITECTURE.md) on the rest and print the anonymous, known-shopper and cold-start "
                                   "tables: system, HR@10, NDCG@10, queries, seconds. Data options as in "
                                   "`python -m bundling_ml --help`.")
    _add_data_options(b)
    b.add_argument("--split-date", type=iso_date, default=None,
                   help="first test day, YYYY-MM-DD (default: last ~20%% of weeks)")
    b.add_argument("--sample-baskets", type=int_option(0, hint=" (0 = all test baskets)"), default=3000,
                   help="fixed random sample of test baskets (seed --seed); 0 = all")
    b.add_argument("--out-dir", default=None, help="artifact directory (default: a temporary directory)")
    r = sub.add_parser("recommend", help="train before --train-until and write k companions per query",
                       description="Train on the lines before --train-until and write, for every query of QUERIES.csv "
                                   "(query_id, product_id[, customer_id, time, store_id]), up to --k companions as CSV "
                                   "(query_id, rank, product_id, score); never the anchor; ids are text. Data options "
                                   "and the scoring rules: `python -m bundling_ml --help`.")
    _add_data_options(r)
    r.add_argument("--train-until", type=iso_date, required=True, help="YYYY-MM-DD: train on lines before this day")
    r.add_argument("--queries", required=True, help="CSV: query_id, product_id[, customer_id][, time][, store_id]")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--out", default="-", help="CSV path or - for stdout")
    s = sub.add_parser("score", help="score bundles with a saved model and write CSV",
                       description="Score 2-3 item bundles with a model saved by backtest --out-dir (or the shop's "
                                   "training) and write them with their evidence as CSV.")
    s.add_argument("--preset", choices=PRESETS, required=True)
    s.add_argument("--artifact-dir", required=True)
    s.add_argument("--out", default="-", help="CSV path or - for stdout")
    s.add_argument("--min-anchor-baskets", type=int_option(1), default=20,
                   help="score anchors bought in at least this many baskets (default 20)")
    s.add_argument("--max-bundles", type=int_option(1), default=5000, help="most bundles written (default 5000)")
    s.add_argument("--exclude-department", action="append", default=[])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")

    if args.command == "recommend" and not 1 <= args.k <= MAX_K:
        ap.error(f"--k must be between 1 and {MAX_K}, not {args.k}")
    if args.command != "score" and args.preset:  # the import refuses the same pairs (--csv / --map with --preset)
        if args.orders:
            ap.error("--orders and --preset are two data sources; give one of them, not both")
        for option in ("products", "columns"):
            if getattr(args, option):
                ap.error(f"--{option} is for --orders exports; --preset {args.preset} has its own products and columns")
        for option, default in (("encoding", "utf-8"), ("delimiter", ","), ("decimal", ".")):
            if getattr(args, option) != default:  # it would be ignored: the preset's tables are not a CSV file
                ap.error(f"--{option} is for --orders exports; --preset {args.preset} reads its own tables")
    out = getattr(args, "out", "-")
    if out != "-":  # before training, not after it
        target = Path(out).resolve()
        if target.is_dir():
            ap.error(f"--out {out}: is a directory; give the CSV file's path")
        if not target.parent.is_dir():
            ap.error(f"--out {out}: the directory {str(target.parent)!r} does not exist")
        for option in ("orders", "products", "queries"):
            given = getattr(args, option, None)
            if given and Path(given).resolve() == target:
                ap.error(f"--out {out} is the --{option} file; it would be overwritten. Write the output elsewhere")
    try:
        return _run(args)
    except SystemExit as exc:  # refused input with its message (file, line, field, reason): same exit status as below
        if not isinstance(exc.code, str):
            raise
        print(f"python -m bundling_ml {args.command}: {exc.code}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, OSError) as exc:  # bad input files, columns or paths: say which, no traceback
        import pandas as pd

        kind = "file could not be parsed" if isinstance(exc, pd.errors.ParserError) else type(exc).__name__
        print(f"python -m bundling_ml {args.command}: {kind}: {exc}", file=sys.stderr)
        return 2


def read_queries(path, date_format: str | None = None) -> "pd.DataFrame":
    """Read and check a QUERIES.csv before any data is loaded or model trained.

    Times are read with ``date_format`` (the ``--date-format`` given for the
    orders) when it reads every time, else with the import's rule
    (``ingest.infer_date_format``: one format for the whole column, day-first
    or month-first decided by a value that reads only one way, refused when
    ambiguous), and written back as ISO
    ``YYYY-MM-DD HH:MM:SS`` text so they are never re-guessed.

    Args:
        path: CSV with columns query_id, product_id and optionally customer_id, time, store_id.
        date_format: strptime format of the time column, or None to infer it.

    Returns:
        The queries as a DataFrame of str (empty cells ""; time as ISO text or "").

    Raises:
        SystemExit: with a message naming the file and, per bad value, its line (the header is line 1)
            and field: a missing or unreadable file, missing columns, an empty or repeated query_id,
            an empty product_id, a line with fewer fields than the header, a time that is not a
            date/time in the column's format.
    """
    import csv

    import numpy as np
    import pandas as pd

    from .ingest import IngestError, _parse_dates, infer_date_format

    p = _input_file(path, "queries")
    try:
        queries = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{path}: cannot be read as CSV: {exc}") from exc
    missing = {"query_id", "product_id"} - set(queries.columns)
    if missing:
        raise SystemExit(f"{path}: missing columns {sorted(missing)}")
    with open(p, newline="", encoding="utf-8", errors="replace") as fh:  # pandas fills a short line with ""
        reader = csv.reader(fh)
        width = len(next(reader, []))
        for row in reader:
            if row and len(row) < width:
                raise SystemExit(f"{path}: line {reader.line_num}: has fewer fields than the header ({', '.join(queries.columns)})")
    for field in ("query_id", "product_id"):
        empty = queries[field].str.strip() == ""
        if empty.any():
            r = int(empty.to_numpy().nonzero()[0][0])
            raise SystemExit(f"{path}: line {r + 2}, field {field}: is empty")
    repeated = queries["query_id"].duplicated(keep=False)
    if repeated.any():
        shown = ", ".join(f"{q!r} (lines {', '.join(str(i + 2) for i in idx)})" for q, idx in
                          list(queries.index[repeated].groupby(queries["query_id"][repeated]).items())[:5])
        raise SystemExit(f"{path}: query_id must be unique (one anchor per query); repeated: {shown}")
    if "time" in queries.columns and (queries["time"].str.strip() != "").any():
        raw = queries["time"].str.strip()
        if date_format is not None and np.isnat(_parse_dates(raw[raw != ""].to_numpy(), date_format)).any():
            date_format = None  # the orders' --date-format does not fit the queries: infer theirs
        if date_format is None:
            try:
                date_format, _how = infer_date_format(raw, column="time")
            except IngestError as exc:
                raise SystemExit(f"{path}: {exc}") from exc
        parsed = pd.Series(_parse_dates(raw.to_numpy(), date_format), index=queries.index)
        bad = parsed.isna() & (raw != "")
        if bad.any():
            r = int(bad.to_numpy().nonzero()[0][0])
            raise SystemExit(f"{path}: line {r + 2}, field time: cannot parse {queries['time'].iat[r]!r} as a date/time "
                             f"in the column's format {date_format!r}")
        queries["time"] = parsed.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("")
    return queries




def _input_file(path, option: str) -> Path:
    """``Path(path)`` when it is a file, else SystemExit naming the option, e.g.
    "x.csv: no such file (--products needs a CSV file)"."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"{path}: {'is a directory' if p.is_dir() else 'no such file'} (--{option} needs a CSV file)")
    return p


def _check_inputs(args) -> None:
    """Refuse, before anything is loaded, a missing data source and every input path that is not there:
    --orders, --products, --queries (files) and --artifact-dir (a directory holding a saved model)."""
    from bundling_ml.artifacts import METADATA_FILE, MODEL_FILE

    if args.command == "score":
        d = Path(args.artifact_dir)
        if not d.is_dir():
            raise SystemExit(f"{d}: {'is a file' if d.exists() else 'no such directory'} "
                             "(--artifact-dir needs the model directory written by backtest --out-dir)")
        for name in (MODEL_FILE, METADATA_FILE):
            if not (d / name).is_file():
                raise SystemExit(f"{d}: holds no {name} (--artifact-dir needs the model directory written by "
                                 "backtest --out-dir)")
        return
    if not args.preset and (not args.orders or not args.columns):
        raise SystemExit("give --preset or --orders FILE --columns basket=COL,product=COL,time=COL")
    for option in ("orders", "products", "queries"):
        if getattr(args, option, None):
            _input_file(getattr(args, option), option)


def _run(args) -> int:
    """Body of :func:`main` once the arguments are parsed."""
    import pandas as pd

    from bundling_ml import pipeline

    t0 = time.perf_counter()
    _check_inputs(args)  # every input path, before any of them is read
    if args.command == "backtest":
        lines, products, promotions = _data(args)
        with tempfile.TemporaryDirectory() as tmp:
            res = pipeline.train_model(
                lines, products, out_dir=args.out_dir or f"{tmp}/model", split_date=args.split_date, seed=args.seed,
                excluded_departments=tuple(args.exclude_department), sample_baskets=args.sample_baskets or None, epochs=args.epochs,
                promotions=promotions,
            )
        print_tables({**res.metrics, "train_products": res.metadata["data_window"]["train_products"]},
                     time.perf_counter() - t0)
        return 0
    if args.command == "recommend":
        queries = read_queries(args.queries, args.date_format)  # before the data are loaded and the model trained
        lines, products, promotions = _data(args)
        recs = recommend(lines, products, train_until=args.train_until, queries=queries, k=args.k, seed=args.seed, epochs=args.epochs,
                         excluded_departments=tuple(args.exclude_department), promotions=promotions)
        recs.to_csv(sys.stdout if args.out == "-" else args.out, index=False)
        print(f"{recs['query_id'].nunique()} of {len(queries)} queries answered, {len(recs)} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 0
    lines, products = _load_preset(args.preset)
    df = pipeline.score_bundles(
        args.artifact_dir, lines, products, min_anchor_baskets=args.min_anchor_baskets, max_bundles=args.max_bundles,
        excluded_departments=tuple(args.exclude_department),
    )
    df = df.assign(items=df["items"].map(lambda t: "|".join(t)))
    df.to_csv(sys.stdout if args.out == "-" else args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
