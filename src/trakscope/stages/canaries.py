"""Canaries: label flips trakscope plants itself (``--canaries``) so that detection quality is known on any data.

They are recorded in ``data/canaries.csv`` (never in ``noisy``: they are not the data's own errors). ``detect``
measures every scorer on them, ``ranking.csv`` marks them and ``export`` restores their true labels.

What they measure is an **estimate** of the recall on the data's own errors: :func:`canary_estimates` gives each a
95% interval and the canary counts that narrower intervals need; :func:`wrong_label_estimate` says how many wrong
labels the data itself holds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..data import ImageSplit
from ..io import read_csv, write_csv
from ..methods import registry
from ..methods.estimates import WIDTHS, canaries_for_width, estimated_wrong_labels, recall_estimates, wilson_interval
from ..run_folder import RunFolder

COLUMNS = ("index", "source_id", "label", "true_label")


def write_canaries(run: RunFolder, train: ImageSplit) -> None:
    """``data/canaries.csv`` of the training split (written only when canaries were planted)."""
    if train.canary is None or not train.canary.any():
        return
    rows = [(int(i), train.source_ids[i], int(train.labels[i]), int(train.true_labels[i]))
            for i in np.flatnonzero(train.canary)]
    write_csv(run.canaries_path, COLUMNS, rows)


def canary_table(run: RunFolder) -> dict[str, np.ndarray]:
    """``index`` (sorted), ``label`` (flipped, as trained) and ``true_label``, int64 ``[n_canaries]`` (empty: none)."""
    rows = read_csv(run.canaries_path) if run.canaries_path.exists() else []
    rows.sort(key=lambda r: int(r["index"]))
    return {k: np.array([int(r[k]) for r in rows], dtype=np.int64) for k in ("index", "label", "true_label")}


def canary_mask(run: RunFolder, n_train: int) -> np.ndarray:
    """bool ``[n_train]``: True for the canaries."""
    mask = np.zeros(n_train, dtype=bool)
    mask[canary_table(run)["index"]] = True
    return mask


RECOMMENDED_WIDTH = 0.2  # the recommended count gives a 95% interval at most this wide (about +-0.10) at any recall
MAX_CANARY_SHARE = 0.05  # beyond this share of the training labels the canaries' own noise starts to cost accuracy
AT = "recall@10%"  # the recall the count table is computed at


def canary_estimates(scores: Mapping[str, np.ndarray], canary: np.ndarray, primary: str) -> dict:
    """metrics.json's canary estimates: every scorer's recall estimates with 95% intervals, and the counts needed.

    Args:
        scores: natural scores per scorer, float ``[n_train]``; canary: bool ``[n_train]``; primary: the scorer
            that orders the suspects (its recall@10% sets the count table's recall).

    Returns:
        ``estimates`` (``{scorer: {recall@10%: {estimate, low, high, n}}}``, see
        :func:`~trakscope.methods.estimates.recall_estimates`) and ``needed`` (:func:`canaries_needed`).
    """
    est = {n: recall_estimates(registry.SCORERS[n].suspicion(s), canary) for n, s in scores.items()}
    return {"estimates": est, "needed": canaries_needed(len(canary), int(canary.sum()), est[primary][AT]["estimate"])}


def canaries_needed(n_train: int, n_canaries: int, recall: float) -> dict:
    """How many canaries each 95% interval width needs (at ``recall`` and at the worst case 0.5), the width this
    run's ``n_canaries`` gives, and the recommended count: :data:`RECOMMENDED_WIDTH` at any recall, as a
    ``--canaries`` fraction of ``n_train``, capped at :data:`MAX_CANARY_SHARE`."""
    recall = 0.5 if not np.isfinite(recall) else float(recall)
    low, high = wilson_interval(recall * n_canaries, n_canaries)
    count = canaries_for_width(RECOMMENDED_WIDTH)
    share = min(MAX_CANARY_SHARE, count / max(n_train, 1))
    capped = max(1, round(share * n_train))
    cap_low, cap_high = wilson_interval(0.5 * capped, capped)
    return {"at_recall": recall, "width_now": high - low,
            "widths": {f"{w:g}": {"at_recall": canaries_for_width(w, recall), "worst_case": canaries_for_width(w)}
                       for w in WIDTHS},
            "recommended": count, "recommended_fraction": float(f"{share:.3g}"),
            "recommended_width": cap_high - cap_low}


def wrong_label_estimate(labels: np.ndarray, probs: np.ndarray, canary: np.ndarray, out_of_sample: bool,
                         flags: Mapping[str, np.ndarray] | None = None) -> dict:
    """How many of the data's own labels are wrong (the canaries left out), by cleanlab's calibrated confident joint,
    next to how many each flagging scorer flags among them.

    Args:
        labels: int ``[n_train]`` as trained; probs: float ``[n_train, C]``; canary: bool ``[n_train]``;
        out_of_sample: whether ``probs`` are k-fold out-of-sample (else the ensemble's own, which count too few);
        flags: bool ``[n_train]`` per flagging scorer.
    """
    keep = ~np.asarray(canary, dtype=bool)
    return {"estimated": estimated_wrong_labels(probs[keep], labels[keep]), "among": int(keep.sum()),
            "probabilities": "out-of-sample (k-fold)" if out_of_sample else "in-sample (the ensemble's: too few)",
            "flagged": {n: int(f[keep].sum()) for n, f in (flags or {}).items()}}
