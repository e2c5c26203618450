"""Ranking metrics against closed-form cases and scikit-learn as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from trakscope.methods.metrics import (
    average_precision,
    detection_metrics,
    inspection_order,
    inspection_rank,
    recall_at_fraction,
    roc_auc,
)

TRUTH = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1], dtype=bool)


def test_perfect_and_reversed_rankings():
    perfect = TRUTH * 10.0 + np.arange(10) / 100  # distinct values, wrong labels on top
    assert roc_auc(perfect, TRUTH) == 1.0
    assert roc_auc(-perfect, TRUTH) == 0.0
    assert average_precision(perfect, TRUTH) == 1.0
    # reversed: the 3 wrong labels come last, at positions 8, 9, 10 -> precisions 1/8, 2/9, 3/10
    assert average_precision(-perfect, TRUTH) == pytest.approx((1 / 8 + 2 / 9 + 3 / 10) / 3)


def test_constant_scores_are_chance():
    flat = np.zeros(len(TRUTH))
    assert roc_auc(flat, TRUTH) == 0.5
    assert average_precision(flat, TRUTH) == pytest.approx(TRUTH.mean())


def test_recall_at_fraction_closed_form():
    # inspection order by suspicion: indices 9, 8, ..., 0
    suspicion = np.arange(10, dtype=float)
    assert recall_at_fraction(suspicion, TRUTH, 0.1) == pytest.approx(1 / 3)  # index 9 only
    assert recall_at_fraction(suspicion, TRUTH, 0.5) == pytest.approx(1 / 3)  # 9..5 holds only 9
    assert recall_at_fraction(suspicion, TRUTH, 0.6) == pytest.approx(2 / 3)  # 9..4 holds 9 and 4
    assert recall_at_fraction(suspicion, TRUTH, 1.0) == 1.0
    assert recall_at_fraction(suspicion, TRUTH, 0.0) == 0.0
    # ceil: 5% of 10 examples is one inspected example
    assert recall_at_fraction(suspicion, TRUTH, 0.05) == pytest.approx(1 / 3)


def test_ties_broken_by_index():
    order = inspection_order(np.array([1.0, 2.0, 2.0, 0.0]))
    np.testing.assert_array_equal(order, [1, 2, 0, 3])
    np.testing.assert_array_equal(inspection_rank(np.array([1.0, 2.0, 2.0, 0.0])), [3, 1, 2, 4])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(200) < 0.15
    suspicion = np.round(rng.normal(size=200) + truth, 1)  # rounding creates ties
    assert roc_auc(suspicion, truth) == pytest.approx(roc_auc_score(truth, suspicion))
    assert average_precision(suspicion, truth) == pytest.approx(average_precision_score(truth, suspicion))


def test_undefined_cases_and_bad_input():
    assert math.isnan(roc_auc(np.arange(3.0), np.zeros(3, bool)))
    assert math.isnan(average_precision(np.arange(3.0), np.zeros(3, bool)))
    with pytest.raises(ValueError):
        roc_auc(np.arange(3.0), np.zeros(4, bool))
    with pytest.raises(ValueError):
        recall_at_fraction(np.arange(3.0), np.ones(3, bool), 1.5)


def test_detection_metrics_keys():
    m = detection_metrics(TRUTH.astype(float), TRUTH)
    assert set(m) == {"roc_auc", "average_precision", "recall@5%", "recall@10%", "recall@20%"}
    assert m["recall@20%"] == pytest.approx(2 / 3)
