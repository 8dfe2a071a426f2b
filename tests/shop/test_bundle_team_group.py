"""The ``Bundle team`` group that ``migrate`` creates: the staff who approve bundles can also see what they earned."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from shop_bundles.permissions import BUNDLE_TEAM_GROUP, BUNDLE_TEAM_PERMISSIONS, ensure_bundle_team_group

pytestmark = [pytest.mark.django_db]


def test_migrate_created_the_group_with_exactly_the_bundle_team_permissions():
    group = Group.objects.get(name=BUNDLE_TEAM_GROUP)  # made by the post_migrate handler of the test database
    assert sorted(group.permissions.values_list("codename", flat=True)) == sorted(BUNDLE_TEAM_PERMISSIONS)
    assert ensure_bundle_team_group() == group  # idempotent, one group


def test_a_member_reviews_runs_campaigns_and_reads_the_holdout_dashboard_but_not_users_or_orders():
    """QA: the demo staff user could approve bundles but got 403 on the only report of what they earned."""
    user = get_user_model().objects.create_user("erin", password="pw-erin-1", is_staff=True)
    user.groups.add(Group.objects.get(name=BUNDLE_TEAM_GROUP))
    client = Client()
    client.force_login(user)
    for name in ("bundlesuggestion", "bundlecampaign", "trainingrun", "modelversion", "staffaction",
                 "experimentdashboard"):
        assert client.get(reverse(f"admin:shop_bundles_{name}_changelist")).status_code == 200, name
    assert client.get(reverse("admin:shop_bundles_bundlecampaign_add")).status_code == 200
    for url in (reverse("admin:auth_user_changelist"), reverse("admin:shop_bundles_order_changelist"),
                reverse("admin:shop_bundles_product_add")):
        assert client.get(url).status_code == 403, url
