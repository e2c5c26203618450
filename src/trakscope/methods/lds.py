"""Linear datamodeling score (LDS; Park et al. 2023, arXiv 2303.14186, Sec. 2.2).

An attribution ``scores[train, target]`` predicts that a model trained on a subset ``S`` of the
training split outputs ``sum_{i in S} scores[i, target]`` on ``target``. LDS trains ``K`` models on
seeded random ``alpha``-fraction subsets, records each one's margin on every target (the model output
TRAK attributes), and averages over targets the Spearman correlation, across the ``K`` models, between
predicted and observed margins. Higher is better; 1 means the attribution orders the subset models
exactly as they behave, 0 means it knows nothing.

Subset models depend only on the data, model and training settings, ``alpha`` and the subset seed,
never on the projector, so they are cached once per run
(``lds/subsets/alpha{a}_seed{s}[_ep{E}]/model{i}.json`` + ``model{i}_{split}.npy``) and reused to
score any number of attribution matrices.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from scipy.stats import rankdata


def subset_masks(n_train: int, alpha: float, k: int, seed: int) -> np.ndarray:
    """bool ``[k, n_train]``: row ``i`` keeps exactly ``round(alpha * n_train)`` examples drawn without replacement.

    Row ``i`` is drawn from its own stream ``(seed, i)``, so asking for more models keeps the first ones.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if k < 1:
        raise ValueError(f"need at least one subset model, got {k}")
    size = int(round(alpha * n_train))
    if not 0 < size < n_train:
        raise ValueError(f"alpha={alpha} of {n_train} training examples keeps {size}; need between 1 and n-1")
    masks = np.zeros((k, n_train), dtype=bool)
    for i in range(k):
        masks[i, np.random.default_rng([seed, i]).permutation(n_train)[:size]] = True
    return masks


def predicted_outputs(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """float64 ``[K, n_target]`` datamodel predictions ``sum_{i in S_k} scores[i, t]``.

    Args:
        scores: ``[n_train, n_target]`` attribution scores ``scores[train, target]``.
        masks: bool ``[K, n_train]`` subsets.
    """
    if scores.shape[0] != masks.shape[1]:
        raise ValueError(f"scores cover {scores.shape[0]} training examples, masks {masks.shape[1]}")
    return masks.astype(np.float64) @ np.asarray(scores, dtype=np.float64)


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 ``[T]``: Spearman correlation of ``a[:, t]`` and ``b[:, t]`` (``[K, T]`` each; ties get mean ranks).

    A column that is constant in either input has no correlation: NaN.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [K, T] arrays of one shape, got {a.shape} and {b.shape}")
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    denom = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=0) / np.where(denom > 0, denom, 1.0), np.nan)


def lds(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, np.ndarray]:
    """LDS: mean over targets of the Spearman correlation across models. Higher is better.

    Args:
        predicted: ``[K, T]`` datamodel predictions (:func:`predicted_outputs`).
        actual: ``[K, T]`` observed outputs (margins) of the ``K`` subset models on the ``T`` targets.

    Returns:
        (mean over targets with a defined correlation, float64 ``[T]`` per-target correlations, NaN where undefined).
    """
    if predicted.shape[0] < 3:
        raise ValueError(f"a rank correlation needs at least 3 subset models, got {predicted.shape[0]}")
    per_target = spearman_columns(np.asarray(predicted, np.float64), np.asarray(actual, np.float64))
    if np.isnan(per_target).all():
        raise ValueError("no target has a defined rank correlation (constant predictions or outputs)")
    return float(np.nanmean(per_target)), per_target


def ci95(per_target: np.ndarray) -> tuple[float, float]:
    """Normal 95% interval of the mean over targets (mean ± 1.96 SE; spread over targets only, K held fixed)."""
    v = per_target[~np.isnan(per_target)]
    mean = float(v.mean())
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return mean - half, mean + half


def model_seed(seed: int, i: int) -> int:
    """Training seed of subset model ``i`` (initial weights and data order), from its own stream ``(seed, i)``."""
    return int(np.random.SeedSequence([seed, i, 7]).generate_state(1)[0])


def mask_hash(mask: np.ndarray) -> str:
    """Short SHA-256 of a subset's kept indices."""
    return hashlib.sha256(np.flatnonzero(mask).astype(np.int64).tobytes()).hexdigest()[:16]












def choose_targets(n_split: int, max_targets: int | None, seed: int) -> np.ndarray:
    """Sorted target indices: all of them, or a seeded random ``max_targets`` of them."""
    if max_targets is None or max_targets >= n_split:
        return np.arange(n_split)
    if max_targets < 1:
        raise ValueError(f"--max-targets must be positive, got {max_targets}")
    return np.sort(np.random.default_rng([seed, 1]).choice(n_split, max_targets, replace=False))




