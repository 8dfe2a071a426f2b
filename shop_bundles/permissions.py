"""The bundle team's permissions, as one Django group that ``migrate`` keeps up to date.

Staff who review suggestions, run campaigns, retrain and read what the bundles
earned need these and nothing else (no users, products or orders). Add such a
user to the group ``Bundle team`` in the admin (Users → the user → Groups), or
``manage.py shell -c "..."``; ``demo_approve`` does it for the demo's staff user.
"""
from __future__ import annotations

#: the group's name in ``django.contrib.auth``
BUNDLE_TEAM_GROUP = "Bundle team"

#: ``shop_bundles`` permission codenames the group holds
BUNDLE_TEAM_PERMISSIONS = (
    "approve_bundlesuggestion", "view_bundlesuggestion",  # the review queue
    "manage_bundlecampaign", "view_bundlecampaign", "change_bundlecampaign",  # pause, resume, end, edit
    "add_bundlecampaign",  # a campaign by hand
    "view_trainingrun", "add_trainingrun", "view_modelversion",  # training runs, Retrain now, model versions
    "view_staffaction",  # the audit trail
    "view_experimentdashboard",  # the holdout experiment: what the bundles earned
)


def ensure_bundle_team_group(using: str = "default"):
    """Create the ``Bundle team`` group if absent and give it every permission of :data:`BUNDLE_TEAM_PERMISSIONS`.

    Permissions staff added to the group themselves are kept (nothing is removed).
    Runs after every ``migrate`` (``signals.install_default_schedule``'s neighbour).

    Returns:
        The ``django.contrib.auth.models.Group``.

    Raises:
        LookupError: a codename of :data:`BUNDLE_TEAM_PERMISSIONS` has no Permission row (a typo, or the
            permissions were not created yet).
    """
    from django.contrib.auth.models import Group, Permission

    group, _ = Group.objects.using(using).get_or_create(name=BUNDLE_TEAM_GROUP)
    perms = list(Permission.objects.using(using).filter(content_type__app_label="shop_bundles",
                                                        codename__in=BUNDLE_TEAM_PERMISSIONS))
    missing = set(BUNDLE_TEAM_PERMISSIONS) - {p.codename for p in perms}
    if missing:
        raise LookupError(f"no permission {', '.join(sorted(missing))} in shop_bundles")
    group.permissions.add(*perms)
    return group
