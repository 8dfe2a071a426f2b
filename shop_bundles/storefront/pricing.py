"""Pure bundle pricing engine: form bundles in a cart and price it.

No Django, no database: the inputs are plain dataclasses holding ``Decimal``
amounts that the caller loaded from the catalogue (``Product.price``), never
from a request. The same engine prices the cart page, the checkout and the
offer block on the product page, so the three always agree.

The money rule (docs: ``shared/cases/README.md``, "Money"; ARCHITECTURE.md):

* Every amount is a ``decimal.Decimal`` in the shop currency.
* A bundle discount is computed on the *bundle line* — all identical bundles
  of one campaign in the cart together — and rounded **once**, ``ROUND_HALF_UP``
  to cents (``0.01``). 9 bundles at 13.50 with 5 % off give
  ``round(121.50 * 0.05) = round(6.075) = 6.08``, not ``9 * round(0.675)``.
* A unit of a product belongs to at most one bundle.
* Campaigns compete for units; the shopper gets the best deal: the bundles
  with the largest total saving (before rounding), from an integer program
  when campaigns share products (``scipy.optimize.milp``), else by saving
  per bundle, largest first; ties go to the larger saving per bundle, then
  the lower campaign id, so the result is deterministic.
* A discount never makes anything negative: a bundle's discount is clamped to
  ``[0, regular amount]``; a ``fixed_price`` at or above the regular price
  gives no discount (and forms no bundle).

Discount kinds (``BundleCampaign.discount_type``):

``percent``      ``discount_value`` percent of the bundle line's regular amount.
``amount``       ``discount_value`` off each bundle.
``fixed_price``  each bundle sells for ``discount_value``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Iterable, Mapping, Sequence

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
HUNDRED = Decimal("100")

PERCENT = "percent"
AMOUNT = "amount"
FIXED_PRICE = "fixed_price"
DISCOUNT_KINDS = (PERCENT, AMOUNT, FIXED_PRICE)


def quantize_money(value: Decimal) -> Decimal:
    """Round a Decimal amount half-up to cents (the one rounding rule).

    Args:
        value: any Decimal amount in the shop currency.

    Returns:
        ``value`` rounded ``ROUND_HALF_UP`` to 2 decimal places.
    """
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class CartItem:
    """One cart line as the engine sees it.

    Attributes:
        product_id: the product's primary key (any hashable id).
        quantity: units in the cart, an ``int`` >= 1.
        unit_price: the catalogue's shelf price per unit (``Decimal``, >= 0).
    """

    product_id: int
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True)
class CampaignSpec:
    """A live bundle campaign as the engine sees it.

    Attributes:
        campaign_id: the campaign's primary key (ties are broken by it).
        discount_type: ``percent``, ``amount`` or ``fixed_price``.
        discount_value: ``Decimal`` >= 0 (percent, amount off per bundle, or bundle price).
        items: ``((product_id, units_per_bundle), ...)``; units >= 1.
        name: display name, carried through to the result.
    """

    campaign_id: int
    discount_type: str
    discount_value: Decimal
    items: tuple[tuple[int, int], ...]
    name: str = ""


@dataclass(frozen=True)
class BundleLine:
    """All identical bundles of one campaign in the cart.

    Attributes:
        campaign_id / name: the campaign.
        count: number of bundles formed (>= 1).
        items: ``((product_id, units_per_bundle, unit_price), ...)``.
        regular_amount: ``count`` × the bundle's regular price (Decimal).
        discount: the bundle line's discount, rounded once half-up to cents.
        total: ``regular_amount - discount`` (never negative).
    """

    campaign_id: int
    name: str
    count: int
    items: tuple[tuple[int, int, Decimal], ...]
    regular_amount: Decimal
    discount: Decimal

    @property
    def total(self) -> Decimal:
        """What the shopper pays for this bundle line (Decimal)."""
        return self.regular_amount - self.discount


@dataclass(frozen=True)
class PricedLine:
    """One product line of the priced cart.

    Attributes:
        product_id, quantity, unit_price: as given (unit_price from the catalogue).
        regular_amount: ``quantity * unit_price``.
        discount: this line's share of the bundle discounts (Decimal, cents);
            the shares of all lines sum exactly to ``PricingResult.discount_total``.
        bundled_quantity: units of this line inside bundles.
        campaign_ids: campaigns whose bundles use this line's units, most units first.
    """

    product_id: int
    quantity: int
    unit_price: Decimal
    regular_amount: Decimal
    discount: Decimal = ZERO
    bundled_quantity: int = 0
    campaign_ids: tuple[int, ...] = ()

    @property
    def total(self) -> Decimal:
        """Line amount after its discount share (Decimal, never negative)."""
        return self.regular_amount - self.discount

    @property
    def campaign_id(self) -> int | None:
        """The campaign that took most of this line's units (None when unbundled)."""
        return self.campaign_ids[0] if self.campaign_ids else None


@dataclass(frozen=True)
class PricingResult:
    """A priced cart.

    Attributes:
        lines: one ``PricedLine`` per product, in input order.
        bundles: one ``BundleLine`` per campaign used, in the order they were formed.
        subtotal: sum of the lines' regular amounts.
        discount_total: sum of the bundle lines' discounts.
        total: ``subtotal - discount_total``.
    """

    lines: tuple[PricedLine, ...]
    bundles: tuple[BundleLine, ...]
    subtotal: Decimal
    discount_total: Decimal
    total: Decimal

    @property
    def bundles_used(self) -> int:
        """Number of bundles formed across all campaigns."""
        return sum(b.count for b in self.bundles)

    @property
    def campaign_ids(self) -> tuple[int, ...]:
        """Ids of the campaigns whose bundles were formed."""
        return tuple(b.campaign_id for b in self.bundles)


def bundle_regular_price(items: Iterable[tuple[int, int]], prices: Mapping[int, Decimal]) -> Decimal:
    """Regular (undiscounted) price of one bundle.

    Args:
        items: ``(product_id, units_per_bundle)`` pairs.
        prices: catalogue unit price per product id (Decimal).

    Returns:
        ``sum(units * price)`` as Decimal.

    Raises:
        KeyError: if a product of the bundle has no price.
    """
    return sum((prices[pid] * qty for pid, qty in items), ZERO)


def bundle_line_discount(discount_type: str, discount_value: Decimal, regular_amount: Decimal, count: int) -> Decimal:
    """Discount on a bundle line of ``count`` identical bundles, rounded once.

    Args:
        discount_type: ``percent`` / ``amount`` / ``fixed_price``.
        discount_value: the campaign's value (Decimal, >= 0).
        regular_amount: the bundle line's regular amount (``count`` bundles together).
        count: number of bundles on the line (>= 0).

    Returns:
        Decimal discount, ``ROUND_HALF_UP`` to cents once on the whole line,
        clamped to ``[0, regular_amount]``: a discount never makes the bundle
        negative, and a fixed price above the regular price gives no discount.

    Raises:
        ValueError: for an unknown discount type or a negative value.
    """
    value = Decimal(discount_value)
    if value < 0:
        raise ValueError(f"discount value must be >= 0, got {value}")
    if discount_type == PERCENT:
        raw = regular_amount * value / HUNDRED
    elif discount_type == AMOUNT:
        raw = value * count
    elif discount_type == FIXED_PRICE:
        raw = regular_amount - value * count
    else:
        raise ValueError(f"unknown discount type {discount_type!r}; expected one of {DISCOUNT_KINDS}")
    discount = quantize_money(raw)
    if discount < 0:
        return ZERO
    return min(discount, quantize_money(regular_amount))


def bundle_price(discount_type: str, discount_value: Decimal, regular_price: Decimal) -> tuple[Decimal, Decimal]:
    """Price of a single bundle as shown on the product page.

    Args:
        discount_type, discount_value: the campaign's discount.
        regular_price: the bundle's regular price (Decimal).

    Returns:
        ``(bundle_price, saving)``, both Decimal cents; ``saving`` follows
        ``bundle_line_discount`` with ``count=1``, so it is never negative and
        ``bundle_price`` is never below zero.
    """
    saving = bundle_line_discount(discount_type, discount_value, regular_price, 1)
    return quantize_money(regular_price) - saving, saving


def _unit_saving(spec: CampaignSpec, prices: Mapping[int, Decimal]) -> Decimal:
    """Unrounded saving of one bundle, used only to rank campaigns."""
    regular = bundle_regular_price(spec.items, prices)
    value = Decimal(spec.discount_value)
    if spec.discount_type == PERCENT:
        saving = regular * value / HUNDRED
    elif spec.discount_type == AMOUNT:
        saving = value
    elif spec.discount_type == FIXED_PRICE:
        saving = regular - value
    else:
        raise ValueError(f"unknown discount type {spec.discount_type!r}; expected one of {DISCOUNT_KINDS}")
    return max(ZERO, min(saving, regular))


def allocate(amount: Decimal, weights: Sequence[Decimal]) -> list[Decimal]:
    """Split a cent amount over weights so the shares sum exactly to it.

    Largest-remainder method: each share is ``amount * w / sum(w)`` rounded
    down to cents, then the left-over cents go one each to the largest
    remainders (ties: earliest). When ``0 <= amount <= sum(weights)`` and the
    weights are cent amounts, no share exceeds its weight.

    Args:
        amount: Decimal with at most 2 places.
        weights: non-negative Decimals.

    Returns:
        list of Decimal cent shares, same length as ``weights``.
    """
    total_weight = sum(weights, ZERO)
    if not weights:
        return []
    if total_weight == 0:
        return [ZERO for _ in weights]
    raw = [amount * w / total_weight for w in weights]
    shares = [r.quantize(CENT, rounding=ROUND_DOWN) for r in raw]
    left = int(((amount - sum(shares, ZERO)) / CENT).to_integral_value())
    order = sorted(range(len(weights)), key=lambda i: (-(raw[i] - shares[i]), i))
    for i in order[:left]:
        shares[i] += CENT
    return shares


def gives_bundle_away(discount_type: str, discount_value, regular_price: Decimal) -> bool:
    """True when one bundle would cost 0.00 after the discount (rounded half-up to cents, as charged)
    although its regular price is above 0.00: 100 % off, an amount at or above the regular price, a
    fixed price of 0.00, or a percentage such as 99.99 % that rounds to the whole price."""
    return regular_price > 0 and bundle_price(discount_type, Decimal(discount_value), regular_price)[0] <= 0


def is_no_discount(discount_type: str, discount_value) -> bool:
    """True for a "frequently bought together" campaign at the normal price (0 % or 0.00 off).

    Such a bundle still forms in the cart (discount 0.00) so the order is
    linked to its campaign and the offer's attach rate can be measured; it
    never takes units from a bundle that saves the shopper money, because
    bundles are formed by saving, largest first. The storefront shows it as
    "together at normal prices" (``selectors.offers.Offer.no_discount``).
    """
    return discount_type in (PERCENT, AMOUNT) and Decimal(discount_value) == 0


def _best_bundle_counts(usable: Sequence[tuple[Decimal, CampaignSpec]], units: Mapping[int, int]) -> dict[int, int] | None:
    """Bundles per saving campaign that give the shopper the largest total saving, or None when
    taking campaigns one by one (largest saving per bundle first) already does.

    Greedy is optimal unless two saving campaigns share a product. Then this
    solves the integer program  max Σ_c s_c·x_c  subject to  Σ_c q_cp·x_c ≤ n_p
    for every product p, x_c ≥ 0 integer (s_c: unrounded saving of one bundle,
    q_cp: units of p per bundle, n_p: units in the cart) with
    ``scipy.optimize.milp`` (HiGHS). Equal totals go to the campaigns earlier
    in ``usable`` (larger saving per bundle, then lower id) through a tie-break
    term far below a cent. Example: {A, B} 10.00 off, {A, C} 6.00 off and
    {B, D} 6.00 off on a cart of A, B, C, D: greedy takes {A, B} (10.00), the
    program takes the other two (12.00).

    Args:
        usable: ``(saving, spec)`` in the engine's order (saving Decimal ≥ 0;
            no-discount campaigns, saving 0, are left to the greedy pass).
        units: product id → units in the cart.

    Returns:
        ``{campaign_id: bundles}`` for the saving campaigns, or None (greedy).
    """
    saving = [(s, spec) for s, spec in usable if s > 0]
    seen: set[int] = set()
    shared = False
    for _, spec in saving:
        pids = {pid for pid, _ in spec.items}
        shared = shared or bool(pids & seen)
        seen |= pids
    if not shared:
        return None
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    products = sorted(seen)
    row = {pid: i for i, pid in enumerate(products)}
    n = len(saving)
    a = np.zeros((len(products), n))
    for j, (_, spec) in enumerate(saving):
        for pid, qty in spec.items:
            a[row[pid], j] += qty
    objective = -np.array([float(s) + 1e-7 * (n - j) / n for j, (s, _) in enumerate(saving)])
    result = milp(objective, constraints=LinearConstraint(a, -np.inf, [units[pid] for pid in products]),
                  integrality=np.ones(n), bounds=Bounds(0, np.inf),
                  options={"mip_rel_gap": 0.0})  # solved to the optimum, so the tie-break term decides ties
    if result.status != 0 or result.x is None:  # not expected for this bounded program; greedy is safe
        return None
    return {spec.campaign_id: int(round(x)) for (_, spec), x in zip(saving, result.x)}


def price_cart(items: Sequence[CartItem], campaigns: Iterable[CampaignSpec]) -> PricingResult:
    """Form bundles in a cart and price it.

    Args:
        items: cart lines; prices must come from the catalogue. Lines with the
            same product id are merged; lines with quantity <= 0 are ignored.
        campaigns: live campaigns to consider (the caller filters status,
            window and item availability). Campaigns whose products are not
            all in the cart simply form no bundle, nor do campaigns whose
            discount would make the bundle free at the current prices (e.g. a
            fixed amount off at or above a bundle total cut by a price change).

    Returns:
        ``PricingResult``. Bundles give the shopper the largest total saving:
        when saving campaigns share products, the bundles per campaign come from
        an integer program (:func:`_best_bundle_counts`); otherwise the
        campaign with the largest saving per bundle (ties: lower
        ``campaign_id``) takes as many whole bundles as the remaining units
        allow, then the next. No-discount "frequently bought together"
        campaigns (saving 0) take what is left; a unit joins at most one bundle. Each bundle line's discount is rounded once
        half-up to cents (see module docstring) and spread over the product
        lines with ``allocate`` in proportion to their regular amounts, so the
        lines' discounts sum exactly to ``discount_total``.

    Raises:
        ValueError: for a negative unit price or an unknown discount type.
    """
    merged: dict[int, list] = {}
    for item in items:
        if item.quantity <= 0:
            continue
        price = Decimal(item.unit_price)
        if price < 0:
            raise ValueError(f"negative unit price for product {item.product_id}")
        if item.product_id in merged:
            merged[item.product_id][0] += item.quantity
        else:
            merged[item.product_id] = [item.quantity, price]

    prices = {pid: data[1] for pid, data in merged.items()}
    remaining = {pid: data[0] for pid, data in merged.items()}

    usable = []
    for spec in campaigns:
        if not spec.items or any(qty <= 0 or pid not in prices for pid, qty in spec.items):
            continue
        saving = _unit_saving(spec, prices)
        if gives_bundle_away(spec.discount_type, spec.discount_value, bundle_regular_price(spec.items, prices)):
            continue  # e.g. a shelf price cut below a fixed discount: no bundle rather than a free one
        if saving > 0 or is_no_discount(spec.discount_type, spec.discount_value):
            usable.append((saving, spec))
    # Best deal for the shopper first; the id makes equal savings deterministic.
    usable.sort(key=lambda pair: (-pair[0], pair[1].campaign_id))
    planned = _best_bundle_counts(usable, remaining)

    bundles: list[BundleLine] = []
    # product id -> {campaign id: [units, discount share]}
    per_line: dict[int, dict[int, list]] = defaultdict(dict)
    for saving, spec in usable:
        count = min(remaining[pid] // qty for pid, qty in spec.items)
        if planned is not None and saving > 0:
            count = min(count, planned.get(spec.campaign_id, 0))
        if count <= 0:
            continue
        for pid, qty in spec.items:
            remaining[pid] -= qty * count
        regular = bundle_regular_price(spec.items, prices) * count
        discount = bundle_line_discount(spec.discount_type, spec.discount_value, regular, count)
        if discount <= 0 and not is_no_discount(spec.discount_type, spec.discount_value):
            for pid, qty in spec.items:
                remaining[pid] += qty * count
            continue
        bundles.append(BundleLine(
            campaign_id=spec.campaign_id,
            name=spec.name,
            count=count,
            items=tuple((pid, qty, prices[pid]) for pid, qty in spec.items),
            regular_amount=quantize_money(regular),
            discount=discount,
        ))
        shares = allocate(discount, [prices[pid] * qty * count for pid, qty in spec.items])
        for (pid, qty), share in zip(spec.items, shares):
            entry = per_line[pid].setdefault(spec.campaign_id, [0, ZERO])
            entry[0] += qty * count
            entry[1] += share

    lines = []
    for pid, (quantity, price) in merged.items():
        used = per_line.get(pid, {})
        ranked = sorted(used.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        lines.append(PricedLine(
            product_id=pid,
            quantity=quantity,
            unit_price=price,
            regular_amount=quantize_money(price * quantity),
            discount=sum((v[1] for v in used.values()), ZERO),
            bundled_quantity=sum(v[0] for v in used.values()),
            campaign_ids=tuple(cid for cid, _ in ranked),
        ))

    subtotal = sum((line.regular_amount for line in lines), ZERO)
    discount_total = sum((b.discount for b in bundles), ZERO)
    return PricingResult(
        lines=tuple(lines),
        bundles=tuple(bundles),
        subtotal=subtotal,
        discount_total=discount_total,
        total=subtotal - discount_total,
    )
