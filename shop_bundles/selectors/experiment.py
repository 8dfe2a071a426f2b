"""The holdout experiment: which group a shopper is in.

Assignment is deterministic and needs no database row: ``sha256(salt + ":" +
identity)`` read as a number in [0, 1) (first 8 bytes / 2**64); below the
holdout share → ``holdout`` (never sees offers, the cart forms no bundles),
otherwise ``treatment``. The identity is the shopper id when the session
knows it (``session["shop_bundles_shopper"]``, set by the replay), else the
identity the session was first assigned by, kept in the session
(``session["shop_bundles_identity"]``): the signed-in shopper's customer id
(``SHOP_BUNDLES_CUSTOMER_RESOLVER``) when the session starts signed in, so
such sessions share one group on every device, else the session key. A
session keeps its identity when the shopper signs in (Django changes the
session key then), so prices and offers do not change under them. Salt and share come
from ``SHOP_BUNDLES_EXPERIMENT_SALT`` and ``SHOP_BUNDLES_HOLDOUT_SHARE``.
"""
from __future__ import annotations

import hashlib

from .. import app_settings
from .customers import request_customer_id

TREATMENT, HOLDOUT = "treatment", "holdout"
GROUPS = (TREATMENT, HOLDOUT)
SHOPPER_SESSION_KEY = "shop_bundles_shopper"
IDENTITY_SESSION_KEY = "shop_bundles_identity"


def assignment_bucket(identity: str, *, salt: str) -> float:
    """Position of an identity in [0, 1): the first 8 bytes of sha256(f"{salt}:{identity}") / 2**64."""
    digest = hashlib.sha256(f"{salt}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def assignment_group(identity: str, *, salt: str | None = None, holdout_share: float | None = None) -> str:
    """``"holdout"`` or ``"treatment"`` for a shopper or session id (same answer every time).

    Args:
        identity: shopper id or session key (an empty identity is treated as treatment:
            without a session nothing can be tracked, and the product page still works).
        salt: per-experiment salt (default ``SHOP_BUNDLES_EXPERIMENT_SALT``).
        holdout_share: share of shoppers held out, 0..1 (default ``SHOP_BUNDLES_HOLDOUT_SHARE``).
    """
    salt = app_settings.get("EXPERIMENT_SALT") if salt is None else salt
    share = float(app_settings.get("HOLDOUT_SHARE") if holdout_share is None else holdout_share)
    if not identity:
        return TREATMENT
    return HOLDOUT if assignment_bucket(str(identity), salt=salt) < share else TREATMENT


def shopper_identity(request) -> str:
    """The identity assigned: the session's shopper id (replay), else the identity kept in the session,
    else the signed-in shopper's customer id (``selectors.customers.request_customer_id``), else the
    session key ("" when none). The first non-empty one of the last two is kept in the session."""
    session = getattr(request, "session", None)
    if session is None:
        return ""
    replay = session.get(SHOPPER_SESSION_KEY)
    if replay:
        return str(replay)
    kept = session.get(IDENTITY_SESSION_KEY)
    if kept:
        return str(kept)
    identity = str(request_customer_id(request) or session.session_key or "")
    if identity:
        session[IDENTITY_SESSION_KEY] = identity
    return identity


def request_group(request) -> str:
    """The experiment group of the shopper making ``request`` (no query; one sha256)."""
    return assignment_group(shopper_identity(request))
