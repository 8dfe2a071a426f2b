"""The shopper's store: offers on a product page ordered by the model's store scores, and orders that record it."""
from decimal import Decimal as D

import pytest
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import OfferStoreScore, Order
from shop_bundles.selectors.offers import offers_for_product
from shop_bundles.storefront.stores import STORE_SESSION_KEY, known_stores
from tests.shop.test_storefront import make_campaign, products  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def scored(products):  # noqa: F811
    """Three no-discount offers on Pasta's page (A+B, A+C, A+D), one 10 % offer (A+F), one not scored (A+E).

    Chain-wide attach rates (bundle baskets / 500 Pasta baskets) rank B > D > C; store 367's own rates
    (of 50 Pasta baskets, shrunk with 10 pseudo-baskets towards the chain-wide rate) rank C > B; store 367
    has no row for A+D (it falls back to the chain-wide 0.16). Orders of stores 367 (3) and 12 (1) make
    them known stores.
    """
    ab = make_campaign("AB", "percent", "0", [products["A"], products["B"]])
    ac = make_campaign("AC", "percent", "0", [products["A"], products["C"]])
    ad = make_campaign("AD", "percent", "0", [products["A"], products["D"]])
    ae = make_campaign("AE", "percent", "0", [products["A"], products["E"]])
    af = make_campaign("AF", "percent", "10", [products["A"], products["F"]])
    pasta = products["A"]
    chain = {ab: 120, ac: 40, ad: 80, af: 5}
    rows = [(ab, "", 0.9, 120), (ac, "", 0.5, 40), (ad, "", 0.7, 80), (af, "", 0.1, 5),
            (ab, "367", 0.2, 1), (ac, "367", 0.8, 9), (af, "367", 0.3, 0)]
    OfferStoreScore.objects.bulk_create([
        OfferStoreScore(campaign=c, product=pasta, store_id=s, score=score, co_purchase_count=n,
                        anchor_baskets=50 if s else 500,
                        attach_rate=(n + 10 * chain[c] / 500) / (50 + 10) if s else n / 500)
        for c, s, score, n in rows])
    for i, store in enumerate(["367", "367", "12", "367"]):
        Order.objects.create(external_id=f"h{i}", placed_at=timezone.now(), store_id=store)
    Order.objects.create(external_id="sim", placed_at=timezone.now(), store_id="999", source=Order.SOURCE_SIMULATED)
    return {"AB": ab, "AC": ac, "AD": ad, "AE": ae, "AF": af}


def test_offers_are_ordered_by_the_store_attach_rate_else_the_chain_one(products, scored):  # noqa: F811
    pasta = products["A"]
    ids = {c.pk: name for name, c in scored.items()}
    # Money-saving offers first; then by attach rate; the unscored offer last.
    chain = offers_for_product(pasta)
    assert [ids[o.campaign_id] for o in chain] == ["AF", "AB", "AD", "AC", "AE"]
    assert [o.attach_rate for o in chain] == [0.01, 0.24, 0.16, 0.08, None]
    assert [o.score for o in chain] == [0.1, 0.9, 0.7, 0.5, None]  # the model's chain-wide scores
    assert {o.store_id for o in chain} == {""} and all(o.store_co_purchase_count is None for o in chain)
    # Store 367: its own rates (C (9 + 0.8) / 60 > B (1 + 2.4) / 60), the chain-wide 0.16 for A+D.
    store = offers_for_product(pasta, store_id="367")
    assert [(ids[o.campaign_id], o.attach_rate and round(o.attach_rate, 4), o.store_id, o.store_co_purchase_count)
            for o in store] == [
        ("AF", 0.0017, "367", 0), ("AC", 0.1633, "367", 9), ("AD", 0.16, "", None), ("AB", 0.0567, "367", 1),
        ("AE", None, "", None)]
    # A store without rows gets the chain-wide order.
    assert [o.campaign_id for o in offers_for_product(pasta, store_id="12")] == [o.campaign_id for o in chain]


def test_known_stores_come_from_the_order_history(scored):
    assert known_stores() == [("367", 3), ("12", 1)]  # busiest first; replay orders left out


def test_choosing_a_store_reorders_the_product_page_and_the_order_records_it(client, products, scored):  # noqa: F811
    page = client.get(reverse("shop_bundles:store_choose"))
    assert page.status_code == 200
    assert page.context["form"].fields["store"].choices == [
        ("", "No store (order offers for the whole shop)"), ("367", "Store 367"), ("12", "Store 12")]
    assert "orders)" not in page.content.decode()  # a shopper is not shown how many orders each store has
    pasta_url = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})

    chosen = client.post(reverse("shop_bundles:store_choose"), {"store": "367", "next": pasta_url})
    assert chosen.status_code == 302 and chosen["Location"] == pasta_url
    assert client.session[STORE_SESSION_KEY] == "367"
    response = client.get(pasta_url)
    html = response.content.decode()
    shown = [o.campaign.name for o in response.context["offers"]]
    assert shown == ["AF", "AC", "AD"]  # SHOP_BUNDLES_OFFERS_PER_PAGE = 3: A+C shows for store 367, A+B does not
    assert 'data-campaign="%d"' % scored["AC"].pk in html and 'data-campaign="%d"' % scored["AB"].pk not in html
    assert "Bought together in 9 baskets at your store" in html and "Store 367" in html

    # A store that is not in the history is refused; the choice stays.
    refused = client.post(reverse("shop_bundles:store_choose"), {"store": "999"}, follow=True)
    assert "Choose one of the listed stores." in refused.content.decode()
    assert client.session[STORE_SESSION_KEY] == "367"

    # The order placed with the store chosen carries it (training data for the store features).
    client.post(reverse("shop_bundles:cart_add", kwargs={"sku": "A"}), {"quantity": 1})
    client.post(reverse("shop_bundles:checkout"), {})
    order = Order.objects.get(source=Order.SOURCE_STOREFRONT)
    assert order.store_id == "367" and order.total == D("20.00")

    # "No store" clears the choice: the chain-wide order again.
    client.post(reverse("shop_bundles:store_choose"), {"store": ""})
    assert client.session[STORE_SESSION_KEY] == ""  # kept as a choice: no usual store replaces it
    shown = [o.campaign.name for o in client.get(pasta_url).context["offers"]]
    assert shown == ["AF", "AB", "AD"]


def test_campaign_admin_shows_the_store_ranking(client, django_user_model, scored):
    client.force_login(django_user_model.objects.create_superuser("boss", "b@example.com", "pw-For-tests-1"))
    html = client.get(reverse("admin:shop_bundles_bundlecampaign_change", args=[scored["AB"].pk])).content.decode()
    assert ("Chain-wide: attach rate 24.0% (120 of 500 baskets with the anchor hold the bundle), model score 0.900; "
            "1 stores with their own rate.") in html
    assert "<tr><td>367</td><td>5.7%</td><td>1</td><td>50</td><td>0.200</td></tr>" in html
    html = client.get(reverse("admin:shop_bundles_bundlecampaign_change", args=[scored["AE"].pk])).content.decode()
    assert "Not scored yet" in html


def test_the_page_shows_at_most_offers_per_page_and_records_impressions_for_those(client, products, scored,  # noqa: F811
                                                                                  settings):
    from shop_bundles.models import OfferEvent
    from shop_bundles.services.impression_buffer import impression_buffer_drain

    pasta_url = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})
    settings.SHOP_BUNDLES_OFFERS_PER_PAGE = 2
    assert [o.campaign.name for o in client.get(pasta_url).context["offers"]] == ["AF", "AB"]
    impression_buffer_drain()
    assert sorted(OfferEvent.objects.filter(kind="impression").values_list("campaign__name", flat=True)) == ["AB", "AF"]
    settings.SHOP_BUNDLES_OFFERS_PER_PAGE = None  # all of them
    assert len(client.get(pasta_url).context["offers"]) == 5


def test_rank_store_offers_needs_a_model_version():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="no active model version; train one first"):
        call_command("rank_store_offers", verbosity=0)
    with pytest.raises(CommandError, match="There is no model version 9."):
        call_command("rank_store_offers", "--model-version", "9", verbosity=0)


def test_offers_that_look_alike_are_shown_once_and_the_page_fills_up(client, products, scored):  # noqa: F811
    """Two SKUs of one name (B and a private-label B2 named like it): the page keeps the better offer."""
    from shop_bundles.models import Product

    twin = Product.objects.create(sku="B2", name=products["B"].name.upper(), price=D("4.50"), stock=100)
    ab2 = make_campaign("AB2", "percent", "0", [products["A"], twin])
    OfferStoreScore.objects.create(campaign=ab2, product=products["A"], store_id="", score=0.95,
                                   co_purchase_count=150, anchor_baskets=500, attach_rate=0.30)
    pasta_url = reverse("shop_bundles:product_detail", kwargs={"sku": "A"})
    # Chain-wide order AF, AB2 (0.30), AB (0.24), AD, AC, AE: AB looks like AB2 and gives its place to AD.
    assert [o.campaign.name for o in client.get(pasta_url).context["offers"]] == ["AF", "AB2", "AD"]
    assert [o.campaign.name for o in offers_for_product(products["A"])][:4] == ["AF", "AB2", "AB", "AD"]  # all kept
