"""The ``trakscope run`` stages: data -> train ensemble (or import checkpoints) -> featurize -> score.

Each stage resumes from the run folder. Featurization and scoring go through the public
:class:`~trakscope.attribution.trak.TRAK` engine, whose store is the run folder's ``features/``.

Under ``torchrun`` (torch.distributed initialised from the environment), ensemble members are trained
on ``m % world == rank`` and featurization batches are sharded by rank; rank 0 writes the shared files
and computes the scores. The run folder must then be on a file system all ranks share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .. import dist
from ..attribution.trak import TRAK
from ..data import Dataset, ImageSplit, iter_batches
from ..io import load_npy, load_tensors, save_npy, save_tensors, write_json
from ..models import build_model
from ..run_folder import SPLITS, RunError, RunFolder, fingerprint
from ..train import MarginRecorder, architecture_only, load_trained, predict_logits, train_model
from .canaries import write_canaries


@dataclass(frozen=True)
class Runtime:
    """How to run (not what to compute): none of this is part of the configuration."""

    device: str = "cpu"
    progress: bool = True


@contextmanager
def timed(run: RunFolder, stage: str):
    """Record the stage's wall time in ``timings.json`` (rank 0) if the block finishes."""
    start = time.perf_counter()
    yield
    if dist.rank() == 0:
        run.record_timing(stage, time.perf_counter() - start)


def prepare_data(run: RunFolder) -> Dataset:
    """Write ``data/classes.json``, the split tables and thumbnails (once); return the dataset."""
    dataset = run.dataset()
    if dist.rank() != 0 or run.thumbs_path("test").exists():
        return dataset
    write_json(run.classes_path, dataset.classes)
    thumb = min(run.config.data.image_size, 64)
    for name in SPLITS:
        split = dataset.split(name)
        run.write_table(name, [(i, split.source_ids[i], int(split.labels[i]), int(split.true_labels[i]),
                                int(split.noisy[i])) for i in range(len(split))])
        thumbs = np.concatenate([split.images.thumbnails(np.arange(s, min(s + 256, len(split))), thumb)
                                 for s in range(0, len(split), 256)])
        save_npy(run.thumbs_path(name), thumbs)
    write_canaries(run, dataset.train)
    return dataset


def load_checkpoint(run: RunFolder, path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, refused when it was written by a run with other settings."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_tensors(path)
    except (SafetensorError, OSError) as e:
        raise RunError(f"{path} is damaged ({e}); delete it and rerun `trakscope run --out {run.path}` "
                       "to retrain that model") from e
    if meta.get("fingerprint") != fingerprint(run.config):
        raise RunError(f"{path} was written by a run with other settings (fingerprint "
                       f"{meta.get('fingerprint')!r}, this run {fingerprint(run.config)!r}); rerun with --overwrite")
    return state


def train_ensemble(run: RunFolder, rt: Runtime) -> None:
    """Train the ensemble members that have no checkpoints yet, then write metrics and probabilities."""
    cfg, dataset = run.config, run.dataset()
    per_model = cfg.train.checkpoints_per_model
    for m in range(cfg.train.ensemble):
        if m % dist.world_size() != dist.rank():
            continue
        if all(run.checkpoint_path(m, c).exists() for c in range(per_model)):
            continue
        seed = cfg.train.seed + m
        margins = MarginRecorder(len(dataset.train))
        states = train_model(cfg.model, cfg.train, dataset, seed=seed, device=rt.device, progress=rt.progress,
                             margins=margins)
        save_npy(run.aum_path(m), margins.aum())  # before the checkpoints: a member with checkpoints has its AUM
        meta = {"fingerprint": fingerprint(cfg), "model": str(m), "seed": str(seed)}
        for c, state in enumerate(states):
            save_tensors(run.checkpoint_path(m, c), state, metadata={**meta, "checkpoint": str(c)})
    dist.barrier()
    if dist.rank() == 0:
        ensemble_metrics(run, rt)
        ensemble_aum(run)


def ensemble_aum(run: RunFolder) -> None:
    """``models/aum.npy``: the mean of the members' AUM (skipped when a member's file is absent, e.g. older runs)."""
    paths = [run.aum_path(m) for m in range(run.config.train.ensemble)]
    if all(p.exists() for p in paths):
        save_npy(run.aum_path(), np.mean([load_npy(p) for p in paths], axis=0))


def import_checkpoints(run: RunFolder, rt: Runtime) -> None:
    """Attribute models trained elsewhere: copy ``model.checkpoints`` in as ensemble members, then write metrics.

    Each file (safetensors, or a torch file read with ``weights_only``) must load strictly into the configured
    architecture; it is stored as ``model{m}_ckpt0`` with the run's fingerprint and its source path.
    """
    from ..models.weights import read_state_file

    cfg = run.config
    if dist.rank() == 0:
        for m, source in enumerate(cfg.model.checkpoints):
            if run.checkpoint_path(m, 0).exists():
                continue
            state = read_state_file(source)
            try:
                load_trained(cfg.model, len(run.dataset().classes), state)
            except RuntimeError as e:
                raise RunError(f"checkpoint {source} does not fit --model {cfg.model.name} with "
                               f"{len(run.dataset().classes)} classes: {str(e).splitlines()[0]}") from e
            meta = {"fingerprint": fingerprint(cfg), "model": str(m), "source": str(source), "checkpoint": "0"}
            save_tensors(run.checkpoint_path(m, 0), state, metadata=meta)
        ensemble_metrics(run, rt)
    dist.barrier()


def final_checkpoints(run: RunFolder) -> list:
    """The last checkpoint of every ensemble member, in member order."""
    last: dict[int, object] = {}
    for path in run.checkpoint_paths():
        last[int(path.stem.split("_ckpt")[0].removeprefix("model"))] = path
    return [last[m] for m in sorted(last)]


def ensemble_metrics(run: RunFolder, rt: Runtime) -> None:
    """``models/metrics.json`` (accuracy of every member and of the ensemble) and ``models/probs_<split>.npy``."""
    cfg, dataset = run.config, run.dataset()
    finals = final_checkpoints(run)
    models, probs = [], {name: 0.0 for name in SPLITS}
    for m, path in enumerate(finals):
        net = load_trained(cfg.model, len(dataset.classes), load_checkpoint(run, path), rt.device)
        imported = cfg.model.checkpoints is not None
        row = {"model": m, "seed": None if imported else cfg.train.seed + m, "checkpoint": run.relative(path),
               "source": cfg.model.checkpoints[m] if imported else "trained by trakscope"}
        for name in SPLITS:
            logits = predict_logits(net, dataset.split(name).images, device=rt.device,
                                    num_workers=cfg.train.num_workers)
            p = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
            probs[name] = probs[name] + p / len(finals)
            if name != "train":
                row[f"{name}_acc"] = float((p.argmax(1) == dataset.split(name).true_labels).mean())
        models.append(row)
    ensemble = {f"{n}_acc": float((probs[n].argmax(1) == dataset.split(n).true_labels).mean()) for n in ("val", "test")}
    for name in SPLITS:
        save_npy(run.probs_path(name), probs[name].astype(np.float32))
    run.write_result(run.metrics_path, "model_metrics", {"models": models, "ensemble": ensemble})


def trak_engine(run: RunFolder, rt: Runtime) -> TRAK:
    """The :class:`TRAK` engine of the run: its architecture, its TRAK settings, its ``features/`` store."""
    cfg = run.config
    model = build_model(architecture_only(cfg.model), len(run.dataset().classes))
    t = cfg.trak
    return TRAK(model, run.features_dir, projector=t.projector, proj_dim=t.proj_dim, kron_k=t.kron_k,
                proj_type=t.proj_type, ridge=t.ridge, seed=t.seed, device=rt.device, progress=rt.progress)


def split_batches(split: ImageSplit, rows: np.ndarray, batch_size: int, num_workers: int
                  ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """``(indices, images, labels)`` batches of ``split`` over ``rows``, in order."""
    labels = torch.as_tensor(split.labels)
    for idx, x in iter_batches(split.images, rows, batch_size, num_workers):
        yield idx, x, labels[idx]


def rows_to_featurize(done: np.ndarray, batch_size: int, shard: tuple[int, int]) -> np.ndarray:
    """Rows of the fixed batches ``[b * B, (b + 1) * B)`` with ``b % world == rank`` that are not all done."""
    rank, world = shard
    n = len(done)
    starts = [s for b, s in enumerate(range(0, n, batch_size)) if b % world == rank]
    todo = [np.arange(s, min(s + batch_size, n)) for s in starts if not done[s : s + batch_size].all()]
    return np.concatenate(todo) if todo else np.zeros(0, dtype=np.int64)


def featurize(run: RunFolder, rt: Runtime) -> TRAK:
    """Projected margin gradients of train, val and test under every checkpoint, resumable."""
    cfg, dataset = run.config, run.dataset()
    trak = trak_engine(run, rt)
    shard = (dist.rank(), dist.world_size())
    for k, path in enumerate(run.checkpoint_paths()):
        state = load_checkpoint(run, path)
        for name in SPLITS:
            split = dataset.split(name)
            done = np.ones(len(split), dtype=bool)
            done[trak.pending(name, len(split), k)] = False
            rows = rows_to_featurize(done, cfg.trak.batch_size, shard)
            batches = split_batches(split, rows, cfg.trak.batch_size, cfg.train.num_workers)
            trak.featurize_batches(batches, split=name, n=len(split), checkpoint=state, checkpoint_id=k)
    return trak


def score(run: RunFolder, trak: TRAK) -> None:
    """``scores/{test,val,self}.npy`` and ``scores/meta.json`` (rank 0 computes, every rank waits)."""
    meta = {}
    for name in ("val", "test"):
        trak.scores("train", name, out=run.scores_path(name))
        meta = _read_record(run.scores_path(name))
    trak.self_influence("train", out=run.scores_path("self") if dist.rank() == 0 else None)
    if dist.rank() == 0:
        write_json(run.scores_meta_path, {
            "projector": run.config.trak.projector, "proj_dim": meta["proj_dim"],
            "checkpoints": len(meta["checkpoints"]), "lambda": meta["lambda"], "ridge": meta["ridge"],
            "score": meta["score"]})
    dist.barrier()


def _read_record(path) -> dict:
    from ..io import read_json

    return read_json(path.with_suffix(".json"))


def run_pipeline(run: RunFolder, rt: Runtime) -> None:
    """All stages in order; each skips what is already on disk."""
    with timed(run, "data"):
        prepare_data(run)
    dist.barrier()
    if not run.metrics_path.exists():
        with timed(run, "train"):
            (import_checkpoints if run.config.model.checkpoints else train_ensemble)(run, rt)
    if not run.scores_meta_path.exists():
        with timed(run, "featurize"):
            trak = featurize(run, rt)
        with timed(run, "score"):
            score(run, trak)
    dist.barrier()
