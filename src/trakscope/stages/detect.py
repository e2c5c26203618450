"""The ``detect`` stage: every scorer on a run folder -> ``detect/ranking.csv`` and ``detect/metrics.json``.

Inputs (train and val only, never test): ``scores/val.npy``, ``scores/self.npy``,
``models/probs_{train,val}.npy``, ``data/{train,val}.csv``; for cleanlab, k-fold cross-validated
retraining (:mod:`.crossval`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..io import read_csv, write_csv, write_json
from ..methods import scorers
from ..methods.metrics import detection_metrics, inspection_rank
from ..run_folder import RunFolder

SCORERS = ("self_influence", "val_same_label", "val_all", "d3m", "loss", "cleanlab")
# The order of ranking.csv and the report's suspects grid: TRAK's mislabel scorer (as in dattri and TracIn).
# D3M ranks *detrimental* examples (for removal), which need not be mislabeled ones.
PRIMARY = "self_influence"
RECALL_FRACTIONS = (0.05, 0.10, 0.20)
DESCRIPTIONS = {
    "self_influence": "TRAK self-influence scores[i, i] (high = suspicious)",
    "val_same_label": "summed TRAK influence on val examples of its own label (low = harmful)",
    "val_all": "summed TRAK influence on all val examples (low = harmful)",
    "d3m": "D3M group alignment A_i (low = detrimental)",
    "loss": "ensemble training loss -log p[y] (high = suspicious)",
    "cleanlab": "cleanlab label quality on k-fold out-of-sample probabilities (low = suspicious)",
}


@dataclass
class Detection:
    """Scores of every scorer (natural units, float64 ``[n_train]``) and what is known about them."""

    scores: dict[str, np.ndarray]
    predicted: np.ndarray  # int64 [n_train] argmax of the ensemble's train probabilities
    info: dict = field(default_factory=dict)


def compute_scores(run: RunFolder, groups: str = "classes", cleanlab_folds: int | None = 3,
                   device: str = "cpu", progress: bool = True) -> Detection:
    """Run every scorer on the run folder (cleanlab skipped when ``cleanlab_folds`` is None)."""
    train, val = run.table("train"), run.table("val")
    val_scores = run.scores("val")
    probs_train, probs_val = run.probs("train"), run.probs("val")
    a, group_ids = scorers.d3m_scores(val_scores, probs_val, val["label"], groups)
    scores = {
        "self_influence": scorers.self_influence(run.scores("self")),
        "val_same_label": scorers.val_influence(val_scores, train["label"], val["label"]),
        "val_all": scorers.val_influence(val_scores),
        "d3m": a,
        "loss": scorers.training_loss(probs_train, train["label"]),
    }
    info: dict = {"groups": groups, "n_groups": int(group_ids.max()) + 1, "cleanlab": None}
    if cleanlab_folds is not None:
        from .crossval import out_of_sample_probs

        t0 = time.perf_counter()
        oos = out_of_sample_probs(run, cleanlab_folds, device=device, progress=progress)
        run.record_timing("detect_crossval", time.perf_counter() - t0)
        quality, issues = scorers.cleanlab_quality(oos, train["label"])
        scores["cleanlab"] = quality
        info["cleanlab"] = {"folds": cleanlab_folds, "n_issues": int(issues.sum()), "issues": issues,
                            "oos_acc": float((oos.argmax(1) == train["label"]).mean())}
    return Detection(scores, probs_train.argmax(axis=1).astype(np.int64), info)


def ranking_rows(run: RunFolder, det: Detection) -> tuple[list[str], list[list]]:
    """Header and rows of ``detect/ranking.csv``, ordered by :data:`PRIMARY`'s rank (inspected first on top).

    ``<scorer>_score`` is the natural score, ``<scorer>_rank`` 1 = inspected first (most suspicious).
    """
    train = run.table("train")
    names = [n for n in SCORERS if n in det.scores]
    ranks = {n: inspection_rank(scorers.suspicion(n, det.scores[n])) for n in names}
    header = ["index", "source_id", "label", "predicted", "true_label", "noisy"]
    header += [f"{n}_{kind}" for n in names for kind in ("score", "rank")]
    issues = (det.info.get("cleanlab") or {}).get("issues")
    if issues is not None:
        header.append("cleanlab_issue")
    rows = []
    primary = PRIMARY if PRIMARY in ranks else names[0]
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
    per = {n: detection_metrics(scorers.suspicion(n, s), noisy, RECALL_FRACTIONS) for n, s in det.scores.items()}
    chance = {"roc_auc": 0.5, "average_precision": float(noisy.mean())}
    chance.update({f"recall@{f * 100:g}%": f for f in RECALL_FRACTIONS})
    cl = det.info.get("cleanlab")
    out = {"n_train": int(len(noisy)), "n_noisy": int(noisy.sum()), "noise_rate": float(noisy.mean()),
           "groups": det.info["groups"], "n_groups": det.info["n_groups"], "scorers": per, "chance": chance,
           "descriptions": {n: DESCRIPTIONS[n] for n in per}}
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
    header, rows = ranking_rows(run, det)
    write_csv(run.path / "detect" / "ranking.csv", header, rows)
    metrics = quality_metrics(run, det)
    if metrics is not None:
        write_json(run.path / "detect" / "metrics.json", metrics)
    run.record_timing("detect", time.perf_counter() - t0)
    return det, metrics


def load_ranking(run: RunFolder) -> dict[str, np.ndarray]:
    """``detect/ranking.csv`` back as columns in example-index order: ``<scorer>`` -> float64 ``[n_train]``.

    Also ``index``, ``noisy`` and, when present, ``cleanlab_issue``.
    """
    rows = read_csv(run.require("detect/ranking.csv", "trakscope detect --run"))
    index = np.array([int(r["index"]) for r in rows])
    order = np.argsort(index)
    out = {"index": index[order], "noisy": np.array([int(r["noisy"]) for r in rows])[order].astype(bool)}
    for n in SCORERS:
        if f"{n}_score" in rows[0]:
            out[n] = np.array([float(r[f"{n}_score"]) for r in rows])[order]
    if "cleanlab_issue" in rows[0]:
        out["cleanlab_issue"] = np.array([int(r["cleanlab_issue"]) for r in rows])[order].astype(bool)
    return out


