"""The ``trakscope run`` stages: data -> train ensemble -> featurize -> score. Each resumes from the run folder.

Under ``torchrun`` (torch.distributed initialised from the environment), ensemble members are trained
on ``m % world == rank`` and featurization batches are sharded by rank; rank 0 writes the shared files
and computes the scores. The run folder must then be on a file system all ranks share.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .. import dist
from ..attribution.featurize import FeatureStore, featurize_split, merge_done_flags
from ..attribution.projector import make_projector
from ..attribution.score import gram, regularized_inverse, trak_scores
from ..config import RunConfig
from ..data import Dataset
from ..io import load_npy, load_tensors, save_npy, save_tensors, write_csv, write_json
from ..run_folder import SPLITS, RunError, RunFolder
from ..train import load_trained, predict_logits, train_model


@dataclass(frozen=True)
class Runtime:
    """How to run (not what to compute): none of this is part of the configuration."""

    device: str = "cpu"
    progress: bool = True


def fingerprint(cfg: RunConfig) -> str:
    """A short hash of the settings that determine the checkpoints (data, model, training)."""
    d = cfg.to_dict()
    blob = json.dumps({k: d[k] for k in ("data", "model", "train")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def _timed(run: RunFolder, stage: str):
    """Record the stage's wall time in ``timings.json`` (rank 0) if the block finishes."""
    start = time.perf_counter()
    yield
    if dist.rank() == 0:
        run.record_timing(stage, time.perf_counter() - start)


def prepare_data(run: RunFolder, progress: bool = True) -> Dataset:
    """Write ``data/classes.json``, ``data/<split>.csv`` and thumbnails (once); return the dataset."""
    dataset = run.dataset()
    if dist.rank() != 0 or (run.path / "data" / "thumbs_test.npy").exists():
        return dataset
    write_json(run.path / "data" / "classes.json", dataset.classes)
    thumb = min(run.config.data.image_size, 64)
    for name in SPLITS:
        split = dataset.split(name)
        rows = [(i, split.source_ids[i], int(split.labels[i]), int(split.true_labels[i]), int(split.noisy[i]))
                for i in range(len(split))]
        write_csv(run.path / "data" / f"{name}.csv", ["index", "source_id", "label", "true_label", "noisy"], rows)
        thumbs = np.concatenate([split.images.thumbnails(np.arange(s, min(s + 256, len(split))), thumb)
                                 for s in range(0, len(split), 256)])
        save_npy(run.path / "data" / f"thumbs_{name}.npy", thumbs)
    return dataset


def checkpoint_path(run: RunFolder, model: int, ckpt: int):
    """``models/model{m}_ckpt{c}.safetensors``."""
    return run.path / "models" / f"model{model}_ckpt{ckpt}.safetensors"


def load_checkpoint(run: RunFolder, path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, refused when it was written by a run with other settings."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("fingerprint") != fingerprint(run.config):
        raise RunError(f"{path} was written by a run with other settings (fingerprint "
                       f"{meta.get('fingerprint')!r}, this run {fingerprint(run.config)!r}); rerun with --overwrite")
    return load_tensors(path)


def train_ensemble(run: RunFolder, rt: Runtime) -> None:
    """Train the ensemble members that have no checkpoints yet, then write metrics and probabilities."""
    cfg, dataset = run.config, run.dataset()
    per_model = cfg.train.checkpoints_per_model
    for m in range(cfg.train.ensemble):
        if m % dist.world_size() != dist.rank():
            continue
        if all(checkpoint_path(run, m, c).exists() for c in range(per_model)):
            continue
        seed = cfg.train.seed + m
        states = train_model(cfg.model, cfg.train, dataset, seed=seed, device=rt.device, progress=rt.progress)
        meta = {"fingerprint": fingerprint(cfg), "model": str(m), "seed": str(seed)}
        for c, state in enumerate(states):
            save_tensors(checkpoint_path(run, m, c), state, metadata={**meta, "checkpoint": str(c)})
    dist.barrier()
    if dist.rank() == 0:
        _ensemble_metrics(run, rt)


def _ensemble_metrics(run: RunFolder, rt: Runtime) -> None:
    cfg, dataset = run.config, run.dataset()
    last = cfg.train.checkpoints_per_model - 1
    models, probs = [], {name: 0.0 for name in SPLITS}
    for m in range(cfg.train.ensemble):
        net = load_trained(cfg.model, len(dataset.classes), load_checkpoint(run, checkpoint_path(run, m, last)),
                           rt.device)
        row = {"model": m, "seed": cfg.train.seed + m}
        for name in SPLITS:
            logits = predict_logits(net, dataset.split(name).images, device=rt.device,
                                    num_workers=cfg.train.num_workers)
            p = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
            probs[name] = probs[name] + p / cfg.train.ensemble
            if name != "train":
                row[f"{name}_acc"] = float((p.argmax(1) == dataset.split(name).true_labels).mean())
        models.append(row)
    ensemble = {f"{n}_acc": float((probs[n].argmax(1) == dataset.split(n).true_labels).mean()) for n in ("val", "test")}
    for name in SPLITS:
        save_npy(run.path / "models" / f"probs_{name}.npy", probs[name].astype(np.float32))
    write_json(run.path / "models" / "metrics.json", {"models": models, "ensemble": ensemble})


def featurize(run: RunFolder, rt: Runtime) -> None:
    """Projected margin gradients of train, val and test under every checkpoint, resumable."""
    cfg, dataset = run.config, run.dataset()
    trak, world, rank = cfg.trak, dist.world_size(), dist.rank()
    for k, path in enumerate(run.checkpoint_paths()):
        net = load_trained(cfg.model, len(dataset.classes), load_checkpoint(run, path), rt.device)
        projector = make_projector(trak.projector, net, trak.proj_dim, trak.seed + k, trak.proj_type, trak.kron_k)
        for name in SPLITS:
            split = dataset.split(name)
            store = FeatureStore(run.path / "features" / f"ckpt{k}", name, len(split), projector.dim)
            if store.is_complete():
                continue
            if rank == 0:
                store.open()
                if world > 1:
                    merge_done_flags(store, world)
            dist.barrier()
            featurize_split(projector, split, store, trak.batch_size, rt.device, cfg.train.num_workers,
                            shard=(rank, world), progress=rt.progress, desc=f"featurize ckpt {k} {name}")
            dist.barrier()
            if rank == 0 and world > 1:
                merge_done_flags(store, world)
            dist.barrier()


def score(run: RunFolder) -> None:
    """``scores/test.npy``, ``scores/val.npy``, ``scores/self.npy`` and ``scores/meta.json`` (rank 0 only)."""
    if dist.rank() != 0:
        return
    cfg = run.config
    stores = sorted((run.path / "features").glob("ckpt*"), key=lambda p: int(p.name[4:]))
    train, qs, invs, lams = [], [], [], []
    sizes = {name: len(run.table(name)["index"]) for name in SPLITS}
    for folder in stores:
        x, q = FeatureStore(folder, "train", sizes["train"], 0).load()
        inv_path = folder / "xtx_inv.npy"
        if not inv_path.exists():  # lambda.json first: an inverse on disk always has its lambda beside it
            inv, lam = regularized_inverse(gram(x), cfg.trak.ridge)
            write_json(folder / "lambda.json", {"lambda": lam})
            save_npy(inv_path, inv)
        train.append(x)
        qs.append(q)
        invs.append(load_npy(inv_path))
        lams.append(json.loads((folder / "lambda.json").read_text())["lambda"])
    q_mean = np.mean(qs, axis=0)
    self_inf = None
    for name in ("val", "test"):
        targets = [FeatureStore(folder, name, sizes[name], 0).load()[0] for folder in stores]
        _, self_inf = trak_scores(train, invs, targets, q_mean, out_path=run.path / "scores" / f"{name}.npy")
    save_npy(run.path / "scores" / "self.npy", self_inf)
    write_json(run.path / "scores" / "meta.json", {
        "projector": cfg.trak.projector, "proj_dim": int(train[0].shape[1]), "checkpoints": len(stores),
        "lambda": lams, "ridge": cfg.trak.ridge, "score": "mean_k(X_k A_k^-1 Phi_k^T) * mean_k(Q_k)"})


def run_pipeline(run: RunFolder, rt: Runtime) -> None:
    """All stages in order; each skips what is already on disk."""
    with _timed(run, "data"):
        prepare_data(run, rt.progress)
    dist.barrier()
    if not (run.path / "models" / "metrics.json").exists():
        with _timed(run, "train"):
            train_ensemble(run, rt)
    if not (run.path / "scores" / "meta.json").exists():
        with _timed(run, "featurize"):
            featurize(run, rt)
        with _timed(run, "score"):
            score(run)
    dist.barrier()
