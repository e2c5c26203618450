"""The run folder's integrity record: what trakscope wrote there, and whether each file is still that.

:class:`Integrity` owns ``manifest.json`` (:mod:`trakscope.manifest` describes and checks one file): it records
finished files (:meth:`Integrity.seal`), forgets those that are being remade (:meth:`Integrity.discard`), checks a
file before it is read (:meth:`Integrity.verify`, :meth:`Integrity.array`, :meth:`Integrity.json`) and removes
what trakscope wrote, nothing else (:meth:`Integrity.clear`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import dist
from ..attribution.store import TrakStore
from ..io import load_npy, read_json
from ..manifest import Manifest, describe, path_patterns, problem
from .layout import LAYOUT, OWNED, SPLITS, Layout


class RunError(Exception):
    """The run folder is missing, from another configuration or version, or lacks a stage's output."""


class Integrity:
    """Sealing and checking the files of one run folder against its manifest. Construction does no I/O.

    Args:
        layout: the folder's paths.
        is_run_folder: called before a "does not exist yet" error, to raise a clearer one first where the folder
            is no run folder at all (no or another ``config.json``).
    """

    def __init__(self, layout: Layout, is_run_folder: Callable[[], object]):
        self.layout = layout
        self._is_run_folder = is_run_folder

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.layout.manifest_path)

    def seal(self, *paths: Path) -> None:
        """Record finished files in ``manifest.json`` (size, sha256, ``.npy`` shape and dtype), on rank 0.

        Called by the run folder's own writers and by stages once an array is complete; the caller holds the
        folder's exclusive lock (``run_lock``), so no other process writes the manifest meanwhile.
        """
        root = self.layout.path.resolve()
        inside = [p for p in paths if Path(p).resolve().is_relative_to(root)]  # not `lds --out X`
        if dist.rank() == 0 and inside:
            self.manifest.update({self.layout.relative(p): describe(p) for p in inside})

    def discard(self, *paths: Path) -> None:
        """Delete files (those that exist) and forget them in the manifest, so that their stage makes them again."""
        for p in paths:
            Path(p).unlink(missing_ok=True)
        if self.manifest.exists():
            self.manifest.update({}, remove=tuple(self.layout.relative(p) for p in paths))

    def damage(self, path: Path, checksum: bool | None = None) -> str | None:
        """What is wrong with an existing file against the manifest (see :func:`trakscope.manifest.problem`)."""
        try:
            entry = self.manifest.files().get(self.layout.relative(path))
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
            raise RunError(self.message(path, found, producer))
        return path

    def message(self, path: Path, what: str, producer: str | None = None) -> str:
        """``<file> is damaged (<what>); rerun `<command>` to recompute it``."""
        try:
            name = self.layout.relative(path)
        except ValueError:
            name = str(path)
        command = self.layout.command(producer or self.layout.producer(path))
        return f"{name} is damaged ({what}); rerun `{command}` to recompute it"

    def require(self, path: Path, producer: str | None = None) -> Path:
        """``path`` if it exists, or a RunError that names the complete command producing it (default: the
        command that writes that folder, :meth:`Layout.producer`)."""
        if not path.exists():
            self._is_run_folder()  # a clearer error first if this is no run folder at all
            command = self.layout.command(producer or self.layout.producer(path))
            raise RunError(f"{path} does not exist yet; run `{command}` first")
        return path

    def array(self, path: Path, mmap: bool = False) -> np.ndarray:
        """A verified ``.npy`` file (memory-mapped if ``mmap``)."""
        self.verify(self.require(path))
        try:
            return load_npy(path, mmap=mmap)
        except (ValueError, EOFError, OSError) as e:
            raise RunError(self.message(path, str(e))) from e

    def json(self, path: Path, producer: str | None = None) -> Any:
        """A verified JSON file."""
        self.verify(self.require(path, producer or self.layout.producer(path)), producer)
        try:
            return read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(self.message(path, f"not valid JSON: {e}", producer)) from e

    def clear(self) -> None:
        """Remove what trakscope wrote in the run folder, nothing else.

        With a ``manifest.json``: the files it records, every file at a path :data:`LAYOUT` names, the TRAK store's
        own files, then the folders this leaves empty; a user's ``data/important.csv`` stays. In a folder from
        before manifests: everything under :data:`OWNED`.
        """
        root = self.layout.path
        if not self.manifest.exists():
            for name in OWNED:
                p = root / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            return
        written = set(self.manifest.files())
        named = path_patterns([p for p, _ in LAYOUT if not p.endswith("/") and not p.startswith(".")], SPLITS)
        for p in sorted(root.rglob("*")):
            rel = self.layout.relative(p)
            if (p.is_file() or p.is_symlink()) and (rel in written or named.fullmatch(rel)):
                p.unlink()
        TrakStore(self.layout.features_dir).clear()
        for p in sorted(root.rglob("*"), key=lambda q: -len(q.parts)):  # deepest first
            if p.is_dir() and not p.is_symlink() and self.layout.relative(p).split("/")[0] in OWNED and \
                    not any(p.iterdir()):
                p.rmdir()
        self.manifest.path.unlink(missing_ok=True)
