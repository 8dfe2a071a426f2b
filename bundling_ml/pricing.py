"""Suggested bundle discount.

Rule (a simple, documented heuristic, not a learned price model): a bundle
whose items already sell together strongly needs a small incentive; a weak
natural association needs a larger one.

    strength = 0.5 * min(1, confidence / 0.30) + 0.5 * min(1, max(0, ln(lift)) / ln(5))
    discount = 15 - 10 * strength          (percent, so always within 5..15)

rounded to the nearest 0.5 percentage point (half away from zero). Examples:
confidence 0.30 or more together with lift 5 or more -> 5.0 %; confidence 0
and lift <= 1 -> 15.0 %; confidence 0.15 and lift 2.236 (half strength on both)
-> 10.0 %. ``confidence`` is the attach rate P(companions | anchor) and
``lift`` the rule lift (see :mod:`bundling_ml.stats`).
"""
from __future__ import annotations

import math

import numpy as np

MIN_DISCOUNT = 5.0
MAX_DISCOUNT = 15.0
CONFIDENCE_FULL = 0.30
LIFT_FULL = 5.0


def association_strength(lift, confidence):
    """Strength in [0, 1] (float or float64 array) from lift and confidence; see module docstring."""
    lift = np.asarray(lift, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    c = np.clip(np.nan_to_num(confidence) / CONFIDENCE_FULL, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.where(lift > 1.0, np.log(np.where(lift > 1.0, lift, 1.0)), 0.0)
    lf = np.clip(np.nan_to_num(ll) / math.log(LIFT_FULL), 0.0, 1.0)
    s = 0.5 * c + 0.5 * lf
    return float(s) if s.ndim == 0 else s


def suggested_discount_percent(lift, confidence):
    """Suggested bundle discount in percent, 5.0 .. 15.0, rounded to 0.5.

    Args:
        lift: rule lift of the bundle (float or array; >= 0).
        confidence: attach rate P(companions | anchor) in [0, 1] (float or array).

    Returns:
        float (or float64 array of the broadcast shape) percent, a multiple
        of 0.5, e.g. 10.0 for a 10 % discount.
    """
    raw = MAX_DISCOUNT - (MAX_DISCOUNT - MIN_DISCOUNT) * np.asarray(association_strength(lift, confidence))
    out = np.floor(raw * 2.0 + 0.5) / 2.0
    out = np.clip(out, MIN_DISCOUNT, MAX_DISCOUNT)
    return float(out) if out.ndim == 0 else out
