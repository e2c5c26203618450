"""Canaries: label flips trakscope plants itself (``--canaries``) so that detection quality is known on any data.

They are recorded in ``data/canaries.csv`` (never in ``noisy``: they are not the data's own errors). ``detect``
measures every scorer on them, ``ranking.csv`` and ``inspect`` mark them, ``export`` restores their true labels and
``removal`` retrains on their true labels, never removing them.
"""

from __future__ import annotations

import numpy as np

from ..data import Dataset, ImageSplit
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


def with_true_canary_labels(dataset: Dataset) -> Dataset:
    """``dataset`` whose training canaries carry their true labels (what ``removal`` retrains on, as ``export``'s
    keep-list has them); ``dataset`` itself when it has none."""
    train = dataset.train
    if train.canary is None or not train.canary.any():
        return dataset
    labels = np.where(train.canary, train.true_labels, train.labels)
    restored = ImageSplit(train.images, labels, train.true_labels, train.source_ids, train.canary)
    return Dataset(dataset.name, dataset.classes, restored, dataset.val, dataset.test)
