"""The TRAK store: a folder that holds projected features per checkpoint and split, their kernels and scores.

Layout (every name in this folder is written here and nowhere else)::

    meta.json                       featurization settings (a reopened store with other settings is refused)
    checkpoints.json                [{"id": k, "digest": sha256 of the state dict}] in registration order
    ckpt{k}/{split}.npy             float32 [n, dim] projected output gradients (memory-mapped)
    ckpt{k}/{split}_done.npy        bool [n]: rows written (a batch's flags are set after its rows are flushed)
    ckpt{k}/{split}_q.npy           float32 [n] out-to-loss weights Q
    ckpt{k}/{split}_{done,q}.rank{r}.npy   per-rank flags of a torchrun job, merged by rank 0
    ckpt{k}/xtx.npy                 float64 [dim, dim] X^T X of the training split (another ridge needs no new pass)
    ckpt{k}/xtx_inv.npy             float64 [dim, dim] (X^T X + lambda I)^-1 of the training split
    ckpt{k}/lambda.json             {"lambda": ..., "ridge": ..., "train": split}, written before the inverse
    scores/{train}__{target}.npy    float32 [n_train, n_target] scores, with {train}__{target}.json beside it
    scores/self__{train}.npy        float32 [n_train] self-influence, with self__{train}.json beside it
    scores/self__{train}__ckpt{ids}.npy   the same over a subset of checkpoints (ids joined by "-")

A run folder keeps its store at ``features/`` and asks for its score matrices at its own paths.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import create_memmap, load_npy, read_json, save_npy, write_json

STORE_FORMAT = 1
LEGACY_SETTINGS = {"precision": "fp32"}  # what a meta.json written before a setting existed means


class StoreError(Exception):
    """The store holds other settings, is incomplete, or a file in it is damaged; the message says which."""


class SplitFeatures:
    """One split's features under one checkpoint: ``[n, dim]`` features, ``[n]`` done flags and ``[n]`` Q."""

    def __init__(self, folder: Path, split: str, n: int, dim: int):
        self.folder, self.split, self.n, self.dim = Path(folder), split, n, dim
        self.features_path = self.folder / f"{split}.npy"
        self.done_path = self.folder / f"{split}_done.npy"
        self.q_path = self.folder / f"{split}_q.npy"

    def rank_paths(self, rank: int) -> tuple[Path, Path]:
        """``(done, q)`` files of one torchrun rank."""
        return self.folder / f"{self.split}_done.rank{rank}.npy", self.folder / f"{self.split}_q.rank{rank}.npy"

    def open(self) -> tuple[np.memmap, np.ndarray, np.ndarray]:
        """(writable features memmap, done flags, q), creating empty files on first use.

        Raises:
            StoreError: the files on disk have another shape (another dataset or projection width).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.features_path.exists() and self.done_path.exists():
            feats = np.load(self.features_path, mmap_mode="r+", allow_pickle=False)
            if feats.shape != (self.n, self.dim):
                raise StoreError(f"{self.features_path} has shape {feats.shape}, expected {(self.n, self.dim)}; "
                                 "it belongs to other data or settings: use another store or overwrite it")
            return feats, load_npy(self.done_path).copy(), load_npy(self.q_path).copy()
        feats = create_memmap(self.features_path, (self.n, self.dim), np.float32)
        done, q = np.zeros(self.n, dtype=bool), np.zeros(self.n, dtype=np.float32)
        save_npy(self.q_path, q)
        save_npy(self.done_path, done)
        return feats, done, q

    def done(self) -> np.ndarray:
        """bool ``[n]`` rows already written (all False before the first batch)."""
        return load_npy(self.done_path).copy() if self.done_path.exists() else np.zeros(self.n, dtype=bool)

    def is_complete(self) -> bool:
        """All rows written."""
        return self.done_path.exists() and bool(load_npy(self.done_path).all())

    def save_flags(self, done: np.ndarray, q: np.ndarray, rank: int = 0, world: int = 1) -> None:
        """Record finished rows: in the split's own files, or in this rank's files under torchrun."""
        done_path, q_path = (self.done_path, self.q_path) if world == 1 else self.rank_paths(rank)
        save_npy(q_path, q)
        save_npy(done_path, done)

    def merge_ranks(self, world: int) -> None:
        """Fold every rank's flags and weights into the split's own files (rank 0, after a barrier)."""
        done, q = load_npy(self.done_path).copy(), load_npy(self.q_path).copy()
        for rank in range(world):
            done_path, q_path = self.rank_paths(rank)
            if done_path.exists():
                rank_done = load_npy(done_path)
                q[rank_done] = load_npy(q_path)[rank_done]
                done |= rank_done
        save_npy(self.q_path, q)
        save_npy(self.done_path, done)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(features memmap ``[n, dim]``, q ``[n]``) of a complete split.

        Raises:
            StoreError: some rows were never featurized.
        """
        if not self.is_complete():
            raise StoreError(f"features in {self.features_path} are incomplete; featurize the {self.split!r} split "
                             "under this checkpoint first")
        return load_npy(self.features_path, mmap=True), load_npy(self.q_path)


class TrakStore:
    """Paths and small records of one TRAK store folder (see the module docstring). Construction does no I/O."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    @property
    def checkpoints_path(self) -> Path:
        return self.root / "checkpoints.json"

    def ckpt_dir(self, k: int) -> Path:
        return self.root / f"ckpt{k}"

    def features(self, k: int, split: str, n: int, dim: int) -> SplitFeatures:
        return SplitFeatures(self.ckpt_dir(k), split, n, dim)

    def inverse_path(self, k: int) -> Path:
        return self.ckpt_dir(k) / "xtx_inv.npy"

    def gram_path(self, k: int) -> Path:
        return self.ckpt_dir(k) / "xtx.npy"

    def lambda_path(self, k: int) -> Path:
        return self.ckpt_dir(k) / "lambda.json"

    def scores_path(self, train: str, target: str) -> Path:
        return self.root / "scores" / f"{train}__{target}.npy"

    def self_path(self, train: str, checkpoints: Sequence[int] | None = None) -> Path:
        """Self-influence over every checkpoint, or over the ``checkpoints`` subset (its own file)."""
        subset = "" if checkpoints is None else "__ckpt" + "-".join(str(k) for k in sorted(checkpoints))
        return self.root / "scores" / f"self__{train}{subset}.npy"

    def check_meta(self, settings: dict, overwrite: bool = False) -> None:
        """Write ``meta.json`` on first use; later, refuse other settings (unless ``overwrite`` clears the store).

        Raises:
            StoreError: the store holds features made with other settings.
        """
        wanted = {"format": STORE_FORMAT, **settings}
        if self.meta_path.exists() and not overwrite:
            meta = read_json(self.meta_path)
            # before kron_k_used was recorded, the blocks were built at kron_k itself
            old = {**LEGACY_SETTINGS, "kron_k_used": meta.get("kron_k"), **meta}
            diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in wanted.items() if old.get(k) != v]
            if diff:
                raise StoreError(f"{self.root} holds TRAK features made with other settings ({'; '.join(diff)}); "
                                 "use another store folder, or overwrite=True to discard them")
            return
        if overwrite and self.root.exists():
            self.clear()
        write_json(self.meta_path, wanted)

    def clear(self) -> None:
        """Remove what a store writes (meta, checkpoint records, ``ckpt*`` and ``scores``), nothing else."""
        for p in [*self.root.glob("ckpt*"), self.root / "scores"]:
            if p.is_dir():
                shutil.rmtree(p)
        for p in (self.meta_path, self.checkpoints_path):
            p.unlink(missing_ok=True)

    def forget(self, k: int) -> None:
        """Drop checkpoint ``k`` (its record, features and kernel) and the store's score matrices, which averaged
        over it: the checkpoint is being remade, and will be featurized again."""
        shutil.rmtree(self.ckpt_dir(k), ignore_errors=True)
        shutil.rmtree(self.root / "scores", ignore_errors=True)
        records = self.checkpoint_records()
        if any(r["id"] == k for r in records):
            write_json(self.checkpoints_path, [r for r in records if r["id"] != k])

    def split_files(self, k: int, split: str) -> list[Path]:
        """``[features, done flags, q]`` of one split under checkpoint ``k``."""
        f = self.features(k, split, 0, 0)
        return [f.features_path, f.done_path, f.q_path]

    def forget_split(self, k: int, split: str) -> None:
        """Drop one split's features under checkpoint ``k`` and what was computed from them (the checkpoint's
        kernel, the store's score matrices), so that featurizing it again starts afresh."""
        for p in [*self.split_files(k, split), self.gram_path(k), self.inverse_path(k), self.lambda_path(k)]:
            p.unlink(missing_ok=True)
        shutil.rmtree(self.root / "scores", ignore_errors=True)

    def checkpoint_records(self) -> list[dict]:
        """``[{"id", "digest"}]`` of the registered checkpoints."""
        return read_json(self.checkpoints_path) if self.checkpoints_path.exists() else []

    def register(self, digest: str, k: int | None) -> int:
        """The id of the checkpoint with ``digest``: ``k`` if given (recorded), else its recorded id or the next one.

        Raises:
            StoreError: ``k`` is already recorded with other weights.
        """
        records = self.checkpoint_records()
        by_id = {r["id"]: r["digest"] for r in records}
        if k is None:
            k = next((r["id"] for r in records if r["digest"] == digest), max(by_id, default=-1) + 1)
        elif k in by_id and by_id[k] != digest:
            raise StoreError(f"checkpoint {k} of {self.root} was featurized with other weights "
                             f"(digest {by_id[k][:12]}, now {digest[:12]}); use another checkpoint_id or store")
        if k not in by_id:
            write_json(self.checkpoints_path, sorted([*records, {"id": k, "digest": digest}], key=lambda r: r["id"]))
        return k

    def checkpoint_ids(self) -> list[int]:
        """Registered checkpoint ids, ascending."""
        return [r["id"] for r in self.checkpoint_records()]
