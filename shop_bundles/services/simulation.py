"""Replay held-out order history as shopper sessions through the real storefront (``simulate_shoppers``).

Every request goes through Django's test ``Client`` into the real URLconf,
views, session cart, pricing and ``order_place``; nothing is priced here.
Per household (a shopper, identity ``cj-<household>`` so assignment is the
real ``selectors.experiment`` hash) and per basket, in time order:

1. open the product page of every product in the real basket (records the
   impressions; holdout shoppers get no offer block);
2. for each offer shown: accept it (POST "add bundle to cart") when the real
   basket holds all its products, otherwise with probability
   ``take(d)`` of ``bundling_ml.economics`` (department slope fitted from the
   imported lines, anchored at ``SHOP_BUNDLES_BASE_TAKE_RATE``; ``d`` = the
   offer's saving / regular price) drawn from a seeded ``numpy`` RNG;
3. add the rest of the basket's units (POST add-to-cart) and check out with
   the household id.

Afterwards the order is marked ``source="simulated"`` and dated at the real
basket's time, and the session's offer events are marked ``simulated=True``
and re-dated, so replay figures never mix with live ones and never feed
training (``ml_bridge`` excludes them). Assumptions: campaigns live *now*
are the ones offered (the replay does not time-travel campaign windows);
products are topped up to the units the basket needs before each basket
(simulated inventory), inactive products are skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np
from django.conf import settings
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from .. import app_settings
from ..models import OfferEvent, Order, OrderLine, Product
from ..selectors.experiment import SHOPPER_SESSION_KEY, assignment_group
from ..selectors.offers import live_offer

OFFER_RE = re.compile(r'data-campaign="(\d+)"')


@dataclass
class SimulationReport:
    """Counts of one replay run."""

    shoppers: int = 0
    baskets: int = 0
    orders: int = 0
    page_views: int = 0
    offers_seen: int = 0
    bundles_accepted: int = 0
    accepted_by_basket: int = 0
    accepted_by_take_model: int = 0
    failed_checkouts: int = 0
    groups: dict = field(default_factory=lambda: {"treatment": 0, "holdout": 0})

    def as_dict(self) -> dict:
        """Plain dict of the counts."""
        return dict(self.__dict__)


def _aware(day: date, *, end: bool = False) -> datetime:
    return timezone.make_aware(datetime.combine(day + timedelta(days=1) if end else day, time.min))


def shoppers_simulate(*, date_from: date, date_to: date, limit: int | None = None, seed: int = 0,
                      progress: bool = False, responses: dict | None = None) -> SimulationReport:
    """Replay the imported baskets placed from ``date_from`` to ``date_to`` (inclusive) as shopper sessions.

    Args:
        date_from, date_to: local dates bounding ``Order.placed_at`` of imported orders with a customer.
        limit: replay at most this many households (shoppers), in household-id order.
        seed: seed of the RNG drawing take-model acceptances.
        progress: show a tqdm bar (baskets) on stderr.
        responses: department take responses (default: ``services.economics.department_responses_fit()``).

    Returns:
        ``SimulationReport``.
    """
    from bundling_ml.economics import response_for

    from .economics import department_responses_fit

    responses = department_responses_fit() if responses is None else responses
    base = float(app_settings.get("BASE_TAKE_RATE"))
    rng = np.random.default_rng(seed)
    orders = (Order.objects.filter(source=Order.SOURCE_IMPORT, customer__isnull=False,
                                   placed_at__gte=_aware(date_from), placed_at__lt=_aware(date_to, end=True))
              .order_by("customer__external_id", "placed_at", "pk"))
    customers = list(orders.order_by("customer__external_id").values_list("customer_id", flat=True).distinct())
    if limit is not None:
        customers = customers[:limit]
    orders = list(orders.filter(customer_id__in=customers).select_related("customer"))
    lines: dict[int, list[tuple[Product, int]]] = {}
    for line in OrderLine.objects.filter(order_id__in=[o.pk for o in orders]).select_related("product"):
        lines.setdefault(line.order_id, []).append((line.product, line.quantity))

    report = SimulationReport()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(orders), desc="simulate_shoppers", unit="basket")
    offers_cache: dict[int, tuple[frozenset, float, str] | None] = {}
    current, client = None, None
    for order in orders:
        if bar is not None:
            bar.update(1)
        if order.customer_id != current:
            current = order.customer_id
            client = Client()
            session = client.session
            session[SHOPPER_SESSION_KEY] = f"cj-{order.customer.external_id}"
            session.save()
            client.cookies[settings.SESSION_COOKIE_NAME] = session.session_key
            report.shoppers += 1
            report.groups[assignment_group(f"cj-{order.customer.external_id}")] += 1
        basket = [(p, q) for p, q in lines.get(order.pk, []) if p.active and q > 0]
        if not basket:
            continue
        report.baskets += 1
        started = timezone.now()
        in_basket = {p.pk for p, _ in basket}
        _restock(basket)
        accepted: set[int] = set()
        added: dict[int, int] = {}
        for product, _ in basket:
            response = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": product.sku}))
            report.page_views += 1
            for cid in dict.fromkeys(int(c) for c in OFFER_RE.findall(response.content.decode())):
                report.offers_seen += 1
                if cid in accepted:
                    continue
                if cid not in offers_cache:
                    offer = live_offer(cid)
                    offers_cache[cid] = None if offer is None else (
                        frozenset(i.product.pk for i in offer.items),
                        float(offer.saving / offer.regular_total) if offer.regular_total else 0.0,
                        offer.items[0].product.department)
                info = offers_cache[cid]
                if info is None:
                    continue
                items, depth, department = info
                if items <= in_basket:
                    take, why = True, "basket"
                else:
                    take = bool(rng.random() < response_for(responses, department).take(depth, base))
                    why = "model"
                if not take:
                    continue
                _restock_ids(items)
                client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": cid}), {"quantity": 1})
                accepted.add(cid)
                for pid in items:
                    added[pid] = added.get(pid, 0) + 1
                report.bundles_accepted += 1
                if why == "basket":
                    report.accepted_by_basket += 1
                else:
                    report.accepted_by_take_model += 1
        for product, qty in basket:
            rest = qty - added.get(product.pk, 0)
            if rest > 0:
                client.post(reverse("shop_bundles:cart_add", kwargs={"sku": product.sku}),
                            {"quantity": min(rest, 99)})
        response = client.post(reverse("shop_bundles:checkout"), {"customer_id": order.customer.external_id})
        session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
        placed = Order.objects.filter(source=Order.SOURCE_STOREFRONT, session_key=session_key,
                                      created_at__gte=started).order_by("-pk").first()
        if response.status_code != 302 or placed is None:
            report.failed_checkouts += 1
            continue
        Order.objects.filter(pk=placed.pk).update(source=Order.SOURCE_SIMULATED, placed_at=order.placed_at)
        OfferEvent.objects.filter(session_key=session_key, created_at__gte=started).update(
            simulated=True, created_at=order.placed_at)
        OfferEvent.objects.filter(order_id=placed.pk).update(simulated=True, created_at=order.placed_at)
        report.orders += 1
    if bar is not None:
        bar.close()
    return report


def _restock(basket) -> None:
    """Top up stock so the basket (and a bundle on top) can be bought: simulated inventory."""
    for product, qty in basket:
        Product.objects.filter(pk=product.pk, stock__lt=qty + 2).update(stock=qty + 2)


def _restock_ids(product_ids) -> None:
    Product.objects.filter(pk__in=list(product_ids), stock__lt=3).update(stock=F("stock") + 3)
