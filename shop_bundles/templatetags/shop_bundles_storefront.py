"""Storefront template tags: ``{% load shop_bundles_storefront %}``.

* ``{{ amount|money }}`` formats a Decimal in the shop currency (``SHOP_BUNDLES_CURRENCY``).
* ``{% cart_count %}`` units in the session cart (no database query).
* ``{% shopper_store as store %}`` the shopper's store id, chosen or usual ("" when none).
* ``{% bundle_offers product %}`` renders the "Frequently bought together"
  block for a product, so a shop can drop the offers into its own product page.
"""
from decimal import Decimal, InvalidOperation

from django import template
from django.conf import settings

from ..selectors.experiment import HOLDOUT, request_group
from ..storefront.cart import SessionCart
from ..storefront.offers import page_offers, product_offers_shown
from ..storefront.pricing import quantize_money
from ..storefront.stores import shopper_store as _shopper_store

register = template.Library()

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


@register.filter
def money(value) -> str:
    """Format an amount as ``$12.50`` (currency from ``SHOP_BUNDLES_CURRENCY``, half-up cents).

    Non-numeric values render as an empty string.
    """
    try:
        amount = quantize_money(Decimal(str(value)))
    except (InvalidOperation, TypeError, ValueError):
        return ""
    code = getattr(settings, "SHOP_BUNDLES_CURRENCY", "USD")
    symbol = SYMBOLS.get(code)
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{abs(amount):,.2f}" if symbol else f"{sign}{abs(amount):,.2f} {code}"


@register.simple_tag(takes_context=True)
def cart_count(context) -> int:
    """Units in the session cart of the current request (0 without a request)."""
    request = context.get("request")
    if request is None or not hasattr(request, "session"):
        return 0
    return SessionCart(request.session).count()


@register.simple_tag(takes_context=True)
def shopper_store(context) -> str:
    """The current shopper's store id: chosen on the store page, else a signed-in shopper's usual
    store (``storefront.stores.shopper_store``), else "" (also without a request)."""
    request = context.get("request")
    return _shopper_store(request) if request is not None else ""


@register.inclusion_tag("shop_bundles/storefront/_offers.html", takes_context=True)
def bundle_offers(context, product, offers=None):
    """The "Frequently bought together" block for ``product``.

    Args:
        product: a ``Product``.
        offers: offers already selected and recorded by the view (the
            storefront's product page); None selects them here with
            ``storefront.offers.page_offers`` (one to four queries; ordered for
            the shopper's store) and records
            the impressions exactly as the storefront view does
            (``services.events.offer_impressions_record``: one RPUSH, the
            holdout's hidden offers included), so a shop that drops the tag
            into its own product page feeds the experiment too.
    """
    request = context.get("request")
    if offers is None:
        if request is not None and hasattr(request, "session"):
            return {"product": product, "offers": product_offers_shown(request, product), "request": request,
                    "csrf_token": context.get("csrf_token")}
        offers = page_offers(product)
    if request is not None and request_group(request) == HOLDOUT:
        offers = []  # holdout shoppers never see offers
    return {"product": product, "offers": offers, "request": request,
            "csrf_token": context.get("csrf_token")}
