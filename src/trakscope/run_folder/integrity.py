"""The run folder's integrity record: what trakscope wrote there, and whether each file is still that.

:class:`Integrity` owns ``manifest.json`` and its copy (:mod:`trakscope.manifest` describes and checks one
file). It records finished files (:meth:`Integrity.seal`) and files being written (:meth:`Integrity.expect`),
forgets those being remade (:meth:`Integrity.discard`), checks a file before it is read (:meth:`Integrity.verify`,
:meth:`Integrity.array`, :meth:`Integrity.json`) and removes what it records, nothing else
(:meth:`Integrity.clear`). A file that the record does not hold, or any file while the record itself is damaged
beyond its copy, is never trusted: reading it is refused with the file named and the command that remakes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import dist
from ..attribution.store import TrakStore
from ..io import load_npy, read_json, write_json
from ..manifest import Manifest, Record, describe, problem
from .layout import OWNED, Layout

UNRECORDED = "not in the integrity record"
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")  # io.atomic_path's temporary files


class RunError(Exception):
    """The run folder is missing, from another configuration or version, or lacks a stage's output."""


class Integrity:
    """Sealing and checking the files of one run folder against its record. Construction does no I/O.

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
        return Manifest(self.layout.manifest_path, self.layout.manifest_copy_path)

    def record(self) -> Record:
        """The record as read now (from the copy where ``manifest.json`` is damaged)."""
        return self.manifest.load()

    def restore(self) -> str | None:
        """Rewrite a damaged or missing ``manifest.json`` from its whole copy (rank 0, under the exclusive lock);
        returns what was done, for the log."""
        record = self.record()
        if record.state != "restored" or dist.rank() != 0:
            return None
        self.manifest.write(record.files)
        return f"manifest.json was {record.why}; restored it from manifest.copy.json"

    # --- recording ----------------------------------------------------------------------------
    def _inside(self, paths: tuple[Path, ...]) -> list[Path]:
        root = self.layout.path.resolve()
        return [Path(p) for p in paths if Path(p).resolve().is_relative_to(root)]  # not `lds --out X`

    def seal(self, *paths: Path) -> None:
        """Record finished files (size, digest, ``.npy`` shape and dtype; ``config.json`` with its content), on rank 0.

        Called by the run folder's own writers and by stages once a file is complete; the caller holds the
        folder's exclusive lock (``run_lock``), so no other process writes the record meanwhile.
        """
        inside = self._inside(paths)
        if dist.rank() == 0 and inside:
            self.manifest.update({self.layout.relative(p): self._entry(p) for p in inside})

    def _entry(self, path: Path) -> dict[str, Any]:
        entry = describe(path)
        if path in self._restorable():  # so that a damaged file can be rebuilt from the record
            entry["content"] = read_json(path)
        return entry

    def _restorable(self) -> tuple[Path, ...]:
        """Small JSON files whose content the record holds: ``config.json`` and ``data/fingerprint.json``."""
        return self.layout.config_path, self.layout.data_fingerprint_path

    def expect(self, *paths: Path) -> None:
        """Record files that trakscope is about to write, as ``pending`` (those not recorded yet), on rank 0: an
        interrupted write is then trakscope's (``--overwrite`` removes it) and never trusted as finished."""
        inside = self._inside(paths)
        if dist.rank() != 0 or not inside:
            return
        files = self.record().files
        new = {self.layout.relative(p): {"pending": True} for p in inside if self.layout.relative(p) not in files}
        if new:
            self.manifest.update(new)

    def seal_pending(self, *paths: Path) -> None:
        """:meth:`seal` those of ``paths`` that exist and are pending or unrecorded (finished since)."""
        files = self.record().files
        todo = [p for p in self._inside(paths)
                if p.exists() and files.get(self.layout.relative(p), {"pending": True}).get("pending")]
        if todo:
            self.seal(*todo)

    def discard(self, *paths: Path) -> None:
        """Delete files (those that exist) and forget them in the record, so that their stage makes them again."""
        for p in paths:
            Path(p).unlink(missing_ok=True)
        self.forget(*paths)

    def forget(self, *paths: Path) -> None:
        """Forget files in the record (rank 0); ``forget_missing`` drops every entry whose file is gone."""
        names = tuple(self.layout.relative(p) for p in self._inside(paths))
        if dist.rank() == 0 and names and self.manifest.exists():
            self.manifest.update({}, remove=names)

    def forget_missing(self) -> None:
        """Drop the entries of files that no longer exist (removed with what they were computed from)."""
        files = self.record().files
        gone = tuple(name for name in files if not (self.layout.path / name).exists())
        if gone and dist.rank() == 0:
            self.manifest.update({}, remove=gone)

    # --- checking -----------------------------------------------------------------------------
    def damage(self, path: Path, checksum: bool | None = None) -> str | None:
        """What is wrong with a file against the record, or None when it is whole.

        A file inside the run folder that the record does not hold (or whose record is damaged beyond its copy)
        is ``"not in the integrity record ..."``; one outside the folder is checked by its ``.npy`` header only.
        """
        path = Path(path)
        try:
            name = self.layout.relative(path)
        except ValueError:  # not inside the run folder: nothing recorded
            return problem(path, None, checksum)
        record = self.record()
        entry = record.files.get(name)
        if entry is None and path.exists():  # what its own header tells first, then that nothing vouches for it
            return problem(path, None, checksum) or _unrecorded(record)
        return problem(path, entry, checksum)

    def damaged(self, path: Path) -> bool:
        """``path`` exists but is not what was written (truncated, emptied, other bytes) or is not recorded."""
        return Path(path).exists() and self.damage(path) is not None

    def verify(self, path: Path, producer: str | None = None, checksum: bool | None = None) -> Path:
        """``path``, checked against the record (size, ``.npy`` header and digest, once per process).

        Raises:
            RunError: one line naming the file, what is wrong, and the command that recomputes it.
        """
        found = self.damage(path, checksum)
        if found:
            raise RunError(self.message(path, found, producer))
        return path

    def message(self, path: Path, what: str, producer: str | None = None) -> str:
        """``<file> is damaged (<what>); rerun `<command>` to recompute it`` (``is unverified`` when unrecorded)."""
        try:
            name = self.layout.relative(path)
        except ValueError:
            name = str(path)
        command = self.layout.command(producer or self.layout.producer(path))
        verb = "is unverified" if what.startswith(UNRECORDED) else "is damaged"
        return f"{name} {verb} ({what}); rerun `{command}` to recompute it"

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

    def rebuild(self, path: Path) -> str | None:
        """Rewrite a damaged, edited or deleted ``config.json`` or ``data/fingerprint.json`` from the content the
        record holds (rank 0, under the exclusive lock); what was done, or None."""
        entry = self.record().files.get(self.layout.relative(path)) or {}
        if "content" not in entry or dist.rank() != 0:
            return None
        what = self.damage(path)
        if not what:
            return None
        write_json(path, entry["content"])
        if self.damage(path):  # another rendering of the same JSON: keep the record's entry true to the file
            self.seal(path)
        return f"{self.layout.relative(path)} was damaged ({what}); rewrote it from the integrity record"

    # --- --overwrite --------------------------------------------------------------------------
    def clear(self) -> list[str]:
        """Remove every file the record holds (finished or pending, with their temporary files), the folders this
        leaves empty, then the record; returns the other files under trakscope's folders, which are kept.

        Raises:
            RunError: the record is missing or damaged beyond its copy: nothing is removed, and the message lists
                what would have been.
        """
        record = self.record()
        root = self.layout.path
        if not record.readable:
            raise RunError(self._refusal(record))
        written = set(record.files)
        store = set(TrakStore(self.layout.features_dir).bookkeeping())
        kept = []
        for p in sorted(self._owned_files()):
            rel = self.layout.relative(p)
            temp = _TEMP.match(p.name)
            if rel in written or p in store or (temp and self.layout.relative(p.with_name(temp["name"])) in written):
                p.unlink()
            elif rel not in ("manifest.json", "manifest.copy.json"):
                kept.append(rel)
        for p in sorted(root.rglob("*"), key=lambda q: -len(q.parts)):  # deepest first
            if p.is_dir() and not p.is_symlink() and self.layout.relative(p).split("/")[0] in OWNED and \
                    not any(p.iterdir()):
                p.rmdir()
        self.manifest.unlink()
        return kept

    def _owned_files(self) -> list[Path]:
        """Files (and links) under :data:`OWNED` entries of the folder."""
        found = []
        for name in OWNED:
            p = self.layout.path / name
            if p.is_dir() and not p.is_symlink():
                found += [q for q in p.rglob("*") if q.is_file() or q.is_symlink()]
            elif p.is_file() or p.is_symlink():
                found.append(p)
        return found

    def _refusal(self, record: Record) -> str:
        files = [self.layout.relative(p) for p in sorted(self._owned_files())]
        shown = ", ".join(files[:100]) + (f" and {len(files) - 100} more" if len(files) > 100 else "")
        state = "is missing" if record.state == "missing" else f"is damaged ({record.why}), and so is its copy"
        return (f"refusing to --overwrite {self.layout.path}: its integrity record manifest.json {state}, so trakscope "
                f"cannot tell the files it wrote from yours; it would have deleted {shown or 'nothing'}. Rerun "
                f"without --overwrite (`{self.layout.command('run')}`) to verify the run and recompute what cannot "
                "be, or use another --out")


def _unrecorded(record: Record) -> str:
    if record.state == "missing":
        return f"{UNRECORDED}: manifest.json and manifest.copy.json are missing"
    if record.state == "damaged":
        return f"{UNRECORDED}: manifest.json and manifest.copy.json are both damaged"
    return f"{UNRECORDED} manifest.json"
