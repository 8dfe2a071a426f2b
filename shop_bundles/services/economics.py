"""Bundle economics in the database: fit the take-rate response per department and price suggestions.

The maths lives in ``bundling_ml.economics`` (pure, documented there and in
``docs/economics.md``); this module reads the inputs from the database and
writes ``BundleSuggestion.economics``. Called by ``services.scoring`` after
the new suggestions are built (Celery ``ml`` queue), never in a web request.
"""
from __future__ import annotations

import logging
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable, Sequence

import pandas as pd
from django.db.models import Case, DecimalField, F, Sum, When
from django.db.models.functions import TruncWeek

from .. import app_settings
from ..models import BundleSuggestion, Order, OrderLine, Product

logger = logging.getLogger(__name__)


def department_responses_fit(*, orders=None) -> dict:
    """Fit ``take(d) = sigmoid(a + b*d)`` per department from imported order lines.

    One GROUP BY in PostgreSQL to (department, product, week): units, units on
    lines with a discount, discount amount and shelf value of the discounted
    lines (``OrderLine.discount`` holds the Complete Journey ``retail_disc +
    coupon_disc (+ coupon_match_disc)``, ``unit_price`` the shelf price); then
    ``bundling_ml.economics.fit_department_responses``.

    Args:
        orders: queryset of orders to learn from (default: imported orders only, so
            storefront bundle discounts and simulated orders never feed the fit).

    Returns:
        ``{department: bundling_ml.economics.TakeResponse}`` with the ``"*"`` fallback.
    """
    from bundling_ml.economics import fit_department_responses, product_week_frame  # pure, no TensorFlow

    money = DecimalField(max_digits=16, decimal_places=2)
    # A plain join on the order's source, not ``order_id IN (subquery)``: on freshly loaded
    # tables without statistics PostgreSQL picks a nested loop for the subquery form.
    lines_qs = (OrderLine.objects.filter(order__source=Order.SOURCE_IMPORT) if orders is None
                else OrderLine.objects.filter(order__in=orders.values("pk")))
    until = app_settings.history_until()  # an out-of-sample replay's cut-off
    if until is not None:
        lines_qs = lines_qs.filter(order__placed_at__lt=until)
    rows = (lines_qs.filter(quantity__gt=0, unit_price__gt=0)
            .annotate(week=TruncWeek("order__placed_at"))
            .values("product__department", "product_id", "week")
            .annotate(units=Sum("quantity"),
                      disc_units=Sum(Case(When(discount__gt=0, then=F("quantity")), default=0)),
                      disc_amount=Sum(Case(When(discount__gt=0, then=F("discount")), default=0,
                                           output_field=money)),
                      disc_shelf=Sum(Case(When(discount__gt=0, then=F("unit_price") * F("quantity")), default=0,
                                          output_field=money)))
            .order_by())
    frame = pd.DataFrame.from_records(list(rows))
    if frame.empty:
        return fit_department_responses(pd.DataFrame(columns=["department", "product_id", "week", "units",
                                                              "disc_units", "depth"]))
    # One pseudo-line per product-week is enough for product_week_frame: undiscounted units as a
    # line without discount, discounted units as a line with the week's discount.
    plain = frame.assign(quantity=(frame["units"] - frame["disc_units"]).astype(float), shelf_amount=1.0,
                         discount=0.0)
    disc = frame.assign(quantity=frame["disc_units"].astype(float),
                        shelf_amount=frame["disc_shelf"].astype(float), discount=frame["disc_amount"].astype(float))
    lines = pd.concat([plain, disc], ignore_index=True).rename(columns={"product__department": "department"})
    lines["department"] = lines["department"].fillna("").astype(str)
    return fit_department_responses(product_week_frame(lines[["department", "product_id", "week", "quantity",
                                                              "shelf_amount", "discount"]]))


def bundle_cost(products: Iterable[Product]) -> tuple[Decimal, str]:
    """Unit cost of one bundle (one unit of each product), and where it came from.

    A product without ``cost`` is costed at ``price * (1 - margin rate of its
    department)`` (``SHOP_BUNDLES_DEFAULT_MARGIN_RATES``).

    Returns:
        ``(cost, source)``: Decimal cost rounded half-up to cents; source is
        ``"cost"`` (all known), ``"default margin"`` (none known) or ``"mixed"``.
    """
    total, known, unknown = Decimal("0"), 0, 0
    for p in products:
        if p.cost is not None:
            total += p.cost
            known += 1
        else:
            total += p.price * (Decimal("1") - Decimal(str(app_settings.margin_rate(p.department))))
            unknown += 1
    source = "cost" if not unknown else ("default margin" if not known else "mixed")
    return total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP), source


def suggestion_economics(*, products: Sequence[Product], natural_attach_rate: float, responses: dict) -> dict:
    """The economics of one bundle (products[0] is the anchor) as a JSON-ready dict.

    Returns:
        ``bundling_ml.economics.optimise_discount`` output plus ``department``,
        ``response`` (a, b, n_obs, source), ``cost_source``, ``base_take_rate``,
        ``natural_attach_rate`` and ``min_margin_rate``. Amounts are floats in
        shop currency per offer shown (display only; campaigns keep Decimal money).
    """
    from bundling_ml.economics import optimise_discount, response_for

    regular = sum((p.price for p in products), Decimal("0"))
    cost, cost_source = bundle_cost(products)
    department = products[0].department or ""
    response = response_for(responses, department)
    base = float(app_settings.get("BASE_TAKE_RATE"))
    min_margin = float(app_settings.get("MIN_MARGIN_RATE"))
    natural = min(max(float(natural_attach_rate or 0.0), 0.0), 1.0)
    result = optimise_discount(float(regular), float(cost), base, natural, response,
                               grid=tuple(app_settings.get("DISCOUNT_GRID")), min_margin_rate=min_margin)
    result.update({"department": department, "response": response.as_dict(), "cost_source": cost_source,
                   "base_take_rate": base, "natural_attach_rate": natural, "min_margin_rate": min_margin})
    return result


def suggestions_economics_fill(*, candidates: Sequence[tuple[BundleSuggestion, Sequence[Product]]],
                               responses: dict | None = None) -> int:
    """Set ``economics`` (and the suggested discount) on unsaved or saved suggestions, in memory.

    The natural attach rate is the suggestion's ``confidence`` (share of anchor
    baskets already holding the companions). The default offer discount
    (:func:`offer_row`: the optimiser's choice, 0 % included) becomes
    ``suggested_discount_percent`` and is stored as ``economics["offer"]``, so
    an approval with the defaults uses the discount the economics panel shows.

    Args:
        candidates: ``[(suggestion, [anchor, companion, ...]), ...]``.
        responses: department responses (default: ``department_responses_fit()``).

    Returns:
        number of suggestions filled (the caller saves them).
    """
    if not candidates:
        return 0
    responses = department_responses_fit() if responses is None else responses
    for suggestion, products in candidates:
        economics = suggestion_economics(products=list(products), natural_attach_rate=suggestion.confidence,
                                         responses=responses)
        offer = offer_row(economics)
        if offer is not None:
            economics["offer"] = offer
            suggestion.suggested_discount_percent = Decimal(str(round(offer["discount"] * 100, 2))).quantize(
                Decimal("0.01"))
        suggestion.economics = economics
    return len(candidates)


ZERO_DISCOUNT_NOTE = ("no discount on the grid earns more margin than it gives away, so the offer is "
                      "“frequently bought together” at the normal price")


def offer_row(economics: dict) -> dict | None:
    """The grid row a campaign uses by default: the optimiser's chosen discount, which may be 0 %.

    A "frequently bought together" offer at the normal price is a valid offer,
    so a chosen depth of 0 % is kept (it used to be replaced by the positive
    discount that loses least, which gave every such bundle a 5 % discount
    with a negative expected margin). ``note`` says why this discount.

    Returns:
        ``{"discount": float fraction, "take_rate", "incremental_revenue",
        "incremental_margin": float per offer shown, "note": str}``, or None when
        no depth on the grid respects the margin floor (no valid offer).
    """
    if not economics.get("feasible"):
        return None
    best = next((r for r in economics.get("table") or []
                 if r.get("allowed") and r["discount"] == economics.get("discount")), None)
    if best is None:
        return None
    if best["discount"] > 0:
        note = "the optimiser's choice: the most expected incremental margin per offer shown"
        if economics.get("floor_binding"):
            note += " within the margin floor"
    else:
        note = ZERO_DISCOUNT_NOTE
    return {"discount": best["discount"], "take_rate": best["take_rate"],
            "incremental_revenue": best["incremental_revenue"], "incremental_margin": best["incremental_margin"],
            "note": note}


def suggestions_economics_refresh(*, queryset=None) -> int:
    """Recompute and save ``economics`` for existing suggestions (default: pending ones).

    Returns:
        number of suggestions updated.
    """
    qs = (queryset if queryset is not None else BundleSuggestion.objects.filter(status=BundleSuggestion.PENDING))
    suggestions = list(qs.prefetch_related("items__product"))
    pairs = [(s, [i.product for i in s.items.all()]) for s in suggestions]
    count = suggestions_economics_fill(candidates=pairs)
    BundleSuggestion.objects.bulk_update(suggestions, ["economics", "suggested_discount_percent"], batch_size=1000)
    return count
