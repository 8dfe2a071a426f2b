"""Placing storefront orders.

``order_place`` is the only way the storefront writes an order: it locks the
products, re-prices the cart from the catalogue (``storefront.pricing``: one
half-up rounding to cents per bundle line), writes the order and its lines,
takes the units out of stock and writes an ``order_placed`` ``OutboxEvent``
in the same transaction; once it commits, the event is sent to Celery
(``handle_outbox_event``), or left for the periodic relay when the broker is
down (``services.outbox``).

Callers and their ``checkout_token``:

* the storefront checkout view: the cart page's one-time token (a POST
  without one, e.g. a script, gets no double-submit protection);
* the ``simulate_shoppers`` replay (through the checkout view): the
  deterministic ``services.simulation.replay_checkout_token`` of the source
  basket, so each replayed basket is placed once however often the replay
  runs;
* nothing else places storefront orders: orders reported by an external
  shop front (the events endpoint, ``api._apply_order_placed``) are written
  once per event id and order id, and imports by ``external_id``; tests call
  it without a token where they check other behaviour.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Mapping

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import Customer, Order, OrderLine, OutboxEvent, Product
from ..storefront.cart import cart_price
from ..storefront.pricing import quantize_money
from .outbox import outbox_dispatch_on_commit, outbox_event_add, stock_changed_record

CUSTOMER_ID_MAX_LENGTH = 64

#: Message for a product without a positive price (shown by the storefront and the checkout).
NOT_FOR_SALE = "{name} has no price yet and is not for sale."

#: Message when the checkout's total differs from the total the shopper saw (``expected_total``).
TOTAL_CHANGED = ("Prices or offers changed since you saw your cart: the total is now {total} (was {expected}). "
                 "Check your cart and place the order again.")


class OrderAlreadyPlaced(Exception):
    """The checkout token was already used: ``order`` is the order placed with it (nothing new was written)."""

    def __init__(self, order: Order):
        super().__init__(f"order {order.pk} was already placed with this checkout token")
        self.order = order


def _money(amount: Decimal) -> str:
    """An amount as the storefront shows it (``{{ amount|money }}``: currency symbol, half-up cents)."""
    from ..templatetags.shop_bundles_storefront import money  # the template layer imports services

    return money(amount)


def _placed_with(checkout_token: str | None) -> Order | None:
    """The order already placed with ``checkout_token`` (None without a token or when unused)."""
    if not checkout_token:
        return None
    return Order.objects.filter(checkout_token=checkout_token).first()


def customer_get_or_create(*, external_id: str) -> Customer:
    """The ``Customer`` with this external id, created when new.

    Args:
        external_id: the shopper's id as typed (surrounding spaces are stripped).

    Returns:
        the existing or new ``Customer``.

    Raises:
        ValidationError: when the id is empty or longer than 64 characters.
    """
    value = (external_id or "").strip()
    if not value:
        raise ValidationError("Customer id is empty.")
    if len(value) > CUSTOMER_ID_MAX_LENGTH:
        raise ValidationError(f"Customer id must be at most {CUSTOMER_ID_MAX_LENGTH} characters.")
    customer, _ = Customer.objects.get_or_create(external_id=value)
    return customer


def _quantities(cart) -> dict[int, int]:
    """``{product_id: quantity}`` from a ``SessionCart`` (``.quantities()``) or a plain mapping."""
    raw: Mapping = cart.quantities() if hasattr(cart, "quantities") else (cart or {})
    out: dict[int, int] = {}
    for pid, qty in raw.items():
        qty = int(qty)
        if qty > 0:
            out[int(pid)] = out.get(int(pid), 0) + qty
    return out


def order_place(*, cart, session_key: str | None, customer: Customer | None = None,
                now: datetime | None = None, experiment_group: str = "", store_id: str = "",
                checkout_token: str | None = None, expected_total: Decimal | None = None) -> Order:
    """Turn a cart into a storefront ``Order``.

    Inside one ``transaction.atomic`` block: the cart's products are locked
    (``SELECT ... FOR UPDATE``, in primary-key order so concurrent checkouts
    cannot deadlock), checked, and the cart is priced with the campaigns live
    at ``now``. The order stores ``subtotal``, ``discount_total`` and
    ``total`` (Decimal); each ``OrderLine`` stores the catalogue
    ``unit_price``, its share of the bundle discounts (the shares sum exactly
    to ``discount_total``) and the campaign that took most of its units.
    ``Order.campaigns`` lists every campaign used. Stock is decremented; on
    products that sold out get a ``stock_changed`` outbox event in the same
    transaction, whose handler auto-pauses their campaigns
    (``services.campaigns.campaigns_sync_product``).
    An ``order_placed`` ``OutboxEvent`` (payload ``{"order_id", "external_id"}``)
    is written in the same transaction, so it exists exactly when the order
    does. On commit only, the event is offered to the broker once
    (``outbox_dispatch``); a broker error is logged and swallowed and the
    periodic relay (``relay_outbox``) delivers it later. The handler records
    the ``OrderEvent`` exactly once.

    Args:
        cart: a ``storefront.cart.SessionCart`` or a ``{product_id: quantity}`` mapping.
        session_key: the shopper's session key ("" / None when unknown).
        customer: the known ``Customer``, or None for an anonymous shopper.
        now: aware datetime used as ``placed_at`` and for campaign windows; None means now.
        experiment_group: the shopper's holdout-experiment group, stored on the
            order; ``"holdout"`` prices the cart without bundles.
        checkout_token: the checkout form's one-time token, stored in the
            unique ``Order.checkout_token``: at most one order is placed per
            token. A token already used (a repeated submit), or used by a
            concurrent call that commits first (PostgreSQL makes the second
            insert wait for the first transaction, then fails it), raises
            ``OrderAlreadyPlaced`` with that order, and this call writes
            nothing (its transaction, stock included, is rolled back).
            None: no idempotency (see the callers in the module docstring).
        expected_total: the total the shopper was shown (Decimal). When the
            cart now prices to a different total (a price changed, a campaign
            paused or ended), nothing is written and a ``ValidationError``
            (code ``total_changed``) says the new and the old total. None: not checked.

    Returns:
        the saved ``Order`` (source ``storefront``, external id ``web-<hex>``).

    Raises:
        ValidationError: the cart is empty, or a product is gone, inactive or
            has fewer units in stock than the cart asks for (one message per product),
            or the total is not ``expected_total``.
        OrderAlreadyPlaced: ``checkout_token`` was already used.
    """
    existing = _placed_with(checkout_token)
    if existing is not None:  # a repeated submit: its cart may be empty already
        raise OrderAlreadyPlaced(existing)
    quantities = _quantities(cart)
    if not quantities:
        raise ValidationError("Your cart is empty.", code="empty_cart")
    now = now or timezone.now()
    try:
        return _order_place_atomic(quantities, session_key=session_key, customer=customer, now=now,
                                   experiment_group=experiment_group, store_id=store_id,
                                   checkout_token=checkout_token, expected_total=expected_total)
    except IntegrityError:
        # A concurrent checkout with the same token committed while this one waited on the unique
        # index; this transaction (its order, lines and stock decrement) is rolled back.
        existing = _placed_with(checkout_token)
        if existing is None:
            raise
        raise OrderAlreadyPlaced(existing) from None


def _order_place_atomic(quantities: dict[int, int], *, session_key, customer, now, experiment_group, store_id,
                        checkout_token, expected_total) -> Order:
    """``order_place``'s transaction (see there)."""
    with transaction.atomic():
        locked = Product.objects.select_for_update().filter(pk__in=list(quantities)).order_by("pk")
        products = {p.pk: p for p in locked}
        # A concurrent checkout of the same cart held these locks until it committed: its order is visible now.
        existing = _placed_with(checkout_token)
        if existing is not None:
            raise OrderAlreadyPlaced(existing)
        errors = []
        for pid, qty in quantities.items():
            product = products.get(pid)
            if product is None:
                errors.append(ValidationError("A product in your cart is no longer sold.", code="missing"))
            elif not product.active:
                errors.append(ValidationError(f"{product.name or product.sku} is no longer available.",
                                              code="inactive"))
            elif product.price <= 0:
                errors.append(ValidationError(NOT_FOR_SALE.format(name=product.name or product.sku),
                                              code="unpriced"))
            elif product.stock < qty:
                left = max(product.stock, 0)
                errors.append(ValidationError(
                    f"Only {left} of {product.name or product.sku} in stock (your cart has {qty}).",
                    code="out_of_stock"))
        if errors:
            raise ValidationError(errors)

        priced = cart_price(quantities, products=products, now=now, with_offers=experiment_group != "holdout",
                            store_id=store_id or "")
        if expected_total is not None and quantize_money(priced.total) != quantize_money(Decimal(expected_total)):
            raise ValidationError(TOTAL_CHANGED.format(total=_money(priced.total), expected=_money(expected_total)),
                                  code="total_changed")
        order = Order.objects.create(
            external_id=f"web-{uuid.uuid4().hex}",
            customer=customer,
            placed_at=now,
            source=Order.SOURCE_STOREFRONT,
            session_key=session_key or "",
            experiment_group=experiment_group or "",
            store_id=(store_id or "")[:32],
            subtotal=priced.subtotal,
            discount_total=priced.discount_total,
            total=priced.total,
            checkout_token=checkout_token or None,
        )
        OrderLine.objects.bulk_create([
            OrderLine(
                order=order,
                product_id=row.line.product_id,
                quantity=row.line.quantity,
                unit_price=row.line.unit_price,
                discount=row.line.discount,
                campaign_id=row.line.campaign_id,
            )
            for row in priced.rows
        ])
        if priced.pricing.campaign_ids:
            order.campaigns.set(priced.pricing.campaign_ids)
        for pid, qty in quantities.items():
            products[pid].stock -= qty
            products[pid].updated_at = now
        Product.objects.bulk_update(list(products.values()), ["stock", "updated_at"])
        # bulk_update sends no post_save: a stock_changed event (same transaction) for products that
        # just sold out; its handler pauses their campaigns.
        sold_out = [pid for pid in quantities if products[pid].stock <= 0]
        if sold_out:
            stock_changed_record(product_ids=sold_out, fields=["stock"], source="order")

        event = outbox_event_add(kind=OutboxEvent.ORDER_PLACED,
                                 payload={"order_id": order.pk, "external_id": order.external_id})
        outbox_dispatch_on_commit(event)
    return order
