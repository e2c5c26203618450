"""TRAK scores from projected features (arXiv 2303.14186, Algorithm 1).

With ``X_k`` the ``[n_train, d]`` training features of checkpoint ``k``, ``Phi_k`` a target split's
features, ``A_k = X_k^T X_k + lambda_k I`` and ``Q_k`` the training examples' out-to-loss weights::

    scores[train, target] = (1/K sum_k X_k A_k^-1 Phi_k^T)[train, target] * (1/K sum_k Q_k)[train]

Every checkpoint counts. ``lambda_k = ridge * trace(X_k^T X_k) / d`` keeps ``A_k`` invertible even
with fewer examples than dimensions. Scores are computed in blocks of training rows and written to a
memory-mapped ``.npy``, so memory stays bounded for large ``n_train x n_target``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import check_setting
from ..io import atomic_path, create_memmap


def gram(features: np.ndarray, block: int = 8192, weights: np.ndarray | None = None) -> np.ndarray:
    """float64 ``[d, d]`` ``X^T X`` of ``[n, d]`` features (``X^T W X`` with ``weights`` ``[n]``), in row blocks."""
    d = features.shape[1]
    out = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, features.shape[0], block):
        x = torch.from_numpy(np.asarray(features[s : s + block], dtype=np.float64))
        wx = x if weights is None else x * torch.from_numpy(np.asarray(weights[s : s + block], np.float64))[:, None]
        out.addmm_(wx.T, x)
    return out.numpy()


class NonFiniteFeatures(ValueError):
    """Featurized gradients hold NaN or inf: the model's outputs or gradients are not finite (a diverged model).

    ``checkpoint`` and ``split`` name where (None where unknown); no ridge can repair this.
    """

    def __init__(self, checkpoint: int | None = None, split: str | None = None):
        self.checkpoint, self.split = checkpoint, split
        where = "" if checkpoint is None else f" of checkpoint {checkpoint}" + (f", split {split!r}," if split else "")
        super().__init__(f"the featurized gradients{where} contain NaN or inf: the model's outputs or gradients are "
                         "not finite there (a diverged checkpoint?); a larger --ridge cannot fix this")


def regularized_inverse(xtx: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """``((X^T X + lambda I)^-1, lambda)`` with ``lambda = ridge * mean(diag(X^T X))``, via Cholesky in float64.

    Raises:
        SettingError: ``ridge`` is not > 0 (the bound of ``--ridge``).
        NonFiniteFeatures: ``xtx`` holds NaN or inf (the features do).
        numpy.linalg.LinAlgError: ``X^T X + lambda I`` is not positive definite (increase the ridge).
    """
    check_setting("trak", "ridge", ridge)
    if not np.isfinite(xtx).all():
        raise NonFiniteFeatures()
    d = xtx.shape[0]
    lam = float(ridge * np.trace(xtx) / d)
    a = torch.from_numpy(xtx) + lam * torch.eye(d, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise np.linalg.LinAlgError(
            f"X^T X + lambda I is not positive definite (lambda={lam:.3g}); increase --ridge above {ridge}"
        )
    return torch.cholesky_inverse(chol).numpy(), lam


def _block_scores(xs: Sequence[np.ndarray], invs: Sequence[np.ndarray], targets: Sequence[torch.Tensor],
                  rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over checkpoints of ``x A^-1 phi^T`` for ``rows``, mean of ``x A^-1 x^T`` for the same rows)."""
    acc, self_acc = None, None
    for x_all, inv, phi in zip(xs, invs, targets):
        x = torch.from_numpy(np.asarray(x_all[rows], dtype=np.float64))
        xa = x @ torch.from_numpy(inv)
        part = (xa.float() @ phi.T) if phi is not None else None
        diag = (xa * x).sum(1)
        acc = part if acc is None else acc + part
        self_acc = diag if self_acc is None else self_acc + diag
    k = len(xs)
    return (acc / k if acc is not None else None), self_acc / k


def trak_scores(
    train_features: Sequence[np.ndarray],
    inverses: Sequence[np.ndarray],
    target_features: Sequence[np.ndarray] | None,
    q_mean: np.ndarray,
    out_path: Path | None = None,
    block: int = 4096,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Scores of every training example on every target, and self-influence, averaged over checkpoints.

    Args:
        train_features: per checkpoint, ``[n_train, d]`` training features (memmaps are fine).
        inverses: per checkpoint, ``[d, d]`` ``(X^T X + lambda I)^-1``.
        target_features: per checkpoint, ``[n_target, d]`` target features; None for self-influence only.
        q_mean: ``[n_train]`` out-to-loss weights averaged over checkpoints.
        out_path: if given, scores are written there (atomically, as a memmapped ``.npy``) and returned
            memory-mapped; else returned in memory.

    Returns:
        (float32 ``[n_train, n_target]`` scores or None, float32 ``[n_train]`` self-influence ``scores[i, i]``).
        Higher = the training example pushes the target's margin up more.
    """
    n = train_features[0].shape[0]
    q = torch.from_numpy(np.asarray(q_mean, dtype=np.float64))
    if target_features is None:
        targets = [None] * len(train_features)
    else:
        targets = [torch.from_numpy(np.array(t, dtype=np.float32)) for t in target_features]
    self_inf = np.zeros(n, dtype=np.float32)

    def fill(scores: np.ndarray | None) -> None:
        for s in range(0, n, block):
            rows = slice(s, min(s + block, n))
            part, diag = _block_scores(train_features, inverses, targets, rows)
            if scores is not None:
                scores[rows] = (part.double() * q[rows, None]).float().numpy()
            self_inf[rows] = (diag * q[rows]).float().numpy()

    if target_features is None:
        fill(None)
        return None, self_inf
    shape = (n, targets[0].shape[0])
    if out_path is None:
        scores = np.zeros(shape, dtype=np.float32)
        fill(scores)
        return scores, self_inf
    with atomic_path(out_path, suffix=".npy") as tmp:
        scores = create_memmap(tmp, shape, np.float32)
        fill(scores)
        scores.flush()
        del scores
    return np.load(out_path, mmap_mode="r", allow_pickle=False), self_inf
