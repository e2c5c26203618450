"""Each training example's fit under every checkpoint, read from the TRAK store: the probability of its given label
and its leverage under the checkpoint's Gauss-Newton kernel (the inputs of ``trak_loo``).

Nothing is written: the store's features and Q (``1 - p`` of the given label, as featurized) are read, verified,
and one ``[d, d]`` kernel per checkpoint is inverted (``O(n d^2)`` per checkpoint, like the self-influence).
"""

from __future__ import annotations

import numpy as np

from ..methods.scorers import leverage
from ..run_folder import RunFolder
from .ensemble import Runtime, trak_engine


def checkpoint_fit(run: RunFolder, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(given, leverages)``, both float64 ``[K, n_train]`` over the store's K checkpoints in id order.

    ``given[k, i]`` is ``p_i[y_i]`` under checkpoint ``k``; ``leverages[k, i]`` is ``x_i^T (X^T W X + lambda I)^-1
    x_i`` with ``W = diag(p (1 - p))`` of that checkpoint and the run's relative ``--ridge``
    (:func:`~trakscope.methods.scorers.leverage`).
    """
    trak = trak_engine(run, Runtime(device=device, progress=False))
    given, leverages = [], []
    for k in trak.checkpoints("train"):
        features, q = trak.store.features(k, "train", 0, 0).load()
        p = 1.0 - np.asarray(q, dtype=np.float64)
        given.append(p)
        leverages.append(leverage(features, p * (1 - p), run.config.trak.ridge))
    return np.stack(given), np.stack(leverages)
