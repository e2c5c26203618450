"""The ``removal`` stage: remove-and-retrain with trakscope's own trainer, every retrain cached in the run folder.

The loop and the summary are :func:`~trakscope.methods.removal.remove_and_retrain`; this stage gives it an
``evaluate`` that trains the run's architecture with the run's recipe (or the user's ``train_fn``, :mod:`.recipe`),
caches each result as ``removal/retrains/<job>.json`` (with a hash of the removed indices, so a changed selection is
retrained, and the name of a ``train_fn``), and takes the full-data reference of a seed from the ensemble member
trained with that same seed and recipe. On imported checkpoints the full-data retrains' accuracy is set beside
the checkpoints' own (:func:`imported_reference`). Canaries (``--canaries``) are never removed and every retrain,
the full-data reference included (the members trained on their flipped labels), trains on their true labels.

The retrains are run ahead of the summary (:func:`share_retrains`): under torchrun each rank trains its share
of those not yet cached, then every rank summarises from the cache and rank 0 writes the results.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping

import numpy as np

from .. import dist
from ..io import read_json, write_json
from ..methods.registry import DEFAULT_STRATEGIES
from ..methods.removal import (
    DEFAULT_FRACTIONS,
    Job,
    indices_hash,
    planned_evaluations,
    relabeled_labels,
    remove_and_retrain,
)
from ..progress import progress_bar
from ..run_folder import RunFolder
from ..train import predict_logits, train_final_model
from .canaries import canary_mask, canary_table, with_true_canary_labels
from .detect import load_ranking
from .ensemble import member_logits
from .estimate import announce_trainings
from .groups import read_groups
from .recipe import TrainFn, recipe_tag, say_recipe, user_network

REFERENCE_GAP = 0.05  # full-data retrains this far (or further) from the imported checkpoints' accuracy are warned of


def correct_on_test(run: RunFolder, keep: np.ndarray | None, seed: int, device: str = "cpu",
                    progress: bool = True, labels: np.ndarray | None = None,
                    train_fn: TrainFn | None = None) -> np.ndarray:
    """Train the run's architecture (or ``train_fn``) on ``keep`` with ``seed`` (and the training labels ``labels``,
    int64 ``[n_train]``, where given: a relabel strategy's; canaries on their true labels either way); bool
    ``[n_test]``: is each test example right."""
    cfg, dataset = run.config, run.data.dataset()
    if labels is not None:
        dataset = dataclasses.replace(dataset, train=dataclasses.replace(dataset.train, labels=labels))
    dataset = with_true_canary_labels(dataset)
    model = train_final_model(cfg.model, cfg.train, dataset, seed=seed, keep=keep, device=device, progress=progress) \
        if train_fn is None else user_network(train_fn, dataset, keep, seed, device)
    logits = predict_logits(model, dataset.test.images, device=device, num_workers=cfg.train.num_workers)
    return _correct(run, logits)


def accuracy_on_test(run: RunFolder, keep: np.ndarray | None, seed: int, device: str = "cpu",
                     progress: bool = True) -> float:
    """Train the run's architecture on ``keep`` with ``seed`` and return its accuracy on the test split."""
    return float(correct_on_test(run, keep, seed, device, progress).mean())


def _correct(run: RunFolder, logits: np.ndarray) -> np.ndarray:
    """bool ``[n_test]``: is the argmax of float ``[n_test, C]`` test logits each example's label."""
    return logits.argmax(axis=1) == run.data.dataset().test.labels


def ensemble_member(run: RunFolder, seed: int, train_fn: TrainFn | None = None) -> int | None:
    """The ensemble member trained with ``seed`` (same data and recipe as a full-data retrain), if any.

    None when no member has that seed, when the members were not trained by trakscope from this config, when
    the retrains use another recipe (``train_fn``), or when the members trained on canaries' flipped labels (a
    retrain trains on their true labels).
    """
    if run.config.model.checkpoints or train_fn is not None or _has_canaries(run):
        return None
    metrics = run.results.optional(run.metrics_path, "model_metrics")
    for m in (metrics or {}).get("models", []):
        if m.get("seed") == seed and m.get("test_acc") is not None:
            return int(m["model"])
    return None


def ensemble_member_accuracy(run: RunFolder, seed: int, device: str = "cpu") -> dict | None:
    """Test accuracy and per-example correctness of :func:`ensemble_member` ``seed`` (its final checkpoint is
    evaluated, nothing is trained); None where there is no such member.
    """
    member = ensemble_member(run, seed)
    if member is None:
        return None
    [(_, logits)] = member_logits(run, {"test": run.data.dataset().test.images}, device, members=[member])
    correct = _correct(run, logits["test"])
    return {"test_acc": float(correct.mean()), "correct": correct, "source": f"ensemble member {member}"}


def _has_canaries(run: RunFolder) -> bool:
    return len(canary_table(run)["index"]) > 0


CANARY_LABELS = {"canaries": "true labels"}  # in a retrain's cache with canaries: trained on their true labels


def _retrain_path(run: RunFolder, job: Job):
    return run.retrain_path(job.key if job.strategy != "full" else f"full_s{job.offset}")


def cached_retrain(run: RunFolder, job: Job, seed: int, removed: np.ndarray,
                   labels: np.ndarray | None = None, recipe: str | None = None) -> dict | None:
    """The cached result of a retrain without ``removed`` (sorted int64) with ``seed`` (or, for a relabel strategy,
    with every row and the training labels ``labels``) by ``recipe`` (:func:`~.recipe.recipe_tag`, None: the run's
    own); None if not cached."""
    path = _retrain_path(run, job)
    if not path.exists() or run.integrity.damaged(path):  # an unverified cache is retrained over
        return None
    cached = read_json(path)
    if cached.get("removed_sha256") != indices_hash(removed) or cached.get("seed") != seed or \
            "test_correct" not in cached or cached.get("labels_sha256") != _labels_hash(labels) or \
            cached.get("recipe") != recipe:
        return None
    if _has_canaries(run) and cached.get("canaries") != CANARY_LABELS["canaries"]:
        return None  # trained on the canaries' flipped labels (before trakscope restored them)
    correct = np.array([c == "1" for c in cached["test_correct"]], dtype=bool)
    return {"test_acc": cached["test_acc"], "correct": correct, "source": "retrained"}


def _labels_hash(labels: np.ndarray | None) -> str | None:
    """Short SHA-256 of a relabel strategy's training labels (int64 ``[n_train]``); None for a removal."""
    return None if labels is None else indices_hash(labels)


def _retrain(run: RunFolder, job: Job, seed: int, removed: np.ndarray, device: str,
             labels: np.ndarray | None = None, train_fn: TrainFn | None = None) -> dict:
    """Train without ``removed`` (with every row and ``labels`` for a relabel strategy, ``removed`` then being the
    relabeled rows) and cache the result as ``removal/retrains/<job>.json`` (one atomic write; a ``train_fn``'s
    name recorded as ``recipe``)."""
    t0 = time.perf_counter()
    keep = np.setdiff1d(np.arange(len(run.data.table("train")["index"])), removed) if len(removed) else None
    if labels is not None:
        keep = None
    correct = correct_on_test(run, keep, seed, device, progress=False, labels=labels, train_fn=train_fn)
    acc = float(correct.mean())
    recipe = recipe_tag(train_fn)
    record = {**({"recipe": recipe} if recipe else {}),
        "strategy": job.strategy, "fraction": None if math.isnan(job.fraction) else job.fraction, "seed": seed,
        "removed_sha256": indices_hash(removed), "n_removed": int(len(removed)), "test_acc": acc,
        "test_correct": "".join("1" if c else "0" for c in correct), "seconds": round(time.perf_counter() - t0, 2),
        **(CANARY_LABELS if _has_canaries(run) else {})}
    if labels is not None:
        record.update(action="relabel", labels_sha256=_labels_hash(labels))
    write_json(_retrain_path(run, job), record)
    run.integrity.seal(_retrain_path(run, job))
    return {"test_acc": acc, "correct": correct, "source": "retrained"}


def cached_evaluate(run: RunFolder, device: str = "cpu", train_fn: TrainFn | None = None):
    """``evaluate(job, keep, seed)`` for :func:`remove_and_retrain`: trakscope's trainer (or ``train_fn``), cached
    per job."""
    n_train = len(run.data.table("train")["index"])

    def evaluate(job: Job, keep: np.ndarray, seed: int, labels: np.ndarray | None = None):
        if job.strategy == "full" and train_fn is None:
            member = ensemble_member_accuracy(run, seed, device)
            if member is not None:
                return member
        removed = np.setdiff1d(np.arange(n_train), keep)
        if labels is not None:  # relabel: the rows whose label changed stand where removed ones would
            removed = _relabeled_rows(run, labels)
        cached = cached_retrain(run, job, seed, removed, labels, recipe_tag(train_fn))
        return cached if cached is not None else _retrain(run, job, seed, removed, device, labels, train_fn)

    return evaluate


def _relabeled_rows(run: RunFolder, labels: np.ndarray) -> np.ndarray:
    """Sorted int64 rows whose training label ``labels`` (int ``[n_train]``) differs from the given one."""
    return np.flatnonzero(np.asarray(labels) != run.data.table("train")["label"]).astype(np.int64)


def _as_trained(run: RunFolder, job: Job, selected: np.ndarray,
                ranking: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rows, labels)`` of a planned retrain as cached: the removed rows and None, or for a relabel strategy the
    rows whose label changed and the labels trained with (from ``ranking``'s suggestions)."""
    labels = None if job.strategy == "full" else relabeled_labels(job.strategy, selected, ranking or {})
    return (selected, None) if labels is None else (_relabeled_rows(run, labels), labels)


def share_retrains(run: RunFolder, plan: list[tuple[Job, int, np.ndarray]], device: str = "cpu",
                   progress: bool = True, ranking: Mapping[str, np.ndarray] | None = None,
                   train_fn: TrainFn | None = None) -> None:
    """Train every retrain of ``plan`` (:func:`planned_evaluations`) that is neither cached nor an ensemble member.

    ``ranking`` (with ``label`` and ``suggested_label``) gives the labels of the relabel strategies in ``plan``.
    Under torchrun the pending retrains are dealt out by rank (the ``i``-th to rank ``i % world``); every rank
    returns once all of them are cached.
    """
    recipe = recipe_tag(train_fn)
    trained = [(job, seed, *_as_trained(run, job, removed, ranking)) for job, seed, removed in plan]
    pending = [(job, seed, removed, labels) for job, seed, removed, labels in trained
               if not (job.strategy == "full" and ensemble_member(run, seed, train_fn) is not None)
               and cached_retrain(run, job, seed, removed, labels, recipe) is None]
    n_train = len(run.data.table("train")["index"])
    announce_trainings(run, "remove and retrain",
                       [n_train - (0 if labels is not None else len(rows)) for _, _, rows, labels in pending],
                       run.config.train.epochs, done=len(plan) - len(pending), recipe=recipe)
    dist.barrier()  # every rank has looked at the same cache before any rank adds to it
    mine = pending[dist.rank()::dist.world_size()]
    bar = progress_bar(mine, desc="remove and retrain", disable=not progress)
    for job, seed, removed, labels in bar:
        bar.set_postfix_str(job.key)
        _retrain(run, job, seed, removed, device, labels, train_fn)
    bar.close()
    dist.barrier()  # every retrain is on disk
    run.integrity.seal_pending(*(_retrain_path(run, job) for job, *_ in pending))  # other ranks' (rank 0 records)
    dist.barrier()  # recorded before any rank verifies them


def _true_labels(run: RunFolder) -> np.ndarray | None:
    """int64 ``[n_train]`` true labels where noise was planted (to count the errors a relabel fixed), else None."""
    train = run.data.table("train")
    return np.asarray(train["true_label"], dtype=np.int64) if train["noisy"].any() else None


def test_groups(run: RunFolder, groups: str = "classes") -> tuple[np.ndarray, str]:
    """int64 ``[n_test]`` groups for worst-group accuracy and what they are: the test classes, or a groups file's.

    Raises:
        ValueError: a groups file that maps no test examples (worst-group accuracy needs them).
    """
    if groups in ("classes", "auto"):  # Auto-D3M's pseudo-groups exist for val only: worst class on test
        return run.data.table("test")["label"], "classes"
    test = read_groups(run, groups)[1]
    if test is None:
        raise ValueError(f"--groups {groups} maps no test examples; add rows for the test split (split=test or "
                         "their source_id), or use --groups classes for worst-class accuracy")
    return test, str(groups)


def run_removal(run: RunFolder, strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
                fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seeds: int = 3,
                device: str = "cpu", progress: bool = True, groups: str = "classes",
                train_fn: TrainFn | None = None) -> dict:
    """Retrain every (strategy, fraction, seed), write ``removal/results.json``; return the results.

    The command draws the plot (presentation sits above the stages).

    ``groups`` (``classes`` or a groups CSV with test rows) gives the test groups of the worst-group accuracy.
    The retrains are trained first (:func:`share_retrains`, shared out by rank under torchrun), then summarised
    from the cache; rank 0 writes. ``train_fn``: the user's recipe for every retrain, the full-data reference
    included (:mod:`.recipe`); which recipe is used is said first on an imported run. There, ``imported`` holds the
    checkpoints' own accuracy beside the full-data reference (:func:`imported_reference`).
    """
    t0 = time.perf_counter()
    ranking = load_ranking(run)
    group_ids, group_source = test_groups(run, groups)
    base_seed, canary = run.config.train.seed, canary_mask(run, len(ranking["index"]))
    plan = planned_evaluations(ranking, strategies=strategies, fractions=fractions, seeds=seeds, base_seed=base_seed,
                               canary=canary)
    say_recipe(run, "removal", train_fn)
    share_retrains(run, plan, device, progress, ranking, train_fn)
    summary = remove_and_retrain(ranking, cached_evaluate(run, device, train_fn), strategies=strategies,
                                 fractions=fractions, seeds=seeds, base_seed=base_seed, noisy=ranking["noisy"],
                                 test_groups=group_ids, true_labels=_true_labels(run), canary=canary)
    summary.update({"strategies": list(strategies), "fractions": list(fractions), "seeds": seeds,
                    "test_groups": group_source, "n_test_groups": int(len(np.unique(group_ids))),
                    "selection": "detect/ranking.csv (train and val splits only)", "metric": "test accuracy"})
    imported = imported_reference(run, summary["reference"]["mean"])
    if imported is not None:
        summary.update({"imported": imported, **({"recipe": recipe_tag(train_fn)} if train_fn else {})})
    if dist.rank() == 0:
        run.results.write(run.removal_results_path, "removal_results", summary)
        run.results.record_timing("removal", time.perf_counter() - t0)
    dist.barrier()
    return summary


def imported_reference(run: RunFolder, full_acc: float) -> dict | None:
    """On imported checkpoints, their own test accuracy (mean over the members, ``models/metrics.json``) beside
    ``full_acc``, the full-data retrains' mean; ``warning`` where the two differ by more than
    :data:`REFERENCE_GAP`. None on a run trakscope trained (its full-data reference is its own members).
    """
    if not run.config.model.checkpoints:
        return None
    metrics = run.results.read(run.metrics_path, "model_metrics", "trakscope run")
    own = float(np.mean([m["test_acc"] for m in metrics["models"]]))
    out = {"test_acc": own, "n_models": len(metrics["models"]), "full_minus_imported": full_acc - own}
    if abs(full_acc - own) > REFERENCE_GAP:
        out["warning"] = (f"the full-data retrains score {full_acc:.4f} on test and the imported checkpoints "
                          f"{own:.4f}: {abs(full_acc - own) * 100:.1f} points apart, so the retrains do not "
                          "reproduce your model and removal measures another recipe; give yours to `trakscope run` "
                          "(--weights, --epochs, --lr, --batch-size) or pass train_fn in Python")
    return out
