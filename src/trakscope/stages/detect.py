"""The ``detect`` stage: every registered scorer on a run folder -> ``detect/ranking.csv`` and ``detect/metrics.json``.

Inputs (train and val only, never test): the val and self scores, the ensemble's train and val
probabilities and the split tables; for scorers that need it, k-fold cross-validated retraining
(:mod:`.crossval`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import dist
from ..methods import registry
from ..methods.metrics import detection_metrics, inspection_rank, roc_auc
from ..methods.scorers import cleanlab_quality, resolve_groups
from ..run_folder import RunFolder
from .canaries import canary_mask
from .groups import read_groups
from .table_files import FORMATS, write_parquet

RECALL_FRACTIONS = (0.05, 0.10, 0.20)


@dataclass
class Detection:
    """Scores of every scorer (natural units, float64 ``[n_train]``) and what is known about them."""

    scores: dict[str, np.ndarray]
    predicted: np.ndarray  # int64 [n_train] argmax of the ensemble's train probabilities
    info: dict = field(default_factory=dict)


def compute_scores(run: RunFolder, groups: str = "classes", cleanlab_folds: int | None = 3,
                   device: str = "cpu", progress: bool = True) -> Detection:
    """Run every registered scorer on the run folder (those needing cross-validation only with ``cleanlab_folds``)."""
    train, val = run.table("train"), run.table("val")
    val_scores = run.scores("val")
    given = groups if groups in ("classes", "auto") else read_groups(run, groups)[0]
    group_ids = resolve_groups(given, val_scores, val["label"])
    info: dict = {"groups": str(groups), "n_groups": int(group_ids.max()) + 1, "cleanlab": None,
                  "canary": canary_mask(run, len(train["index"]))}
    oos = None
    if cleanlab_folds is not None:
        from .crossval import out_of_sample_probs

        t0 = time.perf_counter()
        oos = out_of_sample_probs(run, cleanlab_folds, device=device, progress=progress)
        if dist.rank() == 0:
            run.record_timing("detect_crossval", time.perf_counter() - t0)
        issues = cleanlab_quality(oos, train["label"])[1]
        info["cleanlab"] = {"folds": cleanlab_folds, "n_issues": int(issues.sum()), "issues": issues,
                            "oos_acc": float((oos.argmax(1) == train["label"]).mean())}
    aum = run.aum()  # verified; a trained run without it is refused (`run` rebuilds it)
    inputs = registry.ScorerInputs(run.scores("self"), val_scores, train["label"], val["label"], run.probs("train"),
                                   run.probs("val"), group_ids, oos, aum)
    scores = {s.name: s.compute(inputs) for s in registry.SCORERS.values() if s.available(inputs)}
    return Detection(scores, inputs.train_probs.argmax(axis=1).astype(np.int64), info)


def ground_truth(run: RunFolder) -> str:
    """``planted`` when the run planted label noise (so ``true_label`` and ``noisy`` are known), else ``unknown``.

    Without planted noise ``true_label`` is only a copy of the label: nothing says the label is right.
    """
    planted = run.config.data.noise > 0 or bool(run.table("train")["noisy"].any())
    return "planted" if planted else "unknown"


def truth_columns(run: RunFolder, i: int, train: dict[str, np.ndarray], known: bool,
                  canary: np.ndarray | None = None) -> list:
    """``ground_truth, true_label, true_label_name, noisy`` of training example ``i`` (empty where unknown).

    ``noisy`` stays 0 when unknown (readers parse it as an int); ``ground_truth`` says it was not verified. A
    canary (bool ``canary[i]``) is ``ground_truth=canary`` with its true label and ``noisy`` 0: it is not the
    data's own error.
    """
    if canary is not None and canary[i]:
        true = int(train["true_label"][i])
        return ["canary", true, run.classes[true], 0]
    if not known:
        return ["unknown", None, None, 0]
    true = int(train["true_label"][i])
    return ["planted", true, run.classes[true], int(train["noisy"][i])]


def primary_scorer(det: Detection) -> str:
    """The scorer whose rank orders ``ranking.csv`` and the report's suspects.

    With canaries, the scorer of highest ROC-AUC on them (first registered on a tie); otherwise the first of
    :data:`~.registry.PRIMARY` that ran (AUM, else TRAK self-influence).
    """
    canary = det.info.get("canary")
    if canary is not None and canary.any() and not canary.all():
        auc = {n: roc_auc(registry.SCORERS[n].suspicion(s), canary) for n, s in det.scores.items()}
        return max(auc, key=lambda n: (auc[n], -list(auc).index(n)))
    return registry.default_primary(det.scores)


def ranking_rows(run: RunFolder, det: Detection) -> tuple[list[str], list[list]]:
    """Header and rows of ``detect/ranking.csv``, ordered by :func:`primary_scorer`'s rank (inspected first on top).

    ``inspect_order`` is 1..n in that order; ``<scorer>_score`` is the natural score (float, 9 significant
    digits), ``<scorer>_rank`` 1 = inspected first (most suspicious). Class names stand beside every label;
    ``true_label`` and ``true_label_name`` are None (empty) unless noise was planted (:func:`ground_truth`) or
    the example is a canary (``canary`` 1, ``ground_truth=canary``).
    """
    train, classes = run.table("train"), run.classes
    known = ground_truth(run) == "planted"
    names = list(det.scores)
    ranks = {n: inspection_rank(registry.SCORERS[n].suspicion(det.scores[n])) for n in names}
    canary = det.info.get("canary")
    header = ["inspect_order", "index", "source_id", "label", "label_name", "predicted", "predicted_name",
              "ground_truth", "true_label", "true_label_name", "noisy", "canary"]
    header += [f"{n}_{kind}" for n in names for kind in ("score", "rank")]
    issues = (det.info.get("cleanlab") or {}).get("issues")
    if issues is not None:
        header.append("cleanlab_issue")
    rows = []
    for order, i in enumerate(np.argsort(ranks[primary_scorer(det)], kind="stable"), start=1):
        label, pred = int(train["label"][i]), int(det.predicted[i])
        row = [order, int(train["index"][i]), str(train["source_id"][i]), label, classes[label], pred, classes[pred],
               *truth_columns(run, i, train, known, canary), int(canary is not None and canary[i])]
        for n in names:
            row += [float(f"{det.scores[n][i]:.9g}"), int(ranks[n][i])]
        if issues is not None:
            row.append(int(issues[i]))
        rows.append(row)
    return header, rows


def quality_metrics(run: RunFolder, det: Detection) -> dict | None:
    """Per-scorer ROC-AUC, AP and recall@5/10/20% against the planted noise and on the canaries.

    ``scorers`` holds the planted-noise metrics (empty without planted noise), ``canaries`` the same metrics
    with the canaries as the errors to find (absent without canaries), ``primary`` the scorer that orders
    ``ranking.csv``. Both rankings are the full training split's: canaries compete with the data's own errors
    for the top places, as they would on real data. None when there is neither planted noise nor canaries.
    """
    noisy = run.table("train")["noisy"].astype(bool)
    canary = det.info.get("canary")
    has_canaries = canary is not None and canary.any()
    if not noisy.any() and not has_canaries:
        return None
    per = {n: detection_metrics(registry.SCORERS[n].suspicion(s), noisy, RECALL_FRACTIONS)
           for n, s in det.scores.items()} if noisy.any() else {}
    out = {"n_train": int(len(noisy)), "n_noisy": int(noisy.sum()), "noise_rate": float(noisy.mean()),
           "groups": det.info["groups"], "n_groups": det.info["n_groups"], "scorers": per,
           "chance": _chance(noisy), "descriptions": {n: registry.SCORERS[n].description for n in det.scores},
           "primary": primary_scorer(det)}
    if has_canaries:
        out["canaries"] = {"n": int(canary.sum()), "chance": _chance(canary),
                           "scorers": {n: detection_metrics(registry.SCORERS[n].suspicion(s), canary, RECALL_FRACTIONS)
                                       for n, s in det.scores.items()}}
    cl = det.info.get("cleanlab")
    if cl is None:
        out["cleanlab"] = "skipped (--no-cleanlab)"
    else:
        issues = cl["issues"]
        out["cleanlab"] = {"folds": cl["folds"], "n_issues": cl["n_issues"], "oos_acc": cl["oos_acc"],
                           "issues_precision": float(noisy[issues].mean()) if issues.any() else math.nan,
                           "issues_recall": float(issues[noisy].mean()) if noisy.any() else math.nan}
    return out


def _chance(truth: np.ndarray) -> dict:
    chance = {"roc_auc": 0.5, "average_precision": float(truth.mean())}
    chance.update({f"recall@{f * 100:g}%": f for f in RECALL_FRACTIONS})
    return chance


def run_detection(run: RunFolder, groups: str = "classes", cleanlab_folds: int | None = 3,
                  device: str = "cpu", progress: bool = True, fmt: str = "csv") -> tuple[Detection, dict | None]:
    """Compute, write ``detect/ranking.csv`` (and ``detect/metrics.json`` under planted noise or canaries), time it.

    With ``fmt="parquet"`` the same table is also written as ``detect/ranking.parquet`` (the CSV is what the
    other stages read, so it is always written). Under torchrun the folds are shared out (:mod:`.crossval`) and
    rank 0 writes.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    det = compute_scores(run, groups, cleanlab_folds, device, progress)
    metrics = quality_metrics(run, det)
    if dist.rank() == 0:  # under torchrun every rank has the same scores; one writes them
        header, rows = ranking_rows(run, det)
        run.write_ranking(header, rows)
        if fmt == "parquet":
            write_parquet(run.ranking_parquet_path, header, rows)
        if metrics is not None:
            run.write_result(run.detect_metrics_path, "detect_metrics", metrics)
        run.record_timing("detect", time.perf_counter() - t0)
    dist.barrier()
    return det, metrics


def load_ranking(run: RunFolder) -> dict[str, np.ndarray]:
    """``detect/ranking.csv`` as columns in example-index order (:meth:`RunFolder.ranking` over every scorer)."""
    return run.ranking(tuple(registry.SCORERS))
