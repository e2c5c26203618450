"""The run's data: the dataset rebuilt from ``config.json``, its fingerprint, and the data files of the run folder.

:class:`RunData` loads the dataset (re-pointed by ``--data-root`` where it moved), records and checks
``data/fingerprint.json``, and reads the split tables, class names and thumbnails, each verified first.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import dist
from ..config import DataConfig, RunConfig
from ..data import Dataset, dataset_fingerprint, describe_change, load_dataset
from ..io import read_csv, read_json, write_csv, write_json
from ..manifest import sha256
from .integrity import UNRECORDED, Integrity, RunError
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
        what = self.integrity.damage(path) if path.exists() else None
        if what and what.startswith(UNRECORDED):
            self.integrity.discard(path)  # nothing to check it against: made again from the data (all else is too)
        if path.exists():
            self.check(dataset)
        else:
            digests = FileDigests(self.layout, self.integrity, self.config.data_root)
            write_json(path, {"format": FORMAT, "splits": dataset_fingerprint(dataset, digests)})
            digests.save()
            self.integrity.seal(path)
        self._dataset = dataset

    def check(self, dataset: Dataset) -> None:
        """Compare ``dataset`` (its ids, labels and images' content) with ``data/fingerprint.json``.

        Raises:
            RunError: one line naming the split that changed, how (the files whose content changed), and the
                command to rerun.
        """
        path = self.layout.data_fingerprint_path
        if not path.exists() and "data/fingerprint.json" not in self.integrity.record().files:
            return  # a folder from before fingerprints: nothing to check against
        recorded = self.integrity.json(path).get("splits", {})
        digests = FileDigests(self.layout, self.integrity, self.config.data_root)
        now = dataset_fingerprint(dataset, digests)
        for split in SPLITS:
            change = describe_change(recorded.get(split), now[split])
            if change:
                changed = digests.changed()
                if changed:
                    change += f": {', '.join(changed[:5])}" + (f" and {len(changed) - 5} more" if len(changed) > 5
                                                                 else "")
                data = self.config
                where = f" at {data.data_root}" if data.data_root else ""
                name = "training" if split == "train" else ("validation" if split == "val" else "test")
                raise RunError(f"the {name} split of {data.dataset}{where} changed since `trakscope run` ({change}); "
                               f"point --data-root at the original data, or rerun "
                               f"`trakscope run --out {self.layout.path} --overwrite`")
        digests.save()

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


class FileDigests:
    """sha256 of image files, cached in ``data/digests.json`` by path with the size, inode, mtime and ctime they had,
    so that a check reads only files that changed (a swap by ``mv`` changes the inode and ctime, a copy the mtime).

    Call it with paths; :meth:`changed` names the files whose digest differs from the cached one, and :meth:`save`
    records the new digests (after a check that passed, so the cache keeps naming what changed until then).
    """

    def __init__(self, layout: Layout, integrity: Integrity, root: str | None = None):
        self.layout, self.integrity = layout, integrity
        self.root = None if root is None else Path(root).expanduser().resolve()
        self.cache = self._load()
        self.new: dict[str, dict] = {}
        self._changed: list[str] = []

    def _load(self) -> dict[str, dict]:
        path = self.layout.data_digests_path
        if not path.exists() or self.integrity.damaged(path):
            return {}  # an unverified cache is not used: every file is hashed again
        raw = read_json(path)
        return raw.get("files", {}) if isinstance(raw, dict) else {}

    def __call__(self, paths: list[str]) -> list[str]:
        return [self._digest(p) for p in paths]

    def _name(self, path: str) -> str:
        """The cache's key: the path relative to the data root (so moved data keeps naming its files)."""
        resolved = Path(path).resolve()
        return resolved.relative_to(self.root).as_posix() if self.root and resolved.is_relative_to(self.root) \
            else str(resolved)

    def _digest(self, path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return "missing"
        key = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
        name = self._name(path)
        cached = self.cache.get(name)
        if cached is not None and cached.get("stat") == key:
            found = cached["sha256"]
        else:
            found = sha256(path)
            if cached is not None and cached.get("sha256") != found:
                self._changed.append(path)
        self.new[name] = {"stat": key, "sha256": found}
        return found

    def changed(self) -> list[str]:
        """Files whose content differs from what the cache recorded."""
        return list(self._changed)

    def save(self) -> None:
        """Write ``data/digests.json`` if a digest was computed or changed (rank 0; skipped on a read-only folder)."""
        merged = {**self.cache, **self.new}
        if merged == self.cache or dist.rank() != 0:
            return
        try:
            write_json(self.layout.data_digests_path, {"format": FORMAT, "files": dict(sorted(merged.items()))})
            self.integrity.seal(self.layout.data_digests_path)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
