"""``trakscope lds``: linear datamodeling score of the run's TRAK scores (or any score matrix) on subset models."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..run_folder import RunFolder
from ..stages.lds import run_lds
from ._runtime import add_data_root_argument, add_runtime_arguments, runtime_from_args

HELP = "linear datamodeling score: train models on random subsets, correlate their margins with the scores' prediction"
LOCK = "exclusive"  # writes stage outputs: alone on the folder (trakscope.run_lock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder with scores (from `trakscope run`)")
    parser.add_argument("--alpha", type=float, default=0.5, help="fraction of the training split each subset keeps")
    parser.add_argument("--models", type=int, default=20, help="number of subset models (cached, reused by reruns)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and the subset models' training")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="targets")
    parser.add_argument("--max-targets", type=int, default=None, help="a seeded random subset of the targets")
    parser.add_argument("--scores", type=Path, default=None,
                        help="an .npy float [n_train, n_split] attribution to evaluate instead of the run's scores")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train subset models for this many epochs instead of the run's (labelled in the output)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default RUN/lds.json; RUN/lds/lds_<stem>.json with --scores)")
    add_runtime_arguments(parser)
    add_data_root_argument(parser)


def run(args: argparse.Namespace) -> int:
    rt = runtime_from_args(args)
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be positive, got {args.epochs}")
    run_folder = RunFolder(args.run, data_root=args.data_root)
    res = run_lds(run_folder, alpha=args.alpha, k=args.models, seed=args.seed, split=args.split,
                  max_targets=args.max_targets, scores_path=args.scores, epochs=args.epochs, out=args.out,
                  device=rt.device, progress=rt.progress)
    what = res["projector"] or res["scores_path"]
    print(f"LDS {res['lds_mean']:.4f} (95% CI {res['lds_ci95'][0]:.4f} to {res['lds_ci95'][1]:.4f}) of {what} "
          f"over {res['targets_defined']} {res['split']} targets, {res['num_models']} subset models at "
          f"alpha={res['alpha']:g}, {res['train_epochs']} epochs each")
    return 0
