"""D3M alignment scores on a hand-made score matrix, and Auto-D3M groups on two clear clusters."""

from __future__ import annotations

import numpy as np
import pytest

from trakscope.methods.d3m import alignment_scores, auto_groups, group_losses

SCORES = np.array(
    [
        [1.0, 3.0, 0.0, 2.0],  # group means 2, 1  -> (1*2 + 3*1) / 2 = 2.5
        [-1.0, -1.0, -2.0, 0.0],  # -1, -1 -> (-1 - 3) / 2 = -2
        [0.0, 0.0, 4.0, -4.0],  # 0, 0 -> 0
    ]
)
GROUPS = np.array([0, 0, 1, 1])


def test_alignment_scores_by_hand():
    a = alignment_scores(SCORES, GROUPS, np.array([1.0, 3.0]))
    np.testing.assert_allclose(a, [2.5, -2.0, 0.0])


def test_alignment_scores_chunked_matches_loop_reference():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(37, 11))
    groups = rng.integers(0, 3, size=11)
    groups[:3] = [0, 1, 2]
    losses = rng.random(3)
    ref = np.array([np.mean([losses[g] * scores[i, groups == g].mean() for g in range(3)]) for i in range(37)])
    np.testing.assert_allclose(alignment_scores(scores, groups, losses, chunk=5), ref)


def test_empty_group_is_skipped():
    # group 1 has no val examples: the mean runs over group 0 and group 2 only
    groups = np.array([0, 0, 2, 2])
    a = alignment_scores(SCORES, groups, np.array([1.0, np.nan, 3.0]))
    np.testing.assert_allclose(a, [2.5, -2.0, 0.0])
    with pytest.raises(ValueError):
        alignment_scores(SCORES, np.array([0, 0, 5, 5]), np.array([1.0, 3.0]))


def test_group_losses():
    probs = np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 1])
    losses = group_losses(probs, labels, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(losses, [(np.log(2) + np.log(4 / 3)) / 2, (np.log(10) + np.log(1.25)) / 2])


def test_auto_groups_split_two_clusters_per_class():
    rng = np.random.default_rng(1)
    n_train = 50
    directions = rng.normal(size=(4, n_train))  # two clusters in each of two classes
    cluster = np.repeat([0, 1, 2, 3], 6)
    rng.shuffle(cluster)
    columns = directions[cluster] * rng.uniform(0.5, 3.0, size=(len(cluster), 1))  # norms vary: normalised away
    columns += 0.05 * rng.normal(size=columns.shape)
    scores = columns.T  # [n_train, n_val]
    val_labels = cluster // 2
    groups = auto_groups(scores, val_labels)
    assert sorted(np.unique(groups)) == [0, 1, 2, 3]
    for c in range(4):  # each cluster is exactly one group, and the groups differ
        assert len(np.unique(groups[cluster == c])) == 1
    assert len({int(groups[cluster == c][0]) for c in range(4)}) == 4
    # groups stay within their class
    for g in np.unique(groups):
        assert len(np.unique(val_labels[groups == g])) == 1


def test_auto_groups_degenerate_class_keeps_one_group():
    scores = np.array([[1.0, 2.0, 0.5], [1.0, 2.0, 0.1]])  # class 1 has a single val example
    groups = auto_groups(scores, np.array([0, 0, 1]))
    assert len(groups) == 3
    assert groups[2] not in groups[:2]
