"""What trakscope wrote into a run folder, and whether each file is still what was written.

A manifest is one JSON file mapping a file's path (relative to the folder) to its size, sha256 and, for
``.npy``, its shape and dtype. Files are recorded once they are final (after their atomic rename; a
memory-mapped matrix once it is complete), by the command holding the folder's exclusive lock, so the
manifest is never written by two processes at once. The run folder (:mod:`trakscope.run_folder`) names the
manifest and the files; this module only describes and checks them.

Checking is cheap on every read: the size, and an ``.npy`` header against the file's size (so a truncated
array is named even where nothing was recorded); the checksum only for files up to
:data:`CHECKSUM_ON_READ` bytes, or when asked for.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .io import read_json, write_json

CHECKSUM_ON_READ = 16 * 2**20  # files up to 16 MiB are checksummed on every read (~10 ms); larger only on request
MANIFEST_FORMAT = 1


def sha256(path: Path | str, chunk: int = 4 * 2**20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def npy_header(path: Path | str) -> tuple[tuple[int, ...], str, int]:
    """``(shape, dtype, bytes the file must hold)`` from an ``.npy`` header, without reading the data.

    Raises:
        ValueError: not an ``.npy`` file (empty, cut inside the header, or another format).
    """
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = reader(fh, max_header_size=2**20)
        except (ValueError, EOFError, SyntaxError) as e:
            raise ValueError(f"not a valid .npy header: {e}") from None
        offset = fh.tell()
    return tuple(int(s) for s in shape), dtype.str, offset + math.prod(shape) * dtype.itemsize


def describe(path: Path | str) -> dict[str, Any]:
    """The manifest entry of a file: ``size``, ``sha256`` and, for ``.npy``, ``shape`` and ``dtype``."""
    path = Path(path)
    entry: dict[str, Any] = {"size": path.stat().st_size, "sha256": sha256(path)}
    if path.suffix == ".npy":
        shape, dtype, _ = npy_header(path)
        entry.update(shape=list(shape), dtype=dtype)
    return entry


def problem(path: Path | str, entry: dict[str, Any] | None, checksum: bool | None = None) -> str | None:
    """What is wrong with ``path`` against its manifest ``entry`` (None: unrecorded), or None when it is whole.

    Args:
        checksum: compare the sha256 (None: only for files up to :data:`CHECKSUM_ON_READ` bytes).

    Returns:
        A phrase such as ``"size 1,024 bytes, expected 38,400"``, or None.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "it is missing"
    if entry is not None and size != entry.get("size"):
        return f"size {size:,} bytes, expected {entry.get('size', 0):,}"
    if size == 0:
        return "empty file"
    if path.suffix == ".npy":
        found = _npy_problem(path, size, entry)
        if found:
            return found
    if entry is not None and (checksum or (checksum is None and size <= CHECKSUM_ON_READ)):
        if sha256(path) != entry.get("sha256"):
            return "its contents differ from what was written (sha256 mismatch)"
    return None


def _npy_problem(path: Path, size: int, entry: dict[str, Any] | None) -> str | None:
    try:
        shape, dtype, needed = npy_header(path)
    except ValueError as e:
        return str(e)
    if entry is not None and (list(shape) != entry.get("shape") or dtype != entry.get("dtype")):
        return f"shape {list(shape)} {dtype}, expected {entry.get('shape')} {entry.get('dtype')}"
    if size != needed:
        return f"size {size:,} bytes, its header {list(shape)} {dtype} needs {needed:,}"
    return None


class Manifest:
    """The manifest file at ``path``: ``{"format", "kind": "manifest", "files": {relative path: entry}}``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def files(self) -> dict[str, dict[str, Any]]:
        """Recorded entries; empty when there is no manifest, or one that is not readable (nothing is then checked
        against it, and the next record rewrites it)."""
        try:
            raw = read_json(self.path)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        files = raw.get("files") if isinstance(raw, dict) else None
        return files if isinstance(files, dict) else {}

    def update(self, add: dict[str, dict[str, Any]], remove: tuple[str, ...] = ()) -> None:
        """Record ``add`` and forget ``remove`` (one atomic rewrite; the caller holds the folder's exclusive lock)."""
        files = {k: v for k, v in self.files().items() if k not in remove}
        files.update(add)
        write_json(self.path, {"format": MANIFEST_FORMAT, "kind": "manifest", "files": dict(sorted(files.items()))})


def path_patterns(patterns: list[str], splits: tuple[str, ...]) -> re.Pattern:
    """One regex matching every path of the layout ``patterns``: ``{split}`` is one of ``splits``, ``{m}``, ``{c}``,
    ``{f}`` and ``{i}`` numbers, ``{a,b}`` either word, any other ``{name}`` one path component, ``[...]`` optional."""
    return re.compile("|".join(f"(?:{_path_regex(p, splits)})" for p in patterns))


def _path_regex(pattern: str, splits: tuple[str, ...]) -> str:
    out = []
    for token in re.split(r"(\{[^}]*\}|\[|\])", pattern):
        name = token[1:-1]
        if token in ("[", "]"):
            out.append("(?:" if token == "[" else ")?")
        elif not token.startswith("{"):
            out.append(re.escape(token))
        elif "," in name or name == "split":
            out.append("(?:" + "|".join(map(re.escape, name.split(",") if "," in name else splits)) + ")")
        else:
            out.append("[0-9]+" if name in ("m", "c", "f", "i") else "[^/]+")
    return "".join(out)
