"""The TRAK store: a folder that holds projected features per checkpoint and split, their kernels and scores.

Layout (every name in this folder is written here and nowhere else)::

    meta.json                       featurization settings and the model's architecture (parameter names and
                                    shapes); a reopened store with other settings or another architecture is refused
    checkpoints.json                [{"id": k, "digest": sha256 of the state dict}] in registration order; with the
                                    Kronecker projector, "kronecker_check": its self-check on checkpoint k's first
                                    featurized batch (probe size, tolerance, largest passing error, and the layers
                                    whose features are computed exactly instead, with their parameters and errors)
    record.json                     size, sha256, shape and dtype of every finished file (``store_files``)
    .lock                           held (``flock``) by the one process writing the store, with its pid
    rows/{split}.npy                int64 [n, 3] per row: digest of its inputs, its label, 1 once seen; a row
                                    given other inputs or another label later is refused
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

A run folder keeps its store at ``features/`` and asks for its score matrices at its own paths, each with its
record at :func:`score_record_path`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from ..io import create_memmap, save_npy, write_json
from .store_files import StoreError, StoreRecord, open_npy, read_store_json, writer_lock

__all__ = ["STORE_FORMAT", "SplitFeatures", "SplitRows", "StoreError", "TrakStore", "score_record_path"]

STORE_FORMAT = 1
LEGACY_SETTINGS = {"precision": "fp32"}  # what a meta.json written before a setting existed means
RESTART = "start again with TRAK(..., overwrite=True), or use another store folder"


def score_record_path(matrix: Path | str) -> Path:
    """The JSON record beside a score matrix (``scores/test.npy`` -> ``scores/test.json``): how it was made."""
    return Path(matrix).with_suffix(".json")


class SplitFeatures:
    """One split's features under one checkpoint: ``[n, dim]`` features, ``[n]`` done flags and ``[n]`` Q.

    ``n`` and ``dim`` are what a writer expects (0 for a reader, which takes the files' own shapes).
    """

    def __init__(self, folder: Path, split: str, n: int, dim: int, record: StoreRecord):
        self.folder, self.split, self.n, self.dim, self.record = Path(folder), split, n, dim, record
        self.features_path = self.folder / f"{split}.npy"
        self.done_path = self.folder / f"{split}_done.npy"
        self.q_path = self.folder / f"{split}_q.npy"
        self.remedy = (f"delete {self.done_path} to featurize split {split!r} under this checkpoint again, or "
                       f"{RESTART}")

    @property
    def files(self) -> tuple[Path, Path, Path]:
        return self.features_path, self.done_path, self.q_path

    def rank_paths(self, rank: int) -> tuple[Path, Path]:
        """``(done, q)`` files of one torchrun rank."""
        return self.folder / f"{self.split}_done.rank{rank}.npy", self.folder / f"{self.split}_q.rank{rank}.npy"

    def _read(self, path: Path, mmap: str | None = None, shape: tuple[int, ...] | None = None,
              dtype: type | None = None) -> np.ndarray:
        """A recorded file, verified; an unrecorded one (a split being written) with its header checked."""
        if self.record.recorded(path):
            self.record.check(path, self.remedy)
        return open_npy(path, self.remedy, mmap=mmap, shape=shape, dtype=dtype)

    def open(self) -> tuple[np.memmap, np.ndarray, np.ndarray]:
        """(features for writing, done flags, q), creating empty files on first use; a complete split read-only.

        Raises:
            StoreError: a file is damaged or has another shape (another dataset or projection width).
        """
        if self.is_complete():
            feats, q = self.load()
            return feats, np.ones(len(q), dtype=bool), q
        self.folder.mkdir(parents=True, exist_ok=True)
        if any(self.record.recorded(p) for p in self.files):  # being rewritten: its old entries no longer hold
            self.record.update(drop=self.files)
        if self.features_path.exists() and self.done_path.exists():
            n = (self.n,)
            feats = self._read(self.features_path, "r+", (self.n, self.dim), np.float32)  # size checked: never grown
            return feats, self._read(self.done_path, None, n, np.bool_), self._read(self.q_path, None, n, np.float32)
        feats = create_memmap(self.features_path, (self.n, self.dim), np.float32)
        done, q = np.zeros(self.n, dtype=bool), np.zeros(self.n, dtype=np.float32)
        save_npy(self.q_path, q)
        save_npy(self.done_path, done)
        return feats, done, q

    def done(self) -> np.ndarray:
        """bool ``[n]`` rows already written (all False before the first batch)."""
        return self._read(self.done_path) if self.done_path.exists() else np.zeros(self.n, dtype=bool)

    def is_complete(self) -> bool:
        """All rows written and recorded (a split is recorded once its last row is written)."""
        return self.record.recorded(self.done_path) and bool(self.done().all())

    def seal(self) -> bool:
        """Record the split's files once every row is written (rank 0); returns whether it is complete."""
        if self.is_complete():
            return True
        if not self.done_path.exists():
            return False
        done = self.done()
        if not done.all():
            return False
        self._read(self.features_path, "r", (len(done), self.dim) if self.dim else None, np.float32)
        self._read(self.q_path, None, (len(done),), np.float32)
        self.record.update(add=self.files)
        return True

    def save_flags(self, done: np.ndarray, q: np.ndarray, rank: int = 0, world: int = 1) -> None:
        """Record finished rows: in the split's own files, or in this rank's files under torchrun."""
        done_path, q_path = (self.done_path, self.q_path) if world == 1 else self.rank_paths(rank)
        save_npy(q_path, q)
        save_npy(done_path, done)

    def merge_ranks(self, world: int) -> None:
        """Fold every rank's flags and weights into the split's own files (rank 0, after a barrier)."""
        done, q = self._read(self.done_path).copy(), self._read(self.q_path).copy()
        for rank in range(world):
            done_path, q_path = self.rank_paths(rank)
            if done_path.exists():
                rank_done = open_npy(done_path, self.remedy, shape=done.shape, dtype=np.bool_)
                q[rank_done] = open_npy(q_path, self.remedy, shape=q.shape, dtype=np.float32)[rank_done]
                done |= rank_done
        save_npy(self.q_path, q)
        save_npy(self.done_path, done)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(features memmap ``[n, dim]``, q ``[n]``) of a complete split, each verified against the record.

        Raises:
            StoreError: some rows were never featurized, or a file is damaged.
        """
        if not self.is_complete():
            raise StoreError(f"features in {self.features_path} are incomplete; featurize the {self.split!r} split "
                             "under this checkpoint first")
        q = self._read(self.q_path, None, None, np.float32)
        feats = self._read(self.features_path, "r", None, np.float32)
        if feats.ndim != 2 or len(feats) != len(q):
            raise StoreError(f"{self.features_path} holds {list(feats.shape)}, expected {len(q)} rows; {self.remedy}")
        return feats, q


class SplitRows:
    """What one split's rows are, shared by every checkpoint: int64 ``[n, 3]``, per row the digest of its inputs,
    its label and 1 once seen. A row given other inputs or another label than before is refused, so a split is
    always the same examples in the same order (other data, a permutation, relabelling or a subset are caught)."""

    def __init__(self, path: Path, split: str, n: int, record: StoreRecord):
        self.path, self.split, self.n, self.record = Path(path), split, n, record
        self.remedy = f"pass the data featurized before, in the same order, or {RESTART}"
        self.table: np.ndarray | None = None

    def open(self) -> None:
        """Open (or create) the table for this split's ``n`` rows.

        Raises:
            StoreError: the store holds this split with another number of rows, or the table is damaged.
        """
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.table = create_memmap(self.path, (self.n, 3), np.int64)
            return
        sealed = self.record.recorded(self.path)
        if sealed:
            self.record.check(self.path, RESTART)
        table = open_npy(self.path, RESTART, mmap="r" if sealed else "r+", dtype=np.int64)
        if table.shape != (self.n, 3):
            raise StoreError(f"{self.record.root} holds split {self.split!r} with {len(table)} examples, and {self.n} "
                             f"are given now: featurize other data (a subset, another dataset) into another store, "
                             f"or {RESTART}")
        self.table = table

    def check(self, idx: np.ndarray, digests: np.ndarray, labels: np.ndarray) -> None:
        """Refuse rows ``idx`` (int64 ``[b]``) whose inputs' ``digests`` or ``labels`` (int64 ``[b]``) differ from
        what they were; remember the rows seen for the first time.

        Raises:
            StoreError: naming the first differing row, and whether its inputs or its label differ.
        """
        rows = np.asarray(self.table[idx])
        known = rows[:, 2] == 1
        other_input, other_label = known & (rows[:, 0] != digests), known & (rows[:, 1] != labels)
        where = f"of split {self.split!r} in {self.record.root}"
        if other_input.any():
            i = int(np.argmax(other_input))
            raise StoreError(f"row {idx[i]} {where} has other inputs than when it was featurized (other data, or the "
                             f"same examples in another order; {int(other_input.sum())} of {len(idx)} rows of this "
                             f"batch differ); {self.remedy}")
        if other_label.any():
            i = int(np.argmax(other_label))
            raise StoreError(f"row {idx[i]} {where} has label {labels[i]}, featurized with label {rows[i, 1]} "
                             f"({int(other_label.sum())} of {len(idx)} rows of this batch have other labels); "
                             f"{self.remedy}")
        if not known.all():
            new = idx[~known]
            self.table[new, 0], self.table[new, 1], self.table[new, 2] = digests[~known], labels[~known], 1
            self.table.flush()

    def seal(self) -> None:
        """Record the table once every row was seen (rank 0)."""
        if self.path.exists() and not self.record.recorded(self.path):
            table = open_npy(self.path, RESTART, mmap="r", shape=(self.n, 3), dtype=np.int64)
            if (table[:, 2] == 1).all():
                self.record.update(add=(self.path,))


class TrakStore:
    """Paths, small records and checked reads of one TRAK store folder (see the module docstring).

    Construction does no I/O. Every method that writes holds the store's lock (:meth:`writing`).
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.record = StoreRecord(self.root)

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    @property
    def checkpoints_path(self) -> Path:
        return self.root / "checkpoints.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def rows_path(self, split: str) -> Path:
        return self.root / "rows" / f"{split}.npy"

    def bookkeeping(self) -> list[Path]:
        """The store's own bookkeeping files that exist (its record, its lock, each split's rows), which it keeps
        up to date and verifies itself while it writes: a run folder's record leaves them to the store."""
        rows = sorted((self.root / "rows").glob("*.npy")) if (self.root / "rows").is_dir() else []
        return [p for p in (self.record.path, self.lock_path, *rows) if p.exists()]

    def ckpt_dir(self, k: int) -> Path:
        return self.root / f"ckpt{k}"

    def features(self, k: int, split: str, n: int, dim: int) -> SplitFeatures:
        return SplitFeatures(self.ckpt_dir(k), split, n, dim, self.record)

    def rows(self, split: str, n: int) -> SplitRows:
        return SplitRows(self.rows_path(split), split, n, self.record)

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

    # --- checked reads and recorded writes ----------------------------------------------------------
    def writing(self) -> AbstractContextManager[None]:
        """The store's writer lock for a block (reentrant; a second process is refused with one line)."""
        return writer_lock(self.root)

    def inside(self, path: Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root.resolve())

    def read_npy(self, path: Path, mmap: bool = False, remedy: str | None = None) -> np.ndarray:
        """An array the store wrote, verified against its record (a file outside the store: its header only)."""
        remedy = remedy or f"delete it to compute it again, or {RESTART}"
        if self.inside(path):
            self.record.check(path, remedy)
        return open_npy(Path(path), remedy, mmap="r" if mmap else None)

    def read_json(self, path: Path, remedy: str | None = None) -> Any:
        """A JSON file the store wrote, verified against its record (a file outside the store: parsed only)."""
        remedy = remedy or f"delete it to compute it again, or {RESTART}"
        if self.inside(path):
            self.record.check(path, remedy)
        return read_store_json(Path(path), remedy)

    def save_npy(self, path: Path, array: np.ndarray) -> None:
        """Write an array atomically and record it (when inside the store)."""
        save_npy(path, array)
        self.recorded(path)

    def write_json(self, path: Path, obj: Any) -> None:
        """Write JSON atomically and record it (when inside the store)."""
        write_json(path, obj)
        self.recorded(path)

    def recorded(self, *paths: Path) -> None:
        """Record finished files that lie inside the store."""
        inside = tuple(Path(p) for p in paths if self.inside(p))
        if inside:
            with self.writing():
                self.record.update(add=inside)

    # --- settings, architecture, data -------------------------------------------------------------
    def check_meta(self, settings: dict, architecture: list, overwrite: bool = False) -> None:
        """Write ``meta.json`` on first use; later, refuse other settings or another architecture (unless
        ``overwrite`` clears the store).

        Args:
            architecture: ``[[name, shape], ...]`` of the model's state dict.

        Raises:
            StoreError: the store holds features made with other settings or another model, or is damaged.
        """
        wanted = {"format": STORE_FORMAT, **settings}
        with self.writing():
            if overwrite and self.root.exists():
                self.clear(keep_lock=True)
            if not self.meta_path.exists():
                self.write_json(self.meta_path, {**wanted, "architecture": architecture})
                return
            verified = self.record.recorded(self.meta_path)
            meta = self.read_json(self.meta_path, RESTART) if verified else read_store_json(self.meta_path, RESTART)
            legacy = isinstance(meta, dict) and "architecture" not in meta
            if legacy:  # a store from before records and architectures: adopt what it holds as it is
                self._adopt()
            elif not verified:
                raise StoreError(f"{self.record.path} is missing (or does not record meta.json), so nothing in "
                                 f"{self.root} can be verified; {RESTART}")
            _refuse_other(self.root, wanted, meta, architecture)
            if legacy:
                self.write_json(self.meta_path, {**meta, "architecture": architecture})

    def _adopt(self) -> None:
        """Record the finished files of a store written before stores kept a record (each header checked)."""
        partial = set()
        for done in self.root.glob("ckpt*/*_done.npy"):
            if not open_npy(done, RESTART, dtype=np.bool_).all():
                partial |= set(self.features(int(done.parent.name[4:]), done.name[:-9], 0, 0).files)
        files = [p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".")
                 and ".rank" not in p.name and p != self.record.path and p not in partial]
        for p in files:
            if p.suffix == ".npy":
                open_npy(p, RESTART)
            elif p.suffix == ".json":
                read_store_json(p, RESTART)
        self.record.update(add=tuple(files))

    def clear(self, keep_lock: bool = False) -> None:
        """Remove what a store writes (meta, records, rows, ``ckpt*`` and ``scores``; the lock file unless
        ``keep_lock``), nothing else."""
        if not self.root.is_dir():
            return
        with self.writing():
            for p in [*self.root.glob("ckpt*"), self.root / "scores", self.root / "rows"]:
                if p.is_dir():
                    shutil.rmtree(p)
            for p in (self.meta_path, self.checkpoints_path, self.record.path):
                p.unlink(missing_ok=True)
        if not keep_lock:
            self.lock_path.unlink(missing_ok=True)

    def forget(self, k: int) -> None:
        """Drop checkpoint ``k`` (its record, features and kernel) and the store's score matrices, which averaged
        over it: the checkpoint is being remade, and will be featurized again."""
        if not self.root.is_dir():
            return
        with self.writing():
            gone = [p for p in self.record.files() if p.startswith((f"ckpt{k}/", "scores/"))]
            shutil.rmtree(self.ckpt_dir(k), ignore_errors=True)
            shutil.rmtree(self.root / "scores", ignore_errors=True)
            self.record.update(drop=tuple(self.root / p for p in gone))
            records = self.checkpoint_records()
            if any(r["id"] == k for r in records):
                self.write_json(self.checkpoints_path, [r for r in records if r["id"] != k])

    def split_files(self, k: int, split: str) -> list[Path]:
        """``[features, done flags, q]`` of one split under checkpoint ``k``."""
        return list(self.features(k, split, 0, 0).files)

    def forget_split(self, k: int, split: str) -> None:
        """Drop one split's features under checkpoint ``k`` and what was computed from them (the checkpoint's
        kernel, the store's score matrices), so that featurizing it again starts afresh."""
        if not self.root.is_dir():
            return
        with self.writing():
            files = [*self.split_files(k, split), self.gram_path(k), self.inverse_path(k), self.lambda_path(k)]
            scores = [self.root / p for p in self.record.files() if p.startswith("scores/")]
            for p in files:
                p.unlink(missing_ok=True)
            shutil.rmtree(self.root / "scores", ignore_errors=True)
            self.record.update(drop=(*files, *scores))

    def checkpoint_records(self) -> list[dict]:
        """``[{"id", "digest"}]`` of the registered checkpoints."""
        if not self.checkpoints_path.exists():
            return []
        records = self.read_json(self.checkpoints_path, RESTART)
        if not (isinstance(records, list) and all(isinstance(r, dict) and {"id", "digest"} <= r.keys()
                                                  for r in records)):
            raise StoreError(f"{self.checkpoints_path} is damaged (not a list of checkpoint records); {RESTART}")
        return records

    def register(self, digest: str, k: int | None) -> int:
        """The id of the checkpoint with ``digest``: ``k`` if given (recorded), else its recorded id or the next one.

        Raises:
            StoreError: ``k`` is already recorded with other weights.
        """
        with self.writing():
            records = self.checkpoint_records()
            by_id = {r["id"]: r["digest"] for r in records}
            if k is None:
                k = next((r["id"] for r in records if r["digest"] == digest), max(by_id, default=-1) + 1)
            elif k in by_id and by_id[k] != digest:
                raise StoreError(f"checkpoint {k} of {self.root} was featurized with other weights "
                                 f"(digest {by_id[k][:12]}, now {digest[:12]}); use another checkpoint_id or store")
            if k not in by_id:
                self.write_json(self.checkpoints_path,
                                sorted([*records, {"id": k, "digest": digest}], key=lambda r: r["id"]))
            return k

    def kronecker_check(self, k: int) -> dict | None:
        """The Kronecker projector's self-check recorded for checkpoint ``k`` (None before its first featurization).

        Raises:
            StoreError: the record is damaged.
        """
        check = next((r.get("kronecker_check") for r in self.checkpoint_records() if r["id"] == k), None)
        if check is not None and not (isinstance(check, dict) and isinstance(check.get("exact"), list) and all(
                isinstance(e, dict) and isinstance(e.get("layer"), str) for e in check["exact"])):
            raise StoreError(f"{self.checkpoints_path} holds a damaged Kronecker self-check for checkpoint {k}; "
                             f"{RESTART}")
        return check

    def kronecker_exact(self) -> dict[str, list[str]]:
        """Checkpoint id (as a string) -> the layers its Kronecker self-check sent to the exact path; only the
        checkpoints with some (empty when every layer passed, or with the dense projector)."""
        checks = {r["id"]: self.kronecker_check(r["id"]) for r in self.checkpoint_records()}
        return {str(k): [e["layer"] for e in c["exact"]] for k, c in checks.items() if c and c["exact"]}

    def record_kronecker_check(self, k: int, check: dict) -> None:
        """Keep the Kronecker projector's self-check of registered checkpoint ``k`` (:meth:`kronecker_check`)."""
        with self.writing():
            records = [{**r, "kronecker_check": check} if r["id"] == k else r for r in self.checkpoint_records()]
            self.write_json(self.checkpoints_path, records)

    def checkpoint_ids(self) -> list[int]:
        """Registered checkpoint ids, ascending."""
        return [r["id"] for r in self.checkpoint_records()]


def _refuse_other(root: Path, wanted: dict, meta: Any, architecture: list) -> None:
    """Raise unless ``meta`` (a store's ``meta.json``) holds the ``wanted`` settings and ``architecture``."""
    if not isinstance(meta, dict):
        raise StoreError(f"{root / 'meta.json'} is damaged (not a settings record); {RESTART}")
    # before kron_k_used was recorded, the blocks were built at kron_k itself
    old = {**LEGACY_SETTINGS, "kron_k_used": meta.get("kron_k"), **meta}
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in wanted.items() if old.get(k) != v]
    if "architecture" in meta:
        arch = architecture_change(meta["architecture"], architecture)
        diff += [arch] if arch else []
    if diff:
        raise StoreError(f"{root} holds TRAK features made with other settings or another model ({'; '.join(diff)}); "
                         "use another store folder, or overwrite=True to discard them")


def architecture_change(old: list, new: list) -> str | None:
    """What differs between two ``[[name, shape], ...]`` architectures, in a phrase (None: the same)."""
    before = {str(n): list(s) for n, s in old} if isinstance(old, list) else {}
    after = {str(n): list(s) for n, s in new}
    if before == after:
        return None
    reshaped = [f"{n} {before[n]} -> {after[n]}" for n in after if n in before and before[n] != after[n]]
    gone, added = [n for n in before if n not in after], [n for n in after if n not in before]
    parts = [f"{len(reshaped)} parameters of another shape (e.g. {reshaped[0]})" if reshaped else "",
             f"{len(gone)} only in the store's model (e.g. {gone[0]})" if gone else "",
             f"{len(added)} only in this model (e.g. {added[0]})" if added else ""]
    return "the model's architecture differs: " + ", ".join(p for p in parts if p)
