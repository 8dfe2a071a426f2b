"""The ML seam: database → frames (ml_bridge), training runs, model activation, scoring into suggestions.

Fast tests stub ``bundling_ml.pipeline`` to check the seam's bookkeeping
(W1 duplicate slots, W2 lost workers, the 2 % activation rule, failures);
the ``slow`` tests train and score for real on a Complete Journey slice.
"""
import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from django.db import connections
from django.test.utils import override_settings
from django.utils import timezone

from shop_bundles import ml_bridge
from shop_bundles.models import (
    BundleCampaign,
    BundleSuggestion,
    Customer,
    ModelVersion,
    Order,
    OrderLine,
    Product,
    TrainingRun,
)
from shop_bundles.services import training as training_service
from shop_bundles.services.scoring import suggestions_score
from shop_bundles.services.training import training_run_execute

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- loading a CJ slice with the ORM


def load_cj_slice(cj_slice: dict, *, stock: int = 100) -> dict:
    """Write a Complete Journey slice into the database with bulk_create.

    Shelf unit price = (sales_value + retail_disc + coupon_match_disc) / quantity
    (the Complete Journey convention); the product price is the median shelf price.
    Returns counts: {"orders", "lines", "products"}.
    """
    tx = cj_slice["transactions"]
    tx = tx[tx["quantity"] > 0].drop_duplicates(["basket_id", "product_id"]).copy()
    tx["unit"] = (tx["sales_value"] + tx["retail_disc"] + tx["coupon_match_disc"]) / tx["quantity"]
    meta = cj_slice["products"].set_index("product_id")
    prices = tx.groupby("product_id")["unit"].median()

    def text(value) -> str:
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value) else str(value)

    products = []
    for pid, price in prices.items():
        row = meta.loc[pid] if pid in meta.index else None
        products.append(Product(
            sku=str(pid), name=text(row["product_type"]) if row is not None else "",
            department=text(row["department"]) if row is not None else "",
            category=text(row["product_category"]) if row is not None else "",
            product_type=text(row["product_type"]) if row is not None else "",
            brand=text(row["brand"]) if row is not None else "",
            price=Decimal(str(round(float(price), 2))), stock=stock))
    Product.objects.bulk_create(products, batch_size=5000)
    product_pk = dict(Product.objects.values_list("sku", "pk"))

    customers = Customer.objects.bulk_create(
        [Customer(external_id=str(h)) for h in sorted(tx["household_id"].unique())], batch_size=5000)
    customer_pk = {c.external_id: c.pk for c in customers}

    tz = timezone.get_default_timezone()
    baskets = tx.groupby("basket_id").agg(household_id=("household_id", "first"),
                                          ts=("transaction_timestamp", "first"), store_id=("store_id", "first"))
    orders = Order.objects.bulk_create([
        Order(external_id=str(bid), customer_id=customer_pk[str(row.household_id)],
              placed_at=timezone.make_aware(row.ts.to_pydatetime(), tz), store_id=str(row.store_id))
        for bid, row in baskets.iterrows()], batch_size=5000)
    order_pk = {o.external_id: o.pk for o in orders}
    OrderLine.objects.bulk_create([
        OrderLine(order_id=order_pk[str(r.basket_id)], product_id=product_pk[str(r.product_id)],
                  quantity=int(r.quantity),
                  unit_price=Decimal(str(r.unit)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
        for r in tx.itertuples(index=False)], batch_size=5000)
    return {"orders": len(orders), "lines": len(tx), "products": len(products)}


# --------------------------------------------------------------------------- ml_bridge


def _tiny_orders():
    a = Product.objects.create(sku="007", price=Decimal("1.25"), department="DAIRY", brand="National")
    b = Product.objects.create(sku="22001", price=Decimal("3.00"))
    known = Customer.objects.create(external_id="20001")
    o1 = Order.objects.create(external_id="540001", customer=known,
                              placed_at=datetime(2017, 1, 1, 18, 0, tzinfo=dt_timezone.utc))
    o2 = Order.objects.create(external_id="540002", customer=None,
                              placed_at=datetime(2017, 1, 2, 3, 30, tzinfo=dt_timezone.utc))
    OrderLine.objects.create(order=o1, product=a, quantity=2, unit_price=Decimal("1.25"))
    OrderLine.objects.create(order=o1, product=b, quantity=1, unit_price=Decimal("2.99"))
    OrderLine.objects.create(order=o2, product=a, quantity=1, unit_price=Decimal("1.30"))
    return a, b


@override_settings(TIME_ZONE="America/Chicago")
def test_lines_frame_follows_the_contract():
    _tiny_orders()
    lines = ml_bridge.lines_frame()
    assert list(lines.columns) == ["basket_id", "product_id", "customer_id", "time", "quantity", "price"]
    assert str(lines["customer_id"].dtype) == "string"
    assert lines["time"].dtype == np.dtype("datetime64[ns]") and lines["time"].dt.tz is None
    assert lines["quantity"].dtype == np.float64 and lines["price"].dtype == np.float64
    rows = [(r.basket_id, r.product_id, None if pd.isna(r.customer_id) else r.customer_id, r.time, r.quantity,
             r.price) for r in lines.itertuples(index=False)]
    # 18:00 UTC is noon in Chicago (CST); 03:30 UTC on Jan 2 is 21:30 on Jan 1. SKU "007" keeps its zeros,
    # the guest order has <NA>.
    assert sorted(rows) == sorted([
        ("540001", "007", "20001", pd.Timestamp("2017-01-01 12:00"), 2.0, 1.25),
        ("540001", "22001", "20001", pd.Timestamp("2017-01-01 12:00"), 1.0, 2.99),
        ("540002", "007", None, pd.Timestamp("2017-01-01 21:30"), 1.0, 1.30),
    ])
    assert lines["time"].is_monotonic_increasing


def test_lines_frame_window_and_empty_database():
    assert ml_bridge.lines_frame().empty
    assert list(ml_bridge.lines_frame().columns) == ml_bridge.LINE_COLUMNS
    _tiny_orders()
    since = datetime(2017, 1, 2, tzinfo=dt_timezone.utc)
    assert set(ml_bridge.lines_frame(since=since)["basket_id"]) == {"540002"}
    assert set(ml_bridge.lines_frame(Order.objects.filter(external_id="540001"))["product_id"]) == {"007", "22001"}


def test_products_frame_follows_the_contract():
    _tiny_orders()
    products = ml_bridge.products_frame()
    assert list(products.columns) == ["product_id", "department", "category", "product_type", "brand", "price"]
    row = products.set_index("product_id").loc["007"]
    assert (row["department"], row["brand"], row["category"], row["price"]) == ("DAIRY", "National", "", 1.25)
    assert products["price"].dtype == np.float64


def test_lines_frame_round_trips_a_cj_slice(cj_slice):
    counts = load_cj_slice(cj_slice)
    lines = ml_bridge.lines_frame()
    assert len(lines) == counts["lines"]
    tx = cj_slice["transactions"]
    tx = tx[tx["quantity"] > 0]
    assert set(lines["basket_id"]) == set(tx["basket_id"].astype(str))
    first = tx.sort_values("transaction_timestamp").iloc[0]
    assert lines["time"].iloc[0] == first["transaction_timestamp"]
    assert lines["customer_id"].notna().all()


def test_suggestions_from_frame_maps_rows_and_drops_unknown_products():
    a, b = _tiny_orders()
    frame = pd.DataFrame([
        {"anchor": "007", "items": ("007", "22001"), "score": 0.8, "co_purchase_count": 12, "support": 0.01,
         "confidence": 0.3, "lift": 2.0, "expected_attach_rate": 0.3, "suggested_discount_percent": 12.345,
         "reasons": "Bought together in 12 baskets"},
        {"anchor": "007", "items": ("007", "missing"), "score": 0.7, "co_purchase_count": 5, "support": 0.01,
         "confidence": 0.1, "lift": 1.2, "expected_attach_rate": 0.1, "suggested_discount_percent": 10.0,
         "reasons": ""},
    ])
    out = ml_bridge.suggestions_from_frame(frame, model_version=None, products_by_sku={"007": a, "22001": b})
    assert len(out) == 1
    suggestion, items = out[0]
    assert (suggestion.signature, suggestion.anchor, items) == ("007+22001", a, [a, b])
    assert suggestion.suggested_discount_percent == Decimal("12.35")


# --------------------------------------------------------------------------- training seam with a stub pipeline


def _metrics(model_ndcg: float) -> dict:
    return {"split_date": "2017-01-15", "queries": 100, "rows": [
        {"system": "model", "hr@10": 0.6, "ndcg@10": model_ndcg, "queries": 100, "seconds": 1.0},
        {"system": "popularity", "hr@10": 0.4, "ndcg@10": 0.1, "queries": 100, "seconds": 0.1},
        {"system": "cooccurrence_count", "hr@10": 0.5, "ndcg@10": 0.13, "queries": 100, "seconds": 0.2}]}


@pytest.fixture
def stub_pipeline(monkeypatch, tmp_path, settings):
    """Replace bundling_ml.pipeline.train_model with a recorder returning a chosen NDCG@10."""
    import bundling_ml.pipeline

    settings.SHOP_BUNDLES_ARTIFACT_DIR = str(tmp_path)
    state = SimpleNamespace(calls=[], ndcg=0.2, fail=None)

    def train_model(lines, products, *, out_dir, split_date=None, seed=0, excluded_departments=(), progress=None,
                    max_queries=None):
        state.calls.append({"lines": lines, "products": products, "out_dir": out_dir, "split_date": split_date,
                            "excluded": excluded_departments})
        for i in range(5):
            progress(i / 5, f"epoch {i}")
        if state.fail:
            raise state.fail
        Path(out_dir).mkdir(parents=True)
        return SimpleNamespace(artifact_dir=Path(out_dir), metadata={"epochs": 5}, metrics=_metrics(state.ndcg),
                               history={"loss": [0.9, 0.5], "val_loss": [0.95, 0.6]})

    monkeypatch.setattr(bundling_ml.pipeline, "train_model", train_model)
    _tiny_orders()
    return state


def test_training_run_records_version_metrics_history_and_activates_the_first(stub_pipeline, settings,
                                                                             django_capture_on_commit_callbacks,
                                                                             monkeypatch):
    queued = []
    monkeypatch.setattr("shop_bundles.tasks.score_suggestions.delay", lambda pk: queued.append(pk))
    with django_capture_on_commit_callbacks(execute=True):
        result = training_run_execute(trigger="manual")
    run = TrainingRun.objects.get()
    version = ModelVersion.objects.get()
    assert result["status"] == "succeeded" and result["model_version_id"] == version.pk
    assert (run.status, run.progress, run.stage, run.model_version) == ("succeeded", 1.0, "done", version)
    assert run.history == {"loss": [0.9, 0.5], "val_loss": [0.95, 0.6]}
    assert version.is_active and version.activated_at is not None
    assert [r["system"] for r in version.metrics["rows"]] == ["model", "popularity", "cooccurrence_count"]
    assert str(version.split_date) == "2017-01-15"
    assert Path(version.artifact_path).parent == Path(settings.SHOP_BUNDLES_ARTIFACT_DIR)
    assert version.data_start < version.data_end
    call = stub_pipeline.calls[0]
    assert len(call["lines"]) == 3 and "FUEL" in call["excluded"]
    assert queued == [version.pk]  # scoring queued on commit


def test_a_much_worse_model_is_kept_inactive_and_a_slightly_worse_one_activated(stub_pipeline):
    stub_pipeline.ndcg = 0.200
    training_run_execute(queue_scoring=False)
    first = ModelVersion.objects.get(is_active=True)
    stub_pipeline.ndcg = 0.195  # 2.5 % below: kept inactive
    result = training_run_execute(queue_scoring=False)
    worse = ModelVersion.objects.get(pk=result["model_version_id"])
    assert not worse.is_active and "more than 2% below" in worse.notes and not result["activated"]
    assert ModelVersion.objects.get(is_active=True) == first
    stub_pipeline.ndcg = 0.197  # 1.5 % below: activated
    result = training_run_execute(queue_scoring=False)
    assert ModelVersion.objects.get(is_active=True).pk == result["model_version_id"]


def test_failed_training_is_marked_failed_with_the_error_and_reraised(stub_pipeline):
    stub_pipeline.fail = MemoryError("out of memory in epoch 3")
    with pytest.raises(MemoryError):
        training_run_execute(slot="nightly:2026-11-30")
    run = TrainingRun.objects.get()
    assert run.status == "failed" and run.error.startswith("MemoryError: out of memory in epoch 3")
    assert run.finished_at is not None and not ModelVersion.objects.exists()


def test_progress_is_throttled_but_reaches_the_database(stub_pipeline, monkeypatch):
    saved = []
    original = TrainingRun.save

    def spy(self, *args, **kwargs):
        if kwargs.get("update_fields") == ["progress", "stage"]:
            saved.append((self.progress, self.stage))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "save", spy)
    training_run_execute(queue_scoring=False)
    stages = [s for _, s in saved]
    assert "epoch 0" in stages and "epoch 4" in stages  # every stage change is written
    assert all(0 <= p <= 1 for p, _ in saved)
    assert [p for p, _ in saved] == sorted(p for p, _ in saved)


def test_w1_second_delivery_for_the_same_slot_exits_early(stub_pipeline):
    first = training_run_execute(trigger="schedule", slot="nightly:2026-11-30", queue_scoring=False)
    second = training_run_execute(trigger="schedule", slot="nightly:2026-11-30", queue_scoring=False)
    assert first["status"] == "succeeded"
    assert second["status"] == "duplicate" and second["run_id"] == first["run_id"]
    assert "already succeeded" in second["message"]
    assert len(stub_pipeline.calls) == 1 and TrainingRun.objects.count() == 1


def test_scheduled_runs_without_a_slot_share_the_day_slot(stub_pipeline):
    training_run_execute(trigger="schedule", queue_scoring=False)
    again = training_run_execute(trigger="schedule", queue_scoring=False)
    assert again["status"] == "duplicate"
    assert TrainingRun.objects.get().slot == f"schedule:{timezone.localdate().isoformat()}"


def test_w1_delivery_while_another_worker_trains_the_slot_exits_early(stub_pipeline):
    run = TrainingRun.objects.create(slot="nightly:x", status="running", params={"attempts": 1})
    holding, release = threading.Event(), threading.Event()

    def other_worker():
        with connections["default"].cursor() as cursor:  # a separate connection in this thread
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", [training_service._LOCK_CLASS, run.pk])
            holding.set()
            release.wait(10)
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [training_service._LOCK_CLASS, run.pk])
        connections["default"].close()

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert holding.wait(10)
        result = training_run_execute(trigger="schedule", slot="nightly:x")
    finally:
        release.set()
        thread.join(10)
    assert result["status"] == "duplicate" and "being trained by another worker" in result["message"]
    assert stub_pipeline.calls == []


def test_w2_redelivery_after_a_lost_worker_retrains_then_gives_up(stub_pipeline):
    # The run is "running" but nobody holds its lock: the worker that ran it died.
    run = TrainingRun.objects.create(slot="nightly:y", status="running", params={"attempts": 1})
    result = training_run_execute(trigger="schedule", slot="nightly:y", queue_scoring=False)
    assert result["status"] == "succeeded" and TrainingRun.objects.get(pk=run.pk).params["attempts"] == 2

    lost = TrainingRun.objects.create(slot="nightly:z", status="running",
                                      params={"attempts": training_service.MAX_ATTEMPTS})
    result = training_run_execute(trigger="schedule", slot="nightly:z")
    lost.refresh_from_db()
    assert result["status"] == "failed" and lost.status == "failed"
    assert "worker was lost during training 3 times" in lost.error
    assert len(stub_pipeline.calls) == 1


def test_tensorflow_is_not_imported_by_the_seam_modules():
    import subprocess
    import sys

    code = ("import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); "
            "django.setup(); import shop_bundles.admin, shop_bundles.ml_bridge, shop_bundles.services.training, "
            "shop_bundles.services.scoring, shop_bundles.services.campaigns, shop_bundles.tasks; "
            "print('tensorflow' in sys.modules, 'bundling_ml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- real training and scoring


@pytest.mark.slow
def test_train_and_score_on_a_complete_journey_slice(cj_slice, tmp_path, settings):
    """End to end on real data: the model beats popularity, suggestions carry evidence, W1 holds."""
    settings.SHOP_BUNDLES_ARTIFACT_DIR = str(tmp_path)
    settings.SHOP_BUNDLES_MIN_ANCHOR_BASKETS = 15
    load_cj_slice(cj_slice)

    result = training_run_execute(trigger="schedule", slot="nightly:cj", queue_scoring=False)
    assert result["status"] == "succeeded", result
    run = TrainingRun.objects.get()
    version = ModelVersion.objects.get()
    assert run.status == "succeeded" and run.model_version == version and version.is_active
    rows = {r["system"]: r for r in version.metrics["rows"]}
    assert {"model", "popularity", "cooccurrence_count"} <= set(rows)  # extra systems may be reported too
    assert rows["model"]["ndcg@10"] > rows["popularity"]["ndcg@10"]
    assert rows["model"]["queries"] == rows["popularity"]["queries"] > 100
    assert len(run.history["loss"]) == len(run.history["val_loss"]) >= 1
    assert (Path(version.artifact_path) / "model.keras").exists()

    again = training_run_execute(trigger="schedule", slot="nightly:cj")
    assert again["status"] == "duplicate" and TrainingRun.objects.count() == 1

    # An approved bundle's item set is not suggested again; nor is one with a live campaign.
    scored = suggestions_score()
    assert scored["model_version_id"] == version.pk and scored["created"] > 0
    pending = BundleSuggestion.objects.filter(status="pending", model_version=version)
    assert pending.count() == scored["created"]
    best = pending.order_by("-score").first()
    assert 0 <= best.score <= 1 and best.co_purchase_count >= 3 and best.lift > 0 and best.reasons
    assert best.items.count() in (2, 3) and best.items.get(position=0).product == best.anchor
    assert best.signature == "+".join(sorted(best.items.values_list("product__sku", flat=True)))
    # Issue 5: scoring prices each suggestion for profit with the take-rate fit on the imported lines.
    econ = best.economics
    assert len(econ["table"]) == 7 and econ["response"]["source"] in ("shrunk", "prior")
    assert econ["cost_source"] == "default margin" and econ["regular_price"] > econ["cost"] > 0
    assert econ["incremental_margin"] == max(r["incremental_margin"] for r in econ["table"] if r["allowed"])

    rescored = suggestions_score()
    assert rescored["created"] == 0 and rescored["skipped"] >= scored["created"]


@pytest.mark.slow
def test_scoring_skips_unavailable_products_and_live_campaigns(cj_slice, tmp_path, settings):
    settings.SHOP_BUNDLES_ARTIFACT_DIR = str(tmp_path)
    settings.SHOP_BUNDLES_MIN_ANCHOR_BASKETS = 15
    load_cj_slice(cj_slice)
    training_run_execute(queue_scoring=False, max_queries=2000)
    first = suggestions_score()
    top = BundleSuggestion.objects.order_by("-score")[:2]
    approved, dropped = top[0], top[1]
    # Approve one (its item set now has a live campaign), and take a product of another off sale.
    campaign = BundleCampaign.objects.create(name="live", suggestion=approved, discount_value=Decimal("10"),
                                             ends_at=timezone.now() + timedelta(days=5))
    for i, item in enumerate(approved.items.all()):
        campaign.items.create(product=item.product, position=i)
    BundleSuggestion.objects.filter(pk=approved.pk).update(status="approved")
    unavailable_product = dropped.items.last().product
    Product.objects.filter(pk=unavailable_product.pk).update(active=False)
    BundleSuggestion.objects.filter(status="pending").delete()

    second = suggestions_score()
    signatures = set(BundleSuggestion.objects.filter(status="pending").values_list("signature", flat=True))
    assert approved.signature not in signatures and dropped.signature not in signatures
    assert second["skipped_reasons"].get("product inactive or out of stock", 0) >= 1
    assert second["created"] < first["created"]


# --------------------------------------------------------------------------- management commands


def test_train_bundles_command_prints_the_backtest_table(stub_pipeline):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("train_bundles", "--split-date", "2017-01-15", "--no-score", stdout=out, verbosity=0)
    text = out.getvalue()
    assert "Backtest (split date 2017-01-15, 100 queries)" in text
    assert "cooccurrence_count" in text and "0.2000" in text and "activated: first model version" in text
    assert str(stub_pipeline.calls[0]["split_date"]) == "2017-01-15"

    call_command("train_bundles", "--slot", "s1", "--no-score", stdout=out, verbosity=0)
    call_command("train_bundles", "--slot", "s1", "--no-score", stdout=out, verbosity=0)
    assert "Not trained: slot s1 already succeeded" in out.getvalue()


def test_score_bundles_command_writes_and_counts(stub_pipeline, monkeypatch):
    from io import StringIO

    import bundling_ml.pipeline
    from django.core.management import call_command

    training_run_execute(queue_scoring=False)
    frame = pd.DataFrame([{"anchor": "007", "items": ("007", "22001"), "score": 0.8, "co_purchase_count": 12,
                           "support": 0.01, "confidence": 0.3, "lift": 2.0, "expected_attach_rate": 0.3,
                           "suggested_discount_percent": 10.0, "reasons": "Bought together in 12 baskets"}])
    seen = {}

    def score_bundles(artifact_dir, lines, products, **kwargs):
        seen.update(kwargs, artifact_dir=artifact_dir)
        return frame

    monkeypatch.setattr(bundling_ml.pipeline, "score_bundles", score_bundles)
    Product.objects.update(stock=5)
    out = StringIO()
    call_command("score_bundles", stdout=out, verbosity=0)
    assert "1 new pending suggestions" in out.getvalue()
    assert seen["min_anchor_baskets"] == 20 and seen["max_bundles"] == 5000 and "FUEL" in seen["excluded_departments"]
    suggestion = BundleSuggestion.objects.get()
    assert (suggestion.status, suggestion.signature, suggestion.co_purchase_count) == ("pending", "007+22001", 12)

    call_command("demo_approve", "--top", "5", stdout=out, verbosity=0)
    text = out.getvalue()
    assert "created staff user 'demo-staff' with password" in text and "approved 1 suggestions" in text
    assert BundleCampaign.objects.get().approved_by.username == "demo-staff"
