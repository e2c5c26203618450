"""Canaries: label flips trakscope plants itself (``--canaries``) so that detection quality is known on any data.

They are recorded in ``data/canaries.csv`` (never in ``noisy``: they are not the data's own errors). ``detect``
measures every scorer on them, ``ranking.csv`` marks them and ``export`` restores their true labels.
"""

from __future__ import annotations

import numpy as np

from ..data import ImageSplit
from ..io import read_csv, write_csv
from ..run_folder import RunFolder

COLUMNS = ("index", "source_id", "label", "true_label")


def write_canaries(run: RunFolder, train: ImageSplit) -> None:
    """``data/canaries.csv`` of the training split (written only when canaries were planted)."""
    if train.canary is None or not train.canary.any():
        return
    rows = [(int(i), train.source_ids[i], int(train.labels[i]), int(train.true_labels[i]))
            for i in np.flatnonzero(train.canary)]
    write_csv(run.canaries_path, COLUMNS, rows)


def canary_table(run: RunFolder) -> dict[str, np.ndarray]:
    """``index`` (sorted), ``label`` (flipped, as trained) and ``true_label``, int64 ``[n_canaries]`` (empty: none)."""
    rows = read_csv(run.canaries_path) if run.canaries_path.exists() else []
    rows.sort(key=lambda r: int(r["index"]))
    return {k: np.array([int(r[k]) for r in rows], dtype=np.int64) for k in ("index", "label", "true_label")}


def canary_mask(run: RunFolder, n_train: int) -> np.ndarray:
    """bool ``[n_train]``: True for the canaries."""
    mask = np.zeros(n_train, dtype=bool)
    mask[canary_table(run)["index"]] = True
    return mask
