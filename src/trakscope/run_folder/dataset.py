"""The run's data: the dataset rebuilt from ``config.json``, its fingerprint, and the data files of the run folder.

:class:`RunData` loads the dataset (re-pointed by ``--data-root`` where it moved), records and checks
``data/fingerprint.json``, and reads the split tables, class names and thumbnails, each verified first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..config import DataConfig, RunConfig
from ..data import Dataset, dataset_fingerprint, describe_change, load_dataset
from ..io import read_csv, write_csv, write_json
from .integrity import Integrity, RunError
from .layout import FORMAT, SPLITS, TABLE_COLUMNS, Layout


class RunData:
    """The dataset of one run folder and its ``data/`` files. Construction does no I/O.

    Args:
        layout: the folder's paths; integrity: its record; config: the saved configuration (read when first asked).
        data_root: re-points the dataset (moved data) without rewriting ``config.json``.
    """

    def __init__(self, layout: Layout, integrity: Integrity, config: Callable[[], RunConfig],
                 data_root: str | None = None):
        self.layout, self.integrity, self._config = layout, integrity, config
        self.data_root = data_root
        self._dataset: Dataset | None = None

    @property
    def config(self) -> DataConfig:
        """``config.data``, with ``data_root`` replaced by the override given to the constructor (if any)."""
        data = self._config().data
        return data if self.data_root is None else dataclasses.replace(data, data_root=self.data_root)

    def dataset(self) -> Dataset:
        """The run's dataset, rebuilt from ``config.json`` (deterministic, cached).

        Raises:
            RunError: the rebuilt data differs from what ``trakscope run`` recorded (``data/fingerprint.json``).
        """
        if self._dataset is None:
            dataset = load_dataset(self.config)
            self.check(dataset)
            self._dataset = dataset
        return self._dataset

    def record(self, dataset: Dataset) -> None:
        """Write ``data/fingerprint.json`` of ``dataset`` (once), or check it against the recorded one; cache it."""
        path = self.layout.data_fingerprint_path
        if path.exists():
            self.check(dataset)
        else:
            write_json(path, {"format": FORMAT, "splits": dataset_fingerprint(dataset)})
            self.integrity.seal(path)
        self._dataset = dataset

    def check(self, dataset: Dataset) -> None:
        """Compare ``dataset`` with ``data/fingerprint.json`` (absent in older folders: nothing to check).

        Raises:
            RunError: one line naming the split that changed, how, and the command to rerun.
        """
        if not self.layout.data_fingerprint_path.exists():
            return
        recorded = self.integrity.json(self.layout.data_fingerprint_path).get("splits", {})
        now = dataset_fingerprint(dataset)
        for split in SPLITS:
            change = describe_change(recorded.get(split), now[split])
            if change:
                data = self.config
                where = f" at {data.data_root}" if data.data_root else ""
                name = "training" if split == "train" else ("validation" if split == "val" else "test")
                raise RunError(f"the {name} split of {data.dataset}{where} changed since `trakscope run` ({change}); "
                               f"point --data-root at the original data, or rerun "
                               f"`trakscope run --out {self.layout.path} --overwrite`")

    def classes(self) -> list[str]:
        """Class names, index = class id."""
        return self.integrity.json(self.layout.classes_path)

    def table(self, split: str) -> dict[str, np.ndarray]:
        """``data/<split>.csv`` as columns: index, label, true_label, noisy (int64) and source_id (str)."""
        path = self.integrity.verify(self.integrity.require(self.layout.table_path(split)))
        rows = read_csv(path)
        missing = [c for c in TABLE_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise RunError(f"{path} lacks columns {missing}; rerun `trakscope run --out {self.layout.path} "
                           "--overwrite`")
        cols = {k: [r[k] for r in rows] for k in TABLE_COLUMNS}
        out = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items() if k != "source_id"}
        out["source_id"] = np.asarray(cols["source_id"], dtype=object)
        return out

    def write_table(self, split: str, rows: list[tuple]) -> None:
        """``data/<split>.csv`` from rows of :data:`TABLE_COLUMNS` (recorded in the manifest)."""
        write_csv(self.layout.table_path(split), TABLE_COLUMNS, rows)
        self.integrity.seal(self.layout.table_path(split))

    def thumbs(self, split: str) -> np.ndarray:
        """uint8 ``[n, T, T, 3]`` thumbnails of a split."""
        return self.integrity.array(self.layout.thumbs_path(split), mmap=True)
