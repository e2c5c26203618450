"""``trakscope`` command line: a thin layer over the stages. Each subcommand lives in ``commands/<name>.py``.

A command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Expected errors
(missing data, a foreign run folder, ...) print one line and exit with status 2; set ``TRAKSCOPE_DEBUG=1`` to get
the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import numpy as np

from .data import DataError
from .models import WeightsError
from .run_folder import RunError

COMMANDS = ("run", "inspect", "detect", "removal", "export", "report", "lds")

EXPECTED_ERRORS = (DataError, RunError, WeightsError, ValueError, FileNotFoundError, np.linalg.LinAlgError)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command module."""
    parser = argparse.ArgumentParser(
        prog="trakscope",
        description="Which training examples made my image classifier do that? TRAK attribution, "
        "mislabel detection, D3M and remove-and-retrain, offline on a CPU.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trakscope`` script: expected errors become one clear line and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except EXPECTED_ERRORS as e:
        if os.environ.get("TRAKSCOPE_DEBUG"):
            raise
        print(f"trakscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trakscope {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
