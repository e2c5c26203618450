"""Out-of-sample predicted probabilities of the training split by k-fold cross-validated training.

cleanlab's confident learning needs, for every training example, probabilities from a model that did
not train on it. Each fold is trained through :func:`trakscope.train.train_model` with a ``keep`` mask
(same architecture, same seed as ensemble member 0) and its held-out probabilities are cached as
``detect/crossval/fold{f}.npy``, so an interrupted run resumes at the next fold.

Under torchrun, fold ``f`` is trained by rank ``f % world``; every rank then reads every fold from the cache.
A user's ``train_fn`` (:mod:`.recipe`) trains the folds instead; they are then neither read from nor written to the
cache, which holds the run's own recipe's folds.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import dist
from ..io import load_npy, save_npy
from ..methods.folds import fold_assignment
from ..run_folder import RunFolder
from ..train import predict_logits, train_final_model
from .estimate import announce_trainings
from .recipe import TrainFn, recipe_tag, say_recipe, user_network


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def out_of_sample_probs(run: RunFolder, k: int = 3, device: str = "cpu", progress: bool = True,
                        train_fn: TrainFn | None = None) -> np.ndarray:
    """float32 ``[n_train, C]`` probabilities of each training example from the fold model that held it out.

    Folds already cached under ``detect/crossval/`` with the same fold assignment are reused. Under torchrun
    each rank trains its share of the missing folds (rank 0 alone drops stale ones first). ``train_fn``: the user's
    recipe (single process, uncached); the recipe is said first on an imported run or with ``train_fn``.
    """
    dataset = run.data.dataset()
    labels = dataset.train.labels
    folds = fold_assignment(labels, k, run.config.train.seed)
    say_recipe(run, "cross-validation", train_fn)
    if train_fn is not None:
        announce_trainings(run, "cross-validation", [int((folds != f).sum()) for f in range(k)],
                           run.config.train.epochs, done=0, recipe=recipe_tag(train_fn))  # uncached: all k
        probs = np.zeros((len(labels), len(dataset.classes)), dtype=np.float32)
        for f in range(k):
            probs[folds == f] = _fold_probs(run, folds, f, k, device, progress, train_fn)
        return probs
    if dist.rank() == 0:
        _drop_stale(run, folds)
        _announce_folds(run, folds, k)
    dist.barrier()  # no rank looks for cached folds before stale ones are gone
    for f in range(dist.rank(), k, dist.world_size()):
        if not run.fold_probs_path(f).exists():
            _train_fold(run, folds, f, k, device, progress)
    dist.barrier()  # every fold is on disk
    run.integrity.seal_pending(*map(run.fold_probs_path, range(k)))  # other ranks' folds (rank 0 records)
    dist.barrier()  # recorded before any rank verifies them
    probs = np.zeros((len(labels), len(dataset.classes)), dtype=np.float32)
    for f in range(k):
        probs[folds == f] = run.integrity.array(run.fold_probs_path(f))
    return probs


def _fold_probs(run: RunFolder, folds: np.ndarray, f: int, k: int, device: str, progress: bool,
                train_fn: TrainFn | None = None) -> np.ndarray:
    """float32 ``[n_f, C]`` probabilities of fold ``f``'s examples from a model trained without them."""
    cfg, dataset = run.config, run.data.dataset()
    keep = np.flatnonzero(folds != f)
    model = train_final_model(cfg.model, cfg.train, dataset, seed=cfg.train.seed, keep=keep, device=device,
                              progress=progress, desc=f"cross-validation fold {f + 1}/{k}") if train_fn is None \
        else user_network(train_fn, dataset, keep, cfg.train.seed, device)
    logits = predict_logits(model, dataset.train.images, np.flatnonzero(folds == f), device=device,
                            num_workers=cfg.train.num_workers)
    return _softmax(logits).astype(np.float32)


def _train_fold(run: RunFolder, folds: np.ndarray, f: int, k: int, device: str, progress: bool) -> None:
    """Train without fold ``f`` and cache its held-out probabilities as ``detect/crossval/fold{f}.npy``."""
    save_npy(run.fold_probs_path(f), _fold_probs(run, folds, f, k, device, progress))
    run.integrity.seal(run.fold_probs_path(f))


def _announce_folds(run: RunFolder, folds: np.ndarray, k: int) -> None:
    """Say how many folds are still to train (each on the examples outside it) and about how long they take."""
    pending = [f for f in range(k) if not run.fold_probs_path(f).exists()]
    announce_trainings(run, "cross-validation", [int((folds != f).sum()) for f in pending], run.config.train.epochs,
                       done=k - len(pending))


def _drop_stale(run: RunFolder, folds: np.ndarray) -> None:
    """Remove cached folds made with another fold assignment; record the current one."""
    assign = run.fold_assignment_path
    cached = sorted(run.crossval_dir.glob("fold*.npy"))
    damaged = [p for p in cached if run.integrity.damaged(p)]
    if assign.exists() and not run.integrity.damaged(assign):
        old = load_npy(assign)
        if old.shape == folds.shape and np.array_equal(old, folds):
            run.integrity.discard(*damaged)  # retrained: an unverified fold is never used
            return
    run.integrity.discard(*cached)  # made with another (or an unverifiable) fold assignment
    save_npy(assign, folds)
    run.integrity.seal(assign)
