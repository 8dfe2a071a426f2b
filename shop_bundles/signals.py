"""Signal handlers: install the default beat schedule after ``migrate``; sync campaigns when a product changes."""
from django.db import transaction
from django.db.models.signals import post_migrate, post_save
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


@receiver(post_save, sender="shop_bundles.Product", dispatch_uid="shop_bundles_product_campaign_sync")
def product_saved_sync_campaigns(sender, instance, created=False, raw=False, using="default", **kwargs):
    """After a product is saved, pause or resume the campaigns containing it once the save commits.

    Cheap for products in no campaign: one EXISTS query, nothing scheduled.
    Fixture loading (``raw``) and new products (in no campaign yet) are skipped.
    ``queryset.update`` / ``bulk_update`` bypass this signal; code that changes
    stock that way (``services.orders.order_place``) schedules the sync itself.
    """
    if raw or created:
        return
    from .models import BundleCampaignItem
    from .services.campaigns import campaigns_sync_product

    if not BundleCampaignItem.objects.using(using).filter(product_id=instance.pk).exists():
        return
    pk = instance.pk
    transaction.on_commit(lambda: campaigns_sync_product(product=pk), using=using)
