"""What trakscope wrote into a run folder, and whether each file is still what was written.

A manifest is one JSON file mapping a file's path (relative to the folder) to its size, digest and, for
``.npy``, its shape and dtype; or, for a file trakscope has begun but not finished (a memory-mapped matrix being
filled), ``{"pending": true}``. Files are recorded once they are final (after their atomic rename), by the command
holding the folder's exclusive lock. The run folder (:mod:`trakscope.run_folder`) names the manifest and the
files; this module only describes and checks them.

The record proves itself: it carries the sha256 of its own body, and a second copy is kept beside it, so a
truncated, zeroed or bit-flipped manifest is noticed and restored from the copy (or, with both damaged, nothing is
trusted). A file's digest is the sha256 of its bytes; a file over :data:`CHUNK` bytes gets a chunked digest (the
sha256 of its chunks' sha256s), whose chunks are hashed on several threads. Checking a file against its entry
costs one read of it, once per process: a file already verified, unchanged since (size, inode, mtime and ctime),
is not read again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import read_json, write_json

CHUNK = 64 * 2**20  # files over 64 MiB get a chunked digest, hashed on several threads
MANIFEST_FORMAT = 2  # 2: the record's own sha256 inside it, and a copy beside it
_VERIFIED: dict[tuple, str] = {}  # (path, size, inode, mtime, ctime) -> the digest it was verified against


def sha256(path: Path | str, chunk: int = 4 * 2**20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _chunk_sha256(path: Path, start: int) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        remaining = CHUNK
        while remaining and (block := fh.read(min(4 * 2**20, remaining))):
            h.update(block)
            remaining -= len(block)
    return h.digest()


def digest(path: Path | str) -> str:
    """``sha256:<hex>`` of a file up to :data:`CHUNK` bytes; ``sha256x64M:<hex>`` (sha256 of the chunks' sha256s,
    hashed on several threads) of a larger one."""
    path = Path(path)
    size = path.stat().st_size
    if size <= CHUNK:
        return "sha256:" + sha256(path)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(lambda s: _chunk_sha256(path, s), range(0, size, CHUNK)))
    return "sha256x64M:" + hashlib.sha256(b"".join(parts)).hexdigest()


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
    """The manifest entry of a finished file: ``size``, ``digest`` and, for ``.npy``, ``shape`` and ``dtype``."""
    path = Path(path)
    entry: dict[str, Any] = {"size": path.stat().st_size, "digest": digest(path)}
    if path.suffix == ".npy":
        shape, dtype, _ = npy_header(path)
        entry.update(shape=list(shape), dtype=dtype)
    _VERIFIED[_stat_key(path)] = entry["digest"]  # just hashed: no need to read it again in this process
    return entry


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def _expected_digest(entry: dict[str, Any]) -> str | None:
    """The entry's digest (``sha256`` of manifests before format 2 is the same digest)."""
    return entry.get("digest") or (f"sha256:{entry['sha256']}" if "sha256" in entry else None)


def problem(path: Path | str, entry: dict[str, Any] | None, checksum: bool | None = None) -> str | None:
    """What is wrong with ``path`` against its manifest ``entry`` (None: unrecorded), or None when it is whole.

    Args:
        checksum: False skips the digest (size and ``.npy`` header only); otherwise the digest is compared, once
            per process for a file that has not changed since.

    Returns:
        A phrase such as ``"size 1,024 bytes, expected 38,400"``, or None.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "it is missing"
    if entry is not None and entry.get("pending"):
        return "trakscope began writing it and did not finish"
    if entry is not None and size != entry.get("size"):
        return f"size {size:,} bytes, expected {entry.get('size', 0):,}"
    if size == 0:
        return "empty file"
    if path.suffix == ".npy":
        found = _npy_problem(path, size, entry)
        if found:
            return found
    expected = None if entry is None else _expected_digest(entry)
    if expected is not None and checksum is not False and not _matches(path, expected):
        return "its contents differ from what was written (digest mismatch)"
    return None


def _matches(path: Path, expected: str) -> bool:
    key = _stat_key(path)
    if _VERIFIED.get(key) == expected:
        return True
    found = digest(path) if expected.startswith("sha256x64M:") or not expected.startswith("sha256:") \
        else "sha256:" + sha256(path)
    if found == expected:
        _VERIFIED[key] = expected
    return found == expected


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


@dataclass
class Record:
    """A manifest as read: its ``files`` and ``state``.

    ``state`` is ``ok``, ``restored`` (the manifest was damaged or missing and its copy was whole), ``missing``
    (neither file exists) or ``damaged`` (neither is whole); ``why`` says what was wrong with the manifest.
    """

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: str = "ok"
    why: str = ""

    @property
    def readable(self) -> bool:
        return self.state in ("ok", "restored")


def _body_digest(files: dict[str, Any]) -> str:
    body = {"format": MANIFEST_FORMAT, "kind": "manifest", "files": files}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_one(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(files, "")`` of a whole manifest file, or ``(None, what is wrong)``."""
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return None, "missing"
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return None, f"not valid JSON: {e}"
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, dict) or raw.get("kind") != "manifest":
        return None, "not a trakscope manifest"
    if raw.get("format", 1) >= 2 and raw.get("sha256") != _body_digest(files):
        return None, "its own digest does not match its contents"
    return files, ""


class Manifest:
    """The manifest at ``path`` (``{"format", "kind": "manifest", "files": {relative path: entry}, "sha256"}``) and
    its copy at ``copy`` (default ``<stem>.copy.json`` beside it)."""

    def __init__(self, path: Path | str, copy: Path | str | None = None):
        self.path = Path(path)
        self.copy = Path(copy) if copy is not None else self.path.with_name(self.path.stem + ".copy.json")

    def exists(self) -> bool:
        return self.path.exists() or self.copy.exists()

    def load(self) -> Record:
        """The record, from the manifest, or from its copy where the manifest is missing or damaged."""
        files, why = _read_one(self.path)
        if files is not None:
            return Record(files)
        backup, why_copy = _read_one(self.copy)
        if backup is not None:
            return Record(backup, "restored", why)
        if why == "missing" and why_copy == "missing":
            return Record(state="missing", why="missing")
        return Record(state="damaged", why=why if why != "missing" else why_copy)

    def files(self) -> dict[str, dict[str, Any]]:
        """Recorded entries; empty when there is no whole manifest or copy."""
        return self.load().files

    def write(self, files: dict[str, dict[str, Any]]) -> None:
        """Write the manifest, then its copy (each atomically): a crash between leaves one whole."""
        files = dict(sorted(files.items()))
        body = {"format": MANIFEST_FORMAT, "kind": "manifest", "files": files, "sha256": _body_digest(files)}
        write_json(self.path, body)
        write_json(self.copy, body)

    def update(self, add: dict[str, dict[str, Any]], remove: tuple[str, ...] = ()) -> None:
        """Record ``add`` and forget ``remove`` (one atomic rewrite; the caller holds the folder's exclusive lock).

        A record that cannot be read (both copies damaged) is started afresh: what it held is then unrecorded,
        hence untrusted, and recomputed by the command that makes it.
        """
        files = {k: v for k, v in self.load().files.items() if k not in remove}
        files.update(add)
        self.write(files)

    def unlink(self) -> None:
        """Remove the manifest and its copy."""
        self.path.unlink(missing_ok=True)
        self.copy.unlink(missing_ok=True)


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
