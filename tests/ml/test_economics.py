"""bundling_ml.economics: the discount optimiser, the margin floor and the take-rate fit (no Django)."""

import numpy as np
import pandas as pd
import pytest

from bundling_ml.economics import (
    MAX_SLOPE,
    PRIOR_SLOPE,
    TakeResponse,
    fit_department_responses,
    fit_logistic,
    optimise_discount,
    product_week_frame,
    sigmoid,
)

# A hand-made response curve: take rate per depth.
CURVE = {0.0: 0.05, 0.05: 0.08, 0.10: 0.14, 0.15: 0.16, 0.20: 0.17, 0.25: 0.18, 0.30: 0.19}
# margin(d) = take * (10 * (1 - d) - 6) - d * 10 * 0.1, computed by hand:
HAND_MARGIN = {0.0: 0.20, 0.05: 0.23, 0.10: 0.32, 0.15: 0.25, 0.20: 0.14, 0.25: 0.02, 0.30: -0.11}


def test_optimiser_finds_the_known_best_discount_on_a_hand_made_curve():
    result = optimise_discount(10.0, 6.0, 0.05, 0.1, lambda d: CURVE[round(d, 2)], min_margin_rate=0.0)
    assert result["discount"] == pytest.approx(0.10)
    assert result["incremental_margin"] == pytest.approx(0.32)
    assert result["take_rate"] == pytest.approx(0.14)
    # incremental revenue = 0.14 * 9 - 0.1 * 10 * 0.1
    assert result["incremental_revenue"] == pytest.approx(0.14 * 9 - 0.1)
    for row in result["table"]:
        assert row["incremental_margin"] == pytest.approx(HAND_MARGIN[round(row["discount"], 2)])
    assert [r["discount"] for r in result["neighbours"]] == pytest.approx([0.05, 0.10, 0.15])
    assert result["floor_binding"] is False and result["feasible"] is True


def test_margin_floor_binds_and_is_never_broken():
    # floor = 6 * 1.55 = 9.30 → bundle price 10 * (1 - d) >= 9.30 → d <= 0.05
    result = optimise_discount(10.0, 6.0, 0.05, 0.1, lambda d: CURVE[round(d, 2)], min_margin_rate=0.55)
    assert result["floor_price"] == pytest.approx(9.30)
    assert result["discount"] == pytest.approx(0.05)
    assert result["incremental_margin"] == pytest.approx(0.23)
    assert result["floor_binding"] is True
    assert [r["allowed"] for r in result["table"]] == [True, True, False, False, False, False, False]


def test_no_feasible_depth_returns_zero_discount_flagged():
    result = optimise_discount(10.0, 9.5, 0.05, 0.1, lambda d: CURVE[round(d, 2)], min_margin_rate=0.10)
    assert result["feasible"] is False and result["discount"] == 0.0


def test_logistic_response_anchored_at_base_take_rate():
    response = TakeResponse(a=1.0, b=4.0, n_obs=100, source="fit")
    assert response.take(0.0, 0.02) == pytest.approx(0.02)
    assert response.take(0.25, 0.02) == pytest.approx(sigmoid(np.log(0.02 / 0.98) + 1.0))
    assert response.take(0.0) == pytest.approx(sigmoid(1.0))


def test_fit_logistic_recovers_known_parameters():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.02, 0.5, size=4000)
    trials = rng.integers(5, 40, size=4000)
    successes = rng.binomial(trials, sigmoid(-0.5 + 3.0 * depth))
    a, b = fit_logistic(depth, successes, trials)
    assert a == pytest.approx(-0.5, abs=0.08)
    assert b == pytest.approx(3.0, abs=0.25)


def test_thin_department_falls_back_to_the_prior():
    weeks = pd.DataFrame({"department": ["X"] * 5, "product_id": list("abcde"), "week": [1] * 5,
                          "units": [10.0] * 5, "disc_units": [5.0] * 5, "depth": [0.1] * 5})
    responses = fit_department_responses(weeks, min_obs=30)
    assert responses["X"].source == "prior" and responses["X"].b == PRIOR_SLOPE


def test_a_slope_steeper_than_the_cap_is_reported_as_capped_not_shrunk():
    """Take-up jumps from ~2 % to ~98 % between 1 % and 31 % off: the fitted slope (about 26 log-odds per unit
    depth) stays above MAX_SLOPE after shrinking, so b = 15 and the source says "capped"."""
    rng = np.random.default_rng(1)
    depth = np.repeat(np.linspace(0.01, 0.31, 16), 40)
    units = np.full(depth.size, 40.0)
    disc = rng.binomial(40, sigmoid(-4.0 + 26.0 * depth)).astype(float)
    weeks = pd.DataFrame({"department": "Y", "product_id": [f"p{i}" for i in range(depth.size)], "week": 1,
                          "units": units, "disc_units": disc, "depth": depth})
    capped = fit_department_responses(weeks, min_obs=30)["Y"]
    assert (capped.source, capped.b, capped.n_obs) == ("capped", MAX_SLOPE, depth.size)
    gentle = weeks.assign(disc_units=rng.binomial(40, sigmoid(-1.0 + 3.0 * depth)).astype(float))
    assert fit_department_responses(gentle, min_obs=30)["Y"].source == "shrunk"


def test_fit_on_complete_journey_slice(cj_slice):
    tx = cj_slice["transactions"].merge(cj_slice["products"][["product_id", "department"]], on="product_id")
    lines = pd.DataFrame({
        "department": tx["department"].astype(str), "product_id": tx["product_id"], "week": tx["week"],
        "quantity": tx["quantity"].astype(float),
        "shelf_amount": (tx["sales_value"] + tx["retail_disc"].abs() + tx["coupon_match_disc"].abs()).astype(float),
        "discount": (tx["retail_disc"].abs() + tx["coupon_disc"].abs()).astype(float),
    })
    weeks = product_week_frame(lines)
    assert (weeks["disc_units"] <= weeks["units"]).all()
    assert weeks["depth"].between(0, 1).all()
    responses = fit_department_responses(weeks)
    grocery = responses["GROCERY"]
    assert grocery.n_obs > 500 and grocery.source == "shrunk"
    assert 0 < grocery.b <= 15
    # (that bundling_ml never imports Django is checked in a clean subprocess in tests/ml/test_imports.py)
