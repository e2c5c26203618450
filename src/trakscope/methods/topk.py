"""Highest and lowest scores of each target: the answer to "who influenced this prediction"."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """The ``k`` highest and ``k`` lowest training scores of every target.

    Args:
        scores: float ``[n_train, n_target]`` TRAK scores ``scores[train, target]`` (may be memory-mapped);
            higher = that training example raised the target's output more.
        k: how many of each to keep (capped at ``n_train``).
        chunk: targets processed at a time (bounds memory to ``n_train * chunk`` floats).

    Returns:
        ``pos_idx``/``neg_idx`` int32 ``[n_target, k]`` and ``pos_score``/``neg_score`` float32 ``[n_target, k]``;
        positives in decreasing score order, negatives in increasing order (most negative first); ties are
        broken by the lower training index.
    """
    n_train, n_target = scores.shape
    k = min(k, n_train)
    out = {name: np.empty((n_target, k), dtype=np.int32 if "idx" in name else np.float32)
           for name in ("pos_idx", "pos_score", "neg_idx", "neg_score")}
    for j0 in range(0, n_target, chunk):
        block = np.asarray(scores[:, j0:j0 + chunk], dtype=np.float32).T  # [c, n_train]
        for sign, name in ((-1.0, "pos"), (1.0, "neg")):
            key = sign * block
            if k < n_train:
                part = np.argpartition(key, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(n_train), key.shape)
            part_key = np.take_along_axis(key, part, axis=1)
            order = np.lexsort((part, part_key), axis=1)  # by score, ties by training index
            idx = np.take_along_axis(part, order, axis=1)
            out[f"{name}_idx"][j0:j0 + chunk] = idx
            out[f"{name}_score"][j0:j0 + chunk] = np.take_along_axis(block, idx, axis=1)
    return out


def top_and_bottom(column: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest and ``k`` lowest entries of one target's scores ``[n_train]``.

    Returns:
        ``(top, bottom)``: int64 arrays, ``top`` in decreasing score order (most positive first),
        ``bottom`` in increasing order (most negative first). Ties break by the lower index.
    """
    tk = top_k(np.asarray(column, dtype=np.float32)[:, None], k)
    return tk["pos_idx"][0].astype(np.int64), tk["neg_idx"][0].astype(np.int64)
