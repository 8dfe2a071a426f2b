"""Issue 5, item 3: the impression buffer under faults, against real Redis servers and a real Celery worker.

* Redis refuses connections: the product page serves and its impressions are
  committed to PostgreSQL directly (with event ids), no drain needed.
* Redis accepts the connection but never answers: the page pays one 0.1 s
  timeout, then the circuit breaker skips Redis (no new connection) until the
  pause is over.
* A private Redis is the broker and the buffer of a real Celery worker: page
  views are buffered and the worker's ``drain_impression_buffer`` task stores
  them; Redis is stopped (page views fall back to PostgreSQL) and restarted
  (buffered again), and two drain runs at once store every impression
  exactly once.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import BundleCampaign, BundleCampaignItem, OfferEvent, Product
from shop_bundles.services import impression_buffer as buffer
from tests.integration.test_outbox_faults import _free_port, _wait_for, worker_on_private_redis

pytestmark = pytest.mark.faults


def _catalogue():
    """Apples (A) in two live bundles, with Bread (B) and with Cheese (C): two impressions per page of A."""
    products = {sku: Product.objects.create(sku=sku, name=name, price=D(price), stock=100)
                for sku, name, price in (("A", "Apples", "20.00"), ("B", "Bread", "5.00"), ("C", "Cheese", "8.00"))}
    campaigns = []
    for other in "BC":
        campaign = BundleCampaign.objects.create(name=f"A + {other}", discount_type="percent", discount_value=D("10"),
                                                 starts_at=timezone.now() - timedelta(hours=1))
        BundleCampaignItem.objects.create(campaign=campaign, product=products["A"], position=0)
        BundleCampaignItem.objects.create(campaign=campaign, product=products[other], position=1)
        campaigns.append(campaign)
    return products, campaigns


def _page(client: Client):
    page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))
    assert page.status_code == 200 and "Frequently bought together" in page.content.decode()
    return client.cookies["sessionid"].value


def _impressions():
    return sorted(OfferEvent.objects.filter(kind=OfferEvent.IMPRESSION).values_list("session_key", "campaign_id"))


@pytest.mark.django_db(transaction=True)
def test_product_page_records_impressions_in_postgresql_while_the_impression_buffer_is_unreachable(settings):
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = f"redis://127.0.0.1:{_free_port()}/0"  # nobody listens
    _, campaigns = _catalogue()
    sessions = [_page(Client()) for _ in range(3)]
    assert buffer.buffer_paused().startswith("RPUSH failed (ConnectionError")
    # Committed rows, without any drain: the first page after the push failed, the others with Redis skipped.
    assert _impressions() == sorted((s, c.pk) for s in sessions for c in campaigns)
    # The first page built a message before its push failed: its rows carry the message's event ids (so a
    # push that did reach Redis is not stored twice); with the breaker open no message is built.
    assert sorted(OfferEvent.objects.filter(event_id__isnull=False).values_list("session_key", flat=True)) == [
        sessions[0]] * 2


class SilentRedis:
    """A TCP server that accepts connections and never answers (a hung Redis); counts the connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections.append(conn)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.mark.django_db(transaction=True)
def test_a_hung_redis_costs_one_timeout_then_the_circuit_breaker_skips_it(settings):
    silent = SilentRedis()
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = silent.url
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_PAUSE = 1.0
    _, campaigns = _catalogue()
    try:
        first = _page(Client())  # connects, RPUSH times out (0.1 s), rows written directly
        assert _wait_for(lambda: len(silent.connections) == 1, timeout=5, interval=0.05)
        assert buffer.buffer_paused().startswith("RPUSH failed (TimeoutError")
        more = [_page(Client()) for _ in range(5)]  # breaker open: Redis is not even tried
        time.sleep(0.2)
        assert len(silent.connections) == 1
        time.sleep(1.0)  # the pause is over: the next page tries Redis again (a new connection: the old one
        last = _page(Client())  # was dropped after its timeout)
        assert _wait_for(lambda: len(silent.connections) == 2, timeout=5, interval=0.05)
    finally:
        silent.close()
    assert _impressions() == sorted((s, c.pk) for s in [first, *more, last] for c in campaigns)


@pytest.mark.slow
@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_drains_the_buffer_exactly_once_across_a_redis_outage(tmp_path, settings, monkeypatch,
                                                                           impression_buffer):
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server and redis-cli are needed for this test")
    from config.celery import app
    from shop_bundles.tasks import drain_impression_buffer

    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_PAUSE = 0.5
    # The worker subprocess buffers and drains the same list: its broker Redis, under this test's key.
    monkeypatch.delenv("SHOP_BUNDLES_IMPRESSION_BUFFER_URL", raising=False)
    monkeypatch.setenv("SHOP_BUNDLES_IMPRESSION_BUFFER_KEY", impression_buffer)
    _, campaigns = _catalogue()
    with worker_on_private_redis(app, tmp_path) as (redis, worker):
        settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = redis.url
        before = [_page(Client()) for _ in range(10)]
        assert int(redis.cli("llen", impression_buffer).stdout) == 10
        assert not OfferEvent.objects.exists()
        drain_impression_buffer.delay()  # what beat sends every 5 s
        assert _wait_for(lambda: len(_impressions()) == 20, timeout=60), (
            f"{len(_impressions())} rows;\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        assert int(redis.cli("llen", impression_buffer).stdout) == 0

        redis.stop()  # --- the buffer goes away: pages fall back to PostgreSQL ---
        during = [_page(Client()) for _ in range(4)]
        assert _impressions() == sorted((s, c.pk) for s in before + during for c in campaigns)

        redis.start()  # --- back (empty: no persistence) once the breaker's pause is over ---
        time.sleep(0.6)
        after = [_page(Client()) for _ in range(6)]
        assert int(redis.cli("llen", impression_buffer).stdout) == 6
        assert not buffer.buffer_paused()

        drain_impression_buffer.delay()
        drain_impression_buffer.delay()  # a second run at once (as beat every 5 s may overlap) stores nothing twice
        expected = sorted((s, c.pk) for s in before + during + after for c in campaigns)
        assert _wait_for(lambda: len(_impressions()) >= len(expected), timeout=60), (
            f"{len(_impressions())} rows;\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        assert _wait_for(lambda: redis.pending_messages() == 0, timeout=30)
        assert _impressions() == expected
        assert int(redis.cli("llen", impression_buffer).stdout) == 0
        log = (tmp_path / "worker.log").read_text()
        assert log.count("succeeded") >= 3 and "Traceback" not in log
