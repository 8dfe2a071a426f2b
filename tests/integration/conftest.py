"""Fixtures for integration tests: a real Celery worker subprocess on Redis.

``celery_worker`` starts ``celery -A config worker -Q default,ml -c 1 --pool prefork``
against a broker of its own and the pytest-django test database (so the test
must use ``transactional_db``: the worker only sees committed rows). The broker
(:func:`_test_broker`):

* ``SHOP_BUNDLES_TEST_REDIS_URL`` when set: that Redis database, **flushed
  first**, so it must be used by one test run at a time;
* else, when ``redis-server`` is installed, a private ``redis-server`` on a free
  port for the test (stopped afterwards), so concurrent test runs on one
  machine never share queues or flush each other's messages;
* else ``redis://127.0.0.1:6379/13`` (flushed first: one run at a time).

The test process's Celery app is pointed at the same broker with
``task_always_eager`` off for the duration of the test, then restored.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Redis database the worker tests use (and flush) when set; unset: a private redis-server per test.
REDIS_URL = os.environ.get("SHOP_BUNDLES_TEST_REDIS_URL", "")
#: The shared database used (and flushed) only when REDIS_URL is unset and redis-server is not installed.
SHARED_REDIS_URL = "redis://127.0.0.1:6379/13"


def wait_for(predicate, *, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _redis_available(url: str) -> bool:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.flushdb()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no Redis here"
        return False


class WorkerHandle:
    """A running worker subprocess: its broker URL and log file, and how to read the log."""

    def __init__(self, process: subprocess.Popen, log_path: Path, broker_url: str):
        self.process = process
        self.log_path = log_path
        self.broker_url = broker_url

    def log(self) -> str:
        """The worker's combined stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def _test_broker(tmp_path: Path):
    """The broker URL of one worker test (see the module docstring); yields it, stops a private server after.

    Skips the test when the configured or shared Redis does not answer.
    """
    if REDIS_URL:
        if not _redis_available(REDIS_URL):
            pytest.skip(f"Redis not reachable at SHOP_BUNDLES_TEST_REDIS_URL={REDIS_URL}")
        yield REDIS_URL
        return
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        from tests.integration.test_outbox_faults import PrivateRedis, _free_port

        workdir = tmp_path / "redis"
        workdir.mkdir()
        server = PrivateRedis(_free_port(), workdir)
        try:
            server.start()
            yield server.url
        finally:
            server.stop()
        return
    if not _redis_available(SHARED_REDIS_URL):
        pytest.skip(f"redis-server not installed and Redis not reachable at {SHARED_REDIS_URL}")
    yield SHARED_REDIS_URL


@pytest.fixture
def celery_worker(transactional_db, tmp_path, settings):
    """Start a real Celery worker for this test and point the test's Celery app at its broker.

    Yields:
        WorkerHandle; the worker is stopped (TERM, then KILL) at teardown, then its private Redis (if any).
    """
    with _test_broker(tmp_path) as broker_url:
        yield from _run_worker(tmp_path, settings, broker_url)


def _run_worker(tmp_path: Path, settings, broker_url: str):
    """The body of :func:`celery_worker` on ``broker_url`` (a generator yielding the WorkerHandle)."""
    from django.db import connection

    db = connection.settings_dict
    database_url = (f"postgres://{db['USER'] or 'postgres'}"
                    f"{(':' + db['PASSWORD']) if db.get('PASSWORD') else ''}@{db['HOST'] or '127.0.0.1'}:"
                    f"{db['PORT'] or 5432}/{db['NAME']}")
    artifact_dir = tmp_path / "models"
    settings.SHOP_BUNDLES_ARTIFACT_DIR = str(artifact_dir)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SHOP_BUNDLES_ARTIFACT_DIR": str(artifact_dir),
        "DJANGO_TIME_ZONE": settings.TIME_ZONE,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CELERY_RESULT_BACKEND", None)
    celery_bin = Path(sys.executable).with_name("celery")
    log_path = tmp_path / "worker.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [str(celery_bin), "-A", "config", "worker", "-Q", "default,ml", "-c", "1", "--pool", "prefork",
         "-l", "info", "--without-gossip", "--without-mingle", "-n", f"pytest-{os.getpid()}@%h"],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    handle = WorkerHandle(process, log_path, broker_url)

    from config.celery import app

    saved = {key: app.conf.get(key) for key in ("broker_url", "task_always_eager")}
    app.conf.broker_url = broker_url
    app.conf.task_always_eager = False
    settings.CELERY_BROKER_URL = broker_url
    settings.CELERY_TASK_ALWAYS_EAGER = False
    _reset_connections(app)
    try:
        wait_for(lambda: " ready." in handle.log() or process.poll() is not None, timeout=90,
                 what="the Celery worker to start")
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited early:\n{handle.log()[-4000:]}")
        yield handle
    finally:
        app.conf.broker_url = saved["broker_url"]
        app.conf.task_always_eager = saved["task_always_eager"]
        _reset_connections(app)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(timeout=10)
        log_file.close()


def _reset_connections(app) -> None:
    """Drop the app's cached broker connections so the next send uses the current ``broker_url``.

    ``app.pool`` lives in kombu's global pool registry; ``kombu.pools.reset()`` closes
    and forgets those pools so fresh ones are made for the new URL.
    """
    from kombu import pools

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture(autouse=True)
def _everyone_in_treatment(settings):
    """SHOP_BUNDLES_HOLDOUT_SHARE = 0 so the storefront always shows offers in these tests."""
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.0
