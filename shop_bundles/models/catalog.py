"""Catalogue: products, customers and weekly promotions."""
from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models, router, transaction


class Product(models.Model):
    """A sellable product.

    ``price`` is the shelf price in the shop currency (Decimal, 2 places).
    ``cost`` is the unit cost when the shop knows it (the Complete Journey
    data has none, so it stays empty there). ``stock`` is units on hand;
    a product with ``stock <= 0`` or ``active=False`` never appears in an offer.

    ``save()`` runs in a transaction (joining the caller's, if any) so the
    ``stock_changed`` outbox event that ``signals.product_saved_record_stock_changed``
    writes when stock, price, cost or active changed commits with the change.
    """

    #: Fields whose change is a ``stock_changed`` event (campaigns may have to pause or resume).
    TRACKED_FIELDS = ("stock", "price", "cost", "active")

    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255, blank=True)
    department = models.CharField(max_length=100, blank=True, db_index=True)
    category = models.CharField(max_length=100, blank=True, db_index=True)
    product_type = models.CharField(max_length=100, blank=True)
    brand = models.CharField(max_length=100, blank=True)
    package_size = models.CharField(max_length=50, blank=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0.00"),
                                validators=[MinValueValidator(Decimal("0"))])
    cost = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True,
                               validators=[MinValueValidator(Decimal("0"))])
    stock = models.IntegerField(default=0)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gte=0), name="product_price_non_negative"),
        ]

    def __str__(self):
        return f"{self.name or self.sku} ({self.sku})"

    @classmethod
    def from_db(cls, db, field_names, values):
        """Load a row and remember its tracked values (see ``tracked_changes``)."""
        instance = super().from_db(db, field_names, values)
        instance._remember_tracked()
        return instance

    def refresh_from_db(self, using=None, fields=None, from_queryset=None):
        """Reload from the database; the reloaded tracked fields count as unchanged afterwards."""
        super().refresh_from_db(using=using, fields=fields, from_queryset=from_queryset)
        loaded = dict(getattr(self, "_tracked_loaded", None) or {})
        deferred = self.get_deferred_fields()
        for name in self.TRACKED_FIELDS:
            if (fields is None or name in fields) and name not in deferred:
                loaded[name] = getattr(self, name)
        self._tracked_loaded = loaded

    def _remember_tracked(self) -> None:
        """Store the current tracked values (the fields deferred at load are left out)."""
        deferred = self.get_deferred_fields()
        self._tracked_loaded = {f: getattr(self, f) for f in self.TRACKED_FIELDS if f not in deferred}

    def tracked_changes(self) -> list[str]:
        """Tracked fields whose value differs from the one loaded (all of them for an instance not loaded
        from the database, e.g. ``Product(pk=..., stock=...)``), in ``TRACKED_FIELDS`` order."""
        loaded = getattr(self, "_tracked_loaded", None)
        if loaded is None:
            return list(self.TRACKED_FIELDS)
        return [f for f in self.TRACKED_FIELDS if f not in loaded or loaded[f] != getattr(self, f)]

    def save(self, *args, **kwargs):
        """Save inside ``transaction.atomic`` (no savepoint), so ``post_save`` handlers share the transaction."""
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)
        self._remember_tracked()

    @property
    def available(self) -> bool:
        """True when the product may be sold and offered: active, in stock and priced above 0.00.

        A product without a positive price (catalogue items never sold, coupons,
        ``Pretzels 16 OZ`` at 0.00 in the Complete Journey data) is not for sale.
        """
        return self.active and self.stock > 0 and self.price is not None and self.price > 0


class Customer(models.Model):
    """A shopper known to the shop (a loyalty household in the Complete Journey data)."""

    external_id = models.CharField(max_length=64, unique=True)
    email = models.EmailField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.external_id


class Promotion(models.Model):
    """A product's in-store display and mailer exposure in one week (the market environment).

    ``week`` is the shop's week number (Complete Journey: 1..53, week 1 starts
    2017-01-01). ``display_stores`` / ``mailer_stores`` count the stores that
    ran the display or mailer; ``display_location`` / ``mailer_location`` keep
    the most common location code (``"0"`` means none).
    """

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="promotions")
    week = models.PositiveSmallIntegerField()
    week_start = models.DateField(null=True, blank=True)
    display_location = models.CharField(max_length=8, blank=True)
    mailer_location = models.CharField(max_length=8, blank=True)
    display_stores = models.PositiveIntegerField(default=0)
    mailer_stores = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["product", "week"], name="promotion_product_week_unique")]

    def __str__(self):
        return f"{self.product_id} week {self.week}"
