"""Campaign windows in the configured TIME_ZONE across daylight-saving changes (issue 4, part 5).

A campaign discounts only while ``starts_at <= now < ends_at``. Windows are
entered as local wall-clock times of ``TIME_ZONE``; these tests put the
window's ends on either side of a DST change (Europe/Berlin: spring forward
2026-03-29 02:00 → 03:00, fall back 2026-10-25 03:00 → 02:00;
America/Chicago: 2026-03-08 and 2026-11-01) and price through the real cart
(``cart_price``) and checkout (``order_place``) one microsecond before,
at, and after each boundary.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal as D

import pytest
from django.test.utils import override_settings
from django.utils import timezone

from shop_bundles.models import BundleCampaign, BundleCampaignItem, Order, Product
from shop_bundles.services.campaigns import campaigns_expire, local_days_after, suggestion_approve
from shop_bundles.services.orders import order_place
from shop_bundles.storefront.cart import cart_price

from .test_campaigns import make_staff, make_suggestion

pytestmark = [pytest.mark.django_db, pytest.mark.faults]

TICK = timedelta(microseconds=1)
UTC = dt_timezone.utc


def local(*parts, fold: int = 0) -> datetime:
    """An aware datetime from a wall-clock time in the current TIME_ZONE."""
    return timezone.make_aware(datetime(*parts, fold=fold))


@pytest.fixture
def pair():
    """Apples 20.00 and Bread 5.00 (M1: 10 % off the pair is 2.50), plenty in stock."""
    return (Product.objects.create(sku="A", name="Apples", price=D("20.00"), stock=1000),
            Product.objects.create(sku="B", name="Bread", price=D("5.00"), stock=1000))


def campaign_between(products, starts_at, ends_at) -> BundleCampaign:
    """An active 10 % campaign over ``products`` with the given window."""
    campaign = BundleCampaign.objects.create(name="A+B", discount_type="percent", discount_value=D("10"),
                                             starts_at=starts_at, ends_at=ends_at)
    for position, product in enumerate(products):
        BundleCampaignItem.objects.create(campaign=campaign, product=product, position=position)
    return campaign


def discount_at(products, moment) -> tuple[D, D]:
    """(cart discount, checkout discount) of one A + one B at ``moment``."""
    quantities = {p.pk: 1 for p in products}
    priced = cart_price(quantities, now=moment)
    order = order_place(cart=quantities, session_key="dst", now=moment)
    assert order.placed_at == moment
    assert priced.total == order.total == D("25.00") - order.discount_total
    return priced.discount_total, order.discount_total


def assert_window(products, starts_at, ends_at):
    """No discount before the start and from the end on; 2.50 (M1) at the start and just before the end.

    The ticks are added in UTC: arithmetic on a zoneinfo datetime is wall-clock arithmetic and drops
    ``fold``, so ``local end + 1 µs`` could land an hour earlier (or in a time that does not exist)."""
    starts_at, ends_at = starts_at.astimezone(UTC), ends_at.astimezone(UTC)
    for moment, expected in ((starts_at - TICK, D("0.00")), (starts_at, D("2.50")), (ends_at - TICK, D("2.50")),
                             (ends_at, D("0.00")), (ends_at + TICK, D("0.00"))):
        assert discount_at(products, moment) == (expected, expected), (moment.isoformat(), expected)


@override_settings(TIME_ZONE="Europe/Berlin")
def test_window_across_spring_forward_in_berlin(pair):
    starts_at, ends_at = local(2026, 3, 28, 0, 0), local(2026, 3, 30, 0, 0)
    assert (starts_at.astimezone(UTC), ends_at.astimezone(UTC)) == (
        datetime(2026, 3, 27, 23, 0, tzinfo=UTC), datetime(2026, 3, 29, 22, 0, tzinfo=UTC))  # +01 → +02
    campaign_between(pair, starts_at, ends_at)
    assert_window(pair, starts_at, ends_at)
    # The hour that does not exist on the local clock is inside the window and discounts as usual.
    assert discount_at(pair, datetime(2026, 3, 29, 1, 30, tzinfo=UTC)) == (D("2.50"), D("2.50"))
    # One hour after the end in UTC terms is what a 24 h-per-day computation would have used: no discount.
    assert discount_at(pair, ends_at.astimezone(UTC) + timedelta(minutes=59)) == (D("0.00"), D("0.00"))
    assert Order.objects.filter(discount_total__gt=0).count() == 3


@override_settings(TIME_ZONE="Europe/Berlin")
def test_window_ending_in_the_repeated_hour_of_fall_back_in_berlin(pair):
    # 02:30 happens twice on 2026-10-25; fold=1 is the second time (CET, +01:00) = 01:30 UTC.
    starts_at, ends_at = local(2026, 10, 24, 12, 0), local(2026, 10, 25, 2, 30, fold=1)
    assert ends_at.astimezone(UTC) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    campaign_between(pair, starts_at, ends_at)
    assert_window(pair, starts_at, ends_at)
    first_0230 = local(2026, 10, 25, 2, 30, fold=0)  # the first 02:30 (CEST), an hour before the end
    assert discount_at(pair, first_0230) == (D("2.50"), D("2.50"))


@override_settings(TIME_ZONE="America/Chicago")
def test_windows_starting_and_ending_on_dst_days_in_chicago(pair):
    # Starts on the spring-forward day after the change, ends on the fall-back day before it.
    starts_at, ends_at = local(2026, 3, 8, 3, 0), local(2026, 11, 1, 1, 30, fold=0)
    assert (starts_at.astimezone(UTC), ends_at.astimezone(UTC)) == (
        datetime(2026, 3, 8, 8, 0, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC))  # CDT both ends
    campaign_between(pair, starts_at, ends_at)
    assert_window(pair, starts_at, ends_at)
    second_0130 = local(2026, 11, 1, 1, 30, fold=1)  # the repeated 01:30 (CST) is after the end
    assert discount_at(pair, second_0130) == (D("0.00"), D("0.00"))


@override_settings(TIME_ZONE="Europe/Berlin", SHOP_BUNDLES_CAMPAIGN_DAYS=14)
def test_default_campaign_length_counts_local_days_across_the_change(pair):
    approver = make_staff("ute", "approve_bundlesuggestion")
    starts_at = local(2026, 3, 20, 10, 0)  # CET
    campaign = suggestion_approve(suggestion=make_suggestion(list(pair)), user=approver, starts_at=starts_at)
    assert timezone.localtime(campaign.ends_at).replace(tzinfo=None) == datetime(2026, 4, 3, 10, 0)  # CEST
    assert campaign.ends_at.astimezone(UTC) - campaign.starts_at.astimezone(UTC) == timedelta(days=14, hours=-1)
    assert_window(pair, campaign.starts_at, campaign.ends_at)

    # The expiry task ends it exactly at the local end time, not an hour later.
    assert campaigns_expire(now=campaign.ends_at - TICK) == 0
    assert campaigns_expire(now=campaign.ends_at) == 1
    campaign.refresh_from_db()
    assert campaign.status == BundleCampaign.EXPIRED


@override_settings(TIME_ZONE="Europe/Berlin")
def test_local_days_after_keeps_the_wall_clock():
    def utc(moment):
        return moment.astimezone(UTC)

    # 02:30 does not exist on 2026-03-29: read with the old offset, it is 03:30 on the new clock.
    assert utc(local_days_after(local(2026, 3, 28, 2, 30), 1)) == utc(local(2026, 3, 29, 3, 30))
    assert utc(local_days_after(local(2026, 10, 24, 10, 0), 1)) - utc(local(2026, 10, 24, 10, 0)) == timedelta(hours=25)
    assert utc(local_days_after(local(2026, 7, 1, 10, 0), 28)) == utc(local(2026, 7, 29, 10, 0))
