"""``trakscope export``: the keep-list and the removed list (with reasons) of one strategy, as CSV or Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..methods import registry
from ..run_folder import RunFolder
from ..stages.export import export_lists
from ..table_files import FORMATS

HELP = "write the keep-list and the removed list (with reasons) of a removal strategy as CSV or Parquet"
LOCK = "shared"  # reads stage outputs, writes only its own file: beside other readers (trakscope.run_lock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder with detect/ranking.csv")
    parser.add_argument("--strategy", required=True, metavar="NAME",
                        help=f"which examples to remove: {registry.strategy_help()}")
    parser.add_argument("--fraction", type=float, default=0.05,
                        help="share of the training split to remove (ignored by d3m-heuristic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--out-dir", default=None, help="where to write the lists (default: <run>/export)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="csv",
                        help="file format of the lists (parquet via pyarrow)")


def run(args: argparse.Namespace) -> int:
    registry.strategy(args.strategy)  # an unknown name fails before any file is read
    run_folder = RunFolder(args.run)
    out_dir = Path(args.out_dir) if args.out_dir else None
    out = export_lists(run_folder, args.strategy, args.fraction, args.seed, out_dir, args.fmt)
    print(f"{args.strategy}: keep {out.n_keep} training examples -> {out.keep_path}")
    if registry.strategy(args.strategy).relabels:
        print(f"relabeled {out.n_removed} to their suggested label (with reasons; the keep-list holds the new labels) "
              f"-> {out.removed_path}")
    else:
        print(f"removed {out.n_removed} (with reasons) -> {out.removed_path}")
    if out.n_canaries:
        print(f"canaries: the {out.n_canaries} labels trakscope flipped itself (--canaries) are in the keep-list "
              f"with their true labels restored ({out.n_canaries_selected} of them selected by {args.strategy}, "
              "kept: they are not your data's errors)")
    return 0
