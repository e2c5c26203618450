"""DropConnect-masked copies of a checkpoint: a free ensemble for TRAK when there is one trained model.

TRAK averages its scores over checkpoints, and its quality grows with their diversity; a user who fine-tuned one
model has one checkpoint. A seeded mask that zeroes a fraction ``p`` of every conv / linear weight (the rest scaled
by ``1 / (1 - p)``) turns it into as many related models as wanted, with no training (a dropout ensemble in the
spirit of Deng et al. 2024, "Efficient Ensembles Improve Training Data Attribution"). BENCHMARKS.md ("LDS versus
training compute") measures it against independent models and trajectory checkpoints.
"""

from __future__ import annotations

import torch

from ..config import check_setting


def check_masks(masks: int, p: float) -> None:
    """Raise SettingError for a negative mask count or a drop fraction outside (0, 1) (``--masks``' and
    ``--mask-p``'s bounds)."""
    check_setting("trak", "masks", masks)
    check_setting("trak", "mask_p", p)


def dropconnect(state: dict[str, torch.Tensor], p: float, seed: int) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose floating tensors of two or more dimensions (conv and linear weights) keep each
    entry with probability ``1 - p``, scaled by ``1 / (1 - p)``; biases, norms and buffers are kept as they are.

    The masks depend only on ``seed`` and the tensors' shapes, in ``state``'s order: the same seed gives the same
    model on every machine and every rank.
    """
    check_masks(0, p)
    gen = torch.Generator().manual_seed(seed)
    keep = 1.0 - p
    out = {}
    for name, t in state.items():
        if t.is_floating_point() and t.dim() >= 2:
            mask = torch.rand(t.shape, generator=gen) < keep
            out[name] = torch.where(mask, t / keep, torch.zeros((), dtype=t.dtype))
        else:
            out[name] = t
    return out
