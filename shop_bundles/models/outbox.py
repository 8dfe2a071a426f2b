"""Transactional outbox: events written in the same transaction as the change they describe."""
from django.db import models
from django.utils import timezone


class OutboxEvent(models.Model):
    """An event waiting to be handed to Celery (``services.outbox``).

    The row is inserted inside the database transaction that makes the change
    (e.g. ``order_place``), so it exists if and only if the change committed.
    The relay (``outbox_relay``, task ``relay_outbox``) sends undelivered rows
    to the ``handle_outbox_event`` task and stamps ``dispatched_at``; the
    handler stamps ``processed_at`` in the same transaction as its own work.

    Fields:
        kind: ``order_placed``, ``stock_changed`` or ``offer_event``.
        payload: small JSON object, e.g. ``{"order_id": 12}``.
        dispatched_at: last time the event was handed to the broker (None:
            never, or the last send failed); re-sent when still unprocessed
            after ``OUTBOX_REDISPATCH_AFTER``.
        processed_at: when the handler finished; never set twice.
        attempts: handler runs that did the work (successful or failed); a
            duplicate delivery of a processed event does not count.
        last_error: the last broker or handler error ("" when none).
        dedupe_key: ``"<source>:<event id>"`` of an event reported from
            outside (``POST /events/``); unique, so a re-sent external event
            is stored once. None for events the plugin writes itself.
    """

    ORDER_PLACED, STOCK_CHANGED, OFFER_EVENT = "order_placed", "stock_changed", "offer_event"
    KIND_CHOICES = [(ORDER_PLACED, "Order placed"), (STOCK_CHANGED, "Stock changed"), (OFFER_EVENT, "Offer event")]

    kind = models.CharField(max_length=32, choices=KIND_CHOICES)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    dedupe_key = models.CharField(max_length=160, null=True, blank=True, unique=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["processed_at", "created_at"], name="outbox_pending_idx")]

    def __str__(self):
        state = "processed" if self.processed_at else ("dispatched" if self.dispatched_at else "pending")
        return f"{self.kind} #{self.pk} ({state})"
