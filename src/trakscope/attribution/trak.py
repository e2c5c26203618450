"""``TRAK``: attribution for any classifier, in a few lines of a notebook.

::

    from trakscope import TRAK

    trak = TRAK(model, store="runs/mine/trak", proj_dim=2048)  # Kronecker projector by default
    for state in checkpoints:                                  # state dicts or checkpoint files
        trak.featurize(train_loader, split="train", checkpoint=state)
        trak.featurize(test_loader, split="test", checkpoint=state)
    scores = trak.scores("train", "test")  # float32 [n_train, n_test], memory-mapped
    self_influence = trak.self_influence()  # float32 [n_train]

Loaders yield ``(inputs, labels)`` or Hugging Face dicts (``pixel_values``, ``labels``) in a fixed order;
the model may return logits or an object with ``.logits``. The output function is the margin unless
``output=`` says otherwise. Everything is kept in ``store``: a rerun skips finished batches and finished
matrices, and a store made with other settings is refused. Under ``torchrun`` every rank calls the same
methods; batches are shared out by rank and rank 0 computes the scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import dist
from ..config import TrakConfig
from ..io import read_json, save_npy
from ..models.calling import Inputs, inputs_to
from ..models.weights import read_state_file, unwrapped
from ..precision import featurize_precision, memory_format, to_memory_format
from .featurize import IndexedBatch, RowCount, check_fixed_order, featurize_into, numbered
from .kronecker import KroneckerProjector, widened_k
from .output import Margin, ModelOutput
from .projector import GradientProjector
from .projectors import make_projector
from .score import NonFiniteFeatures, gram, regularized_inverse, trak_scores
from .store import SplitFeatures, StoreError, TrakStore, score_record_path
from .views import apply_view, check_view

Checkpoint = Mapping[str, torch.Tensor] | str | Path | None


_DEFAULTS = TrakConfig()  # the CLI's defaults are the Python API's: one place sets them


class TRAK:
    """TRAK scores of a model's training examples on any targets, averaged over checkpoints.

    Args:
        model: the network (any ``nn.Module``), moved to ``device``; checkpoints are loaded into it in eval mode
            while a method runs, and its weights and train/eval mode are put back when it returns.
        store: folder for features, kernels and scores (created; an existing one is resumed). It records the
            settings, the model's architecture and each split's rows, and refuses other ones.
        projector: ``kronecker`` (per-layer Kronecker-factored projection, about one backward pass) or
            ``dense`` (exact per-example gradients times a dense JL matrix: the slow reference).
        proj_dim: width of the projected features (0: the Kronecker projector's per-layer blocks, unmixed).
        kron_k: Kronecker projector's per-layer input and output width.
        proj_type: ``rademacher`` or ``normal`` entries of the dense projector.
        ridge: ``lambda = ridge * mean(diag(X^T X))`` of each checkpoint's kernel ``(X^T X + lambda I)^-1``.
        seed: seed of the random projections (checkpoint ``k`` uses ``seed + k``).
        output: the function attributed (a :class:`~trakscope.attribution.output.ModelOutput`); default the margin
            ``z_y - logsumexp_{k != y} z_k`` with out-to-loss weight ``1 - p_y``.
        device: where featurization runs.
        precision: ``fp32``, ``bf16`` (the forward pass under bf16 autocast, the projection in float32; Kronecker
            projector only) or ``auto`` (bf16 where ``device`` does it in hardware); recorded in the store.
        channels_last: lay out the model and 4-d inputs channels-last (same features up to float rounding).
        overwrite: discard a store made with other settings, model or data instead of refusing it.

    Raises:
        SettingError: a setting outside the bounds of its :class:`~trakscope.config.TrakConfig` field (the same
            as the command line's; e.g. ``ridge`` must be > 0).
    """

    def __init__(self, model: nn.Module, store: Path | str, *, projector: str = _DEFAULTS.projector,
                 proj_dim: int = _DEFAULTS.proj_dim, kron_k: int = _DEFAULTS.kron_k,
                 proj_type: str = _DEFAULTS.proj_type, ridge: float = _DEFAULTS.ridge, seed: int = _DEFAULTS.seed,
                 output: ModelOutput | None = None, device: torch.device | str = "cpu", progress: bool = True,
                 precision: str = "fp32", channels_last: bool = False, overwrite: bool = False):
        # the command line's own check and bounds (a SettingError naming the flag), before anything is made
        TrakConfig(projector=projector, proj_dim=proj_dim, kron_k=kron_k, proj_type=proj_type, ridge=ridge, seed=seed,
                   precision=precision)
        self.memory_format = memory_format(channels_last)
        self.model = model.to(device)
        if channels_last:  # otherwise the model keeps the layout it came with
            self.model.to(memory_format=self.memory_format)
        self.store = TrakStore(store)
        self.projector, self.proj_dim, self.kron_k, self.proj_type = projector, proj_dim, kron_k, proj_type
        self.output = Margin() if output is None else output
        self.ridge, self.seed, self.device, self.progress = ridge, seed, device, progress
        self.precision = featurize_precision(precision, projector, device)
        # the Kronecker blocks are widened where they would be narrower than proj_dim (small networks)
        self.kron_k_used = widened_k(self.model, kron_k, proj_dim) if projector == "kronecker" else kron_k
        settings = {"projector": projector, "proj_dim": proj_dim, "kron_k": kron_k, "kron_k_used": self.kron_k_used,
                    "proj_type": proj_type, "seed": seed, "output": type(self.output).__name__,
                    "precision": self.precision}
        if dist.rank() == 0:
            self.store.check_meta(settings, architecture(self.model), overwrite=overwrite)
        dist.barrier()

    # --- featurize ------------------------------------------------------------------------------
    def featurize(self, data: Iterable[Any], *, split: str, checkpoint: Checkpoint = None,
                  checkpoint_id: int | None = None, n: int | None = None) -> None:
        """Project the output gradients of every example of ``data`` under one checkpoint.

        Args:
            data: batches in a fixed order, every example once: ``(inputs, labels)`` or dicts. A ``DataLoader``
                that shuffles or drops its last batch is refused.
            split: the name the examples are stored under (``train`` for the examples being attributed). Every
                checkpoint must see the same examples, in the same order, with the same labels.
            checkpoint: a state dict, or a ``.safetensors`` / ``.pt`` file, loaded into the model while this runs;
                None = the model's current weights. The same weights get the same checkpoint id.
            checkpoint_id: the checkpoint's id (default: found by the weights' digest, else the next free id).
            n: number of examples (default ``len(data.dataset)``).

        Raises:
            ValueError: the loader does not give every example once, in a fixed order.
            StoreError: the store holds this split with other examples, labels or another number of rows, the
                batches hold another number of rows than ``n``, or another process is writing the store.
        """
        check_fixed_order(data)
        if n is None:
            n = _dataset_len(data)
        count = RowCount()
        self._featurize(numbered(data, (dist.rank(), dist.world_size()), count), split, n, checkpoint,
                        checkpoint_id, count)

    def featurize_batches(self, batches: Iterable[IndexedBatch], *, split: str, n: int,
                          checkpoint: Checkpoint = None, checkpoint_id: int | None = None) -> int:
        """Like :meth:`featurize` for batches that carry their rows: ``(indices, inputs, labels)``. Returns the id.

        Under torchrun each rank passes its own share of the rows; every rank must call this together.
        """
        return self._featurize(batches, split, n, checkpoint, checkpoint_id, None)

    def _featurize(self, batches: Iterable[IndexedBatch], split: str, n: int, checkpoint: Checkpoint,
                   checkpoint_id: int | None, count: RowCount | None) -> int:
        """Featurize under the store's lock, with the user's model put back afterwards; ``count`` (plain batches):
        the rows must add up to ``n``."""
        with self.store.writing(), restored(self.model):
            rows, rank, world = self.store.rows(split, n), dist.rank(), dist.world_size()
            if rank == 0:  # first: a split of another size is refused before anything is written
                rows.open()
            k = self.load_checkpoint(checkpoint, checkpoint_id)
            projector = self._projector(k)
            store = self.store.features(k, split, n, projector.dim)
            if rank == 0 and world > 1:  # create the shared files, and fold in an interrupted job's per-rank flags
                store.open()
                store.merge_ranks(world)
            dist.barrier()
            if rank > 0:
                rows.open()
            batches = ((idx, to_memory_format(x, self.memory_format), y) for idx, x, y in batches)
            featurize_into(projector, batches, store, self.output.out_to_loss, self.device, (rank, world),
                           self.progress and rank == 0, f"featurize ckpt {k} {split}", rows)
            if rank == 0:
                self._record_check(projector, k)
            if count is not None and count.rows != n:
                raise StoreError(f"the batches for split {split!r} held {count.rows} examples, but n={n}; pass "
                                 "every example once (or n= the number the batches hold)")
            self._finish(store, rows, rank, world)
        return k

    def _finish(self, store: SplitFeatures, rows: Any, rank: int, world: int) -> None:
        """Merge the ranks' flags and record the split's files once complete (rank 0; every rank waits)."""
        dist.barrier()
        if rank == 0:
            if world > 1:
                store.merge_ranks(world)
            rows.seal()
            store.seal()
        dist.barrier()

    def pending(self, split: str, n: int, checkpoint_id: int) -> np.ndarray:
        """int64 rows of ``split`` not yet featurized under checkpoint ``checkpoint_id``."""
        return np.flatnonzero(~self.store.features(checkpoint_id, split, n, 0).done()).astype(np.int64)

    def load_checkpoint(self, checkpoint: Checkpoint = None, checkpoint_id: int | None = None) -> int:
        """Load ``checkpoint`` into the model (None: keep its weights), put it in eval mode, and return its id in
        the store. The model stays so: :meth:`featurize` and :meth:`features` put the user's model back."""
        if checkpoint is not None:
            state = read_state_file(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
            # a state saved from DistributedDataParallel or torch.compile: its wrapper's prefix off, as `run` does
            self.model.load_state_dict(unwrapped(state, self.model.state_dict()), strict=True)
        self.model.eval()
        digest = state_digest(self.model.state_dict())
        if dist.world_size() > 1 and checkpoint_id is None:
            raise ValueError("under torchrun, pass checkpoint_id= so that every rank names the checkpoint alike")
        k = self.store.register(digest, checkpoint_id) if dist.rank() == 0 else checkpoint_id
        dist.barrier()
        return k

    def _projector(self, k: int) -> GradientProjector:
        """Checkpoint ``k``'s projector; a Kronecker one takes the self-check the store kept for ``k``, if any."""
        projector = make_projector(self.projector, self.model, self.proj_dim, self.seed + k, self.proj_type,
                                   self.kron_k_used, output=self.output, precision=self.precision)
        check = self.store.kronecker_check(k) if isinstance(projector, KroneckerProjector) else None
        if check is not None:
            projector.adopt(check)
        return projector

    def _record_check(self, projector: GradientProjector, k: int) -> None:
        """Keep a Kronecker projector's first self-check under checkpoint ``k``: every later projector of ``k``
        adopts it, so a resumed or later split computes the same layers exactly."""
        check = getattr(projector, "check", None)
        if check is not None and self.store.kronecker_check(k) is None:
            self.store.record_kronecker_check(k, check)

    def features(self, inputs: Inputs, labels: torch.Tensor, checkpoint: Checkpoint = None,
                 checkpoint_id: int | None = None) -> tuple[np.ndarray, int]:
        """float32 ``[b, dim]`` features of one batch under a checkpoint (not stored), and the checkpoint's id."""
        with restored(self.model):
            k = self.load_checkpoint(checkpoint, checkpoint_id)
            inputs = inputs_to(to_memory_format(inputs, self.memory_format), self.device)
            feats, _ = self._projector(k)(inputs, torch.as_tensor(labels).to(self.device))
        return feats.detach().float().cpu().numpy(), k

    # --- score ----------------------------------------------------------------------------------
    def checkpoints(self, *splits: str) -> list[int]:
        """Registered checkpoint ids; with ``splits``, only those whose every named split is complete."""
        ids = self.store.checkpoint_ids()
        return [k for k in ids if all(self._complete(k, s) for s in splits)]

    def _complete(self, k: int, split: str) -> bool:
        return self.store.features(k, split, 0, 0).is_complete()

    def _split_features(self, k: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self.store.features(k, split, 0, 0).load()

    def _require(self, *splits: str) -> list[int]:
        ids = self.store.checkpoint_ids()
        if not ids:
            raise StoreError(f"{self.store.root} has no featurized checkpoint yet; call featurize() first")
        missing = [(k, s) for k in ids for s in splits if not self._complete(k, s)]
        if missing:
            what = ", ".join(f"checkpoint {k} split {s!r}" for k, s in missing)
            raise StoreError(f"{self.store.root}: not featurized yet: {what}. Every checkpoint counts in TRAK's "
                             "average, so featurize each split under every checkpoint")
        return ids

    def gram(self, k: int, train: str = "train") -> np.ndarray:
        """float64 ``[dim, dim]`` ``X_k^T X_k`` of the training features (cached: a new ridge costs one inverse)."""
        path = self.store.gram_path(k)
        if path.exists():  # dropped with its checkpoint's features whenever those are redone (TrakStore.forget*)
            return self.store.read_npy(path)
        xtx = gram(self._split_features(k, train)[0])
        if not np.isfinite(xtx).all():
            raise NonFiniteFeatures(k, train)
        with self.store.writing():
            self.store.save_npy(path, xtx)
        return xtx

    def kernel(self, k: int, train: str = "train") -> tuple[np.ndarray, float]:
        """float64 ``[dim, dim]`` ``(X_k^T X_k + lambda I)^-1`` of checkpoint ``k`` (cached), and its lambda."""
        inv_path, lam_path = self.store.inverse_path(k), self.store.lambda_path(k)
        wanted = {"ridge": self.ridge, "train": train}
        if inv_path.exists() and lam_path.exists():
            record = self.store.read_json(lam_path)
            if isinstance(record, dict) and all(record.get(key) == v for key, v in wanted.items()):
                return self.store.read_npy(inv_path), float(record["lambda"])
        xtx = self.gram(k, train)
        inv, lam = regularized_inverse(xtx, self.ridge)
        with self.store.writing():
            self.store.write_json(lam_path, {"lambda": lam, **wanted})  # first: an inverse always has its lambda
            self.store.save_npy(inv_path, inv)
        return inv, lam

    def scores(self, train: str = "train", target: str = "test", *, out: Path | str | None = None,
               checkpoints: Sequence[int] | None = None, view: str = "raw") -> np.ndarray:
        """float32 ``[n_train, n_target]`` ``scores[train, target]``, averaged over every checkpoint (memory-mapped).

        ``scores[i, j] = mean_k(X_k A_k^-1 Phi_k^T)[i, j] * mean_k(Q_k)[i]``; higher = training example ``i``
        raises target ``j``'s output more. Written to ``out`` (default: inside the store) with a ``.json``
        record beside it; a finished matrix with the same checkpoints and ridge is reused. ``checkpoints``
        restricts the average to those ids (e.g. to ask what fewer models would have given).

        ``view`` (:data:`~trakscope.attribution.views.VIEWS`): ``raw``, the counterfactual scores above (the
        stored matrix, memory-mapped), or ``relative``, each row over the square root of the training example's
        self-influence under the same checkpoints (a new array in memory; the stored matrix is unchanged).
        """
        check_view(view)
        out = Path(out) if out is not None else self.store.scores_path(train, target)
        ids = self._subset(self._require(train, target), checkpoints)
        record = {"train": train, "target": target, "checkpoints": ids, "ridge": self.ridge,
                  "score": "mean_k(X_k A_k^-1 Phi_k^T) * mean_k(Q_k)"}
        if dist.rank() == 0 and not self._finished(out, record):
            with self.store.writing():
                self._write_scores(ids, train, target, out, record)
        dist.barrier()
        raw = self.store.read_npy(out, mmap=True)
        if view == "raw":
            return raw
        return apply_view(raw, self.self_influence(train, checkpoints=checkpoints), view)

    def _subset(self, ids: list[int], checkpoints: Sequence[int] | None) -> list[int]:
        """``checkpoints`` (sorted, deduplicated), checked against the featurized ``ids``; None = all of them."""
        if checkpoints is None:
            return ids
        if len(checkpoints) == 0:
            raise ValueError("checkpoints= names no checkpoint; pass None to average over all of them")
        unknown = sorted(set(checkpoints) - set(ids))
        if unknown:
            raise StoreError(f"{self.store.root} has no featurized checkpoints {unknown}; it has {ids}")
        return sorted(set(checkpoints))

    def _finished(self, path: Path, record: dict) -> bool:
        """The matrix at ``path`` exists and its record says it was made from the same checkpoints and ridge.

        Inside the store both are verified against the store's record (a damaged one is an error naming it);
        outside it (a run folder's ``scores/``), an unreadable record means the matrix is made again.
        """
        rec_path = score_record_path(path)
        if not (Path(path).exists() and rec_path.exists()):
            return False
        if self.store.inside(path):
            old = self.store.read_json(rec_path)
            self.store.read_npy(path, mmap=True)
        else:
            try:
                old = read_json(rec_path)
            except ValueError:  # a damaged record (JSONDecodeError, UnicodeDecodeError): not trusted, remade
                return False
        return isinstance(old, dict) and all(old.get(k) == v for k, v in record.items())

    def _write_scores(self, ids: list[int], train: str, target: str, out: Path, record: dict) -> None:
        xs, qs, invs, lams = [], [], [], []
        for k in ids:
            x, q = self._split_features(k, train)
            inv, lam = self.kernel(k, train)
            xs.append(x)
            qs.append(q)
            invs.append(inv)
            lams.append(lam)
        targets = [self._split_features(k, target)[0] for k in ids]
        for k, t in zip(ids, targets):
            if not np.isfinite(t).all():
                raise NonFiniteFeatures(k, target)
        trak_scores(xs, invs, targets, np.mean(qs, axis=0), out_path=out)
        self.store.recorded(out)
        self.store.write_json(score_record_path(out), {**record, "lambda": lams, "proj_dim": int(xs[0].shape[1]),
                                                       "shape": [int(xs[0].shape[0]), int(targets[0].shape[0])]})

    def self_influence(self, train: str = "train", *, out: Path | str | None = None,
                       checkpoints: Sequence[int] | None = None) -> np.ndarray:
        """float32 ``[n_train]`` ``scores[i, i]``: how much each training example raises its own output.

        Cached in the store (a finished one with the same checkpoints and ridge is reused) and copied to ``out``
        if given. ``checkpoints`` restricts the average, Q included, to those ids (e.g. each model's earliest
        checkpoint, before it memorises); the subset is kept in its own file.
        """
        ids = self._subset(self._require(train), checkpoints)
        path = self.store.self_path(train, None if checkpoints is None else ids)
        record = {"train": train, "checkpoints": ids, "ridge": self.ridge, "score": "self-influence"}
        if dist.rank() == 0 and not self._finished(path, record):
            with self.store.writing():
                xs, qs, invs = zip(*[(*self._split_features(k, train), self.kernel(k, train)[0]) for k in ids])
                _, self_inf = trak_scores(list(xs), list(invs), None, np.mean(qs, axis=0))
                self.store.save_npy(path, self_inf)
                self.store.write_json(score_record_path(path), record)
        dist.barrier()
        values = self.store.read_npy(path)
        if out is not None:
            save_npy(out, values)
        return values

    def out_to_loss(self, split: str = "train", *, checkpoints: Sequence[int] | None = None) -> np.ndarray:
        """float64 ``[n]`` the out-to-loss weights ``Q`` of ``split``, averaged over the checkpoints (or a subset).

        For the default margin output ``Q = 1 - p[given label]`` under each checkpoint (in eval mode, as
        featurized), so ``1 - out_to_loss()`` is the probability of the given label.
        """
        ids = self._subset(self._require(split), checkpoints)
        return np.mean([np.asarray(self._split_features(k, split)[1], dtype=np.float64) for k in ids], axis=0)

    def score_inputs(self, inputs: Inputs, labels: torch.Tensor, checkpoints: Sequence[Checkpoint],
                     train: str = "train") -> np.ndarray:
        """float32 ``[n_train, b]`` scores of a new batch (featurized on the fly under every checkpoint, not stored).

        Args:
            checkpoints: the same checkpoints, in id order, that the training split was featurized under.
        """
        ids = self._require(train)
        if len(checkpoints) != len(ids):
            raise ValueError(f"{len(ids)} checkpoints were featurized, {len(checkpoints)} given")
        xs, qs, invs, phis = [], [], [], []
        for k, state in zip(ids, checkpoints):
            phi, _ = self.features(inputs, labels, state, k)
            x, q = self._split_features(k, train)
            xs.append(x)
            qs.append(q)
            invs.append(self.kernel(k, train)[0])
            phis.append(phi)
        scores, _ = trak_scores(xs, invs, phis, np.mean(qs, axis=0))
        return scores


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (identifies a checkpoint)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _dataset_len(data: Any) -> int:
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    raise ValueError("cannot tell how many examples the batches hold; pass n=")


def architecture(model: nn.Module) -> list[list]:
    """``[[name, shape], ...]`` of the model's state dict: what a store's features were made with."""
    return [[name, list(t.shape)] for name, t in model.state_dict().items()]


@contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """Put the model's weights (a CPU copy of its state dict) and each module's train/eval mode back after the
    block, so that featurizing under checkpoints leaves the user's model as it was."""
    state = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        model.load_state_dict(state, strict=True)
        for m, training in modes:
            m.training = training
