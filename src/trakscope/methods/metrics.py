"""Quality of a suspicion ranking against known (planted) label noise: array in, array out.

Every function here takes ``suspicion``, float ``[n]`` where **higher = more suspicious = inspected
first**, and ``truth``, bool ``[n]`` (True = the label really is wrong). Ties in ``suspicion`` are
broken by index order (the lower index is inspected first), so every result is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

RECALL_FRACTIONS = (0.05, 0.10, 0.20)  # the inspected fractions every detection table and metrics file reports


def recall_key(fraction: float) -> str:
    """The metric's name at an inspected fraction: ``recall@5%`` for 0.05."""
    return f"recall@{fraction * 100:g}%"


def _check(suspicion: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert the two inputs (one helper, as in cleanlab)."""
    s = np.asarray(suspicion, dtype=np.float64)
    t = np.asarray(truth).astype(bool)
    if s.ndim != 1 or s.shape != t.shape:
        raise ValueError(f"suspicion and truth must be 1-D of the same length, got {s.shape} and {t.shape}")
    if np.isnan(s).any():
        raise ValueError("suspicion contains NaN")
    return s, t


def inspection_order(suspicion: np.ndarray) -> np.ndarray:
    """Indices in the order a reviewer would inspect them: most suspicious first, ties by index.

    Args:
        suspicion: float ``[n]``, higher = more suspicious.

    Returns:
        int64 ``[n]`` permutation of ``range(n)``.
    """
    s = np.asarray(suspicion, dtype=np.float64)
    return np.argsort(-s, kind="stable").astype(np.int64)


def inspection_rank(suspicion: np.ndarray) -> np.ndarray:
    """int64 ``[n]``: 1 for the example inspected first, n for the one inspected last."""
    order = inspection_order(suspicion)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


def roc_auc(suspicion: np.ndarray, truth: np.ndarray) -> float:
    """Probability that a random wrong label is more suspicious than a random clean one (ties count 1/2).

    Computed from the Mann-Whitney U statistic with average ranks. 1 = perfect, 0.5 = chance,
    0 = reversed. NaN when ``truth`` is all True or all False.
    """
    s, t = _check(suspicion, truth)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks, ascending
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_precision(suspicion: np.ndarray, truth: np.ndarray) -> float:
    """Mean, over the wrong labels, of the precision of the inspection order when each is reached.

    Tied suspicions form one threshold (as in scikit-learn's ``average_precision_score``):
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds. NaN when nothing is wrong.
    """
    s, t = _check(suspicion, truth)
    if not t.any():
        return math.nan
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], t[order]
    # the last position of every run of equal suspicions is a threshold
    last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), len(s) - 1]
    tp = np.cumsum(t_sorted)[last]
    precision = tp / (last + 1)
    recall = tp / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_fraction(suspicion: np.ndarray, truth: np.ndarray, fraction: float) -> float:
    """Share of the wrong labels found after inspecting the top ``ceil(fraction * n)`` examples.

    Ties are broken by index order. NaN when nothing is wrong.
    """
    s, t = _check(suspicion, truth)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not t.any():
        return math.nan
    k = math.ceil(fraction * len(s) - 1e-9)
    top = inspection_order(s)[:k]
    return float(t[top].sum() / t.sum())


def detection_metrics(
    suspicion: np.ndarray, truth: np.ndarray, fractions: tuple[float, ...] = RECALL_FRACTIONS
) -> dict[str, float]:
    """ROC-AUC, average precision and recall at each inspected fraction, as one JSON-ready dict.

    Keys: ``roc_auc``, ``average_precision``, ``recall@5%`` (etc.).
    """
    out = {"roc_auc": roc_auc(suspicion, truth), "average_precision": average_precision(suspicion, truth)}
    for f in fractions:
        out[recall_key(f)] = recall_at_fraction(suspicion, truth, f)
    return out

