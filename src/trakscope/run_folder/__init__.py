"""The run folder: the one owner of where every stage's inputs and outputs live, and of how they are read.

Every path of a run folder is named in :mod:`.layout` (:data:`LAYOUT` lists them, and ``docs/run-folder.md`` is
generated from it), except the files inside the TRAK store (``features/``), which :mod:`trakscope.attribution.store`
names; no other module names them. Stages, the report and the benchmarks ask a :class:`RunFolder`
for paths and typed records; JSON results carry ``format`` (:data:`FORMAT`) and ``kind``, so a folder written
by another version of trakscope gets one clear message instead of a guess.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import shlex
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .. import dist
from ..attribution.store import TrakStore
from ..config import RunConfig, config_diff, fingerprint_dict
from ..data import dataset_fingerprint, describe_change, load_dataset
from ..io import load_npy, read_csv, read_json, write_csv, write_json
from ..manifest import Manifest, describe, path_patterns, problem
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

__all__ = ["FORMAT", "LAYOUT", "OWNED", "SCHEMAS", "SPLITS", "TABLE_COLUMNS", "TARGET_SPLITS", "RunError", "RunFolder",
           "checkpoint_key", "fingerprint", "layout_markdown"]


class RunError(Exception):
    """The run folder is missing, from another configuration or version, or lacks a stage's output."""


def fingerprint(cfg: RunConfig) -> str:
    """A short hash of the settings that determine the checkpoints (data, model, training).

    Fields added later are hashed only away from their legacy value (:func:`~trakscope.config.fingerprint_dict`),
    so a folder made before they existed keeps its fingerprint and its checkpoints.
    """
    d = fingerprint_dict(cfg)
    blob = json.dumps({k: d[k] for k in ("data", "model", "train")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunFolder(Layout):
    """Paths, typed reads and writes of one run folder. Construction does no I/O."""

    def __init__(self, path: Path | str, data_root: Path | str | None = None):
        """``data_root`` re-points the dataset (moved data) without rewriting ``config.json``."""
        self.path = Path(path)
        self.data_root = None if data_root is None else str(Path(data_root).expanduser().resolve())
        self._dataset = None


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
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_config(config)

    def _write_config(self, config: RunConfig) -> None:
        write_json(self.config_path, {"format": FORMAT, **config.to_dict()})
        self.seal(self.config_path)
        self.__dict__.pop("config", None)

    def clear(self) -> None:
        """Remove what trakscope wrote in the run folder, nothing else.

        With a ``manifest.json``: the files it records, every file at a path :data:`LAYOUT` names, the TRAK store's
        own files, then the folders this leaves empty; a user's ``data/important.csv`` stays. In a folder from
        before manifests: everything under :data:`OWNED`.
        """
        manifest = Manifest(self.manifest_path)
        if not manifest.exists():
            for name in OWNED:
                p = self.path / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            return
        written = set(manifest.files())
        named = path_patterns([p for p, _ in LAYOUT if not p.endswith("/") and not p.startswith(".")], SPLITS)
        for p in sorted(self.path.rglob("*")):
            rel = self.relative(p)
            if (p.is_file() or p.is_symlink()) and (rel in written or named.fullmatch(rel)):
                p.unlink()
        TrakStore(self.features_dir).clear()
        for p in sorted(self.path.rglob("*"), key=lambda q: -len(q.parts)):  # deepest first
            if p.is_dir() and not p.is_symlink() and self.relative(p).split("/")[0] in OWNED and not any(p.iterdir()):
                p.rmdir()
        manifest.path.unlink(missing_ok=True)

    # --- integrity ----------------------------------------------------------------------------
    def command(self, producer: str = "run") -> str:
        """The complete command line that (re)makes a stage's outputs here: ``trakscope detect --run DIR``.

        ``producer`` is a command name, or ``"trakscope <name>"`` as older callers pass it.
        """
        name = (producer.removeprefix("trakscope ").split() or ["run"])[0]
        folder = shlex.quote(str(self.path))
        return f"trakscope run --out {folder}" if name == "run" else f"trakscope {name} --run {folder}"

    def producer(self, path: Path) -> str:
        """The command that writes ``path`` (from its top-level folder, :data:`PRODUCERS`)."""
        return PRODUCERS.get(self.relative(path).split("/")[0], "run")

    def seal(self, *paths: Path) -> None:
        """Record finished files in ``manifest.json`` (size, sha256, ``.npy`` shape and dtype), on rank 0.

        Called by the run folder's own writers and by stages once an array is complete; the caller holds the
        folder's exclusive lock (``run_lock``), so no other process writes the manifest meanwhile.
        """
        inside = [p for p in paths if Path(p).resolve().is_relative_to(self.path.resolve())]  # not `lds --out X`
        if dist.rank() == 0 and inside:
            Manifest(self.manifest_path).update({self.relative(p): describe(p) for p in inside})

    def discard(self, *paths: Path) -> None:
        """Delete files (those that exist) and forget them in the manifest, so that their stage makes them again."""
        for p in paths:
            Path(p).unlink(missing_ok=True)
        manifest = Manifest(self.manifest_path)
        if manifest.exists():
            manifest.update({}, remove=tuple(self.relative(p) for p in paths))

    def damage(self, path: Path, checksum: bool | None = None) -> str | None:
        """What is wrong with an existing file against the manifest (see :func:`trakscope.manifest.problem`)."""
        try:
            entry = Manifest(self.manifest_path).files().get(self.relative(path))
        except ValueError:  # not inside the run folder: nothing recorded
            entry = None
        return problem(path, entry, checksum)

    def damaged(self, path: Path) -> bool:
        """``path`` exists but is not what was written (truncated, emptied, other shape, other bytes)."""
        return Path(path).exists() and self.damage(path) is not None

    def verify(self, path: Path, producer: str | None = None, checksum: bool | None = None) -> Path:
        """``path``, checked against the manifest (size and ``.npy`` header; sha256 of small files).

        Raises:
            RunError: one line naming the file, what is wrong, and the command that recomputes it.
        """
        found = self.damage(path, checksum)
        if found:
            raise RunError(self._damaged_message(path, found, producer))
        return path

    def _damaged_message(self, path: Path, what: str, producer: str | None = None) -> str:
        try:
            name = self.relative(path)
        except ValueError:
            name = str(path)
        command = self.command(producer or self.producer(path))
        return f"{name} is damaged ({what}); rerun `{command}` to recompute it"

    def _array(self, path: Path, mmap: bool = False) -> np.ndarray:
        self.verify(self.require(path))
        try:
            return load_npy(path, mmap=mmap)
        except (ValueError, EOFError, OSError) as e:
            raise RunError(self._damaged_message(path, str(e))) from e

    def _json(self, path: Path, producer: str | None = None) -> Any:
        self.verify(self.require(path, producer or self.producer(path)), producer)
        try:
            return read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(self._damaged_message(path, f"not valid JSON: {e}", producer)) from e

    # --- reading ------------------------------------------------------------------------------
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
        return self._json(self.classes_path)

    def table(self, split: str) -> dict[str, np.ndarray]:
        """``data/<split>.csv`` as columns: index, label, true_label, noisy (int64) and source_id (str)."""
        path = self.verify(self.require(self.table_path(split)))
        rows = read_csv(path)
        missing = [c for c in TABLE_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise RunError(f"{path} lacks columns {missing}; rerun `trakscope run --out {self.path} --overwrite`")
        cols = {k: [r[k] for r in rows] for k in TABLE_COLUMNS}
        out = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items() if k != "source_id"}
        out["source_id"] = np.asarray(cols["source_id"], dtype=object)
        return out

    def write_table(self, split: str, rows: list[tuple]) -> None:
        """``data/<split>.csv`` from rows of :data:`TABLE_COLUMNS` (recorded in the manifest)."""
        write_csv(self.table_path(split), TABLE_COLUMNS, rows)
        self.seal(self.table_path(split))

    def thumbs(self, split: str) -> np.ndarray:
        """uint8 ``[n, T, T, 3]`` thumbnails of a split."""
        return self._array(self.thumbs_path(split), mmap=True)

    def probs(self, split: str) -> np.ndarray:
        """float32 ``[n, C]`` ensemble-mean softmax probabilities."""
        return self._array(self.probs_path(split))

    def scores(self, split: str, mmap: bool = True) -> np.ndarray:
        """float32 ``[n_train, n_split]`` TRAK scores (``split`` = test or val), or ``[n_train]`` for ``self``."""
        return self._array(self.scores_path(split), mmap=mmap)

    @property
    def data_config(self):
        """``config.data``, with ``data_root`` replaced by the override given to the constructor (if any)."""
        data = self.config.data
        return data if self.data_root is None else dataclasses.replace(data, data_root=self.data_root)

    def dataset(self):
        """The run's :class:`~trakscope.data.Dataset`, rebuilt from ``config.json`` (deterministic, cached).

        Raises:
            RunError: the rebuilt data differs from what ``trakscope run`` recorded (``data/fingerprint.json``).
        """
        if self._dataset is None:
            dataset = load_dataset(self.data_config)
            self.check_data(dataset)
            self._dataset = dataset
        return self._dataset

    def record_data(self, dataset) -> None:
        """Write ``data/fingerprint.json`` of ``dataset`` (once), or check it against the recorded one; cache it."""
        if self.data_fingerprint_path.exists():
            self.check_data(dataset)
        else:
            write_json(self.data_fingerprint_path, {"format": FORMAT, "splits": dataset_fingerprint(dataset)})
            self.seal(self.data_fingerprint_path)
        self._dataset = dataset

    def check_data(self, dataset) -> None:
        """Compare ``dataset`` with ``data/fingerprint.json`` (absent in older folders: nothing to check).

        Raises:
            RunError: one line naming the split that changed, how, and the command to rerun.
        """
        if not self.data_fingerprint_path.exists():
            return
        recorded = self._json(self.data_fingerprint_path).get("splits", {})
        now = dataset_fingerprint(dataset)
        for split in SPLITS:
            change = describe_change(recorded.get(split), now[split])
            if change:
                data = self.data_config
                where = f" at {data.data_root}" if data.data_root else ""
                name = "training" if split == "train" else ("validation" if split == "val" else "test")
                raise RunError(f"the {name} split of {data.dataset}{where} changed since `trakscope run` ({change}); "
                               f"point --data-root at the original data, or rerun "
                               f"`trakscope run --out {self.path} --overwrite`")

    def checkpoint_paths(self, required: bool = True) -> list[Path]:
        """``models/model{m}_ckpt{c}.safetensors`` in (model, checkpoint) order (none: a RunError if ``required``)."""
        paths = sorted(self.path.glob("models/model*_ckpt*.safetensors"), key=checkpoint_key)
        if not paths and required:
            self.require(self.checkpoint_path(0, 0))
        return paths

    def require(self, path: Path, producer: str | None = None) -> Path:
        """``path`` if it exists, or a RunError that names the complete command producing it (default: the
        command that writes that folder, :meth:`producer`)."""
        if not path.exists():
            _ = self.config  # a clearer error first if this is no run folder at all
            raise RunError(f"{path} does not exist yet; run `{self.command(producer or self.producer(path))}` first")
        return path

    # --- typed JSON results -------------------------------------------------------------------
    def write_result(self, path: Path, kind: str, payload: dict[str, Any]) -> None:
        """Write a stage's JSON result with ``format`` and ``kind``."""
        missing = [k for k in SCHEMAS[kind] if k not in payload]
        if missing:
            raise ValueError(f"a {kind} result needs {missing}")
        write_json(path, {"format": FORMAT, "kind": kind, **payload})
        self.seal(path)

    def read_result(self, path: Path, kind: str, producer: str | None = None) -> dict[str, Any]:
        """A stage's JSON result, checked for format, kind and the keys readers rely on.

        Raises:
            RunError: absent (names ``producer``), unreadable, of another format, or missing keys.
        """
        producer = producer or self.producer(path)
        raw = self._json(path, producer)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("kind") != kind:
            raise RunError(f"{path} was written by another version of trakscope or is not a {kind} result; "
                           f"rerun `{self.command(producer)}`")
        missing = [k for k in SCHEMAS[kind] if k not in raw]
        if missing:
            raise RunError(f"{path} lacks {missing}; rerun `{self.command(producer)}`")
        return raw

    def optional_result(self, path: Path, kind: str) -> dict[str, Any] | None:
        """:meth:`read_result`, or None when the stage has not run (or wrote another format)."""
        try:
            return self.read_result(path, kind, "")
        except RunError:
            return None

    # --- detect/ranking.csv -------------------------------------------------------------------
    def write_ranking(self, header: list[str], rows: list[list]) -> None:
        write_csv(self.ranking_path, header, rows)
        self.seal(self.ranking_path)

    def ranking(self, scorers: tuple[str, ...], flags: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """``detect/ranking.csv`` in example-index order: ``<scorer>`` -> float64 natural scores ``[n_train]``.

        Also ``index``, ``noisy`` (bool), ``predicted`` and, when present, ``<scorer>_rank`` (int64, 1 = inspect
        first) and the flag columns named in ``flags`` (bool, e.g. ``cleanlab_issue``).

        Raises:
            RunError: absent, truncated, or not matching ``data/train.csv``.
        """
        path = self.verify(self.require(self.ranking_path))
        rows = read_csv(path)
        n_train = len(self.table("train")["index"])
        try:
            index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
            if len(rows) != n_train or not np.array_equal(np.sort(index), np.arange(n_train)):
                raise ValueError(f"{len(rows)} rows for {n_train} training examples")
            order = np.argsort(index)
            out = {"index": index[order], "noisy": _column(rows, "noisy", int)[order].astype(bool)}
            if "predicted" in rows[0]:
                out["predicted"] = _column(rows, "predicted", int)[order]
            for n in scorers:
                if f"{n}_score" in rows[0]:
                    out[n] = _column(rows, f"{n}_score", float)[order]
                    out[f"{n}_rank"] = _column(rows, f"{n}_rank", int)[order]
            for flag in (f for f in flags if f in rows[0]):
                out[flag] = _column(rows, flag, int)[order].astype(bool)
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{path} is damaged or does not match data/train.csv ({e}); "
                           f"rerun `{self.command('detect')}`") from e
        return out

    # --- timings ------------------------------------------------------------------------------
    def timings(self) -> dict[str, float]:
        """Seconds per stage recorded so far."""
        try:
            return read_json(self.timings_path) if self.timings_path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def record_timing(self, stage: str, seconds: float) -> None:
        """Add or replace the time of one stage in ``timings.json``.

        Skipped, without a traceback, where the folder cannot be written (read-only mount, another user's
        folder): a command that only reads must still work there.
        """
        timings = self.timings()
        timings[stage] = round(float(seconds), 3)
        try:
            write_json(self.timings_path, timings)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise


def _column(rows: list[dict[str, str]], name: str, kind: type) -> np.ndarray:
    return np.array([kind(r[name]) for r in rows])


