"""Bundle economics: how take rate responds to discount depth, and the discount that maximises margin.

Pure numpy / pandas; no Django, no settings (the caller passes every number).
See ``docs/economics.md`` for the longer write-up.

Model
-----
The take rate of a shown bundle offer at discount depth ``d`` (a fraction of
the bundle's regular price, 0.10 = 10 % off) is logistic in ``d``::

    take(d) = sigmoid(a + b * d),   sigmoid(z) = 1 / (1 + exp(-z))

``take`` is the *incremental* take: the share of shoppers shown the offer who
buy the bundle because of it. ``a`` is anchored per bundle at the base take
rate (``a = logit(base_take_rate)``: the take of a shown offer with no
discount); ``b`` (log-odds per unit of depth) is the department's discount
responsiveness, fitted from the Complete Journey lines.

Fit of ``b`` per department (``fit_department_responses``)
---------------------------------------------------------
The Complete Journey lines carry the shelf value (``sales_value +
retail_disc + coupon_match_disc``) and the discounts (``retail_disc``,
``coupon_disc``). For each (product, week) we count the units sold and the
units bought on discount, and the week's depth ``d`` = discount amount /
shelf value of the discounted lines. On product-weeks with a discount
(``d > 0``), the share of units bought on discount is regressed on ``d`` with
a binomial GLM (logit link, units as trials, IRLS / Newton): deeper discounts
draw a larger share of a product's units onto the discount. The slope ``b`` is
the department's responsiveness.

Assumptions: (1) bundle shoppers respond to depth with the same log-odds
slope as discount take-up in the bundle's department (the slope is taken from
the anchor's department); (2) depth effects are the same at every price level
(depth is relative); (3) product-weeks are independent; confounders such as
displays and mailers are ignored, so ``b`` is an association, not a causal
estimate. Thin data: departments with fewer than ``min_obs`` discounted
product-weeks, or a non-positive / non-finite fit, use the conservative prior
``PRIOR_SLOPE`` (3.0: 10 % off multiplies the odds of taking by e^0.3 ≈ 1.35);
other fits are shrunk to the prior with weight ``prior_weight`` product-weeks
(``b = (n * b_hat + n0 * prior) / (n + n0)``) and clipped to ``[0, MAX_SLOPE]``.

Optimiser (``optimise_discount``)
---------------------------------
Expected incremental margin per offer shown at depth ``d``::

    margin(d) = take(d) * (R * (1 - d) - C)  -  d * R * natural_attach_rate

``R`` is the bundle's regular price, ``C`` its cost; the second term is the
cannibalisation: the discount given away on bundles that shoppers would have
bought anyway (``natural_attach_rate`` = how often the items already sell
together without an offer, e.g. the confidence anchor → companions).
Incremental revenue is the same with ``C = 0``. Depths whose bundle price
falls below the margin floor ``C * (1 + min_margin_rate)`` are not allowed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(7))  # 0, .05, ..., .30
PRIOR_SLOPE = 3.0
MAX_SLOPE = 15.0
MIN_OBS = 30
PRIOR_WEIGHT = 100.0


def sigmoid(z):
    """Logistic function 1 / (1 + exp(-z)); float or ndarray in, same shape out (numerically stable)."""
    z = np.asarray(z, dtype="float64")
    out = np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))
    return float(out) if out.ndim == 0 else out


def logit(p: float) -> float:
    """log(p / (1 - p)) with p clipped to [1e-6, 1 - 1e-6]."""
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class TakeResponse:
    """A fitted (or prior) logistic response ``take(d) = sigmoid(a + b*d)``.

    Attributes:
        a: intercept (log-odds at d = 0) of the fit on discount take-up.
        b: slope, log-odds per unit of depth (d = 1.0 means 100 % off).
        n_obs: discounted product-weeks used (0 for the prior).
        source: ``"fit"``, ``"shrunk"`` (fit pulled towards the prior), ``"capped"`` (shrunk and
            still above ``MAX_SLOPE``, so ``b = MAX_SLOPE``) or ``"prior"``.
    """

    a: float
    b: float
    n_obs: int = 0
    source: str = "prior"

    def take(self, d, base_take_rate: float | None = None):
        """Take rate at depth ``d`` (float or array of fractions).

        With ``base_take_rate`` the intercept is re-anchored at
        ``logit(base_take_rate)`` (the bundle's own take with no discount) and only
        the slope ``b`` is used; without it the fitted intercept ``a`` is used.
        """
        a = self.a if base_take_rate is None else logit(base_take_rate)
        return sigmoid(a + self.b * np.asarray(d, dtype="float64"))

    def as_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        return asdict(self)


PRIOR = TakeResponse(a=0.0, b=PRIOR_SLOPE, n_obs=0, source="prior")


def product_week_frame(lines: pd.DataFrame) -> pd.DataFrame:
    """Aggregate order lines to (department, product, week) discount take-up.

    Args:
        lines: one row per order line with columns ``department`` (str),
            ``product_id``, ``week`` (int or any period key), ``quantity``
            (units, > 0), ``shelf_amount`` (shelf value of the line, currency,
            > 0) and ``discount`` (discount amount on the line, currency >= 0;
            Complete Journey: ``retail_disc + coupon_disc``, signs made positive).

    Returns:
        DataFrame with department, product_id, week, units (float), disc_units
        (units on lines with a discount), depth (discount / shelf value over
        the discounted lines, 0..1; 0 when none was discounted).
    """
    frame = lines[(lines["quantity"] > 0) & (lines["shelf_amount"] > 0)].copy()
    disc = frame["discount"].abs().clip(upper=frame["shelf_amount"])
    frame["on_disc"] = disc > 0.005
    frame["disc_amount"] = np.where(frame["on_disc"], disc, 0.0)
    frame["disc_shelf"] = np.where(frame["on_disc"], frame["shelf_amount"], 0.0)
    frame["disc_units"] = np.where(frame["on_disc"], frame["quantity"], 0.0)
    grouped = frame.groupby(["department", "product_id", "week"], sort=True, observed=True).agg(
        units=("quantity", "sum"), disc_units=("disc_units", "sum"),
        disc_amount=("disc_amount", "sum"), disc_shelf=("disc_shelf", "sum")).reset_index()
    grouped["depth"] = np.where(grouped["disc_shelf"] > 0, grouped["disc_amount"] / grouped["disc_shelf"].where(
        grouped["disc_shelf"] > 0, 1.0), 0.0)
    return grouped[["department", "product_id", "week", "units", "disc_units", "depth"]]


def fit_logistic(depth: np.ndarray, successes: np.ndarray, trials: np.ndarray, *, iterations: int = 50,
                 ridge: float = 1e-6) -> tuple[float, float]:
    """Binomial GLM with logit link: successes/trials ~ sigmoid(a + b*depth), by Newton-Raphson (IRLS).

    Args:
        depth: (n,) float depths.
        successes: (n,) units bought on discount.
        trials: (n,) units sold (> 0).
        iterations: at most this many Newton steps (stops when the step < 1e-10).
        ridge: tiny L2 term keeping the Hessian invertible.

    Returns:
        ``(a, b)`` maximum-likelihood estimates (floats; may be +/- large on separable data).
    """
    x = np.column_stack([np.ones_like(depth, dtype="float64"), np.asarray(depth, dtype="float64")])
    y = np.asarray(successes, dtype="float64")
    n = np.asarray(trials, dtype="float64")
    p0 = min(max(y.sum() / max(n.sum(), 1e-12), 1e-4), 1 - 1e-4)
    beta = np.array([math.log(p0 / (1 - p0)), 0.0])
    for _ in range(iterations):
        p = sigmoid(x @ beta)
        w = n * p * (1 - p)
        grad = x.T @ (y - n * p) - ridge * beta
        hess = (x * w[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def fit_department_responses(product_weeks: pd.DataFrame, *, min_obs: int = MIN_OBS,
                             prior_slope: float = PRIOR_SLOPE, prior_weight: float = PRIOR_WEIGHT
                             ) -> dict[str, TakeResponse]:
    """Fit ``take(d) = sigmoid(a + b*d)`` per department from ``product_week_frame`` output.

    Only discounted product-weeks (depth > 0) are used; the response is the
    share of the product-week's units bought on discount, weighted by units.

    Args:
        product_weeks: frame of ``product_week_frame``.
        min_obs: fewer discounted product-weeks than this → the prior.
        prior_slope: the conservative prior slope (log-odds per unit depth).
        prior_weight: pseudo product-weeks of the prior in the shrinkage.

    Returns:
        ``{department: TakeResponse}``; the key ``"*"`` holds the fit over all
        departments (the fallback for a department not listed).
    """
    out: dict[str, TakeResponse] = {}
    data = product_weeks[(product_weeks["depth"] > 0) & (product_weeks["units"] > 0)]
    groups = [("*", data)] + [(str(k), g) for k, g in data.groupby("department", sort=True)]
    for name, group in groups:
        n = int(len(group))
        if n < min_obs:
            out[name] = TakeResponse(a=0.0, b=prior_slope, n_obs=n, source="prior")
            continue
        a, b = fit_logistic(group["depth"].to_numpy(), group["disc_units"].to_numpy(), group["units"].to_numpy())
        if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
            out[name] = TakeResponse(a=a if math.isfinite(a) else 0.0, b=prior_slope, n_obs=n, source="prior")
            continue
        shrunk = (n * b + prior_weight * prior_slope) / (n + prior_weight)
        source = "capped" if shrunk > MAX_SLOPE else "shrunk"  # the panel says "capped at 15", not "shrunk"
        out[name] = TakeResponse(a=a, b=float(min(max(shrunk, 0.0), MAX_SLOPE)), n_obs=n, source=source)
    return out


def response_for(responses: Mapping[str, TakeResponse], department: str) -> TakeResponse:
    """The department's response, else the all-departments fit ``"*"``, else ``PRIOR``."""
    return responses.get(department) or responses.get("*") or PRIOR


def optimise_discount(regular_price: float, cost: float, base_take_rate: float, natural_attach_rate: float,
                      response: TakeResponse | Callable[[float], float], *, grid: Iterable[float] = DEFAULT_GRID,
                      min_margin_rate: float = 0.0) -> dict:
    """Choose the discount depth that maximises expected incremental margin per offer shown.

    Formula (per offer shown, currency units)::

        take(d)    = response.take(d, base_take_rate)  (or response(d) for a callable)
        revenue(d) = take(d) * R * (1 - d)  -  d * R * natural_attach_rate
        margin(d)  = take(d) * (R * (1 - d) - C)  -  d * R * natural_attach_rate

    Args:
        regular_price: R, the bundle's regular price (sum of shelf prices, > 0).
        cost: C, the bundle's unit cost (>= 0; use a default margin rate when unknown).
        base_take_rate: incremental take of the shown offer at d = 0 (0..1).
        natural_attach_rate: share of shown shoppers who buy the bundle anyway (0..1).
        response: a ``TakeResponse`` (its slope is used, anchored at ``base_take_rate``) or
            a callable ``d -> take rate`` used as is.
        grid: candidate depths (fractions 0..1).
        min_margin_rate: margin floor; bundle price must be >= C * (1 + min_margin_rate).

    Returns:
        dict: ``discount`` (chosen depth, float), ``discount_percent``, ``take_rate``,
        ``incremental_revenue``, ``incremental_margin`` (at the chosen depth),
        ``floor_price`` (C * (1 + min margin)), ``floor_binding`` (True when the best
        depth without the floor breaks it), ``feasible`` (False when no depth meets
        the floor; then the smallest depth is returned), ``regular_price``, ``cost``,
        ``table`` (one row per grid depth: discount, take_rate, bundle_price,
        incremental_revenue, incremental_margin, allowed) and ``neighbours`` (the
        table rows next to and including the chosen one).
    """
    R, C = float(regular_price), float(cost)
    depths = sorted({round(float(d), 6) for d in grid})
    if not depths:
        raise ValueError("empty discount grid")
    floor = C * (1 + float(min_margin_rate))
    table = []
    for d in depths:
        take = float(response(d)) if callable(response) and not isinstance(response, TakeResponse) else float(
            response.take(d, base_take_rate))
        price = R * (1 - d)
        cannibal = d * R * float(natural_attach_rate)
        table.append({
            "discount": d,
            "take_rate": round(take, 6),
            "bundle_price": round(price, 4),
            "incremental_revenue": round(take * price - cannibal, 6),
            "incremental_margin": round(take * (price - C) - cannibal, 6),
            "allowed": bool(price >= floor - 1e-9),
        })
    best_any = max(range(len(table)), key=lambda i: (table[i]["incremental_margin"], -i))
    allowed = [i for i, row in enumerate(table) if row["allowed"]]
    feasible = bool(allowed)
    best = max(allowed, key=lambda i: (table[i]["incremental_margin"], -i)) if feasible else 0
    row = table[best]
    return {
        "discount": row["discount"],
        "discount_percent": round(row["discount"] * 100, 2),
        "take_rate": row["take_rate"],
        "incremental_revenue": row["incremental_revenue"],
        "incremental_margin": row["incremental_margin"],
        "floor_price": round(floor, 4),
        "floor_binding": bool(best_any != best),
        "feasible": feasible,
        "regular_price": round(R, 4),
        "cost": round(C, 4),
        "table": table,
        "neighbours": table[max(best - 1, 0): best + 2],
    }
