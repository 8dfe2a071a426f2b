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
  event in one transaction; the handler records the ``OrderEvent``.
* ``offer_event``: ``{"kind": "click" | "add_to_cart", "campaign_id": int, "session_key": str,
  "quantity": int >= 1, "occurred_at": ISO 8601}`` (only ``kind`` and ``campaign_id`` required).

Responses (JSON): 202 ``{"status": "accepted", "outbox_event_id": int}``;
200 ``{"status": "duplicate", ...}`` for an ``id`` seen before (nothing is
applied twice); 400 ``{"errors": {"<field path>": "<reason>"}}``; 401 without
a bearer token; 403 for a wrong token; 503 when no token is configured.
"""
from __future__ import annotations

import hmac
import json
from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

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
MONEY_MAX = Decimal("9999999999.99")


class PayloadError(Exception):
    """The body is not acceptable; ``errors`` maps a field path (``data.lines[2].quantity``) to its reason."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


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
    return value


def _integer(data: dict, key: str, path: str, errors: dict, *, minimum: int | None = None):
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        errors[path] = f"must be a whole number, not {value!r}."
        return None
    if minimum is not None and value < minimum:
        errors[path] = f"must be at least {minimum}, not {value}."
        return None
    return value


def _money(data: dict, key: str, path: str, errors: dict, *, nullable: bool = False):
    value = data.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, (bool, float)) or not isinstance(value, (str, int)):
        errors[path] = f"must be a decimal amount as a string (e.g. \"12.50\"), not {value!r}."
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        errors[path] = f"is not a decimal amount: {value!r}."
        return None
    if not amount.is_finite() or amount < 0 or amount > MONEY_MAX:
        errors[path] = f"must be between 0 and {MONEY_MAX}, not {value!r}."
        return None
    if amount != amount.quantize(Decimal("0.01")):
        errors[path] = f"has more than 2 decimal places: {value!r}."
        return None
    return amount.quantize(Decimal("0.01"))


def _moment(data: dict, key: str, path: str, errors: dict) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is None:
        errors[path] = f"must be an ISO 8601 date-time (e.g. 2026-11-30T14:05:00+01:00), not {value!r}."
        return None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)  # the shop's TIME_ZONE, as for imports
    return parsed


def parse_event(body: bytes) -> tuple[str, str, dict]:
    """Decode and check the envelope of an event.

    Returns:
        ``(event_id, type, data)``.

    Raises:
        PayloadError: with one reason per bad field.
    """
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError({"body": f"is not valid UTF-8 JSON ({exc})."}) from None
    if not isinstance(payload, dict):
        raise PayloadError({"body": "must be a JSON object."})
    errors: dict[str, str] = {}
    event_id = _text(payload, "id", "id", errors, max_length=ID_MAX_LENGTH)
    kind = payload.get("type")
    if kind not in EVENT_TYPES:
        errors["type"] = f"must be one of {', '.join(EVENT_TYPES)}, not {kind!r}."
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
        changes["stock"] = _integer(data, "stock", "data.stock", errors)
    if "price" in data:
        changes["price"] = _money(data, "price", "data.price", errors)
    if "cost" in data:
        changes["cost"] = _money(data, "cost", "data.cost", errors, nullable=True)
    if "active" in data:
        if not isinstance(data["active"], bool):
            errors["data.active"] = f"must be true or false, not {data['active']!r}."
        changes["active"] = data["active"]
    if not changes and "data.sku" not in errors:
        errors["data"] = "give at least one of stock, price, cost, active."
    product = Product.objects.select_for_update().filter(sku=sku).first() if sku else None
    if sku and product is None:
        errors["data.sku"] = f"no product with SKU {sku!r}."
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
    lines: list[tuple[str, int, Decimal]] = []
    if not isinstance(raw_lines, list) or not raw_lines:
        errors["data.lines"] = "must be a non-empty list of {sku, quantity, unit_price}."
    elif len(raw_lines) > MAX_LINES:
        errors["data.lines"] = f"has {len(raw_lines)} lines; at most {MAX_LINES}."
    else:
        for i, line in enumerate(raw_lines):
            path = f"data.lines[{i}]"
            if not isinstance(line, dict):
                errors[path] = "must be a JSON object."
                continue
            sku = _text(line, "sku", f"{path}.sku", errors)
            qty = _integer(line, "quantity", f"{path}.quantity", errors, minimum=1)
            price = _money(line, "unit_price", f"{path}.unit_price", errors)
            lines.append((sku, qty, price))
    skus = {sku for sku, _, _ in lines if sku}
    products = dict(Product.objects.filter(sku__in=skus).values_list("sku", "pk"))
    for i, (sku, _, _) in enumerate(lines):
        if sku and sku not in products:
            errors[f"data.lines[{i}].sku"] = f"no product with SKU {sku!r}."
    if external_id and Order.objects.filter(external_id=external_id).exists():
        errors["data.order_id"] = f"order {external_id!r} already exists (reported under another event id?)."
    if errors:
        raise PayloadError(errors)
    customer = customer_get_or_create(external_id=customer_ref) if customer_ref else None
    subtotal = sum((price * qty for _, qty, price in lines), Decimal("0.00"))
    order = Order.objects.create(external_id=external_id, customer=customer, placed_at=placed_at,
                                 source=Order.SOURCE_API, subtotal=subtotal, total=subtotal)
    OrderLine.objects.bulk_create([OrderLine(order=order, product_id=products[sku], quantity=qty, unit_price=price)
                                   for sku, qty, price in lines])
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
        errors["data.kind"] = f"must be one of {', '.join(OUTBOX_OFFER_KINDS)}, not {kind!r}."
    campaign_id = _integer(data, "campaign_id", "data.campaign_id", errors, minimum=1)
    if campaign_id is not None and not BundleCampaign.objects.filter(pk=campaign_id).exists():
        errors["data.campaign_id"] = f"no campaign with id {campaign_id}."
    session_key = _text(data, "session_key", "data.session_key", errors, required=False)
    quantity = _integer(data, "quantity", "data.quantity", errors, minimum=1) if "quantity" in data else 1
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
        event_id, kind, data = parse_event(request.body)
        dedupe_key = f"api:{event_id}"
        with transaction.atomic():
            # A re-sent event is answered from its first delivery, before any validation or write.
            existing = OutboxEvent.objects.filter(dedupe_key=dedupe_key).first()
            if existing is not None:
                event, created = existing, False
            else:
                event, created = APPLY[kind](data, dedupe_key, event_id)
    except PayloadError as exc:
        return JsonResponse({"errors": exc.errors}, status=400)
    except ValidationError as exc:
        return JsonResponse({"errors": {"data": " ".join(exc.messages)}}, status=400)
    if not created:
        return JsonResponse({"status": "duplicate", "outbox_event_id": event.pk,
                             "message": f"event {event_id!r} was received before; nothing applied again."},
                            status=200)
    return JsonResponse({"status": "accepted", "outbox_event_id": event.pk, "type": kind}, status=202)
