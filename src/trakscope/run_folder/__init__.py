"""The run folder: the one owner of where every stage's inputs and outputs live, and of how they are read.

Every path of a run folder is named in :mod:`.layout` (:data:`LAYOUT` lists them, and ``docs/run-folder.md`` is
generated from it); the TRAK store's own files inside ``features/`` are named by :mod:`trakscope.attribution.store`.
A :class:`RunFolder` is those paths plus its configuration, and three parts, each owning one concern:

- :attr:`RunFolder.integrity` (:class:`~.integrity.Integrity`): the integrity record, sealing and verifying files,
  clearing what trakscope wrote;
- :attr:`RunFolder.data` (:class:`~.dataset.RunData`): the dataset, its fingerprint, the ``data/`` files;
- :attr:`RunFolder.results` (:class:`~.results.Results`): score matrices, probabilities, typed JSON results, the
  ranking and timings.

Callers ask the part that owns what they need: ``run.integrity.seal(path)``, ``run.data.table("train")``,
``run.results.scores("test")``.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig, config_diff, fingerprint_dict
from ..io import read_json, write_json
from .dataset import RunData
from .integrity import UNRECORDED, Integrity, RunError
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

__all__ = ["FORMAT", "LAYOUT", "OWNED", "PRODUCERS", "SCHEMAS", "SPLITS", "TABLE_COLUMNS", "TARGET_SPLITS",
           "UNRECORDED", "Integrity", "Results", "RunData", "RunError", "RunFolder", "checkpoint_key", "fingerprint",
           "layout_markdown"]


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
    def initialize(self, config: RunConfig, overwrite: bool = False) -> list[str]:
        """Create the folder with ``config.json``, or check that an existing one has the same config.

        A damaged record is restored from its copy, and a damaged or edited ``config.json`` from the record, first.
        Returns what was done and, with ``overwrite``, the files kept (not written by trakscope), for the log.

        Raises:
            RunError: the folder holds a run with other settings (and ``overwrite`` is false), its ``config.json``
                is not trakscope's, or ``overwrite`` is asked where the record cannot tell trakscope's files.
        """
        notes = [self.integrity.restore(), self.integrity.rebuild(self.config_path),
                 self.integrity.rebuild(self.data_fingerprint_path)]
        notes = [n for n in notes if n]
        self.__dict__.pop("config", None)
        if self.config_path.exists():
            old = self._read_config()
            if not overwrite:
                diff = config_diff(old, config)
                if diff:
                    raise RunError(f"{self.path} holds a run with other settings ({'; '.join(diff)}). "
                                   "Use another --out, or --overwrite to discard it.")
                if old.to_dict() != config.to_dict() or self.integrity.damaged(self.config_path):
                    self._write_config(config)  # how to run changed (--channels-last), or an unrecorded config
                return notes
            kept = self.integrity.clear()
            if kept:
                notes.append(f"--overwrite kept {len(kept)} file(s) that trakscope did not write: {', '.join(kept)}")
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_config(config)
        return notes

    def _write_config(self, config: RunConfig) -> None:
        write_json(self.config_path, {"format": FORMAT, **config.to_dict()})
        self.integrity.seal(self.config_path)
        self.__dict__.pop("config", None)

    # --- configuration ------------------------------------------------------------------------
    def _read_config(self, raw: Any = None) -> RunConfig:
        """The configuration in ``config.json`` (or in ``raw``, its content as the record holds it), unverified."""
        if raw is None:
            try:
                raw = read_json(self.config_path)
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
                raise RunError(f"{self.config_path} is not readable JSON ({e}); it is not a trakscope run "
                               "folder") from e
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
        """The saved configuration, verified against the integrity record.

        Raises:
            RunError: no run folder, another version, or ``config.json`` damaged, edited or unrecorded (naming the
                command that rebuilds it from the record).
        """
        if not self.config_path.is_file():
            raise RunError(f"{self.path} is not a trakscope run folder (no config.json); "
                           "create one with `trakscope run --out DIR`")
        what = self.integrity.damage(self.config_path)
        config = self._read_config()
        if what:
            raise RunError(f"config.json is {'unverified' if what.startswith(UNRECORDED) else 'damaged'} ({what}); "
                           f"rerun `{self.command('run')}` to rebuild it from the integrity record and check the "
                           "run against it")
        return config

    def has_config(self) -> bool:
        """A ``config.json`` is there, or the record holds one (to rebuild)."""
        return self.config_path.is_file() or self.relative(self.config_path) in self.integrity.record().files

    def saved_config(self) -> RunConfig:
        """The configuration to resume with: the record's copy of ``config.json`` where it holds one (so a damaged
        or edited file does not decide), else ``config.json`` as it is (a folder without a whole record)."""
        entry = self.integrity.record().files.get("config.json") or {}
        return self._read_config(entry.get("content"))

    @cached_property
    def classes(self) -> list[str]:
        """Class names, index = class id."""
        return self.data.classes()

    def expected_checkpoints(self) -> list[Path]:
        """``models/model{m}_ckpt{c}.safetensors`` that the configuration makes, in (model, checkpoint) order."""
        cfg = self.config
        imported = cfg.model.checkpoints is not None
        members = len(cfg.model.checkpoints) if imported else cfg.train.ensemble
        per_model = 1 if imported else cfg.train.kept_checkpoints
        return [self.checkpoint_path(m, c) for m in range(members) for c in range(per_model)]

    def checkpoint_paths(self, required: bool = True) -> list[Path]:
        """The run's checkpoint files in (model, checkpoint) order: all of them if ``required``, else those present.

        Raises:
            RunError: a checkpoint file that the configuration does not make (named), or, if ``required``, one that
                it makes is missing (named, with the command that makes it).
        """
        expected = self.expected_checkpoints()
        stray = sorted(set(self.path.glob("models/model*_ckpt*.safetensors")) - set(expected), key=checkpoint_key)
        if stray:
            names = ", ".join(self.relative(p) for p in stray)
            raise RunError(f"{names} {'is not a checkpoint' if len(stray) == 1 else 'are not checkpoints'} of this "
                           f"run (it makes {self.relative(expected[0])} to {self.relative(expected[-1])}); move "
                           f"{'it' if len(stray) == 1 else 'them'} out of {self.path / 'models'}, then rerun "
                           f"`{self.command('run')}`")
        if required:
            for p in expected:
                self.integrity.require(p, "run")
        return [p for p in expected if p.exists()]

    # --- what needs the configuration and a part ---------------------------------------------
    def aum(self) -> np.ndarray | None:
        """``models/aum.npy`` of a trained run, verified (None for imported checkpoints); see :meth:`Results.aum`."""
        return self.results.aum(trained=self.config.model.checkpoints is None)
