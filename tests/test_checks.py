"""The attribution checks (quanda's definitions) on small matrices with known answers."""

from __future__ import annotations

import numpy as np

from trakscope import class_detection, randomisation_correlation, top_k_cardinality, wrong_label_share

# scores[train, target]: 4 training examples, 3 targets
SCORES = np.array([[5.0, 0.0, 1.0],
                   [1.0, 4.0, 2.0],
                   [0.0, 1.0, 9.0],
                   [-3.0, -2.0, -1.0]])
TRAIN_LABELS = np.array([0, 1, 0, 2])


def test_class_detection_is_the_share_of_the_top_s_with_the_targets_label():
    assert class_detection(SCORES, TRAIN_LABELS, np.array([0, 1, 0])) == 1.0
    assert class_detection(SCORES, TRAIN_LABELS, np.array([0, 0, 1])) == 1 / 3
    # s = 2: target 0's top 2 are train 0 (label 0) and 1 (label 1); target 1's are 1 and 2; target 2's are 2 and 1
    assert class_detection(SCORES, TRAIN_LABELS, np.array([0, 1, 0]), s=2) == (1 + 1 + 1) / 6


def test_top_k_cardinality_counts_distinct_examples_at_either_end():
    assert top_k_cardinality(SCORES, 1) == (3, 1.0)
    assert top_k_cardinality(SCORES, 1, end="bottom") == (1, 1 / 3)  # train 3 is every target's lowest
    assert top_k_cardinality(SCORES, 2) == (3, 0.5)


def test_wrong_label_share_at_each_end_against_the_base_rate():
    wrong = np.array([False, False, False, True])
    assert wrong_label_share(SCORES, wrong, 1) == {"top": 0.0, "bottom": 1.0, "base": 0.25}


def test_randomisation_correlation_is_one_for_a_monotone_copy_and_minus_one_reversed():
    assert np.isclose(randomisation_correlation(SCORES, 3 * SCORES + 1), 1.0)
    assert np.isclose(randomisation_correlation(SCORES, -SCORES), -1.0)
    flat = SCORES.copy()
    flat[:, 1] = 0.0  # a constant column has no correlation and is left out of the mean
    assert np.isclose(randomisation_correlation(SCORES, flat * 2), 1.0)
