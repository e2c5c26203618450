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

from ..methods import registry
from ..methods.metrics import detection_metrics, inspection_rank
from ..methods.scorers import cleanlab_quality, resolve_groups
from ..run_folder import RunFolder

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
    group_ids = resolve_groups(groups, val_scores, val["label"])
    info: dict = {"groups": groups, "n_groups": int(group_ids.max()) + 1, "cleanlab": None}
    oos = None
    if cleanlab_folds is not None:
        from .crossval import out_of_sample_probs

        t0 = time.perf_counter()
        oos = out_of_sample_probs(run, cleanlab_folds, device=device, progress=progress)
        run.record_timing("detect_crossval", time.perf_counter() - t0)
        issues = cleanlab_quality(oos, train["label"])[1]
        info["cleanlab"] = {"folds": cleanlab_folds, "n_issues": int(issues.sum()), "issues": issues,
                            "oos_acc": float((oos.argmax(1) == train["label"]).mean())}
    inputs = registry.ScorerInputs(run.scores("self"), val_scores, train["label"], val["label"], run.probs("train"),
                                   run.probs("val"), group_ids, oos)
    usable = [s for s in registry.SCORERS.values() if oos is not None or not s.needs_crossval]
    scores = {s.name: s.compute(inputs) for s in usable}
    return Detection(scores, inputs.train_probs.argmax(axis=1).astype(np.int64), info)


def ranking_rows(run: RunFolder, det: Detection) -> tuple[list[str], list[list]]:
    """Header and rows of ``detect/ranking.csv``, ordered by :data:`~.registry.PRIMARY`'s rank (inspected first on top).

    ``<scorer>_score`` is the natural score, ``<scorer>_rank`` 1 = inspected first (most suspicious).
    """
    train = run.table("train")
    names = list(det.scores)
    ranks = {n: inspection_rank(registry.SCORERS[n].suspicion(det.scores[n])) for n in names}
    header = ["index", "source_id", "label", "predicted", "true_label", "noisy"]
    header += [f"{n}_{kind}" for n in names for kind in ("score", "rank")]
    issues = (det.info.get("cleanlab") or {}).get("issues")
    if issues is not None:
        header.append("cleanlab_issue")
    rows = []
    primary = registry.PRIMARY if registry.PRIMARY in ranks else names[0]
    for i in np.argsort(ranks[primary], kind="stable"):
        row = [int(train["index"][i]), train["source_id"][i], int(train["label"][i]), int(det.predicted[i]),
               int(train["true_label"][i]), int(train["noisy"][i])]
        for n in names:
            row += [f"{det.scores[n][i]:.9g}", int(ranks[n][i])]
        if issues is not None:
            row.append(int(issues[i]))
        rows.append(row)
    return header, rows


def quality_metrics(run: RunFolder, det: Detection) -> dict | None:
    """Per-scorer ROC-AUC, AP and recall@5/10/20% against the planted noise; None if nothing was planted."""
    noisy = run.table("train")["noisy"].astype(bool)
    if not noisy.any():
        return None
    per = {n: detection_metrics(registry.SCORERS[n].suspicion(s), noisy, RECALL_FRACTIONS)
           for n, s in det.scores.items()}
    chance = {"roc_auc": 0.5, "average_precision": float(noisy.mean())}
    chance.update({f"recall@{f * 100:g}%": f for f in RECALL_FRACTIONS})
    cl = det.info.get("cleanlab")
    out = {"n_train": int(len(noisy)), "n_noisy": int(noisy.sum()), "noise_rate": float(noisy.mean()),
           "groups": det.info["groups"], "n_groups": det.info["n_groups"], "scorers": per, "chance": chance,
           "descriptions": {n: registry.SCORERS[n].description for n in per}}
    if cl is None:
        out["cleanlab"] = "skipped (--no-cleanlab)"
    else:
        issues = cl["issues"]
        out["cleanlab"] = {"folds": cl["folds"], "n_issues": cl["n_issues"], "oos_acc": cl["oos_acc"],
                           "issues_precision": float(noisy[issues].mean()) if issues.any() else math.nan,
                           "issues_recall": float(issues[noisy].mean())}
    return out


def run_detection(run: RunFolder, groups: str = "classes", cleanlab_folds: int | None = 3,
                  device: str = "cpu", progress: bool = True) -> tuple[Detection, dict | None]:
    """Compute, write ``detect/ranking.csv`` (and ``detect/metrics.json`` under planted noise), time it."""
    t0 = time.perf_counter()
    det = compute_scores(run, groups, cleanlab_folds, device, progress)
    run.write_ranking(*ranking_rows(run, det))
    metrics = quality_metrics(run, det)
    if metrics is not None:
        run.write_result(run.detect_metrics_path, "detect_metrics", metrics)
    run.record_timing("detect", time.perf_counter() - t0)
    return det, metrics


def load_ranking(run: RunFolder) -> dict[str, np.ndarray]:
    """``detect/ranking.csv`` as columns in example-index order (:meth:`RunFolder.ranking` over every scorer)."""
    return run.ranking(tuple(registry.SCORERS))
