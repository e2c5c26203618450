"""The stages' results in a run folder: score matrices, probabilities, typed JSON results, the ranking, timings.

:class:`Results` reads each after verifying it against the integrity record and writes JSON results with
``format`` (:data:`~.layout.FORMAT`) and ``kind``, so a folder written by another version of trakscope gets one
clear message instead of a guess.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_csv, read_json, write_csv, write_json
from .integrity import Integrity, RunError
from .layout import FORMAT, SCHEMAS, Layout


class Results:
    """Typed reads and writes of the stages' outputs. Construction does no I/O.

    Args:
        layout: the folder's paths; integrity: its record; n_train: the number of training examples (read from
            ``data/train.csv`` when first needed).
    """

    def __init__(self, layout: Layout, integrity: Integrity, n_train: Callable[[], int]):
        self.layout, self.integrity, self._n_train = layout, integrity, n_train

    # --- arrays -------------------------------------------------------------------------------
    def probs(self, split: str) -> np.ndarray:
        """float32 ``[n, C]`` ensemble-mean softmax probabilities."""
        return self.integrity.array(self.layout.probs_path(split))

    def scores(self, split: str, mmap: bool = True) -> np.ndarray:
        """float32 ``[n_train, n_split]`` TRAK scores (``split`` = test or val), or ``[n_train]`` for ``self``."""
        return self.integrity.array(self.layout.scores_path(split), mmap=mmap)

    def aum(self, trained: bool) -> np.ndarray | None:
        """float64 ``[n_train]`` ``models/aum.npy``, verified; None where the run imported its checkpoints
        (``trained`` false: no training, no AUM).

        Raises:
            RunError: a trained run's AUM is missing or damaged (naming the command that rebuilds it).
        """
        return self.integrity.array(self.layout.aum_path()) if trained else None

    # --- typed JSON results -------------------------------------------------------------------
    def write(self, path: Path, kind: str, payload: dict[str, Any]) -> None:
        """Write a stage's JSON result with ``format`` and ``kind``."""
        missing = [k for k in SCHEMAS[kind] if k not in payload]
        if missing:
            raise ValueError(f"a {kind} result needs {missing}")
        write_json(path, {"format": FORMAT, "kind": kind, **payload})
        self.integrity.seal(path)

    def read(self, path: Path, kind: str, producer: str | None = None) -> dict[str, Any]:
        """A stage's JSON result, checked for format, kind and the keys readers rely on.

        Raises:
            RunError: absent (names ``producer``), unreadable, of another format, or missing keys.
        """
        producer = producer or self.layout.producer(path)
        raw = self.integrity.json(path, producer)
        command = self.layout.command(producer)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("kind") != kind:
            raise RunError(f"{path} was written by another version of trakscope or is not a {kind} result; "
                           f"rerun `{command}`")
        missing = [k for k in SCHEMAS[kind] if k not in raw]
        if missing:
            raise RunError(f"{path} lacks {missing}; rerun `{command}`")
        return raw

    def optional(self, path: Path, kind: str) -> dict[str, Any] | None:
        """:meth:`read`, or None when the stage has not run (or wrote another format)."""
        try:
            return self.read(path, kind, "")
        except RunError:
            return None

    # --- detect/ranking.csv -------------------------------------------------------------------
    def write_ranking(self, header: list[str], rows: list[list]) -> None:
        """``detect/ranking.csv`` (recorded in the manifest)."""
        write_csv(self.layout.ranking_path, header, rows)
        self.integrity.seal(self.layout.ranking_path)

    def ranking(self, scorers: tuple[str, ...], flags: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """``detect/ranking.csv`` in example-index order: ``<scorer>`` -> float64 natural scores ``[n_train]``.

        Also ``index``, ``noisy`` (bool), ``predicted``, ``label``, ``suggested_label`` (int64),
        ``suggested_prob`` (float64), ``suggestion_source`` (str) and, when present, ``<scorer>_rank`` (int64,
        1 = inspect first) and the flag columns named in ``flags`` (bool, e.g. ``cleanlab_issue``).

        Raises:
            RunError: absent, truncated, or not matching ``data/train.csv``.
        """
        path = self.integrity.verify(self.integrity.require(self.layout.ranking_path))
        rows = read_csv(path)
        n_train = self._n_train()
        try:
            return _ranking_columns(rows, n_train, scorers, flags)
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{path} is damaged or does not match data/train.csv ({e}); "
                           f"rerun `{self.layout.command('detect')}`") from e

    # --- timings ------------------------------------------------------------------------------
    def timings(self) -> dict[str, float]:
        """Seconds per stage recorded so far ({} where ``timings.json`` is absent, damaged or unrecorded: timings are
        only reported, so one that cannot be verified is left out and rewritten by the next stage)."""
        path = self.layout.timings_path
        if not path.exists() or self.integrity.damaged(path):
            return {}
        try:
            raw = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def record_timing(self, stage: str, seconds: float) -> None:
        """Add or replace the time of one stage in ``timings.json``.

        Skipped, without a traceback, where the folder cannot be written (read-only mount, another user's
        folder): a command that only reads must still work there.
        """
        timings = self.timings()
        timings[stage] = round(float(seconds), 3)
        try:
            write_json(self.layout.timings_path, timings)
            self.integrity.seal(self.layout.timings_path)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise


def _ranking_columns(rows: list[dict[str, str]], n_train: int, scorers: tuple[str, ...],
                     flags: tuple[str, ...]) -> dict[str, np.ndarray]:
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    if len(rows) != n_train or not np.array_equal(np.sort(index), np.arange(n_train)):
        raise ValueError(f"{len(rows)} rows for {n_train} training examples")
    order = np.argsort(index)
    out = {"index": index[order], "noisy": _column(rows, "noisy", int)[order].astype(bool)}
    if "predicted" in rows[0]:
        out["predicted"] = _column(rows, "predicted", int)[order]
    for name, kind in (("label", int), ("suggested_label", int), ("suggested_prob", float), ("suggestion_source", str)):
        if rows[0].get(name, "") != "":  # suggestions: written by detect since suggested labels were added
            out[name] = _column(rows, name, kind)[order]
    for n in scorers:
        if f"{n}_score" in rows[0]:
            out[n] = _column(rows, f"{n}_score", float)[order]
            out[f"{n}_rank"] = _column(rows, f"{n}_rank", int)[order]
    for flag in (f for f in flags if f in rows[0]):
        out[flag] = _column(rows, flag, int)[order].astype(bool)
    return out


def _column(rows: list[dict[str, str]], name: str, kind: type) -> np.ndarray:
    return np.array([kind(r[name]) for r in rows])
