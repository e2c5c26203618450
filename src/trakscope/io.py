"""Atomic writes of the run folder's file kinds: JSON, CSV, ``.npy`` and safetensors.

Every writer writes to a temporary file in the destination folder and renames it into place, so a
reader never sees half a file and an interrupted run leaves either the old file or the new one. The
file is flushed to disk before the rename and the folder after it, so a power cut cannot leave an
empty file under the final name. Files get the mode the user's umask gives any new file.
Nothing here pickles: ``.npy`` files are read with ``allow_pickle=False``.

Memory-mapped outputs are created with :func:`create_memmap`, which reserves their disk space first:
a write through a memory map to a full disk is a SIGBUS that kills the process, while a failed
reservation is an ordinary ``OSError(ENOSPC)`` naming the file and the space missing.

Every writer here raises :class:`DiskWriteError` when the file cannot be written (disk full, quota, a file-size
limit, a read-only filesystem, no permission): one line naming the file and saying what to do. No partial file is
left behind: the temporary file is removed, and so is a memory-mapped file that could not be reserved.
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
from typing import Any, NoReturn

import numpy as np
import torch
from safetensors.torch import load_file, save

try:
    import resource  # POSIX only: the file-size limit (ulimit -f) that makes a write fail with EFBIG
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

# Temporary files of atomic_path: mkstemp's ".<name>.<8 random chars>.tmp<suffix>".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
ORPHAN_MIN_AGE_S = 3600.0
# errno values meaning "this file cannot be written here": the user must free space, raise a limit or pick a folder.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})
_ADVICE = {
    errno.ENOSPC: "free space on that disk (or choose a folder on another disk), then rerun the same command; "
                  "finished work is kept",
    errno.EDQUOT: "free space within your quota (or choose a folder on another disk), then rerun the same command; "
                  "finished work is kept",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f {limit}) or than the filesystem allows; "
                 "raise the limit (ulimit -f unlimited) or choose a folder on another disk, then rerun the same "
                 "command; finished work is kept",
    errno.EACCES: "make {folder} writable (chmod u+w) or choose a folder you can write to",
    errno.EPERM: "make {folder} writable (chmod u+w) or choose a folder you can write to",
    errno.EROFS: "the filesystem is mounted read-only; choose a folder on a writable disk",
}


class DiskWriteError(OSError):
    """A file could not be written: disk full, quota, file-size limit, read-only filesystem or no permission.

    An ``OSError`` with ``errno`` in :data:`WRITE_ERRNOS` and ``filename`` the file being written (never a temporary
    one); ``str()`` is one line naming it and saying what to do, e.g. ``cannot write run/data/thumbs_val.npy: No
    space left on device (needs 0.4 MB on /data, 0.1 MB free); free space on that disk ..., then rerun the same
    command; finished work is kept``.
    """

    def __str__(self) -> str:
        name = os.fsdecode(self.filename) if self.filename is not None else None
        limit = _file_size_limit()
        advice = _ADVICE.get(self.errno, "").format(folder=os.path.dirname(name or "") or "the folder",
                                                    limit="unlimited" if limit is None else limit // 1024)
        reason = self.strerror or os.strerror(self.errno or errno.EIO)
        return f"cannot write{'' if name is None else ' ' + name}: {reason}" + (f"; {advice}" if advice else "")


def _file_size_limit() -> int | None:
    """The process's soft RLIMIT_FSIZE in bytes (``ulimit -f`` × 1024), or None when unlimited or unknown."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _size(path: Path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _diagnose(written: int | None, folder: Path) -> int | None:
    """The errno of a write that failed without one (numpy's and some libraries' C writers drop it), from the
    evidence left: a file (of ``written`` bytes) at the process's size limit is EFBIG, a filesystem with (almost)
    no space left ENOSPC."""
    limit = _file_size_limit()
    try:
        if limit is not None and written is not None and written >= limit:
            return errno.EFBIG
        if shutil.disk_usage(folder).free < 2**16:  # less than a few blocks: the write ran out of space
            return errno.ENOSPC
    except OSError:
        pass
    return None


def disk_write_error(e: OSError, path: Path | str, written: int | None = None) -> OSError:
    """``e`` as a :class:`DiskWriteError` about ``path`` when it is a write failure, else ``e`` named by ``path``.

    Call it once the partial file is removed, so that the free space it reports is what the user has.

    Args:
        e: the error a writer raised (its errno may be None: then it is diagnosed from ``written``, the bytes the
            partial file had reached, and the free space of ``path``'s folder).
        path: the file being written, as the user knows it (the final name, not a temporary one).
    """
    path = Path(path)
    code = e.errno if e.errno is not None else _diagnose(written, path.parent)
    if code not in WRITE_ERRNOS:
        _name_the_file(e, path)
        return e
    named = e.filename is not None and not _TEMP_NAME.match(Path(os.fsdecode(e.filename)).name)
    reason = e.strerror if e.errno is not None and e.strerror else os.strerror(code)
    if code == errno.ENOSPC and "free" not in reason:  # a quota (EDQUOT) is not what the disk has free
        reason += _free_space(path.parent)
    return DiskWriteError(code, reason, e.filename if named else str(path))


def _free_space(folder: Path) -> str:
    """`` (0.3 MB free on /mnt/data)``, or nothing where the folder cannot be looked at."""
    try:
        return f" ({shutil.disk_usage(folder).free / 2**20:.1f} MB free on {_mount_point(folder)})"
    except OSError:
        return ""


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


def _reraise(e: OSError, path: Path, written: int | None = None) -> NoReturn:
    """Raise ``e`` as :func:`disk_write_error` makes it (itself, named, when it is no write failure)."""
    err = disk_write_error(e, path, written)
    if err is e:
        raise e
    raise err from e


@contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, sync it and rename it onto ``path``.

    The temporary file is named ``.<name>.<random>.tmp<suffix>`` and removed if the block fails; a process killed
    with SIGKILL leaves it behind, and :func:`clean_orphan_temps` removes it later.

    Raises:
        DiskWriteError: disk full, quota, file-size limit, read-only or not permitted (naming ``path``).
        OSError: any other ``OSError`` raised about the temporary file, or about no file, names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    except OSError as e:
        _reraise(e, path)
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
        written = _size(tmp)
        _remove(tmp)
        _reraise(e, path, written)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if os.path.lexists(path):
        os.unlink(path)


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


def _no_space(fd: int, name: str, folder: Path | None, needed: int) -> DiskWriteError:
    where = _mount_point(folder) if folder is not None else "its filesystem"
    message = (f"{os.strerror(errno.ENOSPC)}: needs {needed / 2**20:.1f} MB on {where}, "
               f"{_free_bytes(fd, folder) / 2**20:.1f} MB free")
    return DiskWriteError(errno.ENOSPC, message, name)


def _reserve(fd: int, nbytes: int, name: str, folder: Path | None) -> None:
    missing = max(0, nbytes - os.fstat(fd).st_blocks * 512)  # what the file does not hold yet
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(fd, name, folder, missing) from None
            if e.errno in WRITE_ERRNOS:  # EFBIG: over the file-size limit
                raise DiskWriteError(e.errno, e.strerror, name) from None
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
        DiskWriteError: errno ENOSPC, ``filename`` the file, ``strerror`` like "No space left on device: needs
            120.0 MB on /data, 3.2 MB free" (or EFBIG past the file-size limit); the file keeps whatever size it
            reached.
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
        DiskWriteError: no space (see :func:`preallocate`), over the file-size limit, not writable: before anything
            is written; the partial file is removed.
    """
    path = Path(path)
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))  # sparse so far
        preallocate(path, os.path.getsize(path))
    except OSError as e:
        written = _size(path)
        array = None  # unmap before removing the file
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a folder we may not write to: the error below says so
        _reraise(e, path, written)
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


class _Stream:
    """A file numpy sees as a plain stream, so it writes through Python's ``write``: numpy's C path for real files
    (``tofile``) reports a full disk as "N requested and M written" with no errno, Python's raises ENOSPC/EFBIG."""

    def __init__(self, fh: Any):
        self.write = fh.write


def save_npy(path: Path | str, array: np.ndarray) -> None:
    """Write one array as ``.npy`` (the bytes of ``np.save``), atomically.

    Raises:
        DiskWriteError: the file does not fit or cannot be written (no partial file is left).
    """
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array(_Stream(fh), np.asarray(array), allow_pickle=False)


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
    """Write a safetensors file (contiguous CPU copies), atomically.

    The file is serialised in memory and written by Python, so a full disk is a :class:`DiskWriteError` naming it
    (safetensors' own writer raises a ``SafetensorError`` with no file name).
    """
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = save(flat, metadata=metadata)
    with atomic_path(path, suffix=".safetensors") as tmp:
        tmp.write_bytes(data)


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU."""
    return load_file(str(path), device="cpu")
