"""Offer impressions: one RPUSH per product page to the Redis buffer, drained idempotently into PostgreSQL.

The buffer here is real Redis (``SHOP_BUNDLES_TEST_BUFFER_REDIS_URL``) under a
key of each test's own (``tests/conftest.py::impression_buffer``); the drain
writes real rows. Tests of the direct path (buffer off) set
``SHOP_BUNDLES_IMPRESSION_BUFFER_URL = ""``. The fallback when Redis is
unreachable is in ``tests/integration/test_impression_buffer_faults.py``.
"""
import json
import logging
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal as D

import pytest
from django.db import connection, transaction
from django.template import Context, Template
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import BundleCampaign, BundleCampaignItem, Customer, OfferEvent, Product
from shop_bundles.selectors.experiment import assignment_group
from shop_bundles.services import impression_buffer as buffer
from shop_bundles.services.events import impressions_insert, offer_impressions_record
from shop_bundles.services.impression_buffer import impression_buffer_drain, message_encode, row_event_id
from tests.conftest import BUFFER_REDIS_URL


@pytest.fixture
def offer():
    a = Product.objects.create(sku="IA", name="Pasta", price=D("20.00"), stock=50, department="GROCERY")
    b = Product.objects.create(sku="IB", name="Sauce", price=D("5.00"), stock=50, department="GROCERY")
    campaign = BundleCampaign.objects.create(name="Pasta night", discount_type="percent", discount_value=D("10"),
                                             starts_at=timezone.now() - timedelta(hours=1))
    BundleCampaignItem.objects.create(campaign=campaign, product=a, position=0)
    BundleCampaignItem.objects.create(campaign=campaign, product=b, position=1)
    return a, b, campaign


@pytest.fixture
def second_campaign(offer):
    a, _, _ = offer
    c = Product.objects.create(sku="IC", name="Cheese", price=D("8.00"), stock=50, department="DAIRY")
    campaign = BundleCampaign.objects.create(name="Pasta + cheese", discount_type="percent", discount_value=D("5"),
                                             starts_at=timezone.now() - timedelta(hours=1))
    BundleCampaignItem.objects.create(campaign=campaign, product=a, position=0)
    BundleCampaignItem.objects.create(campaign=campaign, product=c, position=1)
    return campaign


def _buffered(key) -> list[bytes]:
    return buffer.redis_client(BUFFER_REDIS_URL).lrange(key, 0, -1)


def _dead(key) -> list[dict]:
    return [json.loads(m) for m in buffer.redis_client(BUFFER_REDIS_URL).lrange(key + ":dead", 0, -1)]


def _rows():
    return list(OfferEvent.objects.filter(kind=OfferEvent.IMPRESSION).order_by("created_at", "event_id").values_list(
        "campaign_id", "session_key", "experiment_group", "customer_id", "created_at", "event_id", "simulated",
        "order_id", "quantity"))


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


# --- the product page: one RPUSH, no database write ----------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_product_page_buffers_one_message_and_the_drain_commits_its_rows(client, offer, second_campaign, settings,
                                                                        impression_buffer):
    """Real commits (no test transaction): the page writes nothing to PostgreSQL; after a drain the rows are there."""
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    a, _, campaign = offer
    with CaptureQueriesContext(connection) as ctx:
        page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": a.sku}))
    assert page.status_code == 200
    assert not any("shop_bundles_offerevent" in q["sql"] for q in ctx.captured_queries)
    session_key = client.cookies["sessionid"].value
    group = assignment_group(session_key)
    assert ('data-campaign="%d"' % campaign.pk in page.content.decode()) == (group == "treatment")

    [raw] = _buffered(impression_buffer)  # one message for the page's two offers
    message = json.loads(raw)
    assert set(message) == {"v", "id", "t", "s", "g", "c", "k"}
    assert (message["v"], message["s"], message["g"], message["c"]) == (1, session_key, group, None)
    assert sorted(message["k"]) == sorted([campaign.pk, second_campaign.pk])
    assert not OfferEvent.objects.exists()  # nothing in the database before the drain

    result = impression_buffer_drain()
    assert (result["messages"], result["inserted"], result["dead"], result["waiting"]) == (1, 2, 0, 0)
    at = datetime.fromisoformat(message["t"])
    message_id = uuid.UUID(message["id"])
    assert _rows() == sorted([(cid, session_key, group, None, at, row_event_id(message_id, i), False, None, 1)
                              for i, cid in enumerate(message["k"])], key=lambda r: r[5])
    assert _buffered(impression_buffer) == []  # trimmed after the commit


@pytest.mark.django_db
def test_impressions_inside_an_outer_transaction_are_buffered_too(offer, impression_buffer):
    _, _, campaign = offer
    with transaction.atomic():
        with CaptureQueriesContext(connection) as ctx:
            assert offer_impressions_record(campaign_ids=[campaign.pk], session_key="s-2",
                                            experiment_group="treatment") == 1
    assert ctx.captured_queries == []
    assert len(_buffered(impression_buffer)) == 1


# --- RPUSH then drain: exactly the right rows ---------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_rpush_then_drain_gives_exactly_the_right_rows(offer, second_campaign, impression_buffer):
    _, _, campaign = offer
    customer = Customer.objects.create(external_id="hh-7")
    # Through the service (time taken from its message) ...
    assert offer_impressions_record(campaign_ids=[campaign.pk, second_campaign.pk, campaign.pk], session_key="s-1",
                                    experiment_group="holdout", customer=customer) == 3
    first = json.loads(_buffered(impression_buffer)[0])
    # ... and two hand-made messages with known times, ids, groups and customers.
    t1 = datetime(2026, 3, 29, 0, 59, 59, 999999, tzinfo=dt_timezone.utc)
    t2 = datetime(2026, 3, 29, 3, 0, 0, 1, tzinfo=dt_timezone(timedelta(hours=2)))
    m1, m2 = uuid.UUID(int=1), uuid.UUID(int=2)
    for mid, at, session, group, cust, cids in ((m1, t1, "s-2", "treatment", None, [second_campaign.pk]),
                                                (m2, t2, "", "treatment", customer.pk, [campaign.pk])):
        assert buffer.impression_buffer_push(message_encode(message_id=mid, created_at=at, session_key=session,
                                                            experiment_group=group, customer_id=cust,
                                                            campaign_ids=cids))
    result = impression_buffer_drain()
    assert (result["messages"], result["inserted"], result["already_stored"], result["dead"]) == (3, 5, 0, 0)
    t0, m0 = datetime.fromisoformat(first["t"]), uuid.UUID(first["id"])
    assert first["c"] == customer.pk
    expected = [(campaign.pk, "s-1", "holdout", customer.pk, t0, row_event_id(m0, 0), False, None, 1),
                (second_campaign.pk, "s-1", "holdout", customer.pk, t0, row_event_id(m0, 1), False, None, 1),
                (campaign.pk, "s-1", "holdout", customer.pk, t0, row_event_id(m0, 2), False, None, 1),
                (second_campaign.pk, "s-2", "treatment", None, t1, row_event_id(m1, 0), False, None, 1),
                (campaign.pk, "", "treatment", customer.pk, t2, row_event_id(m2, 0), False, None, 1)]
    assert sorted(_rows(), key=lambda r: (r[4], str(r[5]))) == sorted(expected, key=lambda r: (r[4], str(r[5])))
    assert _buffered(impression_buffer) == [] and impression_buffer_drain()["messages"] == 0


def test_row_event_ids_are_uuid5_of_the_message_id_and_position():
    mid = uuid.UUID("12345678123456781234567812345678")
    assert row_event_id(mid, 0) == uuid.uuid5(mid, "0") and row_event_id(mid, 1) == uuid.uuid5(mid, "1")
    assert row_event_id(mid, 0) != row_event_id(mid, 1)


# --- idempotence --------------------------------------------------------------------------------

def _push(campaign_ids, *, n=1, session="s", group="treatment"):
    ids = []
    for i in range(n):
        mid = uuid.uuid4()
        assert buffer.impression_buffer_push(message_encode(
            message_id=mid, created_at=timezone.now(), session_key=f"{session}-{i}", experiment_group=group,
            customer_id=None, campaign_ids=campaign_ids))
        ids.append(mid)
    return ids


class Crash(Exception):
    """The drain process dying between the committed insert and the LTRIM."""


@pytest.mark.django_db(transaction=True)
def test_a_crash_between_insert_and_trim_and_draining_twice_store_each_row_once(offer, second_campaign,
                                                                                impression_buffer, monkeypatch):
    _, _, campaign = offer
    _push([campaign.pk, second_campaign.pk], n=3)
    real_trim = buffer._trim

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(buffer, "_trim", crash)
    with pytest.raises(Crash):
        impression_buffer_drain()
    assert OfferEvent.objects.count() == 6  # committed ...
    assert len(_buffered(impression_buffer)) == 3  # ... but not trimmed

    monkeypatch.setattr(buffer, "_trim", real_trim)
    again = impression_buffer_drain()  # the next run reads the same messages
    assert (again["messages"], again["inserted"], again["already_stored"], again["waiting"]) == (3, 0, 6, 0)
    assert OfferEvent.objects.count() == 6
    assert impression_buffer_drain()["messages"] == 0 and OfferEvent.objects.count() == 6
    assert OfferEvent.objects.filter(event_id__isnull=True).count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_drains_at_once_never_trim_what_the_other_has_not_stored(offer, impression_buffer, monkeypatch):
    """Drain A reads 3 messages and stores them; before A trims, drain B stores and trims them and a 4th
    message arrives. A's trim must not remove the 4th (its head check fails), and A then stores it."""
    _, _, campaign = offer
    _push([campaign.pk], n=3)
    real_trim = buffer._trim
    calls = []

    def trim_after_another_drain(*args, **kwargs):
        if not calls:
            calls.append("B")
            monkeypatch.setattr(buffer, "_trim", real_trim)
            other = impression_buffer_drain()  # drain B, complete
            assert (other["messages"], other["inserted"], other["already_stored"]) == (3, 0, 3)
            _push([campaign.pk], n=1, session="late")
        return real_trim(*args, **kwargs)

    monkeypatch.setattr(buffer, "_trim", trim_after_another_drain)
    result = impression_buffer_drain()
    assert result["contended"] == 1 and result["messages"] == 4 and result["inserted"] == 4
    assert OfferEvent.objects.count() == 4
    assert sorted(OfferEvent.objects.values_list("session_key", flat=True)) == ["late-0", "s-0", "s-1", "s-2"]
    assert _buffered(impression_buffer) == []


@pytest.mark.django_db(transaction=True)
def test_rows_already_written_by_the_fallback_are_not_stored_twice(offer, impression_buffer):
    """A push that timed out may still have reached Redis while the page wrote the rows directly."""
    _, _, campaign = offer
    [mid] = _push([campaign.pk, campaign.pk])
    message = json.loads(_buffered(impression_buffer)[0])
    impressions_insert(connection, [OfferEvent(kind=OfferEvent.IMPRESSION, campaign_id=campaign.pk,
                                               session_key="s-0", experiment_group="treatment",
                                               created_at=datetime.fromisoformat(message["t"]),
                                               event_id=row_event_id(mid, i)) for i in range(2)])
    result = impression_buffer_drain()
    assert (result["inserted"], result["already_stored"]) == (0, 2)
    assert OfferEvent.objects.count() == 2


# --- malformed messages -------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_malformed_messages_go_to_the_dead_letter_list_and_the_good_ones_land(offer, impression_buffer, caplog):
    _, _, campaign = offer
    deleted = BundleCampaign.objects.create(name="gone", discount_type="percent", discount_value=D("5"),
                                            starts_at=timezone.now())
    deleted_pk = deleted.pk
    deleted.delete()
    client = buffer.redis_client()
    now = timezone.now()

    def good(session, cids):
        return message_encode(message_id=uuid.uuid4(), created_at=now, session_key=session,
                              experiment_group="treatment", customer_id=None, campaign_ids=cids)

    valid = {"v": 1, "id": uuid.uuid4().hex, "t": now.isoformat(), "s": "x", "g": "treatment", "c": None,
             "k": [campaign.pk]}
    bad = [
        (b"not json at all", "not UTF-8 JSON"),
        (b"\xff\xfe\x00", "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (json.dumps({**valid, "v": 2}).encode(), "unknown message version 2"),
        (json.dumps({k: v for k, v in valid.items() if k != "k"}).encode(), "missing field(s) k"),
        (json.dumps({**valid, "id": "nope"}).encode(), "id 'nope' is not a UUID"),
        (json.dumps({**valid, "t": "2026-01-01T00:00:00"}).encode(), "is not an aware ISO 8601 time"),
        (json.dumps({**valid, "g": "control"}).encode(), "g 'control' is not one of treatment, holdout"),
        (json.dumps({**valid, "s": "x" * 65}).encode(), "s must be a string of at most 64 characters"),
        (json.dumps({**valid, "c": "7"}).encode(), "c '7' is not a customer id"),
        (json.dumps({**valid, "k": [str(campaign.pk)]}).encode(), "k must be a list of 1 to 1000 campaign ids"),
        (json.dumps({**valid, "k": []}).encode(), "k must be a list of 1 to 1000 campaign ids"),
    ]
    client.rpush(impression_buffer, good("good-1", [campaign.pk]), *[m for m, _ in bad[:6]],
                 good("good-2", [campaign.pk, deleted_pk]), *[m for m, _ in bad[6:]], good("good-3", [campaign.pk]))
    with caplog.at_level(logging.WARNING, logger="shop_bundles.services.impression_buffer"):
        result = impression_buffer_drain(batch_size=5)  # good and bad messages share batches
    assert (result["messages"], result["inserted"], result["dead"], result["orphaned"]) == (15, 3, 12, 1)
    assert sorted(OfferEvent.objects.values_list("session_key", "campaign_id")) == [
        ("good-1", campaign.pk), ("good-2", campaign.pk), ("good-3", campaign.pk)]
    assert _buffered(impression_buffer) == []
    dead = _dead(impression_buffer)
    assert len(dead) == len(bad)
    for entry, (raw, reason) in zip(dead, bad):
        assert reason in entry["reason"]
        if "message" in entry:
            assert entry["message"].encode() == raw
        else:
            import base64
            assert base64.b64decode(entry["message_base64"]) == raw
    warnings = [r.getMessage() for r in caplog.records if "malformed message" in r.getMessage()]
    assert len(warnings) == 12 and "unknown message version 2" in " ".join(warnings)
    assert buffer.impression_buffer_length() == {"enabled": True, "waiting": 0, "dead": 12}


# --- the direct path: buffer off ------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_without_a_buffer_the_page_commits_its_rows_in_one_round_trip(client, offer, settings, impression_buffer):
    """``SHOP_BUNDLES_IMPRESSION_BUFFER_URL = ""``: one ``SET LOCAL synchronous_commit TO off; INSERT`` query."""
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = ""
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    a, _, campaign = offer
    durable = _synchronous_commit()
    with CaptureQueriesContext(connection) as ctx:
        page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": a.sku}))
    assert page.status_code == 200
    session_key = client.cookies["sessionid"].value
    group = assignment_group(session_key)
    event = OfferEvent.objects.get(kind=OfferEvent.IMPRESSION)
    assert (event.campaign_id, event.session_key, event.experiment_group) == (campaign.pk, session_key, group)
    assert not event.simulated and event.order_id is None and event.event_id is None
    sql = [q["sql"] for q in ctx.captured_queries]
    insert = next(i for i, s in enumerate(sql) if "INSERT INTO \"shop_bundles_offerevent\"" in s)
    assert sql[insert].startswith("SET LOCAL synchronous_commit TO off; INSERT INTO")
    assert sql[insert].endswith("ON CONFLICT DO NOTHING")
    assert sum("shop_bundles_offerevent" in q for q in sql) == 1  # one round trip, no BEGIN/COMMIT around it
    assert not any("SET LOCAL can only be used" in n for n in connection.connection.notices)  # it took effect
    # LOCAL: the connection is back to the server's durable setting for everything after (orders, carts).
    assert _synchronous_commit() == durable == "on"
    assert _buffered(impression_buffer) == []


@pytest.mark.django_db(transaction=True)
def test_set_local_in_the_same_query_string_applies_to_that_implicit_transaction_only():
    """The PostgreSQL behaviour the one-round-trip write relies on (a lone SET LOCAL would do nothing)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO off; SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "off"
    assert _synchronous_commit() == "on"


@pytest.mark.django_db(transaction=True)
def test_direct_record_outside_a_transaction_commits_and_restores_durability(offer, settings):
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = ""
    _, _, campaign = offer
    assert offer_impressions_record(campaign_ids=[campaign.pk, campaign.pk], session_key="s-1",
                                    experiment_group="holdout") == 2
    assert _synchronous_commit() == "on"
    assert list(OfferEvent.objects.values_list("campaign_id", "session_key", "experiment_group")) == [
        (campaign.pk, "s-1", "holdout")] * 2
    assert offer_impressions_record(campaign_ids=[], session_key="s-1", experiment_group="holdout") == 0


@pytest.mark.django_db(transaction=True)
def test_direct_record_inside_an_outer_transaction_leaves_its_durability_alone(offer, settings):
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = ""
    _, _, campaign = offer
    with transaction.atomic():
        with CaptureQueriesContext(connection) as ctx:
            offer_impressions_record(campaign_ids=[campaign.pk], session_key="s-2", experiment_group="treatment")
        assert _synchronous_commit() == "on"
    assert not any("synchronous_commit" in q["sql"] for q in ctx.captured_queries)
    assert OfferEvent.objects.filter(session_key="s-2").count() == 1


def test_buffer_url_defaults_to_a_redis_broker_and_is_off_otherwise(settings):
    from shop_bundles.app_settings import impression_buffer_url

    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = None
    settings.CELERY_BROKER_URL = "redis://broker.example:6379/0"
    assert impression_buffer_url() == "redis://broker.example:6379/0"
    settings.CELERY_BROKER_URL = "memory://"
    assert impression_buffer_url() == ""
    settings.CELERY_BROKER_URL = "amqp://guest@rabbit//"
    assert impression_buffer_url() == ""
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = ""
    settings.CELERY_BROKER_URL = "redis://broker.example:6379/0"
    assert impression_buffer_url() == ""  # explicitly off


def test_one_connection_pool_per_process_and_url():
    assert buffer.redis_client() is buffer.redis_client()
    assert buffer.redis_client().connection_pool.connection_kwargs["socket_timeout"] == 0.1
    assert buffer.redis_client().get_retry().get_retries() == 0


@pytest.mark.django_db
def test_the_drain_is_on_the_beat_schedule_every_five_seconds():
    from django_celery_beat.models import PeriodicTask

    from shop_bundles.schedule import ensure_default_schedule

    ensure_default_schedule()
    task = PeriodicTask.objects.get(name="Drain impression buffer")
    assert task.task == "shop_bundles.tasks.drain_impression_buffer"
    assert (task.interval.every, task.interval.period, task.expire_seconds) == (5, "seconds", 30)


# --- the template tag -----------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("share,shown", [(0.0, True), (1.0, False)])
def test_template_tag_records_impressions_and_hides_offers_from_holdout(offer, settings, share, shown):
    """A shop's own page using ``{% bundle_offers product %}`` records impressions like the storefront view."""
    from django.contrib.sessions.backends.db import SessionStore

    settings.SHOP_BUNDLES_HOLDOUT_SHARE = share
    a, _, campaign = offer
    request = RequestFactory().get("/own-page/")
    request.session = SessionStore()
    html = Template("{% load shop_bundles_storefront %}{% bundle_offers product %}").render(
        Context({"product": a, "request": request}))
    assert ('data-campaign="%d"' % campaign.pk in html) is shown
    assert impression_buffer_drain()["inserted"] == 1
    event = OfferEvent.objects.get(kind=OfferEvent.IMPRESSION)
    assert event.campaign_id == campaign.pk and event.session_key == request.session.session_key
    assert event.experiment_group == ("treatment" if shown else "holdout")
