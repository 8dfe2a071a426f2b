"""Bundle suggestions (the model's proposals) and bundle campaigns (approved offers)."""
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone


class BundleSuggestion(models.Model):
    """A bundle of 2 or 3 products proposed by a model version, waiting for staff review.

    Evidence fields describe the anchor → companion pair(s) in the training
    window: ``co_purchase_count`` (baskets holding all items), ``support``
    (co_purchase_count / n_baskets), ``confidence`` (P(companions | anchor)),
    ``lift`` (confidence / P(companions)); ``expected_attach_rate`` is the
    share of anchor baskets expected to take the bundle. ``score`` is the
    model's ranking score in [0, 1]. ``signature`` is the sorted SKUs joined
    with ``+``; one suggestion per signature and model version.

    ``store_ids`` empty: a chain-wide suggestion (``score_bundles``). Non-empty:
    a *store-specific* suggestion (``bundling_ml.pipeline.store_specific_bundles``)
    of a pair bought together in those stores far more than across the shop;
    ``store_evidence`` then holds each store's counts and attach rates, and
    ``score`` is the best store's shrunk attach rate times its evidence
    shrinkage, not a model probability. Approving it makes a campaign limited
    to those stores (``BundleCampaignStore``).
    """

    PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"
    STATUS_CHOICES = [(PENDING, "Pending"), (APPROVED, "Approved"), (REJECTED, "Rejected"), (EXPIRED, "Expired")]

    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PENDING, db_index=True)
    anchor = models.ForeignKey("shop_bundles.Product", on_delete=models.CASCADE, related_name="anchored_suggestions")
    products = models.ManyToManyField("shop_bundles.Product", through="BundleSuggestionItem",
                                      related_name="bundle_suggestions")
    signature = models.CharField(max_length=255, db_index=True)
    score = models.FloatField()
    co_purchase_count = models.PositiveIntegerField(default=0)
    support = models.FloatField(default=0.0)
    confidence = models.FloatField(default=0.0)
    lift = models.FloatField(default=0.0)
    expected_attach_rate = models.FloatField(default=0.0)
    suggested_discount_percent = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("10.00"))
    reasons = models.TextField(blank=True)
    store_ids = models.JSONField(default=list, blank=True,
                                 help_text='Stores a store-specific suggestion is for (list of store ids); '
                                           'empty = the whole shop.')
    store_evidence = models.JSONField(default=list, blank=True,
                                      help_text="Per store (best first): store_id, co_purchase_count, "
                                                "anchor_baskets, shoppers, attach_rate (shrunk), "
                                                "chain_attach_rate, lift.")
    economics = models.JSONField(default=dict, blank=True,
                                 help_text="Discount optimisation (services.economics): chosen discount, take rate, "
                                           "incremental revenue and margin per offer shown, and the grid table.")
    model_version = models.ForeignKey("shop_bundles.ModelVersion", null=True, blank=True,
                                      on_delete=models.SET_NULL, related_name="suggestions")
    created_at = models.DateTimeField(default=timezone.now)
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-score"]
        permissions = [("approve_bundlesuggestion", "Can approve or reject bundle suggestions")]
        constraints = [
            models.UniqueConstraint(fields=["model_version", "signature"], name="suggestion_version_signature_unique"),
        ]

    def __str__(self):
        return f"Bundle {self.signature} ({self.get_status_display()})"


class BundleSuggestionItem(models.Model):
    """A product within a suggestion; position 0 is the anchor."""

    suggestion = models.ForeignKey(BundleSuggestion, on_delete=models.CASCADE, related_name="items")
    product = models.ForeignKey("shop_bundles.Product", on_delete=models.CASCADE)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["suggestion", "product"], name="suggestionitem_unique")]

    def __str__(self):
        return str(self.product)


class BundleCampaign(models.Model):
    """An approved bundle offer shown to shoppers between ``starts_at`` and ``ends_at``.

    Discount kinds: ``percent`` (``discount_value`` is a percentage of the
    bundle's regular price), ``amount`` (a fixed amount off the bundle) or
    ``fixed_price`` (the bundle sells for ``discount_value``). A campaign is
    live when its status is ``active`` and now is inside its window; the
    storefront also hides it when any item is inactive, out of stock or priced 0.00.
    ``suggestion`` is unique, so one suggestion can become at most one
    campaign (a database constraint, not only a Python check).
    """

    DRAFT, ACTIVE, PAUSED, EXPIRED, ENDED = "draft", "active", "paused", "expired", "ended"
    STATUS_CHOICES = [(DRAFT, "Draft"), (ACTIVE, "Active"), (PAUSED, "Paused"), (EXPIRED, "Expired"), (ENDED, "Ended")]
    PERCENT, AMOUNT, FIXED_PRICE = "percent", "amount", "fixed_price"
    DISCOUNT_CHOICES = [(PERCENT, "Percent off"), (AMOUNT, "Fixed amount off"), (FIXED_PRICE, "Fixed bundle price")]

    name = models.CharField(max_length=255)
    suggestion = models.OneToOneField(BundleSuggestion, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="campaign")
    products = models.ManyToManyField("shop_bundles.Product", through="BundleCampaignItem", related_name="campaigns")
    discount_type = models.CharField(max_length=16, choices=DISCOUNT_CHOICES, default=PERCENT)
    discount_value = models.DecimalField(max_digits=12, decimal_places=2)
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=ACTIVE, db_index=True)
    status_reason = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    approved_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-approved_at", "-id"]
        permissions = [("manage_bundlecampaign", "Can pause, resume and edit bundle campaigns")]
        constraints = [
            models.CheckConstraint(condition=models.Q(discount_value__gte=0), name="campaign_discount_non_negative"),
            models.CheckConstraint(
                condition=models.Q(ends_at__isnull=True) | models.Q(ends_at__gt=models.F("starts_at")),
                name="campaign_window_valid",
            ),
        ]

    def __str__(self):
        return self.name


class BundleCampaignItem(models.Model):
    """One product (and units per bundle) in a campaign."""

    campaign = models.ForeignKey(BundleCampaign, on_delete=models.CASCADE, related_name="items")
    product = models.ForeignKey("shop_bundles.Product", on_delete=models.PROTECT)
    quantity = models.PositiveSmallIntegerField(default=1)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["campaign", "product"], name="campaignitem_unique")]

    def __str__(self):
        return f"{self.quantity} x {self.product}"


class BundleCampaignStore(models.Model):
    """A store a campaign is limited to. A campaign without rows runs in every store (and with no store chosen).

    A campaign with rows is shown and priced only for a shopper whose chosen
    store (``storefront.stores.shopper_store``; the order's ``store_id``) is
    one of them: ``selectors.offers.live_campaigns(store_id=...)``.
    Approving a store-specific suggestion copies its ``store_ids`` here;
    staff edit them on the campaign's admin page.
    """

    campaign = models.ForeignKey(BundleCampaign, on_delete=models.CASCADE, related_name="store_limits")
    store_id = models.CharField(max_length=32)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "store_id"], name="campaignstore_unique")]

    def __str__(self):
        return f"campaign {self.campaign_id} in store {self.store_id}"


class OfferStoreScore(models.Model):
    """How a campaign does on one product's page, in one store or chain-wide: attach rate and model score.

    Written by ``services.store_offers.store_offer_scores_refresh`` (Celery
    task ``rank_offers_by_store``, hourly; command ``rank_store_offers``) from
    ``bundling_ml.pipeline.score_offers_by_store``: for each item of a live
    campaign taken as the page's product, the geometric mean of the model's
    probabilities (0..1) of the campaign's other items as its companions,
    with the store-context features of the store (``store_id``) or with no
    store (``store_id == ""``, the chain-wide row); and ``attach_rate``, the
    share of baskets with the page's product that hold all the campaign's
    other items (chain-wide: ``co_purchase_count / anchor_baskets``; in a
    store: the store's share shrunk towards the chain-wide one with 10
    pseudo-baskets). A store has its own rows for a product only when the
    product sold there in at least ``SHOP_BUNDLES_MIN_STORE_BASKETS``
    baskets. The product page orders the offers it shows by the attach rate
    of the shopper's chosen store, else the chain-wide one
    (``selectors.offers.offers_for_product``; why the attach rate and not the
    model score: ``docs/quality.md``, "Store-aware offer order").

    ``co_purchase_count``: baskets (in the store, or anywhere for "") holding
    all the campaign's items; ``anchor_baskets``: baskets holding the page's
    product. Rows are replaced as a whole on each refresh.
    """

    campaign = models.ForeignKey(BundleCampaign, on_delete=models.CASCADE, related_name="store_scores")
    product = models.ForeignKey("shop_bundles.Product", on_delete=models.CASCADE, related_name="+")
    store_id = models.CharField(max_length=32, blank=True, help_text='The store; "" is the chain-wide score.')
    score = models.FloatField(help_text="the model's 0..1 score of the campaign's other items given this product")
    attach_rate = models.FloatField(default=0.0, help_text="share of baskets with this product holding the bundle")
    co_purchase_count = models.PositiveIntegerField(default=0)
    anchor_baskets = models.PositiveIntegerField(default=0)
    model_version = models.ForeignKey("shop_bundles.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # also the product page's lookup index: (product, store) -> the scores of its campaigns
            models.UniqueConstraint(fields=["product", "store_id", "campaign"], name="offerstorescore_unique"),
        ]

    def __str__(self):
        return f"{self.campaign_id} on {self.product_id} @ {self.store_id or 'chain'}: {self.score:.3f}"


class StaffAction(models.Model):
    """Audit trail: who did what to a suggestion or campaign, and when."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=32)
    suggestion = models.ForeignKey(BundleSuggestion, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="actions")
    campaign = models.ForeignKey(BundleCampaign, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="actions")
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
