"""``trakscope detect``: rank training examples by how likely their label is wrong / how harmful they are."""

from __future__ import annotations

import argparse
from typing import Any

from .. import dist
from ..config import Bound
from ..methods import registry
from ..methods.registry import SCORERS
from ..report.tables import (
    canary_count_lines,
    canary_estimate_table,
    detection_table,
    suggestion_table,
    wrong_label_line,
)
from ..run_folder import RunFolder
from ..stages.detect import ground_truth, primary_scorer, run_detection
from ..table_files import FORMATS
from ._config_args import bounded
from ._runtime import add_data_root_argument, add_runtime_arguments, runtime_from_args

HELP = f"rank training examples by suspicion ({', '.join(SCORERS)})"
LOCK = "exclusive"  # writes stage outputs: alone on the folder (trakscope.run_lock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder made by `trakscope run`")
    parser.add_argument("--groups", default="classes", metavar="classes|auto|FILE",
                        help="D3M validation groups: one per class, Auto-D3M (2 PCA pseudo-groups per class), or a "
                             "CSV with a `group` column and `source_id` or `index` (val rows; test rows too, with "
                             "`split`=test or by source_id, for worst-group accuracy in `removal --groups`)")
    parser.add_argument("--folds", type=bounded(int, Bound(2)), default=3,  # k-fold needs two folds at least
                        help="k of the k-fold cross-validated training that feeds "
                             f"{', '.join(registry.needing('oos_probs'))}")
    for s in SCORERS.values():
        if s.skip is not None and s.skip.option:
            parser.add_argument(s.skip.option, action="store_true", help=s.skip.why)
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="csv",
                        help="also write detect/ranking.parquet (pyarrow); ranking.csv is always written")
    add_runtime_arguments(parser)
    add_data_root_argument(parser)
    parser.epilog = f"scorers (ranking.csv columns <scorer>_score and <scorer>_rank): {registry.scorer_help()}"


def _number(value: Any) -> str:
    """A fact of a flag summary as printed: floats to 3 decimals."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    rt = runtime_from_args(args)
    run_folder = RunFolder(args.run, data_root=args.data_root)
    scorers = [n for n, s in SCORERS.items()
               if not (s.skip and s.skip.dest and s.skip.leaves_out(getattr(args, s.skip.dest)))]
    det, metrics = run_detection(run_folder, args.groups, args.folds, device=rt.device, progress=rt.progress,
                                 fmt=args.fmt, scorers=scorers)
    if dist.rank() != 0:  # under torchrun rank 0 speaks for all
        return 0
    print(f"ranking of {len(det.predicted)} training examples: {run_folder.ranking_path} "
          f"(rows sorted by {primary_scorer(det)}_rank, most suspicious first: inspect_order)")
    print(f"suggested labels (suggested_label) from the {det.suggestion_source.replace('_', '-')} probabilities")
    if args.fmt == "parquet":
        print(f"the same table as Parquet: {run_folder.ranking_parquet_path}")
    if ground_truth(run_folder) == "unknown":
        print("no planted noise: true labels are unknown (ground_truth=unknown; noisy=0 means unverified)")
    for name in det.scores:
        print(f"  {name}: {SCORERS[name].description}")
    for name, facts in det.facts.items():
        print(SCORERS[name].flag.sentence(name, facts, _number))
    if "wrong_labels" in det.info:
        print(wrong_label_line(det.info["wrong_labels"]))
    for name, why in det.info["left_out"].items():
        print(f"  {name} left out: {why}")
    if metrics is None:
        print("no planted noise and no canaries in this run: no detection metrics (rankings only; "
              "`trakscope run --canaries 0.01` plants known errors to measure on)")
        return 0
    if metrics["scorers"]:
        print(f"\ndetection of {metrics['n_noisy']} planted wrong labels among {metrics['n_train']} "
              f"(D3M groups: {metrics['groups']}, {metrics['n_groups']} groups):")
        print(detection_table(metrics))
    if "canaries" in metrics:
        can = metrics["canaries"]
        print(f"\nestimated on canaries: {can['n']} labels trakscope flipped itself among {metrics['n_train']} "
              f"(recall = share of them in the top k% of the whole ranking):")
        print(detection_table({"scorers": can["scorers"], "chance": can["chance"]}))
        print(f"suspects and ranking.csv are ordered by {metrics['primary']}, the best ROC-AUC on the canaries")
        print("\nthese recalls are estimates: the canaries stand in for the data's own errors, which may be harder "
              f"or easier to find; 95% intervals from the {can['n']} canaries (Wilson)"
              + (": each canary weighted by the share of the data's estimated wrong labels (cleanlab's confident "
                 "joint) in its (class, wrong label) pair over the share of canaries planted there, "
                 f"{can['needed']['design']:.1f} canaries per effective one" if can.get("weighted") else "") + ":")
        print(canary_estimate_table(can))
        print("\n".join(canary_count_lines(can, metrics["n_train"])))
    if "suggestions" in metrics:
        sug = metrics["suggestions"]
        print(f"\nsuggested labels ({det.suggestion_source.replace('_', '-')} probabilities): how often the suggestion "
              f"is the true label among the top of {sug['scorer']}'s ranking:")
        print(suggestion_table(sug))
    return 0
