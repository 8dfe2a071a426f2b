"""Scoring: turn a trained model version into pending BundleSuggestions for staff review.

``bundling_ml`` (and TensorFlow) is imported inside ``suggestions_score`` only.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import app_settings, ml_bridge
from ..models import BundleSuggestion, BundleSuggestionItem, ModelVersion, Product, StaffAction
from .campaigns import live_signatures
from .economics import suggestions_economics_fill

logger = logging.getLogger(__name__)


def _expire_superseded(version: ModelVersion, now) -> int:
    """Expire pending suggestions of other model versions (the active version re-suggests them fresh)."""
    stale = BundleSuggestion.objects.filter(status=BundleSuggestion.PENDING).filter(
        Q(model_version__isnull=True) | ~Q(model_version=version))
    ids = list(stale.values_list("pk", flat=True))
    if ids:
        BundleSuggestion.objects.filter(pk__in=ids).update(status=BundleSuggestion.EXPIRED, reviewed_at=now)
        StaffAction.objects.bulk_create([
            StaffAction(user=None, action="expire", suggestion_id=pk, created_at=now,
                        detail=f"superseded by model version {version.label}") for pk in ids
        ], batch_size=2000)
    return len(ids)


def suggestions_score(*, model_version_id: int | None = None, progress=None) -> dict:
    """Score bundles with a model version and write the new ones as pending suggestions.

    Args:
        model_version_id: the ModelVersion to use (default: the active one).
        progress: optional ``progress(fraction, stage)`` callback passed to ``score_bundles``.

    Steps: read the lines and products frames (``ml_bridge``), call
    ``bundling_ml.pipeline.score_bundles`` with SHOP_BUNDLES_MIN_ANCHOR_BASKETS,
    SHOP_BUNDLES_MAX_SUGGESTIONS and SHOP_BUNDLES_EXCLUDED_DEPARTMENTS, and
    ``bundling_ml.pipeline.store_specific_bundles`` for up to
    SHOP_BUNDLES_STORE_SUGGESTIONS store-specific pairs not among those
    bundles (only when the orders carry stores), then in
    one transaction (the version row locked, so two scorings of one version
    queue up): when scoring the active version, expire pending suggestions of
    older versions; skip item sets that already have a pending, approved or
    rejected suggestion, a suggestion of this version, or a live campaign, and
    bundles with an inactive or out-of-stock product; keep the pending queue at
    most SHOP_BUNDLES_MAX_SUGGESTIONS chain-wide and SHOP_BUNDLES_STORE_SUGGESTIONS
    store-specific suggestions long (best scores first); ``bulk_create``
    the rest with their items (anchor at position 0).

    Raises:
        ArtifactCorruptError: the version's artifact is missing or fails its SHA-256 check.

    Returns:
        ``{"model_version_id": int | None, "created": int, "created_store_specific": int, "skipped": int,
        "skipped_reasons": {reason: count}, "expired": int, "scored": int, "seconds": float,
        "message": str}``.
    """
    started = time.monotonic()
    if model_version_id is None:
        version = ModelVersion.objects.filter(is_active=True).first()
        if version is None:
            return {"model_version_id": None, "created": 0, "created_store_specific": 0, "skipped": 0, "skipped_reasons": {}, "expired": 0,
                    "scored": 0, "seconds": 0.0, "message": "no active model version; train one first"}
    else:
        version = ModelVersion.objects.get(pk=model_version_id)

    # A missing or corrupt artifact is refused before any work (ArtifactCorruptError names the file).
    from bundling_ml.artifacts import verify_artifact

    verify_artifact(version.artifact_path)
    lines = ml_bridge.lines_frame()
    products = ml_bridge.products_frame()

    from bundling_ml.pipeline import score_bundles  # TensorFlow is imported below this line only

    frame = score_bundles(
        version.artifact_path, lines, products,
        min_anchor_baskets=int(app_settings.get("MIN_ANCHOR_BASKETS")),
        max_bundles=int(app_settings.get("MAX_SUGGESTIONS")),
        excluded_departments=tuple(app_settings.get("EXCLUDED_DEPARTMENTS")),
        progress=progress,
        # The shop's promotion calendar: the model sees each product's display / mailer status in the
        # scoring week (the week after the last order line).
        promotions=ml_bridge.promotions_frame(),
    )
    store_limit = int(app_settings.get("STORE_SUGGESTIONS") or 0)
    if store_limit > 0:
        import pandas as pd

        from bundling_ml.pipeline import store_specific_bundles

        store_frame = store_specific_bundles(
            lines, products, exclude_item_sets=frame["items"].tolist(), max_bundles=store_limit,
            excluded_departments=tuple(app_settings.get("EXCLUDED_DEPARTMENTS")))
        if len(store_frame):
            frame = pd.concat([frame.assign(store_ids=[()] * len(frame), store_evidence=[[]] * len(frame)),
                               store_frame], ignore_index=True)
    skus = {str(sku) for items in frame["items"] for sku in items} if len(frame) else set()
    products_by_sku = Product.objects.in_bulk(list(skus), field_name="sku") if skus else {}
    now = timezone.now()
    candidates = ml_bridge.suggestions_from_frame(frame, model_version=version, products_by_sku=products_by_sku,
                                                  now=now)
    reasons: Counter = Counter()
    reasons["unknown product"] = len(frame) - len(candidates)

    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        expired = _expire_superseded(version, now) if version.is_active else 0
        signatures = [s.signature for s, _ in candidates]
        taken = set(BundleSuggestion.objects.filter(signature__in=signatures).filter(
            Q(status__in=[BundleSuggestion.PENDING, BundleSuggestion.APPROVED, BundleSuggestion.REJECTED])
            | Q(model_version=version)).values_list("signature", flat=True))
        live = live_signatures(now=now)
        # The review queue never grows past SHOP_BUNDLES_MAX_SUGGESTIONS pending: a rescoring after
        # approvals would otherwise refill it with ever weaker bundles every hour.
        pending_scopes = Counter(bool(s) for s in BundleSuggestion.objects.filter(
            status=BundleSuggestion.PENDING).values_list("store_ids", flat=True))
        room = {False: max(int(app_settings.get("MAX_SUGGESTIONS")) - pending_scopes[False], 0),
                True: max(store_limit - pending_scopes[True], 0)}  # chain-wide / store-specific
        new: list[tuple[BundleSuggestion, list[Product]]] = []
        for suggestion, items in candidates:
            scope = bool(suggestion.store_ids)
            if room[scope] <= 0:
                reasons["review queue full"] += 1
            elif suggestion.signature in live:
                reasons["live campaign"] += 1
            elif suggestion.signature in taken:
                reasons["already suggested or decided"] += 1
            elif not all(p.available for p in items):
                reasons["product inactive, out of stock or unpriced"] += 1
            else:
                new.append((suggestion, items))
                room[scope] -= 1
        suggestions_economics_fill(candidates=new)  # discount optimisation (services.economics)
        created = BundleSuggestion.objects.bulk_create([s for s, _ in new], batch_size=1000)
        BundleSuggestionItem.objects.bulk_create([
            BundleSuggestionItem(suggestion=s, product=p, position=i)
            for s, (_, items) in zip(created, new) for i, p in enumerate(items)
        ], batch_size=5000)

    skipped_reasons = {k: v for k, v in reasons.items() if v}
    result = {
        "model_version_id": version.pk,
        "created": len(created),
        "created_store_specific": sum(1 for s in created if s.store_ids),
        "skipped": sum(skipped_reasons.values()),
        "skipped_reasons": skipped_reasons,
        "expired": expired,
        "scored": int(len(frame)),
        "seconds": round(time.monotonic() - started, 2),
        "message": f"{len(created)} new suggestions from {version.label}",
    }
    logger.info("scoring %s: %s", version.label, result)
    return result
