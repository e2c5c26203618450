"""One command at a time on a run folder: an ``flock`` on the folder's lock file (``RunFolder.lock_path``).

Commands that write stage outputs (``run``, ``detect``, ``removal``, ``lds``) take the lock exclusively;
commands that only read stage outputs and write their own file atomically (``inspect``, ``export``,
``report``) take it shared, so several of them may run together, but never beside a writer. A command
that cannot get the lock fails at once with one line naming the holder (its command, pid and start time,
which an exclusive holder writes into the lock file). The kernel drops the lock when the process dies, even
by SIGKILL, so a crash never leaves a stale lock behind.

Ranks of one ``torchrun`` job share the folder by design: only rank 0 locks (``RANK`` / ``LOCAL_RANK``).
A folder that this user cannot write is not locked by readers (nothing of theirs can corrupt it), so a
plain read of a read-only folder still works.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from .io import clean_orphan_temps
from .run_folder import RunError, RunFolder

NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _rank() -> int:
    """This process's rank in a torchrun job (0 outside one), from the environment torchrun sets."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def _open(path: os.PathLike) -> tuple[int | None, bool]:
    """``(descriptor of the lock file or None, writable)``; the file is created where the folder allows it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except OSError as e:
        if e.errno not in NOT_WRITABLE:
            raise
    try:
        return os.open(path, os.O_RDONLY), False  # flock needs no write access: still excludes writers
    except OSError:
        return None, False


def _holder(fd: int) -> str:
    """``trakscope run (pid 123) since 14:02`` from the lock file, or a plain phrase when it names no one."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "null")
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        return "another trakscope command that reads it (inspect, export or report)"
    since = time.strftime("%H:%M", time.localtime(info.get("started", 0)))
    return f"trakscope {info.get('command', '?')} (pid {info.get('pid', '?')}) since {since}"


def _write_holder(fd: int, command: str) -> None:
    info = {"command": command, "pid": os.getpid(), "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


@contextmanager
def hold(folder: RunFolder, command: str, *, shared: bool = False) -> Iterator[None]:
    """Hold the folder's lock for the block; an exclusive holder first removes temp files of killed writers.

    Args:
        folder: the run folder (created by the caller first where the command creates it).
        command: the command's name, shown to a command that is refused.
        shared: take the lock shared (a command that writes no stage output).

    Raises:
        RunError: another process holds the lock (exit status 2 through the CLI).
    """
    if _rank() != 0 or not folder.path.is_dir():
        yield
        return
    fd, writable = _open(folder.lock_path)
    if fd is None:  # the folder is not ours to write: nothing of ours can corrupt it; a write says so in one line
        yield
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{folder.path} is in use by {_holder(fd)}; wait for it to finish, or use "
                           "another run folder") from None
        if not shared and writable:
            _write_holder(fd, command)
            clean_orphan_temps(folder.path, min_age_s=0)
        try:
            yield
        finally:
            if not shared and writable:
                try:
                    os.ftruncate(fd, 0)  # before unlocking: a later reader-blocked message names no one stale
                except OSError:
                    pass
    finally:
        os.close(fd)  # closing releases the flock


def command_lock(run_dir: str | os.PathLike | None, command: str, mode: str | None):
    """:func:`hold` for a command module's ``LOCK`` (``"exclusive"``, ``"shared"``, or None: it locks itself)."""
    if mode is None or run_dir is None:
        return nullcontext()
    if mode not in ("exclusive", "shared"):
        raise ValueError(f"unknown lock mode {mode!r}")
    return hold(RunFolder(run_dir), command, shared=mode == "shared")
