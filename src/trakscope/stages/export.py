"""The ``export`` stage: the keep-list and the removed list (with reasons) of one removal strategy, as CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import write_csv
from ..methods import registry
from ..methods.removal import removal_reason, select_removed
from ..run_folder import RunFolder
from .detect import load_ranking


def export_lists(run: RunFolder, strategy: str, fraction: float, seed: int,
                 out_dir: Path | None = None) -> tuple[Path, Path, int, int]:
    """Write ``keep_<name>.csv`` and ``removed_<name>.csv``; return their paths and row counts.

    Both list ``index`` (row of ``data/train.csv``), ``source_id`` (stable id in the source dataset) and
    ``label``; the removed list adds ``true_label``, ``noisy`` (planted truth, where known) and ``reason``.
    """
    ranking = load_ranking(run)
    train = run.table("train")
    removed = select_removed(strategy, fraction, ranking, seed)
    keep = np.setdiff1d(np.arange(len(train["index"])), removed)
    s = registry.strategy(strategy)
    name = s.name if s.threshold else f"{s.name}_{fraction:g}"
    keep_path, removed_path = run.export_paths(name, out_dir)
    write_csv(keep_path, ["index", "source_id", "label"],
              [[int(train["index"][i]), train["source_id"][i], int(train["label"][i])] for i in keep])
    write_csv(removed_path, ["index", "source_id", "label", "true_label", "noisy", "reason"],
              [[int(train["index"][i]), train["source_id"][i], int(train["label"][i]), int(train["true_label"][i]),
                int(train["noisy"][i]), removal_reason(s.name, ranking, int(i))] for i in removed])
    return keep_path, removed_path, len(keep), len(removed)
