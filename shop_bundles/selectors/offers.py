"""Reads for bundle offers: which campaigns are live, and the offers shown on a product page.

A campaign is *live* at ``now`` when its status is ``active``,
``starts_at <= now < ends_at`` (or it has no end), and every one of its items
is an active product with ``stock > 0``. Prices always come from the
catalogue (``Product.price``) and are priced by ``storefront.pricing`` so the
product page, the cart and the checkout agree to the cent.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Iterable

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet
from django.utils import timezone

from ..models import BundleCampaign, BundleCampaignItem, BundleCampaignStore, OfferStoreScore, Product
from ..storefront.pricing import CampaignSpec, bundle_price, bundle_regular_price, is_no_discount


def live_campaigns(*, now: datetime | None = None, store_id: str | None = None) -> QuerySet[BundleCampaign]:
    """Campaigns live at ``now`` (default: the current time), for a shopper in ``store_id``; items not yet loaded.

    The "no unavailable item" rule is a correlated ``NOT EXISTS`` (an
    anti-join probing ``bundlecampaignitem(campaign_id)`` and the product's
    primary key per candidate campaign), not ``id NOT IN (items of every
    inactive or out-of-stock product)``: the latter made PostgreSQL read the
    whole product table (about 92,000 rows on the Complete Journey data) on
    every product page, about 20 ms, because without statistics on the small
    campaign tables it chose a hash join over all products (see
    ``benchmarks/offers_query_plan.py``).

    Store limits (``BundleCampaignStore``): a campaign limited to some stores
    is live only for a shopper in one of them; two more correlated
    ``EXISTS`` probes on ``bundlecampaignstore(campaign_id, store_id)``.

    Args:
        now: an aware datetime; None means ``timezone.now()``.
        store_id: the shopper's store; "" = no store chosen (only campaigns
            without store limits); None = any store (staff views, reports:
            no store filter).

    Returns:
        QuerySet of ``BundleCampaign``: status active, inside its window, and
        no item whose product is inactive, out of stock (``stock <= 0``) or unpriced
        (``price <= 0``: not for sale); with ``store_id`` given, no store
        limits or a limit to that store.
    """
    now = now or timezone.now()
    unavailable = BundleCampaignItem.objects.filter(campaign_id=OuterRef("pk")).filter(
        Q(product__active=False) | Q(product__stock__lte=0) | Q(product__price__lte=0))
    qs = (
        BundleCampaign.objects.filter(status=BundleCampaign.ACTIVE, starts_at__lte=now)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        .filter(~Exists(unavailable))
    )
    if store_id is not None:
        limits = BundleCampaignStore.objects.filter(campaign_id=OuterRef("pk"))
        qs = qs.filter(~Exists(limits) | Exists(limits.filter(store_id=store_id)))
    return qs


def _with_items(queryset: QuerySet[BundleCampaign]) -> QuerySet[BundleCampaign]:
    """Prefetch items (ordered by position) with their products: one extra query in total."""
    items = BundleCampaignItem.objects.select_related("product").order_by("position", "id")
    return queryset.prefetch_related(Prefetch("items", queryset=items))


def live_campaigns_within(product_ids: Iterable[int], *, now: datetime | None = None,
                          store_id: str | None = None) -> list[BundleCampaign]:
    """Live campaigns all of whose products are among ``product_ids`` (the cart's products).

    Two queries whatever the cart size (campaigns, then items with products).

    Args:
        product_ids: primary keys of the products in the cart.
        now: aware datetime; None means now.
        store_id: the shopper's store as for :func:`live_campaigns` ("" none, None any).

    Returns:
        list of ``BundleCampaign`` with ``items`` (and each item's ``product``) prefetched.
    """
    ids = list(set(product_ids))
    if not ids:
        return []
    outside = BundleCampaignItem.objects.exclude(product_id__in=ids)
    touching = BundleCampaignItem.objects.filter(product_id__in=ids)
    qs = (
        live_campaigns(now=now, store_id=store_id)
        .filter(id__in=touching.values("campaign_id"))
        .exclude(id__in=outside.values("campaign_id"))
        .order_by("id")
    )
    return list(_with_items(qs))


def campaign_spec(campaign: BundleCampaign) -> CampaignSpec:
    """The pricing engine's view of a campaign (uses the prefetched ``items``).

    Returns:
        ``CampaignSpec`` with ``(product_id, units_per_bundle)`` items in position order.
    """
    return CampaignSpec(
        campaign_id=campaign.pk,
        discount_type=campaign.discount_type,
        discount_value=Decimal(campaign.discount_value),
        items=tuple((item.product_id, item.quantity) for item in campaign.items.all()),
        name=campaign.name,
    )


@dataclass(frozen=True)
class OfferItem:
    """One product of an offer: the product, units per bundle, catalogue unit price and line amount."""

    product: Product
    quantity: int
    unit_price: Decimal

    @property
    def amount(self) -> Decimal:
        """``quantity * unit_price`` (Decimal)."""
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class Offer:
    """A live bundle offer as shown to a shopper.

    Attributes:
        campaign: the ``BundleCampaign``.
        items: ``OfferItem`` list in campaign position order.
        regular_total: the bundle's regular price (Decimal, sum of item amounts).
        bundle_price: what one bundle costs (Decimal, ``regular_total - saving``).
        saving: discount on one bundle, rounded once half-up to cents, never
            negative and never above ``regular_total``.
        attach_rate: share of baskets with the page's product that hold the
            offer's other items, in the shopper's store (shrunk towards the
            chain-wide rate) when it has its own ``OfferStoreScore`` row, else
            chain-wide; None when the offer has not been scored yet.
        score: the model's chain-wide 0..1 score of the offer on the page
            (None when not scored yet).
        store_id: the store ``attach_rate`` is for ("" = chain-wide or not scored).
        store_co_purchase_count: baskets of that store holding all the
            offer's items (None unless ``store_id``).
    """

    campaign: BundleCampaign
    items: tuple[OfferItem, ...]
    regular_total: Decimal
    bundle_price: Decimal
    saving: Decimal
    attach_rate: float | None = None
    score: float | None = None
    store_id: str = ""
    store_co_purchase_count: int | None = None

    @property
    def campaign_id(self) -> int:
        """The campaign's primary key."""
        return self.campaign.pk

    @property
    def no_discount(self) -> bool:
        """True for a "frequently bought together" offer at the normal price (a 0 % / 0.00 campaign)."""
        return is_no_discount(self.campaign.discount_type, self.campaign.discount_value)

    @property
    def shown(self) -> bool:
        """Whether the storefront shows it: it saves the shopper money without giving the bundle away
        (bundle price above 0.00: a shelf price cut can leave a fixed discount at or above the new
        total until the campaign is paused), or it is a no-discount offer."""
        return bool(self.items) and ((self.saving > 0 and self.bundle_price > 0) or self.no_discount)

    @property
    def saving_percent(self) -> Decimal:
        """Saving as a percentage of the regular total, rounded to a whole percent (display only)."""
        if not self.regular_total:
            return Decimal("0")
        return (self.saving * 100 / self.regular_total).quantize(Decimal("1"))


def offer_from_campaign(campaign: BundleCampaign) -> Offer:
    """Build an ``Offer`` from a campaign with prefetched ``items__product``."""
    items = tuple(OfferItem(product=i.product, quantity=i.quantity, unit_price=i.product.price)
                  for i in campaign.items.all())
    regular = bundle_regular_price(((i.product.pk, i.quantity) for i in items),
                                   {i.product.pk: i.unit_price for i in items})
    price, saving = bundle_price(campaign.discount_type, Decimal(campaign.discount_value), regular)
    return Offer(campaign=campaign, items=items, regular_total=regular, bundle_price=price, saving=saving)


def offers_for_product(product: Product, *, store_id: str = "", now: datetime | None = None) -> list[Offer]:
    """Live offers that contain ``product``, in the order the product page shows them.

    The product page's hot path. First the ids of the campaigns holding the
    product (one index scan on ``bundlecampaignitem(product_id)``); most
    products are in no campaign and that is the only query. Otherwise the
    live ones among those ids (primary-key lookups, so the plan does not
    depend on table statistics), their items with products, and their
    ``OfferStoreScore`` rows for this page, chain-wide and in the store (one
    index scan on ``offerstorescore(product_id, store_id, campaign_id)``):
    four queries whatever the number of offers.

    Order: offers that save money first, then no-discount campaigns (0 % or
    0.00 off: the discount optimiser's choice when no discount earns more
    than it gives away, shown as "frequently bought together" at the normal
    price). Within each group, by attach rate, highest first: the share of
    baskets with this product that hold the offer's other items, in the
    shopper's store (``OfferStoreScore`` row of ``store_id``: the store's
    share shrunk towards the chain-wide one with 10 pseudo-baskets) else
    chain-wide (row ``""``). Ties by the model's chain-wide score. Offers not
    scored yet (approved since the last ``rank_offers_by_store`` run) come
    after the scored ones, by saving (descending); last key the campaign id.
    The attach rate, not the model's store-aware score, because it predicts
    better which offer a basket takes whole (``benchmarks/store_offer_ranking.py``,
    ``docs/quality.md``).

    Args:
        product: a ``Product`` (its pk is used).
        store_id: the shopper's chosen store ("" = none). Campaigns limited
            to other stores (``BundleCampaignStore``) are left out; with no
            store chosen, every store-limited campaign is.
        now: aware datetime; None means ``timezone.now()``.

    Returns:
        list of ``Offer`` with ``attach_rate`` / ``score`` / ``store_id`` /
        ``store_co_purchase_count`` filled from the rows used. Campaigns
        that would give no saving (e.g. a fixed price at or above the regular
        price) are left out, except no-discount campaigns. Empty when the
        product itself is inactive or out of stock.
    """
    ids = list(BundleCampaignItem.objects.filter(product_id=product.pk).values_list("campaign_id", flat=True))
    if not ids:
        return []
    qs = live_campaigns(now=now, store_id=store_id).filter(pk__in=ids).order_by("id")
    offers = [offer_from_campaign(c) for c in _with_items(qs)]
    offers = [o for o in offers if o.shown]
    if offers:
        rows: dict[tuple[int, str], tuple[float, float, int]] = {
            (cid, sid): (rate, score, n) for cid, sid, rate, score, n in OfferStoreScore.objects.filter(
                product_id=product.pk, store_id__in={store_id, ""}, campaign_id__in=[o.campaign_id for o in offers],
            ).values_list("campaign_id", "store_id", "attach_rate", "score", "co_purchase_count")}
        ranked = []
        for o in offers:
            chain = rows.get((o.campaign_id, ""))
            store = rows.get((o.campaign_id, store_id)) if store_id else None
            if store is not None:
                o = replace(o, attach_rate=store[0], score=chain[1] if chain else None, store_id=store_id,
                            store_co_purchase_count=store[2])
            elif chain is not None:
                o = replace(o, attach_rate=chain[0], score=chain[1])
            ranked.append(o)
        offers = ranked
    offers.sort(key=lambda o: (o.no_discount, o.attach_rate is None, -(o.attach_rate or 0.0), -(o.score or 0.0),
                               -o.saving, o.campaign_id))
    return offers


def live_offer(campaign_id: int, *, now: datetime | None = None, store_id: str | None = None) -> Offer | None:
    """The offer of one campaign if it is live now (for a shopper in ``store_id``, as in
    :func:`live_campaigns`; None = any store), else None (two queries)."""
    campaign = _with_items(live_campaigns(now=now, store_id=store_id).filter(pk=campaign_id)).first()
    if campaign is None:
        return None
    offer = offer_from_campaign(campaign)
    return offer if offer.shown else None
