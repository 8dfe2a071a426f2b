"""``POST /bundles/events/``: an external shop front or POS reports events, authenticated by a bearer token.

Authentication: ``Authorization: Bearer <token>`` compared in constant time
(``hmac.compare_digest``) with ``settings.SHOP_BUNDLES_EVENT_TOKEN`` (from the
environment variable of the same name). With no token configured the
endpoint refuses every request (503) and says so. It is ``csrf_exempt``
because callers are servers that authenticate with the token, not browsers
with a session cookie; it never reads the session or the logged-in user.

Body: one JSON object (``Content-Type: application/json``)::

    {"id": "pos-7-000123",            # the caller's event id: a re-sent event is stored once
     "type": "stock_changed",          # or "order_placed", "offer_event"
     "data": {...}}

``data`` per type:

* ``stock_changed``: ``{"sku": str, "stock": int, "price": "12.50", "cost": "7.10" | null,
  "active": bool}``, ``sku`` and at least one of the others. The product row
  is updated and a ``stock_changed`` outbox event written in one transaction;
  the handler pauses or resumes the product's campaigns.
* ``order_placed``: ``{"order_id": str, "placed_at": ISO 8601 (default now), "customer_id": str (optional),
  "lines": [{"sku": str, "quantity": int >= 1, "unit_price": "decimal >= 0"}, ...]}``.
  Creates an ``Order`` (source ``api``; amounts as reported, stock is not
  touched: report it with ``stock_changed``) and an ``order_placed`` outbox
  event in one transaction; the handler records the ``OrderEvent``. Each
  SKU appears on one line only (add up the quantities): a repeated SKU is
  refused, naming both lines.
* ``offer_event``: ``{"kind": "click" | "add_to_cart", "campaign_id": int, "session_key": str,
  "quantity": int >= 1, "occurred_at": ISO 8601}`` (only ``kind`` and ``campaign_id`` required).

Limits (each refused with a 400 naming the field; they keep every value inside its database column, so an
accepted event can always be stored and handled): body at most ``BODY_MAX_BYTES`` (1 MiB; larger: 413) and
JSON nested at most ``JSON_MAX_DEPTH`` (20) levels; ``stock`` from -1,000,000,000 to 1,000,000,000
(``STOCK_MAX``); ``quantity`` (order lines and offer events) from 1 to 1,000,000 (``QUANTITY_MAX``);
``price``, ``cost``, ``unit_price`` from 0 to 9999999999.99 with at most 2 decimals (``MONEY_MAX``), as a
JSON string in plain decimal notation (``"12.50"``, as the CSV import reads it; ``"1e3"`` is refused) or a
JSON integer (never a JSON float, which cannot hold cents exactly); ids (``id``, ``sku``, ``order_id``,
``customer_id``, ``session_key``) are text: a JSON integer is taken as its decimal text (``7`` is ``"7"``,
so a SKU ``"007"`` must be sent as that string);
quantity x unit_price of a line and the order's subtotal at most 999999999999.99 (``ORDER_AMOUNT_MAX``);
at most 1,000 lines (``MAX_LINES``); ``campaign_id`` at most 2**63 - 1; ``placed_at`` / ``occurred_at`` a
real calendar date-time from 1970-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z; a date-time
without an offset is in the shop's ``TIME_ZONE``; text fields without NUL characters or unpaired surrogates.

Responses (JSON): 202 ``{"status": "accepted", "outbox_event_id": int}``;
200 ``{"status": "duplicate", ...}`` for an ``id`` seen before (nothing is
applied twice); 400 ``{"errors": {"<field path>": "<reason>"}}`` (paths name the real
position, e.g. ``data.lines[2].sku``; nothing is stored); 413 ``{"errors": {"body": ...}}`` for a body
over the size limit; 401 without a bearer token; 403 for a wrong token; 503 when no token is configured.
"""
from __future__ import annotations

import hmac
import json
import re
import reprlib
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bundling_ml.limits import LINE_AMOUNT_MAX as ORDER_AMOUNT_MAX
from bundling_ml.limits import MONEY_MAX, QUANTITY_MAX

from .models import BundleCampaign, Order, OrderLine, OutboxEvent, Product
from .services.orders import customer_get_or_create
from .services.outbox import (
    OUTBOX_OFFER_KINDS,
    offer_event_record,
    outbox_dispatch_on_commit,
    outbox_event_add_once,
)

EVENT_TYPES = (OutboxEvent.STOCK_CHANGED, OutboxEvent.ORDER_PLACED, OutboxEvent.OFFER_EVENT)
ID_MAX_LENGTH = 100
MAX_LINES = 1000
#: Largest request body read (bytes); Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` applies too when smaller.
BODY_MAX_BYTES = 1024 * 1024
#: Deepest JSON nesting accepted (an order event needs 4: envelope, data, lines, line).
JSON_MAX_DEPTH = 20
#: ``Product.stock`` (integer column, +-2,147,483,647): reported stock from -STOCK_MAX to STOCK_MAX.
STOCK_MAX = 1_000_000_000
# QUANTITY_MAX (units on one order line / bundles in one offer event), MONEY_MAX (``price``, ``cost``,
# ``unit_price``: ``numeric(12, 2)``) and ORDER_AMOUNT_MAX (quantity x unit_price of a line and an order's
# subtotal / total: ``numeric(14, 2)``) are the CSV import's column limits (bundling_ml.limits).
#: ``campaign_id``: a ``bigint`` primary key.
ID_INT_MAX = 2**63 - 1
#: ``placed_at`` / ``occurred_at``: from MOMENT_MIN up to (not including) MOMENT_END.
MOMENT_MIN = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
MOMENT_END = datetime(2100, 1, 1, tzinfo=dt_timezone.utc)

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlong = 40
_SHOWN.maxlevel = 1


def _shown(value) -> str:
    """``repr(value)`` cut short, for echoing a refused value in an error (never the whole of a huge one)."""
    return _SHOWN.repr(value)


class PayloadError(Exception):
    """The body is not acceptable; ``errors`` maps a field path (``data.lines[2].quantity``) to its reason."""

    def __init__(self, errors: dict[str, str], status: int = 400):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors
        self.status = status


def _error(status: int, message: str, **extra) -> JsonResponse:
    """A JSON error response ``{"error": message}``."""
    response = JsonResponse({"error": message, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="shop_bundles events"'
    return response


def _authenticate(request: HttpRequest) -> JsonResponse | None:
    """None when the request carries the configured bearer token, else the refusal to send."""
    expected = (getattr(settings, "SHOP_BUNDLES_EVENT_TOKEN", "") or "").strip()
    if not expected:
        return _error(503, "The events endpoint is disabled: SHOP_BUNDLES_EVENT_TOKEN is not set on the server.")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(401, "Authentication required: send 'Authorization: Bearer <token>'.")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return _error(403, "Invalid token.")
    return None


# --- field validation (each adds "<path>: <reason>" to errors) ------------------------------------

def _text(data: dict, key: str, path: str, errors: dict, *, required: bool = True, max_length: int = 64) -> str:
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors[path] = "this field is required."
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        errors[path] = "must be a string."
        return ""
    value = str(value).strip()
    if len(value) > max_length:
        errors[path] = f"must be at most {max_length} characters."
    elif "\x00" in value:  # PostgreSQL text cannot hold it
        errors[path] = "must not contain the NUL character (\\u0000)."
    elif not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # an unpaired surrogate escape such as \ud800: not storable text
            errors[path] = "is not valid Unicode text (unpaired surrogate such as \\ud800)."
    return value


def _integer(data: dict, key: str, path: str, errors: dict, *, minimum: int, maximum: int):
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        errors[path] = f"must be a whole number, not {_shown(value)}."
        return None
    if value < minimum:
        errors[path] = f"must be at least {minimum}, not {_shown(value)}."
        return None
    if value > maximum:
        errors[path] = f"must be at most {maximum}, not {_shown(value)}."
        return None
    return value


#: plain decimal notation (an optional sign, digits, an optional decimal point and digits): what the API and the
#: campaign form accept as an amount; the CSV import has its own reader with thousands separators (bundling_ml.ingest)
PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _money(data: dict, key: str, path: str, errors: dict, *, nullable: bool = False):
    value = data.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, (bool, float)) or not isinstance(value, (str, int)):
        errors[path] = f"must be a decimal amount as a string (e.g. \"12.50\"), not {_shown(value)}."
        return None
    text = str(value).strip()
    if not PLAIN_DECIMAL.fullmatch(text):  # "1e3", "NaN", "1_000": Decimal reads them, the CSV import does not
        errors[path] = (f"is not a decimal amount in plain notation (digits with an optional decimal point, "
                        f"e.g. \"12.50\"): {_shown(value)}.")
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        errors[path] = f"is not a decimal amount: {_shown(value)}."
        return None
    if not amount.is_finite() or amount < 0 or amount > MONEY_MAX:
        errors[path] = f"must be between 0 and {MONEY_MAX}, not {_shown(value)}."
        return None
    if amount != amount.quantize(Decimal("0.01")):
        errors[path] = f"has more than 2 decimal places: {_shown(value)}."
        return None
    return amount.quantize(Decimal("0.01"))


def _moment(data: dict, key: str, path: str, errors: dict) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError as exc:  # well-formed but not a real date-time: 2026-02-30, month 13, offset +25:00
        errors[path] = f"is not a valid date-time ({exc}): {_shown(value)}."
        return None
    if parsed is None:
        errors[path] = f"must be an ISO 8601 date-time (e.g. 2026-11-30T14:05:00+01:00), not {_shown(value)}."
        return None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)  # the shop's TIME_ZONE, as for imports
    if not MOMENT_MIN <= parsed < MOMENT_END:
        errors[path] = (f"must be from {MOMENT_MIN:%Y-%m-%dT%H:%M:%SZ} up to (not including) "
                        f"{MOMENT_END:%Y-%m-%dT%H:%M:%SZ}, not {_shown(value)}.")
        return None
    return parsed


def _too_deep(value, limit: int) -> bool:
    """True when ``value`` nests lists / objects more than ``limit`` levels deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def body_limit() -> int:
    """Largest body accepted (bytes): ``BODY_MAX_BYTES``, or Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` if smaller."""
    django_limit = getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None)
    return BODY_MAX_BYTES if django_limit is None else min(BODY_MAX_BYTES, django_limit)


def read_body(request: HttpRequest) -> bytes:
    """The request body, refused before it is read when it is over :func:`body_limit`.

    Raises:
        PayloadError: status 413, ``{"body": "is <size> bytes; at most <limit> bytes are accepted ..."}``.
    """
    limit = body_limit()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    try:
        body = b"" if declared > limit else request.body
    except RequestDataTooBig:
        body = b""
        declared = max(declared, limit + 1)
    size = max(declared, len(body))
    if size > limit:
        raise PayloadError({"body": f"is {size} bytes; at most {limit} bytes are accepted "
                                    f"(send fewer lines per event)."}, status=413)
    return body


def parse_event(body: bytes) -> tuple[str, str, dict]:
    """Decode and check the envelope of an event.

    Returns:
        ``(event_id, type, data)``.

    Raises:
        PayloadError: with one reason per bad field.
    """
    too_deep = f"is nested more than {JSON_MAX_DEPTH} levels deep (an event needs at most 4)."
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError({"body": f"is not valid UTF-8 JSON ({exc})."}) from None
    except RecursionError:  # far deeper than JSON_MAX_DEPTH: the parser gave up
        raise PayloadError({"body": too_deep}) from None
    if not isinstance(payload, dict):
        raise PayloadError({"body": "must be a JSON object."})
    if _too_deep(payload, JSON_MAX_DEPTH):
        raise PayloadError({"body": too_deep})
    errors: dict[str, str] = {}
    event_id = _text(payload, "id", "id", errors, max_length=ID_MAX_LENGTH)
    kind = payload.get("type")
    if kind not in EVENT_TYPES:
        errors["type"] = f"must be one of {', '.join(EVENT_TYPES)}, not {_shown(kind)}."
    data = payload.get("data")
    if not isinstance(data, dict):
        errors["data"] = "must be a JSON object."
    if errors:
        raise PayloadError(errors)
    return event_id, kind, data


def _apply_stock_changed(data: dict, dedupe_key: str, event_id: str) -> tuple[OutboxEvent, bool]:
    errors: dict[str, str] = {}
    sku = _text(data, "sku", "data.sku", errors)
    changes = {}
    if "stock" in data:
        changes["stock"] = _integer(data, "stock", "data.stock", errors, minimum=-STOCK_MAX, maximum=STOCK_MAX)
    if "price" in data:
        changes["price"] = _money(data, "price", "data.price", errors)
    if "cost" in data:
        changes["cost"] = _money(data, "cost", "data.cost", errors, nullable=True)
    if "active" in data:
        if not isinstance(data["active"], bool):
            errors["data.active"] = f"must be true or false, not {_shown(data['active'])}."
        changes["active"] = data["active"]
    if not changes and "data.sku" not in errors:
        errors["data"] = "give at least one of stock, price, cost, active."
    sku_ok = sku and "data.sku" not in errors
    product = Product.objects.select_for_update().filter(sku=sku).first() if sku_ok else None
    if sku_ok and product is None:
        errors["data.sku"] = f"no product with SKU {_shown(sku)}."
    if errors:
        raise PayloadError(errors)
    fields = [f for f in Product.TRACKED_FIELDS if f in changes]
    event, created = outbox_event_add_once(
        kind=OutboxEvent.STOCK_CHANGED, dedupe_key=dedupe_key,
        payload={"product_ids": [product.pk], "fields": fields, "source": "api", "external_id": event_id})
    if created:
        # queryset.update (no post_save): this request's event above is the one stock_changed event.
        Product.objects.filter(pk=product.pk).update(**changes, updated_at=timezone.now())
        outbox_dispatch_on_commit(event)
    return event, created


def _apply_order_placed(data: dict, dedupe_key: str, event_id: str) -> tuple[OutboxEvent, bool]:
    errors: dict[str, str] = {}
    external_id = _text(data, "order_id", "data.order_id", errors)
    placed_at = _moment(data, "placed_at", "data.placed_at", errors) or timezone.now()
    customer_ref = _text(data, "customer_id", "data.customer_id", errors, required=False)
    raw_lines = data.get("lines")
    lines: list[tuple[int, str, int, Decimal]] = []  # (index in data.lines, sku, quantity, unit_price)
    if not isinstance(raw_lines, list) or not raw_lines:
        errors["data.lines"] = "must be a non-empty list of {sku, quantity, unit_price}."
    elif len(raw_lines) > MAX_LINES:
        errors["data.lines"] = f"has {len(raw_lines)} lines; at most {MAX_LINES}."
    else:
        for i, line in enumerate(raw_lines):
            path = f"data.lines[{i}]"
            if not isinstance(line, dict):
                errors[path] = f"must be a JSON object {{sku, quantity, unit_price}}, not {_shown(line)}."
                continue
            sku = _text(line, "sku", f"{path}.sku", errors)
            qty = _integer(line, "quantity", f"{path}.quantity", errors, minimum=1, maximum=QUANTITY_MAX)
            price = _money(line, "unit_price", f"{path}.unit_price", errors)
            lines.append((i, sku, qty, price))
    # SKUs whose own field is fine: each must exist and appear on one line only.
    checked = [(i, sku) for i, sku, _, _ in lines if sku and f"data.lines[{i}].sku" not in errors]
    products = dict(Product.objects.filter(sku__in={sku for _, sku in checked}).values_list("sku", "pk"))
    first_line: dict[str, int] = {}
    for i, sku in checked:
        if sku not in products:
            errors[f"data.lines[{i}].sku"] = f"no product with SKU {_shown(sku)}."
        elif sku in first_line:
            errors[f"data.lines[{i}].sku"] = (f"repeats SKU {_shown(sku)} of data.lines[{first_line[sku]}]; "
                                              f"report each product on one line (add up the quantities).")
        else:
            first_line[sku] = i
    subtotal, line_too_large = Decimal("0.00"), False
    for i, _, qty, price in lines:
        if qty is None or price is None:
            continue
        amount = price * qty  # at most 1,000,000 x 9999999999.99: exact in Decimal's 28 digits
        if amount > ORDER_AMOUNT_MAX:
            errors[f"data.lines[{i}]"] = (f"quantity x unit_price = {amount} is above the largest line amount, "
                                          f"{ORDER_AMOUNT_MAX}.")
            line_too_large = True
        subtotal += amount
    if not line_too_large and "data.lines" not in errors and subtotal > ORDER_AMOUNT_MAX:
        errors["data.lines"] = (f"the order's subtotal (sum of quantity x unit_price) {subtotal} is above "
                                f"the largest order amount, {ORDER_AMOUNT_MAX}.")
    if external_id and "data.order_id" not in errors and Order.objects.filter(external_id=external_id).exists():
        errors["data.order_id"] = (f"order {_shown(external_id)} already exists "
                                   f"(reported under another event id?).")
    if errors:
        raise PayloadError(errors)
    customer = customer_get_or_create(external_id=customer_ref) if customer_ref else None
    order = Order.objects.create(external_id=external_id, customer=customer, placed_at=placed_at,
                                 source=Order.SOURCE_API, subtotal=subtotal, total=subtotal)
    OrderLine.objects.bulk_create([OrderLine(order=order, product_id=products[sku], quantity=qty, unit_price=price)
                                   for _, sku, qty, price in lines])
    event, created = outbox_event_add_once(
        kind=OutboxEvent.ORDER_PLACED, dedupe_key=dedupe_key,
        payload={"order_id": order.pk, "external_id": external_id, "source": "api", "event_id": event_id})
    if not created:  # a concurrent request stored the same event first: undo this one
        transaction.set_rollback(True)
        return event, False
    outbox_dispatch_on_commit(event)
    return event, True


def _apply_offer_event(data: dict, dedupe_key: str, event_id: str) -> tuple[OutboxEvent, bool]:
    errors: dict[str, str] = {}
    kind = data.get("kind")
    if kind not in OUTBOX_OFFER_KINDS:
        errors["data.kind"] = f"must be one of {', '.join(OUTBOX_OFFER_KINDS)}, not {_shown(kind)}."
    campaign_id = _integer(data, "campaign_id", "data.campaign_id", errors, minimum=1, maximum=ID_INT_MAX)
    if campaign_id is not None and not BundleCampaign.objects.filter(pk=campaign_id).exists():
        errors["data.campaign_id"] = f"no campaign with id {campaign_id}."
    session_key = _text(data, "session_key", "data.session_key", errors, required=False)
    quantity = (_integer(data, "quantity", "data.quantity", errors, minimum=1, maximum=QUANTITY_MAX)
                if "quantity" in data else 1)
    occurred_at = _moment(data, "occurred_at", "data.occurred_at", errors)
    if errors:
        raise PayloadError(errors)
    event = offer_event_record(kind=kind, campaign_id=campaign_id, session_key=session_key, quantity=quantity,
                               occurred_at=occurred_at, dedupe_key=dedupe_key)
    return event, True  # the unique dedupe_key still stores one event if a concurrent twin got here too


APPLY = {
    OutboxEvent.STOCK_CHANGED: _apply_stock_changed,
    OutboxEvent.ORDER_PLACED: _apply_order_placed,
    OutboxEvent.OFFER_EVENT: _apply_offer_event,
}


@csrf_exempt  # token-authenticated server-to-server endpoint: no cookies, no session, no CSRF token
@require_POST
def events_receive(request: HttpRequest) -> JsonResponse:
    """Accept one external event (see the module docstring for the format and the responses)."""
    refusal = _authenticate(request)
    if refusal is not None:
        return refusal
    try:
        event_id, kind, data = parse_event(read_body(request))
        dedupe_key = f"api:{event_id}"
        with transaction.atomic():
            # A re-sent event is answered from its first delivery, before any validation or write.
            existing = OutboxEvent.objects.filter(dedupe_key=dedupe_key).first()
            if existing is not None:
                event, created = existing, False
            else:
                event, created = APPLY[kind](data, dedupe_key, event_id)
    except PayloadError as exc:
        return JsonResponse({"errors": exc.errors}, status=exc.status)
    except ValidationError as exc:
        return JsonResponse({"errors": {"data": " ".join(exc.messages)}}, status=400)
    if not created:
        return JsonResponse({"status": "duplicate", "outbox_event_id": event.pk,
                             "message": f"event {event_id!r} was received before; nothing applied again."},
                            status=200)
    return JsonResponse({"status": "accepted", "outbox_event_id": event.pk, "type": kind}, status=202)
