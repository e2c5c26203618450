"""The Kronecker projector checks itself: on one probe batch, every tracked layer's block summed over the
examples must equal the same projection of autograd's batch gradient.

Why the sum: a layer's block of example ``i`` is ``P_out^T G_i P_in``, linear in the per-example gradient
``G_i``, so ``sum_i P_out^T G_i P_in = P_out^T (sum_i G_i) P_in``, and ``sum_i G_i`` is the gradient of the summed
output ``sum_i f(x_i, y_i)``: one ordinary backward pass (``torch.autograd.grad``) gives it for every parameter
at once, with no per-example reference. The comparison is made on the projected blocks, the very numbers the
store keeps, so it tests what the features hold: an error the projection would hide is not in the features
either. What the sum cannot see is an error that cancels over the probe's examples (one example's gradient
given to another); the layer kinds' hooks make no such error, and the for-loop tests check them per example.

The two paths run in IEEE float32 (no autocast, no TF32) on the same weights and differ only in the order of
their sums: the largest relative error of a passing layer measured was 2.2e-6 (ResNet-18 at 224 px), and 3.8e-7 to
1.6e-6 on ResNet-18 and EfficientNet-Lite0 at 64 px, TinyCNN, timm ViTs and a Hugging Face ResNet (BENCHMARKS.md,
"The Kronecker projector's self-check"); float32's unit roundoff is 6e-8, and the longest sums run over ~10^5
terms, whose rounding grows like their square root. :data:`TOLERANCE` (1e-3) sits more than two orders of
magnitude above that and as far below the errors of the patterns the check exists for (a Linear whose input is a
parameter: its block is 0, error 1; a weight also used outside its own module's forward: 0.57-0.93).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.calling import Inputs, batch_size_of, call_model
from ..precision import resolve_precision
from .output import ModelOutput
from .tracked import TrackedLayer

PROBE_SIZE = 4
"""Examples of the first batch the check runs on (all of them when the batch is smaller)."""

TOLERANCE = 1e-3
"""Largest relative error ``||sum_i block_i - P(batch grad)|| / max(both norms)`` of a layer that passes."""


@dataclass(frozen=True)
class SelfCheck:
    """The outcome of the check for one checkpoint's projector.

    Attributes:
        probe: number of examples it ran on.
        tolerance: the relative error a layer had to stay within.
        errors: layer name -> relative error of its summed block (``nan``: no finite reference, not judged).
        params: layer name -> its trainable parameters' names (relative to the layer's module).
    """

    probe: int
    tolerance: float
    errors: dict[str, float]
    params: dict[str, list[str]]

    @property
    def failed(self) -> list[str]:
        """Layers whose blocks disagree with autograd: their features are computed exactly instead."""
        return [name for name, err in self.errors.items() if err > self.tolerance]

    def record(self) -> dict[str, Any]:
        """JSON-ready: probe size, tolerance, layers checked, the largest passing error and the failed layers."""
        passing = [err for err in self.errors.values() if err <= self.tolerance]
        return {"probe": self.probe, "tolerance": self.tolerance, "layers": len(self.errors),
                "max_error": max(passing, default=0.0),
                "unjudged": [name for name, err in self.errors.items() if math.isnan(err)],
                "exact": [{"layer": name, "params": self.params[name], "error": _json_float(self.errors[name])}
                          for name in self.failed]}


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def probe_of(inputs: Inputs, labels: torch.Tensor, size: int = PROBE_SIZE) -> tuple[Inputs, torch.Tensor]:
    """The first ``size`` examples of a batch (a ``[b, ...]`` tensor or a dict of them) and their ``[b]`` labels."""
    b = min(size, batch_size_of(inputs))
    if isinstance(inputs, dict):
        return {k: v[:b] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in inputs.items()}, labels[:b]
    return inputs[:b], labels[:b]


_LEAVES = (("cuda", "matmul"), ("cudnn", "conv"), ("mkldnn", "matmul"), ("mkldnn", "conv"))
"""The backends whose ``fp32_precision`` (torch >= 2.9) may let float32 matmuls and convolutions run as TF32 or bf16."""


def _precision_leaves() -> list[Any]:
    """The backend objects of :data:`_LEAVES` that have ``fp32_precision`` (none before torch 2.9)."""
    found = [getattr(getattr(torch.backends, a, None), b, None) for a, b in _LEAVES]
    return [leaf for leaf in found if hasattr(leaf, "fp32_precision")]


def plain_cpu_float32(precision: str, device: torch.device) -> bool:
    """Featurization at ``precision`` on ``device`` is already IEEE float32 on the CPU (no bf16 autocast, no
    reduced-precision matmuls or convolutions asked for), so its blocks can be compared as they are."""
    if device.type != "cpu" or resolve_precision(precision, device) != "fp32":
        return False
    leaves = [getattr(torch.backends.mkldnn, b, None) for b in ("matmul", "conv")]
    if not all(hasattr(leaf, "fp32_precision") for leaf in leaves):  # before torch 2.9: the one legacy setting
        return torch.get_float32_matmul_precision() == "highest"
    parents = [getattr(backend, "fp32_precision", "none") for backend in (torch.backends.mkldnn, torch.backends)]
    return all(p in ("none", "ieee") for p in [leaf.fp32_precision for leaf in leaves] + parents)


@contextmanager
def true_float32(device: torch.device) -> Iterator[None]:
    """No autocast, and IEEE float32 matmuls and convolutions (no TF32, no bf16) for the block; every global setting
    it changes is put back as it was."""
    leaves = _precision_leaves()
    saved = [leaf.fp32_precision for leaf in leaves]
    legacy = None if leaves else (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    for leaf in leaves:
        leaf.fp32_precision = "ieee"
    if legacy is not None:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
    off = torch.autocast(device_type=device.type, enabled=False) if device.type in ("cpu", "cuda") else nullcontext()
    try:
        with off:
            yield
    finally:
        for leaf, value in zip(leaves, saved, strict=True):
            leaf.fp32_precision = value
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy[0])
            torch.backends.cudnn.allow_tf32 = legacy[1]


def batch_gradient(model: nn.Module, params: list[nn.Parameter], inputs: Inputs, labels: torch.Tensor,
                   output: ModelOutput) -> list[torch.Tensor]:
    """Autograd's gradient of ``sum_i output(model(x_i), y_i)`` for each of ``params`` (zeros where unused)."""
    with torch.enable_grad():
        total = output(call_model(model, inputs).float(), labels).sum()
        grads = torch.autograd.grad(total, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / max(||got||, ||want||)``: 0 when both are 0, at most 2; ``inf`` when only ``got`` is not
    finite, ``nan`` when the reference ``want`` is not (a diverged model: nothing to compare with)."""
    g, w = float(got.norm()), float(want.norm())
    if not math.isfinite(w):
        return math.nan
    if not math.isfinite(g):
        return math.inf
    return float((got - want).norm()) / max(g, w) if max(g, w) > 0 else 0.0


def check_layers(layers: list[TrackedLayer], feats: torch.Tensor, grads: list[torch.Tensor],
                 probe: int) -> SelfCheck:
    """Compare each layer's block of ``feats`` summed over the probe with its projection of the batch gradient.

    Args:
        layers: the tracked layers, whose parameters ``grads`` follows in order.
        feats: ``[probe, natural_dim]`` the Kronecker path's blocks of the probe's examples.
        grads: the batch gradient of every layer's parameters, laid end to end.
    """
    errors, params, start = {}, {}, 0
    with torch.no_grad():
        for layer in layers:
            own = grads[start : start + len(layer.params)]
            start += len(layer.params)
            want = layer.project_grads([g.float().unsqueeze(0) for g in own])[0]
            errors[layer.name] = relative_error(feats[:, layer.block].sum(0), want)
            params[layer.name] = list(layer.param_names)
    return SelfCheck(probe, TOLERANCE, errors, params)
