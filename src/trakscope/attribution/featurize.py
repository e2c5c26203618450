"""Featurization: projected output gradients of one split under one checkpoint, streamed into a store.

Batches arrive as ``(indices, inputs, labels)``: ``indices`` are the rows of the split they fill. A batch's
done flags are set only after its features are flushed, and a batch whose rows are all done is skipped,
so a rerun computes only what is missing. Because the model is in eval mode, an example's features do not
depend on the rest of its batch, so a resumed run gives identical features. Memory does not grow with the
number of examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..models.calling import Inputs, batch_size_of, inputs_to, split_batch
from ..progress import progress_bar
from .projector import GradientProjector
from .store import SplitFeatures

IndexedBatch = tuple[np.ndarray, Inputs, torch.Tensor]


def numbered(batches: Iterable[Any], shard: tuple[int, int] = (0, 1)) -> Iterator[IndexedBatch]:
    """Number the rows of plain batches in iteration order: batch ``b`` fills the rows that follow batch ``b - 1``.

    Args:
        batches: ``(inputs, labels)`` pairs or Hugging Face dicts (:func:`~trakscope.models.calling.split_batch`),
            always in the same order (a ``DataLoader`` without shuffling).
        shard: ``(rank, world_size)``: only batches with ``b % world_size == rank`` are yielded.
    """
    rank, world = shard
    start = 0
    for b, batch in enumerate(batches):
        inputs, labels = split_batch(batch)
        n = batch_size_of(inputs)
        if b % world == rank:
            yield np.arange(start, start + n), inputs, labels
        start += n


def featurize_into(
    projector: GradientProjector,
    batches: Iterable[IndexedBatch],
    store: SplitFeatures,
    out_to_loss,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    desc: str = "featurize",
) -> None:
    """Fill ``store`` with projected output gradients and out-to-loss weights, skipping finished rows.

    Args:
        out_to_loss: ``(logits, labels) -> [b]`` TRAK's Q weight (the output function's).
        shard: ``(rank, world_size)`` of this process; with several ranks writing disjoint rows of one memmap,
            each records its flags in its own files (:meth:`SplitFeatures.merge_ranks` folds them).
    """
    feats, done, q = store.open()
    rank, world = shard
    bar = progress_bar(total=int((~done).sum()), desc=desc, unit="ex", disable=not progress, leave=False)
    for idx, inputs, labels in batches:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0 or done[idx].all():
            continue
        if idx.max() >= store.n:
            raise ValueError(f"batch rows reach {idx.max()}, but the {store.split!r} split has {store.n} rows")
        y = torch.as_tensor(labels).to(device)
        features, logits = projector(inputs_to(inputs, device), y)
        feats[idx] = features.detach().float().cpu().numpy()
        q[idx] = out_to_loss(logits, y).float().cpu().numpy()
        feats.flush()
        done[idx] = True
        store.save_flags(done, q, rank, world)
        bar.update(len(idx))
    bar.close()
    del feats
