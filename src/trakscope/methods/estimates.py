"""What a run can say about its own detection quality without ground truth: array in, array out.

A recall measured on the canaries (labels trakscope flipped itself) stands for the recall on the data's own errors:
it is an **estimate**, with two uncertainties, the canary count (binomial: the Wilson interval) and how far the
canaries' difficulty sits from the real errors' (the spread between canary kinds, where several are compared).
:func:`canaries_for_width` says how many canaries an interval width needs; :func:`estimated_wrong_labels` how many
wrong labels the data itself holds (cleanlab's confident joint).
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import RECALL_FRACTIONS, inspection_order, recall_key

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
    # the ends are exact at 0 and 1 (the formula lands a rounding error short of them)
    return (0.0 if p == 0 else max(0.0, centre - half)), (1.0 if p == 1 else min(1.0, centre + half))


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


def estimate_with_interval(hits: np.ndarray, kinds: np.ndarray | None = None,
                           weights: np.ndarray | None = None) -> dict[str, float]:
    """A share measured on canaries, with its 95% interval.

    Args:
        hits: bool ``[m]``, True for each canary found (e.g. in the top 10% of the ranking).
        kinds: int ``[m]``, the kind each canary was planted as (None: one kind). With several kinds the estimate
            is the share over all canaries, and the Wilson interval is widened to cover every kind's own (weighted)
            share: how much the estimate depends on the canaries' design is part of its uncertainty.
        weights: float ``[m]`` >= 0, importance weights (None: all 1). The estimate is the weighted share and the
            interval is Wilson's at the effective count ``(sum w)^2 / sum w^2`` (Kish), fewer than ``m`` when the
            weights are uneven.

    Returns:
        ``estimate``, ``low``, ``high``, ``n`` and ``n_effective`` (NaN estimate without canaries or weight).
    """
    hits = np.asarray(hits, dtype=bool)
    w = np.ones(len(hits)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != hits.shape or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be finite, non-negative and one per canary, got shape {w.shape}")
    n, total = len(hits), float(w.sum())
    if n == 0 or total <= 0:
        return {"estimate": math.nan, "low": 0.0, "high": 1.0, "n": n, "n_effective": 0.0}
    share, n_eff = float(w[hits].sum() / total), total**2 / float((w**2).sum())
    low, high = wilson_interval(share * n_eff, n_eff)
    if kinds is not None:
        kinds = np.asarray(kinds)
        shares = [float(w[hits & (kinds == k)].sum() / w[kinds == k].sum()) for k in np.unique(kinds)
                  if w[kinds == k].sum() > 0]
        low, high = min(low, *shares), max(high, *shares)
    return {"estimate": share, "low": low, "high": high, "n": n, "n_effective": n_eff}


def recall_estimates(suspicion: np.ndarray, canary: np.ndarray, fractions: tuple[float, ...] = RECALL_FRACTIONS,
                     kinds: np.ndarray | None = None,
                     weights: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Recall at each inspected fraction estimated on the canaries, with its 95% interval.

    Args:
        suspicion: float ``[n]``, higher = inspected first (the whole training split's ranking).
        canary: bool ``[n]``, the canaries.
        kinds: int ``[n]``, each example's canary kind (read at the canaries only; None: one kind).
        weights: float ``[n]``, each example's importance weight (read at the canaries only; None: all 1).

    Returns:
        ``{recall@10%: {estimate, low, high, n}}`` per fraction (see :func:`estimate_with_interval`).
    """
    s, c = np.asarray(suspicion, dtype=np.float64), np.asarray(canary, dtype=bool)
    if s.ndim != 1 or s.shape != c.shape:
        raise ValueError(f"suspicion and canary must be 1-D of the same length, got {s.shape} and {c.shape}")
    order = inspection_order(s)
    out = {}
    for f in fractions:
        top = np.zeros(len(s), dtype=bool)
        top[order[: math.ceil(f * len(s) - 1e-9)]] = True
        out[recall_key(f)] = estimate_with_interval(top[c], None if kinds is None else np.asarray(kinds)[c],
                                                    None if weights is None else np.asarray(weights)[c])
    return out


def estimated_wrong_labels(probs: np.ndarray, labels: np.ndarray) -> int:
    """How many of ``labels`` (int ``[n]``) are wrong, estimated by the off-diagonal of cleanlab's confident joint of
    ``probs`` (float ``[n, C]``, out-of-sample where they exist: in-sample probabilities of a network that fitted
    its labels count too few). Chosen on planted noise: the calibrated joint counted 114-156 where 90 labels were
    flipped, the plain off-diagonal 85-105 (BENCHMARKS.md)."""
    # lazy: cleanlab (with pandas) is slow to import, and only detect's estimate needs it
    from cleanlab.count import num_label_issues

    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2:
        return 0
    return int(num_label_issues(labels, np.asarray(probs, dtype=np.float64), estimation_method="off_diagonal"))


def pair_weights(true: np.ndarray, given: np.ndarray, planted: np.ndarray, errors: np.ndarray) -> np.ndarray | None:
    """Importance weights that make canaries stand for the data's own errors, pair by pair.

    Args:
        true, given: int ``[m]``, each canary's true class and the wrong label it was given.
        planted: float ``[C, C]``, the share of canaries planted in each (true class, given label) pair.
        errors: float ``[C, C]``, the estimated share of the data's own wrong labels in each pair.

    Returns:
        float64 ``[m]`` ``errors / planted`` at each canary's pair, scaled to mean 1 (0 where nothing was planted);
        None when every weight is 0 (no canary sits in a pair the errors are estimated in).
    """
    share = np.asarray(planted, np.float64)[true, given]
    w = np.where(share > 0, np.asarray(errors, np.float64)[true, given] / np.where(share > 0, share, 1.0), 0.0)
    return None if w.sum() <= 0 else w / w.mean()
