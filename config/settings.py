"""Settings for the shop_bundles host project, read from environment variables.

Environment variables (all optional in development):

DJANGO_ENV            ``development`` (default) or ``production``. Production
                      refuses to start without DJANGO_SECRET_KEY and
                      DJANGO_ALLOWED_HOSTS, and turns on the secure cookie and
                      HTTPS settings that ``manage.py check --deploy`` expects.
DJANGO_SECRET_KEY     secret key; a fixed insecure key is used in development.
DJANGO_DEBUG          ``1`` to turn DEBUG on. Off by default; ``make demo`` sets it.
DJANGO_ALLOWED_HOSTS  comma-separated host names (default ``127.0.0.1,localhost,testserver``
                      in development).
DJANGO_TIME_ZONE      IANA zone for campaign windows and imports (default UTC).
DJANGO_CSRF_TRUSTED_ORIGINS  comma-separated origins (``https://shop.example.com``) behind a proxy.
DJANGO_SECURE_SSL_REDIRECT / DJANGO_SECURE_HSTS_SECONDS / DJANGO_SECURE_COOKIES
                      production HTTPS settings (defaults 1 / 31536000 / 1).
DATABASE_CONN_MAX_AGE seconds to keep database connections open (default 0).
CELERY_RESULT_BACKEND optional result backend (unset: results are not stored).
SHOP_BUNDLES_VAR_DIR  where the SQLite file, static files and models go (default ``var/``).
SHOP_BUNDLES_LOG_LEVEL  log level of the plugin's loggers (default INFO).
DATABASE_URL          e.g. ``postgres://postgres@127.0.0.1:5432/shop_bundles``.
                      Unset: a local SQLite file ``var/db.sqlite3`` (demo only; refused in production).
CELERY_BROKER_URL     e.g. ``redis://127.0.0.1:6379/0``. Unset: tasks run eagerly
                      in the calling process (demo mode; refused in production).
SHOP_BUNDLES_ARTIFACT_DIR  where trained models are written (default ``var/models``).
SHOP_BUNDLES_IMPRESSION_BUFFER_URL  Redis URL of the impression buffer; unset: the Celery broker URL
                      when it is redis://, else none. Empty: impressions are written to the
                      database directly (see shop_bundles/app_settings.py).
SHOP_BUNDLES_EVENT_TOKEN   bearer token of ``POST /bundles/events/`` (external shop front / POS
                      events). Unset: the endpoint refuses every request (503).
SHOP_BUNDLES_CURRENCY  ISO code of the shop currency for display (default USD).
SHOP_BUNDLES_ANONYMOUS_ENSEMBLE  anonymous rankers averaged (default 3).
SHOP_BUNDLES_IMPRESSION_BUFFER_KEY  Redis list of the impression buffer (default shop_bundles:impressions).
SHOP_BUNDLES_HISTORY_UNTIL  ``YYYY-MM-DD``: train, score and rank on order lines before that day only
    (an out-of-sample ``simulate_shoppers`` replay from that day).
SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD  ``1`` lets every shopper enter a customer id at checkout
                      (default off: only logged-in staff).
SHOP_BUNDLES_STORE_SUGGESTIONS  store-specific suggestions per scoring, at most (default 100; 0 = none).
SHOP_BUNDLES_CUSTOMER_RESOLVER  dotted path of ``resolver(request) -> customer id | None`` naming the
                      signed-in shopper (usual store, orders linked; shop_bundles.selectors.customers).
                      Default here: customer_by_user_email (users are created by staff); empty:
                      every storefront visitor is anonymous.
"""
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SHOP_BUNDLES_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable (1/true/yes/on are true)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    """Read a comma-separated environment variable into a list of stripped items."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


ENVIRONMENT = os.environ.get("DJANGO_ENV", "development").strip().lower()
if ENVIRONMENT not in {"development", "production"}:
    raise ImproperlyConfigured(f"DJANGO_ENV must be 'development' or 'production', not {ENVIRONMENT!r}.")
PRODUCTION = ENVIRONMENT == "production"

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_ENV=production.")
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"

DEBUG = env_bool("DJANGO_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off when DJANGO_ENV=production.")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,testserver")
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set when DJANGO_ENV=production.")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "shop_bundles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "shop_bundles.middleware.RejectNulCharactersMiddleware",  # PostgreSQL text cannot hold NUL: 400, not 500
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
    )
}
if PRODUCTION and not os.environ.get("DATABASE_URL", "").strip():
    raise ImproperlyConfigured("DATABASE_URL must be set when DJANGO_ENV=production (without it the settings fall back "
                               "to the demo's SQLite file), e.g. postgres://shop:secret@db:5432/shop_bundles.")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # A longer busy timeout lets the demo's eager tasks and the dev server share the file. IMMEDIATE: a
    # transaction takes the write lock when it begins, so two at once wait for each other (the busy timeout)
    # instead of failing with "database is locked" when a reader tries to become a writer (a double-submitted
    # checkout, on Django's default DEFERRED transactions).
    DATABASES["default"].setdefault("OPTIONS", {}).update(timeout=30, transaction_mode="IMMEDIATE")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve app static files straight from the apps in development so the demo needs no collectstatic.
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

LOGIN_URL = "admin:login"  # staff pages; shoppers sign in at /accounts/login/ (config/urls.py)
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# --- Celery -------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
if PRODUCTION and not CELERY_BROKER_URL.strip():
    # Without a broker, tasks run eagerly in the calling process: "Retrain now" would train TensorFlow inside a
    # web request (and time out there).
    raise ImproperlyConfigured("CELERY_BROKER_URL must be set when DJANGO_ENV=production (without it tasks run in "
                               "the web process, the demo's mode), e.g. redis://redis:6379/0.")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
if not CELERY_BROKER_URL:
    # Demo mode: nothing leaves the process, so no broker connection is attempted.
    CELERY_BROKER_URL = "memory://"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "shop_bundles.tasks.retrain_model": {"queue": "ml"},
    "shop_bundles.tasks.score_suggestions": {"queue": "ml"},
    "shop_bundles.tasks.rank_offers_by_store": {"queue": "ml"},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 4 * 3600}

# --- shop_bundles --------------------------------------------------------
SHOP_BUNDLES_ARTIFACT_DIR = os.environ.get("SHOP_BUNDLES_ARTIFACT_DIR", str(VAR_DIR / "models"))
SHOP_BUNDLES_CURRENCY = os.environ.get("SHOP_BUNDLES_CURRENCY", "USD")
# Anonymous rankers averaged into the product-page model (seed ensemble; docs/quality.md).
SHOP_BUNDLES_ANONYMOUS_ENSEMBLE = int(os.environ.get("SHOP_BUNDLES_ANONYMOUS_ENSEMBLE", "3"))
# Impression buffer (Redis list drained by Celery): None = derive from CELERY_BROKER_URL; "" = off.
SHOP_BUNDLES_IMPRESSION_BUFFER_URL = os.environ.get("SHOP_BUNDLES_IMPRESSION_BUFFER_URL")
if os.environ.get("SHOP_BUNDLES_IMPRESSION_BUFFER_KEY"):
    SHOP_BUNDLES_IMPRESSION_BUFFER_KEY = os.environ["SHOP_BUNDLES_IMPRESSION_BUFFER_KEY"]
# Secret: only from the environment; empty disables the events endpoint.
SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD = env_bool("SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD", False)
SHOP_BUNDLES_EVENT_TOKEN = os.environ.get("SHOP_BUNDLES_EVENT_TOKEN", "").strip()
SHOP_BUNDLES_HISTORY_UNTIL = os.environ.get("SHOP_BUNDLES_HISTORY_UNTIL", "").strip() or None
SHOP_BUNDLES_STORE_SUGGESTIONS = int(os.environ.get("SHOP_BUNDLES_STORE_SUGGESTIONS", "100"))
# Who is signed in: this host project has no self-service sign-up (staff create users and set their
# e-mail), so a user's e-mail names their customer record. Empty: every visitor is anonymous.
SHOP_BUNDLES_CUSTOMER_RESOLVER = os.environ.get(
    "SHOP_BUNDLES_CUSTOMER_RESOLVER", "shop_bundles.selectors.customers.customer_by_user_email").strip() or None

# --- Production hardening (what `manage.py check --deploy` asks for) -----
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Off only for a local plain-HTTP trial of the production image (docker-compose.yml).
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "shop_bundles": {"handlers": ["console"], "level": os.environ.get("SHOP_BUNDLES_LOG_LEVEL", "INFO")},
        "bundling_ml": {"handlers": ["console"], "level": os.environ.get("SHOP_BUNDLES_LOG_LEVEL", "INFO")},
        # Server errors (500s) with their traceback on the console in production too (Django's default
        # sends them only to ADMINS by mail when DEBUG is off).
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
