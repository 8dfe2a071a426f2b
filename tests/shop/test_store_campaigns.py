"""Store-specific suggestions and campaigns limited to stores: review queue, approval, product page, cart, checkout."""
from decimal import Decimal as D

import pytest
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import BundleCampaignStore, BundleSuggestion, Order, StaffAction
from shop_bundles.selectors.offers import live_campaigns, offers_for_product
from shop_bundles.services.campaigns import suggestion_approve
from shop_bundles.storefront.cart import cart_price
from shop_bundles.storefront.stores import STORE_SESSION_KEY
from tests.shop.test_admin import staff_client  # noqa: F401 - fixture
from tests.shop.test_campaigns import make_product, make_staff, make_suggestion
from tests.shop.test_storefront import make_campaign, products, set_cart  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

EVIDENCE = [{"store_id": "367", "co_purchase_count": 44, "anchor_baskets": 60, "shoppers": 9, "attach_rate": 0.61,
             "chain_attach_rate": 0.12, "lift": 4.2},
            {"store_id": "412", "co_purchase_count": 12, "anchor_baskets": 30, "shoppers": 5, "attach_rate": 0.33,
             "chain_attach_rate": 0.12, "lift": 2.1}]


def choose_store(client, store):
    session = client.session
    session[STORE_SESSION_KEY] = store
    session.save()


@pytest.fixture
def limited(products):  # noqa: F811
    """Pasta + Sauce at 10 % off only in store 367; Pasta + Parmesan (0 %) in every store."""
    ab = make_campaign("Pasta + Sauce, store 367", "percent", "10", [products["A"], products["B"]])
    BundleCampaignStore.objects.create(campaign=ab, store_id="367")
    ac = make_campaign("Pasta + Parmesan", "percent", "0", [products["A"], products["C"]])
    Order.objects.create(external_id="h1", placed_at=timezone.now(), store_id="367")
    Order.objects.create(external_id="h2", placed_at=timezone.now(), store_id="12")
    return ab, ac


def test_a_store_limited_campaign_is_live_only_for_shoppers_in_its_stores(products, limited):  # noqa: F811
    ab, ac = limited
    pasta = products["A"]
    assert [o.campaign_id for o in offers_for_product(pasta, store_id="367")] == [ab.pk, ac.pk]
    assert [o.campaign_id for o in offers_for_product(pasta, store_id="12")] == [ac.pk]
    assert [o.campaign_id for o in offers_for_product(pasta)] == [ac.pk]  # no store chosen
    assert set(live_campaigns()) == {ab, ac}  # staff views: no store filter


def test_cart_and_checkout_price_a_store_limited_bundle_only_in_its_store(client, products, limited):  # noqa: F811
    quantities = {products["A"].pk: 1, products["B"].pk: 1}
    assert cart_price(quantities, store_id="367").discount_total == D("2.50")  # 10 % of 25.00
    assert cart_price(quantities, store_id="12").discount_total == D("0.00")
    assert cart_price(quantities, store_id="").discount_total == D("0.00")

    set_cart(client, {products["A"]: 1, products["B"]: 1})
    response = client.get(reverse("shop_bundles:cart"))
    assert response.context["priced"].discount_total == D("0.00")
    assert "Bundle discount" not in response.content.decode()  # no "−$0.00" line without a bundle saving
    choose_store(client, "367")
    response = client.get(reverse("shop_bundles:cart"))
    assert response.context["priced"].discount_total == D("2.50")
    assert '<dt>Bundle discount</dt><dd id="discount-total">−$2.50</dd>' in response.content.decode()
    client.post(reverse("shop_bundles:checkout"), follow=True)
    order = Order.objects.get(source=Order.SOURCE_STOREFRONT)
    assert (order.store_id, order.discount_total, order.total) == ("367", D("2.50"), D("22.50"))

    # The same cart checked out in store 12 pays the shelf price.
    choose_store(client, "12")
    set_cart(client, {products["A"]: 1, products["B"]: 1})
    client.post(reverse("shop_bundles:checkout"), follow=True)
    order = Order.objects.filter(source=Order.SOURCE_STOREFRONT, store_id="12").get()
    assert (order.discount_total, order.total) == (D("0.00"), D("25.00"))


def test_adding_a_store_limited_bundle_outside_its_stores_is_refused(client, products, limited):  # noqa: F811
    ab, _ = limited
    url = reverse("shop_bundles:bundle_add", kwargs={"campaign_id": ab.pk})
    refused = client.post(url, {"quantity": 1}, follow=True)
    assert [str(m) for m in refused.context["messages"]] == ["This bundle offer is no longer available, so nothing was added to your cart."]
    assert not client.session.get("shop_bundles_cart")
    choose_store(client, "367")
    assert client.post(url, {"quantity": 1}).status_code == 302


def test_approving_a_store_specific_suggestion_limits_the_campaign_to_its_stores():
    approver = make_staff("bob", "approve_bundlesuggestion")
    a, b = make_product("A", "4.00", name="Crackers"), make_product("B", "2.00", name="Soup")
    suggestion = make_suggestion([a, b])
    BundleSuggestion.objects.filter(pk=suggestion.pk).update(store_ids=["367", "412"], store_evidence=EVIDENCE)
    suggestion.refresh_from_db()
    campaign = suggestion_approve(suggestion=suggestion, user=approver)
    assert sorted(campaign.store_limits.values_list("store_id", flat=True)) == ["367", "412"]
    assert StaffAction.objects.get(action="approve", campaign=campaign).detail.endswith("only in store(s) 367, 412")

    # Staff may widen a store-specific suggestion to every store.
    c, d = make_product("C", "3.00"), make_product("D", "1.00")
    other = make_suggestion([c, d])
    BundleSuggestion.objects.filter(pk=other.pk).update(store_ids=["367"])
    other.refresh_from_db()
    assert not suggestion_approve(suggestion=other, user=approver, store_ids=[]).store_limits.exists()


def test_review_queue_shows_the_scope_filters_it_and_lists_each_stores_evidence(staff_client):  # noqa: F811
    a, b = make_product("A", "4.00", name="Crackers"), make_product("B", "2.00", name="Soup")
    c, d = make_product("C", "3.00", name="Tea"), make_product("D", "1.00", name="Milk")
    store_specific = make_suggestion([a, b], score=0.4)
    BundleSuggestion.objects.filter(pk=store_specific.pk).update(store_ids=["367", "412"], store_evidence=EVIDENCE)
    chain = make_suggestion([c, d], score=0.9)
    changelist = reverse("admin:shop_bundles_bundlesuggestion_changelist")
    html = staff_client.get(changelist).content.decode()
    assert "2 stores: 367, 412" in html and "all stores" in html
    shown = staff_client.get(changelist, {"scope": "store"}).context["cl"].result_list
    assert [s.pk for s in shown] == [store_specific.pk]
    assert [s.pk for s in staff_client.get(changelist, {"scope": "chain"}).context["cl"].result_list] == [chain.pk]
    detail = staff_client.get(reverse("admin:shop_bundles_bundlesuggestion_change", args=[store_specific.pk]))
    text = detail.content.decode()
    assert "<td>367</td><td>44</td><td>9</td><td>60</td><td>61.0%</td><td>12.0%</td><td>4.2</td>" in text
    assert "only to shoppers who chose one of these stores" in text


def test_editing_a_campaigns_stores_in_the_admin_is_recorded(staff_client, products):  # noqa: F811
    campaign = make_campaign("Pasta + Sauce", "percent", "10", [products["A"], products["B"]])
    url = reverse("admin:shop_bundles_bundlecampaign_change", args=[campaign.pk])
    page = staff_client.get(url)
    assert page.status_code == 200 and "Only in these stores (none: every store)" in page.content.decode()
    data = {"name": campaign.name, "status": "active", "status_reason": "", "discount_type": "percent",
            "discount_value": "10", "starts_at_0": timezone.localtime(campaign.starts_at).strftime("%Y-%m-%d"),
            "starts_at_1": timezone.localtime(campaign.starts_at).strftime("%H:%M:%S"), "ends_at_0": "", "ends_at_1": "",
            "items-TOTAL_FORMS": "2", "items-INITIAL_FORMS": "2", "items-MIN_NUM_FORMS": "0",
            "items-MAX_NUM_FORMS": "1000", "store_limits-TOTAL_FORMS": "1", "store_limits-INITIAL_FORMS": "0",
            "store_limits-MIN_NUM_FORMS": "0", "store_limits-MAX_NUM_FORMS": "1000",
            "store_limits-0-store_id": "367", "store_limits-0-campaign": campaign.pk}
    for i, it in enumerate(campaign.items.order_by("position")):
        data.update({f"items-{i}-id": it.pk, f"items-{i}-campaign": campaign.pk, f"items-{i}-product": it.product_id,
                     f"items-{i}-quantity": 1, f"items-{i}-position": i})
    # Store 367 has no order yet: shoppers cannot choose it, so the limit would show the offer to nobody.
    html = staff_client.post(url, data).content.decode()
    assert ("No order of the history was placed in store &#x27;367&#x27;, and shoppers can only choose such "
            "stores, so the campaign would be shown to nobody.") in html
    assert not campaign.store_limits.exists()
    Order.objects.create(external_id="h1", placed_at=timezone.now(), store_id="367")
    response = staff_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert list(campaign.store_limits.values_list("store_id", flat=True)) == ["367"]
    assert StaffAction.objects.get(action="edit", campaign=campaign, detail__startswith="stores:").detail == (
        "stores: 367 (was every store)")
    assert offers_for_product(products["A"]) == []
