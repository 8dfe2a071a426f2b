"""The offers a product page shows, shared by the storefront view and the ``{% bundle_offers %}`` tag."""
from __future__ import annotations

from django.http import HttpRequest

from .. import app_settings
from ..models import Product
from ..selectors.experiment import HOLDOUT, request_group
from ..selectors.offers import Offer, offers_for_product
from ..services.events import offer_impressions_record
from .stores import shopper_store


def offer_look(items) -> tuple:
    """What a shopper sees of a bundle: its items' names (case-folded; the SKU when unnamed) with their units.

    Args:
        items: iterable of ``(product, quantity)`` pairs.

    Returns:
        A sorted tuple of ``(name, quantity)``; two bundles with equal looks read the same on a page
        (two SKUs of one name: sizes, private label).
    """
    return tuple(sorted(((p.name or p.sku).casefold(), int(q)) for p, q in items))


def page_offers(product: Product, *, store_id: str = "") -> list[Offer]:
    """The offers a product page lists, before the holdout and impressions: ``offers_for_product`` in its
    order, without offers that look like an earlier one to a shopper, at most ``SHOP_BUNDLES_OFFERS_PER_PAGE``.

    Two offers look alike when their products have the same names (case-insensitive) and units, as
    two SKUs of one name (sizes, private label) do: the page keeps the first and fills its places with
    other offers. ``[]`` for an unavailable product.
    """
    if not product.available:
        return []
    seen, offers = set(), []
    for offer in offers_for_product(product, store_id=store_id):
        look = offer_look((item.product, item.quantity) for item in offer.items)
        if look not in seen:
            seen.add(look)
            offers.append(offer)
    limit = app_settings.get("OFFERS_PER_PAGE")
    return offers if limit is None else offers[:int(limit)]


def product_offers_shown(request: HttpRequest, product: Product) -> list[Offer]:
    """Select ``product``'s live offers, record their impressions, and return what this shopper sees.

    The impressions (one RPUSH to the Redis impression buffer, or one INSERT
    when the buffer is off or unreachable: ``services.events.offer_impressions_record``)
    are recorded for treatment and holdout alike: the holdout's rows say what
    it would have seen. A first-time anonymous shopper gets a session so the
    impressions carry its key.

    Args:
        request: the shopper's request (with ``session``).
        product: the product of the page.

    Returns:
        The offers to render: :func:`page_offers` for the shopper's store
        (chosen, or a signed-in shopper's usual one) for the treatment group,
        ``[]`` for the holdout or an unavailable product. Impressions are
        recorded for those offers only.
    """
    offers = page_offers(product, store_id=shopper_store(request))
    if not offers:
        return []
    if not request.session.session_key:
        request.session.save()
    group = request_group(request)
    offer_impressions_record(campaign_ids=[o.campaign_id for o in offers],
                             session_key=request.session.session_key or "", experiment_group=group)
    return [] if group == HOLDOUT else offers
