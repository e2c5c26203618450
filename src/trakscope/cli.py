"""``trakscope`` command line: a thin layer over the stages. Each subcommand lives in ``commands/<name>.py``.

A command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and ``LOCK``
(``"exclusive"`` or ``"shared"``: how the command holds its ``--run`` folder's lock, see ``run_lock``). Failures the
user can act on print one line, no traceback: expected errors (missing data, a foreign run folder, ...) exit
with status 2; a file that cannot be written (disk full, quota, read-only or permission denied) with status 1.
Set ``TRAKSCOPE_DEBUG=1`` to get the traceback instead. Ctrl-C exits with 130 and SIGTERM with 143, both after
saying that finished work is kept; a closed output pipe (``| head``) exits quietly with 141, as if killed by
SIGPIPE.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from . import __version__
from .attribution.store import StoreError
from .data import DataError
from .io import WRITE_ERRNOS, DiskWriteError, disk_write_error
from .models import WeightsError
from .run_folder import RunError
from .run_lock import command_lock

COMMANDS = ("run", "inspect", "detect", "removal", "export", "report", "lds")

EXPECTED_ERRORS = (DataError, RunError, StoreError, WeightsError, ValueError, FileNotFoundError,
                   np.linalg.LinAlgError)
EXIT_INTERRUPT, EXIT_TERMINATED, EXIT_BROKEN_PIPE = 130, 128 + signal.SIGTERM, 128 + 13  # 13: SIGPIPE


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; handled like Ctrl-C so that ``finally`` blocks and atomic writes clean up."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: not where the help already says it, not when it is None or False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = any(action.default is v for v in (None, argparse.SUPPRESS, False))  # "is": 0 == False
        if "(default" in text or "%(default)" in text or nothing:
            return action.help
        if isinstance(action.default, tuple):
            shown = ",".join(str(x) for x in action.default).replace("%", "%%")
            return f"{text} (default: {shown})"
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command module."""
    parser = argparse.ArgumentParser(
        prog="trakscope",
        description="Which training examples made my image classifier do that? TRAK attribution, "
        "mislabel detection, D3M and remove-and-retrain, offline on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"trakscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _lock=getattr(module, "LOCK", None))
    return parser


_HANDLER_PID = [0]  # the process that installed the handler; forked workers (cleanlab's pool) inherit it


def _raise_terminated(signum: int, frame: object) -> None:
    if os.getpid() != _HANDLER_PID[0]:  # a forked worker told to stop: die as it would have, quietly
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (signals go nowhere else)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _HANDLER_PID[0] = os.getpid()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_error(e: OSError) -> str:
    """One line for an OSError of WRITE_ERRNOS: a :class:`~trakscope.io.DiskWriteError`'s own line (``cannot write
    run/scores.npy: No space left on device (...); free space on that disk ...``), or ``cannot read FILE`` where
    an unreadable file was being read."""
    if isinstance(e, DiskWriteError):
        return str(e)
    name = e.filename if e.filename is not None else e.filename2
    if name is not None and e.errno in (errno.EACCES, errno.EPERM) and os.path.isfile(name) and not os.access(
            name, os.R_OK):
        return f"cannot read {os.fsdecode(name)}: {e.strerror or os.strerror(e.errno)}; make it readable (chmod u+r)"
    if name is None:
        return str(DiskWriteError(e.errno, e.strerror))
    return str(disk_write_error(e, os.fsdecode(name)))


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at devnull so that the flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trakscope`` script: one clear line and an exit code for every failure the user can fix."""
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("TRAKSCOPE_DEBUG"))
    try:
        with _sigterm_as_interrupt(), command_lock(getattr(args, "run", None), args.command, args._lock):
            code = int(args._run(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
            return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        print(f"trakscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug or e.errno not in WRITE_ERRNOS:
            raise
        print(f"trakscope {args.command}: error: {_write_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"trakscope {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPT


if __name__ == "__main__":
    sys.exit(main())
