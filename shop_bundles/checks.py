"""Django system checks for the plugin's settings (``manage.py check``; run at server start too)."""
from __future__ import annotations

from django.core import checks
from django.utils.module_loading import import_string

from . import app_settings


@checks.register(checks.Tags.compatibility)
def customer_resolver_check(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """``SHOP_BUNDLES_CUSTOMER_RESOLVER`` must name an importable callable (error ``shop_bundles.E001``).

    Without this, a mistyped path would pass start-up and fail every storefront
    request with a 500.
    """
    path = app_settings.get("CUSTOMER_RESOLVER")
    if not path:
        return []
    try:
        resolver = import_string(str(path))
    except ImportError as exc:
        return [checks.Error(f"SHOP_BUNDLES_CUSTOMER_RESOLVER: cannot import {path!r} ({exc}).",
                             hint="Give the dotted path of a callable resolver(request) -> customer id or None, "
                                  "e.g. shop_bundles.selectors.customers.customer_by_user_email.",
                             id="shop_bundles.E001")]
    if not callable(resolver):
        return [checks.Error(f"SHOP_BUNDLES_CUSTOMER_RESOLVER: {path!r} is not callable.", id="shop_bundles.E001")]
    return []
