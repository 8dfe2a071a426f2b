"""Issue 4, part 1 (continued): stock_changed and offer events go through the transactional outbox.

Fast tests prove the events are written in the transaction of the change
(and roll back with it), from a product save in the admin or a service,
from a checkout that sells the last unit and from the storefront's bundle
button, and that their handlers act exactly once. The fault test stops a
private Redis while stock changes, bundle adds and (external) clicks happen,
then restarts it: every event is processed exactly once by a real worker.
"""
from __future__ import annotations

import shutil
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import (
    BundleCampaign,
    BundleCampaignItem,
    OfferEvent,
    Order,
    OutboxEvent,
    Product,
    StaffAction,
)
from shop_bundles.services.orders import order_place
from shop_bundles.services.outbox import outbox_relay
from shop_bundles.tasks import handle_outbox_event
from tests.integration.test_outbox_faults import (
    _free_port,
    _reset_celery_connections,
    worker_on_private_redis,
    _wait_for,
)

pytestmark = pytest.mark.faults

TOKEN = "test-token-0123456789abcdef"


def _catalogue(stock=10):
    """Apples (A) 20.00 and Bread (B) 5.00 in a live 10 % bundle, plus Cheese (C) 8.00 in no campaign."""
    products = {sku: Product.objects.create(sku=sku, name=name, price=D(price), cost=None, stock=stock)
                for sku, name, price in (("A", "Apples", "20.00"), ("B", "Bread", "5.00"), ("C", "Cheese", "8.00"))}
    campaign = BundleCampaign.objects.create(name="Apples + Bread", discount_type="percent",
                                             discount_value=D("10"), starts_at=timezone.now() - timedelta(hours=1))
    for position, sku in enumerate("AB"):
        BundleCampaignItem.objects.create(campaign=campaign, product=products[sku], position=position)
    return products, campaign


def _stock_events():
    return OutboxEvent.objects.filter(kind=OutboxEvent.STOCK_CHANGED).order_by("pk")


# --- fast tests (no worker) --------------------------------------------------------------------

@pytest.mark.django_db
def test_product_save_writes_stock_changed_in_its_transaction_and_the_handler_pauses_once(
        django_capture_on_commit_callbacks):
    products, campaign = _catalogue()
    bread = Product.objects.get(sku="B")

    with pytest.raises(RuntimeError, match="rolled back"):
        with transaction.atomic():
            bread.stock = 0
            bread.save()
            assert _stock_events().count() == 1  # inside the change's transaction
            raise RuntimeError("rolled back")
    assert not _stock_events().exists() and Product.objects.get(sku="B").stock == 10

    bread = Product.objects.get(sku="B")
    bread.name = "Brown bread"
    bread.save()  # no tracked field changed: no event
    assert not _stock_events().exists()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        bread.stock = 0
        bread.save()
    assert len(callbacks) == 1  # the fast path, offered on commit only
    event = _stock_events().get()
    assert event.payload == {"product_ids": [bread.pk], "fields": ["stock"], "source": "product_save"}
    campaign.refresh_from_db()
    assert campaign.status == BundleCampaign.ACTIVE  # nothing happens before the handler runs

    first, second = handle_outbox_event(event.pk), handle_outbox_event(event.pk)
    assert first["status"] == "processed" and first["result"] == {
        "products": 1, "missing": [], "paused": 1, "resumed": 0}
    assert second["status"] == "already_processed"
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "auto: Brown bread (B) is out of stock")
    assert StaffAction.objects.filter(campaign=campaign, action="auto_pause").count() == 1

    # Reloaded values count as unchanged: saving a refreshed row writes no event.
    Product.objects.filter(pk=bread.pk).update(stock=3)
    bread.refresh_from_db()
    bread.save()
    assert _stock_events().count() == 1


@pytest.mark.django_db
def test_admin_product_change_writes_stock_changed_and_pauses_the_campaign(admin_client,
                                                                           django_capture_on_commit_callbacks):
    products, campaign = _catalogue()
    apples = products["A"]
    form = {"sku": "A", "name": "Apples", "department": "", "category": "", "product_type": "", "brand": "",
            "package_size": "", "price": "20.00", "cost": "", "stock": "10", "active": ""}  # unticked: inactive
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:shop_bundles_product_change", args=[apples.pk]), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    event = _stock_events().get()
    assert event.payload["fields"] == ["active"] and event.processed_at is not None and event.attempts == 1
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "auto: Apples (A) is inactive")


@pytest.mark.django_db
def test_checkout_selling_the_last_unit_writes_stock_changed_with_the_order(django_capture_on_commit_callbacks):
    products, campaign = _catalogue(stock=1)
    with django_capture_on_commit_callbacks(execute=True):
        order_place(cart={products["A"].pk: 1, products["B"].pk: 1, products["C"].pk: 1}, session_key="s")
    kinds = list(OutboxEvent.objects.order_by("pk").values_list("kind", "payload__product_ids", "processed_at"))
    assert [(k, ids) for k, ids, _ in kinds] == [
        (OutboxEvent.STOCK_CHANGED, sorted(p.pk for p in products.values())), (OutboxEvent.ORDER_PLACED, None)]
    assert all(processed for _, _, processed in kinds)
    campaign.refresh_from_db()
    assert campaign.status == BundleCampaign.PAUSED and "out of stock" in campaign.status_reason


@pytest.mark.django_db
def test_bundle_add_writes_an_offer_event_that_is_recorded_once(client, django_capture_on_commit_callbacks,
                                                                settings):
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.0
    _, campaign = _catalogue()
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}),
                               {"quantity": 2})
    assert response.status_code == 302
    event = OutboxEvent.objects.get(kind=OutboxEvent.OFFER_EVENT)
    assert (event.payload["kind"], event.payload["campaign_id"], event.payload["quantity"]) == (
        OfferEvent.ADD_TO_CART, campaign.pk, 2)
    assert not OfferEvent.objects.exists()  # written by the handler, after commit
    handle_outbox_event(event.pk)
    handle_outbox_event(event.pk)  # a redelivery
    offer = OfferEvent.objects.get()
    assert (offer.kind, offer.campaign_id, offer.quantity, offer.session_key) == (
        OfferEvent.ADD_TO_CART, campaign.pk, 2, client.session.session_key)
    assert offer.created_at.isoformat() == event.payload["occurred_at"]  # when it happened, not when handled


@pytest.mark.django_db
def test_storefront_serves_and_takes_orders_while_the_broker_is_unreachable(client, settings,
                                                                            django_capture_on_commit_callbacks):
    """Scenario 8's fault check: product page, bundle button, cart and checkout work with no broker at all."""
    from config.celery import app

    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.0
    _, campaign = _catalogue()
    saved_conf = {key: app.conf[key] for key in ("broker_url", "task_always_eager")}
    app.conf.update(broker_url=f"redis://127.0.0.1:{_free_port()}/0", task_always_eager=False)  # nobody listens
    _reset_celery_connections(app)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))
            added = client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}))
            cart = client.get(reverse("shop_bundles:cart"))
            placed = client.post(reverse("shop_bundles:checkout"), {"customer_id": ""})
    finally:
        app.conf.update(saved_conf)
        _reset_celery_connections(app)
    assert page.status_code == 200 and "Frequently bought together" in page.content.decode()
    assert added.status_code == 302 and cart.status_code == 200
    order = Order.objects.get()
    assert placed.status_code == 302 and placed.url == reverse("shop_bundles:order_detail", args=[order.pk])
    assert (order.total, order.discount_total) == (D("22.50"), D("2.50"))
    events = OutboxEvent.objects.order_by("pk")
    assert [e.kind for e in events] == [OutboxEvent.OFFER_EVENT, OutboxEvent.ORDER_PLACED]
    assert all(e.dispatched_at is None and e.processed_at is None for e in events)  # kept for the relay
    assert events[0].last_error.startswith("broker: OperationalError")


# --- the fault test ----------------------------------------------------------------------------

STOCK_SAVES = 60
BUNDLE_ADDS = 40
CLICKS = 20


@pytest.mark.slow
@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_stock_changes_and_offer_events_during_a_broker_outage_are_processed_exactly_once(tmp_path, settings):
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server and redis-cli are needed for the broker-outage test")
    from config.celery import app

    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.0
    settings.SHOP_BUNDLES_EVENT_TOKEN = TOKEN
    products, campaign = _catalogue(stock=100)
    # Cheese joins a second campaign so its saves produce events too.
    cheese_campaign = BundleCampaign.objects.create(name="Apples + Cheese", discount_type="percent",
                                                    discount_value=D("5"),
                                                    starts_at=timezone.now() - timedelta(hours=1))
    for position, sku in enumerate("AC"):
        BundleCampaignItem.objects.create(campaign=cheese_campaign, product=products[sku], position=position)

    with worker_on_private_redis(app, tmp_path) as (redis, worker):

        redis.stop()  # --- the broker goes away ---
        shopper = Client()
        for _ in range(BUNDLE_ADDS):
            response = shopper.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}))
            assert response.status_code == 302
        pos = Client()
        for n in range(CLICKS):
            body = {"id": f"click-{n}", "type": "offer_event",
                    "data": {"kind": "click", "campaign_id": cheese_campaign.pk, "session_key": f"pos-{n}"}}
            for expected in (202, 200):  # the POS retries every event once: the second is a duplicate
                response = pos.post(reverse("shop_bundles:events_receive"), body, content_type="application/json",
                                    HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
                assert response.status_code == expected, response.content
        cheese = Product.objects.get(sku="C")
        for n in range(STOCK_SAVES):  # restocking / selling Cheese, price edits: one event per save
            cheese.stock = 99 - n
            cheese.save()
        bread = Product.objects.get(sku="B")
        bread.stock = 0  # sold out while the broker is down: the bundle must still be paused
        bread.save()

        stock_events = STOCK_SAVES + 1
        expected = BUNDLE_ADDS + CLICKS + stock_events
        pending = OutboxEvent.objects.filter(processed_at__isnull=True)
        assert pending.count() == expected == OutboxEvent.objects.count()
        assert OutboxEvent.objects.filter(kind=OutboxEvent.STOCK_CHANGED).count() == stock_events
        assert not OfferEvent.objects.exclude(kind=OfferEvent.IMPRESSION).exists()
        campaign.refresh_from_db()
        assert campaign.status == BundleCampaign.ACTIVE  # not yet handled
        assert outbox_relay()["failed"] == expected  # the relay cannot deliver either, and does not crash

        redis.start()  # --- the broker comes back ---
        undelivered = OutboxEvent.objects.filter(dispatched_at__isnull=True, processed_at__isnull=True)
        assert _wait_for(lambda: not outbox_relay()["sent"] and not undelivered.exists(), timeout=30)
        assert _wait_for(lambda: not pending.exists(), timeout=90, interval=0.5), (
            f"{pending.count()} unprocessed\n{(tmp_path / 'worker.log').read_text()[-3000:]}")

        # --- exactly once ---
        assert set(OutboxEvent.objects.values_list("attempts", flat=True)) == {1}
        assert OfferEvent.objects.filter(kind=OfferEvent.ADD_TO_CART, campaign=campaign).count() == BUNDLE_ADDS
        clicks = OfferEvent.objects.filter(kind=OfferEvent.CLICK, campaign=cheese_campaign)
        assert clicks.count() == CLICKS
        assert sorted(clicks.values_list("session_key", flat=True)) == sorted(f"pos-{n}" for n in range(CLICKS))
        campaign.refresh_from_db()
        assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "auto: Bread (B) is out of stock")
        assert StaffAction.objects.filter(campaign=campaign, action="auto_pause").count() == 1
        cheese_campaign.refresh_from_db()
        assert cheese_campaign.status == BundleCampaign.ACTIVE
        assert not StaffAction.objects.filter(campaign=cheese_campaign).exists()

        # Redelivered messages (as after a visibility timeout) change nothing.
        for event_id in OutboxEvent.objects.order_by("pk").values_list("pk", flat=True):
            handle_outbox_event.delay(event_id)
        log = tmp_path / "worker.log"
        assert _wait_for(lambda: log.read_text().count("'status': 'already_processed'") == expected, timeout=60)
        assert _wait_for(lambda: redis.pending_messages() == 0, timeout=10, interval=0.5)
        assert OfferEvent.objects.exclude(kind=OfferEvent.IMPRESSION).count() == BUNDLE_ADDS + CLICKS
        assert StaffAction.objects.filter(action__startswith="auto_").count() == 1
        assert set(OutboxEvent.objects.values_list("attempts", flat=True)) == {1}
        assert outbox_relay(now=timezone.now() + timedelta(hours=1))["sent"] == 0
