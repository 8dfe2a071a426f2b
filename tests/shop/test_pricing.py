"""The pure pricing engine (shop_bundles.storefront.pricing): money cases M1-M7 and the rules behind them.

No database: the engine takes plain dataclasses with Decimal catalogue prices.
"""
from decimal import Decimal as D

import pytest

from shop_bundles.storefront.pricing import (
    AMOUNT,
    FIXED_PRICE,
    PERCENT,
    CampaignSpec,
    CartItem,
    allocate,
    bundle_line_discount,
    bundle_price,
    price_cart,
    quantize_money,
)

A, B, C, D_, E, F, G, H = 1, 2, 3, 4, 5, 6, 7, 8
PRICES = {A: D("20.00"), B: D("5.00"), C: D("3.00"), D_: D("2.00"), E: D("19.99"), F: D("10.00"),
          G: D("6.75"), H: D("6.75")}
C8 = 9  # product "C 8.00" of case M6
PRICES[C8] = D("8.00")


def cart(**quantities):
    """CartItems from keyword quantities, e.g. cart(A=1, B=1), with catalogue prices."""
    ids = {"A": A, "B": B, "C": C, "D": D_, "E": E, "F": F, "G": G, "H": H, "C8": C8}
    return [CartItem(product_id=ids[k], quantity=q, unit_price=PRICES[ids[k]]) for k, q in quantities.items()]


def spec(cid, kind, value, *products, qty=None):
    """CampaignSpec with one unit of each product unless ``qty`` maps product -> units."""
    qty = qty or {}
    return CampaignSpec(campaign_id=cid, discount_type=kind, discount_value=D(value),
                        items=tuple((p, qty.get(p, 1)) for p in products), name=f"c{cid}")


def assert_lines_sum(result):
    """Line discount shares add up exactly to the discount total, and nothing is negative."""
    assert sum(line.discount for line in result.lines) == result.discount_total
    assert all(line.total >= 0 and line.discount >= 0 for line in result.lines)
    assert all(b.total >= 0 for b in result.bundles)
    assert result.total == result.subtotal - result.discount_total


def test_m1_one_bundle_ten_percent():
    result = price_cart(cart(A=1, B=1), [spec(1, PERCENT, "10", A, B)])
    assert result.subtotal == D("25.00")
    assert result.discount_total == D("2.50")
    assert result.total == D("22.50")
    assert [(b.campaign_id, b.count, b.regular_amount, b.discount) for b in result.bundles] == [(1, 1, D("25.00"), D("2.50"))]
    assert_lines_sum(result)


def test_m2_extra_unit_outside_bundle_pays_full_price():
    result = price_cart(cart(A=2, B=1), [spec(1, PERCENT, "10", A, B)])
    assert result.bundles_used == 1
    assert result.discount_total == D("2.50")
    assert result.total == D("42.50")
    line_a = next(line for line in result.lines if line.product_id == A)
    assert (line_a.quantity, line_a.bundled_quantity) == (2, 1)
    assert_lines_sum(result)


def test_m3_amount_off_at_or_above_bundle_price_forms_no_bundle():
    # Approval refuses this campaign (service rule); should one be live anyway (a shelf price cut after
    # approval), the engine forms no bundle rather than giving it away, and never goes below zero.
    for value in ("6.00", "5.00"):
        result = price_cart(cart(C=1, D=1), [spec(1, AMOUNT, value, C, D_)])
        assert (result.bundles, result.discount_total, result.total) == ((), D("0.00"), D("5.00"))
        assert_lines_sum(result)
    assert bundle_price(AMOUNT, D("6.00"), D("5.00")) == (D("0.00"), D("5.00"))
    result = price_cart(cart(C=1, D=1), [spec(1, AMOUNT, "4.99", C, D_)])
    assert (result.discount_total, result.total) == (D("4.99"), D("0.01"))


def test_m4_half_up_rounding_once():
    result = price_cart(cart(E=1, F=1), [spec(1, PERCENT, "25", E, F)])
    assert result.discount_total == D("7.50")  # 29.99 * 0.25 = 7.4975 -> 7.50
    assert result.total == D("22.49")
    assert_lines_sum(result)


def test_m5_rounding_on_the_bundle_line_not_per_bundle():
    result = price_cart(cart(G=9, H=9), [spec(1, PERCENT, "5", G, H)])
    assert [(b.count, b.regular_amount, b.discount) for b in result.bundles] == [(9, D("121.50"), D("6.08"))]
    assert result.discount_total == D("6.08")  # 6.075 once, not 0.68 x 9 = 6.12
    assert result.total == D("115.42")
    assert_lines_sum(result)


@pytest.mark.parametrize("ab_id, ac_id", [(1, 2), (2, 1)])
def test_m6_unit_joins_the_better_bundle_for_the_shopper(ab_id, ac_id):
    campaigns = [spec(ab_id, PERCENT, "10", A, B), spec(ac_id, PERCENT, "15", A, C8)]
    result = price_cart(cart(A=1, B=1, C8=1), campaigns)
    assert [(b.campaign_id, b.count, b.discount) for b in result.bundles] == [(ac_id, 1, D("4.20"))]
    assert result.subtotal == D("33.00")
    assert result.discount_total == D("4.20")
    assert result.total == D("28.80")
    assert_lines_sum(result)


def test_m7_engine_only_knows_catalogue_prices():
    # The cart stores ids and quantities; the caller passes Product.price. Same numbers as M1.
    result = price_cart(cart(A=1, B=1), [spec(1, PERCENT, "10", A, B)])
    assert (result.discount_total, result.total) == (D("2.50"), D("22.50"))


def test_a_unit_belongs_to_at_most_one_bundle():
    # Both campaigns want the single B; only one bundle can form.
    campaigns = [spec(1, PERCENT, "10", A, B), spec(2, PERCENT, "10", B, C8)]
    result = price_cart(cart(A=1, B=1, C8=1), campaigns)
    assert result.bundles_used == 1
    assert sum(line.bundled_quantity for line in result.lines if line.product_id == B) == 1


def test_equal_savings_break_ties_by_campaign_id():
    campaigns = [spec(7, AMOUNT, "2.00", A, B), spec(3, AMOUNT, "2.00", B, C8)]
    result = price_cart(cart(A=1, B=1, C8=1), campaigns)
    assert [b.campaign_id for b in result.bundles] == [3]


def test_fixed_price_bundle_and_fixed_price_above_regular_gives_nothing():
    cheaper = price_cart(cart(A=1, B=1), [spec(1, FIXED_PRICE, "21.00", A, B)])
    assert (cheaper.discount_total, cheaper.total) == (D("4.00"), D("21.00"))
    dearer = price_cart(cart(A=1, B=1), [spec(1, FIXED_PRICE, "30.00", A, B)])
    assert dearer.bundles == ()
    assert (dearer.discount_total, dearer.total) == (D("0.00"), D("25.00"))
    assert bundle_price(FIXED_PRICE, D("30.00"), D("25.00")) == (D("25.00"), D("0.00"))


def test_fixed_price_above_regular_leaves_units_for_another_campaign():
    campaigns = [spec(1, FIXED_PRICE, "99.00", A, B), spec(2, PERCENT, "10", A, B)]
    result = price_cart(cart(A=1, B=1), campaigns)
    assert [b.campaign_id for b in result.bundles] == [2]


def test_amount_off_counts_per_bundle_on_the_line():
    result = price_cart(cart(A=3, B=3), [spec(1, AMOUNT, "1.50", A, B)])
    assert [(b.count, b.discount) for b in result.bundles] == [(3, D("4.50"))]
    assert_lines_sum(result)


def test_items_with_several_units_per_bundle():
    # 2 x G + 1 x H per bundle; 5 G and 2 H form 2 bundles, 1 G left over.
    result = price_cart(cart(G=5, H=2), [spec(1, PERCENT, "10", G, H, qty={G: 2})])
    assert [(b.count, b.regular_amount, b.discount) for b in result.bundles] == [(2, D("40.50"), D("4.05"))]
    line_g = next(line for line in result.lines if line.product_id == G)
    assert line_g.bundled_quantity == 4
    assert_lines_sum(result)


def test_campaign_needing_a_product_not_in_cart_forms_nothing():
    result = price_cart(cart(A=1), [spec(1, PERCENT, "10", A, B)])
    assert result.bundles == () and result.total == D("20.00")


def test_line_discount_shares_sum_exactly_with_odd_cents():
    # 3 items of 1/3 each of a 0.10 discount: shares must still add up to 0.10.
    assert allocate(D("0.10"), [D("1.00"), D("1.00"), D("1.00")]) == [D("0.04"), D("0.03"), D("0.03")]
    result = price_cart(cart(E=1, F=1, C=1), [spec(1, PERCENT, "33", E, F, C)])
    assert result.discount_total == quantize_money(D("32.99") * D("0.33"))  # 10.8867 -> 10.89
    assert_lines_sum(result)


def test_discount_helpers_reject_bad_input():
    with pytest.raises(ValueError):
        bundle_line_discount("bogus", D("1"), D("10"), 1)
    with pytest.raises(ValueError):
        bundle_line_discount(PERCENT, D("-1"), D("10"), 1)
    with pytest.raises(ValueError):
        price_cart([CartItem(A, 1, D("-1.00"))], [])


def test_percent_of_hundred_or_more_forms_no_bundle():
    # 100 % or more would give the bundle away (approval refuses it): no bundle, shelf prices.
    for value in ("150", "100"):
        result = price_cart(cart(A=1, B=1), [spec(1, PERCENT, value, A, B)])
        assert (result.bundles, result.discount_total, result.total) == ((), D("0.00"), D("25.00"))
        assert_lines_sum(result)
    result = price_cart(cart(A=1, B=1), [spec(1, PERCENT, "99.99", A, B)])  # 24.9975 off rounds to 25.00
    assert (result.bundles, result.total) == ((), D("25.00"))
    result = price_cart(cart(A=1, B=1), [spec(1, PERCENT, "99.97", A, B)])  # 24.9925 off rounds to 24.99
    assert (result.discount_total, result.total) == (D("24.99"), D("0.01"))


def test_no_discount_campaign_forms_a_zero_bundle_that_never_takes_units_from_a_saving():
    """A 0 % campaign ("frequently bought together" at normal prices) forms a bundle line with discount 0.00,
    so the order is linked to it; a campaign that saves money still gets the shared units first."""
    alone = price_cart(cart(A=1, B=1), [spec(7, PERCENT, "0", A, B)])
    assert [(b.campaign_id, b.count, b.discount) for b in alone.bundles] == [(7, 1, D("0.00"))]
    assert (alone.discount_total, alone.total) == (D("0.00"), D("25.00"))
    both = price_cart(cart(A=1, B=1, C8=1), [spec(7, PERCENT, "0", A, B), spec(8, PERCENT, "15", A, C8)])
    assert [(b.campaign_id, b.discount) for b in both.bundles] == [(8, D("4.20"))]  # A joins the saving bundle
    # a fixed price at the regular price is not a no-discount campaign: it forms no bundle
    assert price_cart(cart(A=1, B=1), [spec(9, FIXED_PRICE, "25.00", A, B)]).bundles == ()


def test_overlapping_campaigns_give_the_largest_total_saving_not_the_largest_first():
    """{A, B} 10.00 off, {A, C} 6.00 off, {B, D} 6.00 off on a cart of A, B, C, D: taking the largest
    bundle first saves 10.00; A+C and B+D save 12.00, which the shopper gets."""
    result = price_cart(cart(A=1, B=1, C8=1, D=1), [spec(1, AMOUNT, "10.00", A, B), spec(2, AMOUNT, "6.00", A, C8),
                                                     spec(3, AMOUNT, "6.00", B, D_)])
    assert sorted((b.campaign_id, b.count, b.discount) for b in result.bundles) == [
        (2, 1, D("6.00")), (3, 1, D("6.00"))]
    assert result.discount_total == D("12.00")
    assert_lines_sum(result)
    # With two more units of A and B the big bundle fits too: all three form (22.00).
    more = price_cart(cart(A=2, B=2, C8=1, D=1), [spec(1, AMOUNT, "10.00", A, B), spec(2, AMOUNT, "6.00", A, C8),
                                                   spec(3, AMOUNT, "6.00", B, D_)])
    assert sorted((b.campaign_id, b.count) for b in more.bundles) == [(1, 1), (2, 1), (3, 1)]
    assert more.discount_total == D("22.00")
    # Mixed: 2 A, 1 B, 2 C8 with A+B 6.00 off and A+C8 3.00 off: A+B once and A+C8 once (9.00), not A+C8 twice.
    mixed = price_cart(cart(A=2, B=1, C8=2), [spec(1, AMOUNT, "6.00", A, B), spec(2, AMOUNT, "3.00", A, C8)])
    assert sorted((b.campaign_id, b.count) for b in mixed.bundles) == [(1, 1), (2, 1)]
    assert mixed.discount_total == D("9.00")
    # Equal totals (one A, 6.00 off either way): the lower campaign id, whichever bundle it is.
    for ab, ac in ((1, 2), (2, 1)):
        tie = price_cart(cart(A=1, B=1, C8=1), [spec(ab, AMOUNT, "6.00", A, B), spec(ac, AMOUNT, "6.00", A, C8)])
        assert [(b.campaign_id, b.count) for b in tie.bundles] == [(1, 1)]


def test_bundle_choice_matches_the_brute_force_best_on_random_small_carts():
    """300 random carts (seed 0) of up to 4 products and 4 overlapping fixed-amount campaigns: the engine's
    discount total equals the best of every feasible choice of bundle counts (enumerated)."""
    import itertools
    import random

    rng = random.Random(0)
    products = [A, B, C8, D_]
    names = {A: "A", B: "B", C8: "C8", D_: "D"}
    for _ in range(300):
        quantities = {p: rng.randint(0, 3) for p in products}
        specs = []
        for cid in range(1, rng.randint(2, 4) + 1):
            items = rng.sample(products, rng.randint(1, 3))
            qty = {p: rng.randint(1, 2) for p in items}
            if sum(qty.values()) < 2:
                qty[items[0]] = 2
            regular = sum(PRICES[p] * q for p, q in qty.items())
            specs.append(spec(cid, AMOUNT, str(rng.randint(1, int(regular) - 1)), *items, qty=qty))
        result = price_cart(cart(**{names[p]: q for p, q in quantities.items() if q}), specs)
        best = D("0.00")
        for counts in itertools.product(range(4), repeat=len(specs)):
            used = {p: 0 for p in products}
            for c, s in zip(counts, specs):
                for p, q in s.items:
                    used[p] += q * c
            if all(used[p] <= quantities[p] for p in products):
                best = max(best, sum((s.discount_value * c for c, s in zip(counts, specs)), D("0.00")))
        assert result.discount_total == best, (quantities, specs)
        assert_lines_sum(result)
