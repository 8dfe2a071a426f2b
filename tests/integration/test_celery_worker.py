"""A real Celery worker (prefork, Redis broker) runs the plugin's tasks against the test database."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from shop_bundles.models import BundleCampaign, ModelVersion, Order, OrderEvent, OrderLine, TrainingRun
from tests.integration.conftest import wait_for
from tests.shop.test_campaigns import make_product

pytestmark = [pytest.mark.celery_worker, pytest.mark.slow]


def test_worker_expires_ended_campaigns(celery_worker):
    from shop_bundles.tasks import expire_campaigns

    a, b = make_product("A", "20.00"), make_product("B", "5.00")
    start = timezone.now() - timedelta(days=10)
    ended = BundleCampaign.objects.create(name="ended", discount_value=Decimal("10"), starts_at=start,
                                          ends_at=timezone.now() - timedelta(minutes=5))
    running = BundleCampaign.objects.create(name="running", discount_value=Decimal("10"), starts_at=start,
                                            ends_at=timezone.now() + timedelta(days=5))
    for campaign in (ended, running):
        campaign.items.create(product=a, position=0)
        campaign.items.create(product=b, position=1)

    expire_campaigns.delay()

    wait_for(lambda: BundleCampaign.objects.get(pk=ended.pk).status == "expired", timeout=60,
             what="the worker to expire the campaign")
    assert BundleCampaign.objects.get(pk=running.pk).status == "active"
    assert "shop_bundles.tasks.expire_campaigns" in celery_worker.log()


def test_worker_records_the_order_placed_event(celery_worker):
    from shop_bundles.tasks import record_order_placed

    product = make_product("A", "20.00")
    order = Order.objects.create(external_id="web-1", placed_at=timezone.now(), source=Order.SOURCE_STOREFRONT,
                                 subtotal=Decimal("40.00"), total=Decimal("40.00"))
    OrderLine.objects.create(order=order, product=product, quantity=2, unit_price=Decimal("20.00"))

    record_order_placed.delay(order.pk)
    record_order_placed.delay(order.pk)  # a duplicate delivery records nothing twice

    event = wait_for(lambda: OrderEvent.objects.filter(order=order).first(), timeout=60,
                     what="the OrderEvent written by the worker")
    assert event.revenue == Decimal("40.00") and event.bundles_used == 0
    wait_for(lambda: celery_worker.log().count("record_order_placed") >= 4, timeout=30,
             what="both deliveries to finish")  # "received" + "succeeded" for each
    assert OrderEvent.objects.filter(order=order).count() == 1


def test_worker_relays_the_outbox_and_handles_the_order_placed_event(celery_worker):
    """The outbox path of storefront orders: relay_outbox (beat) → handle_outbox_event → OrderEvent, in the worker."""
    from django.db import transaction

    from shop_bundles.services.outbox import outbox_event_add
    from shop_bundles.tasks import relay_outbox

    product = make_product("A", "20.00")
    with transaction.atomic():
        order = Order.objects.create(external_id="web-2", placed_at=timezone.now(), source=Order.SOURCE_STOREFRONT,
                                     subtotal=Decimal("20.00"), total=Decimal("20.00"))
        OrderLine.objects.create(order=order, product=product, quantity=1, unit_price=Decimal("20.00"))
        event = outbox_event_add(kind="order_placed", payload={"order_id": order.pk})

    relay_outbox.delay()

    wait_for(lambda: OrderEvent.objects.filter(order=order).exists(), timeout=60,
             what="the worker to relay and handle the outbox event")
    wait_for(lambda: type(event).objects.get(pk=event.pk).processed_at is not None, timeout=30,
             what="the outbox event to be marked processed")


def test_worker_trains_on_the_ml_queue_once_per_slot(celery_worker, cj_slice):
    """retrain_model runs in a prefork child (TensorFlow loaded there only); a duplicate slot exits early (W1)."""
    from shop_bundles.tasks import retrain_model
    from tests.shop.test_training import load_cj_slice

    load_cj_slice(cj_slice)
    retrain_model.delay(trigger="schedule", slot="nightly:worker-test")
    retrain_model.delay(trigger="schedule", slot="nightly:worker-test")

    run = wait_for(lambda: TrainingRun.objects.filter(slot="nightly:worker-test",
                                                      status__in=["succeeded", "failed"]).first(),
                   timeout=400, interval=1.0, what="the training run to finish")
    assert run.status == "succeeded", run.error
    wait_for(lambda: "duplicate" in celery_worker.log(), timeout=120, what="the second delivery to exit early")
    assert TrainingRun.objects.count() == 1
    version = ModelVersion.objects.get()
    assert version.is_active and run.model_version_id == version.pk
    # Scoring was queued on commit to the ml queue and ran in the worker too.
    wait_for(lambda: version.suggestions.exists(), timeout=300, interval=1.0, what="scoring to write suggestions")

    # An approved bundle is ordered per store by the worker (rank_offers_by_store, ml queue): one chain-wide
    # row per item page, and store rows whose evidence matches the orders in the database.
    from django.contrib.auth import get_user_model

    from shop_bundles.models import OfferStoreScore
    from shop_bundles.services.campaigns import suggestion_approve
    from shop_bundles.tasks import rank_offers_by_store

    boss = get_user_model().objects.create_superuser("boss", "b@example.com", "pw-For-tests-1")
    best = version.suggestions.filter(status="pending").order_by("-score").first()
    campaign = suggestion_approve(suggestion=best, user=boss)
    rank_offers_by_store.delay()
    wait_for(lambda: OfferStoreScore.objects.filter(campaign=campaign).exists(), timeout=300, interval=1.0,
             what="the worker to rank the offer per store")
    rows = OfferStoreScore.objects.filter(campaign=campaign)
    items = list(campaign.items.values_list("product_id", flat=True))
    assert sorted(rows.filter(store_id="").values_list("product_id", flat=True)) == sorted(items)
    assert all(0 < r.score < 1 and 0 <= r.attach_rate <= 1 and r.model_version_id == version.pk for r in rows)
    anchor = campaign.items.get(position=0).product_id
    assert rows.filter(product_id=anchor).exclude(store_id="").exists()  # the best bundle's anchor sells in stores
    baskets = {}
    for order_id, store, product in OrderLine.objects.filter(unit_price__gte=0).values_list(
            "order_id", "order__store_id", "product_id"):
        baskets.setdefault(order_id, [store, set()])[1].add(product)
    for row in rows.filter(product_id=anchor):
        held = [b for s, b in baskets.values() if row.store_id in ("", s) and anchor in b]
        assert row.anchor_baskets == len(held) and (row.store_id == "" or row.anchor_baskets >= 5)  # default minimum
        assert row.co_purchase_count == sum(set(items) <= b for b in held)
