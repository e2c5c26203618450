"""The run folder: the one owner of where every stage's inputs and outputs live, and of how they are read.

Every path of a run folder is named in :mod:`.layout` (:data:`LAYOUT` lists them, and ``docs/run-folder.md`` is
generated from it); the TRAK store's own files inside ``features/`` are named by :mod:`trakscope.attribution.store`.
A :class:`RunFolder` is those paths plus its configuration, and three parts, each owning one concern:

- :attr:`RunFolder.integrity` (:class:`~.integrity.Integrity`): the integrity record, sealing and verifying files,
  clearing what trakscope wrote;
- :attr:`RunFolder.data` (:class:`~.dataset.RunData`): the dataset, its fingerprint, the ``data/`` files;
- :attr:`RunFolder.results` (:class:`~.results.Results`): score matrices, probabilities, typed JSON results, the
  ranking and timings.

The one-line methods at the end of :class:`RunFolder` forward to those parts, so that older call sites
(``run.seal(...)``, ``run.table("train")``) keep working; new code asks the part.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig, RunConfig, config_diff, fingerprint_dict
from ..data import Dataset
from ..io import read_json, write_json
from .dataset import RunData
from .integrity import Integrity, RunError
from .layout import (
    FORMAT,
    LAYOUT,
    OWNED,
    PRODUCERS,
    SCHEMAS,
    SPLITS,
    TABLE_COLUMNS,
    TARGET_SPLITS,
    Layout,
    checkpoint_key,
    layout_markdown,
)
from .results import Results

__all__ = ["FORMAT", "LAYOUT", "OWNED", "PRODUCERS", "SCHEMAS", "SPLITS", "TABLE_COLUMNS", "TARGET_SPLITS", "Integrity",
           "Results", "RunData", "RunError", "RunFolder", "checkpoint_key", "fingerprint", "layout_markdown"]


def fingerprint(cfg: RunConfig) -> str:
    """A short hash of the settings that determine the checkpoints (data, model, training).

    Fields added later are hashed only away from their legacy value (:func:`~trakscope.config.fingerprint_dict`),
    so a folder made before they existed keeps its fingerprint and its checkpoints.
    """
    d = fingerprint_dict(cfg)
    blob = json.dumps({k: d[k] for k in ("data", "model", "train")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunFolder(Layout):
    """The paths of one run folder, its configuration, and its parts (integrity, data, results). No I/O until asked."""

    def __init__(self, path: Path | str, data_root: Path | str | None = None):
        """``data_root`` re-points the dataset (moved data) without rewriting ``config.json``."""
        self.path = Path(path)
        self.data_root = None if data_root is None else str(Path(data_root).expanduser().resolve())
        self.integrity = Integrity(self, lambda: self.config)
        self.data = RunData(self, self.integrity, lambda: self.config, self.data_root)
        self.results = Results(self, self.integrity, lambda: len(self.data.table("train")["index"]))

    # --- creation -----------------------------------------------------------------------------
    def initialize(self, config: RunConfig, overwrite: bool = False) -> None:
        """Create the folder with ``config.json``, or check that an existing one has the same config.

        Raises:
            RunError: the folder holds a run with other settings (and ``overwrite`` is false), or its
                ``config.json`` is not trakscope's.
        """
        if self.config_path.exists():
            old = self._read_config()
            if not overwrite:
                diff = config_diff(old, config)
                if diff:
                    raise RunError(f"{self.path} holds a run with other settings ({'; '.join(diff)}). "
                                   "Use another --out, or --overwrite to discard it.")
                if old.to_dict() != config.to_dict():  # only how to run changed (--channels-last): record it
                    self._write_config(config)
                return
            self.integrity.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_config(config)

    def _write_config(self, config: RunConfig) -> None:
        write_json(self.config_path, {"format": FORMAT, **config.to_dict()})
        self.integrity.seal(self.config_path)
        self.__dict__.pop("config", None)

    # --- configuration ------------------------------------------------------------------------
    def _read_config(self) -> RunConfig:
        try:
            raw = read_json(self.config_path)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise RunError(f"{self.config_path} is not readable JSON ({e}); it is not a trakscope run folder") from e
        if not isinstance(raw, dict) or not {"data", "model", "train", "trak"} <= set(raw):
            raise RunError(f"{self.config_path} is not a trakscope configuration; refusing to use or overwrite "
                           f"{self.path} (choose another folder)")
        if raw.get("format") != FORMAT:
            raise RunError(f"{self.path} was written by another version of trakscope (run-folder format "
                           f"{raw.get('format', 1)}, this version reads {FORMAT}); rerun `trakscope run` with "
                           "--overwrite, or use another --out")
        try:
            return RunConfig.from_dict({k: v for k, v in raw.items() if k != "format"})
        except (TypeError, ValueError) as e:
            raise RunError(f"{self.config_path} is not a valid trakscope configuration: {e}") from e

    @cached_property
    def config(self) -> RunConfig:
        """The saved configuration."""
        if not self.config_path.is_file():
            raise RunError(f"{self.path} is not a trakscope run folder (no config.json); "
                           "create one with `trakscope run --out DIR`")
        return self._read_config()

    @cached_property
    def classes(self) -> list[str]:
        """Class names, index = class id."""
        return self.data.classes()

    def checkpoint_paths(self, required: bool = True) -> list[Path]:
        """``models/model{m}_ckpt{c}.safetensors`` in (model, checkpoint) order (none: a RunError if ``required``)."""
        paths = sorted(self.path.glob("models/model*_ckpt*.safetensors"), key=checkpoint_key)
        if not paths and required:
            self.integrity.require(self.checkpoint_path(0, 0))
        return paths

    # --- forwarding to the parts (older call sites) -------------------------------------------
    def clear(self) -> None:
        self.integrity.clear()

    def seal(self, *paths: Path) -> None:
        self.integrity.seal(*paths)

    def discard(self, *paths: Path) -> None:
        self.integrity.discard(*paths)

    def damage(self, path: Path, checksum: bool | None = None) -> str | None:
        return self.integrity.damage(path, checksum)

    def damaged(self, path: Path) -> bool:
        return self.integrity.damaged(path)

    def verify(self, path: Path, producer: str | None = None, checksum: bool | None = None) -> Path:
        return self.integrity.verify(path, producer, checksum)

    def require(self, path: Path, producer: str | None = None) -> Path:
        return self.integrity.require(path, producer)

    @property
    def data_config(self) -> DataConfig:
        return self.data.config

    def dataset(self) -> Dataset:
        return self.data.dataset()

    def record_data(self, dataset: Dataset) -> None:
        self.data.record(dataset)

    def check_data(self, dataset: Dataset) -> None:
        self.data.check(dataset)

    def table(self, split: str) -> dict[str, np.ndarray]:
        return self.data.table(split)

    def write_table(self, split: str, rows: list[tuple]) -> None:
        self.data.write_table(split, rows)

    def thumbs(self, split: str) -> np.ndarray:
        return self.data.thumbs(split)

    def probs(self, split: str) -> np.ndarray:
        return self.results.probs(split)

    def scores(self, split: str, mmap: bool = True) -> np.ndarray:
        return self.results.scores(split, mmap)

    def write_result(self, path: Path, kind: str, payload: dict[str, Any]) -> None:
        self.results.write(path, kind, payload)

    def read_result(self, path: Path, kind: str, producer: str | None = None) -> dict[str, Any]:
        return self.results.read(path, kind, producer)

    def optional_result(self, path: Path, kind: str) -> dict[str, Any] | None:
        return self.results.optional(path, kind)

    def write_ranking(self, header: list[str], rows: list[list]) -> None:
        self.results.write_ranking(header, rows)

    def ranking(self, scorers: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self.results.ranking(scorers)

    def timings(self) -> dict[str, float]:
        return self.results.timings()

    def record_timing(self, stage: str, seconds: float) -> None:
        self.results.record_timing(stage, seconds)
