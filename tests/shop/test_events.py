"""Checkout (services.orders.order_place and the checkout view) and the order event (services.events)."""
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import (
    BundleCampaign,
    BundleCampaignItem,
    Customer,
    OfferEvent,
    Order,
    OrderEvent,
    OrderLine,
    Product,
)
from shop_bundles.services.events import order_event_record
from shop_bundles.services.orders import order_place
from shop_bundles.storefront.cart import SESSION_KEY

pytestmark = pytest.mark.django_db


@pytest.fixture
def products():
    """A 20.00, B 5.00, C 8.00, E 19.99, F 10.00, G 6.75, H 6.75; 50 units each."""
    prices = {"A": "20.00", "B": "5.00", "C": "8.00", "E": "19.99", "F": "10.00", "G": "6.75", "H": "6.75"}
    return {sku: Product.objects.create(sku=sku, name=f"Product {sku}", price=D(p), stock=50)
            for sku, p in prices.items()}


def make_campaign(name, kind, value, items):
    """An active campaign started an hour ago, one unit of each product."""
    campaign = BundleCampaign.objects.create(name=name, discount_type=kind, discount_value=D(value),
                                             starts_at=timezone.now() - timedelta(hours=1))
    for position, product in enumerate(items):
        BundleCampaignItem.objects.create(campaign=campaign, product=product, position=position)
    return campaign


def fill_cart(client, quantities):
    """Put ``{product: qty}`` into the client's session cart."""
    session = client.session
    session[SESSION_KEY] = {str(p.pk): q for p, q in quantities.items()}
    session.save()


@pytest.mark.faults
def test_checkout_creates_order_with_bundle_discounts_and_records_event_once(
        client, products, django_capture_on_commit_callbacks):
    ab = make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    ac = make_campaign("AC", "percent", "15", [products["A"], products["C"]])
    fill_cart(client, {products["A"]: 2, products["B"]: 1, products["C"]: 1})

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("shop_bundles:checkout"), {"customer_id": ""})
    assert len(callbacks) == 1  # record_order_placed, sent on commit (Celery eager in tests)

    order = Order.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("shop_bundles:order_detail", kwargs={"pk": order.pk})
    # A+C (4.20) first, then the second A with B (2.50): 53.00 - 6.70.
    assert (order.source, order.subtotal, order.discount_total, order.total) == (
        Order.SOURCE_STOREFRONT, D("53.00"), D("6.70"), D("46.30"))
    assert order.customer is None and order.session_key == client.session.session_key
    assert set(order.campaigns.values_list("pk", flat=True)) == {ab.pk, ac.pk}

    lines = {line.product.sku: line for line in order.lines.select_related("product")}
    assert {sku: (l.quantity, l.unit_price) for sku, l in lines.items()} == {
        "A": (2, D("20.00")), "B": (1, D("5.00")), "C": (1, D("8.00"))}
    assert sum(l.discount for l in lines.values()) == order.discount_total
    # A+C 4.20 split 20:8 -> 3.00 + 1.20; A+B 2.50 split 20:5 -> 2.00 + 0.50.
    assert {sku: l.discount for sku, l in lines.items()} == {"A": D("5.00"), "B": D("0.50"), "C": D("1.20")}
    assert (lines["B"].campaign_id, lines["C"].campaign_id) == (ab.pk, ac.pk)
    assert lines["A"].campaign_id in {ab.pk, ac.pk}

    assert {p.sku: p.stock for p in Product.objects.filter(sku__in="ABC")} == {"A": 48, "B": 49, "C": 49}
    assert not client.session.get(SESSION_KEY)

    event = OrderEvent.objects.get(order=order)
    assert (event.revenue, event.bundle_discount, event.bundles_used) == (D("46.30"), D("6.70"), 2)
    purchases = OfferEvent.objects.filter(kind=OfferEvent.PURCHASE, order=order)
    assert sorted((e.campaign_id, e.quantity) for e in purchases) == sorted([(ab.pk, 1), (ac.pk, 1)])

    again = order_event_record(order_id=order.pk)
    assert again == {"order_id": order.pk, "created": False, "bundles_used": 2, "purchase_events": 0}
    assert OrderEvent.objects.count() == 1
    assert OfferEvent.objects.filter(kind=OfferEvent.PURCHASE).count() == 2

    page = client.get(response.url)
    assert page.status_code == 200
    assert 'id="total" class="grand">$46.30<' in page.content.decode()


@pytest.mark.faults
def test_order_event_record_twice_creates_once(products, django_capture_on_commit_callbacks):
    make_campaign("GH", "percent", "5", [products["G"], products["H"]])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        order = order_place(cart={products["G"].pk: 9, products["H"].pk: 9}, session_key="s1")
    assert len(callbacks) == 1

    first = order_event_record(order_id=order.pk)
    second = order_event_record(order_id=order.pk)
    assert first == {"order_id": order.pk, "created": True, "bundles_used": 9, "purchase_events": 1}
    assert second["created"] is False and second["bundles_used"] == 9
    assert OrderEvent.objects.filter(order=order).count() == 1
    purchase = OfferEvent.objects.get(kind=OfferEvent.PURCHASE, order=order)
    assert (purchase.quantity, purchase.session_key) == (9, "s1")
    event = OrderEvent.objects.get(order=order)
    assert (event.revenue, event.bundle_discount) == (D("115.42"), D("6.08"))


@pytest.mark.faults
def test_m5_line_discounts_sum_to_the_once_rounded_bundle_discount(products):
    make_campaign("GH", "percent", "5", [products["G"], products["H"]])
    order = order_place(cart={products["G"].pk: 9, products["H"].pk: 9}, session_key="")
    assert (order.subtotal, order.discount_total, order.total) == (D("121.50"), D("6.08"), D("115.42"))
    discounts = sorted(order.lines.values_list("discount", flat=True))
    assert discounts == [D("3.04"), D("3.04")]


@pytest.mark.faults
def test_m4_line_discounts_split_by_regular_amount_and_sum_exactly(products):
    make_campaign("EF", "percent", "25", [products["E"], products["F"]])
    order = order_place(cart={products["E"].pk: 1, products["F"].pk: 1}, session_key="")
    assert (order.discount_total, order.total) == (D("7.50"), D("22.49"))
    lines = {l.product.sku: l.discount for l in order.lines.select_related("product")}
    assert lines == {"E": D("5.00"), "F": D("2.50")}  # 7.50 * 19.99/29.99 = 4.9992 -> 5.00 by largest remainder


def test_order_without_bundle_records_event_without_purchases(products):
    order = order_place(cart={products["A"].pk: 1}, session_key="")
    assert (order.discount_total, order.total) == (D("0.00"), D("20.00"))
    assert order.lines.get().campaign is None
    result = order_event_record(order_id=order.pk)
    assert result == {"order_id": order.pk, "created": True, "bundles_used": 0, "purchase_events": 0}
    assert not OfferEvent.objects.exists()


@pytest.mark.faults
@pytest.mark.parametrize("problem", ["empty", "out_of_stock", "not_enough_stock", "inactive"])
def test_order_place_refuses_and_writes_nothing(products, problem, django_capture_on_commit_callbacks):
    cart = {products["A"].pk: 1, products["B"].pk: 1}
    if problem == "empty":
        cart = {}
    elif problem == "out_of_stock":
        Product.objects.filter(pk=products["B"].pk).update(stock=0)
    elif problem == "not_enough_stock":
        cart[products["A"].pk] = 51
    elif problem == "inactive":
        Product.objects.filter(pk=products["B"].pk).update(active=False)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(ValidationError) as excinfo:
            order_place(cart=cart, session_key="s")
    assert excinfo.value.messages
    assert callbacks == []
    assert not Order.objects.exists() and not OrderLine.objects.exists() and not OrderEvent.objects.exists()
    assert Product.objects.get(pk=products["A"].pk).stock == 50


def test_checkout_view_shows_the_refusal_and_keeps_the_cart(client, products):
    fill_cart(client, {products["A"]: 60})
    response = client.post(reverse("shop_bundles:checkout"), follow=True)
    assert "Only 50 of Product A in stock" in response.content.decode()
    assert client.session[SESSION_KEY] == {str(products["A"].pk): 60}
    assert not Order.objects.exists()


def test_checkout_with_customer_id_links_the_customer(client, products, django_capture_on_commit_callbacks,
                                                     settings):
    settings.SHOP_BUNDLES_CHECKOUT_CUSTOMER_FIELD = True
    for _ in range(2):
        fill_cart(client, {products["A"]: 1})
        with django_capture_on_commit_callbacks(execute=True):
            client.post(reverse("shop_bundles:checkout"), {"customer_id": "  C-42 "})
    customer = Customer.objects.get()
    assert customer.external_id == "C-42"
    assert list(Order.objects.values_list("customer_id", flat=True)) == [customer.pk, customer.pk]
    assert OrderEvent.objects.count() == 2


@pytest.mark.faults
def test_order_page_is_private_to_the_session_that_placed_it(client, products):
    fill_cart(client, {products["A"]: 1})
    response = client.post(reverse("shop_bundles:checkout"))
    assert client.get(response.url).status_code == 200
    assert Client().get(response.url).status_code == 404


def test_checkout_get_goes_back_to_the_cart(client):
    response = client.get(reverse("shop_bundles:checkout"))
    assert response.status_code == 302 and response.url == reverse("shop_bundles:cart")


@pytest.mark.faults
def test_campaign_paused_before_checkout_gives_no_discount(client, products):
    campaign = make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    fill_cart(client, {products["A"]: 1, products["B"]: 1})
    BundleCampaign.objects.filter(pk=campaign.pk).update(status=BundleCampaign.PAUSED)
    client.post(reverse("shop_bundles:checkout"))
    order = Order.objects.get()
    assert (order.discount_total, order.total) == (D("0.00"), D("25.00"))
    assert not order.campaigns.exists()


def test_checkout_ignores_a_customer_id_by_default_and_hides_the_field(client, products):
    """Off by default: a shopper cannot attach an order to somebody else's customer record."""
    Customer.objects.create(external_id="C-42")
    fill_cart(client, {products["A"]: 1})
    assert 'name="customer_id"' not in client.get(reverse("shop_bundles:cart")).content.decode()
    response = client.post(reverse("shop_bundles:checkout"), {"customer_id": "C-42"})
    assert response.status_code == 302
    order = Order.objects.get()
    assert order.customer is None
    assert Customer.objects.count() == 1  # nothing created either


def test_logged_in_staff_may_enter_a_customer_id(client, products):
    from django.contrib.auth import get_user_model

    staff = get_user_model().objects.create_user("clerk", password="pw-clerk-1", is_staff=True)
    client.force_login(staff)
    fill_cart(client, {products["A"]: 1})
    assert 'name="customer_id"' in client.get(reverse("shop_bundles:cart")).content.decode()
    client.post(reverse("shop_bundles:checkout"), {"customer_id": "C-7"})
    assert Order.objects.get().customer.external_id == "C-7"


def test_a_no_discount_offer_shows_adds_and_links_the_order(client, products, django_capture_on_commit_callbacks):
    """A 0 % campaign (the optimiser found no discount that pays) is a "frequently bought together" offer at
    normal prices: shown on the product page without a saving, added as a pair, and the order is linked to it
    so its attach rate is measured."""
    fbt = make_campaign("AB together", "percent", "0", [products["A"], products["B"]])
    html = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"})).content.decode()
    assert "Frequently bought together" in html and "(normal prices)" in html and "You save" not in html
    assert '<strong class="bundle-price">$25.00</strong>' in html and "Add both to cart" in html
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": fbt.pk}))
    cart_html = client.get(reverse("shop_bundles:cart")).content.decode()
    assert "bought together at normal prices" in cart_html
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("shop_bundles:checkout"))
    order = Order.objects.get()
    assert (order.subtotal, order.discount_total, order.total) == (D("25.00"), D("0.00"), D("25.00"))
    assert list(order.campaigns.values_list("pk", flat=True)) == [fbt.pk]
