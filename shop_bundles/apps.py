from django.apps import AppConfig


class ShopBundlesConfig(AppConfig):
    """App config; connects signal handlers (beat schedule set-up after migrate, campaign sync on product save)
    and registers the settings checks (``checks.py``)."""

    name = "shop_bundles"
    verbose_name = "Shop bundles"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks, signals  # noqa: F401
