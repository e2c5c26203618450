"""Convolution geometry shared by the Kronecker layer kinds: the padded input a convolution really sees, and
the exact per-example gradient of a grouped convolution.

Besides ``nn.Conv1d``/``nn.Conv2d`` with their own forward, the 'SAME'-padding convolutions of
``efficientnet_lite_pytorch`` (``Conv2dStaticSamePadding``, ``Conv2dDynamicSamePadding``) and timm
(``Conv2dSame``) are understood: they pad (statically or as TensorFlow does) and then call ``F.conv2d``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_STATIC_SAME = ("Conv2dStaticSamePadding",)
_DYNAMIC_SAME = ("Conv2dDynamicSamePadding", "Conv2dSame")


def is_plain_conv(module: nn.Module) -> bool:
    """A Conv1d/Conv2d whose forward is ``F.conv{1,2}d`` of its (possibly padded) input and its own parameters."""
    if isinstance(module, nn.Conv1d):
        return type(module).forward is nn.Conv1d.forward
    if isinstance(module, nn.Conv2d):
        name = type(module).__name__
        return type(module).forward is nn.Conv2d.forward or name in _STATIC_SAME + _DYNAMIC_SAME
    return False


def conv_fn(conv: nn.Module):
    """``F.conv1d`` or ``F.conv2d``, whichever ``conv`` applies."""
    return F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (as Conv2dDynamicSamePadding computes it) for one spatial side."""
    out = math.ceil(size / s)
    pad = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return pad // 2, pad - pad // 2


def conv_input(conv: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The input as ``F.conv{1,2}d`` sees it inside ``conv.forward``, and the zero padding still to apply there."""
    name = type(conv).__name__
    if name in _STATIC_SAME:
        return conv.static_padding(x), tuple(conv.padding)
    if name in _DYNAMIC_SAME:
        (top, bottom), (left, right) = (
            _same_pad(x.shape[-2], conv.weight.shape[-2], conv.stride[0], conv.dilation[0]),
            _same_pad(x.shape[-1], conv.weight.shape[-1], conv.stride[1], conv.dilation[1]),
        )
        return F.pad(x, [left, right, top, bottom]), tuple(conv.padding)
    zeros = (0,) * len(conv.kernel_size)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return x, zeros
        pads = []
        for k, dil in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
            total = dil * (k - 1)
            pads += [total // 2, total - total // 2]
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        return F.pad(x, pads, mode=mode), zeros
    if conv.padding_mode != "zeros":
        pads = [p for p in reversed(conv.padding) for _ in range(2)]
        return F.pad(x, pads, mode=conv.padding_mode), zeros
    return x, tuple(conv.padding)


def grouped_conv_grad(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    """Exact per-example gradient of a (grouped) 2-d convolution's weight and bias.

    Args:
        conv: the convolution.
        x: ``[b, C_in, H_in, W_in]`` its input (before any padding of its own).
        g: ``[b, C_out, H, W]`` gradient with respect to its output.
        bias: append the bias gradient as a last column.

    Returns:
        ``[b, C_out, C_in/groups * kh * kw (+1 bias column)]``, flattened like ``weight.reshape(C_out, -1)``.
    """
    x, (ph, pw) = conv_input(conv, x)
    x = F.pad(x, [pw, pw, ph, ph]) if ph or pw else x
    b, c_out, h, w = g.shape
    groups, (kh, kw), (sh, sw), (dh, dw) = conv.groups, conv.kernel_size, conv.stride, conv.dilation
    m, c_g = c_out // groups, conv.in_channels // groups
    if c_g == 1:
        grad = _depthwise_grad(x, g, (kh, kw), (sh, sw), (dh, dw))
    else:
        gg = g.reshape(b, groups, m, h * w)
        cols = []
        for i in range(kh):
            for j in range(kw):
                a = x[:, :, i * dh : i * dh + sh * (h - 1) + 1 : sh, j * dw : j * dw + sw * (w - 1) + 1 : sw]
                cols.append(torch.einsum("bgms,bgcs->bgmc", gg, a.reshape(b, groups, c_g, h * w)))
        grad = torch.stack(cols, -1).reshape(b, c_out, c_g * kh * kw)
    if bias:
        grad = torch.cat([grad, g.sum((2, 3)).unsqueeze(-1)], -1)
    return grad


def _depthwise_grad(x: torch.Tensor, g: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> torch.Tensor:
    """Per-example weight gradient of a depthwise convolution (one input channel per group, ``m`` outputs each)
    as one convolution: every (example, input channel) is a group whose input is that channel of ``x`` (padded)
    and whose ``m`` kernels are the output gradients ``g``, with stride and dilation swapped. Element ``(p, q)`` of
    the result is ``sum_s g[s] * x[p * dilation + s * stride]``, the gradient of weight ``(p, q)``; rows and columns
    past the kernel come from positions the forward never used and are cut off.

    ``x``: ``[b, C_in, H, W]`` padded input; ``g``: ``[b, C_in * m, h, w]``. Returns ``[b, C_in * m, kh * kw]``.
    Five times faster on a CPU than a loop over the kernel's positions (EfficientNet-Lite0's depthwise layers at
    224 px, one thread), and exact up to float32 summation order."""
    b, c_in = x.shape[:2]
    c_out, h, w = g.shape[1:]
    out = F.conv2d(x.reshape(1, b * c_in, *x.shape[2:]), g.reshape(b * c_out, 1, h, w),
                   stride=dilation, dilation=stride, groups=b * c_in)
    return out[0, :, : kernel[0], : kernel[1]].reshape(b, c_out, kernel[0] * kernel[1])
