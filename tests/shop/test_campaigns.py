"""Staff decisions: approving, rejecting, pausing and expiring bundle campaigns (services.campaigns)."""
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test.utils import override_settings
from django.utils import timezone

from shop_bundles.models import (
    BundleCampaign,
    BundleSuggestion,
    BundleSuggestionItem,
    ModelVersion,
    Product,
    StaffAction,
)
from shop_bundles.services.campaigns import (
    campaign_pause,
    campaign_resume,
    campaigns_expire,
    suggestion_approve,
    suggestion_reject,
)

pytestmark = [pytest.mark.django_db, pytest.mark.faults]


# --------------------------------------------------------------------------- helpers (also used by test_admin)


def make_product(sku: str, price: str, *, name: str | None = None, stock: int = 10, active: bool = True,
                 department: str = "GROCERY") -> Product:
    """A product with a shelf price (Decimal from text)."""
    return Product.objects.create(sku=sku, name=name or f"Product {sku}", price=Decimal(price), stock=stock,
                                  active=active, department=department)


def make_suggestion(products, *, score: float = 0.9, discount: str = "10.00", version=None) -> BundleSuggestion:
    """A pending suggestion over ``products`` (anchor first)."""
    suggestion = BundleSuggestion.objects.create(
        anchor=products[0], signature="+".join(sorted(p.sku for p in products)), score=score,
        co_purchase_count=42, support=0.01, confidence=0.3, lift=2.5, expected_attach_rate=0.12,
        suggested_discount_percent=Decimal(discount), reasons="bought together in 42 baskets", model_version=version)
    BundleSuggestionItem.objects.bulk_create(
        [BundleSuggestionItem(suggestion=suggestion, product=p, position=i) for i, p in enumerate(products)])
    return suggestion


def make_staff(username: str, *codenames: str):
    """A staff user holding the given shop_bundles permissions (fresh instance, no perm cache)."""
    User = get_user_model()
    user = User.objects.create_user(username=username, password="pw-" + username, is_staff=True)
    perms = Permission.objects.filter(content_type__app_label="shop_bundles", codename__in=codenames)
    assert perms.count() == len(codenames)
    user.user_permissions.add(*perms)
    return User.objects.get(pk=user.pk)


@pytest.fixture
def approver():
    """Staff user with the dedicated approve permission (and view rights for the admin)."""
    return make_staff("alice", "approve_bundlesuggestion", "view_bundlesuggestion", "manage_bundlecampaign",
                      "view_bundlecampaign")


@pytest.fixture
def bundle_ab():
    """Case M1's products: A 20.00 and B 5.00, as a pending suggestion with 10 % suggested."""
    a, b = make_product("A", "20.00", name="Apples"), make_product("B", "5.00", name="Bread")
    return make_suggestion([a, b], discount="10.00")


# --------------------------------------------------------------------------- approve


@override_settings(SHOP_BUNDLES_CAMPAIGN_DAYS=14)
def test_approve_creates_campaign_with_default_discount_dates_items_and_audit(bundle_ab, approver):
    before = timezone.now()
    campaign = suggestion_approve(suggestion=bundle_ab, user=approver)

    campaign.refresh_from_db()
    assert campaign.status == BundleCampaign.ACTIVE
    assert campaign.discount_type == BundleCampaign.PERCENT
    assert campaign.discount_value == Decimal("10.00")
    assert before <= campaign.starts_at <= timezone.now()
    assert campaign.ends_at - campaign.starts_at == timedelta(days=14)
    assert [(i.product.sku, i.quantity, i.position) for i in campaign.items.select_related("product")] == [
        ("A", 1, 0), ("B", 1, 1)]
    assert campaign.approved_by == approver and campaign.created_by == approver
    assert campaign.suggestion_id == bundle_ab.pk
    assert campaign.name == "Apples + Bread"

    bundle_ab.refresh_from_db()
    assert bundle_ab.status == BundleSuggestion.APPROVED
    assert bundle_ab.reviewed_by == approver and bundle_ab.reviewed_at is not None
    action = StaffAction.objects.get(action="approve")
    assert action.user == approver and action.campaign == campaign and action.suggestion == bundle_ab
    assert "25.00" in action.detail  # the regular bundle price is recorded


def test_approve_with_explicit_amount_and_window(bundle_ab, approver):
    starts = timezone.now() + timedelta(days=1)
    ends = starts + timedelta(days=3)
    campaign = suggestion_approve(suggestion=bundle_ab, user=approver, discount_type="amount",
                                  discount_value="2.5", starts_at=starts, ends_at=ends)
    assert (campaign.discount_type, campaign.discount_value) == ("amount", Decimal("2.50"))
    assert (campaign.starts_at, campaign.ends_at) == (starts, ends)


def test_m3_fixed_discount_above_bundle_price_is_refused(approver):
    c, d = make_product("C", "3.00"), make_product("D", "2.00")
    suggestion = make_suggestion([c, d])
    with pytest.raises(ValidationError) as err:
        suggestion_approve(suggestion=suggestion, user=approver, discount_type="amount",
                           discount_value=Decimal("6.00"))
    assert "the discount 6.00 exceeds the bundle price 5.00" in " ".join(err.value.messages).lower()
    suggestion.refresh_from_db()
    assert suggestion.status == BundleSuggestion.PENDING
    assert not BundleCampaign.objects.exists() and not StaffAction.objects.exists()


@pytest.mark.parametrize("kind,value,message", [
    ("amount", "25.00", "The discount 25.00 equals the bundle price 25.00: the bundle would be free."),
    ("percent", "100", "A 100 % discount gives the bundle away (bundle price 0.00); use less than 100 %."),
    ("fixed_price", "0", "The bundle price 0.00 must be above 0.00."),
    ("percent", "99.99", "The discount 99.99 gives the bundle away: the bundle price 25.00 would be 0.00 after "
                         "rounding to cents."),
    ("percent", "99.995", "A 100 % discount gives the bundle away (bundle price 0.00); use less than 100 %."),
])
def test_a_discount_that_gives_the_bundle_away_is_refused(bundle_ab, approver, kind, value, message):
    with pytest.raises(ValidationError) as err:
        suggestion_approve(suggestion=bundle_ab, user=approver, discount_type=kind, discount_value=value)
    assert err.value.messages == [message]
    assert not BundleCampaign.objects.exists()


@pytest.mark.parametrize("value", ["-5", "100.01", "150"])
def test_percent_outside_0_to_100_is_refused(bundle_ab, approver, value):
    with pytest.raises(ValidationError, match="between 0 and 100"):
        suggestion_approve(suggestion=bundle_ab, user=approver, discount_type="percent", discount_value=value)
    assert not BundleCampaign.objects.exists()


def test_fixed_price_must_be_below_regular_price(bundle_ab, approver):
    with pytest.raises(ValidationError, match="not below the regular price 25.00"):
        suggestion_approve(suggestion=bundle_ab, user=approver, discount_type="fixed_price", discount_value="25.00")
    campaign = suggestion_approve(suggestion=bundle_ab, user=approver, discount_type="fixed_price",
                                  discount_value="22.00")
    assert campaign.discount_value == Decimal("22.00")


def test_window_ending_before_start_is_refused(bundle_ab, approver):
    now = timezone.now()
    with pytest.raises(ValidationError, match="must end after it starts"):
        suggestion_approve(suggestion=bundle_ab, user=approver, starts_at=now, ends_at=now - timedelta(hours=1))


@pytest.mark.parametrize("change, reason", [({"active": False}, "is inactive"), ({"stock": 0}, "is out of stock")])
def test_unavailable_product_is_refused(approver, change, reason):
    a = make_product("A", "20.00")
    b = make_product("B", "5.00", **change)
    suggestion = make_suggestion([a, b])
    with pytest.raises(ValidationError) as err:
        suggestion_approve(suggestion=suggestion, user=approver)
    assert reason in " ".join(err.value.messages) and "(B)" in " ".join(err.value.messages)
    assert not BundleCampaign.objects.exists()


def test_product_repriced_below_cost_or_margin_floor_is_refused(approver, settings):
    settings.SHOP_BUNDLES_MIN_MARGIN_RATE = 0.05
    a = make_product("A", "20.00", name="Apples")
    b = make_product("B", "5.00", name="Bread")
    Product.objects.filter(pk=a.pk).update(cost=Decimal("21.00"))  # repriced below cost since the suggestion
    Product.objects.filter(pk=b.pk).update(cost=Decimal("3.00"))
    suggestion = make_suggestion([a, b])
    with pytest.raises(ValidationError) as err:
        suggestion_approve(suggestion=suggestion, user=approver)
    assert err.value.messages == ["Cannot approve: Apples (A) is priced 20.00, below its cost 21.00."]

    # Above cost again: 10 % off 25.00 = 22.50 clears the floor (18.00 + 3.00) * 1.05 = 22.05,
    # 20 % off = 20.00 does not and is refused with the floor in the message.
    Product.objects.filter(pk=a.pk).update(cost=Decimal("18.00"))
    with pytest.raises(ValidationError) as err:
        suggestion_approve(suggestion=suggestion, user=approver, discount_value="20")
    assert err.value.messages == ["Cannot approve: Apples (A) breaks the margin floor: bundle price 20.00 is below "
                                  "cost 21.00 + 5% = 22.05."]
    assert not BundleCampaign.objects.exists()
    suggestion.refresh_from_db()
    assert suggestion.status == "pending"
    campaign = suggestion_approve(suggestion=suggestion, user=approver, discount_value="10")
    assert campaign.discount_value == Decimal("10.00")


def test_staff_without_the_approve_permission_is_refused(bundle_ab):
    viewer = make_staff("bob", "view_bundlesuggestion", "change_bundlesuggestion")
    with pytest.raises(PermissionDenied, match="approve_bundlesuggestion"):
        suggestion_approve(suggestion=bundle_ab, user=viewer)
    with pytest.raises(PermissionDenied):
        suggestion_reject(suggestion=bundle_ab, user=viewer)
    bundle_ab.refresh_from_db()
    assert bundle_ab.status == BundleSuggestion.PENDING and not BundleCampaign.objects.exists()


def test_second_approval_is_told_who_approved_it(bundle_ab, approver):
    suggestion_approve(suggestion=bundle_ab, user=approver)
    other = make_staff("carol", "approve_bundlesuggestion")
    stale = BundleSuggestion.objects.get(pk=bundle_ab.pk)
    stale.status = BundleSuggestion.PENDING  # a stale copy from a page loaded before the first approval
    with pytest.raises(ValidationError) as err:
        suggestion_approve(suggestion=stale, user=other)
    message = " ".join(err.value.messages)
    assert message.startswith("Already approved by alice at ")
    assert BundleCampaign.objects.count() == 1


def test_unique_suggestion_constraint_backs_up_the_status_check(bundle_ab, approver):
    """A campaign written for the suggestion behind the service's back: the database refuses a second one."""
    BundleCampaign.objects.create(name="racing writer", suggestion=bundle_ab, discount_value=Decimal("5"),
                                  approved_by=approver, approved_at=timezone.now())
    with pytest.raises(ValidationError, match="Already approved by alice"):
        suggestion_approve(suggestion=bundle_ab, user=approver)
    assert BundleCampaign.objects.count() == 1
    bundle_ab.refresh_from_db()
    assert bundle_ab.status == BundleSuggestion.PENDING  # the failed approval rolled back entirely


@pytest.mark.django_db(transaction=True)
def test_w3_two_staff_approving_at_the_same_moment_create_one_campaign():
    a, b = make_product("A", "20.00"), make_product("B", "5.00")
    suggestion = make_suggestion([a, b])
    users = [make_staff("alice", "approve_bundlesuggestion"), make_staff("carol", "approve_bundlesuggestion")]
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def approve(user):
        try:
            copy = BundleSuggestion.objects.get(pk=suggestion.pk)  # each thread has its own connection
            barrier.wait(timeout=10)
            outcomes[user.username] = suggestion_approve(suggestion=copy, user=user)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions below
            outcomes[user.username] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    campaigns = [o for o in outcomes.values() if isinstance(o, BundleCampaign)]
    refusals = [o for o in outcomes.values() if isinstance(o, ValidationError)]
    assert len(campaigns) == 1 and len(refusals) == 1, outcomes
    winner = campaigns[0].approved_by.username
    assert refusals[0].messages[0].startswith(f"Already approved by {winner} at ")
    assert BundleCampaign.objects.filter(suggestion=suggestion).count() == 1
    assert StaffAction.objects.filter(action="approve").count() == 1


# --------------------------------------------------------------------------- reject, pause, resume, expire


def test_reject_marks_the_suggestion_and_records_who(bundle_ab, approver):
    suggestion_reject(suggestion=bundle_ab, user=approver, reason="not a real bundle")
    bundle_ab.refresh_from_db()
    assert bundle_ab.status == BundleSuggestion.REJECTED and bundle_ab.reviewed_by == approver
    action = StaffAction.objects.get()
    assert (action.action, action.user, action.detail) == ("reject", approver, "not a real bundle")
    with pytest.raises(ValidationError, match="Already rejected by alice"):
        suggestion_approve(suggestion=bundle_ab, user=approver)


def test_pause_and_resume_record_staff_actions(bundle_ab, approver):
    campaign = suggestion_approve(suggestion=bundle_ab, user=approver)
    campaign_pause(campaign=campaign, user=approver, reason="supplier delay")
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.PAUSED, "supplier delay")
    with pytest.raises(ValidationError, match="not active"):
        campaign_pause(campaign=campaign, user=approver)
    campaign_resume(campaign=campaign, user=approver)
    campaign.refresh_from_db()
    assert campaign.status == BundleCampaign.ACTIVE
    assert list(StaffAction.objects.filter(campaign=campaign).order_by("created_at", "pk")
                .values_list("action", "user__username")) == [
        ("approve", "alice"), ("pause", "alice"), ("resume", "alice")]


def test_pause_needs_the_manage_permission(bundle_ab, approver):
    campaign = suggestion_approve(suggestion=bundle_ab, user=approver)
    only_approves = make_staff("dave", "approve_bundlesuggestion")
    with pytest.raises(PermissionDenied, match="manage_bundlecampaign"):
        campaign_pause(campaign=campaign, user=only_approves)


def test_resume_after_the_end_is_refused(bundle_ab, approver):
    start = timezone.now() - timedelta(days=10)
    campaign = suggestion_approve(suggestion=bundle_ab, user=approver, starts_at=start,
                                  ends_at=start + timedelta(days=9, hours=23))
    campaign_pause(campaign=campaign, user=approver)
    with pytest.raises(ValidationError, match="ended at"):
        campaign_resume(campaign=campaign, user=approver)


def test_end_now_takes_the_offer_off_for_good_and_closes_its_window(bundle_ab, approver):
    from shop_bundles.selectors.offers import live_campaigns
    from shop_bundles.services.campaigns import campaign_end

    start = timezone.now() - timedelta(days=3)
    campaign = suggestion_approve(suggestion=bundle_ab, user=approver, starts_at=start,
                                  ends_at=start + timedelta(days=28))
    assert list(live_campaigns()) == [campaign]
    before = timezone.now()
    campaign_end(campaign=campaign, user=approver, reason="supplier deal over")
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason) == (BundleCampaign.ENDED, "supplier deal over")
    assert before <= campaign.ends_at <= timezone.now()  # the window is the time it really ran
    assert campaign.starts_at == start
    assert not live_campaigns().exists()
    with pytest.raises(ValidationError, match="not paused"):
        campaign_resume(campaign=campaign, user=approver)
    with pytest.raises(ValidationError, match=r"has already ended \(at "):
        campaign_end(campaign=campaign, user=approver)
    assert list(StaffAction.objects.filter(campaign=campaign).order_by("created_at", "pk")
                .values_list("action", "detail"))[1:] == [("end", "supplier deal over")]
    only_approves = make_staff("dave", "approve_bundlesuggestion")
    with pytest.raises(PermissionDenied, match="manage_bundlecampaign"):
        campaign_end(campaign=campaign, user=only_approves)


def test_ending_a_campaign_that_has_not_started_keeps_its_dates(approver):
    from shop_bundles.services.campaigns import campaign_end

    start = timezone.now() + timedelta(days=2)
    campaign = suggestion_approve(suggestion=make_suggestion([make_product("P1", "4.00"), make_product("P2", "3.00")]),
                                  user=approver, starts_at=start, ends_at=start + timedelta(days=7))
    campaign_end(campaign=campaign, user=approver)
    campaign.refresh_from_db()
    assert (campaign.status, campaign.status_reason, campaign.starts_at, campaign.ends_at) == (
        BundleCampaign.ENDED, "ended by staff", start, start + timedelta(days=7))


def test_expire_ends_campaigns_whose_end_time_passed(approver):
    now = timezone.now()
    start = now - timedelta(days=30)
    products = [make_product(f"P{i}", "4.00") for i in range(6)]
    ended = suggestion_approve(suggestion=make_suggestion(products[0:2]), user=approver, starts_at=start,
                               ends_at=now - timedelta(minutes=1))
    paused_ended = suggestion_approve(suggestion=make_suggestion(products[2:4]), user=approver, starts_at=start,
                                      ends_at=now - timedelta(days=1))
    campaign_pause(campaign=paused_ended, user=approver)
    running = suggestion_approve(suggestion=make_suggestion(products[4:6]), user=approver)

    assert campaigns_expire(now=now) == 2
    statuses = dict(BundleCampaign.objects.values_list("pk", "status"))
    assert statuses == {ended.pk: "expired", paused_ended.pk: "expired", running.pk: "active"}
    expiries = StaffAction.objects.filter(action="expire")
    assert set(expiries.values_list("campaign_id", flat=True)) == {ended.pk, paused_ended.pk}
    assert all(a.user is None for a in expiries)
    assert campaigns_expire(now=now) == 0  # idempotent


def test_expire_retires_pending_suggestions_of_a_superseded_model_version():
    old = ModelVersion.objects.create(label="v1", artifact_path="/tmp/v1")
    new = ModelVersion.objects.create(label="v2", artifact_path="/tmp/v2", is_active=True)
    p = [make_product(f"S{i}", "2.00") for i in range(4)]
    stale = make_suggestion(p[0:2], version=old)
    fresh = make_suggestion(p[2:4], version=new)
    campaigns_expire()
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.status, fresh.status) == ("expired", "pending")


def test_a_suggested_0_percent_is_approved_as_a_0_percent_campaign_priced_at_the_regular_price(approver):
    """A "frequently bought together" offer at the normal price: 0 % is kept, not replaced by a default."""
    a, b = make_product("A", "20.00", name="Apples"), make_product("B", "5.00", name="Bread")
    suggestion = make_suggestion([a, b], discount="0.00")
    campaign = suggestion_approve(suggestion=suggestion, user=approver)
    assert (campaign.discount_type, campaign.discount_value) == ("percent", Decimal("0.00"))
    from shop_bundles.storefront.pricing import bundle_price

    assert bundle_price("percent", Decimal("0.00"), Decimal("25.00")) == (Decimal("25.00"), Decimal("0.00"))
