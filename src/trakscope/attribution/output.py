"""The function whose per-example gradient TRAK attributes, and its out-to-loss weight.

TRAK's default for classification is the margin: for logits ``z`` and label ``y``,
``margin = z_y - logsumexp_{k != y} z_k`` (the log-odds of the correct class). The loss's derivative with
respect to the margin is ``-(1 - p_y)``, so TRAK weights training examples by ``Q = 1 - p_y``
(arXiv 2303.14186, Sec. 3.3).

To attribute something else, subclass :class:`ModelOutput` (as traker's ``AbstractModelOutput``): e.g. the
margin of a chosen class instead of the label. Both methods see a batch, return one value per example and
must be vmap-safe (no data-dependent Python control flow, no ``.item()``): the dense projector calls
``__call__`` under ``torch.func.vmap`` with a batch of one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[b, C]`` logits, ``[b]`` labels -> ``[b]`` margins ``z_y - logsumexp_{k != y} z_k``."""
    correct = logits.gather(-1, labels.view(-1, 1)).squeeze(-1)
    is_label = torch.arange(logits.shape[-1], device=logits.device) == labels.view(-1, 1)  # vmap-safe one-hot
    others = logits.masked_fill(is_label, float("-inf"))
    return correct - others.logsumexp(dim=-1)


def out_to_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[b, C]`` logits, ``[b]`` labels -> ``[b]`` weights ``1 - softmax(logits)_y``."""
    p = torch.softmax(logits.detach().double(), dim=-1).gather(-1, labels.view(-1, 1)).squeeze(-1)
    return (1.0 - p).to(logits.dtype)


class ModelOutput(ABC):
    """The output function ``f(x_i, y_i)`` whose parameter gradient is projected, and TRAK's weight ``Q``."""

    @abstractmethod
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[b, C]`` logits, ``[b]`` labels -> ``[b]`` outputs (differentiable; vmap-safe)."""

    @abstractmethod
    def out_to_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[b, C]`` logits, ``[b]`` labels -> ``[b]`` weights ``Q`` (minus d loss / d output; no gradient)."""


class Margin(ModelOutput):
    """TRAK's default: the margin :func:`margin`, weighted by :func:`out_to_loss` ``= 1 - p_y``."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin(logits, labels)

    def out_to_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return out_to_loss(logits, labels)
