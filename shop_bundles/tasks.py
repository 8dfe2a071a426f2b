"""Celery tasks: thin wrappers that load by id and call a service.

Only ids and small JSON values cross the queue. ML tasks (``retrain_model``,
``score_suggestions``, ``rank_offers_by_store``) are routed to the ``ml`` queue (``CELERY_TASK_ROUTES``)
and import TensorFlow only inside the service they call, never at module
level, so the web process and beat stay free of it.
"""
from celery import shared_task


@shared_task(name="shop_bundles.tasks.retrain_model", bind=True, acks_late=True,
             soft_time_limit=3 * 3600, time_limit=3 * 3600 + 300)
def retrain_model(self, run_id: int | None = None, trigger: str = "manual", slot: str | None = None) -> dict:
    """Train a new model version (and backtest it), then queue scoring.

    Args:
        run_id: an existing queued TrainingRun to execute; None creates one.
        trigger: ``manual`` (admin/command) or ``schedule`` (beat).
        slot: schedule slot key; a second delivery for the same slot exits early.

    Returns:
        ``{"run_id": int, "status": str, "model_version_id": int | None}``.
    """
    from .services.training import training_run_execute

    return training_run_execute(run_id=run_id, trigger=trigger, slot=slot)


@shared_task(name="shop_bundles.tasks.score_suggestions", bind=True, acks_late=True,
             soft_time_limit=3600, time_limit=3900)
def score_suggestions(self, model_version_id: int | None = None) -> dict:
    """Write pending BundleSuggestions from a model version (default: the active one).

    Returns:
        ``{"model_version_id": int, "created": int, "skipped": int}``.
    """
    from .services.scoring import suggestions_score

    return suggestions_score(model_version_id=model_version_id)


@shared_task(name="shop_bundles.tasks.rank_offers_by_store", bind=True, acks_late=True,
             soft_time_limit=1800, time_limit=1900)
def rank_offers_by_store(self, model_version_id: int | None = None) -> dict:
    """Re-score the open campaigns per product page and store (``OfferStoreScore``; beat: hourly).

    Returns:
        ``services.store_offers.store_offer_scores_refresh``'s counts (``campaigns``, ``rows``, ``stores``, ...).
    """
    from .services.store_offers import store_offer_scores_refresh

    return store_offer_scores_refresh(model_version_id=model_version_id)


@shared_task(name="shop_bundles.tasks.expire_campaigns")
def expire_campaigns() -> dict:
    """Mark campaigns whose end time has passed as expired.

    Returns:
        ``{"expired": int}``.
    """
    from .services.campaigns import campaigns_expire

    return {"expired": campaigns_expire()}


@shared_task(name="shop_bundles.tasks.record_order_placed", bind=True, acks_late=True,
             autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def record_order_placed(self, order_id: int) -> dict:
    """Record the OrderEvent and purchase OfferEvents for a placed storefront order.

    Kept for messages already queued by earlier releases; new orders go
    through the outbox (``handle_outbox_event``). Idempotent: a redelivered
    message records nothing twice.

    Returns:
        ``{"order_id": int, "created": bool, "bundles_used": int}``.
    """
    from .services.events import order_event_record

    return order_event_record(order_id=order_id)


@shared_task(name="shop_bundles.tasks.relay_outbox", ignore_result=True)
def relay_outbox(limit: int = 500) -> dict:
    """Send undelivered outbox events to ``handle_outbox_event`` (beat: every minute).

    Safe to run concurrently and after a broker outage: events are claimed
    with ``SKIP LOCKED`` and a broker error leaves them for the next run.

    Returns:
        ``{"sent", "resent", "failed", "handler_errors", "dead"}`` counts (see ``services.outbox.outbox_relay``).
    """
    from .services.outbox import outbox_relay

    return outbox_relay(limit=limit)


@shared_task(name="shop_bundles.tasks.handle_outbox_event", bind=True, acks_late=True, ignore_result=True)
def handle_outbox_event(self, event_id: int) -> dict:
    """Process one ``OutboxEvent`` (e.g. record the OrderEvent of a placed order).

    Idempotent: the event row is locked and a processed event exits at once,
    so redelivered or re-sent messages do nothing twice. A failure is recorded
    on the event (``attempts``, ``last_error``); the relay sends it again later.

    Returns:
        ``{"event_id": int, "kind": str, "status": str, "result": dict | None}``.
    """
    from .services.outbox import outbox_event_handle

    return outbox_event_handle(event_id=event_id)


@shared_task(name="shop_bundles.tasks.refresh_suggestion_economics", bind=True, acks_late=True,
             soft_time_limit=1800, time_limit=1900)
def refresh_suggestion_economics(self) -> dict:
    """Re-fit the take-rate responses and recompute ``economics`` of pending suggestions (e.g. after a
    cost or margin-setting change). Returns ``{"updated": int}``."""
    from .services.economics import suggestions_economics_refresh

    return {"updated": suggestions_economics_refresh()}


@shared_task(name="shop_bundles.tasks.drain_impression_buffer", ignore_result=True)
def drain_impression_buffer(max_messages: int | None = None) -> dict:
    """Store the impressions buffered in Redis as ``OfferEvent`` rows (beat: every 5 seconds).

    Idempotent and safe to run concurrently (``services.impression_buffer``):
    a crash between insert and trim, or two drains at once, store nothing twice.
    A no-op when the buffer is off.

    Args:
        max_messages: messages to read at most in this run (None: ``SHOP_BUNDLES_IMPRESSION_DRAIN_MAX``).

    Returns:
        ``impression_buffer_drain``'s counts (``messages``, ``inserted``, ``dead``, ``waiting``, ...).
    """
    from . import app_settings
    from .services.impression_buffer import impression_buffer_drain

    limit = app_settings.get("IMPRESSION_DRAIN_MAX") if max_messages is None else max_messages
    return impression_buffer_drain(max_messages=int(limit))
