"""Featurization: projected output gradients of one split under one checkpoint, streamed into a store.

Batches arrive as ``(indices, inputs, labels)``: ``indices`` are the rows of the split they fill. A batch's
done flags are set only after its features are flushed, and a batch whose rows are all done is skipped,
so a rerun computes only what is missing. Because the model is in eval mode, an example's features do not
depend on the rest of its batch, so a resumed run gives identical features. Memory does not grow with the
number of examples.

Every batch's rows are checked against what the store saw in them before (a digest of each row's inputs, as the
tensors given, and its label as int64), so a split is always the same examples in the same order. A loader must
give every example once, in a fixed order: :func:`check_fixed_order` refuses a shuffling sampler and
``drop_last``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils import data as tud

from ..models.calling import Inputs, batch_size_of, inputs_to, split_batch
from ..progress import progress_bar
from .projector import GradientProjector
from .store import SplitFeatures, SplitRows, StoreError

IndexedBatch = tuple[np.ndarray, Inputs, torch.Tensor]
SHUFFLING = (tud.RandomSampler, tud.SubsetRandomSampler, tud.WeightedRandomSampler)
FIXED_ORDER = "DataLoader(dataset, batch_size=..., shuffle=False) or sampler=SequentialSampler(dataset)"


class RowCount:
    """Rows counted as batches stream past :func:`numbered` (``rows``), to compare with the split's size."""

    def __init__(self) -> None:
        self.rows = 0


def check_fixed_order(data: Any) -> None:
    """Refuse a ``DataLoader`` that would not give every example of its dataset once, in order.

    Batches that are not a ``DataLoader`` (a list, a generator) are taken in the order they come.

    Raises:
        ValueError: a shuffling sampler, ``drop_last=True``, or a sampler that skips, repeats or reorders indices;
            the message says how to pass a fixed-order loader.
    """
    if not isinstance(data, tud.DataLoader) or isinstance(data.dataset, tud.IterableDataset):
        return
    batches = data.batch_sampler  # None when the loader yields single examples (batch_size=None)
    sampler = getattr(batches, "sampler", None) if batches is not None else data.sampler
    if getattr(batches, "drop_last", False):
        raise ValueError(f"this DataLoader has drop_last=True, so the last {len(data.dataset) % batches.batch_size} "
                         f"examples would never be featurized; pass {FIXED_ORDER} without drop_last")
    if isinstance(sampler, SHUFFLING):
        raise ValueError(f"this DataLoader shuffles ({type(sampler).__name__}), so rows would be numbered in a random "
                         f"order; featurize needs every example once, in a fixed order: pass {FIXED_ORDER}")
    if type(sampler) is tud.SequentialSampler and (batches is None or type(batches) is tud.BatchSampler):
        return
    order = [int(i) for b in batches for i in b] if batches is not None else [int(i) for i in sampler]
    if order != list(range(len(data.dataset))):
        raise ValueError(f"this DataLoader's sampler ({type(sampler or batches).__name__}) does not give every "
                         f"index of its {len(data.dataset)} examples once, in order; featurize needs that: "
                         f"pass {FIXED_ORDER}")


def row_digests(inputs: Inputs) -> np.ndarray:
    """int64 ``[b]`` a digest of each example's inputs: their bytes as the tensors given, dtype and shape."""
    tensors = sorted(inputs.items()) if isinstance(inputs, dict) else [("", inputs)]
    hashes = None
    for name, t in tensors:
        t = torch.as_tensor(t).detach().to("cpu").contiguous()
        flat = t.reshape(len(t), -1).view(torch.uint8).numpy() if t.numel() else np.zeros((len(t), 0), np.uint8)
        kind = f"{name}:{t.dtype}:{tuple(t.shape[1:])};".encode()
        if hashes is None:
            hashes = [hashlib.blake2b(kind, digest_size=8) for _ in range(len(t))]
        for h, row in zip(hashes, flat):
            h.update(kind)
            h.update(row.tobytes())
    return np.array([int.from_bytes(h.digest(), "little", signed=True) for h in hashes or []], dtype=np.int64)


def numbered(batches: Iterable[Any], shard: tuple[int, int] = (0, 1), count: RowCount | None = None
             ) -> Iterator[IndexedBatch]:
    """Number the rows of plain batches in iteration order: batch ``b`` fills the rows that follow batch ``b - 1``.

    Args:
        batches: ``(inputs, labels)`` pairs or Hugging Face dicts (:func:`~trakscope.models.calling.split_batch`),
            always in the same order (a ``DataLoader`` without shuffling).
        shard: ``(rank, world_size)``: only batches with ``b % world_size == rank`` are yielded.
        count: counts every batch's rows (this rank's or not).
    """
    rank, world = shard
    start = 0
    for b, batch in enumerate(batches):
        inputs, labels = split_batch(batch)
        rows = np.arange(start, start + batch_size_of(inputs))
        start += len(rows)
        if count is not None:
            count.rows = start
        if b % world == rank:
            yield rows, inputs, labels


def featurize_into(
    projector: GradientProjector,
    batches: Iterable[IndexedBatch],
    store: SplitFeatures,
    out_to_loss,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    desc: str = "featurize",
    rows: SplitRows | None = None,
) -> np.ndarray:
    """Fill ``store`` with projected output gradients and out-to-loss weights, skipping finished rows.

    Args:
        out_to_loss: ``(logits, labels) -> [b]`` TRAK's Q weight (the output function's).
        shard: ``(rank, world_size)`` of this process; with several ranks writing disjoint rows of one memmap,
            each records its flags in its own files (:meth:`SplitFeatures.merge_ranks` folds them).
        rows: the split's row table (opened): every batch, finished or not, is checked against it first.

    Returns:
        bool ``[n]``: the rows written by this call.

    Raises:
        StoreError: a batch's rows reach past the split, or differ from what was featurized before.
    """
    feats, done, q = store.open()
    written = np.zeros(store.n, dtype=bool)
    bar = progress_bar(total=int((~done).sum()), desc=desc, unit="ex", disable=not progress, leave=False)
    for idx, inputs, labels in batches:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            continue
        if idx.max() >= store.n:
            raise StoreError(f"batch rows reach {idx.max()}, but the {store.split!r} split has {store.n} rows; "
                             "pass n= the number of examples the batches hold")
        if rows is not None:
            rows.check(idx, row_digests(inputs), torch.as_tensor(labels).to("cpu", torch.int64).numpy())
        if done[idx].all():
            continue
        _write_batch(projector, out_to_loss, device, (feats, q), idx, inputs, labels)
        done[idx] = written[idx] = True
        store.save_flags(done, q, *shard)
        bar.update(len(idx))
    bar.close()
    del feats
    return written


def _write_batch(projector: GradientProjector, out_to_loss, device: torch.device | str,
                 into: tuple[np.memmap, np.ndarray], idx: np.ndarray, inputs: Inputs, labels: torch.Tensor) -> None:
    """Project one batch into rows ``idx`` of the features (flushed) and of q."""
    feats, q = into
    y = torch.as_tensor(labels).to(device)
    features, logits = projector(inputs_to(inputs, device), y)
    feats[idx] = features.detach().float().cpu().numpy()
    q[idx] = out_to_loss(logits, y).float().cpu().numpy()
    feats.flush()
