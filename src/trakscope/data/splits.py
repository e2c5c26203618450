"""Seeded stratified splits, subsets and planted label noise (array in, array out)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..config import check_setting


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


# Class-conditional flips between digits that people confuse (real label errors are not uniform).
CONFUSABLE_PAIRS = (("4", "9"), ("3", "5"), ("7", "1"))
NOISE_KINDS = ("symmetric", "confusable", "lookalike")


def plant_noise(labels: np.ndarray, num_classes: int, rate: float, seed: int, kind: str = "symmetric",
                pairs: tuple[tuple[int, int], ...] = (),
                confusion: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flip a seeded ``rate`` fraction of labels.

    Args:
        kind: ``symmetric`` flips to a different, uniformly chosen class; ``confusable`` flips an example of a
            class in ``pairs`` to its partner (only such examples are flipped); ``lookalike`` flips seeded random
            examples each to the class ``confusion`` returns for it (the class it looks like, on any dataset).
        pairs: class-id pairs ``(a, b)`` for ``confusable``; each flips both ways.
        confusion: for ``lookalike``, int ``[m]`` sorted rows -> int ``[m]`` their wrong labels; a value that is
            negative or the example's own label falls back to the uniform flip.

    Returns:
        ``(noisy_labels, flipped)``: int64 ``[n]`` and bool ``[n]``; ``flipped`` marks exactly
        ``round(rate * n)`` examples.

    Raises:
        ValueError: a bad rate or kind, or too few examples in the pairs' classes for the rate.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if rate > 0 and num_classes < 2:
        raise ValueError("planting noise needs at least two classes")
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    n_flip = int(round(rate * len(labels)))
    if kind == "confusable":
        return _plant_confusable(labels, n_flip, pairs, rng)
    if kind == "lookalike" and confusion is None:
        raise ValueError("lookalike noise needs the confusion of each example (data.neighbours.nearest_confusion)")
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.permutation(len(labels))[:n_flip]] = True
    shift = rng.integers(1, max(num_classes, 2), size=len(labels))
    noisy = (labels + shift) % num_classes
    rows = np.flatnonzero(flipped)
    if kind == "lookalike" and len(rows):
        wrong = np.asarray(confusion(rows), dtype=np.int64)
        usable = (wrong >= 0) & (wrong < num_classes) & (wrong != labels[rows])
        noisy[rows[usable]] = wrong[usable]
    return np.where(flipped, noisy, labels).astype(np.int64), flipped


def _plant_confusable(labels: np.ndarray, n_flip: int, pairs: tuple[tuple[int, int], ...],
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    eligible = np.flatnonzero(np.isin(labels, list(partner)))
    if n_flip > len(eligible):
        raise ValueError(f"confusable noise can flip at most the {len(eligible)} examples of the paired classes, "
                         f"{n_flip} asked")
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.permutation(eligible)[:n_flip]] = True
    noisy = labels.copy()
    noisy[flipped] = [partner[int(y)] for y in labels[flipped]]
    return noisy, flipped


CANARY_KINDS = ("random", "nearest", "pairs", "mixed")


def plant_canaries(labels: np.ndarray, num_classes: int, rate: float, seed: int,
                   exclude: np.ndarray | None = None,
                   confusion: Callable[[np.ndarray], np.ndarray] | None = None,
                   pair_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flip a seeded ``rate`` fraction of labels as canaries: known errors planted to measure detection.

    Canaries are drawn among examples not in ``exclude`` (the planted-noise flips), so they are disjoint from the
    noise and their true label is the one given. Each is flipped uniformly to another class, or, with
    ``confusion``, to the class it returns for it (a class the example is easily confused with; the same
    examples are chosen either way).

    Args:
        confusion: int ``[m]`` sorted canary rows -> int ``[m]`` their wrong labels; a value that is negative or
            the example's own label falls back to the uniform flip.
        pair_weights: float ``[C, C]``, the weight of a canary of class ``y`` flipped to ``s`` at ``[y, s]`` (the
            diagonal is ignored). Each canary's pair is drawn from these weights and its example uniformly among
            the free examples of class ``y``: the canaries follow a class-conditional error pattern (see
            :func:`~.neighbours.lookalike_pairs`). Overrides ``confusion``.

    Returns:
        ``(labels_with_canaries, canary)``: int64 ``[n]`` and bool ``[n]`` (exactly ``round(rate * n)`` True).
    """
    check_setting("data", "canaries", rate)  # --canaries' bound
    labels = np.asarray(labels, dtype=np.int64)
    free = np.flatnonzero(~np.asarray(exclude, dtype=bool)) if exclude is not None else np.arange(len(labels))
    n = int(round(rate * len(labels)))
    if n and num_classes < 2:
        raise ValueError("planting canaries needs at least two classes")
    if n > len(free):
        raise ValueError(f"{n} canaries asked, only {len(free)} examples are not already flipped")
    rng = np.random.default_rng(seed)
    if pair_weights is not None:
        return _pair_canaries(labels, free, n, np.asarray(pair_weights, dtype=np.float64), rng)
    canary = np.zeros(len(labels), dtype=bool)
    canary[rng.permutation(free)[:n]] = True
    shift = rng.integers(1, max(num_classes, 2), size=len(labels))
    flipped = (labels + shift) % num_classes
    rows = np.flatnonzero(canary)
    if confusion is not None and len(rows):
        wrong = np.asarray(confusion(rows), dtype=np.int64)
        usable = (wrong >= 0) & (wrong < num_classes) & (wrong != labels[rows])
        flipped[rows[usable]] = wrong[usable]
    return np.where(canary, flipped, labels).astype(np.int64), canary


def _pair_canaries(labels: np.ndarray, free: np.ndarray, n: int, weights: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` canaries whose (class, wrong label) pairs are drawn one at a time from ``weights`` ``[C, C]``, each
    on a seeded random free example of that class (a class with no free example left drops out of the draw)."""
    c = weights.shape[0]
    if weights.shape != (c, c) or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"pair weights must be a finite non-negative square matrix, got shape {weights.shape}")
    weights = weights * (1 - np.eye(c))
    queues = {y: list(rng.permutation(free[labels[free] == y])) for y in range(c)}
    noisy, canary = labels.copy(), np.zeros(len(labels), dtype=bool)
    for _ in range(n):
        live = weights * np.array([len(queues[y]) > 0 for y in range(c)])[:, None]
        if live.sum() <= 0:
            raise ValueError("the pair weights leave no free example to flip; give weight to more classes")
        y, s = divmod(int(rng.choice(c * c, p=(live / live.sum()).ravel())), c)
        row = int(queues[y].pop())
        noisy[row], canary[row] = s, True
    return noisy.astype(np.int64), canary
