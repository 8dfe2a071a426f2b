"""A record of each import and its report."""
from django.db import models
from django.utils import timezone


class ImportRun(models.Model):
    """One run of ``import_orders``: source, counts and the rejected lines.

    ``report`` holds ``{"read": int, "imported": int, "skipped": int,
    "rejected": int, "duplicates": int, "rejections": [{"line": int,
    "field": str, "reason": str}, ...], "skipped_reasons": {...}}``.
    """

    source = models.CharField(max_length=255)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        return f"Import {self.source} at {self.started_at:%Y-%m-%d %H:%M}"


class ImportedCancellation(models.Model):
    """A cancellation (``C…`` invoice) of a CSV import, applied once per (invoice, product).

    Recorded the first time an import reads the cancellation, whether its
    quantity was taken back from purchases of the same file
    (``taken_in_file``), from order lines imported earlier (``taken_earlier``,
    detailed in :class:`CancelledOrderLine`), or from nothing. An import that
    reads a recorded (invoice, product) again (the same file twice, or an
    overlapping export) takes nothing back from earlier orders a second time
    (``shop_bundles.services.imports``). Quantities are units (the
    export's; ``quantity`` and ``taken_in_file`` may be fractional for
    measured goods), ``cancelled_at`` is the cancellation's time (aware).
    """

    invoice = models.CharField(max_length=64)
    sku = models.CharField(max_length=64)
    customer_external_id = models.CharField(max_length=64, blank=True)
    cancelled_at = models.DateTimeField()
    quantity = models.DecimalField(max_digits=14, decimal_places=3,
                                   help_text="Units cancelled (sum over the invoice's lines of the product).")
    taken_in_file = models.DecimalField(max_digits=14, decimal_places=3, default=0,
                                        help_text="Units taken back from purchases in the same file.")
    taken_earlier = models.PositiveIntegerField(default=0,
                                                help_text="Units taken back from order lines imported before.")
    import_run = models.ForeignKey(ImportRun, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="cancellations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["invoice", "sku"], name="importedcancellation_invoice_sku")]

    def __str__(self):
        return f"Cancellation {self.invoice} {self.sku}"


class CancelledOrderLine(models.Model):
    """Units a later file's cancellation took back from an order line imported before.

    Keyed by the order's external id and the SKU (not foreign keys): an order
    line that reached 0 is deleted (``removed``), as a line cancelled out in
    its own file is never written, and an order left without lines is
    deleted; this row then keeps a later re-import of the earlier file from
    writing the line again.
    """

    cancellation = models.ForeignKey(ImportedCancellation, on_delete=models.CASCADE, related_name="takes")
    order_external_id = models.CharField(max_length=64)
    sku = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField(help_text="Units taken back.")
    quantity_before = models.PositiveIntegerField(help_text="The line's units before.")
    removed = models.BooleanField(default=False, help_text="The line reached 0 units and was deleted.")

    class Meta:
        indexes = [models.Index(fields=["order_external_id", "sku"], name="cancelledline_order_sku")]

    def __str__(self):
        return f"-{self.quantity} x {self.sku} from {self.order_external_id}"
