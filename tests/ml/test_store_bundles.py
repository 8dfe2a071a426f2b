"""Store-specific bundles: pairs bought together in one store far more than across the shop."""
import pandas as pd
import pytest

from bundling_ml.pipeline import STORE_BUNDLE_COLUMNS, store_specific_bundles


def _lines():
    """Two stores, 70 baskets, with the answers worked out by hand.

    Store S1 (20 baskets): X+Y in 10 baskets by 6 shoppers, X+Z in 2, Z+W in 8 (all one shopper's habit).
    Store S2 (50 baskets): X+W in 40, X+Y in 2, Y+Z in 8.
    Chain-wide: X in 54 baskets, Y in 20, X+Y in 12, so P(Y | X) = 12/54.
    In S1, P(Y | X) = 10/12; shrunk with 10 pseudo-baskets: (10 + 10 * 12/54) / (12 + 10) = 0.5556,
    2.5x the chain-wide rate, lift in S1 10 * 20 / (12 * 10) = 1.67. Y -> X is only 1.33x its chain rate.
    W -> Z in S1 qualifies on counts (3.2x) but comes from one shopper. Nothing in S2 is 2x its chain rate.
    """
    rows = []
    def basket(bid, store, customer, items):
        for item in items:
            rows.append({"basket_id": bid, "product_id": item, "time": pd.Timestamp("2024-03-01") + pd.Timedelta(hours=len(rows)),
                         "customer_id": customer, "quantity": 1, "price": 1.0, "store_id": store})
    for i in range(10):
        basket(f"a{i}", "S1", f"c{i % 6}", ["X", "Y"])
    for i in range(2):
        basket(f"b{i}", "S1", "c9", ["X", "Z"])
    for i in range(8):
        basket(f"h{i}", "S1", "habit", ["Z", "W"])
    for i in range(40):
        basket(f"d{i}", "S2", f"e{i}", ["X", "W"])
    for i in range(2):
        basket(f"f{i}", "S2", f"e{i}", ["X", "Y"])
    for i in range(8):
        basket(f"g{i}", "S2", f"e{i}", ["Y", "Z"])
    lines = pd.DataFrame(rows)
    products = pd.DataFrame({"product_id": ["X", "Y", "Z", "W"], "name": ["Crackers", "Soup", "Tea", "Milk"],
                             "product_type": ["crackers", "soup", "tea", "milk"], "department": "GROCERY"})
    return lines, products


def test_a_pair_sold_together_in_one_store_is_suggested_for_that_store_with_its_evidence():
    lines, products = _lines()
    df = store_specific_bundles(lines, products)
    assert list(df.columns) == STORE_BUNDLE_COLUMNS and len(df) == 1
    row = df.iloc[0]
    assert row["anchor"] == "X" and row["items"] == ("X", "Y") and row["store_ids"] == ("S1",)
    shrunk = (10 + 10 * 12 / 54) / 22
    assert row["store_evidence"] == [{"store_id": "S1", "co_purchase_count": 10, "anchor_baskets": 12,
                                      "attach_rate": pytest.approx(shrunk), "chain_attach_rate": pytest.approx(12 / 54),
                                      "lift": pytest.approx(10 * 20 / (12 * 10)), "shoppers": 6}]
    assert row["score"] == pytest.approx(shrunk * 10 / 30)  # shrunk by the evidence: n / (n + 20)
    # chain-wide evidence of X -> Y over all 70 baskets
    assert row["co_purchase_count"] == 12 and row["support"] == pytest.approx(12 / 70)
    assert row["confidence"] == pytest.approx(12 / 54) and row["lift"] == pytest.approx(12 * 70 / (54 * 20))
    assert row["expected_attach_rate"] == pytest.approx(shrunk)
    assert "store S1" in row["reasons"] and "10 baskets by 6 shoppers" in row["reasons"] and "22% across all stores" in row["reasons"]


def test_one_shoppers_habit_needs_min_shoppers_lowered_to_count():
    lines, products = _lines()
    df = store_specific_bundles(lines, products, min_shoppers=1)
    assert sorted(df["items"]) == [("W", "Z"), ("X", "Y")]
    wz = df[df["items"] == ("W", "Z")].iloc[0]
    assert wz["store_evidence"][0]["shoppers"] == 1
    assert wz["store_evidence"][0]["attach_rate"] == pytest.approx((8 + 10 * 8 / 48) / 18)


def test_excluded_item_sets_substitutes_and_lines_without_stores_give_nothing():
    lines, products = _lines()
    assert store_specific_bundles(lines, products, exclude_item_sets=[("Y", "X")]).empty
    same_type = products.assign(product_type=["soup", "soup", "tea", "milk"])  # chain-wide lift 0.78: substitutes
    assert store_specific_bundles(lines, same_type).empty
    no_store = store_specific_bundles(lines.drop(columns="store_id"), products)
    assert no_store.empty and list(no_store.columns) == STORE_BUNDLE_COLUMNS
    assert store_specific_bundles(lines, products, excluded_departments=("grocery",)).empty


def test_guest_baskets_count_one_shopper_each_and_do_not_break_the_search():
    """Guest orders reach the pipeline with customer_id <NA> in a "string" column (``ml_bridge.lines_frame``,
    ``prepare_lines``): a storefront checkout without sign-in broke every later scoring with
    "boolean value of NA is ambiguous". Guests count one shopper per basket, named shoppers once each."""
    lines, products = _lines()
    guests = lines["basket_id"].isin([f"a{i}" for i in range(6, 10)])  # the X+Y baskets of c0..c3's second visits
    lines["customer_id"] = lines["customer_id"].astype("string").mask(guests, pd.NA)
    df = store_specific_bundles(lines, products)
    assert len(df) == 1 and df.iloc[0]["items"] == ("X", "Y")
    assert df.iloc[0]["store_evidence"][0]["shoppers"] == 10  # c0..c5 and 4 guest baskets
    lines["customer_id"] = lines["customer_id"].mask(lines["basket_id"].str.startswith("a"), "")  # "" is a guest too
    assert store_specific_bundles(lines, products).iloc[0]["store_evidence"][0]["shoppers"] == 10
