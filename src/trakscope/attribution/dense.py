"""The reference projector: exact per-example gradients (torch.func.vmap) times a dense JL matrix.

The ``d x k`` projection matrix is never held whole: it is regenerated chunk by chunk of parameter rows
from a seed that depends only on (seed, chunk), so every batch sees the same matrix while memory stays
bounded by one ``chunk_rows x k`` block. This is what TRAK's CPU path does; it is exact and slow.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..models.calling import Inputs, batch_size_of, logits_of
from .output import ModelOutput
from .projector import GradientProjector


def projection_block(rows: int, k: int, seed: int, block: int, proj_type: str) -> torch.Tensor:
    """Block ``block`` (``[rows, k]``, float32) of the seeded projection, scaled by ``1/sqrt(k)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + block)
    if proj_type == "rademacher":
        mat = torch.randint(0, 2, (rows, k), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
    elif proj_type == "normal":
        mat = torch.randn(rows, k, generator=gen)
    else:
        raise ValueError(f"unknown projection type {proj_type!r}; choose rademacher or normal")
    return mat.div_(math.sqrt(k))


class DenseProjector(GradientProjector):
    """``features = G P`` with ``G`` the ``[b, d]`` per-example output gradients of all trainable parameters.

    Args:
        chunk_rows: parameter rows per generated block of ``P`` (memory ~ ``chunk_rows * k * 4`` bytes).
        proj_type: ``rademacher`` or ``normal`` entries.
        output: the function whose gradient is projected (the margin if None).
    """

    def __init__(self, model: nn.Module, proj_dim: int, seed: int, proj_type: str = "rademacher",
                 chunk_rows: int = 8192, output: ModelOutput | None = None):
        super().__init__(model, proj_dim, seed, output)
        self.proj_type = proj_type
        self.chunk_rows = chunk_rows
        self.params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        self.buffers = {k: v.detach() for k, v in model.named_buffers()}
        self.num_params = sum(p.numel() for p in self.params.values())

    def per_example_grads(self, inputs: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 ``[b, d]`` flattened output gradients of the trainable parameters in ``named_parameters``
        order, ``[b, C]`` logits). ``inputs`` is a ``[b, ...]`` tensor or a dict of them (``model(**inputs)``)."""

        def one(params, x, y):
            if isinstance(x, dict):
                out = functional_call(self.model, (params, self.buffers), (), {k: v.unsqueeze(0) for k, v in x.items()})
            else:
                out = functional_call(self.model, (params, self.buffers), (x.unsqueeze(0),))
            logits = logits_of(out)
            return self.output(logits, y.unsqueeze(0)).sum(), logits.squeeze(0)

        grads, logits = vmap(grad(one, has_aux=True), in_dims=(None, 0, 0))(self.params, inputs, labels)
        b = batch_size_of(inputs)
        flat = torch.cat([g.reshape(b, -1) for g in grads.values()], dim=1)
        return flat, logits

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """``[b, d]`` gradients -> ``[b, k]`` features, generating ``P`` block by block."""
        out = torch.zeros(flat.shape[0], self.proj_dim, dtype=torch.float32, device=flat.device)
        for block, start in enumerate(range(0, flat.shape[1], self.chunk_rows)):
            rows = min(self.chunk_rows, flat.shape[1] - start)
            mat = projection_block(rows, self.proj_dim, self.seed, block, self.proj_type).to(flat.device)
            out.addmm_(flat[:, start : start + rows], mat)
        return out

    def __call__(self, inputs: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat, logits = self.per_example_grads(inputs, labels)
        return self.project(flat), logits.detach()
