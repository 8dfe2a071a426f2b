"""Store-aware ordering of the offers on a product page.

``store_offer_scores_refresh`` measures, for each open campaign and each of its items as the page's
product, the attach rate (share of baskets with that product holding the campaign's other items) and
the model's score (``bundling_ml.pipeline.score_offers_by_store``), chain-wide and in every store where
that item sells, and replaces the ``OfferStoreScore`` rows. The product page then orders the offers of
a shopper who chose a store by that store's attach rate (``selectors.offers``).
``bundling_ml`` (and TensorFlow) is imported inside the function only.
"""
from __future__ import annotations

import logging
import time

import pandas as pd
from django.db import transaction
from django.utils import timezone

from .. import app_settings, ml_bridge
from ..models import BundleCampaign, ModelVersion, OfferStoreScore, Product
from .campaigns import open_campaign_skus

logger = logging.getLogger(__name__)


def store_offer_scores_refresh(*, model_version_id: int | None = None, progress=None) -> dict:
    """Re-score every open campaign per product page and store, and replace the ``OfferStoreScore`` rows.

    Open campaigns are active, paused or draft ones whose end has not passed
    (``services.campaigns.open_campaigns``), so a paused campaign that comes
    back is ordered at once. Lines are the shop's order history
    (``ml_bridge.lines_frame``: imported and storefront orders, with
    ``Order.store_id``); promotions are the shop's calendar, as for scoring.
    The old rows are deleted and the new ones written in one transaction, so
    the product page never sees a half-written ranking.

    Args:
        model_version_id: the ModelVersion to use (default: the active one).
        progress: optional ``progress(fraction, stage)`` callback.

    Returns:
        ``{"model_version_id": int | None, "campaigns": int, "rows": int,
        "stores": int (stores with their own rows), "seconds": float, "message": str}``.

    Raises:
        ArtifactCorruptError: the version's artifact is missing or fails its SHA-256 check.
    """
    started = time.monotonic()
    if model_version_id is None:
        version = ModelVersion.objects.filter(is_active=True).first()
        if version is None:
            return {"model_version_id": None, "campaigns": 0, "rows": 0, "stores": 0, "seconds": 0.0,
                    "message": "no active model version; train one first"}
    else:
        version = ModelVersion.objects.get(pk=model_version_id)
    from bundling_ml.artifacts import verify_artifact

    verify_artifact(version.artifact_path)
    skus = open_campaign_skus()
    frame = pd.DataFrame(columns=["offer_id", "product_id", "store_id", "score", "attach_rate", "co_purchase_count",
                                  "anchor_baskets"])
    if skus:
        from bundling_ml.pipeline import score_offers_by_store  # TensorFlow is imported below this line only

        offers = pd.DataFrame({"offer_id": [str(pk) for pk in skus], "items": [tuple(v) for v in skus.values()]})
        frame = score_offers_by_store(version.artifact_path, ml_bridge.lines_frame(), ml_bridge.products_frame(),
                                      offers, min_store_baskets=int(app_settings.get("MIN_STORE_BASKETS")),
                                      excluded_departments=tuple(app_settings.get("EXCLUDED_DEPARTMENTS")),
                                      promotions=ml_bridge.promotions_frame(), progress=progress)
    product_pk = dict(Product.objects.filter(sku__in=set(frame["product_id"])).values_list("sku", "pk"))
    now = timezone.now()
    rows = [OfferStoreScore(campaign_id=int(r.offer_id), product_id=product_pk[r.product_id], store_id=r.store_id,
                            score=float(r.score), attach_rate=float(r.attach_rate), co_purchase_count=int(r.co_purchase_count),
                            anchor_baskets=int(r.anchor_baskets), model_version=version, computed_at=now)
            for r in frame.itertuples(index=False) if r.product_id in product_pk]
    with transaction.atomic():
        # a campaign deleted while the model was scoring has no rows
        kept = set(BundleCampaign.objects.filter(pk__in={r.campaign_id for r in rows}).values_list("pk", flat=True))
        rows = [r for r in rows if r.campaign_id in kept]
        OfferStoreScore.objects.all().delete()
        OfferStoreScore.objects.bulk_create(rows, batch_size=5000)
    stores = len({r.store_id for r in rows} - {""})
    result = {"model_version_id": version.pk, "campaigns": len({r.campaign_id for r in rows}), "rows": len(rows),
              "stores": stores, "seconds": round(time.monotonic() - started, 2),
              "message": f"{len(rows)} offer scores for {len({r.campaign_id for r in rows})} campaigns "
                         f"({stores} stores) from {version.label}"}
    logger.info("store offer ranking %s: %s", version.label, result)
    return result
