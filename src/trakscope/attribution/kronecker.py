"""Kronecker-factored projection of per-example gradients from one batched backward pass (LoGra).

For a Linear or Conv2d layer the per-example weight gradient is ``G = sum_s g_s a_s^T``: output
gradients ``g_s`` times input patches ``a_s`` over positions ``s``. Its projection
``P_out^T G P_in = sum_s (P_out^T g_s)(P_in^T a_s)^T`` is computed from the forward inputs and the
backward output gradients without ever forming ``G`` (Choe et al. 2024, arXiv 2405.13954). For a
convolution, ``P_in^T a_s`` over all patches is itself a convolution of the input with ``P_in``
reshaped as a ``[k_in, C_in, kh, kw]`` kernel, and the bias is an extra constant-1 input (the
kernel's bias). Grouped/depthwise convolutions and BatchNorm affine parameters have small per-example
gradients, which are computed exactly (BatchNorm is a depthwise 1x1 map of ``(x_hat, 1)``) and then
projected with the same ``P_out^T G P_in`` form. Each layer contributes a ``k_out * k_in`` block; the
concatenation (the *natural width*) is optionally mapped to ``proj_dim`` by one more seeded
Rademacher matrix. Entries are ``N(0, 1/k)`` (and ``+-1/sqrt(proj_dim)``), so inner products of
features estimate inner products of full gradients.

The model must be in eval mode, so each example's margin depends only on its own input and the
gradient of ``margin.sum()`` with respect to a layer's output is, row by row, each example's own.
Weight gradients are never computed: the backward pass asks only for gradients of layer outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .output import margin
from .projector import GradientProjector

_SAME_PADDING_CONVS = ("Conv2dStaticSamePadding", "Conv2dDynamicSamePadding")


@dataclass
class KroneckerLayer:
    """One covered layer: its projections and where its block sits in the natural-width features.

    Attributes:
        name: the module's qualified name in the model.
        module: the Linear, Conv2d or BatchNorm module.
        kind: ``linear``, ``conv`` (dense, Kronecker path), ``grouped`` (grouped conv, exact
            per-example gradient) or ``bn`` (BatchNorm affine, exact per-example gradient).
        p_in: ``[d_in, k_in]`` input projection; ``d_in`` counts a last row for the bias
            (for ``bn``: rows ``(gamma, beta)``). The weight gradient is flattened as
            ``weight.reshape(d_out, -1)`` with the bias gradient appended as the last column.
        p_out: ``[d_out, k_out]`` output projection.
        offset: first column of this layer's block in the natural-width features.
    """

    name: str
    module: nn.Module
    kind: str
    p_in: torch.Tensor
    p_out: torch.Tensor
    offset: int = 0
    kernel: torch.Tensor | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        """``k_out * k_in``: this layer's number of feature columns (row-major ``[k_out, k_in]``)."""
        return self.p_out.shape[1] * self.p_in.shape[1]


def _has_bias(module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None and module.bias.requires_grad


def _layer_kind(module: nn.Module) -> str | None:
    """The kind of a covered module, None for modules without trainable parameters of their own."""
    if not any(p.requires_grad for p in module.parameters(recurse=False)):
        return None
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return "linear"
    if isinstance(module, nn.Conv2d) and (
        type(module).forward is nn.Conv2d.forward or type(module).__name__ in _SAME_PADDING_CONVS
    ):
        return "conv" if module.groups == 1 else "grouped"
    if isinstance(module, _BatchNorm) and module.affine and module.track_running_stats:
        return "bn"
    raise ValueError(
        f"KroneckerProjector covers Linear, Conv2d and BatchNorm (with running statistics); "
        f"{type(module).__name__} has trainable parameters it cannot project. Use the dense projector."
    )


def _layer_dims(module: nn.Module, kind: str) -> tuple[int, int]:
    """``(d_in, d_out)`` of the flattened per-example gradient ``[d_out, d_in]`` (bias column included)."""
    if kind == "bn":
        return 2, module.num_features
    d_out = module.weight.shape[0]
    return module.weight[0].numel() + int(_has_bias(module)), d_out


def _gaussian(d: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``[d, k]`` with ``N(0, 1/k)`` entries, or the exact ``[d, d]`` identity when ``k >= d``."""
    if k >= d:
        return torch.eye(d)
    return torch.randn(d, k, generator=gen) / math.sqrt(k)


def _conv_kernel(layer: KroneckerLayer) -> torch.Tensor:
    """``P_in`` (weight rows) as a ``[k_in, C_in, kh, kw]`` convolution kernel."""
    w = layer.module.weight
    d = w[0].numel()
    return layer.p_in[:d].T.reshape(-1, *w.shape[1:]).contiguous()


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (as Conv2dDynamicSamePadding computes it) for one spatial side."""
    out = math.ceil(size / s)
    pad = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return pad // 2, pad - pad // 2


def _conv_input(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as ``F.conv2d`` sees it inside ``conv.forward``, and the padding still to apply there."""
    name = type(conv).__name__
    if name == "Conv2dStaticSamePadding":
        return conv.static_padding(x), tuple(conv.padding)
    if name == "Conv2dDynamicSamePadding":
        (top, bottom), (left, right) = (
            _same_pad(x.shape[-2], conv.weight.shape[-2], conv.stride[0], conv.dilation[0]),
            _same_pad(x.shape[-1], conv.weight.shape[-1], conv.stride[1], conv.dilation[1]),
        )
        return F.pad(x, [left, right, top, bottom]), tuple(conv.padding)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return x, (0, 0)
        pads = []
        for k, dil in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
            total = dil * (k - 1)
            pads += [total // 2, total - total // 2]
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        return F.pad(x, pads, mode=mode), (0, 0)
    if conv.padding_mode != "zeros":
        ph, pw = conv.padding
        return F.pad(x, [pw, pw, ph, ph], mode=conv.padding_mode), (0, 0)
    return x, tuple(conv.padding)


def grouped_conv_grad(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Exact per-example gradient of a (grouped) convolution's weight and bias.

    Args:
        conv: the convolution.
        x: ``[b, C_in, H_in, W_in]`` its input (before any padding of its own).
        g: ``[b, C_out, H, W]`` gradient with respect to its output.

    Returns:
        ``[b, C_out, C_in/groups * kh * kw (+1 bias column)]``, flattened like ``weight.reshape(C_out, -1)``.
    """
    x, (ph, pw) = _conv_input(conv, x)
    x = F.pad(x, [pw, pw, ph, ph]) if ph or pw else x
    b, c_out, h, w = g.shape
    groups, (kh, kw), (sh, sw), (dh, dw) = conv.groups, conv.kernel_size, conv.stride, conv.dilation
    m, c_g = c_out // groups, conv.in_channels // groups
    gg = g.reshape(b, groups, m, h * w)
    cols = []
    for i in range(kh):
        for j in range(kw):
            a = x[:, :, i * dh : i * dh + sh * (h - 1) + 1 : sh, j * dw : j * dw + sw * (w - 1) + 1 : sw]
            a = a.reshape(b, groups, c_g, h * w)
            if m == 1 and c_g == 1:
                cols.append((gg * a).sum(-1, keepdim=True))
            else:
                cols.append(torch.einsum("bgms,bgcs->bgmc", gg, a))
    grad = torch.stack(cols, -1).reshape(b, c_out, c_g * kh * kw)
    if _has_bias(conv):
        grad = torch.cat([grad, g.sum((2, 3)).unsqueeze(-1)], -1)
    return grad


def batchnorm_grad(bn: _BatchNorm, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Exact per-example gradient of an eval-mode BatchNorm's ``(gamma, beta)``.

    Args:
        bn: the BatchNorm (running statistics are used, as in eval mode).
        x: ``[b, C, ...]`` its input.
        g: ``[b, C, ...]`` gradient with respect to its output.

    Returns:
        ``[b, C, 2]``: per channel ``(sum g * x_hat, sum g)`` over the non-channel positions.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    x_hat = (x - bn.running_mean.view(shape)) * torch.rsqrt(bn.running_var.view(shape) + bn.eps)
    dims = tuple(range(2, x.dim()))
    if not dims:
        return torch.stack([g * x_hat, g], -1)
    return torch.stack([(g * x_hat).sum(dims), g.sum(dims)], -1)


def _project_exact(layer: KroneckerLayer, grad: torch.Tensor) -> torch.Tensor:
    """``[b, d_out, d_in]`` exact gradients -> ``[b, k_out * k_in]`` = ``P_out^T G P_in`` flattened."""
    return torch.matmul(torch.matmul(layer.p_out.T, grad), layer.p_in).flatten(1)


def _project_inputs(layer: KroneckerLayer, x: torch.Tensor) -> torch.Tensor:
    """Forward input -> ``[b, k_in, positions]`` projected input patches ``P_in^T a_s`` (bias row included)."""
    module = layer.module
    if layer.kind == "linear":
        d = module.in_features
        proj = torch.matmul(x.reshape(x.shape[0], -1, d), layer.p_in[:d])
        if _has_bias(module):
            proj = proj + layer.p_in[d]
        return proj.transpose(1, 2)
    x, padding = _conv_input(module, x)
    bias = layer.p_in[-1] if _has_bias(module) else None
    proj = F.conv2d(x, layer.kernel, bias, module.stride, padding, module.dilation)
    return proj.flatten(2)


def _project_kronecker(layer: KroneckerLayer, proj_in: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``[b, k_in, S]`` projected inputs, output gradient -> ``[b, k_out * k_in]`` projected weight gradient."""
    d_out = layer.p_out.shape[0]
    g = g.reshape(g.shape[0], d_out, -1) if layer.kind == "conv" else g.reshape(g.shape[0], -1, d_out).transpose(1, 2)
    proj_out = torch.matmul(layer.p_out.T, g)
    return torch.bmm(proj_out, proj_in.transpose(1, 2)).flatten(1)


class KroneckerProjector(GradientProjector):
    """Per-layer Kronecker-factored projection of margin gradients, then an optional dense JL map.

    Args:
        model: the checkpoint's network (put in eval mode; hooks are attached only during a call).
        proj_dim: output width; ``0`` (or the natural width) returns the per-layer blocks unmixed.
        seed: seeds every random matrix (one ``torch.Generator``).
        k_in: default input-side rank per layer (capped at the layer's input dimension: exact there).
        k_out: default output-side rank per layer (likewise capped).
        layer_k: per-layer overrides ``{module name: (k_in, k_out)}``.

    Raises:
        ValueError: the model has trainable parameters outside Linear, Conv2d and BatchNorm.
    """

    name = "kronecker"

    def __init__(
        self,
        model: nn.Module,
        proj_dim: int,
        seed: int,
        k_in: int = 16,
        k_out: int = 16,
        layer_k: dict[str, tuple[int, int]] | None = None,
    ):
        super().__init__(model, proj_dim, seed)
        gen = torch.Generator().manual_seed(seed)
        self.layers = self._build_layers(model, k_in, k_out, layer_k or {}, gen)
        self.natural_dim = sum(layer.width for layer in self.layers)
        self.second: torch.Tensor | None = None
        if proj_dim not in (0, self.natural_dim):
            signs = torch.randint(0, 2, (self.natural_dim, proj_dim), generator=gen).float()
            self.second = (2.0 * signs - 1.0) / math.sqrt(proj_dim)

    @staticmethod
    def _build_layers(model, k_in, k_out, layer_k, gen) -> list[KroneckerLayer]:
        unknown = set(layer_k) - {name for name, _ in model.named_modules()}
        if unknown:
            raise ValueError(f"layer_k names modules the model does not have: {sorted(unknown)}")
        layers, offset = [], 0
        for name, module in model.named_modules():
            kind = _layer_kind(module)
            if kind is None:
                continue
            ki, ko = layer_k.get(name, (k_in, k_out))
            d_in, d_out = _layer_dims(module, kind)
            p_in = torch.eye(2) if kind == "bn" else _gaussian(d_in, ki, gen)
            layer = KroneckerLayer(name, module, kind, p_in, _gaussian(d_out, ko, gen), offset)
            if kind == "conv":
                layer.kernel = _conv_kernel(layer)
            layers.append(layer)
            offset += layer.width
        if not layers:
            raise ValueError("the model has no trainable Linear, Conv2d or BatchNorm layer to project")
        return layers

    @property
    def dim(self) -> int:
        """Width of the returned features: ``proj_dim``, or the natural width when ``proj_dim`` is 0."""
        return self.natural_dim if self.second is None else self.second.shape[1]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[b, 3, S, S]`` images, ``[b]`` labels -> (float32 ``[b, dim]`` features, ``[b, C]`` logits)."""
        feats, logits = self.natural_features(images, labels)
        if self.second is not None:
            feats = feats @ self.second.to(feats.device)
        return feats, logits

    def natural_features(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer blocks ``P_out^T G P_in`` (row-major) concatenated: ``[b, natural_dim]``, and ``[b, C]`` logits."""
        if self.model.training:
            raise RuntimeError("KroneckerProjector needs the model in eval mode (BatchNorm on running statistics)")
        self._to(images.device)
        feats = torch.zeros(images.shape[0], self.natural_dim, device=images.device)
        roots: list[torch.Tensor] = []
        with torch.enable_grad(), self._hooked(feats, roots):
            logits = self.model(images)
            total = margin(logits, labels).sum()
            torch.autograd.grad(total, roots, allow_unused=True)
        return feats, logits.detach()

    def _to(self, device: torch.device) -> None:
        for layer in self.layers:
            if layer.p_in.device != device:
                layer.p_in, layer.p_out = layer.p_in.to(device), layer.p_out.to(device)
                layer.kernel = None if layer.kernel is None else layer.kernel.to(device)

    @contextmanager
    def _hooked(self, feats: torch.Tensor, roots: list[torch.Tensor]) -> Iterator[None]:
        """Forward hooks on every covered layer for the duration of one call; always removed."""
        handles = [layer.module.register_forward_hook(self._forward_hook(layer, feats, roots)) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _forward_hook(layer: KroneckerLayer, feats: torch.Tensor, roots: list[torch.Tensor]):
        """A hook that saves what the backward needs and registers the output-gradient hook."""
        block = slice(layer.offset, layer.offset + layer.width)

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach()
            if not output.requires_grad:
                raise RuntimeError(f"{layer.name}: output does not require grad; are the parameters frozen?")
            if not inputs[0].requires_grad:
                roots.append(output)
            with torch.no_grad():
                proj_in = _project_inputs(layer, x) if layer.kind in ("linear", "conv") else None
            version = x._version

            def grad_hook(g: torch.Tensor) -> None:
                if x._version != version:
                    raise RuntimeError(f"{layer.name}: its input was modified in place after the forward pass")
                with torch.no_grad():
                    if proj_in is not None:
                        feats[:, block] += _project_kronecker(layer, proj_in, g)
                    elif layer.kind == "grouped":
                        feats[:, block] += _project_exact(layer, grouped_conv_grad(module, x, g))
                    else:
                        feats[:, block] += _project_exact(layer, batchnorm_grad(module, x, g))

            output.register_hook(grad_hook)

        return hook
