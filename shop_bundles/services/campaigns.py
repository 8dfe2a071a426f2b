"""Staff decisions on bundle suggestions and campaigns (writes; HackSoft-style services).

Every state change records a ``StaffAction`` with the user (None for the
system, e.g. expiry) and the time. Money is ``Decimal``; the bundle's regular
price is the sum of its items' current shelf prices (one unit each).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .. import app_settings
from ..models import (
    BundleCampaign,
    BundleCampaignItem,
    BundleCampaignStore,
    BundleSuggestion,
    ModelVersion,
    StaffAction,
)

logger = logging.getLogger(__name__)

APPROVE_PERMISSION = "shop_bundles.approve_bundlesuggestion"
MANAGE_PERMISSION = "shop_bundles.manage_bundlecampaign"
CENT = Decimal("0.01")


def _require(user, permission: str, what: str) -> None:
    """Raise PermissionDenied unless ``user`` is an active staff member holding ``permission``."""
    if user is None or not getattr(user, "is_active", False) or not user.has_perm(permission):
        name = getattr(user, "get_username", lambda: "anonymous")()
        raise PermissionDenied(f"{name} may not {what} (needs the permission {permission}).")


def _who(user) -> str:
    """A user's display name for messages ("someone" when unknown)."""
    if user is None:
        return "the system"
    return user.get_full_name() or user.get_username()


def _when(moment: datetime | None) -> str:
    """A timestamp in the shop's time zone for messages."""
    if moment is None:
        return "an unknown time"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M")


def not_pending_message(suggestion: BundleSuggestion) -> str:
    """Explain why a suggestion can no longer be decided on ("Already approved by carol at 2026-12-08 10:05.").

    ``suggestion.reviewed_by`` is read, so select it with the suggestion.
    """
    if suggestion.status == BundleSuggestion.APPROVED:
        return f"Already approved by {_who(suggestion.reviewed_by)} at {_when(suggestion.reviewed_at)}."
    if suggestion.status == BundleSuggestion.REJECTED:
        return f"Already rejected by {_who(suggestion.reviewed_by)} at {_when(suggestion.reviewed_at)}."
    return f"The suggestion is {suggestion.get_status_display().lower()}, not pending."


def _money(value) -> Decimal:
    """Decimal of ``value`` (str, int, Decimal); ValidationError when not a number."""
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise ValidationError(f"The discount {value!r} is not a number.") from exc
    if not number.is_finite():
        raise ValidationError(f"The discount {value!r} is not a number.")
    return number


def bundle_regular_price(products) -> Decimal:
    """Regular price of one unit of each product given (repeat a product for more units), Decimal to cents.

    Uses the storefront pricing engine's rule (``storefront.pricing.bundle_regular_price``),
    so approval checks and the cart can never disagree on a bundle's price.
    """
    from ..storefront.pricing import bundle_regular_price as engine_regular_price

    units = list(products)
    return engine_regular_price(((i, 1) for i in range(len(units))),
                                {i: p.price for i, p in enumerate(units)}).quantize(CENT)


def discount_validate(*, discount_type: str, discount_value: Decimal, regular_price: Decimal) -> None:
    """Check a bundle discount against the bundle's regular price; the bundle price must stay above 0.00.

    Rules: percent must be in [0, 100) (0 % is a "frequently bought together"
    offer at the normal price, the optimiser's choice when no discount pays;
    100 % would give the bundle away); a fixed amount must be > 0 and below the
    regular price (case M3: 6.00 off a 5.00 bundle is refused, and 5.00 off
    would make it free); a fixed bundle price must be > 0 and below the
    regular price.

    Raises:
        ValidationError: with a message naming the amounts.
    """
    if discount_type == BundleCampaign.PERCENT:
        if discount_value < 0 or discount_value > 100:
            raise ValidationError(f"A percent discount must be between 0 and 100 (got {discount_value}).")
        if discount_value == 100:
            raise ValidationError("A 100 % discount gives the bundle away (bundle price 0.00); use less than 100 %.")
    elif discount_type == BundleCampaign.AMOUNT:
        if discount_value <= 0:
            raise ValidationError(f"The discount {discount_value} must be greater than 0.")
        if discount_value > regular_price:
            raise ValidationError(
                f"The discount {discount_value.quantize(CENT)} exceeds the bundle price {regular_price}.")
        if discount_value == regular_price:
            raise ValidationError(f"The discount {discount_value.quantize(CENT)} equals the bundle price "
                                  f"{regular_price}: the bundle would be free.")
    elif discount_type == BundleCampaign.FIXED_PRICE:
        if discount_value <= 0:
            raise ValidationError(f"The bundle price {discount_value} must be above 0.00.")
        if discount_value >= regular_price:
            raise ValidationError(
                f"The bundle price {discount_value.quantize(CENT)} is not below the regular price {regular_price}.")
    else:
        raise ValidationError(f"Unknown discount type {discount_type!r}.")
    from ..storefront.pricing import gives_bundle_away

    if gives_bundle_away(discount_type, discount_value, regular_price):  # e.g. 99.999 % rounds to the whole price
        raise ValidationError(f"The discount {discount_value} gives the bundle away: the bundle price "
                              f"{regular_price} would be 0.00 after rounding to cents.")


def local_days_after(moment: datetime, days: int) -> datetime:
    """The same wall-clock time ``days`` calendar days after ``moment`` in ``TIME_ZONE``, as an aware datetime.

    Across a daylight-saving change this is 23 or 25 hours per changed day,
    not ``days * 24`` hours (zoneinfo arithmetic on the local time). A wall
    time that does not exist on the target day (skipped by spring-forward) is
    read with the offset before the change (PEP 495 ``fold=0``), i.e. one
    hour later on the new clock.
    """
    local = timezone.localtime(moment) + timedelta(days=days)  # wall-clock arithmetic (same tzinfo)
    return local.astimezone(dt_timezone.utc).astimezone(local.tzinfo)  # the new date's real offset


@transaction.atomic
def suggestion_approve(*, suggestion: BundleSuggestion, user, discount_type: str | None = None,
                       discount_value=None, starts_at: datetime | None = None,
                       ends_at: datetime | None = None, store_ids=None) -> BundleCampaign:
    """Approve a pending suggestion: create its BundleCampaign (active) with items.

    Args:
        suggestion: the suggestion (re-read and locked with SELECT ... FOR UPDATE).
        user: the approving staff user; needs ``shop_bundles.approve_bundlesuggestion``.
        discount_type: ``percent`` (default), ``amount`` or ``fixed_price``.
        discount_value: Decimal-compatible; default the suggestion's suggested percent, which
            scoring sets to the optimiser's chosen discount (``economics["offer"]``, 0 % included;
            SHOP_BUNDLES_DEFAULT_DISCOUNT_PERCENT only when the suggestion has none).
        starts_at: aware datetime, default now.
        ends_at: aware datetime, default ``starts_at`` + SHOP_BUNDLES_CAMPAIGN_DAYS days
            on the wall clock of ``TIME_ZONE`` (a campaign approved at 10:00 ends at 10:00
            local time, also when a daylight-saving change falls inside the window).
        store_ids: stores the campaign is limited to (``BundleCampaignStore``
            rows); None = the suggestion's own ``store_ids`` (a store-specific
            suggestion's stores; none for a chain-wide one); ``[]`` = every store.

    Returns:
        The new BundleCampaign (status active, created_by/approved_by = user).
        ``suggestion`` is updated in place (status approved, reviewer).

    Raises:
        PermissionDenied: the user lacks the approve permission.
        ValidationError: the suggestion is not pending ("Already approved by X at T"),
            a product is inactive, out of stock or priced below its known cost, the
            discounted bundle price breaks the margin floor (cost × (1 +
            SHOP_BUNDLES_MIN_MARGIN_RATE), when every cost is known), the discount is out of range
            (e.g. exceeds the bundle's regular price), or the window is empty.
            A concurrent approval that slips past the row lock is caught by the
            unique ``BundleCampaign.suggestion`` constraint and reported the same way.
    """
    _require(user, APPROVE_PERMISSION, "approve bundle suggestions")
    # No select_related here: after waiting for a concurrent approver's lock, PostgreSQL re-reads the
    # locked row but not joined rows, so a joined reviewer would be the stale (empty) one.
    locked = BundleSuggestion.objects.select_for_update().get(pk=suggestion.pk)
    if locked.status != BundleSuggestion.PENDING:
        raise ValidationError(not_pending_message(locked))

    items = list(locked.items.select_related("product").order_by("position", "pk"))
    products = [item.product for item in items]
    if len(products) < 2:
        raise ValidationError("A bundle needs at least two products.")
    problems = []
    for product in products:
        problem = product_unsellable(product)
        if problem is None and product.cost is not None and product.price < product.cost:
            problem = f"{product} is priced {product.price}, below its cost {product.cost}"
        if problem:
            problems.append(problem)
    if problems:
        raise ValidationError("Cannot approve: " + "; ".join(problems) + ".")

    discount_type = discount_type or BundleCampaign.PERCENT
    if discount_value is None:
        # ``is not None``: a suggested 0 % (the optimiser found no discount that pays) is kept as 0 %.
        discount_value = (locked.suggested_discount_percent if discount_type == BundleCampaign.PERCENT
                          else None)
        if discount_value is None:
            if discount_type != BundleCampaign.PERCENT:
                raise ValidationError("Give a discount value for a fixed amount or fixed price.")
            discount_value = app_settings.get("DEFAULT_DISCOUNT_PERCENT")
    # Checked as stored: rounded to cents first (99.995 % would otherwise pass and be stored as 100.00).
    discount_value = _money(discount_value).quantize(CENT, rounding=ROUND_HALF_UP)
    regular_price = bundle_regular_price(products)
    discount_validate(discount_type=discount_type, discount_value=discount_value, regular_price=regular_price)
    # The same margin floor as the automatic pause: a campaign that would be paused at once is refused.
    draft = BundleCampaign(discount_type=discount_type, discount_value=discount_value.quantize(CENT))
    floor_problem = _campaign_problem(draft, [BundleCampaignItem(product=p, quantity=1, position=i)
                                              for i, p in enumerate(products)])
    if floor_problem:
        raise ValidationError(f"Cannot approve: {floor_problem[len(AUTO_PREFIX):]}.")

    now = timezone.now()
    starts_at = starts_at or now
    ends_at = ends_at or local_days_after(starts_at, int(app_settings.get("CAMPAIGN_DAYS")))
    if ends_at <= starts_at:
        raise ValidationError(f"The campaign must end after it starts ({_when(starts_at)}).")

    try:
        with transaction.atomic():
            campaign = BundleCampaign.objects.create(
                name=" + ".join((p.name or p.sku) for p in products)[:255],
                suggestion=locked,
                discount_type=discount_type,
                discount_value=discount_value.quantize(CENT),
                starts_at=starts_at,
                ends_at=ends_at,
                status=BundleCampaign.ACTIVE,
                created_by=user,
                approved_by=user,
                approved_at=now,
            )
    except IntegrityError as exc:
        existing = BundleCampaign.objects.filter(suggestion_id=locked.pk).select_related("approved_by").first()
        if existing is not None:
            raise ValidationError(
                f"Already approved by {_who(existing.approved_by)} at {_when(existing.approved_at)}.") from exc
        raise
    BundleCampaignItem.objects.bulk_create([
        BundleCampaignItem(campaign=campaign, product=product, quantity=1, position=position)
        for position, product in enumerate(products)
    ])
    stores = sorted({str(s).strip() for s in (locked.store_ids if store_ids is None else store_ids)} - {""})
    BundleCampaignStore.objects.bulk_create([BundleCampaignStore(campaign=campaign, store_id=s[:32]) for s in stores])
    locked.status = BundleSuggestion.APPROVED
    locked.reviewed_by = user
    locked.reviewed_at = now
    locked.save(update_fields=["status", "reviewed_by", "reviewed_at"])
    StaffAction.objects.create(
        user=user, action="approve", suggestion=locked, campaign=campaign, created_at=now,
        detail=(f"{campaign.get_discount_type_display()} {campaign.discount_value} on regular price "
                f"{regular_price}; {_when(starts_at)} to {_when(ends_at)}"
                + (f"; only in store(s) {', '.join(stores)}" if stores else "")),
    )
    suggestion.status, suggestion.reviewed_by, suggestion.reviewed_at = locked.status, user, now
    logger.info("suggestion %s approved by %s as campaign %s", locked.pk, user, campaign.pk)
    return campaign


@transaction.atomic
def suggestion_reject(*, suggestion: BundleSuggestion, user, reason: str = "") -> BundleSuggestion:
    """Reject a pending suggestion (it is not suggested again by later scorings).

    Args:
        suggestion: the suggestion (locked while deciding).
        user: staff user with ``shop_bundles.approve_bundlesuggestion``.
        reason: optional free text kept in the StaffAction.

    Returns:
        The suggestion, status rejected.

    Raises:
        PermissionDenied: the user lacks the permission.
        ValidationError: the suggestion is not pending.
    """
    _require(user, APPROVE_PERMISSION, "reject bundle suggestions")
    locked = BundleSuggestion.objects.select_for_update().get(pk=suggestion.pk)
    if locked.status != BundleSuggestion.PENDING:
        raise ValidationError(not_pending_message(locked))
    now = timezone.now()
    locked.status, locked.reviewed_by, locked.reviewed_at = BundleSuggestion.REJECTED, user, now
    locked.save(update_fields=["status", "reviewed_by", "reviewed_at"])
    StaffAction.objects.create(user=user, action="reject", suggestion=locked, detail=reason, created_at=now)
    suggestion.status, suggestion.reviewed_by, suggestion.reviewed_at = locked.status, user, now
    return locked


@transaction.atomic
def campaign_pause(*, campaign: BundleCampaign, user, reason: str = "") -> BundleCampaign:
    """Pause an active campaign (shoppers stop seeing it at once).

    A campaign the shop paused automatically (reason ``"auto: ..."``, see
    :func:`campaigns_sync_product`) can be paused by staff too: it then keeps
    the staff reason and is no longer resumed automatically when its items
    are fine again.

    Raises:
        PermissionDenied: the user lacks ``shop_bundles.manage_bundlecampaign``.
        ValidationError: the campaign is neither active nor automatically paused.
    """
    _require(user, MANAGE_PERMISSION, "pause campaigns")
    locked = BundleCampaign.objects.select_for_update().get(pk=campaign.pk)
    auto_paused = locked.status == BundleCampaign.PAUSED and locked.status_reason.startswith(AUTO_PREFIX)
    if locked.status != BundleCampaign.ACTIVE and not auto_paused:
        raise ValidationError(f"Campaign {locked} is {locked.get_status_display().lower()}, not active.")
    reason = (reason or "").strip()
    if auto_paused:
        reason = f"{reason or 'paused by staff'} (was {locked.status_reason})"
    if reason.startswith(AUTO_PREFIX.strip()):
        reason = f"staff: {reason}"  # never mistaken for an automatic pause
    locked.status, locked.status_reason = BundleCampaign.PAUSED, reason[:255]
    locked.save(update_fields=["status", "status_reason", "updated_at"])
    StaffAction.objects.create(user=user, action="pause", campaign=locked, suggestion_id=locked.suggestion_id,
                               detail=reason)
    campaign.status, campaign.status_reason = locked.status, locked.status_reason
    return locked


@transaction.atomic
def campaign_resume(*, campaign: BundleCampaign, user) -> BundleCampaign:
    """Resume a paused campaign whose window has not ended and whose items can be sold.

    The same checks as the automatic pause (:func:`_campaign_problem`: every
    item active, in stock and priced, the discount within the bundle price
    and the margin floor), so staff cannot put back on sale a bundle the shop
    would pause at once.

    Raises:
        PermissionDenied: the user lacks ``shop_bundles.manage_bundlecampaign``.
        ValidationError: the campaign is not paused, its end time has passed,
            or one of its items or its discount fails those checks (the
            message gives the reason, e.g. "... breaks the margin floor: bundle
            price 3.42 is below cost 3.60 + 5% = 3.78").
    """
    _require(user, MANAGE_PERMISSION, "resume campaigns")
    locked = BundleCampaign.objects.select_for_update().get(pk=campaign.pk)
    if locked.status != BundleCampaign.PAUSED:
        raise ValidationError(f"Campaign {locked} is {locked.get_status_display().lower()}, not paused.")
    if locked.ends_at is not None and locked.ends_at <= timezone.now():
        raise ValidationError(f"Campaign {locked} ended at {_when(locked.ends_at)}; change its dates first.")
    problem = _campaign_problem(locked, list(locked.items.select_related("product").order_by("position", "pk")))
    if problem:
        raise ValidationError(f"Campaign {locked} cannot be resumed: {problem[len(AUTO_PREFIX):]}. "
                              "Change its discount or the products first.")
    locked.status, locked.status_reason = BundleCampaign.ACTIVE, ""
    locked.save(update_fields=["status", "status_reason", "updated_at"])
    StaffAction.objects.create(user=user, action="resume", campaign=locked, suggestion_id=locked.suggestion_id)
    campaign.status, campaign.status_reason = locked.status, locked.status_reason
    return locked


@transaction.atomic
def campaign_end(*, campaign: BundleCampaign, user, reason: str = "") -> BundleCampaign:
    """End a campaign now, for good (shoppers stop seeing it at once; it cannot be resumed).

    For an offer that should not come back (a product delisted, a supplier deal
    over), where *pause* would leave it waiting for a resume. Status becomes
    ``ended`` and ``ends_at`` becomes now when the campaign has started and
    would run past now, so its window (which earnings and uplift reports read)
    is the time it really ran; a campaign that has not started yet keeps its
    dates and is never shown. Records a StaffAction ``end`` with the reason.

    Raises:
        PermissionDenied: the user lacks ``shop_bundles.manage_bundlecampaign``.
        ValidationError: the campaign has already ended or expired.
    """
    _require(user, MANAGE_PERMISSION, "end campaigns")
    locked = BundleCampaign.objects.select_for_update().get(pk=campaign.pk)
    if locked.status in (BundleCampaign.ENDED, BundleCampaign.EXPIRED):
        raise ValidationError(f"Campaign {locked} has already {locked.get_status_display().lower()}"
                              + (f" (at {_when(locked.ends_at)})" if locked.ends_at else "") + ".")
    now = timezone.now()
    reason = (reason or "").strip() or "ended by staff"
    locked.status, locked.status_reason = BundleCampaign.ENDED, reason[:255]
    if locked.starts_at <= now and (locked.ends_at is None or locked.ends_at > now):
        locked.ends_at = now
    locked.save(update_fields=["status", "status_reason", "ends_at", "updated_at"])
    StaffAction.objects.create(user=user, action="end", campaign=locked, suggestion_id=locked.suggestion_id,
                               detail=reason, created_at=now)
    campaign.status, campaign.status_reason, campaign.ends_at = locked.status, locked.status_reason, locked.ends_at
    return locked


@transaction.atomic
def campaigns_expire(now: datetime | None = None) -> int:
    """Expire campaigns whose end time has passed, and stale pending suggestions.

    Campaigns: status active or paused with ``ends_at <= now`` → expired, one
    StaffAction (user None, action ``expire``) each.

    Suggestions: pending suggestions of a model version that is no longer
    active are expired once the active version has suggestions of its own
    (i.e. a newer scoring ran); their item sets are re-suggested with fresh
    evidence by that scoring.

    Returns:
        Number of campaigns expired.
    """
    now = now or timezone.now()
    due = list(BundleCampaign.objects.select_for_update(skip_locked=True)
               .filter(status__in=[BundleCampaign.ACTIVE, BundleCampaign.PAUSED], ends_at__lte=now)
               .values_list("pk", "suggestion_id"))
    if due:
        BundleCampaign.objects.filter(pk__in=[pk for pk, _ in due]).update(
            status=BundleCampaign.EXPIRED, status_reason="ended", updated_at=now)
        StaffAction.objects.bulk_create([
            StaffAction(user=None, action="expire", campaign_id=pk, suggestion_id=sid, created_at=now,
                        detail="end time passed")
            for pk, sid in due
        ])
    suggestions_expire_stale(now=now)
    return len(due)


def suggestions_expire_stale(*, now: datetime | None = None) -> int:
    """Expire pending suggestions of inactive model versions once the active version has been scored.

    Returns:
        Number of suggestions expired (0 when no version is active or it has no suggestions yet).
    """
    now = now or timezone.now()
    active = ModelVersion.objects.filter(is_active=True).first()
    if active is None or not BundleSuggestion.objects.filter(model_version=active).exists():
        return 0
    stale = BundleSuggestion.objects.filter(status=BundleSuggestion.PENDING).filter(
        Q(model_version__isnull=True) | ~Q(model_version=active))
    ids = list(stale.values_list("pk", flat=True))
    if not ids:
        return 0
    BundleSuggestion.objects.filter(pk__in=ids, status=BundleSuggestion.PENDING).update(
        status=BundleSuggestion.EXPIRED, reviewed_at=now)
    StaffAction.objects.bulk_create([
        StaffAction(user=None, action="expire", suggestion_id=pk, created_at=now,
                    detail=f"superseded by model version {active.label}")
        for pk in ids
    ], batch_size=2000)
    return len(ids)


def open_campaigns(*, now: datetime | None = None):
    """Campaigns that are live or may become live again: active, paused or draft, end time not passed.

    Returns:
        QuerySet of ``BundleCampaign``.
    """
    now = now or timezone.now()
    return BundleCampaign.objects.filter(
        status__in=[BundleCampaign.ACTIVE, BundleCampaign.PAUSED, BundleCampaign.DRAFT]).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=now))


def open_campaign_skus(*, now: datetime | None = None) -> dict[int, list[str]]:
    """``{campaign id: [SKU, ...]}`` of the :func:`open_campaigns`, items in position order."""
    skus: dict[int, list[str]] = {}
    for campaign_id, sku in (BundleCampaignItem.objects.filter(campaign__in=open_campaigns(now=now))
                             .order_by("campaign_id", "position", "id").values_list("campaign_id", "product__sku")):
        skus.setdefault(campaign_id, []).append(sku)
    return skus


def live_signatures(*, now: datetime | None = None) -> set[str]:
    """Signatures (sorted SKUs joined with ``+``) of the :func:`open_campaigns`."""
    from ..ml_bridge import signature_of

    return {signature_of(v) for v in open_campaign_skus(now=now).values()}


AUTO_PREFIX = "auto: "


def campaign_discount_problem(campaign: BundleCampaign, items) -> str | None:
    """Why ``campaign``'s discount does not fit its items at their current prices, or None.

    Two checks, in order: the discount against the bundle's regular price
    (``discount_validate``; a no-discount offer passes), since a shelf price
    cut can make a fixed amount off give the bundle away; then the margin
    floor: the discounted bundle price must be at least the bundle cost ×
    (1 + ``MIN_MARGIN_RATE``), checked only when every item has a known
    ``cost``. The product blamed for a margin break is the item with the
    highest cost share (the first item when tied).

    Args:
        campaign: a saved or unsaved ``BundleCampaign`` (its discount type and value are read).
        items: ``BundleCampaignItem``-like objects with ``product``, ``quantity`` and ``position``.

    Returns:
        a sentence without the ``"auto: "`` prefix, or None.
    """
    from ..storefront.pricing import bundle_price, is_no_discount
    from .economics import bundle_cost

    units = [item.product for item in items for _ in range(max(item.quantity, 1))]
    regular = bundle_regular_price(units)
    if items and not is_no_discount(campaign.discount_type, campaign.discount_value):
        try:
            discount_validate(discount_type=campaign.discount_type, discount_value=Decimal(campaign.discount_value),
                              regular_price=regular)
        except ValidationError as exc:
            return " ".join(exc.messages)
    if not items or any(item.product.cost is None for item in items):
        return None
    price, _saving = bundle_price(campaign.discount_type, campaign.discount_value, regular)
    cost, _source = bundle_cost(units)
    rate = float(app_settings.get("MIN_MARGIN_RATE"))
    floor = (cost * (Decimal("1") + Decimal(str(rate)))).quantize(CENT, rounding=ROUND_HALF_UP)
    if price < floor:
        culprit = max(items, key=lambda i: (i.product.cost * max(i.quantity, 1), -i.position))
        return f"{culprit.product} breaks the margin floor: bundle price {price} is below cost {cost} + {rate * 100:g}% = {floor}"
    return None


def product_unsellable(product) -> str | None:
    """Why shoppers cannot buy ``product`` ("Bread (B) is out of stock"), or None.

    Inactive, then out of stock (``stock <= 0``), then unpriced (``price <= 0``):
    the checks approval, the automatic pause, resume and the campaign form share.
    """
    if not product.active:
        return f"{product} is inactive"
    if product.stock <= 0:
        return f"{product} is out of stock"
    if product.price <= 0:
        return f"{product} has no price ({product.price})"
    return None


def _campaign_problem(campaign: BundleCampaign, items) -> str | None:
    """Why ``campaign`` must not be offered (an ``"auto: ..."`` reason), or None when all items are fine.

    Checks each item (:func:`product_unsellable`: inactive, then out of stock, then unpriced), then
    :func:`campaign_discount_problem` (discount vs the bundle price, margin floor).
    """
    for item in items:
        problem = product_unsellable(item.product)
        if problem:
            return f"{AUTO_PREFIX}{problem}"
    problem = campaign_discount_problem(campaign, items)
    return f"{AUTO_PREFIX}{problem}"[:255] if problem else None


@transaction.atomic
def campaigns_sync_product(*, product) -> dict:
    """Pause or resume the campaigns containing ``product`` after its stock, price, cost or status changed.

    Active campaigns holding the product are paused (status ``paused``,
    ``status_reason`` ``"auto: <product> is out of stock"`` / ``is inactive`` /
    ``breaks the margin floor: ...``) when any of their items is inactive, out
    of stock (``stock <= 0``), or the discounted bundle price falls below the
    bundle cost × (1 + ``SHOP_BUNDLES_MIN_MARGIN_RATE``) — the margin check
    only when every item has a known ``cost``. Paused campaigns whose reason
    starts with ``"auto: "`` are resumed (reason cleared) once every item is
    fine again and their end time has not passed; campaigns paused by staff
    are never resumed here. Each change records a ``StaffAction`` (user None,
    action ``auto_pause`` or ``auto_resume``, detail = the reason).

    Args:
        product: a ``Product`` or its primary key; its current row is read from the database.

    Returns:
        ``{"paused": int, "resumed": int}``.
    """
    product_id = getattr(product, "pk", product)
    now = timezone.now()
    campaign_ids = BundleCampaignItem.objects.filter(product_id=product_id).values("campaign_id")
    candidates = (BundleCampaign.objects.select_for_update(of=("self",))
                  .filter(id__in=campaign_ids)
                  .filter(Q(status=BundleCampaign.ACTIVE)
                          | Q(status=BundleCampaign.PAUSED, status_reason__startswith=AUTO_PREFIX))
                  .order_by("pk"))
    paused = resumed = 0
    for campaign in candidates:
        items = list(campaign.items.select_related("product").order_by("position", "pk"))
        problem = _campaign_problem(campaign, items)
        if campaign.status == BundleCampaign.ACTIVE and problem:
            campaign.status, campaign.status_reason = BundleCampaign.PAUSED, problem
            campaign.save(update_fields=["status", "status_reason", "updated_at"])
            StaffAction.objects.create(user=None, action="auto_pause", campaign=campaign,
                                       suggestion_id=campaign.suggestion_id, detail=problem, created_at=now)
            paused += 1
            logger.info("campaign %s auto-paused: %s", campaign.pk, problem)
        elif campaign.status == BundleCampaign.PAUSED and problem is None:
            if campaign.ends_at is not None and campaign.ends_at <= now:
                continue
            old_reason = campaign.status_reason
            campaign.status, campaign.status_reason = BundleCampaign.ACTIVE, ""
            campaign.save(update_fields=["status", "status_reason", "updated_at"])
            StaffAction.objects.create(user=None, action="auto_resume", campaign=campaign,
                                       suggestion_id=campaign.suggestion_id,
                                       detail=f"resolved: {old_reason[len(AUTO_PREFIX):]}", created_at=now)
            resumed += 1
            logger.info("campaign %s auto-resumed", campaign.pk)
        elif campaign.status == BundleCampaign.PAUSED and problem != campaign.status_reason:
            campaign.status_reason = problem  # still broken, for another reason now: keep staff informed
            campaign.save(update_fields=["status_reason", "updated_at"])
    return {"paused": paused, "resumed": resumed}


__all__ = [
    "bundle_regular_price",
    "campaign_pause",
    "campaign_resume",
    "campaigns_expire",
    "campaigns_sync_product",
    "discount_validate",
    "live_signatures",
    "suggestion_approve",
    "suggestion_reject",
    "suggestions_expire_stale",
]
