"""Which other class an example looks like, without a trained model and without the test split.

Real label errors are confusions between classes that look alike (a 4 labelled 9), not uniform flips. For
``--canary-kind nearest`` the wrong label of a canary is the class most common among the example's nearest
training neighbours *of another label*, in a small pixel space: each image average-pooled to at most 16 x 16,
centred and scaled to unit norm (so brightness and contrast do not count), compared by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .images import ImageSource
from .splits import stratified_subset

FEATURE_SIDE = 16  # pooled side: MNIST digits keep their strokes; larger images keep their layout and colours
NEIGHBOURS = 10  # other-label neighbours that vote
POOL = 2000  # training examples compared against (a seeded stratified subset beyond this): bounded decoding cost


def pixel_features(images: ImageSource, rows: np.ndarray, side: int = FEATURE_SIDE, batch: int = 256) -> np.ndarray:
    """float64 ``[len(rows), 3 * s * s]``: images ``rows`` average-pooled to ``s = min(side, image side)``, each
    centred and scaled to unit norm. Float64 throughout, so the neighbours (and the canaries they choose, which the
    data fingerprint checks on every reload) do not depend on the number of threads."""
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    for s in range(0, len(rows), batch):
        x = images.uint8(rows[s : s + batch]).double()
        x = torch.nn.functional.adaptive_avg_pool2d(x, min(side, x.shape[-1])).flatten(1)
        x = x - x.mean(dim=1, keepdim=True)
        out.append(torch.nn.functional.normalize(x, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 3 * side * side), dtype=np.float64)


def nearest_other_labels(query: np.ndarray, query_labels: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray,
                         k: int = NEIGHBOURS) -> np.ndarray:
    """The label most common among each query's ``k`` most similar pool examples whose label is not its own.

    Args:
        query, pool: float ``[m, d]`` and ``[p, d]`` unit-norm features (similarity = dot product).
        query_labels, pool_labels: int ``[m]`` and ``[p]``.

    Returns:
        int64 ``[m]``; equal similarities go to the lower pool row, a tied vote to the label of the more similar
        neighbour; -1 where the pool holds no other label.
    """
    query_labels, pool_labels = np.asarray(query_labels, np.int64), np.asarray(pool_labels, np.int64)
    sim = np.asarray(query, np.float64) @ np.asarray(pool, np.float64).T
    out = np.full(len(query_labels), -1, dtype=np.int64)
    for i in range(len(query_labels)):
        other = np.flatnonzero(pool_labels != query_labels[i])
        nearest = other[np.argsort(-sim[i, other], kind="stable")[:k]]
        out[i] = _vote(pool_labels[nearest])
    return out


def _vote(labels: np.ndarray) -> int:
    """The most frequent of ``labels`` (most similar first); ties to the one seen first; -1 when empty."""
    if len(labels) == 0:
        return -1
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    return int(values[np.lexsort((first, -counts))[0]])


def nearest_confusion(images: ImageSource, labels: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from training rows to their nearest other label (:func:`nearest_other_labels`), comparing
    against the whole training split (``labels`` as given) or a seeded stratified subset of :data:`POOL`."""
    labels = np.asarray(labels, dtype=np.int64)

    def confusion(rows: np.ndarray) -> np.ndarray:
        pool = stratified_subset(labels, POOL, seed) if len(labels) > POOL else np.arange(len(labels))
        return nearest_other_labels(pixel_features(images, rows), labels[rows], pixel_features(images, pool),
                                    labels[pool])

    return confusion


PAIR_MIX = 0.5  # share of the canary pairs drawn from the look-alike estimate; the rest uniform, so every pair has some


def neighbour_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, k: int = NEIGHBOURS) -> np.ndarray:
    """float64 ``[m, C]`` leave-one-out k-nearest-neighbour class probabilities: the share of each class among an
    example's ``k`` most similar *other* examples (equal similarities to the lower row), smoothed by 0.1 per class
    so that none is zero. ``features``: unit-norm float ``[m, d]``; ``labels``: int ``[m]``."""
    sim = np.asarray(features, np.float64) @ np.asarray(features, np.float64).T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    counts = np.zeros((len(labels), num_classes))
    np.add.at(counts, (np.repeat(np.arange(len(labels)), nearest.shape[1]), np.asarray(labels)[nearest].ravel()), 1)
    return (counts + 0.1) / (counts.sum(axis=1, keepdims=True) + 0.1 * num_classes)


def error_pairs(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float64 ``[C, C]``: cleanlab's confident joint of out-of-sample ``probs`` ``[m, C]`` and the given ``labels``,
    transposed to ``[true class, given label]``, with the diagonal zeroed and normalised to sum 1 (all zeros when
    nothing looks mislabelled): the estimated share of the wrong labels in each (true, given) pair."""
    # lazy: cleanlab (with pandas) is slow to import; only the pair canaries and detect's estimate need it
    from cleanlab.count import compute_confident_joint

    joint = compute_confident_joint(np.asarray(labels, np.int64), np.asarray(probs, np.float64)).T.astype(np.float64)
    if joint.shape != (num_classes, num_classes):  # cleanlab sizes it by the labels present
        full = np.zeros((num_classes, num_classes))
        full[: joint.shape[0], : joint.shape[1]] = joint
        joint = full
    np.fill_diagonal(joint, 0.0)
    return joint / joint.sum() if joint.sum() > 0 else joint


def uniform_pairs(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float64 ``[C, C]``: the pair shares of uniform flips, class frequency over the ``C - 1`` other classes."""
    freq = np.bincount(np.asarray(labels, np.int64), minlength=num_classes) / max(len(labels), 1)
    return freq[:, None] * (1 - np.eye(num_classes)) / max(num_classes - 1, 1)


def lookalike_pairs(images: ImageSource, labels: np.ndarray, num_classes: int, seed: int,
                    mix: float = PAIR_MIX) -> np.ndarray:
    """float64 ``[C, C]`` weights of the (true class, wrong label) pairs of ``--canary-kind pairs``.

    A quick model of the data's own errors before any training: leave-one-out nearest neighbours in the pixel space
    of :func:`pixel_features` (over a seeded stratified subset of :data:`POOL` examples) give out-of-sample class
    probabilities, and cleanlab's confident joint of those estimates which pairs the wrong labels fall in. ``mix`` of
    the weight follows that estimate, the rest the uniform flips (:func:`uniform_pairs`): the estimate from pixels is
    rough, and every pair keeps some canaries.
    """
    labels = np.asarray(labels, dtype=np.int64)
    pool = stratified_subset(labels, POOL, seed) if len(labels) > POOL else np.arange(len(labels))
    probs = neighbour_probs(pixel_features(images, pool), labels[pool], num_classes)
    estimated = error_pairs(probs, labels[pool], num_classes)
    uniform = uniform_pairs(labels, num_classes)
    return uniform if estimated.sum() == 0 else mix * estimated + (1 - mix) * uniform


def nearest_pairs(images: ImageSource, labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """float64 ``[C, C]``: the (true class, wrong label) pair shares of ``--canary-kind nearest``, the share of the
    pool (:func:`nearest_confusion`'s, same ``seed``) in each class whose nearest other label is each class."""
    labels = np.asarray(labels, dtype=np.int64)
    pool = stratified_subset(labels, POOL, seed) if len(labels) > POOL else np.arange(len(labels))
    vote = nearest_confusion(images, labels, seed)(pool)
    out = np.zeros((num_classes, num_classes))
    ok = vote >= 0
    np.add.at(out, (labels[pool][ok], vote[ok]), 1.0)
    return out / max(len(pool), 1)


def planting_pairs(kind: str, images: ImageSource | None, labels: np.ndarray, num_classes: int,
                   seed: int) -> np.ndarray:
    """float64 ``[C, C]``: the share of a canary of ``kind`` in each (true class, wrong label) pair, from the labels
    before the canaries (int ``[n]``) and the seed they were planted with (``DataConfig.seed + 6``); ``images`` may be
    None for ``random``. Raises ValueError for an unknown kind."""
    if kind == "random":
        return uniform_pairs(labels, num_classes)
    if images is None:
        raise ValueError(f"the pair shares of {kind} canaries need the training images")
    if kind == "pairs":
        return lookalike_pairs(images, labels, num_classes, seed)
    if kind == "nearest":
        return nearest_pairs(images, labels, num_classes, seed)
    if kind == "mixed":  # half pairs, half nearest
        return 0.5 * lookalike_pairs(images, labels, num_classes, seed) + 0.5 * nearest_pairs(images, labels,
                                                                                               num_classes, seed)
    raise ValueError(f"unknown canary kind {kind!r}")
