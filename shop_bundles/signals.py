"""Signal handlers: install the default beat schedule after ``migrate``."""
from django.db.models.signals import post_migrate
from django.dispatch import receiver


@receiver(post_migrate)
def install_default_schedule(sender, **kwargs):
    """Create the default periodic tasks (nightly retrain, hourly scoring, expiry) if absent.

    Runs after every ``migrate``; existing rows are left alone, so staff edits
    in the admin (django-celery-beat's Periodic tasks) survive upgrades.
    """
    if getattr(sender, "name", None) != "shop_bundles":
        return
    from .schedule import ensure_default_schedule

    ensure_default_schedule(using=kwargs.get("using", "default"))
