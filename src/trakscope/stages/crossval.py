"""Out-of-sample predicted probabilities of the training split by k-fold cross-validated training.

cleanlab's confident learning needs, for every training example, probabilities from a model that did
not train on it. Each fold is trained through :func:`trakscope.train.train_model` with a ``keep`` mask
(same architecture, same seed as ensemble member 0) and its held-out probabilities are cached as
``detect/crossval/fold{f}.npy``, so an interrupted run resumes at the next fold.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io import load_npy, save_npy
from ..run_folder import RunFolder


def fold_assignment(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified, seeded fold of every example: each class is shuffled and dealt round-robin.

    Args:
        labels: int ``[n]``.
        k: number of folds, at least 2.
        seed: seed of the shuffle.

    Returns:
        int64 ``[n]`` fold ids in ``0..k-1``; fold sizes differ by at most one per class.
    """
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # continue the deal so small classes do not all start in fold 0
    return folds


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def out_of_sample_probs(run: RunFolder, k: int = 3, device: str = "cpu", progress: bool = True) -> np.ndarray:
    """float32 ``[n_train, C]`` probabilities of each training example from the fold model that held it out.

    Folds already cached under ``detect/crossval/`` with the same fold assignment are reused.
    """
    from ..train import predict_logits, train_final_model

    cfg = run.config
    dataset = run.dataset()
    labels = dataset.train.labels
    folds = fold_assignment(labels, k, cfg.train.seed)
    cache = run.path / "detect" / "crossval"
    _drop_stale(cache, folds)
    probs = np.zeros((len(labels), len(dataset.classes)), dtype=np.float32)
    for f in range(k):
        held = np.flatnonzero(folds == f)
        path = cache / f"fold{f}.npy"
        if not path.exists():
            model = train_final_model(cfg.model, cfg.train, dataset, seed=cfg.train.seed,
                                      keep=np.flatnonzero(folds != f), device=device, progress=progress)
            logits = predict_logits(model, dataset.train.images, held, device=device,
                                    num_workers=cfg.train.num_workers)
            save_npy(path, _softmax(logits).astype(np.float32))
        probs[held] = load_npy(path)
    return probs


def _drop_stale(cache, folds: np.ndarray) -> None:
    """Remove cached folds made with another fold assignment; record the current one."""
    assign = cache / "folds.npy"
    if assign.exists():
        old = load_npy(assign)
        if old.shape == folds.shape and np.array_equal(old, folds):
            return
    for p in cache.glob("fold*.npy"):
        p.unlink()
    save_npy(assign, folds)
