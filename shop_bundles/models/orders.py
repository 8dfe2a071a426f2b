"""Orders and order lines, imported from history or placed in the storefront."""
from decimal import Decimal

from django.db import models


class Order(models.Model):
    """One basket / order.

    ``external_id`` is the basket id in the source data (or ``web-<pk>`` style
    ids for storefront orders). ``total`` and ``discount_total`` are Decimal
    amounts in the shop currency; ``discount_total`` is the bundle discount
    the storefront granted (imported orders keep their own line discounts).
    ``checkout_token`` is the cart page's one-time checkout token (unique,
    NULL for orders placed without one), so a double-submitted checkout
    places one order.
    """

    SOURCE_IMPORT = "import"
    SOURCE_STOREFRONT = "storefront"
    SOURCE_SIMULATED = "simulated"
    SOURCE_API = "api"
    SOURCE_CHOICES = [(SOURCE_IMPORT, "Imported"), (SOURCE_STOREFRONT, "Storefront"),
                      (SOURCE_SIMULATED, "Simulated (replay)"),
                      (SOURCE_API, "Reported by an external shop front / POS (events endpoint)")]

    external_id = models.CharField(max_length=64, unique=True)
    customer = models.ForeignKey("shop_bundles.Customer", null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="orders")
    placed_at = models.DateTimeField(db_index=True)
    source = models.CharField(max_length=16, choices=SOURCE_CHOICES, default=SOURCE_IMPORT)
    store_id = models.CharField(max_length=32, blank=True, db_index=True)
    session_key = models.CharField(max_length=64, blank=True)
    experiment_group = models.CharField(max_length=16, blank=True, db_index=True,
                                        help_text="Holdout experiment group of the shopper: treatment, holdout "
                                                  "or empty (imported orders).")
    subtotal = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    discount_total = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    total = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    campaigns = models.ManyToManyField("shop_bundles.BundleCampaign", blank=True, related_name="orders",
                                       help_text="Bundle offers this order used.")
    checkout_token = models.CharField(max_length=64, unique=True, null=True, blank=True, editable=False,
                                      help_text="Idempotency token of the storefront checkout form that placed "
                                                "the order (one order per token); empty for other orders.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-placed_at"]

    def __str__(self):
        return f"Order {self.external_id}"


class OrderLine(models.Model):
    """One product in an order.

    ``unit_price`` is the regular (shelf) price paid per unit before discounts;
    ``discount`` is the total discount on the line (Decimal, shop currency);
    ``campaign`` is the bundle offer the line was sold under, if any.
    """

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey("shop_bundles.Product", on_delete=models.PROTECT, related_name="order_lines")
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)
    discount = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0.00"))
    campaign = models.ForeignKey("shop_bundles.BundleCampaign", null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="order_lines")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["order", "product"], name="orderline_order_product_unique")]

    def __str__(self):
        return f"{self.quantity} x {self.product_id}"
