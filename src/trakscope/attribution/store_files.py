"""What a TRAK store may trust: its record of the files it wrote, checked reads, and one writer at a time.

The record (``record.json``, rewritten atomically) holds each finished file's size, sha256 and, for ``.npy``,
shape and dtype (:func:`trakscope.manifest.describe`). A file is recorded once it is final: a small file when it is
written, a split's features, done flags and Q once every row is done. A recorded file is checked against its entry
the first time this process reads it (the digest is cached by inode, size and mtime), and every ``.npy`` read
checks its header against the file's size first, so a truncated array is named and never zero-extended by a
read-write memory map. Every failed check is one :class:`StoreError` line naming the file and what to do.

Writers hold an ``flock`` on the store's ``.lock`` (process-wide and reentrant, non-blocking): a second process is
refused in one line. Taking the lock removes the temporary files a killed writer left behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import dist
from ..io import clean_orphan_temps, read_json, write_json
from ..manifest import describe, npy_header, problem

RECORD_FORMAT = 1
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_VERIFIED: set[tuple[str, int, int, int, str]] = set()  # (path, inode, size, mtime_ns, entry) checked here
_HELD: dict[Path, int] = {}  # store root -> lock descriptor, while this process holds it


class StoreError(Exception):
    """The store holds other settings or data, is incomplete, in use, or a file in it is damaged; the message
    says which file and what to do."""


def read_store_json(path: Path, remedy: str) -> Any:
    """A JSON file of the store, parsed.

    Raises:
        StoreError: the file is not valid JSON (truncated, zeroed, edited), naming it and ``remedy``.
    """
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise StoreError(f"{path} is damaged (not valid JSON: {str(e).splitlines()[0]}); {remedy}") from None


def open_npy(path: Path, remedy: str, *, mmap: str | None = None, shape: tuple[int, ...] | None = None,
             dtype: np.dtype | type | str | None = None) -> np.ndarray:
    """An ``.npy`` file of the store, its header checked against its size (and ``shape``/``dtype`` if given) first.

    Args:
        mmap: None (read into memory), ``"r"`` or ``"r+"`` (memory-mapped; never grows the file).

    Raises:
        StoreError: the file is damaged (cut, not ``.npy``) or holds another shape or dtype; one line naming it.
    """
    try:
        got_shape, got_dtype, needed = npy_header(path)
    except ValueError as e:
        raise StoreError(f"{path} is damaged ({e}); {remedy}") from None
    size = path.stat().st_size
    if size != needed:
        raise StoreError(f"{path} is damaged (size {size:,} bytes, its header {list(got_shape)} {got_dtype} needs "
                         f"{needed:,}); {remedy}")
    if (shape is not None and got_shape != tuple(shape)) or (dtype is not None and got_dtype != np.dtype(dtype).str):
        want = f"{list(shape) if shape is not None else list(got_shape)} {np.dtype(dtype or got_dtype).str}"
        raise StoreError(f"{path} holds {list(got_shape)} {got_dtype}, expected {want}; {remedy}")
    return np.load(path, mmap_mode=mmap, allow_pickle=False)


class StoreRecord:
    """The store's ``record.json``: ``{"format", "kind": "trak-store", "files": {relative path: entry}}``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / "record.json"

    def exists(self) -> bool:
        return self.path.exists()

    def files(self) -> dict[str, dict[str, Any]]:
        """The recorded entries (none before the first record).

        Raises:
            StoreError: the record itself is damaged: nothing in the store can be trusted.
        """
        if not self.path.exists():
            return {}
        remedy = "the store cannot be verified: start again with TRAK(..., overwrite=True)"
        raw = read_store_json(self.path, remedy)
        files = raw.get("files") if isinstance(raw, dict) and raw.get("kind") == "trak-store" else None
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise StoreError(f"{self.path} is damaged (not a TRAK store record); {remedy}")
        return files

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def update(self, add: tuple[Path, ...] = (), drop: tuple[Path, ...] = ()) -> None:
        """Record the files ``add`` as they are now and forget ``drop`` (one atomic rewrite, under the lock)."""
        if not add and not self.path.exists():
            return
        gone = {self.relative(p) for p in drop}
        files = {k: v for k, v in self.files().items() if k not in gone}
        for p in add:
            files[self.relative(p)] = describe(p)
            _VERIFIED.add(_key(p, files[self.relative(p)]))  # just described: not checked again in this process
        write_json(self.path, {"format": RECORD_FORMAT, "kind": "trak-store", "files": dict(sorted(files.items()))})

    def recorded(self, path: Path) -> bool:
        return self.relative(path) in self.files()

    def check(self, path: Path, remedy: str) -> None:
        """Refuse ``path`` unless it is recorded and still what was written (its digest checked once per process).

        Raises:
            StoreError: unrecorded, or damaged (size, header, shape, sha256), naming the file and ``remedy``.
        """
        entry = self.files().get(self.relative(path))
        if entry is None:
            raise StoreError(f"{path} is not in the store's record {self.path.name} (written by an interrupted run or "
                             f"by another program); {remedy}")
        key = _key(path, entry)
        if key in _VERIFIED:
            return
        found = problem(path, entry, checksum=True)
        if found:
            raise StoreError(f"{path} is damaged ({found}); {remedy}")
        _VERIFIED.add(key)


def _key(path: Path, entry: dict[str, Any]) -> tuple[str, int, int, int, str]:
    """What a verification holds for: the file as it is now (inode, size, mtime) against this entry."""
    st = path.stat()
    return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, json.dumps(entry, sort_keys=True)


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"another process (pid {pid})" if pid.isdigit() else "another process"


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the store's ``.lock`` exclusively for the block (reentrant within this process; rank 0 only).

    On first taking it, the temporary files of killed writers are removed (with the lock, no other writer is at
    work; under torchrun other ranks may be, so only old ones are).

    Raises:
        StoreError: another process holds the lock.
    """
    key = Path(root).resolve()
    if key in _HELD:  # an outer block of this process holds it
        yield
        return
    if dist.rank() != 0:  # ranks of one torchrun job share the store by design: rank 0 holds the lock
        yield
        return
    fd = _open_lock(key)
    if fd is None:  # a store this user cannot write: nothing of ours can change it, and any write says so
        yield
        return
    _take(fd, key)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing releases the flock


def _open_lock(root: Path) -> int | None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        return os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno not in NOT_WRITABLE:
            raise
        return None


def _take(fd: int, root: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise StoreError(f"{root} is in use by {holder} writing to it; wait for it to finish, or use another "
                         "store folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    clean_orphan_temps(root, min_age_s=0 if dist.world_size() == 1 else 3600.0)
