"""Checkout faults found by QA, through the real views on PostgreSQL.

1. A double (or triple) submitted checkout places one order: the cart page's form carries a one-time
   checkout token, stored in the unique ``Order.checkout_token``; concurrent requests with the same
   session and token all end at that order, and stock is decremented once.
2. The checkout refuses a total other than the one the shopper saw (price raised, campaign paused or
   expired) with a message, writing nothing.
3. A bundle add with quantity 0, -3 or "abc" is refused like the product add.
4. A bundle add that would pass 99 units of a product adds whole bundles only and says how many.
"""
import re
import threading
import time
from datetime import timedelta
from decimal import Decimal as D
from http.cookies import SimpleCookie

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import BundleCampaign, BundleCampaignItem, OfferEvent, Order, OutboxEvent, Product
from shop_bundles.services import orders as order_service
from shop_bundles.services.orders import OrderAlreadyPlaced, order_place
from shop_bundles.storefront.cart import SESSION_KEY

CHECKOUT = reverse("shop_bundles:checkout")
CART = reverse("shop_bundles:cart")


def make_products():
    """Pasta 20.00 and Sauce 5.00, 100 units each."""
    return (Product.objects.create(sku="A", name="Pasta", price=D("20.00"), stock=100, department="GROCERY"),
            Product.objects.create(sku="B", name="Sauce", price=D("5.00"), stock=100, department="GROCERY"))


def make_campaign(name, value, items, **fields):
    """A live percent campaign; ``items`` are ``(product, units per bundle)``."""
    campaign = BundleCampaign.objects.create(name=name, discount_type="percent", discount_value=D(value),
                                             starts_at=timezone.now() - timedelta(hours=1), **fields)
    for position, (product, units) in enumerate(items):
        BundleCampaignItem.objects.create(campaign=campaign, product=product, quantity=units, position=position)
    return campaign


def fill_cart(client, quantities):
    """Add ``{product: qty}`` through the product add view."""
    for product, qty in quantities.items():
        response = client.post(reverse("shop_bundles:cart_add", kwargs={"sku": product.sku}), {"quantity": qty})
        assert response.status_code == 302


def set_cart(client, quantities):
    """Put ``{product: qty}`` straight into the client's session cart."""
    session = client.session
    session[SESSION_KEY] = {str(p.pk): q for p, q in quantities.items()}
    session.save()


def checkout_fields(client):
    """GET the cart page and read its checkout form's hidden fields (token, total shown, CSRF token)."""
    html = client.get(CART).content.decode()
    form = re.search(r'<form method="post" action="%s" class="checkout">(.*?)</form>' % re.escape(CHECKOUT),
                     html, re.S).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
    assert set(fields) >= {"csrfmiddlewaretoken", "checkout_token", "expected_total"}
    return fields


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


# --- 1. double submit ---------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_of_one_checkout_place_one_order(monkeypatch):
    """Five concurrent POSTs (same session cookie, CSRF token and checkout token) make one order.

    Pricing is slowed down (0.3 s) so every request reads the session cart before the first one
    commits and clears it: the race QA reproduced on a running server.
    """
    a, b = make_products()
    make_campaign("AB", "10", [(a, 1), (b, 1)])
    shopper = Client(enforce_csrf_checks=True)
    set_cart(shopper, {a: 1, b: 1})
    fields = checkout_fields(shopper)  # also sets the CSRF cookie
    assert fields["expected_total"] == "22.50"

    real_cart_price = order_service.cart_price

    def slow_cart_price(*args, **kwargs):
        time.sleep(0.3)
        return real_cart_price(*args, **kwargs)

    monkeypatch.setattr(order_service, "cart_price", slow_cart_price)
    threads_n = 5
    barrier = threading.Barrier(threads_n)
    responses, errors = [None] * threads_n, []

    def submit(i):
        try:
            client = Client(enforce_csrf_checks=True)
            client.cookies = SimpleCookie({k: m.value for k, m in shopper.cookies.items()})  # same session, CSRF
            barrier.wait(timeout=10)
            responses[i] = client.post(CHECKOUT, fields)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    order = Order.objects.get()
    assert order.checkout_token == fields["checkout_token"]
    assert order.total == D("22.50")
    assert [r.status_code for r in responses] == [302] * threads_n
    assert {r.url for r in responses} == {reverse("shop_bundles:order_detail", kwargs={"pk": order.pk})}
    assert list(Product.objects.order_by("sku").values_list("stock", flat=True)) == [99, 99]
    assert OutboxEvent.objects.filter(kind=OutboxEvent.ORDER_PLACED).count() == 1
    assert order.lines.count() == 2
    # The shopper's session: the cart is empty, the order is theirs, and the next cart gets a new token.
    monkeypatch.setattr(order_service, "cart_price", real_cart_price)
    page = shopper.get(reverse("shop_bundles:order_detail", kwargs={"pk": order.pk}))
    assert page.status_code == 200
    assert not shopper.session.get(SESSION_KEY)
    set_cart(shopper, {b: 2})
    assert checkout_fields(shopper)["checkout_token"] != fields["checkout_token"]


@pytest.mark.faults
@pytest.mark.django_db(transaction=True)
def test_same_token_racing_on_the_unique_insert_rolls_the_loser_back(monkeypatch):
    """Two checkouts with one token whose carts share no product (so no row lock orders them):
    the second insert waits for the first transaction on the unique index, fails, and its
    transaction, stock included, is rolled back; it gets the first order."""
    a, b = make_products()
    token = "0123456789abcdef0123456789abcdef"
    real_outbox_event_add = order_service.outbox_event_add

    def slow_outbox_event_add(**kwargs):  # after the order insert and stock decrement, before commit
        time.sleep(0.5)
        return real_outbox_event_add(**kwargs)

    monkeypatch.setattr(order_service, "outbox_event_add", slow_outbox_event_add)
    real_atomic = order_service._order_place_atomic
    integrity_errors = []

    def spy(*args, **kwargs):
        try:
            return real_atomic(*args, **kwargs)
        except IntegrityError:
            integrity_errors.append(1)
            raise

    monkeypatch.setattr(order_service, "_order_place_atomic", spy)
    barrier = threading.Barrier(2)
    results = {}

    def place(product):
        try:
            barrier.wait(timeout=10)
            results[product.sku] = order_place(cart={product.pk: 3}, session_key="s1", checkout_token=token)
        except OrderAlreadyPlaced as exc:
            results[product.sku] = ("again", exc.order)
        finally:
            connection.close()

    threads = [threading.Thread(target=place, args=(p,)) for p in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    order = Order.objects.get()
    assert integrity_errors == [1]
    winner = next(sku for sku, r in results.items() if isinstance(r, Order))
    loser = "B" if winner == "A" else "A"
    assert results[loser] == ("again", order) and results[winner] == order
    stock = dict(Product.objects.values_list("sku", "stock"))
    assert stock == {winner: 97, loser: 100}
    assert list(order.lines.values_list("product__sku", flat=True)) == [winner]
    assert OutboxEvent.objects.filter(kind=OutboxEvent.ORDER_PLACED).count() == 1


@pytest.mark.django_db
def test_a_repeated_submit_later_goes_to_the_order_and_leaves_the_new_cart_alone(client):
    a, b = make_products()
    fill_cart(client, {a: 1, b: 1})
    fields = checkout_fields(client)
    first = client.post(CHECKOUT, fields)
    order = Order.objects.get()
    assert first.url == reverse("shop_bundles:order_detail", kwargs={"pk": order.pk})
    fill_cart(client, {b: 4})  # a new cart, then the old page's form is sent again (back button)
    again = client.post(CHECKOUT, fields, follow=True)
    assert again.redirect_chain[-1][0] == reverse("shop_bundles:order_detail", kwargs={"pk": order.pk})
    assert ("This order was already placed; submitting the checkout again did not place it twice."
            in messages_of(again))
    assert Order.objects.count() == 1
    assert client.session[SESSION_KEY] == {str(b.pk): 4}
    assert dict(Product.objects.values_list("sku", "stock")) == {"A": 99, "B": 99}


@pytest.mark.django_db
def test_a_token_placed_by_another_session_shows_nothing_of_its_order(client):
    a, b = make_products()
    fill_cart(client, {a: 1})
    fields = checkout_fields(client)
    client.post(CHECKOUT, fields)
    other = Client()
    fill_cart(other, {b: 1})
    response = other.post(CHECKOUT, {"checkout_token": fields["checkout_token"], "expected_total": "5.00"},
                          follow=True)
    assert response.redirect_chain[-1][0] == CART
    assert "Your cart page was out of date. Check your cart and place the order again." in messages_of(response)
    assert Order.objects.count() == 1 and other.session[SESSION_KEY] == {str(b.pk): 1}


@pytest.mark.django_db
@pytest.mark.parametrize("field, value", [("checkout_token", "not-a-token"), ("expected_total", "abc"),
                                          ("expected_total", "-1.00")])
def test_a_tampered_checkout_form_is_refused_with_a_message(client, field, value):
    a, _ = make_products()
    fill_cart(client, {a: 1})
    fields = checkout_fields(client)
    response = client.post(CHECKOUT, {**fields, field: value}, follow=True)
    assert "Your cart page was out of date. Check your cart and place the order again." in messages_of(response)
    assert not Order.objects.exists() and client.session[SESSION_KEY] == {str(a.pk): 1}


# --- 2. the total the shopper saw ---------------------------------------------------------------------


def _raise_price(a, campaign):
    Product.objects.filter(pk=a.pk).update(price=D("30.00"))


def _pause(a, campaign):
    campaign.status = BundleCampaign.PAUSED
    campaign.save()


def _expire(a, campaign):
    campaign.starts_at, campaign.ends_at = timezone.now() - timedelta(days=3), timezone.now() - timedelta(seconds=1)
    campaign.save()


@pytest.mark.faults
@pytest.mark.django_db
@pytest.mark.parametrize("change, now_total", [(_raise_price, "31.50"), (_pause, "25.00"), (_expire, "25.00")],
                         ids=["price_raised", "campaign_paused", "campaign_expired"])
def test_checkout_refuses_a_total_other_than_the_cart_showed(client, change, now_total):
    a, b = make_products()
    campaign = make_campaign("AB", "10", [(a, 1), (b, 1)])
    fill_cart(client, {a: 1, b: 1})
    fields = checkout_fields(client)
    assert fields["expected_total"] == "22.50"
    change(a, campaign)
    events = OutboxEvent.objects.count()

    response = client.post(CHECKOUT, fields, follow=True)
    assert response.redirect_chain[-1][0] == CART
    assert messages_of(response) == [
        f"Prices or offers changed since you saw your cart: the total is now ${now_total} (was $22.50). "
        "Check your cart and place the order again."]
    assert not Order.objects.exists()
    assert dict(Product.objects.values_list("sku", "stock")) == {"A": 100, "B": 100}
    assert OutboxEvent.objects.count() == events
    assert client.session[SESSION_KEY] == {str(a.pk): 1, str(b.pk): 1}  # the cart is kept
    assert response.context["priced"].total == D(now_total)  # the cart page shows the new total

    # Placing it again from the refreshed cart page charges the total now shown.
    fields = checkout_fields(client)
    assert fields["expected_total"] == now_total
    placed = client.post(CHECKOUT, fields)
    order = Order.objects.get()
    assert placed.url == reverse("shop_bundles:order_detail", kwargs={"pk": order.pk})
    assert order.total == D(now_total)


@pytest.mark.django_db
def test_order_place_without_an_expected_total_prices_as_before():
    a, b = make_products()
    make_campaign("AB", "10", [(a, 1), (b, 1)])
    Product.objects.filter(pk=a.pk).update(price=D("30.00"))
    with pytest.raises(ValidationError) as refused:
        order_place(cart={a.pk: 1, b.pk: 1}, session_key="s", expected_total=D("22.50"))
    assert refused.value.messages == [
        "Prices or offers changed since you saw your cart: the total is now $31.50 (was $22.50). "
        "Check your cart and place the order again."]
    assert not Order.objects.exists()
    assert order_place(cart={a.pk: 1, b.pk: 1}, session_key="s").total == D("31.50")
    assert order_place(cart={a.pk: 1, b.pk: 1}, session_key="s", expected_total=D("31.5")).total == D("31.50")
    assert list(Order.objects.values_list("checkout_token", flat=True)) == [None, None]


# --- 3. bundle add quantities ------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.django_db
@pytest.mark.parametrize("quantity", ["0", "-3", "abc", "", "100"])
def test_bundle_add_refuses_a_bad_quantity_like_the_product_add(client, quantity):
    a, b = make_products()
    campaign = make_campaign("AB", "10", [(a, 1), (b, 1)])
    outbox = OutboxEvent.objects.count()
    url = reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk})
    page = reverse("shop_bundles:product_detail", kwargs={"sku": "B"})
    response = client.post(url, {"quantity": quantity}, HTTP_REFERER=f"http://testserver{page}", follow=True)
    assert response.redirect_chain[-1][0] == f"http://testserver{page}"
    assert messages_of(response) == ["Choose a quantity between 1 and 99."]
    assert not client.session.get(SESSION_KEY)
    assert not OfferEvent.objects.exists() and OutboxEvent.objects.count() == outbox
    # Same message as the product add; without a Referer the bundle add goes to its first product's page.
    product_add = client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": quantity},
                              follow=True)
    assert messages_of(product_add) == ["Choose a quantity between 1 and 99."]
    response = client.post(url, {"quantity": quantity})
    assert response.url == reverse("shop_bundles:product_detail", kwargs={"sku": "A"})


@pytest.mark.django_db
def test_bundle_add_of_3_bundles_adds_3(client, django_capture_on_commit_callbacks):
    a, b = make_products()
    campaign = make_campaign("AB", "10", [(a, 1), (b, 1)])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}), {"quantity": "3"})
    assert client.session[SESSION_KEY] == {str(a.pk): 3, str(b.pk): 3}
    assert OfferEvent.objects.get().quantity == 3


# --- 4. the 99-unit line cap -----------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.django_db
def test_bundle_add_past_99_units_adds_whole_bundles_and_says_how_many(client, django_capture_on_commit_callbacks):
    a, b = make_products()
    campaign = make_campaign("2 Pasta + Sauce", "10", [(a, 2), (b, 1)])
    url = reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk})
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"quantity": "60"}, follow=True)
    assert response.redirect_chain[-1][0] == CART
    assert messages_of(response) == [
        "Added 49 of 60 bundles “2 Pasta + Sauce” to your cart: at most 99 of Pasta per order."]
    assert client.session[SESSION_KEY] == {str(a.pk): 98, str(b.pk): 49}
    assert [(bundle.count, c.pk) for bundle, c in response.context["priced"].bundles] == [(49, campaign.pk)]
    assert OfferEvent.objects.get().quantity == 49

    # Room for no whole bundle (98 + 2 > 99): refused, the cart and events unchanged.
    response = client.post(url, {"quantity": "1"}, follow=True)
    assert messages_of(response) == [
        "No bundle “2 Pasta + Sauce” was added: at most 99 of Pasta per order, and your cart has 98."]
    assert client.session[SESSION_KEY] == {str(a.pk): 98, str(b.pk): 49}
    assert OfferEvent.objects.count() == 1


@pytest.mark.faults
@pytest.mark.django_db
def test_bundle_add_of_an_offer_that_ended_while_the_page_was_open_goes_back_with_a_message(client):
    """QA (session 11): the shopper got a bare "Not Found" page."""
    from django.utils import timezone

    a, b = make_products()
    campaign = make_campaign("AB", "10", [(a, 1), (b, 1)])
    BundleCampaign.objects.filter(pk=campaign.pk).update(ends_at=timezone.now())
    page = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})
    response = client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}), {"quantity": "1"},
                           HTTP_REFERER=f"http://testserver{page}", follow=True)
    assert response.redirect_chain[-1][0] == f"http://testserver{page}"
    assert response.status_code == 200
    assert messages_of(response) == ["This bundle offer is no longer available, so nothing was added to your cart."]
    assert not client.session.get(SESSION_KEY) and not OfferEvent.objects.exists()
