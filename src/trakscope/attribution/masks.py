"""DropConnect-masked copies of a checkpoint: a free ensemble for TRAK when there is one trained model.

TRAK averages its scores over checkpoints, and its quality grows with their diversity; a user who fine-tuned one
model has one checkpoint. A seeded mask that zeroes a fraction ``p`` of every conv / linear weight (the rest scaled
by ``1 / (1 - p)``) turns it into as many related models as wanted, with no training (a dropout ensemble in the
spirit of Deng et al. 2024, "Efficient Ensembles Improve Training Data Attribution"). BENCHMARKS.md ("LDS versus
training compute") measures it against independent models and trajectory checkpoints.

What is masked is decided per parameter from the model's modules (:func:`masked_weights`): the ``weight`` of every
``nn.Linear`` and ``nn.Conv*`` / ``nn.ConvTranspose*`` module, subclasses included, and the input-projection
weights of every ``nn.MultiheadAttention`` (``in_proj_weight``, or ``q_proj_weight`` / ``k_proj_weight`` /
``v_proj_weight`` when keys and values have their own widths). Those are linear maps' weights that the module
applies itself rather than through an ``nn.Linear``; its ``out_proj`` is an ``nn.Linear`` and masked as one, so
without them a torchvision ViT (built on ``nn.MultiheadAttention``) would have half of each attention masked
while timm's and Hugging Face's ViTs (``nn.Linear`` q/k/v) have all of it. Embedding tables, norms, biases
(``in_proj_bias`` too), buffers and free parameters (a ViT's ``cls_token`` and ``pos_embed``) are kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..config import check_setting

MASKED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d)
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
"""``nn.MultiheadAttention``'s own linear weights (the packed q/k/v projection, or the three separate ones)."""
SEED_SCHEME = ("torch.Generator seeded numpy.random.SeedSequence([proj_seed, member, mask]).generate_state(1, "
               "uint64)[0]; torch.rand(shape) per masked weight in state-dict order; kept where < 1 - p")


def check_masks(masks: int, p: float) -> None:
    """Raise SettingError for a negative mask count or a drop fraction outside (0, 1) (``--masks``' and
    ``--mask-p``'s bounds)."""
    check_setting("trak", "masks", masks)
    check_setting("trak", "mask_p", p)


def masked_weights(model: nn.Module) -> list[str]:
    """The state-dict names of the weights DropConnect masks, in module order: ``{module}.weight`` of every conv /
    linear module of ``model`` (:data:`MASKED_MODULES`, subclasses included) and the input-projection weights of
    every ``nn.MultiheadAttention`` (:data:`ATTENTION_WEIGHTS`, those it has)."""
    names = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, MASKED_MODULES) and isinstance(module.weight, torch.Tensor):
            names.append(prefix + "weight")
        elif isinstance(module, nn.MultiheadAttention):
            names += [prefix + w for w in ATTENTION_WEIGHTS if isinstance(getattr(module, w), torch.Tensor)]
    return names


def mask_generator(seed: int | Sequence[int]) -> torch.Generator:
    """A CPU generator seeded from ``numpy.random.SeedSequence(seed)``: the same on every machine, and distinct
    for distinct entropy tuples (``(proj_seed, member, mask)`` never collide, unlike ``seed + 1000 * member``)."""
    state = np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def dropconnect(state: dict[str, torch.Tensor], p: float, seed: int | Sequence[int],
                weights: nn.Module | Iterable[str]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose conv and linear weights (``nn.MultiheadAttention``'s input projections included)
    keep each entry with probability ``1 - p``, scaled by ``1 / (1 - p)``; every other tensor (embedding tables, norms,
    biases, buffers, free parameters such as a ``cls_token``) is kept as it is.

    Args:
        state: a state dict (any shapes).
        p: the fraction each mask zeroes, in (0, 1).
        seed: the entropy of the mask's ``numpy.random.SeedSequence`` (:func:`mask_generator`); trakscope's own
            masks use ``(proj_seed, member, mask)``.
        weights: the model whose conv / linear modules decide (:func:`masked_weights`), or, for a bare state
            dict, the names of its conv / linear weights; a name missing from ``state`` is an error.

    The masks depend only on ``seed`` and the masked tensors' shapes, in ``state``'s order: the same seed gives the
    same model on every machine and every rank.
    """
    check_masks(0, p)
    names = set(masked_weights(weights) if isinstance(weights, nn.Module) else weights)
    if missing := sorted(names - state.keys()):
        raise ValueError(f"dropconnect: weights {missing[:3]} are not in the state dict; pass the model the state "
                         "dict belongs to, or its conv / linear weight names")
    gen, keep = mask_generator(seed), 1.0 - p
    out = {}
    for name, t in state.items():
        if name in names and t.is_floating_point():
            mask = torch.rand(t.shape, generator=gen) < keep
            out[name] = torch.where(mask, t / keep, torch.zeros((), dtype=t.dtype))
        else:
            out[name] = t
    return out
