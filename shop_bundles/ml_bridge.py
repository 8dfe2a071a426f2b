"""The one seam between the database and ``bundling_ml``.

In: querysets → the standard pandas frames of ``docs/contracts.md``
(``lines_frame``, ``products_frame``). Out: the scoring frame →
unsaved ``BundleSuggestion`` rows (``suggestions_from_frame``).

Reading is built for the full Complete Journey history (about 1.4 M order
lines, 155 k baskets):

* orders (one row per basket) and order lines are read separately and joined
  in numpy by integer id, so the big query returns only integers and floats;
* on PostgreSQL with psycopg2 each query is streamed with
  ``COPY (SELECT ...) TO STDOUT WITH CSV`` straight into ``pandas.read_csv``
  (no Python object per row); elsewhere (SQLite demo) rows are fetched with
  ``values_list(...).iterator(chunk_size=...)``;
* ``unit_price`` is cast to double precision in SQL, so no ``Decimal`` object
  is built per line.

This module never imports TensorFlow (nor ``bundling_ml``): it only moves data.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
from django.db import connections
from django.db.models import FloatField, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone

from . import app_settings
from .models import BundleSuggestion, Order, OrderLine, Product, Promotion

logger = logging.getLogger(__name__)

LINE_COLUMNS = ["basket_id", "product_id", "customer_id", "time", "quantity", "price", "store_id"]
PRODUCT_COLUMNS = ["product_id", "name", "department", "category", "product_type", "brand", "price"]
CHUNK_SIZE = 50_000


# --------------------------------------------------------------------------- fetching


def _copy_supported(qs: QuerySet) -> bool:
    """True when ``qs`` runs on PostgreSQL through a driver with ``copy_expert`` (psycopg2)."""
    connection = connections[qs.db]
    if connection.vendor != "postgresql":
        return False
    try:
        import psycopg2  # noqa: F401
    except ImportError:  # pragma: no cover - psycopg 3 installs take the generic path
        return False
    return True


def _fetch(qs: QuerySet, fields: list, names: list[str], text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Run ``qs.values_list(*fields)`` and return a DataFrame with columns ``names``.

    Args:
        qs: the queryset to read.
        fields: field names or expressions for ``values_list``.
        names: the frame's column names, one per field.
        text_columns: columns kept as text exactly as stored ("007" stays "007");
            SQL NULL becomes NaN, an empty string stays "".

    Returns:
        DataFrame with one row per database row. Numeric columns are parsed by
        pandas (PostgreSQL path) or built from Python values (fallback);
        timestamps are left as returned (text or datetime) for the caller.
    """
    text_columns = set(text_columns)
    values_qs = qs.values_list(*fields)
    if _copy_supported(qs):
        connection = connections[qs.db]
        sql, params = values_qs.query.sql_with_params()
        buffer = io.StringIO()
        connection.ensure_connection()
        with connection.cursor() as cursor:
            raw = cursor.cursor
            literal = raw.mogrify(sql, params).decode()
            raw.copy_expert(f"COPY ({literal}) TO STDOUT WITH (FORMAT csv, NULL '\\N')", buffer)
        buffer.seek(0)
        if buffer.getvalue() == "":
            return pd.DataFrame({name: pd.Series(dtype=object) for name in names})
        dtype = {name: str for name in text_columns}
        return pd.read_csv(buffer, header=None, names=names, dtype=dtype, na_values=["\\N"],
                           keep_default_na=False, low_memory=False)
    chunks: list[list[tuple]] = []
    chunk: list[tuple] = []
    for row in values_qs.iterator(chunk_size=CHUNK_SIZE):
        chunk.append(row)
        if len(chunk) >= CHUNK_SIZE:
            chunks.append(chunk)
            chunk = []
    chunks.append(chunk)
    rows = [row for part in chunks for row in part]
    return pd.DataFrame.from_records(rows, columns=names) if rows else pd.DataFrame(
        {name: pd.Series(dtype=object) for name in names})


def _to_naive_local(values: pd.Series) -> pd.Series:
    """Timestamps (aware datetimes or ISO text with offset) → datetime64[ns], naive, shop local time.

    "Shop local time" is ``settings.TIME_ZONE`` (``timezone.get_default_timezone()``).
    """
    stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    local = stamps.dt.tz_convert(timezone.get_default_timezone()).dt.tz_localize(None)
    return local.astype("datetime64[ns]")


# --------------------------------------------------------------------------- frames in


def lines_frame(orders: QuerySet | None = None, *, since: datetime | None = None,
                until: datetime | None = None) -> pd.DataFrame:
    """Read order lines into the standard "lines" frame of ``docs/contracts.md``.

    Args:
        orders: which orders to read (default: imported and storefront orders; simulated
            replay orders, ``Order.source == "simulated"``, are never training data).
        since: keep orders placed at or after this aware datetime.
        until: keep orders placed before this aware datetime (default:
            ``SHOP_BUNDLES_HISTORY_UNTIL`` when set, for out-of-sample replays).

    Returns:
        DataFrame, one row per order line, sorted by basket time (lines of one basket together):

        ============ ============================= ======================================
        column       dtype                         source
        ============ ============================= ======================================
        basket_id    str                           ``Order.external_id``
        product_id   str                           ``Product.sku``
        customer_id  "string", <NA> for guests     ``Customer.external_id``
        time         datetime64[ns], naive, local  ``Order.placed_at`` in TIME_ZONE
        quantity     float64                       ``OrderLine.quantity``
        price        float64                       ``OrderLine.unit_price`` (shelf price)
        store_id     "string", <NA> when blank     ``Order.store_id`` (store, branch or channel)
        ============ ============================= ======================================

        No row is dropped here (protocol step 1 is ``bundling_ml.data.prepare_lines``).
    """
    orders_qs = Order.objects.exclude(source=Order.SOURCE_SIMULATED) if orders is None else orders
    if until is None:
        until = app_settings.history_until()
    if since is not None:
        orders_qs = orders_qs.filter(placed_at__gte=since)
    if until is not None:
        orders_qs = orders_qs.filter(placed_at__lt=until)
    orders_qs = orders_qs.order_by()

    order_frame = _fetch(orders_qs, ["id", "external_id", "customer__external_id", "placed_at", "store_id"],
                         ["order_pk", "basket_id", "customer_id", "placed_at", "store_id"],
                         text_columns=("basket_id", "customer_id", "placed_at", "store_id"))
    if order_frame.empty:
        return empty_lines_frame()

    line_qs = OrderLine.objects.using(orders_qs.db).order_by()
    if orders is not None:
        line_qs = line_qs.filter(order__in=orders_qs.values("pk"))
    else:
        line_qs = line_qs.exclude(order__source=Order.SOURCE_SIMULATED)
        if since is not None:
            line_qs = line_qs.filter(order__placed_at__gte=since)
        if until is not None:
            line_qs = line_qs.filter(order__placed_at__lt=until)
    line_frame = _fetch(line_qs, ["order_id", "product_id", "quantity",
                                  Cast("unit_price", output_field=FloatField())],
                        ["order_pk", "product_pk", "quantity", "price"])
    sku_frame = _fetch(Product.objects.using(orders_qs.db).order_by(), ["id", "sku"], ["product_pk", "sku"],
                       text_columns=("sku",))

    order_index = pd.Index(order_frame["order_pk"].astype("int64"))
    order_pos = order_index.get_indexer(line_frame["order_pk"].astype("int64"))
    keep = order_pos >= 0
    order_pos = order_pos[keep]
    line_frame = line_frame.loc[keep]
    product_index = pd.Index(sku_frame["product_pk"].astype("int64"))
    product_pos = product_index.get_indexer(line_frame["product_pk"].astype("int64"))

    # Sort on integers (basket time, then basket row) before any string column is built.
    times = _to_naive_local(order_frame["placed_at"]).to_numpy()
    order_rank = np.argsort(np.argsort(times, kind="stable"), kind="stable")
    sort = np.argsort(order_rank[order_pos], kind="stable")
    order_pos, product_pos = order_pos[sort], product_pos[sort]
    frame = pd.DataFrame({
        "basket_id": order_frame["basket_id"].astype(str).to_numpy()[order_pos],
        "product_id": sku_frame["sku"].astype(str).to_numpy()[product_pos],
        "customer_id": pd.array(order_frame["customer_id"].to_numpy(dtype=object)[order_pos], dtype="string"),
        "time": times[order_pos],
        "quantity": line_frame["quantity"].to_numpy(dtype="float64")[sort],
        "price": line_frame["price"].to_numpy(dtype="float64")[sort],
        "store_id": pd.array(order_frame["store_id"].to_numpy(dtype=object)[order_pos], dtype="string"),
    })
    frame["store_id"] = frame["store_id"].str.strip().replace("", pd.NA)
    frame["basket_id"] = frame["basket_id"].astype(str)
    frame["product_id"] = frame["product_id"].astype(str)
    frame["time"] = frame["time"].astype("datetime64[ns]")
    return frame


def empty_lines_frame() -> pd.DataFrame:
    """An empty "lines" frame with the contract's columns and dtypes."""
    return pd.DataFrame({
        "basket_id": pd.Series(dtype=str),
        "product_id": pd.Series(dtype=str),
        "customer_id": pd.Series(dtype="string"),
        "time": pd.Series(dtype="datetime64[ns]"),
        "quantity": pd.Series(dtype="float64"),
        "price": pd.Series(dtype="float64"),
        "store_id": pd.Series(dtype="string"),
    })


def products_frame(products: QuerySet | None = None) -> pd.DataFrame:
    """Read the catalogue into the standard "products" frame.

    Args:
        products: which products (default: all, active or not: history needs them all).

    Returns:
        DataFrame with product_id (str, the SKU), name (the display name:
        scoring never bundles two products of the same name), department,
        category, product_type, brand (str, "" when unknown) and price
        (float64, shelf price).
    """
    qs = (Product.objects.all() if products is None else products).order_by()
    frame = _fetch(qs, ["sku", "name", "department", "category", "product_type", "brand",
                        Cast("price", output_field=FloatField())], PRODUCT_COLUMNS,
                   text_columns=("product_id", "name", "department", "category", "product_type", "brand"))
    for column in ("product_id", "name", "department", "category", "product_type", "brand"):
        frame[column] = frame[column].fillna("").astype(str)
    frame["price"] = frame["price"].astype("float64")
    return frame.reset_index(drop=True)


def promotions_frame(promotions: QuerySet | None = None) -> pd.DataFrame:
    """Read weekly promotions into the frame ``bundling_ml.pipeline.train_model`` takes.

    Returns:
        DataFrame product_id (str, the SKU), week_start (datetime64[ns], first
        day of the week), display, mailer (float64: number of stores with the
        product on display / in the mailer that week). Rows without a
        ``week_start`` are left out. Empty when the shop has no promotions.
    """
    qs = (Promotion.objects.all() if promotions is None else promotions).filter(week_start__isnull=False).order_by()
    frame = _fetch(qs, ["product__sku", "week_start", Cast("display_stores", output_field=FloatField()),
                        Cast("mailer_stores", output_field=FloatField())],
                   ["product_id", "week_start", "display", "mailer"], text_columns=("product_id",))
    frame["product_id"] = frame["product_id"].astype(str)
    frame["week_start"] = pd.to_datetime(frame["week_start"]).astype("datetime64[ns]")
    for column in ("display", "mailer"):
        frame[column] = frame[column].astype("float64")
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------- results out


def signature_of(skus: Iterable[str]) -> str:
    """The canonical key of an item set: sorted SKUs joined with ``+``."""
    return "+".join(sorted(str(s) for s in skus))


def _percent(value) -> Decimal:
    """A float percentage → Decimal with 2 places (half-up), clamped to [0, 100]."""
    number = Decimal(str(float(value))) if value is not None and not pd.isna(value) else Decimal("0")
    number = min(max(number, Decimal("0")), Decimal("100"))
    return number.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _finite(value, default: float = 0.0) -> float:
    """Float of ``value``, or ``default`` when missing or not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def suggestions_from_frame(frame: pd.DataFrame, *, model_version, products_by_sku: dict[str, Product],
                           now: datetime | None = None) -> list[tuple[BundleSuggestion, list[Product]]]:
    """Turn ``bundling_ml.pipeline.score_bundles`` output into unsaved suggestions.

    Args:
        frame: the scoring frame (anchor, items, score, co_purchase_count,
            support, confidence, lift, expected_attach_rate,
            suggested_discount_percent, reasons), best first; with
            ``store_ids`` / ``store_evidence`` columns
            (``store_specific_bundles``) the suggestions are store-specific.
        model_version: the ``ModelVersion`` that scored them.
        products_by_sku: ``Product`` rows by SKU; an item set with a SKU that is
            not in it (deleted product) is dropped.
        now: creation time (default ``timezone.now()``).

    Returns:
        ``[(BundleSuggestion, [anchor, companion, ...]), ...]`` in the frame's
        order, status pending, ``signature`` = sorted SKUs joined with ``+``;
        each signature at most once.
    """
    now = now or timezone.now()
    out: list[tuple[BundleSuggestion, list[Product]]] = []
    seen: set[str] = set()
    for row in frame.itertuples(index=False):
        skus = [str(s) for s in row.items]
        if len(skus) < 2 or len(set(skus)) != len(skus):
            continue
        products = [products_by_sku.get(sku) for sku in skus]
        if any(p is None for p in products):
            continue
        signature = signature_of(skus)
        if signature in seen:
            continue
        seen.add(signature)
        suggestion = BundleSuggestion(
            status=BundleSuggestion.PENDING,
            anchor=products[0],
            signature=signature,
            score=_finite(row.score),
            co_purchase_count=int(_finite(row.co_purchase_count)),
            support=_finite(row.support),
            confidence=_finite(row.confidence),
            lift=_finite(row.lift),
            expected_attach_rate=_finite(row.expected_attach_rate),
            suggested_discount_percent=_percent(row.suggested_discount_percent),
            reasons=str(row.reasons or ""),
            model_version=model_version,
            created_at=now,
            store_ids=[str(s) for s in getattr(row, "store_ids", ())],
            store_evidence=list(getattr(row, "store_evidence", []) or []),
        )
        out.append((suggestion, products))
    return out


def data_window(lines: pd.DataFrame) -> tuple[datetime | None, datetime | None]:
    """First and last basket time of a lines frame as aware datetimes (shop time zone), or (None, None)."""
    if lines.empty:
        return None, None
    tz = timezone.get_default_timezone()
    first, last = lines["time"].min(), lines["time"].max()
    return (timezone.make_aware(first.to_pydatetime(), tz), timezone.make_aware(last.to_pydatetime(), tz))
