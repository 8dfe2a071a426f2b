"""Security (issue 4, part 7): the token-authenticated events endpoint, admin permissions, storefront CSRF.

``POST /bundles/events/`` is the one endpoint that accepts events from
outside; it needs ``Authorization: Bearer <SHOP_BUNDLES_EVENT_TOKEN>`` and
writes through the outbox (stored once per external event id, processed
once). The admin review queue and campaign changes need staff status plus
the dedicated permissions; every storefront form is CSRF-protected.
"""
from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import (
    BundleCampaign,
    BundleCampaignItem,
    OfferEvent,
    Order,
    OrderEvent,
    OutboxEvent,
    Product,
    StaffAction,
)
from shop_bundles.tasks import handle_outbox_event

from .test_campaigns import make_product, make_staff, make_suggestion

pytestmark = [pytest.mark.django_db, pytest.mark.faults]

TOKEN = "s3cret-token-for-tests-0123456789"
URL = "/bundles/events/"


@pytest.fixture
def token(settings):
    """The endpoint's bearer token is configured."""
    settings.SHOP_BUNDLES_EVENT_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def shop():
    """Apples 20.00 and Bread 5.00 (10 units each) in a live 10 % campaign."""
    a, b = make_product("A", "20.00", name="Apples"), make_product("B", "5.00", name="Bread")
    campaign = BundleCampaign.objects.create(name="Apples + Bread", discount_type="percent", discount_value=D("10"),
                                             starts_at=timezone.now() - timedelta(hours=1))
    for position, product in enumerate((a, b)):
        BundleCampaignItem.objects.create(campaign=campaign, product=product, position=position)
    return {"A": a, "B": b, "campaign": campaign}


def post(body, *, auth: str | None = f"Bearer {TOKEN}", client: Client | None = None, raw: bytes | None = None):
    """POST a JSON body (or raw bytes) to the events endpoint."""
    client = client or Client(enforce_csrf_checks=True)  # token auth: no CSRF token is needed
    extra = {"HTTP_AUTHORIZATION": auth} if auth is not None else {}
    data = raw if raw is not None else json.dumps(body)
    return client.post(URL, data, content_type="application/json", **extra)


STOCK_EVENT = {"id": "pos-1", "type": "stock_changed", "data": {"sku": "B", "stock": 0}}


# --- authentication ----------------------------------------------------------------------------

def test_without_a_configured_token_the_endpoint_refuses_everything(settings, shop):
    settings.SHOP_BUNDLES_EVENT_TOKEN = ""
    response = post(STOCK_EVENT, auth=f"Bearer {TOKEN}")
    assert response.status_code == 503
    assert "SHOP_BUNDLES_EVENT_TOKEN is not set" in response.json()["error"]
    response = post(STOCK_EVENT, auth="Bearer ")
    assert response.status_code == 503
    assert not OutboxEvent.objects.exists() and Product.objects.get(sku="B").stock == 10


@pytest.mark.parametrize("auth, status", [
    (None, 401), ("", 401), ("Bearer", 401), (f"Basic {TOKEN}", 401), (f"Token {TOKEN}", 401),
    ("Bearer wrong-token", 403), (f"Bearer {TOKEN}x", 403), (f"Bearer {TOKEN[:-1]}", 403),
])
def test_missing_or_wrong_token_is_refused_and_nothing_is_stored(token, shop, auth, status):
    response = post(STOCK_EVENT, auth=auth)
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in response.json()["error"]
    else:
        assert response.json() == {"error": "Invalid token."}
    assert not OutboxEvent.objects.exists() and Product.objects.get(sku="B").stock == 10


def test_only_post_is_allowed(token):
    assert Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


# --- good token: stored through the outbox, processed once ------------------------------------

def test_stock_changed_event_updates_the_product_and_pauses_the_campaign_once(
        token, shop, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(STOCK_EVENT)
    assert response.status_code == 202
    event = OutboxEvent.objects.get()
    assert response.json() == {"status": "accepted", "outbox_event_id": event.pk, "type": "stock_changed"}
    assert (event.kind, event.dedupe_key, event.payload["product_ids"]) == ("stock_changed", "api:pos-1",
                                                                           [shop["B"].pk])
    assert event.processed_at is not None and event.attempts == 1  # handled by the on-commit fast path
    assert Product.objects.get(sku="B").stock == 0
    shop["campaign"].refresh_from_db()
    assert (shop["campaign"].status, shop["campaign"].status_reason) == ("paused", "auto: Bread (B) is out of stock")

    # The POS retries the same event (e.g. it never saw our 202): nothing is applied or processed again.
    Product.objects.filter(sku="B").update(stock=4)  # restocked by hand meanwhile
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = post(STOCK_EVENT)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert callbacks == [] and OutboxEvent.objects.count() == 1
    assert Product.objects.get(sku="B").stock == 4
    assert handle_outbox_event(event.pk)["status"] == "already_processed"  # a redelivered message
    assert StaffAction.objects.filter(action="auto_pause").count() == 1


def test_order_placed_event_creates_the_order_and_records_it_once(token, shop, django_capture_on_commit_callbacks):
    body = {"id": "pos-order-77", "type": "order_placed", "data": {
        "order_id": "POS-77", "placed_at": "2026-11-30T10:15:00+01:00", "customer_id": "20001",
        "lines": [{"sku": "A", "quantity": 2, "unit_price": "19.50"}, {"sku": "B", "quantity": 1, "unit_price": "5"}]}}
    with django_capture_on_commit_callbacks(execute=True):
        first = post(body)
        second = post(body)
    assert (first.status_code, second.status_code) == (202, 200)
    order = Order.objects.get()
    assert (order.external_id, order.source, order.customer.external_id) == ("POS-77", "api", "20001")
    assert (order.subtotal, order.total, order.discount_total) == (D("44.00"), D("44.00"), D("0.00"))
    assert order.placed_at.isoformat() == "2026-11-30T09:15:00+00:00"
    assert sorted(order.lines.values_list("product__sku", "quantity", "unit_price")) == [
        ("A", 2, D("19.50")), ("B", 1, D("5.00"))]
    assert Product.objects.get(sku="A").stock == 10  # stock is reported separately (stock_changed)
    event = OutboxEvent.objects.get()
    handle_outbox_event(event.pk)  # redelivered
    assert OrderEvent.objects.filter(order=order).count() == 1
    assert OrderEvent.objects.get().revenue == D("44.00")


def test_offer_click_event_is_recorded_once(token, shop, django_capture_on_commit_callbacks):
    body = {"id": "web-click-1", "type": "offer_event", "data": {
        "kind": "click", "campaign_id": shop["campaign"].pk, "session_key": "abc",
        "occurred_at": "2026-11-30T12:00:00Z"}}
    with django_capture_on_commit_callbacks(execute=True):
        assert post(body).status_code == 202
        assert post(body).status_code == 200
    click = OfferEvent.objects.get()
    assert (click.kind, click.campaign_id, click.session_key, click.quantity) == ("click", shop["campaign"].pk,
                                                                                  "abc", 1)
    assert click.created_at.isoformat() == "2026-11-30T12:00:00+00:00"


# --- validation: clear per-field errors, nothing stored ----------------------------------------

@pytest.mark.parametrize("body, errors", [
    ({"type": "stock_changed", "data": {"sku": "B", "stock": 1}}, {"id": "this field is required."}),
    ({"id": "x", "type": "price_changed", "data": {}},
     {"type": "must be one of stock_changed, order_placed, offer_event, not 'price_changed'."}),
    ({"id": "x", "type": "stock_changed", "data": []}, {"data": "must be a JSON object."}),
    ({"id": "x", "type": "stock_changed", "data": {"sku": "B"}},
     {"data": "give at least one of stock, price, cost, active."}),
    ({"id": "x", "type": "stock_changed", "data": {"sku": "NOPE", "stock": 1}},
     {"data.sku": "no product with SKU 'NOPE'."}),
    ({"id": "x", "type": "stock_changed", "data": {"sku": "B", "stock": "5", "price": 4.99, "active": "yes"}},
     {"data.stock": "must be a whole number, not '5'.",
      "data.price": "must be a decimal amount as a string (e.g. \"12.50\"), not 4.99.",
      "data.active": "must be true or false, not 'yes'."}),
    ({"id": "x", "type": "stock_changed", "data": {"sku": "B", "price": "4,99", "cost": "1.234"}},
     {"data.price": "is not a decimal amount in plain notation (digits with an optional decimal point, "
                    "e.g. \"12.50\"): '4,99'.",
      "data.cost": "has more than 2 decimal places: '1.234'."}),
    # Decimal() reads scientific notation, NaN and underscores; the CSV import does not, nor does the API.
    ({"id": "x", "type": "stock_changed", "data": {"sku": "B", "price": "1e3", "cost": "1_000"}},
     {"data.price": "is not a decimal amount in plain notation (digits with an optional decimal point, "
                    "e.g. \"12.50\"): '1e3'.",
      "data.cost": "is not a decimal amount in plain notation (digits with an optional decimal point, "
                   "e.g. \"12.50\"): '1_000'."}),
    ({"id": "x", "type": "order_placed", "data": {"order_id": "P1", "lines": [
        {"sku": "A", "quantity": 1, "unit_price": "NaN"}]}},
     {"data.lines[0].unit_price": "is not a decimal amount in plain notation (digits with an optional decimal "
                                  "point, e.g. \"12.50\"): 'NaN'."}),
    ({"id": "x", "type": "order_placed", "data": {"order_id": "P1", "lines": [
        {"sku": "A", "quantity": 1, "unit_price": "20.00"},
        {"sku": "Z", "quantity": 0, "unit_price": "-1"}]}},
     {"data.lines[1].sku": "no product with SKU 'Z'.", "data.lines[1].quantity": "must be at least 1, not 0.",
      "data.lines[1].unit_price": "must be between 0 and 9999999999.99, not '-1'."}),
    ({"id": "x", "type": "order_placed", "data": {"order_id": "P1", "placed_at": "yesterday", "lines": []}},
     {"data.placed_at": "must be an ISO 8601 date-time (e.g. 2026-11-30T14:05:00+01:00), not 'yesterday'.",
      "data.lines": "must be a non-empty list of {sku, quantity, unit_price}."}),
    ({"id": "x", "type": "offer_event", "data": {"kind": "impression", "campaign_id": 999999}},
     {"data.kind": "must be one of click, add_to_cart, not 'impression'.",
      "data.campaign_id": "no campaign with id 999999."}),
])
def test_bad_payloads_get_per_field_errors_and_store_nothing(token, shop, body, errors):
    response = post(body)
    assert response.status_code == 400
    assert response.json() == {"errors": errors}
    assert not OutboxEvent.objects.exists() and not Order.objects.filter(source="api").exists()
    assert Product.objects.get(sku="B").stock == 10


@pytest.mark.parametrize("raw, reason", [(b"not json", "is not valid UTF-8 JSON"), (b"\xff\xfe", "UTF-8 JSON"),
                                         (b"[1, 2]", "must be a JSON object.")])
def test_a_body_that_is_not_a_json_object_is_refused(token, raw, reason):
    response = post(None, raw=raw)
    assert response.status_code == 400 and reason in response.json()["errors"]["body"]


def test_an_order_id_reported_under_another_event_id_is_refused(token, shop, django_capture_on_commit_callbacks):
    data = {"order_id": "POS-1", "lines": [{"sku": "A", "quantity": 1, "unit_price": "20.00"}]}
    with django_capture_on_commit_callbacks(execute=True):
        assert post({"id": "e1", "type": "order_placed", "data": data}).status_code == 202
        response = post({"id": "e2", "type": "order_placed", "data": data})
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "data.order_id": "order 'POS-1' already exists (reported under another event id?)."}
    assert Order.objects.count() == 1 and OrderEvent.objects.count() == 1


# --- admin: staff status plus the dedicated permissions ---------------------------------------

REVIEW_QUEUE = "admin:shop_bundles_bundlesuggestion_changelist"
CAMPAIGNS = "admin:shop_bundles_bundlecampaign_changelist"


def _campaign_form(campaign, **changes):
    """The admin change form's POST data for ``campaign`` (two items)."""
    data = {"name": campaign.name, "status": campaign.status, "status_reason": "", "discount_type": "percent",
            "discount_value": "10.00", "starts_at_0": timezone.localtime(campaign.starts_at).strftime("%Y-%m-%d"),
            "starts_at_1": "00:00:00", "ends_at_0": "", "ends_at_1": "", "items-TOTAL_FORMS": "2",
            "items-INITIAL_FORMS": "2", "items-MIN_NUM_FORMS": "0", "items-MAX_NUM_FORMS": "1000",
            "store_limits-TOTAL_FORMS": "0", "store_limits-INITIAL_FORMS": "0", "store_limits-MIN_NUM_FORMS": "0",
            "store_limits-MAX_NUM_FORMS": "1000"}
    for i, item in enumerate(campaign.items.order_by("position")):
        data.update({f"items-{i}-id": item.pk, f"items-{i}-campaign": campaign.pk,
                     f"items-{i}-product": item.product_id, f"items-{i}-quantity": 1, f"items-{i}-position": i})
    data.update(changes)
    return data


def test_non_staff_users_never_reach_the_review_queue_or_campaigns_even_with_permissions(client, shop):
    user = get_user_model().objects.create_user("eve", password="pw")
    from django.contrib.auth.models import Permission

    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="shop_bundles"))
    client.force_login(user)
    for url in (reverse(REVIEW_QUEUE), reverse(CAMPAIGNS),
                reverse("admin:shop_bundles_bundlecampaign_change", args=[shop["campaign"].pk])):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login")), url
    response = client.post(reverse(CAMPAIGNS), {"action": "pause_selected", "_selected_action": [shop["campaign"].pk]})
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    shop["campaign"].refresh_from_db()
    assert shop["campaign"].status == "active"


def test_staff_without_permissions_get_403(client, shop):
    make_suggestion([shop["A"], shop["B"]])
    client.force_login(make_staff("sam"))
    assert client.get(reverse(REVIEW_QUEUE)).status_code == 403
    assert client.get(reverse(CAMPAIGNS)).status_code == 403


def test_campaign_edits_need_the_dedicated_manage_permission(client, shop):
    campaign = shop["campaign"]
    url = reverse("admin:shop_bundles_bundlecampaign_change", args=[campaign.pk])
    # Django's change permission alone is not enough: the page is read-only and a POST is refused.
    client.force_login(make_staff("carl", "view_bundlecampaign", "change_bundlecampaign"))
    html = client.get(url).content.decode()
    assert 'name="discount_value"' not in html
    assert client.post(url, _campaign_form(campaign, discount_value="50.00")).status_code == 403
    client.post(reverse(CAMPAIGNS), {"action": "pause_selected", "_selected_action": [campaign.pk]})
    campaign.refresh_from_db()
    assert (campaign.discount_value, campaign.status) == (D("10.00"), "active")

    # With the dedicated permission the edit goes through and is recorded with user and time.
    manager = make_staff("maria", "view_bundlecampaign", "change_bundlecampaign", "manage_bundlecampaign")
    client.force_login(manager)
    assert 'name="discount_value"' in client.get(url).content.decode()
    response = client.post(url, _campaign_form(campaign, discount_value="15.00"))
    assert response.status_code == 302, response.content.decode()[:2000]
    campaign.refresh_from_db()
    assert campaign.discount_value == D("15.00")
    edit = StaffAction.objects.get(action="edit", campaign=campaign)
    assert edit.user == manager and "discount_value=15.00" in edit.detail and edit.created_at is not None


# --- storefront forms: CSRF ---------------------------------------------------------------------

def test_every_storefront_form_needs_the_csrf_token(shop):
    a, campaign = shop["A"], shop["campaign"]
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"})).content.decode()
    assert page.count('name="csrfmiddlewaretoken"') >= 2  # add-to-cart and the bundle button
    forms = [
        (reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": 1}),
        (reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}), {"quantity": 1}),
        (reverse("shop_bundles:cart_update"), {f"qty_{a.pk}": 2}),
        (reverse("shop_bundles:cart_remove", kwargs={"product_id": a.pk}), {}),
        (reverse("shop_bundles:checkout"), {"customer_id": ""}),
    ]
    for url, data in forms:
        assert browser.post(url, data).status_code == 403, url
    assert not Order.objects.exists() and not OutboxEvent.objects.exists()

    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    for url, data in forms:
        response = browser.post(url, {**data, "csrfmiddlewaretoken": token})
        assert response.status_code == 302, url
    assert Order.objects.count() == 1


@pytest.mark.parametrize("method,url,data", [
    ("get", "/products/%00/", None),
    ("post", "/products/%00/add/", {"quantity": "1"}),
    ("post", "/store/", {"store": "\x00"}),
    ("get", "/admin/shop_bundles/bundlesuggestion/?status__exact=%00", None),
    ("get", "/admin/shop_bundles/bundlecampaign/?status__exact=%00", None),
    ("get", "/admin/shop_bundles/trainingrun/?status__exact=%00", None),
], ids=["product_page", "cart_add", "store_choice", "suggestion_filter", "campaign_filter", "training_filter"])
def test_a_nul_character_in_the_address_or_a_form_is_a_400_not_a_500(admin_client, method, url, data):
    """QA (session 11): PostgreSQL text cannot hold NUL; these raised ValueError in the driver (500)."""
    admin_client.raise_request_exception = False
    response = getattr(admin_client, method)(url, data) if data is not None else getattr(admin_client, method)(url)
    assert response.status_code == 400
    assert "contains a NUL character" in response.content.decode()


def test_pages_without_nul_are_served_as_before(admin_client):
    Product.objects.create(sku="SKU-1", name="Milk", price=D("1.00"), stock=5)
    assert admin_client.get("/products/SKU-1/").status_code == 200
    assert admin_client.get("/admin/shop_bundles/bundlesuggestion/?status=all").status_code == 200
