"""The signed-in shopper: who the host shop says is browsing, and the store they usually shop at.

The plugin does not run the shop's accounts. A shop that knows its shoppers
(a login, a loyalty card) names a resolver in ``SHOP_BUNDLES_CUSTOMER_RESOLVER``:
the dotted path of a callable ``resolver(request) -> str | None`` that returns
the signed-in shopper's customer id (``Customer.external_id``, the id of the
shop's order history), or None/"" for an anonymous visitor. With it:

* the product page orders offers for the shopper's **usual store** (the store
  of most of their orders) until they choose one (``storefront.stores.shopper_store``);
* the checkout links the order to that customer, so it flows back as
  training data with its shopper;
* the holdout experiment assigns the shopper by customer id, so they stay in
  one group on every device (``selectors.experiment.shopper_identity``).

``customer_by_user_email`` is a ready resolver for shops whose Django users
and ``Customer`` rows share an e-mail address that the shop has verified (a
user who could type any address could otherwise link their orders to
somebody else's customer record). Unset (the default), every visitor is
anonymous, as before.
"""
from __future__ import annotations

from functools import lru_cache

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Max
from django.utils.module_loading import import_string

from .. import app_settings
from ..models import Customer, Order

_REQUEST_ATTR = "_shop_bundles_customer_id"


@lru_cache(maxsize=8)
def _resolver(path: str):
    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"SHOP_BUNDLES_CUSTOMER_RESOLVER: cannot import {path!r} ({exc})") from exc


def request_customer_id(request) -> str:
    """The signed-in shopper's customer id from ``SHOP_BUNDLES_CUSTOMER_RESOLVER`` ("" when anonymous).

    The resolver runs at most once per request (the answer is kept on the request).

    Raises:
        ImproperlyConfigured: the setting names something that cannot be imported.
    """
    if request is None:
        return ""
    cached = getattr(request, _REQUEST_ATTR, None)
    if cached is not None:
        return cached
    path = app_settings.get("CUSTOMER_RESOLVER")
    value = str(_resolver(path)(request) or "").strip() if path else ""
    try:
        setattr(request, _REQUEST_ATTR, value)
    except AttributeError:  # a request object that takes no attributes: resolve again next time
        pass
    return value


def customer_by_user_email(request) -> str | None:
    """Resolver: the ``Customer`` whose e-mail is the logged-in user's (case-insensitive), else None.

    One ``SELECT`` on ``Customer.email`` per request; when several
    customers share the address, the oldest (lowest primary key) is taken.
    Use it only when the shop verifies its users' e-mail addresses.
    Set ``SHOP_BUNDLES_CUSTOMER_RESOLVER = "shop_bundles.selectors.customers.customer_by_user_email"``.
    """
    user = getattr(request, "user", None)
    email = (getattr(user, "email", "") or "").strip() if user is not None and user.is_authenticated else ""
    if not email:
        return None
    return (Customer.objects.filter(email__iexact=email).order_by("pk")
            .values_list("external_id", flat=True).first())


def usual_store(customer_id: str) -> str:
    """The store of most of this customer's orders ("" when none has a store, or no such customer).

    Ties go to the store of the most recent order, then the lower store id.
    Replay orders (``Order.SOURCE_SIMULATED``) are left out. One ``GROUP BY``
    over the customer's orders (``Order.customer`` is indexed).

    Args:
        customer_id: ``Customer.external_id``.

    Returns:
        the store id (str), or "".
    """
    if not customer_id:
        return ""
    row = (Order.objects.filter(customer__external_id=customer_id).exclude(store_id="")
           .exclude(source=Order.SOURCE_SIMULATED).order_by().values("store_id")
           .annotate(orders=Count("id"), last=Max("placed_at")).order_by("-orders", "-last", "store_id").first())
    return row["store_id"] if row else ""
