"""Transactional outbox: events that survive a broker outage.

Writers call ``outbox_event_add`` inside the ``transaction.atomic`` block that
makes the change, so the ``OutboxEvent`` row commits or rolls back with it.
Delivery to Celery happens after commit, in two ways:

* fast path: ``outbox_dispatch_on_commit`` tries to send the one new event as
  soon as the transaction commits (one broker attempt, no retries; a broker
  error is logged and swallowed, the request never fails because of it);
* periodic relay: ``outbox_relay`` (task ``relay_outbox``, every minute) sends
  every event that was never delivered, or that was delivered but is still
  unprocessed after ``SHOP_BUNDLES_OUTBOX_REDISPATCH_SECONDS`` (default 300).

Delivery is therefore at-least-once; ``outbox_event_handle`` (task
``handle_outbox_event``) makes processing exactly-once: it locks the event row,
exits when ``processed_at`` is set, and sets ``processed_at`` in the same
transaction as the handler's own writes.

Kinds (``OutboxEvent.kind``) and their handlers:

* ``order_placed`` ``{"order_id"}``: records the ``OrderEvent`` and the
  purchase ``OfferEvent`` per campaign the order used (``services.events``);
* ``stock_changed`` ``{"product_ids", "fields", "source"}``: pauses or resumes
  the campaigns holding the products (``campaigns_sync_product``), written by
  ``stock_changed_record`` (every ``Product.save`` that changes stock, price,
  cost or active; checkouts that sell a product's last unit; the events endpoint);
* ``offer_event`` ``{"kind": "click" | "add_to_cart", "campaign_id", ...}``:
  writes the ``OfferEvent`` (``offer_event_record``). Impressions are not
  sent through the outbox (the product page buffers them in Redis, ``services.impression_buffer``).

Settings (all optional): ``SHOP_BUNDLES_OUTBOX_REDISPATCH_SECONDS`` (300),
``SHOP_BUNDLES_OUTBOX_MAX_ATTEMPTS`` (10 handler runs, then the relay stops
sending the event and reports it as dead), ``SHOP_BUNDLES_OUTBOX_FAST_PATH_PAUSE``
(5 seconds without fast-path sends after a broker error, so checkouts do not
each pay a connection timeout while the broker is down).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from ..models import BundleCampaign, Customer, OfferEvent, Order, OutboxEvent, Product

logger = logging.getLogger(__name__)

#: Exceptions that mean "the broker did not take the message"; the event stays pending.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, ConnectionError, OSError)

ERROR_MAX_LENGTH = 2000

# Process-local: monotonic time until which the on-commit fast path is skipped after a broker error.
_fast_path_paused_until = 0.0


def _setting(name: str, default):
    """A ``SHOP_BUNDLES_OUTBOX_*`` setting, or its default."""
    return getattr(settings, name, default)


def redispatch_after() -> timedelta:
    """How long a dispatched but unprocessed event waits before the relay sends it again."""
    return timedelta(seconds=float(_setting("SHOP_BUNDLES_OUTBOX_REDISPATCH_SECONDS", 300)))


def max_attempts() -> int:
    """Handler runs after which the relay stops sending an event (it is then reported as dead)."""
    return int(_setting("SHOP_BUNDLES_OUTBOX_MAX_ATTEMPTS", 10))


def _error_text(prefix: str, exc: BaseException) -> str:
    """``"prefix: ExcType: message"``, cut to the column's sensible length."""
    return f"{prefix}: {type(exc).__name__}: {exc}"[:ERROR_MAX_LENGTH]


# --- writing -----------------------------------------------------------------------------------

def outbox_event_add(*, kind: str, payload: dict[str, Any]) -> OutboxEvent:
    """Insert an ``OutboxEvent`` in the caller's open transaction.

    Args:
        kind: one of ``OutboxEvent.KIND_CHOICES`` (e.g. ``OutboxEvent.ORDER_PLACED``).
        payload: small JSON-serialisable dict (ids, not objects).

    Returns:
        the saved ``OutboxEvent`` (not yet sent; see ``outbox_dispatch_on_commit``).

    Raises:
        RuntimeError: when called outside ``transaction.atomic`` (the event
            would not share the change's transaction).
        ValueError: for an unknown kind.
    """
    if kind not in dict(OutboxEvent.KIND_CHOICES):
        raise ValueError(f"Unknown outbox event kind {kind!r}.")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox_event_add must be called inside the transaction that makes the change.")
    return OutboxEvent.objects.create(kind=kind, payload=payload)


def outbox_event_add_once(*, kind: str, payload: dict[str, Any], dedupe_key: str) -> tuple[OutboxEvent, bool]:
    """Like :func:`outbox_event_add`, but at most one event per ``dedupe_key`` ever.

    Used for events reported from outside (a shop front retrying a POST).
    The unique column decides under concurrency: a losing insert is rolled
    back to a savepoint and the existing row is returned.

    Args:
        kind: one of ``OutboxEvent.KIND_CHOICES``.
        payload: small JSON-serialisable dict.
        dedupe_key: ``"<source>:<external event id>"`` (at most 160 characters).

    Returns:
        ``(event, created)``; ``created`` is False for a duplicate (the first event is returned).

    Raises:
        RuntimeError / ValueError: as :func:`outbox_event_add`.
    """
    existing = OutboxEvent.objects.filter(dedupe_key=dedupe_key).first()
    if existing is not None:
        return existing, False
    if kind not in dict(OutboxEvent.KIND_CHOICES):
        raise ValueError(f"Unknown outbox event kind {kind!r}.")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox_event_add_once must be called inside the transaction that makes the change.")
    try:
        with transaction.atomic():
            return OutboxEvent.objects.create(kind=kind, payload=payload, dedupe_key=dedupe_key), True
    except IntegrityError:
        return OutboxEvent.objects.get(dedupe_key=dedupe_key), False


def stock_changed_record(*, product_ids, fields=(), source: str = "", using: str = "default") -> OutboxEvent:
    """Write a ``stock_changed`` outbox event in the current transaction and offer it to the broker on commit.

    Called where a product's stock, price, cost or active flag changes
    (``Product.save`` via ``signals``, ``order_place`` for products that sold
    out, the events endpoint). The handler runs
    ``campaigns_sync_product`` for each product, exactly once per event;
    the sync itself reads the products' current rows, so a late or repeated
    event never pauses a campaign wrongly.

    Args:
        product_ids: primary keys of the changed products (duplicates are dropped; sorted).
        fields: names of the changed fields (informational, e.g. ``["stock"]``).
        source: who changed it (``product_save``, ``order``, ``api``...).
        using: database alias of the change's transaction.

    Returns:
        the saved ``OutboxEvent``.

    Raises:
        RuntimeError: outside a transaction (see :func:`outbox_event_add`).
    """
    ids = sorted({int(pk) for pk in product_ids})
    with transaction.atomic(using=using, savepoint=False):
        event = outbox_event_add(kind=OutboxEvent.STOCK_CHANGED,
                                 payload={"product_ids": ids, "fields": list(fields), "source": source})
        outbox_dispatch_on_commit(event)
    return event


#: Offer event kinds sent through the outbox (impressions go through the Redis buffer, purchases come
#: from the ``order_placed`` handler).
OUTBOX_OFFER_KINDS = (OfferEvent.CLICK, OfferEvent.ADD_TO_CART)


def offer_event_record(*, kind: str, campaign_id: int, session_key: str = "", quantity: int = 1,
                       customer_id: int | None = None, experiment_group: str = "",
                       occurred_at: datetime | None = None, dedupe_key: str | None = None) -> OutboxEvent:
    """Write an ``offer_event`` outbox event (a click or a bundle added to a cart) and send it on commit.

    Runs in the caller's transaction when there is one (else in its own);
    the handler writes the ``OfferEvent`` exactly once, with ``created_at`` =
    ``occurred_at`` (the moment of the click, not of processing).

    Args:
        kind: ``OfferEvent.CLICK`` or ``OfferEvent.ADD_TO_CART``.
        campaign_id: the campaign's primary key.
        session_key: the shopper's session key ("" when unknown).
        quantity: bundles (>= 1).
        customer_id: the known ``Customer``'s primary key, or None.
        experiment_group: ``treatment`` / ``holdout`` / "".
        occurred_at: aware datetime; None means now.
        dedupe_key: for events reported from outside (see :func:`outbox_event_add_once`).

    Returns:
        the ``OutboxEvent`` (the existing one for a duplicate ``dedupe_key``).

    Raises:
        ValueError: for another kind or a quantity below 1.
    """
    if kind not in OUTBOX_OFFER_KINDS:
        raise ValueError(f"offer event kind must be one of {', '.join(OUTBOX_OFFER_KINDS)}, not {kind!r}.")
    if int(quantity) < 1:
        raise ValueError(f"quantity must be at least 1, not {quantity!r}.")
    payload = {"kind": kind, "campaign_id": int(campaign_id), "session_key": session_key or "",
               "quantity": int(quantity), "customer_id": customer_id, "experiment_group": experiment_group or "",
               "occurred_at": (occurred_at or timezone.now()).isoformat()}
    with transaction.atomic(savepoint=False):
        if dedupe_key:
            event, created = outbox_event_add_once(kind=OutboxEvent.OFFER_EVENT, payload=payload,
                                                   dedupe_key=dedupe_key)
        else:
            event, created = outbox_event_add(kind=OutboxEvent.OFFER_EVENT, payload=payload), True
        if created:
            outbox_dispatch_on_commit(event)
    return event


# --- sending -----------------------------------------------------------------------------------

def _send(event_id: int, *, retries: int) -> None:
    """Publish ``handle_outbox_event(event_id)``; ``retries`` extra broker attempts at most."""
    from ..tasks import handle_outbox_event

    handle_outbox_event.apply_async(
        args=[event_id], retry=True,
        retry_policy={"max_retries": retries, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
    )


def outbox_dispatch(event_id: int) -> bool:
    """Fast path: send one just-committed event now, never raising.

    The event is claimed first (``dispatched_at`` set only if it is still
    undelivered), so a relay running at the same moment does not send it too.
    On a broker error the claim is released (``dispatched_at`` back to None,
    ``last_error`` set) and the fast path pauses for
    ``SHOP_BUNDLES_OUTBOX_FAST_PATH_PAUSE`` seconds in this process; the
    periodic relay delivers the event later.

    Args:
        event_id: primary key of a committed ``OutboxEvent``.

    Returns:
        True when the broker accepted the message (or, in eager mode, the
        handler ran), False otherwise.
    """
    global _fast_path_paused_until
    if time.monotonic() < _fast_path_paused_until:
        return False
    try:
        claimed_at = timezone.now()
        claimed = OutboxEvent.objects.filter(pk=event_id, processed_at__isnull=True,
                                             dispatched_at__isnull=True).update(dispatched_at=claimed_at)
        if not claimed:
            return False
        try:
            _send(event_id, retries=0)
        except BROKER_ERRORS as exc:
            _fast_path_paused_until = time.monotonic() + float(_setting("SHOP_BUNDLES_OUTBOX_FAST_PATH_PAUSE", 5))
            OutboxEvent.objects.filter(pk=event_id, processed_at__isnull=True, dispatched_at=claimed_at).update(
                dispatched_at=None, last_error=_error_text("broker", exc))
            logger.warning("Outbox event %s left for the relay: broker unavailable (%s)", event_id, exc)
            return False
        return True
    except Exception:  # noqa: BLE001 - the order is committed; delivery must never fail the request
        logger.exception("Outbox fast path failed for event %s; the relay will deliver it", event_id)
        return False


def outbox_dispatch_on_commit(event: OutboxEvent) -> None:
    """Register ``outbox_dispatch(event.pk)`` to run when the current transaction commits.

    Nothing is sent for a rolled-back transaction (the event row is gone with it).
    """
    event_id = event.pk
    transaction.on_commit(lambda: outbox_dispatch(event_id))


def outbox_relay(*, limit: int = 500, now: datetime | None = None) -> dict:
    """Send undelivered outbox events to Celery (``handle_outbox_event``).

    Picks, oldest first, up to ``limit`` unprocessed events that were never
    dispatched or were dispatched more than ``redispatch_after()`` ago and
    have had fewer than ``max_attempts()`` handler runs. They are claimed in a
    short transaction (``SELECT ... FOR UPDATE SKIP LOCKED``, then
    ``dispatched_at = now``), so concurrent relays and events a handler is
    working on are skipped, and no lock is held while talking to the broker.
    On the first broker error the rest of the batch is released
    (``dispatched_at`` back to None, ``last_error`` set) for the next relay;
    the error is logged and counted, never raised.

    Args:
        limit: most events to send in this call.
        now: aware datetime to use as the current time (tests).

    Returns:
        ``{"sent": int, "resent": int, "failed": int, "handler_errors": int,
        "dead": int}``: ``sent`` counts messages the broker took (``resent``
        of them had been sent before), ``failed`` the events left for later
        because of a broker error, ``handler_errors`` eager-mode handler
        failures, ``dead`` unprocessed events past the attempt limit.
    """
    now = now or timezone.now()
    stale_before = now - redispatch_after()
    limit_attempts = max_attempts()
    with transaction.atomic():
        rows = list(
            OutboxEvent.objects.select_for_update(skip_locked=True)
            .filter(processed_at__isnull=True, attempts__lt=limit_attempts)
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=stale_before))
            .order_by("created_at", "id")
            .values_list("pk", "dispatched_at")[:limit]
        )
        ids = [pk for pk, _ in rows]
        if ids:
            OutboxEvent.objects.filter(pk__in=ids).update(dispatched_at=now)
    resent_ids = {pk for pk, dispatched in rows if dispatched is not None}

    sent = resent = handler_errors = 0
    failed: list[int] = []
    for index, pk in enumerate(ids):
        try:
            _send(pk, retries=1)
        except BROKER_ERRORS as exc:
            failed = ids[index:]
            OutboxEvent.objects.filter(pk__in=failed, processed_at__isnull=True, dispatched_at=now).update(
                dispatched_at=None, last_error=_error_text("broker", exc))
            logger.warning("Outbox relay: broker unavailable, %d event(s) left for the next relay (%s)",
                           len(failed), exc)
            break
        except Exception:  # noqa: BLE001 - eager mode runs the handler inline; it recorded its own error
            handler_errors += 1
            logger.exception("Outbox relay: handler failed for event %s (eager mode)", pk)
            continue
        sent += 1
        resent += pk in resent_ids

    dead = OutboxEvent.objects.filter(processed_at__isnull=True, attempts__gte=limit_attempts).count()
    if dead:
        logger.error("Outbox relay: %d event(s) reached %d handler attempts and are no longer sent", dead,
                     limit_attempts)
    result = {"sent": sent, "resent": resent, "failed": len(failed), "handler_errors": handler_errors, "dead": dead}
    if ids or dead:
        logger.info("Outbox relay: %s", result)
    return result


# --- handling ----------------------------------------------------------------------------------

def _handle_order_placed(payload: dict) -> dict:
    """Record the order's ``OrderEvent`` (idempotent); an order deleted since is skipped."""
    from .events import order_event_record

    try:
        return order_event_record(order_id=int(payload["order_id"]))
    except Order.DoesNotExist:
        return {"order_id": payload.get("order_id"), "created": False, "skipped": "order no longer exists"}


def _handle_stock_changed(payload: dict) -> dict:
    """Pause or resume the campaigns of each product (``campaigns_sync_product``); deleted products are skipped."""
    from .campaigns import campaigns_sync_product

    ids = [int(pk) for pk in payload.get("product_ids", [])]
    existing = set(Product.objects.filter(pk__in=ids).values_list("pk", flat=True))
    paused = resumed = 0
    for pk in ids:
        if pk in existing:
            result = campaigns_sync_product(product=pk)
            paused += result["paused"]
            resumed += result["resumed"]
    return {"products": len(existing), "missing": sorted(set(ids) - existing), "paused": paused,
            "resumed": resumed}


def _handle_offer_event(payload: dict) -> dict:
    """Write the click / add-to-cart ``OfferEvent``; a campaign deleted since is skipped."""
    campaign_id = int(payload["campaign_id"])
    if not BundleCampaign.objects.filter(pk=campaign_id).exists():
        return {"offer_event_id": None, "skipped": "campaign no longer exists"}
    customer_id = payload.get("customer_id")
    if customer_id is not None and not Customer.objects.filter(pk=customer_id).exists():
        customer_id = None
    occurred = payload.get("occurred_at")
    event = OfferEvent.objects.create(
        kind=payload["kind"], campaign_id=campaign_id, session_key=payload.get("session_key", "")[:64],
        quantity=int(payload.get("quantity", 1)), customer_id=customer_id,
        experiment_group=payload.get("experiment_group", "")[:16],
        created_at=datetime.fromisoformat(occurred) if occurred else timezone.now())
    return {"offer_event_id": event.pk, "kind": event.kind}


#: kind -> handler(payload) -> JSON-serialisable dict. Kinds without a handler fail (and are retried).
HANDLERS: dict[str, Callable[[dict], dict]] = {
    OutboxEvent.ORDER_PLACED: _handle_order_placed,
    OutboxEvent.STOCK_CHANGED: _handle_stock_changed,
    OutboxEvent.OFFER_EVENT: _handle_offer_event,
}


def outbox_event_handle(*, event_id: int) -> dict:
    """Process one outbox event exactly once.

    In one transaction: the event row is locked (``SELECT ... FOR UPDATE``,
    so concurrent deliveries of the same event run one after the other), a
    processed event returns at once, otherwise ``attempts`` is incremented,
    the kind's handler runs (in a savepoint) and ``processed_at`` is set, so
    the handler's writes and the "processed" mark commit together. When the
    handler raises, its writes are rolled back, ``attempts`` and
    ``last_error`` are still committed, and the exception is re-raised.

    Args:
        event_id: primary key of an ``OutboxEvent``.

    Returns:
        ``{"event_id": int, "kind": str, "status": "processed" |
        "already_processed" | "missing", "result": dict | None}``.

    Raises:
        Exception: whatever the handler raised (``ValueError`` for a kind with no handler).
    """
    error: Exception | None = None
    with transaction.atomic():
        event = OutboxEvent.objects.select_for_update().filter(pk=event_id).first()
        if event is None:
            logger.warning("Outbox event %s does not exist", event_id)
            return {"event_id": event_id, "kind": None, "status": "missing", "result": None}
        if event.processed_at is not None:
            return {"event_id": event.pk, "kind": event.kind, "status": "already_processed", "result": None}
        event.attempts += 1
        try:
            handler = HANDLERS.get(event.kind)
            if handler is None:
                raise ValueError(f"No handler for outbox event kind {event.kind!r}.")
            with transaction.atomic():
                result = handler(event.payload or {})
        except Exception as exc:  # noqa: BLE001 - recorded on the event, then re-raised below
            error = exc
            event.last_error = _error_text("handler", exc)
            event.save(update_fields=["attempts", "last_error"])
        else:
            event.processed_at = timezone.now()
            event.save(update_fields=["attempts", "processed_at"])
    if error is not None:
        logger.warning("Outbox event %s (%s) failed on attempt %d: %s", event.pk, event.kind, event.attempts, error)
        raise error
    return {"event_id": event.pk, "kind": event.kind, "status": "processed", "result": result}
