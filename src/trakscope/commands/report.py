"""``trakscope report --run DIR``: write the self-contained HTML report ``DIR/report/index.html``.

An input the run folder once held that is now missing or damaged is named in the report's section it would fill
and in one warning line each on stderr, with the command that remakes it; the report is still written, and the
exit status is then :data:`EXIT_GAPS`.
"""

from __future__ import annotations

import argparse
import sys
import time
import webbrowser

from ..report.html import DEFAULT_K, build_report
from ..run_folder import RunFolder

HELP = "write DIR/report/index.html: summary, explorer of attributions, suspects, detection, removal, LDS"
LOCK = "shared"  # reads stage outputs, writes only its own file: beside other readers (trakscope.run_lock)
EXIT_GAPS = 3  # the report was written, but some of its inputs are missing or damaged (each named on stderr)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``trakscope report``."""
    p.add_argument("--run", required=True, metavar="DIR", help="run folder (made by `trakscope run`)")
    p.add_argument("--top-k", type=int, default=DEFAULT_K,
                   help="most positive and most negative training examples kept per test example")
    p.add_argument("--open", action="store_true", help="open the report in a web browser when written")


def run(args: argparse.Namespace) -> int:
    """Build the report, record its time and print its path; then one warning per missing or damaged input, and
    exit status :data:`EXIT_GAPS` if there was any."""
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    start = time.perf_counter()
    path, gaps = build_report(args.run, k=args.top_k)
    RunFolder(args.run).results.record_timing("report", time.perf_counter() - start)
    print(path.resolve())
    if args.open:
        webbrowser.open(path.resolve().as_uri())
    for gap in gaps:
        print(f"trakscope report: warning: {gap.line()}", file=sys.stderr)
    return EXIT_GAPS if gaps else 0
