"""Canaries: label flips trakscope plants itself (``--canaries``) so that detection quality is known on any data.

They are recorded in ``data/canaries.csv`` (never in ``noisy``: they are not the data's own errors). ``detect``
measures every scorer on them, ``ranking.csv`` and ``inspect`` mark them, ``export`` restores their true labels and
``removal`` retrains on their true labels, never removing them.

What they measure is an **estimate** of the recall on the data's own errors: :func:`canary_estimates` gives each a
95% interval and the canary counts that narrower intervals need; :func:`wrong_label_estimate` says how many wrong
labels the data itself holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..data import CANARY_KINDS, CANARY_SEED_OFFSET, Dataset, ImageSplit, plant_dataset_canaries
from ..data.neighbours import error_pairs, planting_pairs
from ..io import read_csv, write_csv
from ..methods import registry
from ..methods.estimates import (
    WIDTHS,
    canaries_for_width,
    estimated_wrong_labels,
    pair_weights,
    recall_estimates,
    wilson_interval,
)
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


def with_true_canary_labels(dataset: Dataset) -> Dataset:
    """``dataset`` whose training canaries carry their true labels (what ``removal`` retrains on, as ``export``'s
    keep-list has them); ``dataset`` itself when it has none."""
    train = dataset.train
    if train.canary is None or not train.canary.any():
        return dataset
    labels = np.where(train.canary, train.true_labels, train.labels)
    restored = ImageSplit(train.images, labels, train.true_labels, train.source_ids, train.canary)
    return Dataset(dataset.name, dataset.classes, restored, dataset.val, dataset.test)
RECOMMENDED_WIDTH = 0.2  # the recommended count gives a 95% interval at most this wide (about +-0.10) at any recall
MAX_CANARY_SHARE = 0.05  # beyond this share of the training labels the canaries' own noise starts to cost accuracy
AT = "recall@10%"  # the recall the count table is computed at


def canary_estimates(scores: Mapping[str, np.ndarray], canary: np.ndarray, primary: str,
                     weights: np.ndarray | None = None, kinds: np.ndarray | None = None) -> dict:
    """metrics.json's canary estimates: every scorer's recall estimates with 95% intervals, and the counts needed.

    Args:
        scores: natural scores per scorer, float ``[n_train]``; canary: bool ``[n_train]``; primary: the scorer
            that orders the suspects (its recall@10% sets the count table's recall); weights: float ``[n_train]``,
            the canaries' importance weights (:func:`canary_weights`; None: every canary counts the same);
            kinds: int ``[n_train]``, each canary's kind where several were planted (:func:`canary_kinds`).

    Returns:
        ``estimates`` (``{scorer: {recall@10%: {estimate, low, high, n, n_effective}}}``, weighted where there are
        weights, see :func:`~trakscope.methods.estimates.recall_estimates`), ``weighted`` (bool), ``unweighted``
        (the same without weights, only where there are weights) and ``needed`` (:func:`canaries_needed`).
    """
    plain = {n: recall_estimates(registry.SCORERS[n].suspicion(s), canary, kinds=kinds) for n, s in scores.items()}
    est = plain if weights is None else {
        n: _covering(recall_estimates(registry.SCORERS[n].suspicion(s), canary, kinds=kinds, weights=weights),
                     plain[n]) for n, s in scores.items()}
    at = est[primary][AT]
    design = at["n"] / at["n_effective"] if at["n_effective"] > 0 else 1.0  # uneven weights: fewer canaries count
    out = {"estimates": est, "weighted": weights is not None, "kinds": _kind_counts(kinds, canary),
           "needed": canaries_needed(len(canary), int(canary.sum()), at["estimate"], design)}
    if weights is not None:
        out["unweighted"] = plain
    return out


def _covering(weighted: dict[str, dict], plain: dict[str, dict]) -> dict[str, dict]:
    """The weighted estimates, each interval widened to cover the unweighted estimate: on planted noise the weights
    helped where errors sat in few pairs and hurt on symmetric noise (BENCHMARKS.md), so how much the estimate
    depends on them is part of its uncertainty."""
    out = {}
    for key, w in weighted.items():
        p = plain[key]["estimate"]
        out[key] = {**w, "low": min(w["low"], p), "high": max(w["high"], p)} if np.isfinite(p) else w
    return out


def canaries_needed(n_train: int, n_canaries: int, recall: float, design: float = 1.0) -> dict:
    """How many canaries each 95% interval width needs (at ``recall`` and at the worst case 0.5), the width this
    run's ``n_canaries`` gives, and the recommended count: :data:`RECOMMENDED_WIDTH` at any recall, as a
    ``--canaries`` fraction of ``n_train``, capped at :data:`MAX_CANARY_SHARE`.

    ``design``: canaries per effective canary (``n / n_effective`` of weighted canaries, 1 unweighted): every
    count is multiplied by it, since uneven weights make each canary count for less.
    """
    recall = 0.5 if not np.isfinite(recall) else float(recall)
    low, high = wilson_interval(recall * n_canaries / design, n_canaries / design)

    def needed(width: float, at: float = 0.5) -> int:
        return math.ceil(canaries_for_width(width, at) * design)

    count = needed(RECOMMENDED_WIDTH)
    share = min(MAX_CANARY_SHARE, count / max(n_train, 1))
    effective = max(1.0, share * n_train / design)
    cap_low, cap_high = wilson_interval(0.5 * effective, effective)
    return {"at_recall": recall, "width_now": high - low, "design": design,
            "widths": {f"{w:g}": {"at_recall": needed(w, recall), "worst_case": needed(w)} for w in WIDTHS},
            "recommended": count, "recommended_fraction": float(f"{share:.3g}"),
            "recommended_width": cap_high - cap_low}


def wrong_label_estimate(labels: np.ndarray, probs: np.ndarray, canary: np.ndarray, out_of_sample: bool,
                         flags: Mapping[str, np.ndarray] | None = None) -> dict:
    """How many of the data's own labels are wrong (the canaries left out), by cleanlab's confident joint,
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


def canary_weights(run: RunFolder, labels: np.ndarray, probs: np.ndarray, canary: np.ndarray) -> np.ndarray | None:
    """float64 ``[n_train]`` importance weights of the canaries (0 elsewhere), or None when there is nothing to weigh
    by: for each canary, the share of the data's own wrong labels estimated in its (true class, given label) pair
    (cleanlab's confident joint of the out-of-sample ``probs`` ``[n_train, C]``, canaries left out) over the share
    of canaries planted in that pair (:func:`~trakscope.data.neighbours.planting_pairs`). Weighted, the canaries
    stand for the errors the data holds: a canary in a pair the data's errors avoid counts little.
    """
    table, canary = canary_table(run), np.asarray(canary, dtype=bool)
    if not len(table["index"]):
        return None
    n_classes, cfg = probs.shape[1], run.config.data
    before = _labels_before(run, labels)
    images = None if cfg.canary_kind == "random" else run.data.dataset().train.images
    planted = planting_pairs(cfg.canary_kind, images, before, n_classes, cfg.seed + CANARY_SEED_OFFSET)
    data = error_pairs(probs[~canary], before[~canary], n_classes)
    w = pair_weights(table["true_label"], table["label"], planted, data)
    if w is None:
        return None
    out = np.zeros(len(canary))
    out[table["index"]] = w
    return out


def _kind_counts(kinds: np.ndarray | None, canary: np.ndarray) -> dict[str, int]:
    """``{kind: canaries}`` where several kinds were planted, else empty."""
    if kinds is None:
        return {}
    values, counts = np.unique(np.asarray(kinds)[canary], return_counts=True)
    return {CANARY_KINDS[int(v)]: int(c) for v, c in zip(values, counts)}


def _labels_before(run: RunFolder, labels: np.ndarray) -> np.ndarray:
    """int64 ``[n_train]``: the training labels before the canaries were flipped (their true labels put back)."""
    table = canary_table(run)
    before = np.asarray(labels, dtype=np.int64).copy()
    before[table["index"]] = table["true_label"]
    return before


def canary_kinds(run: RunFolder, labels: np.ndarray) -> np.ndarray | None:
    """int8 ``[n_train]``: each canary's kind (an index in ``CANARY_KINDS``, -1 elsewhere) where ``--canary-kind
    mixed`` planted several, replayed from the run's data and configuration; None for a single kind."""
    cfg = run.config.data
    if cfg.canary_kind != "mixed" or not len(canary_table(run)["index"]):
        return None
    flipped = run.data.table("train")["noisy"].astype(bool)
    _, _, kind = plant_dataset_canaries(cfg, run.data.dataset().train.images, _labels_before(run, labels), flipped,
                                        len(run.classes))
    return kind
