"""Order and offer events: what shoppers did with the offers."""
from decimal import Decimal

from django.db import models
from django.utils import timezone


class OrderEvent(models.Model):
    """The record that a storefront order was placed, written by a Celery task on commit.

    One per order (``order`` is unique), so a re-run task records nothing twice.
    ``revenue`` and ``bundle_discount`` are Decimal amounts in shop currency.
    """

    order = models.OneToOneField("shop_bundles.Order", on_delete=models.CASCADE, related_name="event")
    recorded_at = models.DateTimeField(default=timezone.now)
    revenue = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    bundle_discount = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    bundles_used = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"Order event {self.order_id}"


class OfferEvent(models.Model):
    """A shopper's interaction with a bundle offer.

    ``kind`` is impression (offer shown), click, add_to_cart or purchase (an
    order that used the bundle). ``session_key`` identifies anonymous
    shoppers. ``experiment_group`` is the shopper's holdout-experiment group
    (``treatment`` or ``holdout``); a holdout impression records an offer that
    *would* have been shown (it is hidden), so both groups have the same
    exposure definition. A purchase event is unique per (campaign, order).
    ``event_id`` is the unique id an impression gets on the product page
    (``services.events.offer_impressions_record``); draining the Redis
    impression buffer inserts with ``ON CONFLICT DO NOTHING`` on it, so a
    message drained twice (or written to PostgreSQL by the fallback and also
    buffered) is stored once. Rows written before it existed, and other
    kinds, leave it NULL (PostgreSQL allows many NULLs in a unique column).
    """

    IMPRESSION, CLICK, ADD_TO_CART, PURCHASE = "impression", "click", "add_to_cart", "purchase"
    KIND_CHOICES = [(IMPRESSION, "Impression"), (CLICK, "Click"), (ADD_TO_CART, "Add to cart"), (PURCHASE, "Purchase")]

    kind = models.CharField(max_length=16, choices=KIND_CHOICES, db_index=True)
    campaign = models.ForeignKey("shop_bundles.BundleCampaign", on_delete=models.CASCADE, related_name="events")
    customer = models.ForeignKey("shop_bundles.Customer", null=True, blank=True, on_delete=models.SET_NULL)
    session_key = models.CharField(max_length=64, blank=True)
    order = models.ForeignKey("shop_bundles.Order", null=True, blank=True, on_delete=models.CASCADE,
                              related_name="offer_events")
    quantity = models.PositiveIntegerField(default=1)
    experiment_group = models.CharField(max_length=16, blank=True, db_index=True)
    simulated = models.BooleanField(default=False, help_text="Written by the simulate_shoppers replay.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    event_id = models.UUIDField(null=True, blank=True, unique=True, editable=False,
                                help_text="Unique id of a buffered impression (idempotent drain).")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "order"], condition=models.Q(kind="purchase"),
                                    name="one_purchase_event_per_campaign_order"),
        ]


class ExperimentDashboard(OfferEvent):
    """Proxy (no table) that puts the holdout-experiment dashboard in the admin index."""

    class Meta:
        proxy = True
        verbose_name = "experiment dashboard"
        verbose_name_plural = "experiment dashboard"
