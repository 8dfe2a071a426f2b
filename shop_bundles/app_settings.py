"""``SHOP_BUNDLES_*`` settings with their documented defaults.

Read them through the functions here so tests can override settings.

SHOP_BUNDLES_ARTIFACT_DIR        directory for trained models (default ``var/models``).
SHOP_BUNDLES_EXCLUDED_DEPARTMENTS departments never mined for bundles (default fuel, coupons).
SHOP_BUNDLES_NON_PRODUCT_CODES   SKUs that are not products in CSV exports (postage, manual, bank charges...).
SHOP_BUNDLES_MAX_SUGGESTIONS     how many pending suggestions one scoring run writes at most.
SHOP_BUNDLES_MIN_ANCHOR_BASKETS  an anchor needs this many training baskets to be scored.
SHOP_BUNDLES_DEFAULT_DISCOUNT_PERCENT  discount given to a campaign when staff don't change it.
SHOP_BUNDLES_CAMPAIGN_DAYS       default campaign length in days.
SHOP_BUNDLES_IMPORT_MAX_BYTES    CSV files larger than this are refused.
"""
from decimal import Decimal

from django.conf import settings

DEFAULTS = {
    "EXCLUDED_DEPARTMENTS": ("FUEL", "COUPON", "KIOSK-GAS", "MISCELLANEOUS", "POSTAL CENTER"),
    "NON_PRODUCT_CODES": ("POST", "DOT", "M", "B", "C2", "CRUK", "D", "S", "BANK CHARGES", "AMAZONFEE", "PADS"),
    "MAX_SUGGESTIONS": 5000,
    "MIN_ANCHOR_BASKETS": 20,
    "DEFAULT_DISCOUNT_PERCENT": Decimal("10.00"),
    "CAMPAIGN_DAYS": 28,
    "IMPORT_MAX_BYTES": 2 * 1024 ** 3,
}


def get(name: str):
    """Return ``settings.SHOP_BUNDLES_<name>`` or the default above.

    Raises:
        KeyError: if ``name`` is not a known setting.
    """
    return getattr(settings, f"SHOP_BUNDLES_{name}", DEFAULTS[name])


def artifact_dir() -> str:
    """Directory where model artifacts are written (str path)."""
    return getattr(settings, "SHOP_BUNDLES_ARTIFACT_DIR")
