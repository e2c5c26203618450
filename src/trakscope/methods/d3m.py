"""D3M (Jain, Hamidieh, Georgiev, Ilyas, Ghassemi, Madry, NeurIPS 2024) group alignment scores, and Auto-D3M groups.

D3M weights each training example's TRAK influence on every validation group by that group's loss:
``A_i = (1/G) sum_g L_g * mean_{j in V_g} scores[i, j]``. A training example that pushes the
high-loss groups the wrong way gets a low (negative) ``A_i``: **low = detrimental**. The D3M
heuristic removes every example with ``A_i < 0``.

Auto-D3M needs no group labels: within each class it splits the validation examples into two
pseudo-groups by the sign of their first principal component of the L2-normalised score columns.

Differences from the authors' code, on purpose: the scores passed in come from every checkpoint of
the ensemble (TRAK's average), not only the last one; the PCA projection is centred (the authors
project the uncentred rows, whose signs can all agree, leaving one group).
"""

from __future__ import annotations

import numpy as np


def group_losses(val_probs: np.ndarray, val_labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean cross-entropy of the ensemble on each validation group.

    Args:
        val_probs: float ``[n_val, C]`` ensemble-mean softmax probabilities.
        val_labels: int ``[n_val]`` labels.
        groups: int ``[n_val]`` group id in ``0..G-1`` of each validation example.

    Returns:
        float64 ``[G]``: ``L_g = mean_{j in V_g} -log p_j[y_j]`` (higher = the model does worse on g);
        NaN for an empty group.
    """
    p = np.asarray(val_probs, dtype=np.float64)
    y = np.asarray(val_labels, dtype=np.int64)
    loss = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))
    return _group_means(loss[None, :], groups)[0]


def _group_means(values: np.ndarray, groups: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """``[r, n_val]`` -> ``[r, G]`` mean over the columns of each group (NaN for empty groups)."""
    groups = np.asarray(groups, dtype=np.int64)
    if groups.ndim != 1 or len(groups) != values.shape[1]:
        raise ValueError(f"groups must be 1-D of length {values.shape[1]}, got shape {groups.shape}")
    if len(groups) and groups.min() < 0:
        raise ValueError("group ids must be non-negative")
    if n_groups is None:
        n_groups = int(groups.max()) + 1 if len(groups) else 0
    onehot = np.zeros((len(groups), n_groups))
    onehot[np.arange(len(groups)), groups] = 1.0
    counts = onehot.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values @ onehot) / counts


def alignment_scores(scores: np.ndarray, groups: np.ndarray, losses: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """D3M group alignment score of every training example.

    Args:
        scores: float ``[n_train, n_val]`` TRAK scores ``scores[train, val]`` (may be memory-mapped).
        groups: int ``[n_val]`` group id of each validation example, ``0..G-1``.
        losses: float ``[G]`` mean loss of each group (:func:`group_losses`).
        chunk: training rows processed at once (bounds memory).

    Returns:
        float64 ``[n_train]``: ``A_i = (1/G) sum_g L_g mean_{j in V_g} scores[i, j]`` over the
        non-empty groups. **Low = detrimental**; ``A_i < 0`` is D3M's removal rule.
    """
    losses = np.asarray(losses, dtype=np.float64)
    counts = np.bincount(np.asarray(groups, dtype=np.int64), minlength=len(losses))
    if len(counts) != len(losses):
        raise ValueError(f"{len(counts)} groups in `groups` but {len(losses)} losses")
    present = counts > 0
    n_train = scores.shape[0]
    out = np.empty(n_train, dtype=np.float64)
    for s in range(0, n_train, chunk):
        means = _group_means(np.asarray(scores[s : s + chunk], dtype=np.float64), groups, len(losses))  # [b, G]
        out[s : s + chunk] = (means[:, present] * losses[present]).mean(axis=1)
    return out


def auto_groups(scores: np.ndarray, val_labels: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Auto-D3M pseudo-groups: two per class, split by the sign of the first principal component.

    For each class c, the score columns ``scores[:, j]`` of its validation examples are L2-normalised,
    centred, and projected on their first principal component; ``j`` goes to group ``2c`` if the
    projection is negative and to ``2c + 1`` otherwise. A class with fewer than 2 validation examples,
    or whose columns do not vary, keeps a single group ``2c``. Ids are then renumbered to ``0..G-1``.

    Args:
        scores: float ``[n_train, n_val]`` TRAK scores (may be memory-mapped).
        val_labels: int ``[n_val]``.

    Returns:
        int64 ``[n_val]`` group ids.
    """
    val_labels = np.asarray(val_labels, dtype=np.int64)
    raw = np.empty(len(val_labels), dtype=np.int64)
    for c in np.unique(val_labels):
        cols = np.flatnonzero(val_labels == c)
        x = np.asarray(scores[:, cols], dtype=np.float64).T  # [n_c, n_train]
        x /= np.linalg.norm(x, axis=1, keepdims=True) + eps
        raw[cols] = 2 * c + (_first_pc_projection(x) >= 0)
    _, renumbered = np.unique(raw, return_inverse=True)
    return renumbered.astype(np.int64)


def _first_pc_projection(x: np.ndarray) -> np.ndarray:
    """``[n, d]`` rows -> ``[n]`` centred projections on the first principal component (-1 if none).

    Uses the ``[n, n]`` Gram matrix, cheap when there are far fewer rows than columns. The sign of a
    principal component is arbitrary; it is fixed so that the largest projection is positive.
    """
    if len(x) < 2:
        return -np.ones(len(x))
    xc = x - x.mean(axis=0, keepdims=True)
    eigval, eigvec = np.linalg.eigh(xc @ xc.T)
    if eigval[-1] <= 1e-12 * max(1.0, abs(eigval).max(initial=0.0)):
        return -np.ones(len(x))
    proj = eigvec[:, -1] * np.sqrt(eigval[-1])
    return proj if proj[np.argmax(np.abs(proj))] > 0 else -proj
