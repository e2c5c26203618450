"""What ``detect`` reads from each ensemble member's earliest kept checkpoint, before the network memorises.

A memorised wrong label has a high in-sample margin at the end of training, and the final checkpoints' TRAK
self-influence ranks like the loss it comes with (BENCHMARKS.md, regimes). The first checkpoint a member keeps
(``--checkpoints-per-model``, e.g. epoch 2 of 8) was taken before that: its self-influence and its margin come from
features already in the TRAK store, at no extra training or featurization.
"""

from __future__ import annotations

import numpy as np

from .. import dist
from ..attribution.store import TrakStore
from ..run_folder import RunFolder, checkpoint_key
from .run import Runtime, trak_engine


def early_checkpoint_ids(run: RunFolder) -> list[int] | None:
    """TRAK-store ids of every member's earliest kept checkpoint (ids are the order of ``models/``), or None when
    some member keeps a single checkpoint (imported checkpoints, ``--checkpoints-per-model 1``): then the earliest
    is the final one and there is nothing earlier to read."""
    keys = [checkpoint_key(p) for p in run.checkpoint_paths()]
    per_member: dict[int, int] = {}
    for m, _ in keys:
        per_member[m] = per_member.get(m, 0) + 1
    if not per_member or min(per_member.values()) < 2:
        return None
    first = {m: min(c for mm, c in keys if mm == m) for m in per_member}
    return [k for k, (m, c) in enumerate(keys) if c == first[m]]


def early_inputs(run: RunFolder, progress: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """``(self_influence, given_prob)`` at every member's earliest kept checkpoint, float64 ``[n_train]`` each.

    ``self_influence`` is TRAK's ``scores[i, i]`` averaged over those checkpoints only (written to
    ``detect/self_influence_early.npy``; cached in the TRAK store); ``given_prob`` is the probability of the given
    label there, from the out-to-loss weights stored with the features (``Q = 1 - p[y]`` of the margin). None when
    :func:`early_checkpoint_ids` is, or when the training features are no longer in ``features/`` (deleted to save
    space: the other scorers need only ``scores/``). Every rank calls this together (the engine's protocol under
    torchrun).
    """
    ids = early_checkpoint_ids(run)
    if ids is None or not _train_features_kept(run):
        return None
    trak = trak_engine(run, Runtime(device="cpu", progress=progress))  # scoring only: the network is not run
    path = run.early_self_path
    self_scores = trak.self_influence("train", out=path if dist.rank() == 0 else None, checkpoints=ids)
    run.seal(path)
    given = 1.0 - trak.out_to_loss("train", checkpoints=ids)
    return np.asarray(self_scores, dtype=np.float64), given


def _train_features_kept(run: RunFolder) -> bool:
    """Every checkpoint's training features are complete in ``features/`` (the engine scores only then)."""
    store = TrakStore(run.features_dir)
    return all(store.features(k, "train", 0, 0).is_complete() for k in range(len(run.checkpoint_paths())))
