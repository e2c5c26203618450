"""Mislabel / harm scorers: plain functions from arrays to one score per training example.

Each scorer returns float64 ``[n_train]`` in its natural units; which direction is suspicious, and the
scorer's name and description, are declared once in :mod:`.registry`.

Only the train and val splits are used; the test split stays out of every selection.
"""

from __future__ import annotations

import numpy as np

from ..attribution.score import gram, regularized_inverse
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


def given_prob(train_probs: np.ndarray, train_labels: np.ndarray) -> np.ndarray:
    """float64 ``[n_train]`` ``p[i, y_i]``: the probability of each example's given label (``[n_train, C]`` in)."""
    p = np.asarray(train_probs, dtype=np.float64)
    return p[np.arange(len(train_labels)), np.asarray(train_labels, dtype=np.int64)]


def train_margin(train_probs: np.ndarray, train_labels: np.ndarray) -> np.ndarray:
    """TRAK's output function on the ensemble's probabilities: ``log p[y] - log(1 - p[y])``.

    With logits ``z`` this is ``z_y - logsumexp_{k != y} z_k``, the margin whose change ``scores[i, j]`` estimates.

    Returns:
        float64 ``[n_train]``.
    """
    return _log_odds(given_prob(train_probs, train_labels))


def _log_odds(py: np.ndarray) -> np.ndarray:
    py = np.clip(np.asarray(py, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(py) - np.log1p(-py)


def loo_margin(train_probs: np.ndarray, train_labels: np.ndarray, self_scores: np.ndarray) -> np.ndarray:
    """TRAK-estimated leave-one-out margin: the in-sample margin minus the example's own predicted contribution.

    Units. The loss is ``log(1 + exp(-f))`` of the margin ``f``, so its Gauss-Newton Hessian is
    ``H = sum_j w_j g_j g_j^T`` with ``w_j = p_j (1 - p_j)``, and the one-step Newton estimate of how much
    including example ``i`` raised its own margin is ``g_i^T H^-1 g_i (1 - p_i)``. TRAK's ``scores[i, i]`` uses the
    unweighted ``X^T X`` instead of ``H``; with ``H ~ mean(w) X^T X`` the contribution is ``scores[i, i] / mean(w)``.
    Without that factor (``mean(w)`` is ~0.01 on a well-fit training set) the correction is negligible and the
    scorer is the in-sample margin. The ridge still shrinks it; no leverage correction is applied.

    Args:
        train_probs: float ``[n_train, C]`` ensemble-mean probabilities (in-sample).
        train_labels: int ``[n_train]`` labels as trained.
        self_scores: float ``[n_train]`` TRAK self-influence.

    Returns:
        float64 ``[n_train]`` ``margin_i - scores[i, i] / mean(w)``; **low = suspicious** (the label is not
        supported without the example itself).
    """
    return loo_margin_of(given_prob(train_probs, train_labels), self_scores)


def loo_margin_of(given: np.ndarray, self_scores: np.ndarray) -> np.ndarray:
    """:func:`loo_margin` from the probability of the given label, float ``[n_train]``, and the matching
    self-influence (e.g. both at the earliest checkpoints). Float64 ``[n_train]``, **low = suspicious**."""
    py = np.clip(np.asarray(given, dtype=np.float64), 1e-12, 1 - 1e-12)
    weight = float(np.mean(py * (1 - py)))
    return _log_odds(py) - np.asarray(self_scores, dtype=np.float64) / max(weight, 1e-12)


def leverage(features: np.ndarray, weights: np.ndarray, ridge: float, block: int = 8192) -> np.ndarray:
    """Each example's leverage under the Gauss-Newton kernel of the margin loss: ``h_i = x_i^T H^-1 x_i``.

    ``H = X^T W X + lambda I`` with ``W = diag(weights)`` (``p (1 - p)`` of the given label) and ``lambda = ridge *
    mean(diag(X^T W X))``, TRAK's relative ridge on the weighted kernel (see :func:`regularized_inverse`).

    Args:
        features: float ``[n, d]`` one checkpoint's training features (may be memory-mapped).
        weights: float ``[n]`` non-negative Hessian weights of the same checkpoint.
        ridge: > 0, relative to the mean diagonal of ``X^T W X``.
        block: rows processed at once.

    Returns:
        float64 ``[n]`` ``h_i >= 0``; ``weights_i * h_i < 1`` (the example's share of ``H`` along ``x_i``).
    """
    w = np.asarray(weights, dtype=np.float64)
    inv = regularized_inverse(gram(features, weights=w, block=block), ridge)[0]
    out = np.empty(len(w), dtype=np.float64)
    for s in range(0, len(w), block):
        x = np.asarray(features[s : s + block], dtype=np.float64)
        out[s : s + block] = ((x @ inv) * x).sum(1)
    return out


def loo_margin_leverage(given: np.ndarray, leverages: np.ndarray) -> np.ndarray:
    """Leave-one-out margin by a Newton step per checkpoint, with each checkpoint's own probabilities and leverage.

    At checkpoint ``k`` the loss of the margin ``f`` is ``log(1 + exp(-f))``: gradient ``-(1 - p)``, Hessian weight
    ``w = p (1 - p)``. Leaving example ``i`` out moves the weights by ``-H_{-i}^-1 (1 - p_i) x_i`` (one Newton step
    from the optimum) and, by Sherman-Morrison, ``x_i^T H_{-i}^-1 x_i = h_i / (1 - w_i h_i)``, so its margin drops by
    ``(1 - p_i) h_i / (1 - w_i h_i)``: exact to second order for a convex model such as logistic regression.

    Args:
        given: float ``[K, n]`` probability of the given label under each checkpoint (``1 - Q``, as featurized).
        leverages: float ``[K, n]`` :func:`leverage` of each checkpoint, weighted by that checkpoint's ``p (1 - p)``.

    Returns:
        float64 ``[n]`` the mean over checkpoints of ``margin_k - (1 - p_k) h_k / (1 - w_k h_k)``; **low =
        suspicious** (the label is not supported without the example itself).
    """
    py = np.clip(np.asarray(given, dtype=np.float64), 1e-12, 1 - 1e-12)
    h = np.asarray(leverages, dtype=np.float64)
    if py.shape != h.shape or py.ndim != 2:
        raise ValueError(f"given and leverages must both be [checkpoints, n_train], got {py.shape} and {h.shape}")
    w = py * (1 - py)
    drop = (1 - py) * h / np.clip(1 - w * h, 1e-12, None)
    return (_log_odds(py) - drop).mean(axis=0)


def area_under_margin(aum: np.ndarray) -> np.ndarray:
    """AUM (Pleiss et al. 2020): the training-time margin averaged over epochs and ensemble members.

    Args:
        aum: float ``[n_train]`` from ``models/aum.npy`` (recorded by the trainer).

    Returns:
        float64 ``[n_train]``; **low = suspicious** (the given label kept losing to another class).
    """
    a = np.asarray(aum, dtype=np.float64)
    if np.isnan(a).any():
        raise ValueError("AUM is NaN for some training examples (never trained on)")
    return a.copy()


def cleanlab_quality(oos_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's confident learning on out-of-sample probabilities.

    Args:
        oos_probs: float ``[n_train, C]`` predicted probabilities from models that never saw the example.
        labels: int ``[n_train]`` labels as trained.

    Returns:
        ``(quality, issues)``: float64 ``[n_train]`` label quality (``get_label_quality_scores``,
        **low = suspicious**) and bool ``[n_train]`` flagged by ``find_label_issues``.
    """
    # lazy: cleanlab (with pandas) is slow to import, and only the cleanlab scorer needs it
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    p, y = _normalized(oos_probs), np.asarray(labels, dtype=np.int64)
    # n_jobs=1: cleanlab's default forks a multiprocessing pool and terminates it at once; a SIGTERM that reaches a
    # worker between fork and Python's after-fork reset is dropped under the CLI's SIGTERM handler, and the parent
    # then waits for that worker forever (reproduced: ~1 call in 130). The result does not depend on n_jobs.
    issues = find_label_issues(y, p, n_jobs=1)
    return np.asarray(get_label_quality_scores(y, p), dtype=np.float64), np.asarray(issues, bool)


def _normalized(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)
