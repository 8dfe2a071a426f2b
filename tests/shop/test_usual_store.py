"""A signed-in shopper (SHOP_BUNDLES_CUSTOMER_RESOLVER): offers ordered for their usual store, orders linked to them."""
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import Customer, Order
from shop_bundles.selectors.customers import usual_store
from shop_bundles.selectors.experiment import assignment_group
from shop_bundles.storefront.stores import STORE_SESSION_KEY, USUAL_STORE_SESSION_KEY
from tests.shop.test_store_offers import scored  # noqa: F401 - fixture
from tests.shop.test_storefront import products  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

RESOLVER = "shop_bundles.selectors.customers.customer_by_user_email"


def _orders(customer, stores, *, source=Order.SOURCE_IMPORT, start=None):
    start = start or timezone.now() - timedelta(days=30)
    for i, store in enumerate(stores):
        Order.objects.create(external_id=f"{customer.external_id}-{source}-{i}", customer=customer,
                             placed_at=start + timedelta(days=i), store_id=store, source=source)


def test_usual_store_is_the_store_of_most_orders_ties_to_the_latest():
    ann = Customer.objects.create(external_id="hh-7")
    _orders(ann, ["12", "367", "367", "", ""])  # orders without a store do not count
    _orders(ann, ["12"] * 5, source=Order.SOURCE_SIMULATED)  # replay orders are left out
    assert usual_store("hh-7") == "367"
    bob = Customer.objects.create(external_id="hh-8")
    _orders(bob, ["5", "9"])  # one each: the more recent order's store
    assert usual_store("hh-8") == "9"
    assert usual_store("hh-9") == "" and usual_store("") == ""


def test_signed_in_shopper_gets_their_usual_store_until_they_choose(client, django_user_model, settings, products,  # noqa: F811
                                                                   scored):  # noqa: F811
    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = RESOLVER
    assert assignment_group("hh-7") == "treatment"  # the shopper sees offers
    ann = Customer.objects.create(external_id="hh-7", email="ann@example.com")
    _orders(ann, ["367", "12", "367"])
    pasta_url = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})

    # Anonymous (another browser): the chain-wide order (tests.shop.test_store_offers: A+B before A+C).
    assert [o.campaign.name for o in Client().get(pasta_url).context["offers"]] == ["AF", "AB", "AD"]

    # Signed in from the start (the e-mail matches case-insensitively): ordered for store 367, as if chosen;
    # the session is assigned by the customer id.
    client.force_login(django_user_model.objects.create_user("ann", "Ann@Example.com", "pw-For-tests-1"))
    response = client.get(pasta_url)
    assert [o.campaign.name for o in response.context["offers"]] == ["AF", "AC", "AD"]
    html = response.content.decode()
    assert "Store 367</a>" in html and "Bought together in 9 baskets at your store" in html
    assert client.session[USUAL_STORE_SESSION_KEY] == ["hh-7", "367"] and STORE_SESSION_KEY not in client.session
    page = client.get(reverse("shop_bundles:store_choose"))
    assert page.context["form"].initial["store"] == "367"
    assert "now: store 367, where most of your orders were placed" in page.content.decode()

    # The checkout links the order to the customer and records the usual store; the holdout split
    # follows the customer id.
    client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": 1})
    client.post(reverse("shop_bundles:checkout"), {})
    order = Order.objects.get(source=Order.SOURCE_STOREFRONT)
    assert (order.customer_id, order.store_id, order.experiment_group, order.total) == (
        ann.pk, "367", "treatment", D("20.00"))

    # "No store" stays chosen (the usual store does not come back); another store can be chosen.
    client.post(reverse("shop_bundles:store_choose"), {"store": ""})
    assert [o.campaign.name for o in client.get(pasta_url).context["offers"]] == ["AF", "AB", "AD"]
    assert "Choose your store</a>" in client.get(pasta_url).content.decode()
    client.post(reverse("shop_bundles:store_choose"), {"store": "12"})
    assert client.session[STORE_SESSION_KEY] == "12"
    assert "Store 12</a>" in client.get(pasta_url).content.decode()


def test_without_a_resolver_or_a_matching_customer_the_shopper_is_anonymous(client, django_user_model, settings,
                                                                             products, scored):  # noqa: F811
    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = None  # the plugin's default (the host project sets the e-mail one)
    ann = Customer.objects.create(external_id="hh-7", email="ann@example.com")
    _orders(ann, ["367"])
    client.force_login(django_user_model.objects.create_user("ann", "ann@example.com", "pw-For-tests-1"))
    pasta_url = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})
    assert [o.campaign.name for o in client.get(pasta_url).context["offers"]] == ["AF", "AB", "AD"]  # no resolver set
    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = RESOLVER
    client.force_login(django_user_model.objects.create_user("bob", "bob@example.com", "pw-For-tests-1"))
    assert [o.campaign.name for o in client.get(pasta_url).context["offers"]] == ["AF", "AB", "AD"]  # no customer
    client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": 1})
    client.post(reverse("shop_bundles:checkout"), {})
    assert Order.objects.get(source=Order.SOURCE_STOREFRONT).customer is None


def test_a_resolver_that_cannot_be_imported_is_a_configuration_error(client, settings, products):  # noqa: F811
    from django.core.exceptions import ImproperlyConfigured

    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = "shop_bundles.selectors.customers.no_such_resolver"
    with pytest.raises(ImproperlyConfigured, match="cannot import 'shop_bundles.selectors.customers.no_such_resolver'"):
        client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))


def test_system_check_reports_a_resolver_that_cannot_be_imported(settings):
    from shop_bundles.checks import customer_resolver_check

    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = None
    assert customer_resolver_check() == []  # unset
    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = RESOLVER
    assert customer_resolver_check() == []
    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = "shop_bundles.selectors.customers.nope"
    [error] = customer_resolver_check()
    assert error.id == "shop_bundles.E001" and "cannot import 'shop_bundles.selectors.customers.nope'" in error.msg
    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = "shop_bundles.app_settings.DEFAULTS"  # a dict
    [error] = customer_resolver_check()
    assert error.id == "shop_bundles.E001" and "is not callable" in error.msg


def test_a_shopper_signs_in_on_the_host_login_page_and_sees_their_store(client, django_user_model, settings,
                                                                        products, scored):  # noqa: F811
    """The host project (config/urls.py) has a shopper sign-in page and turns the e-mail resolver on."""
    from django.conf import settings as django_settings

    assert django_settings.SHOP_BUNDLES_CUSTOMER_RESOLVER == RESOLVER  # config/settings.py default
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0  # the anonymous session's random group must not hide the offers
    ann = Customer.objects.create(external_id="hh-7", email="ann@example.com")
    _orders(ann, ["367", "367"])
    django_user_model.objects.create_user("ann", "ann@example.com", "pw-For-tests-1")
    pasta_url = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})
    html = client.get(pasta_url).content.decode()
    assert f'href="/accounts/login/?next={pasta_url}" class="signin-link">Sign in</a>' in html
    response = client.post(reverse("login"), {"username": "ann", "password": "pw-For-tests-1", "next": pasta_url})
    assert response.status_code == 302 and response["Location"] == pasta_url
    response = client.get(pasta_url)
    html = response.content.decode()
    assert [o.campaign.name for o in response.context["offers"]] == ["AF", "AC", "AD"]
    assert "Store 367</a>" in html and '<span class="signed-in">ann</span>' in html and "Sign in</a>" not in html
    client.post(reverse("logout"))
    assert "Choose your store</a>" in client.get(pasta_url).content.decode()  # signed out: anonymous again


def test_demo_shopper_is_the_customer_with_most_orders_linked_by_email(settings, tmp_path, django_user_model):
    from django.contrib.auth import authenticate

    from shop_bundles.management.commands.demo import Command

    settings.VAR_DIR = tmp_path
    ann, bob = Customer.objects.create(external_id="hh-7"), Customer.objects.create(external_id="hh-8")
    _orders(ann, ["367", "12", "367"])
    _orders(bob, ["5"])
    Customer.objects.create(external_id="old", email="demo-shopper@example.com")  # a stale link is moved
    password, customer, store = Command()._demo_shopper()
    assert (customer, store) == ("hh-7", "367")
    assert password == (tmp_path / "demo_demo_shopper_password.txt").read_text().strip()
    assert list(Customer.objects.filter(email="demo-shopper@example.com").values_list("external_id", flat=True)) == [
        "hh-7"]
    user = authenticate(username="demo-shopper", password=password)
    assert user is not None and not user.is_staff and user.email == "demo-shopper@example.com"
    assert Command()._demo_shopper()[0] == password  # a second run keeps the password


def test_a_session_keeps_its_experiment_group_when_the_shopper_signs_in(client, django_user_model, settings,
                                                                        products):  # noqa: F811
    """Signing in changes the session key; the session keeps the identity it was assigned by, so the
    cart's prices do not change. A session that starts signed in is assigned by the customer id."""
    from shop_bundles import app_settings
    from shop_bundles.selectors.experiment import IDENTITY_SESSION_KEY, assignment_bucket
    from tests.shop.test_storefront import make_campaign

    settings.SHOP_BUNDLES_CUSTOMER_RESOLVER = RESOLVER
    settings.SHOP_BUNDLES_HOLDOUT_SHARE = 0.5
    Customer.objects.create(external_id="hh-7", email="ann@example.com")
    user = django_user_model.objects.create_user("ann", "ann@example.com", "pw-For-tests-1")
    pasta_url = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})
    salt = app_settings.get("EXPERIMENT_SALT")
    make_campaign("AB", "percent", "10", [products["A"], products["B"]])  # the page has an offer

    client.get(pasta_url)
    anonymous_key = client.session.session_key
    assert client.session[IDENTITY_SESSION_KEY] == anonymous_key
    client.post(reverse("login"), {"username": "ann", "password": "pw-For-tests-1"})
    assert client.session.session_key != anonymous_key  # Django cycled the key at sign-in
    assert client.session[IDENTITY_SESSION_KEY] == anonymous_key  # the group stays the anonymous session's
    client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": 1})
    client.post(reverse("shop_bundles:checkout"), {})
    order = Order.objects.get(source=Order.SOURCE_STOREFRONT)
    expected = "holdout" if assignment_bucket(anonymous_key, salt=salt) < 0.5 else "treatment"
    assert (order.experiment_group, order.customer.external_id) == (expected, "hh-7")

    other = Client()  # another device, signed in before browsing: the customer id
    other.force_login(user)
    other.get(pasta_url)
    assert other.session[IDENTITY_SESSION_KEY] == "hh-7"
