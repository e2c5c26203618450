"""TRAK's model output for classification: the margin, and its out-to-loss weight.

For logits ``z`` and label ``y``: ``margin = z_y - logsumexp_{k != y} z_k`` (the log-odds of the
correct class), and the loss's derivative with respect to the margin is ``-(1 - p_y)``, so TRAK
weights training examples by ``Q = 1 - p_y`` (arXiv 2303.14186, Sec. 3.3).
"""

from __future__ import annotations

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
