"""Atomic writes of the run folder's file kinds: JSON, CSV, ``.npy`` and safetensors.

Every writer writes to a temporary file in the destination folder and renames it into place, so a
reader never sees half a file and an interrupted run leaves either the old file or the new one. The
file is flushed to disk before the rename and the folder after it, so a power cut cannot leave an
empty file under the final name. Files get the mode the user's umask gives any new file.
Nothing here pickles: ``.npy`` files are read with ``allow_pickle=False``.

Memory-mapped outputs are created with :func:`create_memmap`, which reserves their disk space first:
a write through a memory map to a full disk is a SIGBUS that kills the process, while a failed
reservation is an ordinary ``OSError(ENOSPC)`` naming the file and the space missing.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

# Temporary files of atomic_path: mkstemp's ".<name>.<8 random chars>.tmp<suffix>".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
ORPHAN_MIN_AGE_S = 3600.0


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # elsewhere the only way to read it is to set it and put it back
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask (``mkstemp`` would give 0o600)."""
    return 0o666 & ~_umask()


def _chmod_like_new_file(path: Path) -> None:
    try:
        os.chmod(path, new_file_mode())
    except OSError:
        pass  # filesystems without modes (some network and FUSE mounts) refuse chmod; the file is still good


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where directories cannot be opened or synced."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (network, FUSE) refuse fsync on a directory; the rename itself still happened
    finally:
        os.close(fd)


def _name_the_file(e: OSError, path: Path) -> None:
    """Make an error about our temporary file (or about no file at all) name the file being written instead."""
    if e.filename is None or _TEMP_NAME.match(Path(os.fsdecode(e.filename)).name):
        e.filename = str(path)


@contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, sync it and rename it onto ``path``.

    The temporary file is named ``.<name>.<random>.tmp<suffix>``; a process killed with SIGKILL leaves it
    behind, and :func:`clean_orphan_temps` removes it later. An ``OSError`` raised about the temporary file, or
    about no file (a failed ``write``), names ``path``, so "disk full" says which output did not fit.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    except OSError as e:
        _name_the_file(e, path)
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        _chmod_like_new_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        _pause_after(path)
    except OSError as e:
        _name_the_file(e, path)
        raise
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _pause_after(path: Path) -> None:
    """Crash-test hook: ``TRAKSCOPE_PAUSE_AFTER=scores/val.npy`` sleeps (``TRAKSCOPE_PAUSE_S``, 60 s) once that
    file is in place, so that a test can kill the process at a point too short to catch by polling. Unset, it
    does nothing; set, it changes nothing but the timing.
    """
    name = os.environ.get("TRAKSCOPE_PAUSE_AFTER")
    if name and path.as_posix().endswith("/" + name.lstrip("/")):
        time.sleep(float(os.environ.get("TRAKSCOPE_PAUSE_S", "60")))


def clean_orphan_temps(folder: Path | str, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left under ``folder`` (recursively) when killed.

    Only names of the form ``.<name>.<8 chars>.tmp[.<ext>]`` are touched, and only those not modified for
    ``min_age_s`` seconds: a live writer modifies its file as it writes (a memory-mapped one within the
    kernel's writeback interval, ~30 s), so an hour-old one is an orphan. Pass ``min_age_s=0`` only while
    holding the folder's lock, when no other writer can be at work. Symlinks are neither followed nor removed.

    Returns:
        The paths removed.
    """
    cutoff = time.time() - min_age_s
    removed = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            if not _TEMP_NAME.match(name) or p.is_symlink():
                continue
            try:
                if p.stat().st_mtime <= cutoff:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:
                pass  # its writer renamed or removed it meanwhile
    return removed


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _free_bytes(fd: int, folder: Path | None) -> int:
    if hasattr(os, "fstatvfs"):
        st = os.fstatvfs(fd)
        return st.f_bavail * st.f_frsize
    return shutil.disk_usage(folder if folder is not None else os.getcwd()).free


def _no_space(fd: int, name: str, folder: Path | None, needed: int) -> OSError:
    where = _mount_point(folder) if folder is not None else "its filesystem"
    message = (f"{os.strerror(errno.ENOSPC)}: needs {needed / 2**20:.1f} MB on {where}, "
               f"{_free_bytes(fd, folder) / 2**20:.1f} MB free")
    return OSError(errno.ENOSPC, message, name)


def _reserve(fd: int, nbytes: int, name: str, folder: Path | None) -> None:
    missing = max(0, nbytes - os.fstat(fd).st_blocks * 512)  # what the file does not hold yet
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(fd, name, folder, missing) from None
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    if missing > _free_bytes(fd, folder):  # no fallocate here: the best we can do is check
        raise _no_space(fd, name, folder, missing)


def preallocate(target: Path | str | int, nbytes: int) -> None:
    """Reserve disk blocks for the first ``nbytes`` of a file before it is written through a memory map.

    Uses ``posix_fallocate`` where the OS and filesystem have it (the file grows to ``nbytes`` if smaller);
    elsewhere only checks that the filesystem has the free space.

    Args:
        target: a path (created if absent) or an open, writable file descriptor.
        nbytes: bytes the file must be able to hold.

    Raises:
        OSError: errno ENOSPC, ``filename`` the file, message like "No space left on device: needs
            120.0 MB on /data, 3.2 MB free"; the file keeps whatever size it reached.
    """
    if nbytes <= 0:
        return
    if isinstance(target, int):
        _reserve(target, nbytes, f"<file descriptor {target}>", None)
        return
    path = Path(target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _reserve(fd, nbytes, str(path), path.parent)
    finally:
        os.close(fd)


def create_memmap(path: Path | str, shape: tuple[int, ...], dtype: np.dtype | type | str) -> np.memmap:
    """A new zero-filled ``.npy`` at ``path``, memory-mapped for writing, its disk space reserved first.

    Works on a final path (resumable stores) or on an :func:`atomic_path` temporary.

    Raises:
        OSError: ENOSPC (see :func:`preallocate`) before anything is written; the partial file is removed.
    """
    path = Path(path)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))  # sparse so far
    try:
        preallocate(path, os.path.getsize(path))
    except OSError:
        del array
        path.unlink(missing_ok=True)
        raise
    return array


def _standard_json(obj: Any) -> Any:
    """``obj`` with every float NaN replaced by None (standard JSON has no NaN), recursing into dicts and lists."""
    if isinstance(obj, dict):
        return {k: _standard_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard_json(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented standard JSON (NaN becomes null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_standard_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: Path | str) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_npy(path: Path | str, array: np.ndarray) -> None:
    """Write one array as ``.npy``, atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array), allow_pickle=False)


def load_npy(path: Path | str, mmap: bool = False) -> np.ndarray:
    """Read an ``.npy`` file without pickle, optionally memory-mapped."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def write_csv(path: Path | str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV with a header row, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def read_csv(path: Path | str) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` as a list of row dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_tensors(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file (contiguous CPU copies), atomically."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU."""
    return load_file(str(path), device="cpu")
