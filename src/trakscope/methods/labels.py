"""Suggested labels and label issues, in the spirit of cleanlab's ``find_label_issues``: arrays in, arrays out.

A suggested label is the class a model that did not train on the example finds most probable (out-of-sample
k-fold probabilities), or, where no such model exists, the ensemble's most probable class (in-sample: it has seen
the given label, so it tends to repeat it). Where the suggestion is the given label, the suggestion is to keep it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import RECALL_FRACTIONS, inspection_order, inspection_rank

# Where suggestions come from: k-fold out-of-sample probabilities, else the ensemble's (in-sample) probabilities.
OUT_OF_SAMPLE, ENSEMBLE = "out_of_sample", "ensemble"


def suggested_labels(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most probable class of each example and its probability.

    Args:
        probs: float ``[n, C]`` predicted probabilities (rows sum to 1).

    Returns:
        int64 ``[n]`` suggested labels and float64 ``[n]`` their probabilities.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be [n, C] with C >= 2 classes, got shape {p.shape}")
    suggested = p.argmax(axis=1).astype(np.int64)
    return suggested, p[np.arange(len(p)), suggested]


def flagged_top(suspicion: np.ndarray, fraction: float) -> np.ndarray:
    """bool ``[n]``: the ``ceil(fraction * n)`` most suspicious (float ``[n]``, higher = inspected first)."""
    n = len(suspicion)
    flagged = np.zeros(n, dtype=bool)
    flagged[inspection_order(suspicion)[:math.ceil(fraction * n - 1e-9)]] = True
    return flagged


def suggestion_accuracy(suggested: np.ndarray, true_labels: np.ndarray, flagged: np.ndarray,
                        wrong: np.ndarray) -> dict[str, float | int]:
    """How often the suggestion is the true label among the flagged examples.

    Args:
        suggested, true_labels: int ``[n]``; flagged: bool ``[n]`` the examples a scorer flags; wrong: bool ``[n]``
            the labels known to be wrong (planted noise, or canaries).

    Returns:
        ``n_flagged``, ``n_flagged_wrong``; ``suggestion_correct_on_wrong``: the share of the flagged wrong labels
        whose suggestion is their true label (what relabelling them would fix); ``suggestion_correct``: the share of
        all flagged examples whose suggestion is their true label (the flagged labels right after relabelling). NaN
        where nothing qualifies.
    """
    right = np.asarray(suggested) == np.asarray(true_labels)
    flagged, wrong = np.asarray(flagged, dtype=bool), np.asarray(wrong, dtype=bool)
    hit = flagged & wrong
    return {"n_flagged": int(flagged.sum()), "n_flagged_wrong": int(hit.sum()),
            "suggestion_correct_on_wrong": float(right[hit].mean()) if hit.any() else math.nan,
            "suggestion_correct": float(right[flagged].mean()) if flagged.any() else math.nan}


def suggestion_quality(suspicion: np.ndarray, suggested: np.ndarray, true_labels: np.ndarray, wrong: np.ndarray,
                       fractions: Sequence[float] = RECALL_FRACTIONS) -> dict[str, dict]:
    """:func:`suggestion_accuracy` of the top ``fraction`` of a ranking, per fraction (keys ``top 5%`` ...).

    ``suspicion`` float ``[n]`` (higher = inspected first); the other arrays as in :func:`suggestion_accuracy`.
    """
    return {f"top {f * 100:g}%": suggestion_accuracy(suggested, true_labels, flagged_top(suspicion, f), wrong)
            for f in fractions}


def estimated_issue_count(labels: np.ndarray, pred_probs: np.ndarray) -> int:
    """cleanlab's estimate of how many labels are wrong (``num_label_issues``, from the confident joint).

    ``labels`` int ``[n]``, ``pred_probs`` float ``[n, C]`` (out-of-sample probabilities for an honest count).
    """
    # lazy: cleanlab (with pandas) is slow to import, and only this estimate needs it here
    from cleanlab.count import num_label_issues

    return int(num_label_issues(np.asarray(labels, dtype=np.int64), np.asarray(pred_probs, dtype=np.float64)))


def issue_table(labels: np.ndarray, pred_probs: np.ndarray, scores: np.ndarray | None = None, *,
                worse_is_high: bool = False, scorer: str = "self_confidence", num_issues: int | None = None,
                classes: Sequence[str] | None = None) -> Any:
    """A ``pandas.DataFrame`` of label issues, one row per example in index order.

    Args:
        labels: int ``[n]`` given labels; pred_probs: float ``[n, C]`` probabilities (out-of-sample when possible):
            the suggested labels and cleanlab's issue count come from them.
        scores: float ``[n]`` scores of a scorer that orders the examples (``worse_is_high`` says which end is
            suspicious); None: cleanlab's self-confidence ``pred_probs[i, labels[i]]`` (low = suspicious).
        scorer: the name of the ordering scorer (its column is ``<scorer>_score``).
        num_issues: how many to flag; None: cleanlab's confident-joint estimate (:func:`estimated_issue_count`).
        classes: class names, for ``given_label_name`` and ``suggested_label_name``.

    Returns:
        Columns ``is_label_issue`` (the ``num_issues`` most suspicious: cleanlab's ``filter_by=
        "low_self_confidence"`` rule, ordered by ``scores`` when given), ``label_quality`` (in [0, 1], low =
        suspicious: the self-confidence without ``scores``, else the share of the other examples ranked more
        suspicious), ``given_label``, ``suggested_label``, ``suggested_prob``, ``<scorer>_score`` and
        ``inspect_rank`` (1 = most suspicious); the ``*_name`` columns with ``classes``.
    """
    # lazy: pandas is slow to import and only this table needs it
    import pandas as pd

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"labels [n] and pred_probs [n, C] must agree, got {labels.shape} and {probs.shape}")
    self_conf = probs[np.arange(len(labels)), labels]
    score = self_conf if scores is None else np.asarray(scores, dtype=np.float64)
    if score.shape != labels.shape:
        raise ValueError(f"scores must be [n] = {labels.shape}, got {score.shape}")
    rank = inspection_rank(score if (worse_is_high and scores is not None) else -score)
    count = estimated_issue_count(labels, probs) if num_issues is None else int(num_issues)
    suggested, prob = suggested_labels(probs)
    quality = self_conf if scores is None else (rank - 1) / max(1, len(rank) - 1)
    table = pd.DataFrame({"is_label_issue": rank <= count, "label_quality": quality, "given_label": labels,
                          "suggested_label": suggested, "suggested_prob": prob, f"{scorer}_score": score,
                          "inspect_rank": rank})
    if classes is not None:
        names = np.asarray(list(classes), dtype=object)
        table.insert(3, "given_label_name", names[labels])
        table.insert(5, "suggested_label_name", names[suggested])
    return table
