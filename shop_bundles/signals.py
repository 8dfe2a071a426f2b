"""Signal handlers: install the default beat schedule after ``migrate``; a ``stock_changed`` event when a product changes."""
from django.db.models.signals import post_delete, post_migrate, post_save
from django.dispatch import receiver


@receiver(post_migrate)
def install_default_schedule(sender, **kwargs):
    """Create the default periodic tasks (nightly retrain, hourly scoring, expiry) if absent, and the
    ``Bundle team`` group with its permissions (``permissions.ensure_bundle_team_group``).

    Runs after every ``migrate``; existing rows are left alone, so staff edits
    in the admin (django-celery-beat's Periodic tasks) survive upgrades.
    """
    if getattr(sender, "name", None) != "shop_bundles":
        return
    from .permissions import ensure_bundle_team_group
    from .schedule import ensure_default_schedule

    ensure_default_schedule(using=kwargs.get("using", "default"))
    ensure_bundle_team_group(using=kwargs.get("using", "default"))


@receiver(post_save, sender="shop_bundles.Product", dispatch_uid="shop_bundles_product_campaign_sync")
def product_saved_record_stock_changed(sender, instance, created=False, raw=False, using="default",
                                       update_fields=None, **kwargs):
    """After a product's stock, price, cost or active flag changed, write a ``stock_changed`` outbox event.

    ``Product.save`` runs in a transaction, so the event commits (or rolls
    back) with the change; its handler pauses or resumes the campaigns holding
    the product (``services.campaigns.campaigns_sync_product``), exactly once.
    Fixture loading (``raw``), new products (in no campaign yet), products
    in no campaign (one EXISTS query) and saves that changed none of
    ``Product.TRACKED_FIELDS`` are skipped.
    ``queryset.update`` / ``bulk_update`` bypass this signal; code that changes
    stock that way calls ``services.outbox.stock_changed_record`` itself
    (``services.orders.order_place`` does).
    """
    if raw or created:
        return
    changed = instance.tracked_changes()
    if update_fields is not None:
        changed = [f for f in changed if f in update_fields]
    if not changed:
        return
    from .models import BundleCampaignItem
    from .services.outbox import stock_changed_record

    if not BundleCampaignItem.objects.using(using).filter(product_id=instance.pk).exists():
        return  # in no campaign: nothing to pause or resume (one EXISTS query, no event)

    stock_changed_record(product_ids=[instance.pk], fields=changed, source="product_save", using=using)


@receiver(post_delete, sender="shop_bundles.ModelVersion", dispatch_uid="shop_bundles_model_version_artifact")
def model_version_deleted_remove_artifact(sender, instance, using="default", **kwargs):
    """Once a deleted ModelVersion's transaction commits, remove its artifact directory.

    Only a directory inside ``SHOP_BUNDLES_ARTIFACT_DIR`` (where training
    writes them) is removed, never a path elsewhere, and never the artifact
    directory itself, nor one another version still points to. Nothing is removed when the deletion rolls
    back.
    """
    import shutil
    from pathlib import Path

    from django.db import transaction

    from . import app_settings

    root = Path(app_settings.artifact_dir()).resolve()
    target = Path(instance.artifact_path or "").resolve() if instance.artifact_path else None
    if target is None or target == root or root not in target.parents:
        return

    def remove() -> None:
        if not sender.objects.using(using).filter(artifact_path=instance.artifact_path).exists():  # not shared
            shutil.rmtree(target, ignore_errors=True)

    transaction.on_commit(remove, using=using)
