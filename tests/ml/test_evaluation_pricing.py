"""Metrics on hand-computed rankings, baselines, pricing rule."""
import math

import numpy as np
import pandas as pd
import pytest

from bundling_ml.data import build_queries, prepare_lines
from bundling_ml.evaluation import cooccurrence_ranker, evaluate_system, hits_matrix, hr_ndcg, popularity_ranker
from bundling_ml.pricing import suggested_discount_percent
from bundling_ml.stats import PairStats
from tests.ml.test_stats_data import TINY, make_lines


def test_ndcg_of_hand_computed_ranking():
    # truth size 2; hits at ranks 2 and 4 -> DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    hits = np.zeros((2, 10), dtype=bool)
    hits[0, [1, 3]] = True
    hr, ndcg = hr_ndcg(hits, np.array([2, 5]), k=10)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert hr == pytest.approx(0.5)
    assert ndcg == pytest.approx(expected / 2)


def test_ndcg_ideal_uses_min_k_truth():
    hits = np.ones((1, 10), dtype=bool)
    assert hr_ndcg(hits, np.array([25]), k=10)[1] == pytest.approx(1.0)


def test_hits_exclude_anchor_and_empty_slots():
    test = prepare_lines(make_lines([("t", "A", 0, 1, 1.0), ("t", "B", 0, 1, 1.0), ("t", "C", 0, 1, 1.0)]))
    q = build_queries(test, pd.Index(["A", "B", "C"]))
    recs = np.array([[1, -1], [0, 1], [2, 0]])  # anchors are 0, 1, 2
    assert hits_matrix(q, recs).tolist() == [[True, False], [True, False], [False, True]]


def test_baselines_rank_by_count_then_popularity_and_never_return_anchor():
    s = PairStats.from_lines(prepare_lines(TINY))
    co = cooccurrence_ranker(s, k=2)(np.array([0, 1, 2]))
    assert co.tolist() == [[1, 2], [0, 2], [0, 1]]
    pop = popularity_ranker(s, k=2)(np.array([0, 1, 2]))
    assert pop.tolist() == [[1, 2], [0, 2], [0, 1]]
    # C has co-count 1 with B and 2 with A
    test = prepare_lines(make_lines([("t", "A", 0, 1, 1.0), ("t", "B", 0, 1, 1.0), ("t", "C", 0, 1, 1.0)]))
    q = build_queries(test, s.product_ids)
    row = evaluate_system(q, cooccurrence_ranker(s, k=2), name="cooccurrence_count", k=2)
    assert row["hr@2"] == 1.0 and row["ndcg@2"] == pytest.approx(1.0) and row["queries"] == 3


def test_evaluate_system_rejects_anchor_in_output():
    test = prepare_lines(make_lines([("t", "A", 0, 1, 1.0), ("t", "B", 0, 1, 1.0)]))
    q = build_queries(test, pd.Index(["A", "B"]))
    with pytest.raises(ValueError, match="own companion"):
        evaluate_system(q, lambda a: np.stack([a, a], axis=1), name="bad", k=2)


@pytest.mark.parametrize(
    "lift, confidence, expected",
    [(10.0, 0.5, 5.0), (0.8, 0.0, 15.0), (math.sqrt(5), 0.15, 10.0), (1.0, 0.30, 10.0), (5.0, 0.0, 10.0)],
)
def test_suggested_discount_rule(lift, confidence, expected):
    assert suggested_discount_percent(lift, confidence) == expected


def test_suggested_discount_rounds_to_half_percent_within_bounds():
    out = suggested_discount_percent(np.linspace(0, 20, 50), np.linspace(0, 1, 50))
    assert np.all((out >= 5.0) & (out <= 15.0)) and np.all((out * 2) == np.round(out * 2))
