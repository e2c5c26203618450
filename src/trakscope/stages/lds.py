"""The ``lds`` stage: train (or reuse) subset models on the run's data and score attributions against them.

Subset models depend only on the data, model and training settings, ``alpha`` and the subset seed,
never on the projector, so they are cached once per run and reused to score any number of attribution
matrices. The maths (masks, predictions, Spearman, LDS) is in :mod:`trakscope.methods.lds`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..attribution.output import margin
from ..io import load_npy, read_json, save_npy, write_csv, write_json
from ..methods.lds import choose_targets, ci95, lds, mask_hash, model_seed, predicted_outputs, subset_masks
from ..progress import progress_bar
from ..run_folder import TARGET_SPLITS, RunFolder, fingerprint
from ..train import predict_logits, train_final_model
from .estimate import announce_trainings
from .recipe import TrainFn, recipe_tag, say_recipe, user_network

NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


def _subset_train_config(run: RunFolder, epochs: int | None):
    """The run's training settings with one kept checkpoint (the final model), and ``epochs`` if overridden."""
    cfg = run.config.train
    return dataclasses.replace(cfg, epochs=cfg.epochs if epochs is None else epochs, checkpoints_per_model=1)


def _cached_margins(run: RunFolder, folder: Path, i: int, expect: dict, sizes: dict[str, int]
                    ) -> dict[str, np.ndarray] | None:
    meta_path, paths = RunFolder.subset_model_paths(folder, i, tuple(sizes))
    if not meta_path.exists() or any(run.integrity.damaged(p) for p in (meta_path, *paths.values())):
        return None  # an unverified cache is retrained over
    meta = read_json(meta_path)
    if any(meta.get(key) != value for key, value in expect.items()) or meta.get("recipe") != expect.get("recipe"):
        return None  # another subset, seed, setting or recipe (a train_fn's name; none: the run's own)
    out = {}
    for split, n in sizes.items():
        path = paths[split]
        if not path.exists():
            return None
        out[split] = load_npy(path)
        if out[split].shape != (n,):
            return None
    return out


def _subset_expect(run: RunFolder, mask: np.ndarray, i: int, seed: int, epochs: int | None,
                   train_fn: TrainFn | None = None) -> dict:
    """What the cache of subset model ``i`` (kept examples bool ``[n_train]`` ``mask``) must record to be reused."""
    return {"mask_sha256": mask_hash(mask), "seed": model_seed(seed, i), "fingerprint": fingerprint(run.config),
            "epochs": _subset_train_config(run, epochs).epochs,
            **({"recipe": recipe_tag(train_fn)} if train_fn else {})}


def _announce_subsets(run: RunFolder, masks: np.ndarray, alpha: float, seed: int, epochs: int | None,
                      train_fn: TrainFn | None = None) -> None:
    """Say how many of the subset models (bool ``[k, n_train]`` ``masks``) are still to train, and how long."""
    folder, dataset = run.lds_subset_dir(alpha, seed, epochs), run.data.dataset()
    sizes = {split: len(dataset.split(split)) for split in TARGET_SPLITS}
    pending = [i for i, mask in enumerate(masks)
               if _cached_margins(run, folder, i, _subset_expect(run, mask, i, seed, epochs, train_fn), sizes) is None]
    announce_trainings(run, f"LDS subset models (alpha={alpha:g})", [int(masks[i].sum()) for i in pending],
                       _subset_train_config(run, epochs).epochs, done=len(masks) - len(pending),
                       recipe=recipe_tag(train_fn))


def subset_model_margins(run: RunFolder, mask: np.ndarray, i: int, alpha: float, seed: int,
                         epochs: int | None = None, device: str = "cpu",
                         train_fn: TrainFn | None = None) -> dict[str, np.ndarray]:
    """float32 ``[n_split]`` margins (own label) on test and val of subset model ``i``, trained once and cached.

    The model is the run's architecture trained with the run's settings (``epochs`` overrides the number
    of epochs) on the kept examples ``mask`` (bool ``[n_train]``), seed :func:`model_seed`, or ``train_fn``'s network
    (:mod:`.recipe`; its name recorded as ``recipe``). The cache is written margins first and ``model{i}.json`` last,
    so an interrupted model is retrained on resume.
    """
    cfg, dataset = run.config, run.data.dataset()
    folder = run.lds_subset_dir(alpha, seed, epochs)
    train_cfg = _subset_train_config(run, epochs)
    expect = _subset_expect(run, mask, i, seed, epochs, train_fn)
    sizes = {split: len(dataset.split(split)) for split in TARGET_SPLITS}
    cached = _cached_margins(run, folder, i, expect, sizes)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    keep = np.flatnonzero(mask)
    net = train_final_model(cfg.model, train_cfg, dataset, seed=expect["seed"], keep=keep, device=device,
                            progress=False) if train_fn is None else \
        user_network(train_fn, dataset, keep, expect["seed"], device)
    out = {}
    for split in TARGET_SPLITS:
        part = dataset.split(split)
        logits = predict_logits(net, part.images, device=device, num_workers=cfg.train.num_workers)
        out[split] = margin(torch.from_numpy(logits), torch.as_tensor(part.labels)).numpy().astype(np.float32)
    meta_path, paths = RunFolder.subset_model_paths(folder, i, TARGET_SPLITS)
    for split in TARGET_SPLITS:
        save_npy(paths[split], out[split])
    write_json(meta_path, {**expect, "model": i, "alpha": alpha, "subset_seed": seed,
                                          "kept": int(mask.sum()), "seconds": round(time.perf_counter() - t0, 2)})
    run.integrity.seal(*paths.values(), meta_path)
    return out


def subset_margins(run: RunFolder, alpha: float = 0.5, k: int = 20, seed: int = 0, split: str = "test",
                   epochs: int | None = None, device: str = "cpu", progress: bool = True,
                   train_fn: TrainFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Masks bool ``[k, n_train]`` and observed margins float32 ``[k, n_split]`` of the ``k`` subset models (trained
    by ``train_fn`` where given, which ``epochs`` cannot override)."""
    if split not in TARGET_SPLITS:
        raise ValueError(f"split must be one of {TARGET_SPLITS}, got {split!r}")
    if epochs is not None and train_fn is not None:
        raise ValueError(f"epochs={epochs} overrides trakscope's recipe, not {recipe_tag(train_fn)}: set the epochs "
                         "inside your train_fn and leave epochs=None")
    say_recipe(run, "lds", train_fn)
    masks = subset_masks(len(run.data.dataset().train), alpha, k, seed)
    rank, world = dist.rank(), dist.world_size()
    if rank == 0:
        _announce_subsets(run, masks, alpha, seed, epochs, train_fn)
    dist.barrier()  # announced from the cache as it was, before any rank adds to it
    mine = [i for i in range(k) if i % world == rank]  # under torchrun each rank trains its share into the cache
    for i in progress_bar(mine, desc=f"LDS subset models (alpha={alpha:g})", disable=not progress or rank != 0):
        subset_model_margins(run, masks[i], i, alpha, seed, epochs, device, train_fn)
    dist.barrier()
    folder = run.lds_subset_dir(alpha, seed, epochs)
    run.integrity.seal_pending(*(p for i in range(k) for p in folder.glob(f"model{i}[._]*")))  # other ranks' models
    dist.barrier()  # recorded before any rank verifies them
    rows = [subset_model_margins(run, masks[i], i, alpha, seed, epochs, device, train_fn)[split] for i in range(k)]
    return masks, np.stack(rows)


def _scores_source(run: RunFolder, split: str, scores_path: Path | None) -> tuple[np.ndarray, dict]:
    """The attribution ``[n_train, n_split]`` and what it is (projector and width when it is the run's own)."""
    if scores_path is None:
        meta_path = run.scores_meta_path
        meta = run.integrity.json(meta_path) if meta_path.exists() else {}
        return run.results.scores(split), {"scores_path": run.relative(run.scores_path(split)),
                                   "projector": meta.get("projector"), "proj_dim": meta.get("proj_dim"),
                                   "checkpoints": meta.get("checkpoints")}
    scores = read_score_matrix(Path(scores_path), split)
    return scores, {"scores_path": str(scores_path), "projector": None, "proj_dim": None, "checkpoints": None}


def read_score_matrix(path: Path, split: str) -> np.ndarray:
    """A user's ``--scores`` file: a numeric ``.npy`` array (memory-mapped), or a ValueError that names the file.

    numpy reads a file without the ``.npy`` header (a CSV or text file) as pickled data; trakscope never unpickles.
    """
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise ValueError(f"--scores {path} is not a .npy score matrix (no .npy header: a text or other file); "
                                 f"save a float array [n_train, n_{split}] with numpy.save(FILE.npy, scores)")
    try:
        scores = load_npy(path, mmap=True)
    except (ValueError, EOFError) as e:
        raise ValueError(f"--scores {path} is not a readable .npy score matrix ({e}); save a float array "
                         f"[n_train, n_{split}] with numpy.save(FILE.npy, scores)") from e
    if not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"--scores {path} holds {scores.dtype} values, not numbers; save a float array "
                         f"[n_train, n_{split}] with numpy.save(FILE.npy, scores)")
    return scores


def run_lds(run: RunFolder, alpha: float = 0.5, k: int = 20, seed: int = 0, split: str = "test",
            max_targets: int | None = None, scores_path: Path | None = None, epochs: int | None = None,
            out: Path | None = None, device: str = "cpu", progress: bool = True,
            train_fn: TrainFn | None = None) -> dict:
    """Train (or reuse) the subset models, score an attribution against them, write the result JSON.

    Args:
        scores_path: an ``.npy`` float ``[n_train, n_split]`` attribution to evaluate; default the run's
            ``scores/{split}.npy``.
        epochs: train subset models for this many epochs instead of the run's (recorded in the result).
        out: result JSON; default ``lds.json`` for the run's scores, ``lds/lds_<stem>.json`` for ``scores_path``.
        train_fn: the user's recipe for the subset models (:mod:`.recipe`), recorded as ``recipe`` in the result.

    Returns:
        the dictionary written to ``out``; per-target correlations go to ``lds/<out stem>_per_target.csv``.
        Under torchrun the subset models are shared out by rank; rank 0 writes the results.
    """
    t0 = time.perf_counter()
    scores, source = _scores_source(run, split, scores_path)
    n_train, n_split = len(run.data.dataset().train), len(run.data.dataset().split(split))
    if scores.shape != (n_train, n_split):
        raise ValueError(f"scores have shape {scores.shape}; expected [n_train, n_{split}] = ({n_train}, {n_split})")
    masks, margins = subset_margins(run, alpha, k, seed, split, epochs, device, progress, train_fn)
    targets = choose_targets(n_split, max_targets, seed)
    predicted = predicted_outputs(np.asarray(scores[:, targets]), masks)
    mean, per_target = lds(predicted, margins[:, targets])
    low, high = ci95(per_target)
    result = {"lds_mean": mean, "lds_ci95": [low, high], "alpha": alpha, "num_models": k, "subset_seed": seed,
              "split": split, "targets": len(targets), "targets_defined": int((~np.isnan(per_target)).sum()),
              **source, "output": "margin of the target's label", "correlation": "Spearman over subset models",
              "train_epochs": int(_subset_train_config(run, epochs).epochs), "epochs_overridden": epochs is not None,
              "subset_models": run.relative(run.lds_subset_dir(alpha, seed, epochs)),
              **({"recipe": recipe_tag(train_fn)} if train_fn else {})}
    if out is None:
        out = run.lds_result_path(None if scores_path is None else Path(scores_path).stem)
    if dist.rank() == 0:
        run.results.write(Path(out), "lds", result)
        write_csv(run.lds_per_target_path(Path(out)), ["index", "spearman"],
                  [(int(t), "" if np.isnan(r) else f"{r:.6f}") for t, r in zip(targets, per_target, strict=True)])
        run.integrity.seal(run.lds_per_target_path(Path(out)))
        run.results.record_timing("lds", time.perf_counter() - t0)
    dist.barrier()
    return result
