"""``trakscope removal``: remove the examples each strategy selects, retrain, and compare test accuracy."""

from __future__ import annotations

import argparse
import sys

from .. import dist
from ..config import FRACTION, POSITIVE
from ..methods import registry
from ..methods.registry import DEFAULT_STRATEGIES
from ..methods.removal import DEFAULT_FRACTIONS
from ..report.plots import removal_png
from ..report.tables import relabel_table, removal_table
from ..run_folder import RunFolder
from ..stages.detect import load_ranking
from ..stages.removal import run_removal
from ._config_args import bounded, bounded_list
from ._runtime import add_data_root_argument, add_runtime_arguments, runtime_from_args

HELP = "remove-and-retrain: test accuracy after removing each strategy's top examples (needs `trakscope detect`)"
LOCK = "exclusive"  # writes stage outputs: alone on the folder (trakscope.run_lock)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder with detect/ranking.csv")
    parser.add_argument("--fractions", type=bounded_list(float, FRACTION), default=DEFAULT_FRACTIONS,
                        help="comma-separated fractions of the training split to remove")
    parser.add_argument("--strategies", type=_names, default=DEFAULT_STRATEGIES,
                        help=f"comma-separated strategies; {registry.strategy_help()}")
    parser.add_argument("--seeds", type=bounded(int, POSITIVE), default=3,
                        help="retrains per (strategy, fraction), seeds train.seed + s")
    parser.add_argument("--groups", default="classes", metavar="classes|FILE",
                        help="test groups of the worst-group accuracy: the classes (worst-class accuracy), or the "
                             "groups CSV given to `detect --groups` with rows for the test examples too")
    add_runtime_arguments(parser)
    add_data_root_argument(parser)


def _without_left_out(strategies: tuple[str, ...], run_folder: RunFolder) -> tuple[str, ...]:
    """``strategies`` less those whose scorer detect may leave out (:class:`~.registry.Skip`) and did, said on
    stdout."""
    scorer = {n: registry.STRATEGIES[n].scorer for n in strategies}
    skips = {n: registry.SCORERS[c].skip for n, c in scorer.items() if c is not None and registry.SCORERS[c].skip}
    if not skips:
        return strategies
    ranking = load_ranking(run_folder)
    gone = [n for n in strategies if n in skips and scorer[n] not in ranking]
    for name in gone:
        print(f"{name} strategy skipped: {skips[name].reason}")
    return tuple(n for n in strategies if n not in gone)


def run(args: argparse.Namespace) -> int:
    strategies = tuple(registry.strategy(s).name for s in args.strategies)  # unknown names fail first
    rt = runtime_from_args(args)
    run_folder = RunFolder(args.run, data_root=args.data_root)
    if args.strategies is DEFAULT_STRATEGIES:  # an explicit request for a strategy detect left out errors instead
        strategies = _without_left_out(strategies, run_folder)
    summary = run_removal(run_folder, strategies, args.fractions, args.seeds, device=rt.device,
                          progress=rt.progress, groups=args.groups)
    if dist.rank() != 0:  # under torchrun rank 0 speaks for all
        return 0
    removal_png(summary, run_folder.removal_plot_path)
    run_folder.integrity.seal(run_folder.removal_plot_path)
    print(f"\nremove and retrain, {args.seeds} seed(s) each; test accuracy "
          f"({summary['n_noisy']} planted wrong labels among {summary['n_train']}):")
    print(removal_table(summary))
    if summary.get("relabel_vs_remove"):
        print("\nrelabel instead of remove, the same selection (paired over seeds; positive = relabelling is better):")
        print(relabel_table(summary))
    if "warning" in summary.get("imported", {}):
        print(f"trakscope: warning: {summary['imported']['warning']}", file=sys.stderr)
    print(f"results: {run_folder.removal_results_path}; plot: {run_folder.removal_plot_path}")
    return 0
