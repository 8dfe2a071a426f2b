"""The staff side in the Django admin: the review queue, bulk approve/reject, campaigns, training pages."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from shop_bundles.admin import backtest_table, svg_line_chart
from shop_bundles.models import (
    BundleCampaign,
    BundleSuggestion,
    Customer,
    ModelVersion,
    Order,
    OrderLine,
    StaffAction,
    TrainingRun,
)
from tests.shop.test_campaigns import make_product, make_staff, make_suggestion

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:shop_bundles_bundlesuggestion_changelist"
METRICS = {"split_date": "2017-10-30", "queries": 1234, "rows": [
    {"system": "model", "hr@10": 0.61, "ndcg@10": 0.152, "queries": 1234, "seconds": 3.2},
    {"system": "popularity", "hr@10": 0.41, "ndcg@10": 0.107, "queries": 1234, "seconds": 0.1},
    {"system": "cooccurrence_count", "hr@10": 0.586, "ndcg@10": 0.134, "queries": 1234, "seconds": 0.4},
]}


@pytest.fixture
def queue():
    """Three pending suggestions of one model version; the second has an out-of-stock product."""
    version = ModelVersion.objects.create(label="v-test", artifact_path="/tmp/v-test", is_active=True,
                                          metrics=METRICS)
    a, b = make_product("A", "20.00", name="Apples"), make_product("B", "5.00", name="Bread")
    c, d = make_product("C", "3.00", name="Cheese"), make_product("D", "2.00", name="Dates", stock=0)
    e, f = make_product("E", "19.99", name="Eggs", department="DAIRY"), make_product("F", "10.00", name="Flour")
    return [make_suggestion([a, b], score=0.9, version=version),
            make_suggestion([c, d], score=0.8, version=version),
            make_suggestion([e, f], score=0.7, discount="25.00", version=version)]


@pytest.fixture
def staff_client(client):
    """A logged-in staff user who may approve."""
    user = make_staff("alice", "approve_bundlesuggestion", "view_bundlesuggestion", "view_bundlecampaign",
                      "manage_bundlecampaign", "change_bundlecampaign")
    client.force_login(user)
    client.user = user
    return client


def test_review_queue_lists_products_evidence_and_the_approve_action(queue, staff_client):
    response = staff_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    for text in ("Apples (A) + Bread (B)", "Cheese (C) + Dates (D)", "Eggs (E) + Flour (F)", "0.900", "2.50", "30.0%", "12.0%", "v-test"):
        assert text in html, text
    assert 'value="approve_selected"' in html and 'value="reject_selected"' in html


def test_review_queue_query_count_does_not_grow_with_rows(queue, staff_client):
    with CaptureQueriesContext(connection) as few:
        staff_client.get(reverse(CHANGELIST))
    version = ModelVersion.objects.get()
    for i in range(20):
        make_suggestion([make_product(f"X{i}", "1.00"), make_product(f"Y{i}", "1.00")], version=version)
    with CaptureQueriesContext(connection) as many:
        staff_client.get(reverse(CHANGELIST))
    assert len(many.captured_queries) == len(few.captured_queries)


def test_review_queue_filters_and_search(queue, staff_client):
    html = staff_client.get(reverse(CHANGELIST), {"anchor__department": "DAIRY"}).content.decode()
    assert "Eggs (E) + Flour (F)" in html and "Apples (A) + Bread (B)" not in html
    html = staff_client.get(reverse(CHANGELIST), {"q": "Bread"}).content.decode()
    assert "Apples (A) + Bread (B)" in html and "Eggs (E) + Flour (F)" not in html
    html = staff_client.get(reverse(CHANGELIST), {"status": "approved"}).content.decode()
    assert "Apples (A) + Bread (B)" not in html


def test_review_queue_opens_on_the_pending_suggestions(queue, staff_client):
    """What needs a decision first: decided suggestions are one filter click away ("All", "Approved", ...)."""
    BundleSuggestion.objects.filter(pk=queue[0].pk).update(status="approved")
    BundleSuggestion.objects.filter(pk=queue[1].pk).update(status="rejected")
    response = staff_client.get(reverse(CHANGELIST))
    assert [s.pk for s in response.context["cl"].result_list] == [queue[2].pk]
    assert [s.pk for s in staff_client.get(reverse(CHANGELIST), {"status": "all"}).context["cl"].result_list] == [
        s.pk for s in queue]
    assert [s.pk for s in staff_client.get(reverse(CHANGELIST), {"status": "rejected"}).context["cl"].result_list] == [
        queue[1].pk]
    status_filter = next(f for f in response.context["cl"].filter_specs if f.title == "status")
    selected = [c["display"] for c in status_filter.choices(response.context["cl"]) if c["selected"]]
    assert selected == ["Pending"]


def test_bulk_approve_through_the_admin_reports_successes_and_refusals(queue, staff_client):
    response = staff_client.post(reverse(CHANGELIST), {
        "action": "approve_selected", "_selected_action": [s.pk for s in queue]}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("Approved 2:") and "Apples (A) + Bread (B)" in m and "Eggs (E) + Flour (F)" in m for m in shown), shown
    assert any(m.startswith("Refused 1:") and "Dates (D) is out of stock" in m for m in shown), shown

    assert BundleCampaign.objects.count() == 2
    eggs = BundleCampaign.objects.get(suggestion=queue[2])
    assert (eggs.discount_type, eggs.discount_value, eggs.approved_by) == ("percent", Decimal("25.00"),
                                                                           staff_client.user)
    assert list(BundleSuggestion.objects.order_by("-score").values_list("status", flat=True)) == [
        "approved", "pending", "approved"]
    assert StaffAction.objects.filter(action="approve", user=staff_client.user).count() == 2


def test_a_suggestion_decided_by_another_reviewer_since_the_page_loaded_is_named_with_who_and_when(
        queue, staff_client):
    # Dave loads the pending queue, Alice approves Apples + Bread, then Dave ticks it (and Eggs + Flour) and
    # approves. The default "pending" filter drops the approved row from Dave's action; it used to vanish
    # from the report ("Nothing to do." when it was the only one ticked).
    dave = make_staff("dave", "approve_bundlesuggestion", "view_bundlesuggestion", "view_bundlecampaign",
                      "add_bundlecampaign")
    staff_client.post(reverse(CHANGELIST), {"action": "approve_selected", "_selected_action": [queue[0].pk]})
    queue[0].refresh_from_db()
    local = timezone.localtime(queue[0].reviewed_at)
    client = Client()  # Dave's own browser (staff_client is Alice's)
    client.force_login(dave)
    for action in ("approve_selected", "reject_selected"):
        response = client.post(reverse(CHANGELIST), {"action": action, "_selected_action": [queue[0].pk]},
                               follow=True)
        assert [str(m) for m in response.context["messages"]] == [
            f"Refused 1: Apples (A) + Bread (B): Already approved by alice at {local:%Y-%m-%d %H:%M}."]
    response = client.post(reverse(CHANGELIST), {"action": "approve_selected",
                                                 "_selected_action": [queue[0].pk, queue[2].pk]}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    assert shown[0].startswith("Approved 1: Eggs (E) + Flour (F)"), shown
    assert shown[1] == f"Refused 1: Apples (A) + Bread (B): Already approved by alice at {local:%Y-%m-%d %H:%M}."
    assert BundleCampaign.objects.get(suggestion=queue[0]).approved_by.username == "alice"


def test_bulk_reject_through_the_admin(queue, staff_client):
    staff_client.post(reverse(CHANGELIST), {"action": "reject_selected", "_selected_action": [queue[1].pk]})
    queue[1].refresh_from_db()
    assert queue[1].status == "rejected" and queue[1].reviewed_by == staff_client.user


def test_staff_without_the_approve_permission_is_not_offered_the_actions(queue, client):
    viewer = make_staff("bob", "view_bundlesuggestion")
    client.force_login(viewer)
    html = client.get(reverse(CHANGELIST)).content.decode()
    assert "Apples (A) + Bread (B)" in html
    assert "approve_selected" not in html and "reject_selected" not in html
    # Posting the action anyway does nothing.
    client.post(reverse(CHANGELIST), {"action": "approve_selected", "_selected_action": [queue[0].pk]})
    assert not BundleCampaign.objects.exists()
    queue[0].refresh_from_db()
    assert queue[0].status == "pending"


def test_suggestion_detail_shows_evidence_reasons_and_items_read_only(queue, staff_client):
    url = reverse("admin:shop_bundles_bundlesuggestion_change", args=[queue[0].pk])
    response = staff_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "bought together in 42 baskets" in html
    assert "25.00" in html  # regular bundle price
    assert "Apples" in html and "Bread" in html
    assert 'name="score"' not in html  # read-only: no input fields


def test_campaign_admin_end_now_action(queue, staff_client):
    from shop_bundles.services.campaigns import suggestion_approve

    campaign = suggestion_approve(suggestion=queue[0], user=staff_client.user)
    changelist = reverse("admin:shop_bundles_bundlecampaign_changelist")
    assert 'value="end_selected"' in staff_client.get(changelist).content.decode()
    # First a confirmation page (ending cannot be undone); nothing changes yet.
    confirm = staff_client.post(changelist, {"action": "end_selected", "_selected_action": [campaign.pk]})
    html = confirm.content.decode()
    assert confirm.status_code == 200 and "End these campaigns now?" in html and "Apples + Bread (Active)" in html
    campaign.refresh_from_db()
    assert campaign.status == "active"
    response = staff_client.post(changelist, {"action": "end_selected", "_selected_action": [campaign.pk],
                                              "post": "yes", "reason": "supplier deal over"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == ["Ended 1: Apples + Bread"]
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == ("ended", "supplier deal over")
    response = staff_client.post(changelist, {"action": "end_selected", "_selected_action": [campaign.pk],
                                              "post": "yes"}, follow=True)
    local = timezone.localtime(campaign.ends_at)
    assert [str(m) for m in response.context["messages"]] == [
        f"Refused 1: Apples + Bread: Campaign Apples + Bread has already ended (at {local:%Y-%m-%d %H:%M})."]


def test_campaign_admin_pause_action_and_discount_check(queue, staff_client):
    from shop_bundles.services.campaigns import suggestion_approve

    campaign = suggestion_approve(suggestion=queue[0], user=staff_client.user)
    changelist = reverse("admin:shop_bundles_bundlecampaign_changelist")
    html = staff_client.get(changelist).content.decode()
    assert "Apples + Bread" in html and "alice" in html
    assert "<td class=\"field-items_column\">Apples (A) + Bread (B)</td>" in html  # products as "name (SKU)"
    staff_client.post(changelist, {"action": "pause_selected", "_selected_action": [campaign.pk]})
    campaign.refresh_from_db()
    assert campaign.status == "paused"
    assert StaffAction.objects.filter(action="pause", campaign=campaign, user=staff_client.user).exists()

    # Editing the discount above the bundle price is refused by the form (case M3 rule).
    url = reverse("admin:shop_bundles_bundlecampaign_change", args=[campaign.pk])
    item = campaign.items.order_by("position")
    data = {"name": campaign.name, "status": "paused", "status_reason": "", "discount_type": "amount",
            "discount_value": "30.00", "starts_at_0": timezone.localtime(campaign.starts_at).strftime("%Y-%m-%d"),
            "starts_at_1": "00:00:00", "ends_at_0": timezone.localtime(campaign.ends_at).strftime("%Y-%m-%d"),
            "ends_at_1": "00:00:00", "items-TOTAL_FORMS": "2", "items-INITIAL_FORMS": "2",
            "items-MIN_NUM_FORMS": "0", "items-MAX_NUM_FORMS": "1000",
            "store_limits-TOTAL_FORMS": "0", "store_limits-INITIAL_FORMS": "0",
            "store_limits-MIN_NUM_FORMS": "0", "store_limits-MAX_NUM_FORMS": "1000"}
    for i, it in enumerate(item):
        data.update({f"items-{i}-id": it.pk, f"items-{i}-campaign": campaign.pk, f"items-{i}-product": it.product_id,
                     f"items-{i}-quantity": 1, f"items-{i}-position": i})
    response = staff_client.post(url, data)
    assert response.status_code == 200
    assert "exceeds the bundle price 25.00" in response.content.decode()
    data["discount_value"] = "4.00"
    data["status"] = "active"  # read-only on the change form: resuming goes through the resume action
    response = staff_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    campaign.refresh_from_db()
    assert (campaign.discount_type, campaign.discount_value, campaign.status) == ("amount", Decimal("4.00"), "paused")
    assert StaffAction.objects.filter(action="edit", campaign=campaign).exists()


def _campaign_add_data(discount_type, value, items):
    start = timezone.localtime()
    data = {"name": "Basil + Garlic", "status": "active", "status_reason": "", "discount_type": discount_type,
            "discount_value": value, "starts_at_0": start.strftime("%Y-%m-%d"), "starts_at_1": "00:00:00",
            "ends_at_0": (start + timezone.timedelta(days=28)).strftime("%Y-%m-%d"), "ends_at_1": "00:00:00",
            "items-TOTAL_FORMS": str(len(items)), "items-INITIAL_FORMS": "0", "items-MIN_NUM_FORMS": "0",
            "items-MAX_NUM_FORMS": "1000", "store_limits-TOTAL_FORMS": "0", "store_limits-INITIAL_FORMS": "0",
            "store_limits-MIN_NUM_FORMS": "0", "store_limits-MAX_NUM_FORMS": "1000"}
    for i, (product, quantity) in enumerate(items):
        data.update({f"items-{i}-product": product.pk, f"items-{i}-quantity": quantity, f"items-{i}-position": i})
    return data


def _campaign_editor(client):
    """Log ``client`` in as carol, who may add, edit, pause and resume campaigns; returns her."""
    user = make_staff("carol", "add_bundlecampaign", "change_bundlecampaign", "view_bundlecampaign",
                      "manage_bundlecampaign")
    client.force_login(user)
    return user


def test_campaign_add_form_checks_the_discount_against_the_products_being_added(client):
    """Case M3 on the add form: {C 3.00, D 2.00} with 6.00 off is refused; the products are not saved yet."""
    user = _campaign_editor(client)
    basil, garlic = make_product("C", "3.00", name="Basil"), make_product("D", "2.00", name="Garlic")
    url = reverse("admin:shop_bundles_bundlecampaign_add")
    response = client.post(url, _campaign_add_data("amount", "6.00", [(basil, 1), (garlic, 1)]))
    assert response.status_code == 200
    assert "The discount 6.00 exceeds the bundle price 5.00." in response.content.decode()
    # Two units of Basil make the bundle 8.00: 6.00 off is allowed then, so quantities count.
    response = client.post(url, _campaign_add_data("amount", "6.00", [(basil, 2), (garlic, 1)]))
    assert response.status_code == 302
    campaign = BundleCampaign.objects.get()
    assert sorted(campaign.items.values_list("product__sku", "quantity")) == [("C", 2), ("D", 1)]
    assert (campaign.discount_type, campaign.discount_value, campaign.created_by) == ("amount", Decimal("6.00"), user)
    # A fixed bundle price at or above the regular price, a one-unit bundle and 0 units are refused too.
    for data, message in [
        (_campaign_add_data("fixed_price", "5.00", [(basil, 1), (garlic, 1)]),
         "The bundle price 5.00 is not below the regular price 5.00."),
        (_campaign_add_data("percent", "10", [(basil, 1)]),
         "A bundle needs at least 2 units (two products, or 2 units of one product)."),
        (_campaign_add_data("percent", "10", [(basil, 0), (garlic, 1)]),
         "Basil (C): units per bundle must be at least 1."),
    ]:
        response = client.post(url, data)
        assert response.status_code == 200 and message in response.content.decode()
    assert BundleCampaign.objects.count() == 1


def test_campaign_form_refuses_a_negative_or_scientific_discount_with_one_clear_message(client):
    user = _campaign_editor(client)
    basil, garlic = make_product("C", "3.00", name="Basil"), make_product("D", "2.00", name="Garlic")
    url = reverse("admin:shop_bundles_bundlecampaign_add")
    html = client.post(url, _campaign_add_data("percent", "-5", [(basil, 1), (garlic, 1)])).content.decode()
    assert "The discount must be 0 or more, not -5." in html
    assert "campaign_discount_non_negative" not in html and "Constraint" not in html
    # Django's DecimalField reads 1e1 as 10; a staff member typing it most likely meant something else.
    html = client.post(url, _campaign_add_data("percent", "1e1", [(basil, 1), (garlic, 1)])).content.decode()
    assert "Enter the discount as a plain number such as 10 or 2.50, not &#x27;1e1&#x27;." in html
    assert not BundleCampaign.objects.exists()
    assert client.post(url, _campaign_add_data("percent", "10", [(basil, 1), (garlic, 1)])).status_code == 302
    assert BundleCampaign.objects.get().discount_value == Decimal("10.00")


def test_campaign_form_refuses_unsellable_products_on_an_active_campaign_and_more_than_99_units(client):
    user = _campaign_editor(client)
    basil, garlic = make_product("C", "3.00", name="Basil"), make_product("D", "2.00", name="Garlic")
    garlic.stock = 0
    garlic.save()
    url = reverse("admin:shop_bundles_bundlecampaign_add")
    # Approval refuses an out-of-stock product; the add form used to save the campaign as active.
    html = client.post(url, _campaign_add_data("percent", "10", [(basil, 1), (garlic, 1)])).content.decode()
    assert ("An active campaign cannot hold a product shoppers cannot buy: Garlic (D) is out of stock. Fix the "
            "product first, or save the campaign as paused and resume it when the product is back.") in html
    assert not BundleCampaign.objects.exists()
    # Saved as paused it is kept, and Resume then checks the product (refused while it is out of stock).
    paused = _campaign_add_data("percent", "10", [(basil, 1), (garlic, 1)])
    paused.update(status="paused", status_reason="waiting for garlic")
    assert client.post(url, paused).status_code == 302
    assert BundleCampaign.objects.get().status == "paused"
    # 100 units of a product: the cart holds at most 99, so the offer could be shown but never added.
    garlic.stock = 50
    garlic.save()
    html = client.post(url, _campaign_add_data("percent", "10", [(basil, 100), (garlic, 1)])).content.decode()
    assert "Basil (C): units per bundle must be at most 99 (a cart holds at most 99 of a product), not 100." in html
    assert BundleCampaign.objects.count() == 1


def test_campaign_forms_keep_the_margin_floor_approval_keeps(client):
    """{A 20.00 cost 15.00, B 5.00 cost 3.00}: 40 % off (15.00) is below cost 18.00 + 5 % = 18.90, so the
    edit is refused as approval would refuse it; 20 % (20.00) is saved."""
    user = _campaign_editor(client)
    apples, bread = make_product("A", "20.00", name="Apples"), make_product("B", "5.00", name="Bread")
    apples.cost, bread.cost = Decimal("15.00"), Decimal("3.00")
    apples.save()
    bread.save()
    url = reverse("admin:shop_bundles_bundlecampaign_add")
    response = client.post(url, _campaign_add_data("percent", "40", [(apples, 1), (bread, 1)]))
    assert response.status_code == 200
    assert ("Apples (A) breaks the margin floor: bundle price 15.00 is below cost 18.00 + 5% = 18.90"
            in response.content.decode())
    assert client.post(url, _campaign_add_data("percent", "20", [(apples, 1), (bread, 1)])).status_code == 302
    assert BundleCampaign.objects.get().discount_value == Decimal("20.00")


def test_training_run_pages_show_progress_curve_and_retrain_button(admin_client, monkeypatch):
    version = ModelVersion.objects.create(label="v-curve", artifact_path="/tmp/x", metrics=METRICS, is_active=True)
    done = TrainingRun.objects.create(status="succeeded", progress=1.0, stage="done", metrics=METRICS,
                               history={"loss": [0.9, 0.6, 0.5], "val_loss": [0.95, 0.7, 0.65],
                                        "shopper_loss": [2.1, 1.8, 1.7], "shopper_val_loss": [2.2, 1.9, 1.85]},
                               model_version=version, started_at=timezone.now(), finished_at=timezone.now())
    running = TrainingRun.objects.create(status="running", progress=0.42, stage="training epoch 2")
    html = admin_client.get(reverse("admin:shop_bundles_trainingrun_changelist")).content.decode()
    assert "42%" in html and "training epoch 2" in html and "Retrain now" in html
    assert 'http-equiv="refresh"' in html  # a run is in progress

    detail = admin_client.get(reverse("admin:shop_bundles_trainingrun_change",
                                      args=[done.pk])).content.decode()
    assert "<svg" in detail and "<polyline" in detail and "val_loss (last 0.65)" in detail
    # the known-shopper ranker's curve beside the anonymous one
    assert "known-shopper ranker" in detail and "val_loss (last 1.85)" in detail and detail.count("<svg") >= 2
    assert "0.1520" in detail and "cooccurrence_count" in detail

    monkeypatch.setattr("shop_bundles.tasks.retrain_model.delay", lambda **kw: None)
    # QA (session 11): a second click while a run is in progress queued a second full training
    response = admin_client.post(reverse("admin:shop_bundles_trainingrun_retrain"), follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        f"Training run {running.pk} is already running (requested "
        f"{timezone.localtime(running.created_at):%Y-%m-%d %H:%M}); no second run was queued. "
        "This page shows its progress."]
    assert TrainingRun.objects.count() == 2
    TrainingRun.objects.filter(pk=running.pk).update(created_at=timezone.now() - timedelta(hours=11))  # lost worker
    response = admin_client.post(reverse("admin:shop_bundles_trainingrun_retrain"))
    assert response.status_code == 302
    new_run = TrainingRun.objects.order_by("-pk").first()
    assert new_run.status == "queued" and new_run.requested_by.username == "admin"
    assert admin_client.get(reverse("admin:shop_bundles_trainingrun_retrain")).status_code == 405


def test_retrain_button_queues_the_task_on_commit(admin_client, monkeypatch, django_capture_on_commit_callbacks):
    queued = []
    monkeypatch.setattr("shop_bundles.tasks.retrain_model.delay", lambda **kw: queued.append(kw))
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:shop_bundles_trainingrun_retrain"))
    run = TrainingRun.objects.get()
    assert queued == [{"run_id": run.pk, "trigger": "manual"}]


def checksummed_artifact(directory, model_bytes: bytes = b"model bytes") -> str:
    """An artifact directory whose ``metadata.json`` records the SHA-256 of its ``model.keras`` (format 2),
    written without TensorFlow; returns its path."""
    import json

    from bundling_ml import artifacts

    directory.mkdir(parents=True)
    (directory / artifacts.MODEL_FILE).write_bytes(model_bytes)
    meta = {"format_version": 2, "checksums": {"algorithm": "sha256", "files": artifacts.file_checksums(directory)}}
    (directory / artifacts.METADATA_FILE).write_text(json.dumps(meta))
    return str(directory)


def test_model_version_admin_backtest_table_and_activate_action(admin_client, tmp_path):
    old = ModelVersion.objects.create(label="v-old", artifact_path=checksummed_artifact(tmp_path / "a"),
                                      metrics=METRICS, is_active=True)
    new = ModelVersion.objects.create(label="v-new", artifact_path=checksummed_artifact(tmp_path / "b"),
                                      metrics=METRICS)
    html = admin_client.get(reverse("admin:shop_bundles_modelversion_change", args=[new.pk])).content.decode()
    assert "<th>NDCG@10</th>" in html and "<td>popularity</td>" in html and "0.1070" in html
    admin_client.post(reverse("admin:shop_bundles_modelversion_changelist"),
                      {"action": "activate", "_selected_action": [new.pk]})
    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.is_active, new.is_active) == (False, True)


def test_the_active_model_version_cannot_be_deleted_in_the_admin(admin_client, tmp_path):
    active = ModelVersion.objects.create(label="v-serving", artifact_path=checksummed_artifact(tmp_path / "a"),
                                         metrics=METRICS, is_active=True)
    old = ModelVersion.objects.create(label="v-old", artifact_path=checksummed_artifact(tmp_path / "b"),
                                      metrics=METRICS)
    delete = reverse("admin:shop_bundles_modelversion_delete", args=[active.pk])
    assert admin_client.get(delete).status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    html = admin_client.get(reverse("admin:shop_bundles_modelversion_change", args=[active.pk])).content.decode()
    assert delete not in html  # no Delete button on the serving version
    changelist = reverse("admin:shop_bundles_modelversion_changelist")
    for post in ({}, {"post": "yes"}):  # the confirmation page, and confirming anyway
        response = admin_client.post(changelist, {"action": "delete_selected",
                                                  "_selected_action": [active.pk, old.pk], **post})
        assert response.status_code == 200
        assert response.context["protected"] == [
            "v-serving is the active model version: activate another version first"]
        assert not response.context["perms_lacking"]
        assert ModelVersion.objects.count() == 2
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [old.pk], "post": "yes"})
    assert list(ModelVersion.objects.values_list("label", flat=True)) == ["v-serving"]


@pytest.mark.django_db(transaction=True)
def test_deleting_a_model_version_removes_its_artifact_directory_only_inside_the_artifact_dir(
        admin_client, tmp_path, settings):
    settings.SHOP_BUNDLES_ARTIFACT_DIR = str(tmp_path / "models")
    inside = checksummed_artifact(tmp_path / "models" / "v-old")
    outside = checksummed_artifact(tmp_path / "elsewhere")
    old = ModelVersion.objects.create(label="v-old", artifact_path=inside, metrics=METRICS)
    foreign = ModelVersion.objects.create(label="v-foreign", artifact_path=outside, metrics=METRICS)
    for version in (old, foreign):
        response = admin_client.post(reverse("admin:shop_bundles_modelversion_delete", args=[version.pk]),
                                     {"post": "yes"})
        assert response.status_code == 302
    assert not ModelVersion.objects.exists()
    assert not (tmp_path / "models" / "v-old").exists()  # removed with its version
    assert (tmp_path / "elsewhere" / "model.keras").exists()  # not ours to remove
    assert (tmp_path / "models").is_dir()


@pytest.mark.faults
def test_admin_refuses_to_activate_a_corrupt_or_missing_artifact(admin_client, tmp_path):
    active = ModelVersion.objects.create(label="v-ok", artifact_path=checksummed_artifact(tmp_path / "ok"),
                                         metrics=METRICS, is_active=True)
    corrupt_dir = checksummed_artifact(tmp_path / "bad")
    (tmp_path / "bad" / "model.keras").write_bytes(b"model bytez")  # one byte flipped after the save
    corrupt = ModelVersion.objects.create(label="v-corrupt", artifact_path=corrupt_dir, metrics=METRICS)
    missing = ModelVersion.objects.create(label="v-missing", artifact_path=str(tmp_path / "gone"), metrics=METRICS)
    url = reverse("admin:shop_bundles_modelversion_changelist")
    for version, reason in ((corrupt, "model.keras has sha256"), (missing, "does not exist")):
        response = admin_client.post(url, {"action": "activate", "_selected_action": [version.pk]}, follow=True)
        text = " ".join(str(m) for m in response.context["messages"])
        assert f"{version.label} was not activated: model artifact" in text and reason in text
    assert list(ModelVersion.objects.filter(is_active=True)) == [active]
    assert not StaffAction.objects.filter(action="activate_model").exists()


def test_data_changelists_render(admin_client):
    customer = Customer.objects.create(external_id="20001")
    product = make_product("SKU-1", "2.50")
    order = Order.objects.create(external_id="540001", customer=customer, placed_at=timezone.now())
    OrderLine.objects.create(order=order, product=product, quantity=2, unit_price=Decimal("2.50"))
    for name in ("product", "customer", "order", "promotion", "orderevent", "offerevent", "importrun",
                 "staffaction", "bundlecampaign", "modelversion", "trainingrun", "bundlesuggestion"):
        response = admin_client.get(reverse(f"admin:shop_bundles_{name}_changelist"))
        assert response.status_code == 200, name
    html = admin_client.get(reverse("admin:shop_bundles_order_change", args=[order.pk])).content.decode()
    assert "SKU-1" in html and "540001" in html


def test_svg_chart_and_backtest_table_escape_and_render():
    svg = svg_line_chart({"loss": [1.0, 0.5], "<b>": [0.7, 0.6]})
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "&lt;b&gt;" in svg
    assert "No training curve" in svg_line_chart({})
    table = backtest_table(METRICS)
    assert table.count("<tr>") == 4 and "1,234" in table
    with_personal = backtest_table({**METRICS, "shopper_rows": [
        {"system": "shopper_model", "hr@10": 0.78, "ndcg@10": 0.2776, "queries": 1200, "seconds": 9.0},
        {"system": "repeat_count", "hr@10": 0.73, "ndcg@10": 0.2403, "queries": 1200, "seconds": 1.0}],
        "cold_rows": [{"system": "model", "hr@10": 0.46, "ndcg@10": 0.1008, "queries": 80, "seconds": 0.2}]})
    assert with_personal.count("<tr>") == 4 + 3 + 2
    assert "Known shopper" in with_personal and "0.2776" in with_personal and "Cold start" in with_personal


@pytest.mark.django_db(transaction=True)
def test_retrain_in_demo_mode_reports_a_failed_training_instead_of_an_error_page(admin_client, monkeypatch):
    """No broker (eager tasks): the training runs inside the request; a run that cannot train is shown as failed."""
    from celery import current_app

    monkeypatch.setitem(current_app.conf, "task_always_eager", True)
    response = admin_client.post(reverse("admin:shop_bundles_trainingrun_retrain"), follow=True)
    assert response.status_code == 200
    run = TrainingRun.objects.get()
    assert run.status == "failed" and run.error.startswith("ValueError: There are no order lines to train on")
    shown = [str(m) for m in response.context["messages"]]
    assert shown == [f"Training run {run.pk} failed: ValueError: There are no order lines to train on; import orders first."]


# --------------------------------------------------------------------------- display fixes (new-user report)


def test_suggestion_detail_formats_numbers_and_explains_the_attach_rate(admin_client):
    a, b = make_product("A", "20.00", name="Apples"), make_product("B", "5.00", name="Bread")
    suggestion = make_suggestion([a, b])
    suggestion.score, suggestion.support = 0.9237336816800503, 0.02119229152908687
    suggestion.confidence = suggestion.expected_attach_rate = 0.3
    suggestion.lift = 2.456789
    suggestion.save()
    html = admin_client.get(reverse("admin:shop_bundles_bundlesuggestion_change",
                                    args=[suggestion.pk])).content.decode()
    assert "0.924" in html and "0.9237336816800503" not in html
    assert "2.12%" in html and "0.02119229152908687" not in html
    assert "30.0%" in html and "2.46" in html and "$25.00" in html
    assert "= confidence by design" in html


def test_svg_legend_entries_do_not_overlap_and_numbers_are_rounded():
    import re

    html = str(svg_line_chart({"incremental margin": [0.1, -0.34451234], "incremental revenue": [0.2, 0.5]},
                              width=420, height=180))
    texts = re.findall(r'<text x="([\d.]+)" y="([\d.]+)" font-size="10">([^<]*\(last [^<]*)</text>', html)
    assert [t[2] for t in texts] == ["incremental margin (last -0.345)", "incremental revenue (last 0.5)"]
    (x0, y0, t0), (x1, y1, t1) = [(float(x), float(y), t) for x, y, t in texts]
    # 6 px per character: the first label ends at x0 + 6 * len(t0); the next entry starts after it or on a new row.
    assert y1 != y0 or x1 >= x0 + 6 * len(t0)
    assert (x0, y0) == (62.0, 172.0) and (x1, y1) == (62.0, 186.0)  # stacked: both do not fit in 420 px
    assert 'height="194"' in html  # one extra legend row of 14 px


def test_empty_chart_text_is_configurable():
    assert str(svg_line_chart({}, empty_text="No simulated data yet: run simulate_shoppers.")) == (
        "<span>No simulated data yet: run simulate_shoppers.</span>")
    assert str(svg_line_chart({})) == "<span>No training curve recorded.</span>"


def test_model_version_metrics_are_read_only(admin_client):
    version = ModelVersion.objects.create(label="v-ro", artifact_path="/tmp/v-ro", metrics=METRICS,
                                          metadata={"files": {"model.keras": "abc"}})
    url = reverse("admin:shop_bundles_modelversion_change", args=[version.pk])
    html = admin_client.get(url).content.decode()
    assert 'name="metrics"' not in html and 'name="metadata"' not in html and 'name="artifact_path"' not in html
    assert 'name="notes"' in html and "&quot;cooccurrence_count&quot;" in html
    response = admin_client.post(url, {"notes": "looked at it", "metrics": '{"rows": []}',
                                       "artifact_path": "/tmp/evil"})
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.metrics == METRICS and version.artifact_path == "/tmp/v-ro" and version.notes == "looked at it"


def test_training_run_page_warns_when_a_model_scores_below_its_baseline(admin_client):
    from shop_bundles.admin import baseline_warnings

    below = {"rows": [{"system": "model", "ndcg@10": 0.120}, {"system": "cooccurrence_count", "ndcg@10": 0.134}],
             "shopper_rows": [{"system": "shopper_model", "ndcg@10": 0.230},
                              {"system": "repeat_count", "ndcg@10": 0.2403}]}
    assert baseline_warnings(METRICS) == []
    assert baseline_warnings(below) == [
        "The anonymous model scores below the co-occurrence count baseline: NDCG@10 0.1200 < 0.1340. "
        "Do not activate it without looking into why.",
        "The shopper model scores below the repeat + count baseline: NDCG@10 0.2300 < 0.2403. "
        "Do not activate it without looking into why."]
    run = TrainingRun.objects.create(status="succeeded", progress=1.0, stage="done", metrics=below)
    html = admin_client.get(reverse("admin:shop_bundles_trainingrun_change", args=[run.pk])).content.decode()
    assert "shopper model scores below the repeat + count baseline" in html
    ok = TrainingRun.objects.create(status="succeeded", progress=1.0, stage="done", metrics=METRICS)
    html = admin_client.get(reverse("admin:shop_bundles_trainingrun_change", args=[ok.pk])).content.decode()
    assert "scores below" not in html


def test_read_only_history_admins_refuse_delete_even_to_a_superuser(admin_client):
    """Training runs, import runs, order and offer events: no "Delete selected" action, 403 on the
    delete view, and a forged bulk-delete POST deletes nothing (a training run stops a repeated retrain)."""
    from shop_bundles.models import ImportRun, OfferEvent, OrderEvent

    product = make_product("A", "20.00", name="Apples")
    campaign = BundleCampaign.objects.create(name="c", discount_type="percent", discount_value=Decimal("5"))
    order = Order.objects.create(external_id="o-1", placed_at=timezone.now(), source=Order.SOURCE_STOREFRONT,
                                 total=Decimal("20.00"), subtotal=Decimal("20.00"))
    OrderLine.objects.create(order=order, product=product, quantity=1, unit_price=product.price)
    rows = {"trainingrun": TrainingRun.objects.create(status="succeeded"),
            "importrun": ImportRun.objects.create(source="orders.csv"),
            "orderevent": OrderEvent.objects.create(order=order, revenue=Decimal("20.00")),
            "offerevent": OfferEvent.objects.create(kind="impression", campaign=campaign, session_key="s1")}
    for name, obj in rows.items():
        changelist = reverse(f"admin:shop_bundles_{name}_changelist")
        page = admin_client.get(changelist)
        assert page.status_code == 200, name
        assert 'value="delete_selected"' not in page.content.decode(), name
        delete_url = reverse(f"admin:shop_bundles_{name}_delete", args=[obj.pk])
        assert admin_client.get(delete_url).status_code == 403, name
        assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403, name
        forged = admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [obj.pk],
                                                "post": "yes"})
        assert forged.status_code in (200, 302), name
        assert type(obj).objects.filter(pk=obj.pk).exists(), f"{name} {obj.pk} was deleted"


def test_staff_see_a_sessions_experiment_group_on_its_orders_and_offer_events(admin_client):
    """The README's answer to "which group is this session in?": the order list's experiment group column
    and filter, the order's page, and the offer events searched by session key."""
    from shop_bundles.models import OfferEvent
    from shop_bundles.selectors.experiment import assignment_group

    session = next(f"s{k}" for k in range(1000) if assignment_group(f"s{k}", holdout_share=0.1) == "holdout")
    order = Order.objects.create(external_id="o-h", placed_at=timezone.now(), source=Order.SOURCE_STOREFRONT,
                                 session_key=session, experiment_group="holdout", total=Decimal("9.00"),
                                 subtotal=Decimal("9.00"))
    campaign = BundleCampaign.objects.create(name="c", discount_type="percent", discount_value=Decimal("5"))
    OfferEvent.objects.create(kind="impression", campaign=campaign, session_key=session, experiment_group="holdout")
    listing = admin_client.get(reverse("admin:shop_bundles_order_changelist") + "?experiment_group=holdout")
    assert "o-h" in listing.content.decode() and "Experiment group" in listing.content.decode()
    page = admin_client.get(reverse("admin:shop_bundles_order_change", args=[order.pk])).content.decode()
    assert "Experiment group" in page and "holdout" in page and session in page
    events = admin_client.get(reverse("admin:shop_bundles_offerevent_changelist") + f"?q={session}").content.decode()
    assert "holdout" in events and session in events
