"""Rate intervals stay inside [0, 1] (a normal interval of a 0/1 mean does not with few visitors)."""
import math

import numpy as np
import pytest

from bundling_ml.abtest import Z95, compare_groups, mean_estimate, rate_estimate


def test_three_visitors_one_attached_gives_the_clipped_interval():
    raw = mean_estimate([1, 0, 0])
    se = math.sqrt(1 / 3) / math.sqrt(3)  # sample sd sqrt(1/3), n = 3
    assert raw.low == pytest.approx(1 / 3 - Z95 * se) and raw.low == pytest.approx(-0.3200, abs=1e-4)
    assert raw.high == pytest.approx(0.9867, abs=1e-4)
    clipped = rate_estimate([1, 0, 0])
    assert clipped.value == pytest.approx(1 / 3) and clipped.se == pytest.approx(se)
    assert clipped.low == 0.0 and clipped.high == pytest.approx(1 / 3 + Z95 * se)


def test_compare_groups_clips_attach_rate_but_not_money_and_has_no_interval_below_two_visitors():
    treatment = {"attached": np.array([1, 1, 0]), "orders": np.array([1, 1, 1]),
                 "revenue": np.array([10.0, -30.0, 5.0]), "margin": np.array([1.0, 2.0, 3.0])}
    holdout = {"attached": np.array([0]), "orders": np.array([1]), "revenue": np.array([4.0]),
               "margin": np.array([1.0])}
    out = compare_groups(treatment, holdout)
    t = out["attach_rate"]["treatment"]
    assert t["high"] == 1.0 and 0.0 < t["low"] < 2 / 3
    assert out["revenue_per_visitor"]["treatment"]["low"] < -20  # money is not clipped
    h = out["attach_rate"]["holdout"]
    assert h["value"] == 0.0 and math.isnan(h["low"]) and math.isnan(h["high"])  # 1 visitor: too few
