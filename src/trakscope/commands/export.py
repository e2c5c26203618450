"""``trakscope export``: the keep-list and the removed list (with reasons) of one strategy, as CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..io import write_csv
from ..methods.removal import STRATEGIES, removal_reason, select_removed
from ..run_folder import RunFolder
from ..stages.detect import load_ranking

HELP = "write the keep-list and the removed list (with reasons) of a removal strategy as CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder with detect/ranking.csv")
    parser.add_argument("--strategy", required=True, choices=STRATEGIES, help="which examples to remove")
    parser.add_argument("--fraction", type=float, default=0.05,
                        help="share of the training split to remove (ignored by d3m-heuristic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--out-dir", default=None, help="where to write the CSVs (default: <run>/export)")


def export_lists(run: RunFolder, strategy: str, fraction: float, seed: int,
                 out_dir: Path) -> tuple[Path, Path, int, int]:
    """Write ``keep_<name>.csv`` and ``removed_<name>.csv``; return their paths and row counts.

    Both list ``index`` (row of ``data/train.csv``), ``source_id`` (stable id in the source dataset) and
    ``label``; the removed list adds ``true_label``, ``noisy`` (planted truth, where known) and ``reason``.
    """
    ranking = load_ranking(run)
    train = run.table("train")
    if not np.array_equal(train["index"], ranking["index"]):
        raise ValueError("detect/ranking.csv does not match data/train.csv; rerun `trakscope detect`")
    removed = select_removed(strategy, fraction, ranking, seed)
    keep = np.setdiff1d(np.arange(len(train["index"])), removed)
    name = strategy if strategy == "d3m-heuristic" else f"{strategy}_{fraction:g}"
    keep_path, removed_path = out_dir / f"keep_{name}.csv", out_dir / f"removed_{name}.csv"
    write_csv(keep_path, ["index", "source_id", "label"],
              [[int(train["index"][i]), train["source_id"][i], int(train["label"][i])] for i in keep])
    write_csv(removed_path, ["index", "source_id", "label", "true_label", "noisy", "reason"],
              [[int(train["index"][i]), train["source_id"][i], int(train["label"][i]), int(train["true_label"][i]),
                int(train["noisy"][i]), removal_reason(strategy, ranking, int(i))] for i in removed])
    return keep_path, removed_path, len(keep), len(removed)


def run(args: argparse.Namespace) -> int:
    run_folder = RunFolder(args.run)
    out_dir = Path(args.out_dir) if args.out_dir else run_folder.path / "export"
    keep_path, removed_path, n_keep, n_removed = export_lists(run_folder, args.strategy, args.fraction, args.seed,
                                                              out_dir)
    print(f"{args.strategy}: keep {n_keep} training examples -> {keep_path}")
    print(f"removed {n_removed} (with reasons) -> {removed_path}")
    return 0
