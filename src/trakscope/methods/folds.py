"""Stratified, seeded k-fold assignment (cleanlab's cross-validation input)."""

from __future__ import annotations

import numpy as np


def fold_assignment(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified, seeded fold of every example: each class is shuffled and dealt round-robin.

    Args:
        labels: int ``[n]``.
        k: number of folds, at least 2.
        seed: seed of the shuffle.

    Returns:
        int64 ``[n]`` fold ids in ``0..k-1``; fold sizes differ by at most one per class.
    """
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    labels = np.asarray(labels, dtype=np.int64)
    smallest = int(np.bincount(labels)[np.unique(labels)].min()) if len(labels) else 0
    if k > smallest:
        raise ValueError(f"--folds {k} is more than the {smallest} training examples of the smallest class; "
                         f"use at most --folds {max(smallest, 2)} (each fold must hold out every class)")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # continue the deal so small classes do not all start in fold 0
    return folds
