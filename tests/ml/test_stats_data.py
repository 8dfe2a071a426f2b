"""Hand-made frames with known answers: cleaning, split, queries, pair statistics."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bundling_ml.data import build_queries, default_split_date, prepare_lines, temporal_split
from bundling_ml.stats import PairStats, cooccurrence_counts


def make_lines(rows):
    """rows: (basket, product, day, quantity, price)."""
    df = pd.DataFrame(rows, columns=["basket_id", "product_id", "day", "quantity", "price"])
    df["time"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(df.pop("day"), unit="D")
    df["customer_id"] = pd.array(["c1"] * len(df), dtype="string")
    return df


# 4 baskets: b1 {A,B,C}, b2 {A,B}, b3 {A,C}, b4 {B}
TINY = make_lines([
    ("b1", "A", 0, 1, 1.0), ("b1", "B", 0, 2, 2.0), ("b1", "C", 0, 1, 3.0),
    ("b2", "A", 1, 1, 1.0), ("b2", "B", 1, 1, 2.0),
    ("b3", "A", 2, 1, 1.0), ("b3", "C", 2, 1, 3.0),
    ("b4", "B", 3, 1, 2.0),
])


def test_prepare_lines_drops_returns_negative_prices_and_merges_duplicates():
    raw = make_lines([
        ("b1", "A", 0, 1, 1.0), ("b1", "A", 0, 2, 4.0),   # duplicate line: qty summed, price weighted
        ("b1", "B", 0, 0, 1.0),                            # quantity 0 -> dropped
        ("b1", "C", 0, -1, 1.0),                           # return -> dropped
        ("b2", "D", 1, 1, -0.5),                           # negative price -> dropped
        ("b2", "E", 1, 1, 0.0),                            # free item kept
    ])
    out = prepare_lines(raw)
    assert list(out.columns) == ["basket_id", "product_id", "customer_id", "time", "quantity", "price"]
    assert sorted(zip(out.basket_id, out.product_id)) == [("b1", "A"), ("b2", "E")]
    a = out[out.product_id == "A"].iloc[0]
    assert a.quantity == 3.0 and a.price == pytest.approx(3.0)  # (1*1 + 2*4) / 3


def test_prepare_lines_raises_on_missing_column():
    with pytest.raises(ValueError, match="missing columns"):
        prepare_lines(TINY.drop(columns=["price"]))


def test_temporal_split_boundary_goes_to_test():
    lines = prepare_lines(TINY)
    train, test = temporal_split(lines, "2024-01-03")  # day 2 == split date
    assert set(train.basket_id) == {"b1", "b2"}
    assert set(test.basket_id) == {"b3", "b4"}
    assert train.time.max() < pd.Timestamp("2024-01-03") <= test.time.min()


def test_default_split_date_keeps_last_fifth_of_weeks():
    lines = prepare_lines(make_lines([(f"b{d}", "A", d, 1, 1.0) for d in range(0, 70, 7)]))  # 10 weeks
    assert default_split_date(lines) == pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=8)


def test_default_split_date_counts_only_weeks_with_orders():
    """A year-old history plus this week's storefront orders: the split stays inside the history."""
    history = [(f"b{d}", "A", d, 1, 1.0) for d in range(0, 70, 7)]  # 10 weeks from 2024-01-01
    lines = prepare_lines(make_lines(history + [("new", "A", 700, 1, 1.0)]))  # + one order 100 weeks later
    # 11 active weeks: ceil(0.8 * 11) = 9 train -> the split is the start of active week 9 (calendar week 9)
    assert default_split_date(lines) == pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=9)
    one_week = prepare_lines(make_lines([("b1", "A", 2, 1, 1.0)]))
    assert default_split_date(one_week) == pd.Timestamp("2024-01-03") + pd.Timedelta(weeks=1)


def test_cooccurrence_counts_known_values():
    s = PairStats.from_lines(prepare_lines(TINY))
    assert list(s.product_ids) == ["A", "B", "C"]
    assert s.n_baskets == 4
    assert s.item_counts.tolist() == [3, 3, 2]
    assert s.co.dtype == np.int32
    assert s.co.toarray().tolist() == [[0, 2, 2], [2, 0, 1], [2, 1, 0]]


def test_support_confidence_lift_jaccard_known_values():
    s = PairStats.from_lines(prepare_lines(TINY))
    a, b = np.array([0]), np.array([1])  # A, B: n_ab=2, n_a=3, n_b=3, N=4
    assert s.support(a, b)[0] == pytest.approx(2 / 4)
    assert s.confidence(a, b)[0] == pytest.approx(2 / 3)
    assert s.lift(a, b)[0] == pytest.approx(2 * 4 / (3 * 3))
    assert s.jaccard(a, b)[0] == pytest.approx(2 / (3 + 3 - 2))
    assert s.confidence([2], [0])[0] == pytest.approx(1.0)  # every C basket has A
    assert s.baskets_with_all((0, 1, 2)) == 1


def test_top_companions_ties_broken_by_popularity_never_anchor():
    s = PairStats.from_lines(prepare_lines(TINY))
    idx, cnt = s.top_companions(0, 5)
    assert idx.tolist() == [1, 2] and cnt.tolist() == [2, 2]  # B (3 baskets) before C (2)
    assert 1 not in s.top_companions(1, 5)[0]


def test_cooccurrence_counts_rejects_non_binary():
    with pytest.raises(ValueError):
        cooccurrence_counts(sp.csr_matrix(np.array([[2, 1]])))


def test_build_queries_anchors_and_truth_use_only_seen_products():
    test = prepare_lines(make_lines([
        ("t1", "A", 0, 1, 1.0), ("t1", "B", 0, 1, 1.0), ("t1", "Z", 0, 1, 1.0),  # Z unseen
        ("t2", "A", 0, 1, 1.0), ("t2", "Z", 0, 1, 1.0),                          # 1 seen -> not eligible
    ]))
    q = build_queries(test, pd.Index(["A", "B", "C"]))
    assert q.n_queries == 2
    assert sorted(q.anchor.tolist()) == [0, 1]
    assert q.truth_sizes().tolist() == [1, 1]
    assert q.basket_ids.tolist() == ["t1"]


def test_build_queries_sample_is_fixed_by_seed():
    rows = [(f"t{i}", p, 0, 1, 1.0) for i in range(50) for p in ("A", "B")]
    test = prepare_lines(make_lines(rows))
    q1 = build_queries(test, pd.Index(["A", "B"]), sample_baskets=10, seed=0)
    q2 = build_queries(test, pd.Index(["A", "B"]), sample_baskets=10, seed=0)
    assert q1.basket_ids.tolist() == q2.basket_ids.tolist() and len(q1.basket_ids) == 10
    assert build_queries(test, pd.Index(["A", "B"]), max_queries=7).n_queries == 6
