"""``SHOP_BUNDLES_*`` settings with their documented defaults.

Read them through the functions here so tests can override settings.

SHOP_BUNDLES_ARTIFACT_DIR        directory for trained models (default ``var/models``).
SHOP_BUNDLES_EXCLUDED_DEPARTMENTS departments never mined for bundles (default fuel, coupons).
SHOP_BUNDLES_NON_PRODUCT_CODES   SKUs that are not products in CSV exports (postage, manual, bank charges...).
SHOP_BUNDLES_MAX_SUGGESTIONS     how many pending suggestions one scoring run writes at most.
SHOP_BUNDLES_STORE_SUGGESTIONS   store-specific suggestions (pairs that sell together in some stores far more
                                 than across the shop, ``bundling_ml.pipeline.store_specific_bundles``) one
                                 scoring run adds at most, and the most kept pending (default 100; 0 = none).
SHOP_BUNDLES_MIN_ANCHOR_BASKETS  an anchor needs this many training baskets to be scored.
SHOP_BUNDLES_DEFAULT_DISCOUNT_PERCENT  discount given to a campaign when staff don't change it.
SHOP_BUNDLES_CAMPAIGN_DAYS       default campaign length in days.
SHOP_BUNDLES_IMPORT_MAX_BYTES    CSV files larger than this are refused.
SHOP_BUNDLES_BACKTEST_SAMPLE_BASKETS  test baskets sampled (seed 0) for a retrain's backtest, as in the
                                 offline protocol (default 3000; None = every test basket).
SHOP_BUNDLES_ANONYMOUS_ENSEMBLE  anonymous rankers (seeds 0, 1, ...) averaged into the product-page model
                                 (default 3; 1 trains about a third faster and scores ~0.001 NDCG@10 lower).
SHOP_BUNDLES_DEFAULT_MARGIN_RATES  {department: margin rate} used when a product has no cost:
                                 cost = price * (1 - rate); key "*" is the fallback (default 0.30).
SHOP_BUNDLES_MIN_MARGIN_RATE     margin floor: a bundle never sells below cost * (1 + rate) (default 0.05).
SHOP_BUNDLES_DISCOUNT_GRID       discount depths the optimiser tries (default 0, 0.05, ..., 0.30).
SHOP_BUNDLES_BASE_TAKE_RATE      incremental take of a shown offer with no discount (default 0.02).
SHOP_BUNDLES_HOLDOUT_SHARE       share of shoppers in the holdout group that never sees offers (default 0.10).
SHOP_BUNDLES_EXPERIMENT_SALT     per-experiment salt of the assignment hash (default "bundles-2026-1");
                                 change it to start a new experiment with a fresh split.
SHOP_BUNDLES_IMPRESSION_BUFFER_URL  Redis URL of the impression buffer (``services.impression_buffer``).
                                 Unset/None: the Celery broker URL when it is ``redis://`` or ``rediss://``,
                                 else "". "" = no buffer: the product page writes impressions to the
                                 database directly.
SHOP_BUNDLES_IMPRESSION_BUFFER_KEY  Redis list of buffered impression messages (default
                                 ``shop_bundles:impressions``); malformed messages go to ``<key>:dead``.
SHOP_BUNDLES_IMPRESSION_BUFFER_TIMEOUT  socket connect and read timeout of the product page's RPUSH, in
                                 seconds (default 0.1).
SHOP_BUNDLES_IMPRESSION_BUFFER_PAUSE  seconds the product page skips Redis after a Redis error (circuit
                                 breaker; default 10), writing to the database directly meanwhile.
SHOP_BUNDLES_IMPRESSION_BUFFER_MAX_LENGTH  messages the buffer may hold; a push that finds it longer (the
                                 drain is not running) pauses the buffer as an error does (default 1,000,000).
SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD  the storefront checkout shows and accepts a free-text customer id for
                                 every shopper (default False: only logged-in staff get the field; any
                                 other posted ``customer_id`` is ignored). ``simulate_shoppers`` turns it
                                 on for its replay.
SHOP_BUNDLES_CUSTOMER_RESOLVER  dotted path of ``resolver(request) -> str | None``: the signed-in shopper's
                                 customer id (``Customer.external_id``), None when anonymous (default None:
                                 every visitor is anonymous). With it the product page orders offers for
                                 the shopper's usual store until they choose one, the checkout links the
                                 order to the customer, and the holdout split follows the customer id.
                                 Ready-made: ``shop_bundles.selectors.customers.customer_by_user_email``.
SHOP_BUNDLES_OFFERS_PER_PAGE    most offers a product page shows (default 3), the best first in the order of
                                 ``selectors.offers.offers_for_product``; None shows all.
SHOP_BUNDLES_MIN_STORE_BASKETS  a store gets its own ordering of a product page's offers when the product
                                 sold there in at least this many baskets (default 5; fewer: the
                                 chain-wide ordering).
SHOP_BUNDLES_HISTORY_UNTIL      a date (``YYYY-MM-DD``, shop local midnight) or None (default): order lines
                                 placed on or after it are left out of training, scoring, the per-store
                                 offer ranking and the take-rate fit, so ``simulate_shoppers`` can replay
                                 the weeks from that date out of sample.
SHOP_BUNDLES_IMPRESSION_DRAIN_BATCH  messages per LRANGE / INSERT / LTRIM step of the drain (default 1000).
SHOP_BUNDLES_IMPRESSION_DRAIN_MAX   messages one ``drain_impression_buffer`` task run drains at most
                                 (default 50,000; the next beat run continues).
"""
from decimal import Decimal

from django.conf import settings

DEFAULTS = {
    "EXCLUDED_DEPARTMENTS": ("FUEL", "COUPON", "KIOSK-GAS", "MISCELLANEOUS", "POSTAL CENTER"),
    "NON_PRODUCT_CODES": ("POST", "DOT", "M", "B", "C2", "CRUK", "D", "S", "BANK CHARGES", "AMAZONFEE", "PADS"),
    "MAX_SUGGESTIONS": 5000,
    "STORE_SUGGESTIONS": 100,
    "MIN_ANCHOR_BASKETS": 20,
    "DEFAULT_DISCOUNT_PERCENT": Decimal("10.00"),
    "CAMPAIGN_DAYS": 28,
    "IMPORT_MAX_BYTES": 2 * 1024 ** 3,
    "BACKTEST_SAMPLE_BASKETS": 3000,
    "ANONYMOUS_ENSEMBLE": 3,
    "DEFAULT_MARGIN_RATES": {"*": 0.30},
    "MIN_MARGIN_RATE": 0.05,
    "DISCOUNT_GRID": (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30),
    "BASE_TAKE_RATE": 0.02,
    "HOLDOUT_SHARE": 0.10,
    "EXPERIMENT_SALT": "bundles-2026-1",
    "IMPRESSION_BUFFER_KEY": "shop_bundles:impressions",
    "IMPRESSION_BUFFER_TIMEOUT": 0.1,
    "IMPRESSION_BUFFER_PAUSE": 10.0,
    "IMPRESSION_BUFFER_MAX_LENGTH": 1_000_000,
    "IMPRESSION_DRAIN_BATCH": 1000,
    "IMPRESSION_DRAIN_MAX": 50_000,
    "CHECKOUT_CUSTOMER_FIELD": False,
    "CUSTOMER_RESOLVER": None,
    "MIN_STORE_BASKETS": 5,
    "OFFERS_PER_PAGE": 3,
    "HISTORY_UNTIL": None,
}

REDIS_SCHEMES = ("redis://", "rediss://")


def margin_rate(department: str) -> float:
    """Default margin rate (0..1) for a department without product costs (``DEFAULT_MARGIN_RATES``)."""
    rates = dict(DEFAULTS["DEFAULT_MARGIN_RATES"])
    rates.update(get("DEFAULT_MARGIN_RATES") or {})
    return float(rates.get(department, rates.get("*", 0.30)))


def get(name: str):
    """Return ``settings.SHOP_BUNDLES_<name>`` or the default above.

    Raises:
        KeyError: if ``name`` is not a known setting.
    """
    return getattr(settings, f"SHOP_BUNDLES_{name}", DEFAULTS[name])


def history_until():
    """``SHOP_BUNDLES_HISTORY_UNTIL`` as an aware datetime (midnight in ``TIME_ZONE``), or None when unset.

    Raises:
        ImproperlyConfigured: the setting is not a ``YYYY-MM-DD`` date.
    """
    from datetime import date, datetime, time

    from django.core.exceptions import ImproperlyConfigured
    from django.utils import timezone

    value = get("HISTORY_UNTIL")
    if value in (None, ""):
        return None
    try:
        day = value if isinstance(value, date) else date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"SHOP_BUNDLES_HISTORY_UNTIL must be a date YYYY-MM-DD, not {value!r}") from exc
    return timezone.make_aware(datetime.combine(day, time.min))


def artifact_dir() -> str:
    """Directory where model artifacts are written (str path)."""
    return getattr(settings, "SHOP_BUNDLES_ARTIFACT_DIR")


def impression_buffer_url() -> str:
    """Redis URL of the impression buffer, or "" when impressions go to the database directly.

    ``SHOP_BUNDLES_IMPRESSION_BUFFER_URL`` when set (also when set to ""),
    else the Celery broker URL when it is a ``redis://`` / ``rediss://`` URL,
    else "" (``memory://`` demo mode, other brokers).
    """
    url = getattr(settings, "SHOP_BUNDLES_IMPRESSION_BUFFER_URL", None)
    if url is None:
        broker = getattr(settings, "CELERY_BROKER_URL", "") or ""
        url = broker if broker.startswith(REDIS_SCHEMES) else ""
    return url.strip()
