"""The pluggable strategy that turns a batch into projected per-example gradients of the margin.

A :class:`GradientProjector` is built for one checkpoint (a model in eval mode, so BatchNorm uses
its running statistics and each example's gradient is independent of its batch) and a seed. Called
on a batch it returns the features ``P^T grad_theta margin(x_i, y_i)`` and the logits, so the caller
gets TRAK's out-to-loss weight from the same forward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class GradientProjector(ABC):
    """Projected per-example margin gradients for one checkpoint.

    Args:
        model: the checkpoint's network; it is put in eval mode and not modified.
        proj_dim: requested output dimension (a projector may document a different natural width;
            :attr:`dim` is what it returns).
        seed: seed of the random projection; the same seed gives the same projection.
    """

    name: str = "abstract"

    def __init__(self, model: nn.Module, proj_dim: int, seed: int):
        self.model = model.eval()
        self.proj_dim = proj_dim
        self.seed = seed

    @property
    def dim(self) -> int:
        """Width of the returned features."""
        return self.proj_dim

    @abstractmethod
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[b, 3, S, S]`` images, ``[b]`` labels -> (float32 ``[b, dim]`` features, ``[b, C]`` logits)."""


def make_projector(name: str, model: nn.Module, proj_dim: int, seed: int, proj_type: str = "rademacher",
                   kron_k: int = 16) -> GradientProjector:
    """The projector called ``name`` (``dense`` or ``kronecker``) for ``model``.

    ``proj_type`` sets the dense projector's entries; ``kron_k`` the Kronecker projector's per-layer input and
    output widths (each layer contributes ``kron_k ** 2`` features before the final map to ``proj_dim``).
    """
    if name == "dense":
        from .dense import DenseProjector

        return DenseProjector(model, proj_dim, seed, proj_type=proj_type)
    if name == "kronecker":
        from .kronecker import KroneckerProjector

        return KroneckerProjector(model, proj_dim, seed, k_in=kron_k, k_out=kron_k)
    raise ValueError(f"unknown projector {name!r}; choose dense or kronecker")
