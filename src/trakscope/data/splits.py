"""Seeded stratified splits, subsets and planted label noise (array in, array out)."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(rest, held_out)`` with ``fraction`` of every class held out.

    Args:
        labels: int ``[n]`` class of each example.
        fraction: share of each class to hold out, in ``[0, 1)``.
        seed: seed of the shuffle.

    Returns:
        Two sorted int64 index arrays that partition ``range(n)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * len(members)))
        held.append(rng.permutation(members)[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), held_out)
    return rest.astype(np.int64), held_out.astype(np.int64)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of exactly ``size`` examples with class proportions kept.

    Each class gets its proportional share rounded down; the leftover places go to the classes with the
    largest remainders (ties to the lower class id).
    """
    n = len(labels)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * size / n
    quota = np.floor(share).astype(np.int64)
    leftover = np.lexsort((classes, -(share - quota)))[: size - quota.sum()]
    quota[leftover] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def plant_noise(labels: np.ndarray, num_classes: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip a seeded ``rate`` fraction of labels to a different, uniformly chosen class.

    Returns:
        ``(noisy_labels, flipped)``: int64 ``[n]`` and bool ``[n]``; ``flipped`` marks exactly
        ``round(rate * n)`` examples.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if rate > 0 and num_classes < 2:
        raise ValueError("planting noise needs at least two classes")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    n_flip = int(round(rate * len(labels)))
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.permutation(len(labels))[:n_flip]] = True
    shift = rng.integers(1, max(num_classes, 2), size=len(labels))
    noisy = np.where(flipped, (labels + shift) % num_classes, labels)
    return noisy.astype(np.int64), flipped
