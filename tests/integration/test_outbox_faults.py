"""Issue 4, part 1: order events survive a broker outage (transactional outbox).

The fault test runs a real Celery worker subprocess and a real Redis server
against the pytest-django PostgreSQL test database. It uses a private
``redis-server`` on a free port (not the shared one on 6379), so stopping the
broker cannot disturb other processes using Redis; the server is always shut
down, and the worker stopped, in ``finally`` blocks.

The other tests here are fast and need no worker: they prove the outbox row
rolls back with its order, the handler is idempotent and the relay's rules.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal as D
from pathlib import Path
from urllib.parse import quote

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count
from django.test import Client
from django.urls import resolve, reverse
from django.utils import timezone
from kombu.exceptions import OperationalError

from shop_bundles.models import (
    BundleCampaign,
    BundleCampaignItem,
    OfferEvent,
    Order,
    OrderEvent,
    OutboxEvent,
    Product,
)
from shop_bundles.services import outbox
from shop_bundles.services.orders import order_place
from shop_bundles.services.outbox import outbox_event_handle, outbox_relay
from shop_bundles.tasks import handle_outbox_event, record_order_placed

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 500
SHOPPERS = 8


@pytest.fixture(autouse=True)
def _fast_path_not_paused(monkeypatch):
    """Each test starts with the on-commit fast path enabled (it pauses after a broker error)."""
    monkeypatch.setattr(outbox, "_fast_path_paused_until", 0.0)


def _catalogue(stock=50):
    """Products A (20.00), B (5.00), C (8.00) and a live 10 % bundle A+B."""
    products = {sku: Product.objects.create(sku=sku, name=f"Product {sku}", price=D(price), stock=stock)
                for sku, price in {"A": "20.00", "B": "5.00", "C": "8.00"}.items()}
    campaign = BundleCampaign.objects.create(name="AB", discount_type="percent", discount_value=D("10"),
                                             starts_at=timezone.now() - timedelta(hours=1))
    for position, sku in enumerate("AB"):
        BundleCampaignItem.objects.create(campaign=campaign, product=products[sku], position=position)
    return products, campaign


# --- fast tests (no worker) --------------------------------------------------------------------

@pytest.mark.django_db
def test_outbox_row_rolls_back_with_a_failed_order(django_capture_on_commit_callbacks):
    products, _ = _catalogue()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError, match="payment declined"):
            with transaction.atomic():
                order_place(cart={products["A"].pk: 1}, session_key="s")
                assert OutboxEvent.objects.count() == 1  # written inside the order's transaction
                raise RuntimeError("payment declined")  # anything failing later in the same transaction
        with pytest.raises(ValidationError):
            order_place(cart={products["A"].pk: 51}, session_key="s")  # refused: not enough stock
    assert callbacks == []  # nothing is offered to the broker for a rolled-back order
    assert not Order.objects.exists() and not OutboxEvent.objects.exists() and not OrderEvent.objects.exists()
    assert Product.objects.get(pk=products["A"].pk).stock == 50


@pytest.mark.django_db(transaction=True)
def test_outbox_event_add_refuses_to_run_outside_a_transaction():
    with pytest.raises(RuntimeError, match="inside the transaction"):
        outbox.outbox_event_add(kind=OutboxEvent.ORDER_PLACED, payload={"order_id": 1})


@pytest.mark.django_db
def test_handle_outbox_event_twice_records_one_order_event(django_capture_on_commit_callbacks):
    products, campaign = _catalogue()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        order = order_place(cart={products["A"].pk: 2, products["B"].pk: 2}, session_key="s1")
    assert len(callbacks) == 1
    event = OutboxEvent.objects.get()
    assert (event.kind, event.payload["order_id"], event.processed_at, event.attempts) == (
        OutboxEvent.ORDER_PLACED, order.pk, None, 0)

    first = handle_outbox_event(event.pk)
    second = handle_outbox_event(event.pk)
    record_order_placed(order.pk)  # a legacy message for the same order changes nothing either
    assert first["status"] == "processed" and first["result"]["created"] is True
    assert second == {"event_id": event.pk, "kind": OutboxEvent.ORDER_PLACED, "status": "already_processed",
                      "result": None}
    assert OrderEvent.objects.filter(order=order).count() == 1
    assert OfferEvent.objects.get(kind=OfferEvent.PURCHASE, order=order).campaign_id == campaign.pk
    event.refresh_from_db()
    assert event.processed_at is not None and event.attempts == 1


@pytest.mark.django_db
def test_checkout_survives_a_broker_error_and_the_relay_delivers_later(client, monkeypatch,
                                                                       django_capture_on_commit_callbacks):
    products, _ = _catalogue()
    sent = []

    def broker_down(event_id, *, retries):
        """The broker refuses the connection."""
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(outbox, "_send", broker_down)
    client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": 1})
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("shop_bundles:checkout"), {"customer_id": ""})
    order = Order.objects.get()
    assert len(callbacks) == 1
    assert response.status_code == 302 and response.url == reverse("shop_bundles:order_detail", args=[order.pk])
    event = OutboxEvent.objects.get()
    assert event.dispatched_at is None and event.processed_at is None
    assert event.last_error.startswith("broker: OperationalError")
    assert outbox_relay() == {"sent": 0, "resent": 0, "failed": 1, "handler_errors": 0, "dead": 0}
    event.refresh_from_db()
    assert event.dispatched_at is None  # still waiting for the next relay

    monkeypatch.setattr(outbox, "_send", lambda event_id, *, retries: sent.append(event_id))
    assert outbox_relay()["sent"] == 1 and sent == [event.pk]
    assert outbox_relay()["sent"] == 0 and sent == [event.pk]  # not re-sent while fresh
    handle_outbox_event(event.pk)
    assert OrderEvent.objects.filter(order=order).count() == 1


@pytest.mark.django_db
def test_relay_resends_stale_events_only_and_stops_after_max_attempts(monkeypatch, settings):
    products, _ = _catalogue()
    sent = []
    monkeypatch.setattr(outbox, "_send", lambda event_id, *, retries: sent.append(event_id))
    with transaction.atomic():
        orders = [order_place(cart={products["C"].pk: 1}, session_key="") for _ in range(3)]
    events = list(OutboxEvent.objects.order_by("pk"))
    assert [e.payload["order_id"] for e in events] == [o.pk for o in orders]

    now = timezone.now()
    assert outbox_relay(now=now) == {"sent": 3, "resent": 0, "failed": 0, "handler_errors": 0, "dead": 0}
    handle_outbox_event(events[0].pk)
    assert outbox_relay(now=now + timedelta(minutes=4))["sent"] == 0  # dispatched, not yet stale
    result = outbox_relay(now=now + timedelta(minutes=6))  # stale and unprocessed: sent again
    assert (result["sent"], result["resent"]) == (2, 2)
    assert sent == [e.pk for e in events] + [events[1].pk, events[2].pk]

    settings.SHOP_BUNDLES_OUTBOX_MAX_ATTEMPTS = 1
    monkeypatch.setitem(outbox.HANDLERS, OutboxEvent.ORDER_PLACED, lambda payload: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        outbox_event_handle(event_id=events[1].pk)
    failed = OutboxEvent.objects.get(pk=events[1].pk)
    assert (failed.attempts, failed.processed_at) == (1, None)
    assert failed.last_error.startswith("handler: ZeroDivisionError")
    assert not OrderEvent.objects.filter(order_id=orders[1].pk).exists()
    result = outbox_relay(now=now + timedelta(minutes=20))
    assert (result["sent"], result["dead"]) == (1, 1)  # only the event that never failed


# --- the fault test: a real worker, a real Redis outage, 500 storefront orders ----------------

def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A throw-away ``redis-server`` on its own port, started and stopped by the test."""

    def __init__(self, port: int, workdir: Path):
        self.port, self.workdir, self.process = port, workdir, None

    @property
    def url(self) -> str:
        """Broker URL of this server (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str, timeout: float = 5) -> subprocess.CompletedProcess:
        """Run ``redis-cli`` against this server."""
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> None:
        """Start the server (no persistence) and wait until it answers PING."""
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("ping", timeout=2).stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        """``SHUTDOWN NOSAVE``, then make sure the process is gone (SIGKILL as a last resort)."""
        if self.process is None:
            return
        try:
            self.cli("shutdown", "nosave", timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def pending_messages(self) -> int:
        """Messages waiting in the ``default`` queue plus delivered-but-unacked ones."""
        queued = self.cli("llen", "default").stdout.strip() or "0"
        unacked = self.cli("hlen", "unacked").stdout.strip() or "0"
        return int(queued) + int(unacked)


def _test_database_url() -> str:
    """DATABASE_URL of the pytest-django test database, for the worker subprocess."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _start_worker(broker_url: str, logfile: Path) -> subprocess.Popen:
    """Start ``celery -A config worker -Q default,ml -c 2`` on the test database; wait until ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env.update(CELERY_BROKER_URL=broker_url, DATABASE_URL=_test_database_url(),
               DJANGO_SETTINGS_MODULE="config.settings", PYTHONUNBUFFERED="1",
               DATABASE_CONN_MAX_AGE="60")  # as in production: worker children keep their connection
    celery_bin = Path(sys.executable).parent / "celery"
    command = [str(celery_bin) if celery_bin.exists() else "celery", "-A", "config", "worker", "-Q", "default,ml",
               "-c", "2", "-l", "info", "-n", f"outbox-faults-{os.getpid()}@%h",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
    log = logfile.open("w")
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"celery worker exited:\n{logfile.read_text()[-3000:]}")
        if " ready." in logfile.read_text():
            return worker
        time.sleep(0.2)
    _stop_worker(worker)
    raise RuntimeError(f"celery worker not ready after 60 s:\n{logfile.read_text()[-3000:]}")


def _stop_worker(worker: subprocess.Popen) -> None:
    """Warm shutdown (SIGTERM to the worker's process group), SIGKILL after 20 s."""
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


def _reset_celery_connections(app) -> None:
    """Drop the app's cached broker connection and producer pools (after changing broker_url).

    ``kombu.pools.reset()`` also empties kombu's global pool registry, so no later test (eager mode
    acquires a producer too) gets a pool that was closed here.
    """
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    pools.reset()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@contextmanager
def worker_on_private_redis(app, tmp_path: Path):
    """A private Redis and a real Celery worker on it, with ``app`` sending there; yields ``(redis, worker)``.

    On exit (also on failure) the worker and Redis are stopped and ``app``'s
    broker settings and connection pools are restored.
    """
    redis = PrivateRedis(_free_port(), tmp_path)
    saved_conf = {key: app.conf[key] for key in ("broker_url", "task_always_eager")}
    worker = None
    try:
        redis.start()
        app.conf.update(broker_url=redis.url, task_always_eager=False)
        _reset_celery_connections(app)
        worker = _start_worker(redis.url, tmp_path / "worker.log")
        yield redis, worker
    finally:
        try:
            if worker is not None:
                _stop_worker(worker)
        finally:
            redis.stop()
            app.conf.update(saved_conf)
            _reset_celery_connections(app)


def _wait_for(condition, timeout: float, interval: float = 0.5) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


@pytest.mark.slow
@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_500_orders_placed_while_redis_is_down_are_each_processed_exactly_once(tmp_path):
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server and redis-cli are needed for the broker-outage test")
    from config.celery import app

    products, campaign = _catalogue(stock=10_000)
    timings = {}
    started = time.monotonic()
    with worker_on_private_redis(app, tmp_path) as (redis, worker):
        timings["worker ready"] = time.monotonic() - started

        # --- the broker goes away -----------------------------------------------------------
        redis.stop()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=SHOPPERS) as pool:  # concurrent shoppers, one session each
            failures = [f for part in pool.map(_shop, [range(i, ORDERS, SHOPPERS) for i in range(SHOPPERS)])
                        for f in part]
        timings["500 checkouts, broker down"] = time.monotonic() - t0

        assert failures == []
        assert Order.objects.filter(source=Order.SOURCE_STOREFRONT).count() == ORDERS
        pending = OutboxEvent.objects.filter(kind=OutboxEvent.ORDER_PLACED, dispatched_at__isnull=True,
                                             processed_at__isnull=True)
        assert pending.count() == ORDERS == OutboxEvent.objects.count()
        order_ids = set(Order.objects.values_list("pk", flat=True))
        assert set(pending.values_list("payload__order_id", flat=True)) == order_ids
        assert OrderEvent.objects.count() == 0
        assert OutboxEvent.objects.exclude(last_error="").exists()  # the fast path tried and was refused
        assert outbox_relay()["failed"] == ORDERS  # the relay cannot deliver either, and does not crash
        assert pending.count() == ORDERS

        # --- the broker comes back; the relay delivers, the worker processes -------------------
        redis.start()
        t0 = time.monotonic()
        totals = {"sent": 0, "resent": 0, "failed": 0}
        assert _wait_for(lambda: not _relay_into(totals) and not pending.exists(), timeout=30, interval=0.5), totals
        assert totals["sent"] == ORDERS and totals["resent"] == 0
        timings["relay"] = time.monotonic() - t0

        unprocessed = OutboxEvent.objects.filter(processed_at__isnull=True)
        assert _wait_for(lambda: not unprocessed.exists(), timeout=120, interval=1), (
            f"{unprocessed.count()} events unprocessed;\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        timings["processed"] = time.monotonic() - t0
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()})

        # --- exactly once --------------------------------------------------------------------
        assert OrderEvent.objects.count() == ORDERS
        per_order = Order.objects.annotate(n=Count("event")).values_list("n", flat=True)
        assert sorted(set(per_order)) == [1]
        assert set(OutboxEvent.objects.values_list("attempts", flat=True)) == {1}
        assert OfferEvent.objects.filter(kind=OfferEvent.PURCHASE, campaign=campaign).count() == ORDERS // 2

        # Nothing is re-sent, not even once the re-dispatch timeout has long passed.
        assert outbox_relay()["sent"] == 0
        assert outbox_relay(now=timezone.now() + timedelta(hours=1))["sent"] == 0

        # Duplicate deliveries (as after a redelivery) change nothing.
        for event_id in OutboxEvent.objects.order_by("pk").values_list("pk", flat=True)[:50]:
            handle_outbox_event.delay(event_id)
        worker_log = tmp_path / "worker.log"
        assert _wait_for(lambda: worker_log.read_text().count("'status': 'already_processed'") == 50, timeout=30)
        assert _wait_for(lambda: redis.pending_messages() == 0, timeout=10, interval=0.5)
        assert OrderEvent.objects.count() == ORDERS
        assert set(OutboxEvent.objects.values_list("attempts", flat=True)) == {1}
        timings["total"] = time.monotonic() - started
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()})


def _shop(numbers: range) -> list:
    """One shopper (own session) places orders ``numbers`` through the storefront; returns the failures.

    Even-numbered orders hold A + B (the bundle), odd ones C; two in three give a customer id.
    """
    client, failures = Client(), []
    try:
        for n in numbers:
            try:
                for sku in (["A", "B"] if n % 2 == 0 else ["C"]):
                    added = client.post(reverse("shop_bundles:cart_add", kwargs={"sku": sku}), {"quantity": 1})
                    if added.status_code != 302:
                        failures.append((n, sku, added.status_code))
                response = client.post(reverse("shop_bundles:checkout"),
                                       {"customer_id": f"C-{n % 7}" if n % 3 else ""})
                if response.status_code != 302 or resolve(response.url).url_name != "order_detail":
                    failures.append((n, "checkout", response.status_code, getattr(response, "url", "")))
            except Exception as exc:  # noqa: BLE001 - a request that raised is a failed request
                failures.append((n, "exception", repr(exc)))
    finally:
        connection.close()  # this thread's own database connection
    return failures


def _relay_into(totals: dict) -> int:
    """Run one relay, add its counts to ``totals``; returns the number it sent (0 when there was nothing)."""
    result = outbox_relay()
    for key in totals:
        totals[key] += result[key]
    return result["sent"] + result["failed"]
