"""The pluggable strategy that turns a batch into projected per-example gradients of the model output.

A :class:`GradientProjector` is built for one checkpoint (a model in eval mode, so BatchNorm uses
its running statistics and each example's gradient is independent of its batch), a seed and an output
function (:class:`~trakscope.attribution.output.ModelOutput`, the margin by default). Called on a batch it
returns the features ``P^T grad_theta f(x_i, y_i)`` and the logits, so the caller gets TRAK's out-to-loss
weight (``projector.output.out_to_loss(logits, labels)``) from the same forward pass. Only trainable
parameters (``requires_grad=True``) are differentiated; frozen ones are part of the fixed function.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ..models.calling import Inputs
from .output import Margin, ModelOutput


class GradientProjector(ABC):
    """Projected per-example gradients of ``output`` for one checkpoint.

    Args:
        model: the checkpoint's network; it is put in eval mode and not modified.
        proj_dim: requested output dimension (a projector may document a different natural width;
            :attr:`dim` is what it returns).
        seed: seed of the random projection; the same seed gives the same projection.
        output: the function of ``(logits, labels)`` whose gradient is projected; :class:`Margin` if None.
    """

    def __init__(self, model: nn.Module, proj_dim: int, seed: int, output: ModelOutput | None = None):
        self.model = model.eval()
        self.proj_dim = proj_dim
        self.seed = seed
        self.output = output if output is not None else Margin()

    @property
    def dim(self) -> int:
        """Width of the returned features."""
        return self.proj_dim

    @abstractmethod
    def __call__(self, inputs: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (a ``[b, ...]`` tensor, or a dict of them passed as ``model(**inputs)``), ``[b]`` labels
        -> (float32 ``[b, dim]`` features, ``[b, C]`` logits)."""
