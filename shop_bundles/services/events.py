"""Recording what happened after a storefront order: the order event and offer events."""
from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import connections, router, transaction
from django.db.models import Prefetch
from django.utils import timezone

from .. import app_settings
from ..models import BundleCampaign, BundleCampaignItem, OfferEvent, Order, OrderEvent
from ..selectors.offers import campaign_spec
from ..storefront.pricing import CartItem, price_cart


def _bundle_counts(order: Order) -> dict[int, int]:
    """Bundles per campaign in a placed order, re-formed from its stored lines.

    The order's lines (catalogue ``unit_price`` at checkout) are priced again
    with only the campaigns the order is linked to, so the same greedy
    formation as at checkout gives the same bundles. A linked campaign that
    forms no bundle on re-pricing (e.g. its discount was edited since) counts 1.
    """
    campaigns = list(order.campaigns.all())
    if not campaigns:
        return {}
    items = [CartItem(product_id=l.product_id, quantity=l.quantity, unit_price=l.unit_price)
             for l in order.lines.all()]
    pricing = price_cart(items, [campaign_spec(c) for c in campaigns])
    counts = {b.campaign_id: b.count for b in pricing.bundles}
    return {c.pk: counts.get(c.pk, 1) for c in campaigns}


def order_event_record(*, order_id: int) -> dict:
    """Record the ``OrderEvent`` and one purchase ``OfferEvent`` per campaign of an order.

    Idempotent: the order event is unique per order (``get_or_create`` on a
    unique column, safe under concurrent deliveries), and the purchase events
    are written only by the call that created it (they are also unique per
    campaign and order). A second call writes nothing.

    Args:
        order_id: primary key of a committed ``Order``.

    Returns:
        ``{"order_id": int, "created": bool, "bundles_used": int,
        "purchase_events": int}``; ``created`` is False when the event already
        existed (then ``purchase_events`` is 0). ``revenue`` is the order
        total and ``bundle_discount`` its ``discount_total`` (Decimal).

    Raises:
        Order.DoesNotExist: when no such order exists.
    """
    items = BundleCampaignItem.objects.order_by("position", "id")
    order = Order.objects.prefetch_related(
        "lines", Prefetch("campaigns", queryset=BundleCampaign.objects.prefetch_related(Prefetch("items", items)))
    ).get(pk=order_id)

    existing = OrderEvent.objects.filter(order_id=order.pk).first()
    if existing is not None:
        return {"order_id": order.pk, "created": False, "bundles_used": existing.bundles_used, "purchase_events": 0}

    counts = _bundle_counts(order)
    with transaction.atomic():
        event, created = OrderEvent.objects.get_or_create(
            order=order,
            defaults={
                "revenue": order.total or Decimal("0.00"),
                "bundle_discount": order.discount_total or Decimal("0.00"),
                "bundles_used": sum(counts.values()),
            },
        )
        if not created:
            return {"order_id": order.pk, "created": False, "bundles_used": event.bundles_used, "purchase_events": 0}
        OfferEvent.objects.bulk_create(
            [
                OfferEvent(kind=OfferEvent.PURCHASE, campaign_id=cid, order=order, customer_id=order.customer_id,
                           session_key=order.session_key, quantity=count, created_at=order.placed_at,
                           experiment_group=order.experiment_group)
                for cid, count in sorted(counts.items())
            ],
            ignore_conflicts=True,
        )
    return {"order_id": order.pk, "created": True, "bundles_used": event.bundles_used, "purchase_events": len(counts)}


def offer_event_add_to_cart(*, campaign_id: int, session_key: str, quantity: int = 1, customer=None,
                            experiment_group: str = ""):
    """Record that a shopper added a bundle to the cart, through the outbox.

    Writes an ``offer_event`` ``OutboxEvent`` in the caller's transaction (one
    INSERT); its handler writes the ``OfferEvent`` (kind ``add_to_cart``)
    exactly once after commit, also when the broker is down at that moment
    (``services.outbox.offer_event_record``).

    Args:
        campaign_id: the live campaign's primary key.
        session_key: the shopper's session key.
        quantity: bundles added (>= 1).
        customer: the known ``Customer`` or None.
        experiment_group: the shopper's holdout-experiment group.

    Returns:
        the ``OutboxEvent``.
    """
    from .outbox import offer_event_record

    return offer_event_record(kind=OfferEvent.ADD_TO_CART, campaign_id=campaign_id, session_key=session_key,
                              quantity=quantity, customer_id=getattr(customer, "pk", None),
                              experiment_group=experiment_group)


IMPRESSION_COLUMNS = ("kind", "campaign", "customer", "session_key", "order", "quantity", "experiment_group",
                      "simulated", "created_at", "event_id")


def impressions_insert(connection, rows: list[OfferEvent], *, fast_commit: bool = False) -> int:
    """``INSERT INTO offerevent (...) VALUES (...), ... ON CONFLICT DO NOTHING``; returns the rows inserted.

    Rows whose ``event_id`` is already stored are skipped (that is what makes
    draining the impression buffer idempotent). One statement per up to 1,000
    rows (fewer when the database limits query parameters), so a product
    page's rows are one round trip.

    With ``fast_commit`` on PostgreSQL, outside any transaction and with
    client-side parameter binding (psycopg2, or psycopg 3 with Django's default
    ``server_side_binding=False``), the statement is sent as ONE simple query
    ``SET LOCAL synchronous_commit TO off; INSERT ...``: several statements in
    one simple-protocol query run as one implicit transaction, so ``SET
    LOCAL`` applies to this insert's commit only (it returns without waiting
    for the WAL flush) and the connection keeps the server's durable setting
    for everything after it.

    Args:
        connection: a Django database connection (PostgreSQL or SQLite >= 3.24).
        rows: unsaved ``OfferEvent`` instances.
        fast_commit: see above; ignored inside a transaction (the rows then share its durability).

    Returns:
        number of rows inserted (``cursor.rowcount`` summed; rows skipped as already present are not counted).

    Raises:
        django.db.IntegrityError: e.g. a campaign that no longer exists (foreign key).
    """
    if not rows:
        return 0
    fields = [OfferEvent._meta.get_field(name) for name in IMPRESSION_COLUMNS]
    table = connection.ops.quote_name(OfferEvent._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    max_params = connection.features.max_query_params or 65535
    per_statement = max(1, min(1000, max_params // len(fields)))
    prefix = ""
    if fast_commit and connection.vendor == "postgresql" and not connection.in_atomic_block \
            and not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        prefix = "SET LOCAL synchronous_commit TO off; "
    inserted = 0
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start:start + per_statement]
            params = []
            for row in chunk:
                params.extend(f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields)
            cursor.execute(f"{prefix}INSERT INTO {table} ({columns}) VALUES {', '.join([placeholders] * len(chunk))} "
                           f"ON CONFLICT DO NOTHING", params)
            inserted += max(cursor.rowcount, 0)
    return inserted


def offer_impressions_record(*, campaign_ids, session_key: str, experiment_group: str, customer=None) -> int:
    """Record that offers were shown (treatment) or would have been shown (holdout): one RPUSH to Redis.

    Cheap by design for the product page: no read, no database write. With
    the impression buffer on (``SHOP_BUNDLES_IMPRESSION_BUFFER_URL``, by
    default the Celery broker when it is Redis) the page's impressions
    become one message ``RPUSH``ed to a Redis list
    (``services.impression_buffer``: one round trip, about 0.1-0.2 ms on
    localhost); the ``drain_impression_buffer`` task (beat, every 5 s) stores
    them as ``OfferEvent`` rows, idempotently. So the rows reach the database
    up to one drain interval later; readers that need them at once drain
    first (``impression_buffer_drain``).

    Fallback: when the buffer is off (``""``), paused by its circuit breaker
    after a Redis error, or the push fails now (connection refused, 0.1 s
    timeout), the rows are written to the database directly as before the
    buffer existed, so the page never fails and no impression is lost: one
    ``SET LOCAL synchronous_commit TO off; INSERT ...`` round trip
    (:func:`impressions_insert` with ``fast_commit``; a server crash can lose
    the last ~600 ms of such rows). After a failed push the rows carry the
    message's event ids (``ON CONFLICT DO NOTHING``), so a push that timed
    out but did reach Redis is not stored twice when drained. Inside an outer
    transaction a direct write joins it; a buffered message does not roll
    back with it (the offer was shown either way).

    Args:
        campaign_ids: ids of the live offers on the page (the holdout's hidden ones too).
        session_key: the shopper's session key (at most 64 characters).
        experiment_group: ``treatment`` or ``holdout``.
        customer: the known ``Customer`` or None.

    Returns:
        number of impression rows recorded (buffered or written): ``len(campaign_ids)``.
    """
    from . import impression_buffer

    campaign_ids = [int(c) for c in campaign_ids]
    if not campaign_ids:
        return 0
    now = timezone.now()
    customer_id = getattr(customer, "pk", None)
    event_ids = [None] * len(campaign_ids)
    if app_settings.impression_buffer_url() and not impression_buffer.buffer_paused():
        message_id = uuid.uuid4()
        message = impression_buffer.message_encode(
            message_id=message_id, created_at=now, session_key=session_key or "",
            experiment_group=experiment_group, customer_id=customer_id, campaign_ids=campaign_ids)
        if impression_buffer.impression_buffer_push(message):
            return len(campaign_ids)
        event_ids = [impression_buffer.row_event_id(message_id, i) for i in range(len(campaign_ids))]
    rows = [OfferEvent(kind=OfferEvent.IMPRESSION, campaign_id=cid, session_key=session_key or "",
                       experiment_group=experiment_group, customer_id=customer_id, created_at=now, event_id=eid)
            for cid, eid in zip(campaign_ids, event_ids)]
    impressions_insert(connections[router.db_for_write(OfferEvent)], rows, fast_commit=True)
    return len(rows)
