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
