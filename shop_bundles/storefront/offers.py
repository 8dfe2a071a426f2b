"""The offers a product page shows, shared by the storefront view and the ``{% bundle_offers %}`` tag."""
from __future__ import annotations

from django.http import HttpRequest

from .. import app_settings
from ..models import Product
from ..selectors.experiment import HOLDOUT, request_group
from ..selectors.offers import Offer, offers_for_product
from ..services.events import offer_impressions_record
from .stores import shopper_store


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
        The offers to render: the first ``SHOP_BUNDLES_OFFERS_PER_PAGE``
        (default 3) of ``offers_for_product(product, store_id=<the shopper's
        chosen store>)`` for the treatment group (ordered for that store),
        ``[]`` for the holdout or an unavailable product. Impressions are
        recorded for those first offers only.
    """
    offers = offers_for_product(product, store_id=shopper_store(request)) if product.available else []
    limit = app_settings.get("OFFERS_PER_PAGE")
    if limit is not None:
        offers = offers[:int(limit)]
    if not offers:
        return []
    if not request.session.session_key:
        request.session.save()
    group = request_group(request)
    offer_impressions_record(campaign_ids=[o.campaign_id for o in offers],
                             session_key=request.session.session_key or "", experiment_group=group)
    return [] if group == HOLDOUT else offers
