"""The ``export`` stage: keep-list and removed list (with reasons) of one removal strategy, as CSV or Parquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..methods import registry
from ..methods.removal import relabeled_labels, removal_reason, select_removed, spare_canaries
from ..run_folder import RunFolder
from ..table_files import FORMATS, write_rows
from .canaries import canary_mask
from .detect import SUGGESTION_COLUMNS, ground_truth, load_ranking, truth_columns

KEEP_COLUMNS = ["index", "split", "source_id", "label", "label_name"]
REMOVED_COLUMNS = [*KEEP_COLUMNS, "ground_truth", "true_label", "true_label_name", "noisy", "reason"]
REMOVED_COLUMNS += SUGGESTION_COLUMNS


@dataclass(frozen=True)
class Exported:
    """What :func:`export_lists` wrote: the two files, their row counts, and the canaries restored."""

    keep_path: Path
    removed_path: Path
    n_keep: int  # training examples kept
    n_removed: int
    n_val: int  # validation examples carved from the same pool, in the keep-list too (0 for the data's own split)
    n_canaries: int  # canaries in the keep-list with their true label (those the strategy selected included)
    n_canaries_selected: int  # of them, how many the strategy would have removed


def _suggestion(ranking: dict[str, np.ndarray], i: int, classes: list[str]) -> list:
    """The suggestion columns of training example ``i`` from ``detect/ranking.csv`` (empty where it has none)."""
    if "suggested_label" not in ranking:
        return [None] * len(SUGGESTION_COLUMNS)
    suggested = int(ranking["suggested_label"][i])
    return [suggested, classes[suggested], float(ranking["suggested_prob"][i]), str(ranking["suggestion_source"][i])]


def export_lists(run: RunFolder, strategy: str, fraction: float, seed: int,
                 out_dir: Path | None = None, fmt: str = "csv") -> Exported:
    """Write ``keep_<name>.<fmt>`` and ``removed_<name>.<fmt>``: together, every example of the training pool.

    Both list ``index`` (row of ``data/<split>.csv``), ``split``, ``source_id`` (stable id in the source dataset),
    ``label`` and ``label_name``; the removed list adds ``ground_truth`` (``planted`` or ``unknown``), ``true_label``
    and ``true_label_name`` (empty when unknown), ``noisy`` (planted flip; 0 when unknown), ``reason`` and the
    suggested label (``suggested_label``, its name, ``suggested_prob`` and ``suggestion_source``; empty where
    ``detect/ranking.csv`` predates suggestions). A relabel strategy (``relabel-...``) removes nothing: its
    keep-list holds every example, those it selected with their suggested label, and its ``removed_`` list the
    examples whose label it changes (``label`` the given one, ``suggested_label`` the new one).

    The strategies select training examples only. The validation split carved from the same pool
    (``--val-fraction`` > 0) is in the keep-list with ``split=val``, so that retraining on the keep-list loses only
    what was removed; a validation split of the data's own (``--val-fraction 0``) is not part of the pool.

    Canaries (``--canaries``) were flipped by trakscope, not by the data: every canary is in the keep-list with
    its true label restored, even one the strategy selected (it is not the data's error).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ranking = load_ranking(run)
    train, classes = run.data.table("train"), run.classes
    known = ground_truth(run) == "planted"
    canary = canary_mask(run, len(train["index"]))
    removed, n_spared = spare_canaries(select_removed(strategy, fraction, ranking, seed), canary)
    keep = np.setdiff1d(np.arange(len(train["index"])), removed)
    s = registry.strategy(strategy)
    relabeled = relabeled_labels(s.name, removed, ranking)
    if relabeled is not None:  # relabel: every example is kept, the changed ones are listed
        keep, removed = np.arange(len(train["index"])), removed[relabeled[removed] != train["label"][removed]]
    name = s.name if s.threshold else f"{s.name}_{fraction:g}"
    keep_path, removed_path = run.export_paths(name, out_dir, fmt)

    def base(i: int, trained: np.ndarray | None = None) -> list:
        label = int(train["true_label"][i] if canary[i] else (train["label"] if trained is None else trained)[i])
        return [int(train["index"][i]), "train", str(train["source_id"][i]), label, classes[label]]

    val = carved_validation(run)
    write_rows(keep_path, KEEP_COLUMNS, [base(i, relabeled) for i in keep] + val, fmt)
    write_rows(removed_path, REMOVED_COLUMNS,
               [[*base(i), *truth_columns(run, i, train, known), removal_reason(s.name, ranking, int(i)),
                 *_suggestion(ranking, int(i), classes)] for i in removed], fmt)
    run.integrity.seal(keep_path, removed_path)  # trakscope's (those inside the run folder): --overwrite removes them
    return Exported(keep_path, removed_path, len(keep), len(removed), len(val), int(canary.sum()), n_spared)


def carved_validation(run: RunFolder) -> list[list]:
    """Keep-list rows (:data:`KEEP_COLUMNS`) of the validation split when it was carved from the training pool
    (``--val-fraction`` > 0); none for a validation split of the data's own."""
    if run.config.data.val_fraction == 0:
        return []
    val, classes = run.data.table("val"), run.classes
    return [[int(i), "val", str(sid), int(y), classes[int(y)]]
            for i, sid, y in zip(val["index"], val["source_id"], val["label"])]
