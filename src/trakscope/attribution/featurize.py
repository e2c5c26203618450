"""Featurization: projected margin gradients of one split under one checkpoint, streamed to disk.

The features live in a memory-mapped ``.npy`` beside a per-example ``done`` flag array. Batches are
fixed slices of the split (``[b * B, (b + 1) * B)``), a batch's flags are set only after its features
are flushed, and a rerun computes only the batches not yet done. Because the model is in eval mode,
an example's features do not depend on the rest of its batch, so a resumed run gives identical
features. Peak memory does not grow with the number of examples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import ImageSplit, iter_batches
from ..io import load_npy, save_npy
from .output import out_to_loss
from .projector import GradientProjector


class FeatureStore:
    """One split's features: ``<split>.npy`` float32 ``[n, dim]``, ``<split>_done.npy`` bool ``[n]``,
    ``<split>_q.npy`` float32 ``[n]`` (out-to-loss weights), all in ``folder``."""

    def __init__(self, folder: Path, split: str, n: int, dim: int):
        self.folder, self.split, self.n, self.dim = Path(folder), split, n, dim
        self.features_path = self.folder / f"{split}.npy"
        self.done_path = self.folder / f"{split}_done.npy"
        self.q_path = self.folder / f"{split}_q.npy"

    def open(self) -> tuple[np.memmap, np.ndarray, np.ndarray]:
        """(writable features memmap, done flags, q), creating empty files on first use."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.features_path.exists() and self.done_path.exists():
            feats = np.load(self.features_path, mmap_mode="r+", allow_pickle=False)
            if feats.shape != (self.n, self.dim):
                raise ValueError(f"{self.features_path} has shape {feats.shape}, expected {(self.n, self.dim)}; "
                                 "it belongs to another configuration: rerun with --overwrite")
            return feats, load_npy(self.done_path).copy(), load_npy(self.q_path).copy()
        feats = np.lib.format.open_memmap(self.features_path, mode="w+", dtype=np.float32, shape=(self.n, self.dim))
        done, q = np.zeros(self.n, dtype=bool), np.zeros(self.n, dtype=np.float32)
        save_npy(self.q_path, q)
        save_npy(self.done_path, done)
        return feats, done, q

    def is_complete(self) -> bool:
        """All examples featurized."""
        return self.done_path.exists() and bool(load_npy(self.done_path).all())

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(features memmap ``[n, dim]``, q ``[n]``) of a complete store."""
        if not self.is_complete():
            raise ValueError(f"features in {self.features_path} are incomplete; rerun the featurize stage")
        return load_npy(self.features_path, mmap=True), load_npy(self.q_path)


def featurize_split(
    projector: GradientProjector,
    split: ImageSplit,
    store: FeatureStore,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    desc: str = "featurize",
) -> None:
    """Fill ``store`` with the projected margin gradients and out-to-loss weights of ``split``.

    Args:
        shard: ``(rank, world_size)``: this process computes batches ``b`` with ``b % world_size == rank``.
            With one process per rank writing disjoint rows of the same memmap, only the flags need merging,
            which :func:`merge_done_flags` does after a barrier.
    """
    feats, done, q = store.open()
    rank, world = shard
    starts = [s for b, s in enumerate(range(0, len(split), batch_size)) if b % world == rank]
    todo = [s for s in starts if not done[s : s + batch_size].all()]
    labels = torch.as_tensor(split.labels)
    order = np.concatenate([np.arange(s, min(s + batch_size, len(split))) for s in todo]) if todo else []
    bar = tqdm(total=len(order), desc=desc, unit="ex", disable=not progress, leave=False)
    for idx, x in iter_batches(split.images, np.asarray(order, dtype=np.int64), batch_size, num_workers):
        y = labels[idx].to(device)
        features, logits = projector(x.to(device), y)
        feats[idx] = features.detach().float().cpu().numpy()
        q[idx] = out_to_loss(logits, y).float().cpu().numpy()
        feats.flush()
        done[idx] = True
        _save_flags(store, done, q, rank, world)
        bar.update(len(idx))
    bar.close()
    del feats


def _save_flags(store: FeatureStore, done: np.ndarray, q: np.ndarray, rank: int, world: int) -> None:
    if world == 1:
        save_npy(store.q_path, q)
        save_npy(store.done_path, done)
    else:
        save_npy(store.folder / f"{store.split}_q.rank{rank}.npy", q)
        save_npy(store.folder / f"{store.split}_done.rank{rank}.npy", done)


def merge_done_flags(store: FeatureStore, world: int) -> None:
    """Combine the per-rank flags and weights of a sharded run into the store's own files."""
    done, q = load_npy(store.done_path).copy(), load_npy(store.q_path).copy()
    for rank in range(world):
        rank_done_path = store.folder / f"{store.split}_done.rank{rank}.npy"
        if rank_done_path.exists():
            rank_done = load_npy(rank_done_path)
            rank_q = load_npy(store.folder / f"{store.split}_q.rank{rank}.npy")
            q[rank_done] = rank_q[rank_done]
            done |= rank_done
    save_npy(store.q_path, q)
    save_npy(store.done_path, done)
