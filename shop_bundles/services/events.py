"""Recording what happened after a storefront order: the order event and offer events."""
from __future__ import annotations

from decimal import Decimal

from django.db import connections, router, transaction
from django.db.models import Prefetch
from django.utils import timezone

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
                      "simulated", "created_at")


def _impressions_insert_one_round_trip(connection, rows: list[OfferEvent]) -> None:
    """``SET LOCAL synchronous_commit TO off; INSERT ... VALUES ...`` sent as ONE simple query (PostgreSQL).

    Several statements in one simple-protocol query run as one implicit
    transaction, so ``SET LOCAL`` applies to this INSERT's commit only, and
    the whole write is one round trip, like the plain autocommit INSERT it
    replaces. Needs client-side parameter binding (psycopg2, or psycopg 3
    with Django's default ``server_side_binding=False``).
    """
    fields = [OfferEvent._meta.get_field(name) for name in IMPRESSION_COLUMNS]
    table = connection.ops.quote_name(OfferEvent._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = []
    for row in rows:
        params.extend(f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields)
    sql = (f"SET LOCAL synchronous_commit TO off; "
           f"INSERT INTO {table} ({columns}) VALUES {', '.join([placeholders] * len(rows))}")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def offer_impressions_record(*, campaign_ids, session_key: str, experiment_group: str, customer=None) -> int:
    """Record that offers were shown (treatment) or would have been shown (holdout): one INSERT, one round trip.

    Cheap by design for the product page: no read, one ``INSERT ... VALUES``
    with a row per campaign; aggregation happens later (the experiment
    dashboard's queries and Celery tasks). On PostgreSQL, outside any
    transaction, the INSERT is preceded by ``SET LOCAL synchronous_commit TO
    off`` in the same query string (one implicit transaction, one round
    trip): the commit returns without waiting for the WAL flush to disk,
    which was most of what recording used to add to the page (measured in
    ``benchmarks/impression_overhead.py``). The trade-off, accepted for
    impressions only: after a crash of the database server (not of the web
    process) the impressions committed in the last ``3 x wal_writer_delay``
    (default 600 ms) can be lost; the database stays consistent, and orders,
    order lines, stock and the outbox keep the server's durable
    ``synchronous_commit`` because the setting is ``LOCAL`` to this
    transaction. Inside an outer transaction (``ATOMIC_REQUESTS``, tests) the
    rows are written in that transaction with its durability, never changing it.

    Args:
        campaign_ids: ids of the live offers on the page (the holdout's hidden ones too).
        session_key: the shopper's session key.
        experiment_group: ``treatment`` or ``holdout``.
        customer: the known ``Customer`` or None.

    Returns:
        number of impression rows written.
    """
    now = timezone.now()
    rows = [OfferEvent(kind=OfferEvent.IMPRESSION, campaign_id=cid, session_key=session_key or "",
                       experiment_group=experiment_group, customer=customer, created_at=now)
            for cid in campaign_ids]
    if not rows:
        return 0
    using = router.db_for_write(OfferEvent)
    connection = connections[using]
    client_side_binding = not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
    if connection.vendor == "postgresql" and not connection.in_atomic_block and client_side_binding:
        _impressions_insert_one_round_trip(connection, rows)
    else:
        OfferEvent.objects.using(using).bulk_create(rows)
    return len(rows)
