"""Highest and lowest scores of one target: the answer to "who influenced this prediction"."""

from __future__ import annotations

import numpy as np


def top_and_bottom(column: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest and ``k`` lowest entries of ``column`` (``[n_train]``).

    Returns:
        ``(top, bottom)``: int64 arrays, ``top`` in decreasing score order (most positive first),
        ``bottom`` in increasing order (most negative first). Ties break by the lower index.
    """
    column = np.asarray(column)
    k = min(k, len(column))
    order = np.lexsort((np.arange(len(column)), -column))
    top = order[:k]
    bottom = np.lexsort((np.arange(len(column)), column))[:k]
    return top.astype(np.int64), bottom.astype(np.int64)
