"""The whole path: staff approve in the admin → campaign → offer on the product page →
add bundle to cart → discounted total → checkout → order event recorded."""
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from shop_bundles.models import (
    BundleCampaign,
    BundleSuggestion,
    BundleSuggestionItem,
    OfferEvent,
    Order,
    OrderEvent,
    Product,
    StaffAction,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def suggestion():
    milk = Product.objects.create(sku="1082185", name="Fluid milk 1 gal", department="GROCERY",
                                  category="FLUID MILK PRODUCTS", price=Decimal("2.99"), stock=50)
    bread = Product.objects.create(sku="995242", name="Mainstream white bread", department="GROCERY",
                                   category="BAKED BREAD/BUNS/ROLLS", price=Decimal("1.89"), stock=50)
    s = BundleSuggestion.objects.create(anchor=milk, signature="1082185+995242", score=0.91, co_purchase_count=412,
                                        support=0.0026, confidence=0.18, lift=3.1, expected_attach_rate=0.18,
                                        suggested_discount_percent=Decimal("10.00"),
                                        reasons="Bought together in 412 baskets")
    BundleSuggestionItem.objects.create(suggestion=s, product=milk, position=0)
    BundleSuggestionItem.objects.create(suggestion=s, product=bread, position=1)
    return s


@pytest.fixture
def approver(client):
    user = User.objects.create_user("reviewer", password="pw-For-tests-1", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="shop_bundles",
        codename__in=["approve_bundlesuggestion", "view_bundlesuggestion", "change_bundlesuggestion"]))
    return user


def test_approve_to_order_event(client, approver, suggestion, django_capture_on_commit_callbacks):
    # Staff approve the suggestion from the review queue with the bulk action.
    client.force_login(approver)
    response = client.post(reverse("admin:shop_bundles_bundlesuggestion_changelist"),
                           {"action": "approve_selected", "_selected_action": [suggestion.pk]}, follow=True)
    assert response.status_code == 200
    campaign = BundleCampaign.objects.get(suggestion=suggestion)
    assert campaign.status == BundleCampaign.ACTIVE
    assert campaign.discount_type == BundleCampaign.PERCENT and campaign.discount_value == Decimal("10.00")
    assert campaign.approved_by == approver
    assert sorted(campaign.items.values_list("product__sku", flat=True)) == ["1082185", "995242"]
    assert StaffAction.objects.filter(user=approver, action="approve", suggestion=suggestion).exists()
    suggestion.refresh_from_db()
    assert suggestion.status == BundleSuggestion.APPROVED
    client.logout()

    # A shopper sees the offer on the anchor's product page: 2.99 + 1.89 = 4.88, 10 % off = 0.488 → 0.49.
    page = client.get(reverse("shop_bundles:product_detail", kwargs={"sku": "1082185"}))
    html = page.content.decode()
    assert "Frequently bought together" in html
    assert "4.88" in html and "4.39" in html and "0.49" in html

    # Add the bundle (the request's price is ignored), view the cart: the total is discounted.
    client.post(reverse("shop_bundles:bundle_add", kwargs={"campaign_id": campaign.pk}),
                {"quantity": "1", "price": "0.01"})
    cart = client.get(reverse("shop_bundles:cart"))
    priced = cart.context["priced"]
    assert (priced.subtotal, priced.discount_total, priced.total) == (Decimal("4.88"), Decimal("0.49"), Decimal("4.39"))
    assert "4.39" in cart.content.decode()

    # Checkout: one order with the bundle discount; on commit the event task records it.
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("shop_bundles:checkout"), {"customer_id": ""})
    assert response.status_code == 302
    assert len(callbacks) >= 1
    order = Order.objects.get(source=Order.SOURCE_STOREFRONT)
    assert (order.subtotal, order.discount_total, order.total) == (Decimal("4.88"), Decimal("0.49"), Decimal("4.39"))
    assert list(order.campaigns.all()) == [campaign]
    assert sum(line.discount for line in order.lines.all()) == Decimal("0.49")
    assert set(order.lines.values_list("campaign_id", flat=True)) == {campaign.pk}

    event = OrderEvent.objects.get(order=order)
    assert event.revenue == Decimal("4.39") and event.bundle_discount == Decimal("0.49") and event.bundles_used == 1
    assert OfferEvent.objects.filter(kind=OfferEvent.PURCHASE, campaign=campaign, order=order).count() == 1
    assert Product.objects.get(sku="1082185").stock == 49
