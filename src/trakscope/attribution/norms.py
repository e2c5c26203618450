"""Normalization layers as tracked kinds: ``y = x_hat * weight + bias`` per feature ``c``.

The per-example gradient is small and computed exactly from the saved input and the output gradient:
``G`` is ``[C, n]`` with one column per trainable parameter, ``sum g * x_hat`` (weight) and ``sum g`` (bias),
summed over every position but the example's. ``P_in`` is the ``[n, n]`` identity and ``P_out`` a seeded
Gaussian, so each layer contributes ``k_out * n`` features. In eval mode BatchNorm normalises with its
running statistics, so ``x_hat`` depends on the example alone; LayerNorm, RMSNorm and GroupNorm always do.
"""

from __future__ import annotations

import sys
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from .tracked import CallState, FactoredLayer


class AffineNormLayer(FactoredLayer):
    """Shared by the normalization kinds; a kind says how to normalise and which axes are its features."""

    def input_factor(self, d_in: int, k_in: int, gen: torch.Generator) -> torch.Tensor:
        return torch.eye(d_in)

    def dims(self) -> tuple[int, int]:
        return len(self.params), self.params[0].numel()

    def gradient_matrix(self, grads: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([g.reshape(g.shape[0], -1) for g in grads], -1)

    @abstractmethod
    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """``x_hat``, the input normalised as the layer does before its affine map (same shape as ``x``)."""

    @abstractmethod
    def per_feature(self, t: torch.Tensor) -> torch.Tensor:
        """``[b, ...]`` like the input -> ``[b, C]`` summed over all but the feature axes."""

    def exact_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``[b, ...]`` input and output gradient -> ``[b, C, n]`` per-example ``G``."""
        cols = [self.per_feature(g * self.normalized(x)) if n == "weight" else self.per_feature(g)
                for n in self.param_names]
        return torch.stack(cols, -1)

    def block_of(self, saved: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.project_exact(self.exact_grad(saved, g))


class BatchNormLayer(AffineNormLayer):
    """``nn.BatchNorm{1,2,3}d`` with running statistics (eval mode), ``G = [C, (gamma, beta)]``."""

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (isinstance(module, _BatchNorm) and type(module).forward is _BatchNorm.forward
                and module.running_mean is not None)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.module
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - bn.running_mean.view(shape)) * torch.rsqrt(bn.running_var.view(shape) + bn.eps)

    def per_feature(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum(tuple(range(2, t.dim()))) if t.dim() > 2 else t


class BatchNormActLayer(BatchNormLayer):
    """timm's ``BatchNormAct2d``: ``act(drop(batch_norm(x)))`` in one module, so its output gradient is not the
    norm's. The gradient is taken where the norm's output enters ``drop`` (identity in eval mode), before ``act``
    (often in place) runs."""

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        timm_norm_act = sys.modules.get("timm.layers.norm_act")  # loaded whenever a timm model exists
        kind = getattr(timm_norm_act, "BatchNormAct2d", None)
        return (kind is not None and isinstance(module, kind) and type(module).forward is kind.forward
                and module.running_mean is not None)

    def attach(self, state: CallState) -> list[RemovableHandle]:
        inputs: list[torch.Tensor] = []

        def norm_input(module: nn.Module, args: tuple) -> None:
            if not state.paused:
                inputs.append(args[0])

        def norm_output(module: nn.Module, args: tuple) -> None:
            if not state.paused:
                self.track(state, inputs.pop(), args[0])

        return [self.module.register_forward_pre_hook(norm_input),
                self.module.drop.register_forward_pre_hook(norm_output)]


class LayerNormLayer(AffineNormLayer):
    """``nn.LayerNorm`` and ``nn.RMSNorm`` over the trailing ``normalized_shape`` (features: all of it)."""

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward) or (
            isinstance(module, nn.RMSNorm) and type(module).forward is nn.RMSNorm.forward)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.RMSNorm):
            return F.rms_norm(x, m.normalized_shape, None, m.eps)
        return F.layer_norm(x, m.normalized_shape, None, None, m.eps)

    def per_feature(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, self.params[0].numel()).sum(1)


class GroupNormLayer(AffineNormLayer):
    """``nn.GroupNorm`` on ``[b, C, ...]`` (features: the channels)."""

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, nn.GroupNorm) and type(module).forward is nn.GroupNorm.forward

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.module.num_groups, None, None, self.module.eps)

    def per_feature(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)
