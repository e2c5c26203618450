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


# The canary estimate: a recall measured on the canaries stands for the recall on the data's own errors. It is an
# estimate with two uncertainties: the canary count (binomial) and how far the canaries' difficulty sits from the
# real errors' (the spread between canary kinds, where several were planted).
Z95 = 1.959963984540054  # two-sided 95% normal quantile
WIDTHS = (0.4, 0.3, 0.2, 0.1)  # full widths of the 95% interval that `detect` tabulates canary counts for


def wilson_interval(found: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial share ``found / n`` (95% with the default ``z``).

    ``n`` may be an effective count (a float). Returns ``(low, high)`` in ``[0, 1]``; ``(0, 1)`` when ``n`` is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(found / n, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def canaries_for_width(width: float, recall: float = 0.5, z: float = Z95) -> int:
    """The fewest canaries whose Wilson 95% interval is at most ``width`` wide (full width) at a canary recall of
    ``recall``; 0.5 is the worst case. Raises ValueError for a width outside ``(0, 1)``."""
    if not 0.0 < width < 1.0:
        raise ValueError(f"interval width must be in (0, 1), got {width}")
    n = 1
    while True:
        low, high = wilson_interval(recall * n, n, z)
        if high - low <= width:
            return n
        n = n + 1 if n < 64 else math.ceil(n * 1.02)


def estimate_with_interval(hits: np.ndarray, kinds: np.ndarray | None = None) -> dict[str, float]:
    """A share measured on canaries, with its 95% interval.

    Args:
        hits: bool ``[m]``, True for each canary found (e.g. in the top 10% of the ranking).
        kinds: int ``[m]``, the kind each canary was planted as (None: one kind). With several kinds the estimate
            is the share over all canaries, and the Wilson interval is widened to cover every kind's own share:
            how much the estimate depends on the canaries' design is part of its uncertainty.

    Returns:
        ``estimate``, ``low``, ``high`` and ``n`` (NaN estimate without canaries).
    """
    hits = np.asarray(hits, dtype=bool)
    n = len(hits)
    if n == 0:
        return {"estimate": math.nan, "low": 0.0, "high": 1.0, "n": 0}
    low, high = wilson_interval(float(hits.sum()), n)
    if kinds is not None:
        kinds = np.asarray(kinds)
        shares = [float(hits[kinds == k].mean()) for k in np.unique(kinds)]
        low, high = min(low, *shares), max(high, *shares)
    return {"estimate": float(hits.mean()), "low": low, "high": high, "n": n}


def recall_estimates(suspicion: np.ndarray, canary: np.ndarray, fractions: tuple[float, ...] = RECALL_FRACTIONS,
                     kinds: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Recall at each inspected fraction estimated on the canaries, with its 95% interval.

    Args:
        suspicion: float ``[n]``, higher = inspected first (the whole training split's ranking).
        canary: bool ``[n]``, the canaries.
        kinds: int ``[n]``, each example's canary kind (read at the canaries only; None: one kind).

    Returns:
        ``{recall@10%: {estimate, low, high, n}}`` per fraction (see :func:`estimate_with_interval`).
    """
    s, c = _check(suspicion, canary)
    order = inspection_order(s)
    out = {}
    for f in fractions:
        top = np.zeros(len(s), dtype=bool)
        top[order[: math.ceil(f * len(s) - 1e-9)]] = True
        out[recall_key(f)] = estimate_with_interval(top[c], None if kinds is None else np.asarray(kinds)[c])
    return out
