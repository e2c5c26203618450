"""Mislabel / harm scorers: plain functions from arrays to one score per training example.

Each scorer returns float64 ``[n_train]`` in its natural units; which direction is suspicious, and the
scorer's name and description, are declared once in :mod:`.registry`.

Only the train and val splits are used; the test split stays out of every selection.
"""

from __future__ import annotations

import numpy as np

from .d3m import alignment_scores, auto_groups, group_losses


def self_influence(self_scores: np.ndarray) -> np.ndarray:
    """TRAK self-influence ``scores[i, i]`` (the scorer of dattri and TracIn).

    Args:
        self_scores: float ``[n_train]``.

    Returns:
        float64 ``[n_train]``; **high = suspicious** (the model needed to memorise the example).
    """
    return np.asarray(self_scores, dtype=np.float64).copy()


def val_influence(
    scores: np.ndarray, train_labels: np.ndarray | None = None, val_labels: np.ndarray | None = None, chunk: int = 4096
) -> np.ndarray:
    """Summed TRAK influence of each training example on validation examples.

    Args:
        scores: float ``[n_train, n_val]`` ``scores[train, val]`` (may be memory-mapped).
        train_labels: int ``[n_train]``; with ``val_labels``, only val examples of the training
            example's own label are summed. None = all val examples.
        val_labels: int ``[n_val]``.
        chunk: training rows processed at once.

    Returns:
        float64 ``[n_train]``; **low (negative) = harmful**: including the example lowers the
        margins of those val examples.
    """
    if (train_labels is None) != (val_labels is None):
        raise ValueError("give both train_labels and val_labels, or neither")
    n_train = scores.shape[0]
    out = np.empty(n_train, dtype=np.float64)
    for s in range(0, n_train, chunk):
        block = np.asarray(scores[s : s + chunk], dtype=np.float64)
        if train_labels is None:
            out[s : s + chunk] = block.sum(axis=1)
        else:
            same = np.asarray(train_labels)[s : s + chunk, None] == np.asarray(val_labels)[None, :]
            out[s : s + chunk] = (block * same).sum(axis=1)
    return out


def resolve_groups(groups: str | np.ndarray, scores: np.ndarray, val_labels: np.ndarray) -> np.ndarray:
    """int64 ``[n_val]`` D3M group ids: ``"classes"`` (one per class), ``"auto"`` (Auto-D3M) or given ids."""
    val_labels = np.asarray(val_labels, dtype=np.int64)
    if isinstance(groups, str):
        if groups == "classes":
            return np.unique(val_labels, return_inverse=True)[1].astype(np.int64)
        if groups == "auto":
            return auto_groups(scores, val_labels)
        raise ValueError(f"groups must be 'classes' or 'auto', got {groups!r}")
    g = np.asarray(groups, dtype=np.int64)
    if g.shape != val_labels.shape:
        raise ValueError(f"groups must give one id per validation example ({len(val_labels)}), got {g.shape}")
    return g


def d3m_scores(
    scores: np.ndarray, val_probs: np.ndarray, val_labels: np.ndarray, groups: str | np.ndarray = "classes"
) -> tuple[np.ndarray, np.ndarray]:
    """D3M alignment scores with the validation groups chosen as asked.

    Args:
        scores: float ``[n_train, n_val]``.
        val_probs: float ``[n_val, C]`` ensemble-mean probabilities (gives the group losses).
        val_labels: int ``[n_val]``.
        groups: ``"classes"`` (one group per class), ``"auto"`` (Auto-D3M, 2 pseudo-groups per
            class) or an int ``[n_val]`` array of group ids.

    Returns:
        ``(A, group_ids)``: float64 ``[n_train]`` (**low = detrimental**) and int64 ``[n_val]``.
    """
    g = resolve_groups(groups, scores, val_labels)
    return alignment_scores(scores, g, group_losses(val_probs, val_labels, g)), g


def training_loss(train_probs: np.ndarray, train_labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of the ensemble on each training example, ``-log p_i[y_i]``.

    Args:
        train_probs: float ``[n_train, C]`` ensemble-mean probabilities (in-sample).
        train_labels: int ``[n_train]`` labels as trained.

    Returns:
        float64 ``[n_train]``; **high = suspicious**.
    """
    p = np.asarray(train_probs, dtype=np.float64)
    y = np.asarray(train_labels, dtype=np.int64)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))


def cleanlab_quality(oos_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's confident learning on out-of-sample probabilities.

    Args:
        oos_probs: float ``[n_train, C]`` predicted probabilities from models that never saw the example.
        labels: int ``[n_train]`` labels as trained.

    Returns:
        ``(quality, issues)``: float64 ``[n_train]`` label quality (``get_label_quality_scores``,
        **low = suspicious**) and bool ``[n_train]`` flagged by ``find_label_issues``.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    p, y = _normalized(oos_probs), np.asarray(labels, dtype=np.int64)
    return np.asarray(get_label_quality_scores(y, p), dtype=np.float64), np.asarray(find_label_issues(y, p), bool)


def _normalized(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)
