"""Stock and price changes are events (issue 5 item 2): campaigns auto-pause and auto-resume.

``services.campaigns.campaigns_sync_product`` runs on commit after a product
save (``signals.product_saved_sync_campaigns``) and after a checkout that
sells a product's last unit (``services.orders.order_place``).
"""
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.urls import reverse
from django.utils import timezone

from shop_bundles.models import BundleCampaign, BundleCampaignItem, Order, Product, StaffAction
from shop_bundles.services.campaigns import campaign_pause, campaigns_sync_product
from shop_bundles.storefront.cart import SESSION_KEY

from .test_campaigns import make_staff

pytestmark = [pytest.mark.django_db, pytest.mark.faults]


@pytest.fixture
def pair():
    """Apples (A) 20.00 cost 10.00 and Bread (B) 5.00 cost 3.00, 10 units each."""
    a = Product.objects.create(sku="A", name="Apples", price=D("20.00"), cost=D("10.00"), stock=10)
    b = Product.objects.create(sku="B", name="Bread", price=D("5.00"), cost=D("3.00"), stock=10)
    return a, b


@pytest.fixture
def campaign(pair):
    """An active 10 % campaign over Apples + Bread (regular 25.00, bundle 22.50), started an hour ago."""
    campaign = BundleCampaign.objects.create(name="Apples + Bread", discount_type=BundleCampaign.PERCENT,
                                             discount_value=D("10.00"),
                                             starts_at=timezone.now() - timedelta(hours=1))
    for position, product in enumerate(pair):
        BundleCampaignItem.objects.create(campaign=campaign, product=product, position=position)
    return campaign


def product_html(client, sku):
    """The product page's HTML (asserting a 200)."""
    response = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": sku}))
    assert response.status_code == 200
    return response.content.decode()


def auto_actions(campaign):
    """``[(action, user_id, detail), ...]`` of the campaign's auto_* staff actions, oldest first."""
    return list(StaffAction.objects.filter(campaign=campaign, action__startswith="auto_")
                .order_by("created_at", "pk").values_list("action", "user_id", "detail"))


def test_out_of_stock_pauses_with_reason_and_hides_offer_then_restock_resumes(
        client, pair, campaign, django_capture_on_commit_callbacks):
    a, b = pair
    assert "Frequently bought together" in product_html(client, "A")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        b.stock = 0
        b.save()
    assert len(callbacks) == 1
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "auto: Bread (B) is out of stock")
    assert auto_actions(campaign) == [("auto_pause", None, "auto: Bread (B) is out of stock")]
    html = product_html(client, "A")
    assert "Frequently bought together" not in html
    assert reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}) not in html

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        b.stock = 5
        b.save()
    assert len(callbacks) == 1
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.ACTIVE, "")
    assert auto_actions(campaign) == [("auto_pause", None, "auto: Bread (B) is out of stock"),
                                      ("auto_resume", None, "resolved: Bread (B) is out of stock")]
    html = product_html(client, "A")
    assert "Frequently bought together" in html
    assert '<strong class="bundle-price">$22.50</strong>' in html


def test_inactive_product_pauses_and_sync_returns_counts(pair, campaign, django_capture_on_commit_callbacks):
    a, _ = pair
    with django_capture_on_commit_callbacks(execute=True):
        a.active = False
        a.save()
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "auto: Apples (A) is inactive")
    assert campaigns_sync_product(product=a) == {"paused": 0, "resumed": 0}  # idempotent
    Product.objects.filter(pk=a.pk).update(active=True)  # no signal: call the service directly
    assert campaigns_sync_product(product=a) == {"paused": 0, "resumed": 1}
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.ACTIVE, "")


def test_staff_paused_campaign_is_never_auto_resumed(pair, campaign, django_capture_on_commit_callbacks):
    _, b = pair
    manager = make_staff("maria", "manage_bundlecampaign")
    campaign_pause(campaign=campaign, user=manager, reason="supplier recall")

    with django_capture_on_commit_callbacks(execute=True):
        b.stock = 0
        b.save()
    with django_capture_on_commit_callbacks(execute=True):
        b.stock = 7
        b.save()
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "supplier recall")
    assert auto_actions(campaign) == []
    assert campaigns_sync_product(product=b) == {"paused": 0, "resumed": 0}


def test_cost_raise_breaking_margin_floor_pauses_and_fixing_it_resumes(
        client, pair, campaign, django_capture_on_commit_callbacks):
    a, _ = pair
    # Bundle 22.50; costs 10.00 + 3.00 = 13.00, floor 13.65: fine.
    with django_capture_on_commit_callbacks(execute=True):
        a.cost = D("19.00")  # cost 22.00, floor 22.00 * 1.05 = 23.10 > 22.50
        a.save()
    campaign.refresh_from_db()
    reason = "auto: Apples (A) breaks the margin floor: bundle price 22.50 is below cost 22.00 + 5% = 23.10"
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, reason)
    assert auto_actions(campaign) == [("auto_pause", None, reason)]
    assert "Frequently bought together" not in product_html(client, "A")

    with django_capture_on_commit_callbacks(execute=True):
        a.price = D("22.00")  # regular 27.00, bundle 24.30 >= 23.10
        a.save()
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.ACTIVE, "")
    assert [row[0] for row in auto_actions(campaign)] == ["auto_pause", "auto_resume"]


def test_unknown_cost_skips_the_margin_check(pair, campaign, django_capture_on_commit_callbacks):
    a, b = pair
    b.cost = None
    b.save()
    with django_capture_on_commit_callbacks(execute=True):
        a.cost = D("25.00")  # would break any floor, but Bread's cost is unknown
        a.save()
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.ACTIVE, "")


def test_product_in_no_campaign_schedules_nothing(pair, django_capture_on_commit_callbacks,
                                                 django_assert_num_queries):
    a, _ = pair
    with django_capture_on_commit_callbacks() as callbacks:
        with django_assert_num_queries(2):  # the UPDATE and one EXISTS
            a.stock = 0
            a.save()
    assert callbacks == []


def test_checkout_selling_the_last_unit_pauses_the_campaign(
        client, pair, campaign, django_capture_on_commit_callbacks):
    a, b = pair
    Product.objects.filter(pk=b.pk).update(stock=1)
    session = client.session
    session[SESSION_KEY] = {str(a.pk): 1, str(b.pk): 1}
    session.save()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("shop_bundles:checkout"), {"customer_id": ""})
    order = Order.objects.get()
    assert response.status_code == 302
    assert (order.subtotal, order.discount_total, order.total) == (D("25.00"), D("2.50"), D("22.50"))
    assert list(order.campaigns.values_list("pk", flat=True)) == [campaign.pk]
    assert dict(Product.objects.values_list("sku", "stock")) == {"A": 9, "B": 0}
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "auto: Bread (B) is out of stock")
    assert auto_actions(campaign) == [("auto_pause", None, "auto: Bread (B) is out of stock")]


def test_a_price_cut_below_a_fixed_discount_pauses_instead_of_giving_the_bundle_away(
        client, pair, django_capture_on_commit_callbacks):
    """{A 20.00, B 5.00} with 15.00 off, costs unknown (as in the Complete Journey import): A cut to 8.00
    would make the bundle free; the campaign pauses with the reason and resumes when A is 20.00 again."""
    a, b = pair
    Product.objects.filter(pk__in=[a.pk, b.pk]).update(cost=None)
    a.refresh_from_db()
    campaign = BundleCampaign.objects.create(name="A + B", discount_type=BundleCampaign.AMOUNT,
                                             discount_value=D("15.00"), starts_at=timezone.now() - timedelta(hours=1))
    for position, product in enumerate(pair):
        BundleCampaignItem.objects.create(campaign=campaign, product=product, position=position)
    with django_capture_on_commit_callbacks(execute=True):
        a.price = D("8.00")
        a.save()
    campaign.refresh_from_db()
    reason = "auto: The discount 15.00 exceeds the bundle price 13.00."
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, reason)
    assert "Frequently bought together" not in product_html(client, "A")
    with django_capture_on_commit_callbacks(execute=True):
        a.price = D("20.00")
        a.save()
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.ACTIVE, "")
    assert '<strong class="bundle-price">$10.00</strong>' in product_html(client, "A")
    # Had the pause not happened (prices changed without a save signal), the page hides the offer and the
    # cart forms no bundle: shelf prices, never a free bundle.
    Product.objects.filter(pk=a.pk).update(price=D("10.00"))
    assert "Frequently bought together" not in product_html(client, "A")
    session = client.session
    session[SESSION_KEY] = {str(a.pk): 1, str(b.pk): 1}
    session.save()
    priced = client.get(reverse("shop_bundles:cart")).context["priced"]
    assert (priced.discount_total, priced.total) == (D("0.00"), D("15.00"))


def test_staff_cannot_resume_a_campaign_the_margin_floor_paused(pair, campaign, django_capture_on_commit_callbacks):
    """QA (session 11): *Resume* put an auto-paused bundle back on sale below cost. Now it is refused with the reason."""
    from django.core.exceptions import ValidationError

    from shop_bundles.services.campaigns import campaign_resume

    a, _ = pair
    manager = make_staff("maria", "manage_bundlecampaign")
    with django_capture_on_commit_callbacks(execute=True):
        a.cost = D("19.00")  # bundle 22.50 below cost 22.00 + 5 % = 23.10
        a.save()
    with pytest.raises(ValidationError) as refused:
        campaign_resume(campaign=campaign, user=manager)
    assert refused.value.messages == [
        f"Campaign {campaign} cannot be resumed: Apples (A) breaks the margin floor: bundle price 22.50 is below "
        "cost 22.00 + 5% = 23.10. Change its discount or the products first."]
    campaign.refresh_from_db()
    assert campaign.status == BundleCampaign.PAUSED
    assert not StaffAction.objects.filter(campaign=campaign, action="resume").exists()


def test_staff_cannot_resume_a_campaign_with_an_out_of_stock_item_through_the_admin(
        client, pair, campaign, django_capture_on_commit_callbacks):
    _, b = pair
    manager = make_staff("maria", "manage_bundlecampaign", "view_bundlecampaign", "change_bundlecampaign")
    with django_capture_on_commit_callbacks(execute=True):
        b.stock = 0
        b.save()
    client.force_login(manager)
    response = client.post(reverse("admin:shop_bundles_bundlecampaign_changelist"),
                           {"action": "resume_selected", "_selected_action": [campaign.pk]}, follow=True)
    messages = [str(m) for m in response.context["messages"]]
    assert any("cannot be resumed: Bread (B) is out of stock" in m for m in messages), messages
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "auto: Bread (B) is out of stock")


def test_staff_pause_of_an_auto_paused_campaign_keeps_it_paused_when_the_item_is_back(
        pair, campaign, django_capture_on_commit_callbacks):
    _, b = pair
    manager = make_staff("maria", "manage_bundlecampaign")
    with django_capture_on_commit_callbacks(execute=True):
        b.stock = 0
        b.save()
    campaign_pause(campaign=campaign, user=manager, reason="bread supplier dropped")
    campaign.refresh_from_db()
    assert campaign.status_reason == "bread supplier dropped (was auto: Bread (B) is out of stock)"
    with django_capture_on_commit_callbacks(execute=True):
        b.stock = 7
        b.save()
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (
        BundleCampaign.PAUSED, "bread supplier dropped (was auto: Bread (B) is out of stock)")
    assert [row[0] for row in auto_actions(campaign)] == ["auto_pause"]
