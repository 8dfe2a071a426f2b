"""Treatment-vs-holdout statistics: per-visitor means, ratio metrics, uplift and sample-ratio mismatch.

Pure numpy / scipy. Intervals are 95 % normal (Wald) intervals from the
*delta method*, documented per function; no resampling, so the numbers are
exact functions of the data (the known-answer tests recompute them by hand).

References: Deng, Knoblich & Lu (2018), "Applying the Delta Method in Metric
Analytics" (KDD) for ratio metrics and relative uplift; Fabijan et al. (2019),
"Diagnosing Sample Ratio Mismatch in Online Controlled Experiments" (KDD).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))  # 1.959963...
SRM_P_THRESHOLD = 0.001


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % interval (``low``, ``high``) and standard error."""

    value: float
    low: float
    high: float
    se: float

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def _nan_estimate() -> Estimate:
    return Estimate(math.nan, math.nan, math.nan, math.nan)


def mean_estimate(x) -> Estimate:
    """Mean of a per-visitor metric with a 95 % normal interval.

    Args:
        x: (n,) values, one per visitor (e.g. revenue per visitor, 0/1 attached).

    Returns:
        ``Estimate(mean, mean -/+ 1.96 * se, se)`` with ``se = s / sqrt(n)``
        (sample standard deviation, ddof = 1). NaN when n < 2.
    """
    x = np.asarray(x, dtype="float64")
    if x.size < 2:
        return _nan_estimate() if x.size == 0 else Estimate(float(x[0]), math.nan, math.nan, math.nan)
    m, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(m, m - Z95 * se, m + Z95 * se, se)


def clip_interval(e: Estimate, low: float, high: float) -> Estimate:
    """``e`` with its interval clipped to ``[low, high]`` (value and se unchanged; NaN stays NaN).

    Used for rates: a normal (Wald) interval of a 0/1 mean can leave [0, 1] with
    few visitors (3 visitors, 2 attached: 66.7 % [13.3 %, 120 %]); a rate outside
    [0, 1] is impossible, so the bound is the nearer end of the range.
    """
    lo = e.low if not math.isfinite(e.low) else min(max(e.low, low), high)
    hi = e.high if not math.isfinite(e.high) else min(max(e.high, low), high)
    return Estimate(e.value, lo, hi, e.se)


def rate_estimate(x) -> Estimate:
    """A rate (mean of 0/1 per visitor, e.g. attach rate): :func:`mean_estimate` clipped to [0, 1]."""
    return clip_interval(mean_estimate(x), 0.0, 1.0)


def ratio_estimate(num, den) -> Estimate:
    """Ratio of sums ``sum(num) / sum(den)`` over visitors (e.g. AOV = revenue / orders), delta method.

    With per-visitor pairs (y_i, x_i), R = ȳ / x̄ and
    ``Var(R) ≈ (s_y² - 2 R s_xy + R² s_x²) / (n x̄²)`` (sample moments, ddof = 1).

    Args:
        num: (n,) numerator per visitor (revenue).
        den: (n,) denominator per visitor (orders); visitors with 0 still count.

    Returns:
        ``Estimate``; all NaN when n == 0 or sum(den) == 0. With one visitor the value is that
        visitor's ratio and the interval and se are NaN (as :func:`mean_estimate`: too few
        visitors for an interval).

    Raises:
        ValueError: if ``num`` and ``den`` differ in length.
    """
    y, x = np.asarray(num, dtype="float64"), np.asarray(den, dtype="float64")
    n = y.size
    if x.size != n:
        raise ValueError(f"ratio_estimate: num has {n} visitors but den has {x.size}")
    if n == 0 or x.sum() == 0:
        return _nan_estimate()
    r = float(y.mean() / x.mean())
    if n < 2:
        return Estimate(r, math.nan, math.nan, math.nan)
    cov = np.cov(y, x, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * x.mean() ** 2)
    se = float(math.sqrt(max(var, 0.0)))
    return Estimate(r, r - Z95 * se, r + Z95 * se, se)


def difference(treatment: Estimate, holdout: Estimate) -> Estimate:
    """Absolute uplift ``t - h`` of two independent estimates: se = sqrt(se_t² + se_h²), 95 % normal interval."""
    d = treatment.value - holdout.value
    se = math.sqrt(treatment.se ** 2 + holdout.se ** 2)
    return Estimate(d, d - Z95 * se, d + Z95 * se, se)


def relative_uplift(treatment: Estimate, holdout: Estimate) -> Estimate:
    """Relative uplift ``t / h - 1`` of independent estimates, delta method, interval on the log scale.

    ``se`` is the delta-method standard error of the ratio,
    ``se(t/h) ≈ (t/h) sqrt(se_t²/t² + se_h²/h²)`` (Deng et al. 2018). When
    both estimates are positive the 95 % interval is formed for log(t/h),
    whose delta-method se is ``s = sqrt(se_t²/t² + se_h²/h²)``, and mapped
    back: ``[(t/h) exp(-1.96 s) - 1, (t/h) exp(1.96 s) - 1]`` (the Katz log
    interval for a ratio). It is skewed like the ratio itself and never goes
    below -100 %, which the symmetric interval did with a small holdout (e.g.
    -89 % [-119 %, -59 %] for 1 attach in 10 holdout visitors). With a zero
    or negative estimate (e.g. a negative margin) the symmetric interval on
    the ratio scale is used. NaN when ``h == 0``.
    """
    t, h = treatment.value, holdout.value
    if not h or not math.isfinite(h) or not math.isfinite(t):
        return _nan_estimate()
    r = t / h
    if t > 0 and h > 0:
        s = math.sqrt((treatment.se / t) ** 2 + (holdout.se / h) ** 2)
        return Estimate(r - 1, r * math.exp(-Z95 * s) - 1, r * math.exp(Z95 * s) - 1, r * s)
    se = abs(r) * math.sqrt((treatment.se / t) ** 2 + (holdout.se / h) ** 2) if t else abs(holdout.se / h)
    return Estimate(r - 1, r - 1 - Z95 * se, r - 1 + Z95 * se, se)


def sample_ratio_mismatch(observed: dict[str, int], expected_shares: dict[str, float], *,
                          threshold: float = SRM_P_THRESHOLD) -> dict:
    """Chi-square goodness-of-fit test of the assignment split (``scipy.stats.chisquare``).

    Args:
        observed: visitors per group, e.g. ``{"treatment": 9050, "holdout": 950}``.
        expected_shares: configured split, e.g. ``{"treatment": 0.9, "holdout": 0.1}``.
        threshold: warn below this p-value (0.001).

    Returns:
        ``{"statistic": float, "p_value": float, "mismatch": bool, "observed": {...},
        "expected": {group: expected count}}``; p = 1.0 and no mismatch when there are no visitors
        or a group's expected share is 0.
    """
    groups = list(expected_shares)
    counts = np.array([observed.get(g, 0) for g in groups], dtype="float64")
    total = counts.sum()
    shares = np.array([expected_shares[g] for g in groups], dtype="float64")
    expected = total * shares / shares.sum() if shares.sum() else shares
    if total == 0 or (expected <= 0).any():
        return {"statistic": 0.0, "p_value": 1.0, "mismatch": False,
                "observed": {g: int(c) for g, c in zip(groups, counts)},
                "expected": {g: float(e) for g, e in zip(groups, expected)}}
    statistic, p_value = stats.chisquare(counts, expected)
    return {"statistic": float(statistic), "p_value": float(p_value), "mismatch": bool(p_value < threshold),
            "observed": {g: int(c) for g, c in zip(groups, counts)},
            "expected": {g: float(e) for g, e in zip(groups, expected)}}


def compare_groups(treatment: dict, holdout: dict) -> dict:
    """All experiment metrics for two groups of visitors.

    Args:
        treatment, holdout: dicts of equal-length per-visitor arrays: ``attached``
            (0/1), ``orders`` (count), ``revenue`` and ``margin`` (currency).

    Returns:
        ``{metric: {"treatment": Estimate dict, "holdout": ..., "uplift": ..., "relative_uplift": ...},
        "visitors": {"treatment": n, "holdout": n}}`` for metrics ``attach_rate`` (mean of attached),
        ``aov`` (revenue / orders, delta method), ``revenue_per_visitor`` and ``margin_per_visitor``.
        The attach rate's group intervals are clipped to [0, 1] and its absolute uplift's to
        [-1, 1] (:func:`rate_estimate`); intervals are NaN ("too few visitors") below 2 visitors.
    """
    out: dict = {"visitors": {"treatment": int(len(treatment["revenue"])), "holdout": int(len(holdout["revenue"]))}}
    for metric, fn in (("attach_rate", lambda g: rate_estimate(g["attached"])),
                       ("aov", lambda g: ratio_estimate(g["revenue"], g["orders"])),
                       ("revenue_per_visitor", lambda g: mean_estimate(g["revenue"])),
                       ("margin_per_visitor", lambda g: mean_estimate(g["margin"]))):
        t, h = fn(treatment), fn(holdout)
        uplift = difference(t, h)
        if metric == "attach_rate":
            uplift = clip_interval(uplift, -1.0, 1.0)
        out[metric] = {"treatment": t.as_dict(), "holdout": h.as_dict(), "uplift": uplift.as_dict(),
                       "relative_uplift": relative_uplift(t, h).as_dict()}
    return out
