"""The storefront through Django's test client on PostgreSQL: offers, cart pricing (M1-M7), bundle events."""
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import BundleCampaign, BundleCampaignItem, OfferEvent, Product
from shop_bundles.selectors.offers import offers_for_product
from shop_bundles.storefront.cart import SESSION_KEY

pytestmark = pytest.mark.django_db

CATALOGUE = {
    "A": ("20.00", "Pasta"), "B": ("5.00", "Sauce"), "C": ("8.00", "Parmesan"), "D": ("3.00", "Basil"),
    "D2": ("2.00", "Garlic"), "E": ("19.99", "Wine"), "F": ("10.00", "Cheese"), "G": ("6.75", "Coffee"),
    "H": ("6.75", "Milk"),
}


@pytest.fixture
def products():
    """Products A..H of the money cases, 100 units each, department GROCERY (H: DAIRY)."""
    return {
        sku: Product.objects.create(sku=sku, name=name, price=D(price), stock=100,
                                    department="DAIRY" if sku == "H" else "GROCERY")
        for sku, (price, name) in CATALOGUE.items()
    }


def make_campaign(name, kind, value, items, **fields):
    """An active campaign (started an hour ago, no end) with one unit of each product."""
    fields.setdefault("starts_at", timezone.now() - timedelta(hours=1))
    campaign = BundleCampaign.objects.create(name=name, discount_type=kind, discount_value=D(value), **fields)
    for position, product in enumerate(items):
        BundleCampaignItem.objects.create(campaign=campaign, product=product, position=position)
    return campaign


def add(client, product, quantity=1, **extra):
    """POST add-to-cart for a product; extra fields (e.g. price) go into the request too."""
    return client.post(reverse("shop_bundles:cart_add", kwargs={"sku": product.sku}),
                       {"quantity": quantity, **extra})


def set_cart(client, quantities):
    """Put ``{product: qty}`` straight into the client's session cart."""
    session = client.session
    session[SESSION_KEY] = {str(p.pk): q for p, q in quantities.items()}
    session.save()


def cart_page(client):
    """GET the cart; returns (response, PricedCart)."""
    response = client.get(reverse("shop_bundles:cart"))
    assert response.status_code == 200
    return response, response.context["priced"]


# --- money cases through the real views -------------------------------------------------------

MONEY_CASES = {
    # case: (campaigns [(name, kind, value, skus)], cart {sku: qty}, discount, total, campaign used)
    "M1": ([("AB", "percent", "10", "AB")], {"A": 1, "B": 1}, "2.50", "22.50", "AB"),
    "M2": ([("AB", "percent", "10", "AB")], {"A": 2, "B": 1}, "2.50", "42.50", "AB"),
    "M4": ([("EF", "percent", "25", "EF")], {"E": 1, "F": 1}, "7.50", "22.49", "EF"),
    "M5": ([("GH", "percent", "5", "GH")], {"G": 9, "H": 9}, "6.08", "115.42", "GH"),
    "M6": ([("AB", "percent", "10", "AB"), ("AC", "percent", "15", "AC")], {"A": 1, "B": 1, "C": 1},
           "4.20", "28.80", "AC"),
}


@pytest.mark.faults
@pytest.mark.parametrize("case", sorted(MONEY_CASES))
def test_money_case_through_cart_views(client, products, case):
    campaigns, quantities, discount, total, used = MONEY_CASES[case]
    for name, kind, value, skus in campaigns:
        make_campaign(name, kind, value, [products[s] for s in skus])
    for sku, qty in quantities.items():
        assert add(client, products[sku], qty).status_code == 302
    response, priced = cart_page(client)
    assert priced.discount_total == D(discount)
    assert priced.total == D(total)
    assert [campaign.name for _, campaign in priced.bundles] == [used]
    html = response.content.decode()
    assert f'id="total" class="grand">${total}<' in html
    assert f"−${discount}" in html


@pytest.mark.faults
def test_m7_price_in_add_to_cart_request_is_ignored(client, products):
    make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    add(client, products["A"], 1, price="0.01", unit_price="0.01")
    add(client, products["B"], 1, price="0.01")
    session_cart = client.session[SESSION_KEY]
    assert session_cart == {str(products["A"].pk): 1, str(products["B"].pk): 1}  # ids and quantities only
    _, priced = cart_page(client)
    assert [row.line.unit_price for row in priced.rows] == [D("20.00"), D("5.00")]
    assert (priced.subtotal, priced.discount_total, priced.total) == (D("25.00"), D("2.50"), D("22.50"))


@pytest.mark.faults
def test_changing_quantities_re_forms_bundles(client, products):
    make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    set_cart(client, {products["A"]: 1, products["B"]: 1})
    _, priced = cart_page(client)
    assert priced.discount_total == D("2.50")

    client.post(reverse("shop_bundles:cart_update"),
                {f"qty_{products['A'].pk}": 2, f"qty_{products['B'].pk}": 2})
    _, priced = cart_page(client)
    assert [(b.count, b.discount) for b, _ in priced.bundles] == [(2, D("5.00"))]
    assert priced.total == D("45.00")

    client.post(reverse("shop_bundles:cart_update"), {f"qty_{products['B'].pk}": 0})
    _, priced = cart_page(client)
    assert [row.product.sku for row in priced.rows] == ["A"]
    assert (priced.discount_total, priced.total) == (D("0.00"), D("40.00"))


def test_cart_update_rejects_bad_quantities_and_remove_drops_a_line(client, products):
    set_cart(client, {products["A"]: 1, products["B"]: 1})
    client.post(reverse("shop_bundles:cart_update"), {f"qty_{products['A'].pk}": -3})
    assert client.session[SESSION_KEY][str(products["A"].pk)] == 1
    client.post(reverse("shop_bundles:cart_remove", kwargs={"product_id": products["A"].pk}))
    assert client.session[SESSION_KEY] == {str(products["B"].pk): 1}


@pytest.mark.faults
def test_cart_reprices_when_catalogue_price_changes(client, products):
    make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    set_cart(client, {products["A"]: 1, products["B"]: 1})
    Product.objects.filter(pk=products["A"].pk).update(price=D("30.00"))
    _, priced = cart_page(client)
    assert (priced.subtotal, priced.discount_total, priced.total) == (D("35.00"), D("3.50"), D("31.50"))


# --- offers on the product page ------------------------------------------------------------------


def test_product_page_shows_live_offer_with_prices(client, products):
    campaign = make_campaign("Pasta night", "percent", "10", [products["A"], products["B"]])
    for sku in ("A", "B"):  # the offer shows on every product of the bundle
        response = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": sku}))
        html = response.content.decode()
        assert "Frequently bought together" in html
        assert "Pasta" in html and "Sauce" in html
        assert '<s class="regular-total">$25.00</s>' in html
        assert '<strong class="bundle-price">$22.50</strong>' in html
        assert '<span class="saving-amount">$2.50</span>' in html
        assert reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}) in html
        assert "csrfmiddlewaretoken" in html
    offers = response.context["offers"]
    assert [(o.campaign_id, o.regular_total, o.bundle_price, o.saving) for o in offers] == [
        (campaign.pk, D("25.00"), D("22.50"), D("2.50"))]


def _hide(kind, products, campaign):
    """Make a live campaign not live in one of the ways the storefront must respect."""
    now = timezone.now()
    if kind == "expired":
        campaign.starts_at, campaign.ends_at = now - timedelta(days=3), now - timedelta(seconds=1)
        campaign.save()
    elif kind == "not_started":
        campaign.starts_at, campaign.ends_at = now + timedelta(hours=1), now + timedelta(days=3)
        campaign.save()
    elif kind == "paused":
        campaign.status = BundleCampaign.PAUSED
        campaign.save()
    elif kind == "draft":
        campaign.status = BundleCampaign.DRAFT
        campaign.save()
    elif kind == "item_inactive":
        Product.objects.filter(pk=products["B"].pk).update(active=False)
    elif kind == "item_out_of_stock":
        Product.objects.filter(pk=products["B"].pk).update(stock=0)
    elif kind == "item_unpriced":
        Product.objects.filter(pk=products["B"].pk).update(price=D("0.00"))


HIDDEN = ["expired", "not_started", "paused", "draft", "item_inactive", "item_out_of_stock", "item_unpriced"]


@pytest.mark.faults
@pytest.mark.parametrize("kind", HIDDEN)
def test_campaign_that_is_not_live_never_shows_nor_discounts(client, products, kind):
    campaign = make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    _hide(kind, products, campaign)

    response = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "A"}))
    assert response.status_code == 200
    assert response.context["offers"] == []
    assert "Frequently bought together" not in response.content.decode()
    assert offers_for_product(products["A"]) == []

    set_cart(client, {products["A"]: 1, products["B"]: 1})
    _, priced = cart_page(client)
    assert priced.bundles == ()
    assert priced.discount_total == D("0.00")

    before = OfferEvent.objects.count()
    cart_before = dict(client.session[SESSION_KEY])
    response = client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}), follow=True)
    assert [str(m) for m in response.context["messages"]] == ["This bundle offer is no longer available, so nothing was added to your cart."]
    assert client.session[SESSION_KEY] == cart_before
    assert OfferEvent.objects.count() == before


@pytest.mark.faults
def test_campaign_ending_exactly_now_is_not_live(products):
    now = timezone.now()
    make_campaign("AB", "percent", "10", [products["A"], products["B"]],
                  starts_at=now - timedelta(days=1), ends_at=now)
    assert offers_for_product(products["A"], now=now) == []
    assert len(offers_for_product(products["A"], now=now - timedelta(seconds=1))) == 1


def test_offers_sorted_by_saving_and_fixed_price_above_regular_hidden(products):
    small = make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    big = make_campaign("AC", "amount", "5.00", [products["A"], products["C"]])
    make_campaign("AD", "fixed_price", "40.00", [products["A"], products["D"]])  # above 23.00: no saving
    offers = offers_for_product(products["A"])
    assert [(o.campaign_id, o.saving) for o in offers] == [(big.pk, D("5.00")), (small.pk, D("2.50"))]


def test_offers_for_product_uses_four_queries_whatever_the_number_of_offers(products, django_assert_num_queries):
    others = [p for sku, p in products.items() if sku != "A"]
    for i, other in enumerate(others):
        make_campaign(f"A+{other.sku}", "percent", str(5 + i), [products["A"], other, others[(i + 1) % len(others)]])
    with django_assert_num_queries(4):  # campaign ids, live campaigns, their items, their store scores
        offers = offers_for_product(products["A"], store_id="367")
        names = [item.product.name for offer in offers for item in offer.items]
    assert len(offers) == len(others)
    assert len(names) == 3 * len(others)
    lone = Product.objects.create(sku="LONE", name="In no bundle", price=D("1.00"), stock=5)
    with django_assert_num_queries(1):  # most products: one index lookup, nothing else
        assert offers_for_product(lone) == []


# --- bundle add, single add, events ----------------------------------------------------------------


def test_add_bundle_to_cart_adds_items_and_records_one_event(client, products, django_capture_on_commit_callbacks):
    campaign = make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    with django_capture_on_commit_callbacks(execute=True):  # the event goes through the outbox after commit
        response = client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}))
    assert response.status_code == 302 and response.url == reverse("shop_bundles:cart")
    assert client.session[SESSION_KEY] == {str(products["A"].pk): 1, str(products["B"].pk): 1}
    event = OfferEvent.objects.get()
    assert (event.kind, event.campaign_id, event.quantity) == (OfferEvent.ADD_TO_CART, campaign.pk, 1)
    assert event.session_key == client.session.session_key
    _, priced = cart_page(client)
    assert priced.total == D("22.50")


@pytest.mark.faults
def test_bundle_add_requires_csrf(products):
    campaign = make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    strict = Client(enforce_csrf_checks=True)
    response = strict.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}))
    assert response.status_code == 403
    assert not OfferEvent.objects.exists()


def test_get_cannot_change_the_cart(client, products):
    response = client.get(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}))
    assert response.status_code == 405
    assert SESSION_KEY not in client.session


def test_out_of_stock_or_inactive_product_cannot_be_added(client, products):
    Product.objects.filter(pk=products["A"].pk).update(stock=0)
    Product.objects.filter(pk=products["B"].pk).update(active=False)
    add(client, products["A"])
    assert add(client, products["B"]).status_code == 404
    assert not client.session.get(SESSION_KEY)
    assert client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "B"})).status_code == 404


def test_a_product_priced_0_00_is_not_listed_not_addable_and_not_bought(client, products):
    """Like "Pretzels 16 OZ" (885430) at 0.00 in the Complete Journey data: active, in stock, not for sale."""
    free = Product.objects.create(sku="885430", name="Pretzels 16 OZ", price=D("0.00"), stock=100,
                                  department="GROCERY")
    skus = [p.sku for p in client.get(reverse("shop_bundles:product_list")).context["page"].object_list]
    assert "885430" not in skus and "A" in skus
    page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "885430"}), follow=True)
    assert "Pretzels 16 OZ has no price yet and is not for sale." in page.content.decode()
    response = client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "885430"}), {"quantity": 1}, follow=True)
    assert "Pretzels 16 OZ has no price yet and is not for sale." in response.content.decode()
    assert not client.session.get(SESSION_KEY)
    # A product repriced to 0.00 while in a cart: the cart cannot check out, the checkout refuses it.
    set_cart(client, {products["A"]: 1, free: 1})
    response, priced = cart_page(client)
    assert response.context["can_checkout"] is False
    response = client.post(reverse("shop_bundles:checkout"), follow=True)
    assert "Pretzels 16 OZ has no price yet and is not for sale." in response.content.decode()
    from shop_bundles.models import Order

    assert not Order.objects.exists()


def test_a_product_priced_0_00_is_never_part_of_an_offer(products):
    from django.core.exceptions import ValidationError

    from shop_bundles.services.campaigns import suggestion_approve
    from tests.shop.test_campaigns import make_staff, make_suggestion

    campaign = make_campaign("AB", "percent", "10", [products["A"], products["B"]])
    assert [o.campaign.pk for o in offers_for_product(products["A"])] == [campaign.pk]
    Product.objects.filter(pk=products["B"].pk).update(price=D("0.00"))
    assert offers_for_product(products["A"]) == []
    products["B"].refresh_from_db()
    assert products["B"].available is False
    suggestion = make_suggestion([products["A"], products["B"]])
    with pytest.raises(ValidationError, match="has no price"):
        suggestion_approve(suggestion=suggestion, user=make_staff("sam", "approve_bundlesuggestion"))


# --- product list -----------------------------------------------------------------------------------


def test_product_list_shows_only_active_products_with_search_and_department(client, products):
    Product.objects.filter(pk=products["C"].pk).update(active=False)
    response = client.get(reverse("shop_bundles:product_list"))
    skus = [p.sku for p in response.context["page"].object_list]
    assert "C" not in skus and set(skus) == set(CATALOGUE) - {"C"}

    response = client.get(reverse("shop_bundles:product_list"), {"q": "sauce"})
    assert [p.sku for p in response.context["page"].object_list] == ["B"]
    response = client.get(reverse("shop_bundles:product_list"), {"q": "E"})
    assert "E" in [p.sku for p in response.context["page"].object_list]

    response = client.get(reverse("shop_bundles:product_list"), {"department": "DAIRY"})
    assert [p.sku for p in response.context["page"].object_list] == ["H"]
    assert list(response.context["departments"]) == ["DAIRY", "GROCERY"]


def test_product_list_paginates(client):
    Product.objects.bulk_create([Product(sku=f"P{i:03d}", name=f"Item {i:03d}", price=D("1.00"), stock=1)
                                 for i in range(30)])
    first = client.get(reverse("shop_bundles:product_list"))
    assert len(first.context["page"].object_list) == 24
    second = client.get(reverse("shop_bundles:product_list"), {"page": 2, "q": "Item"})
    assert [p.sku for p in second.context["page"].object_list] == [f"P{i:03d}" for i in range(24, 30)]
    assert "q=Item&amp;page=1" in second.content.decode()
