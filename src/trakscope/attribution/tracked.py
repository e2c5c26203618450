"""What the Kronecker projector tracks in a model: one small class per kind of layer (kronfluence's idea).

A :class:`TrackedLayer` owns some trainable parameters of one module, knows its share (*block*) of the
natural-width features, and attaches the hooks that fill that block during one batched backward pass. The
kinds with a Kronecker or closed-form rule are :class:`FactoredLayer` subclasses: the per-example gradient
is laid out as a matrix ``G`` ``[d_out, d_in]`` and projected as ``P_out^T G P_in`` (``[k_out, k_in]``,
row-major) without forming ``G`` where the structure allows. Adding a kind is adding a class and listing it
in :data:`trakscope.attribution.kronecker.KINDS`.

Why hooks are safe against in-place operations: the output-gradient hook and the gradient edge the backward
must reach are both taken from the layer's output when the forward hook runs, before any later in-place op
(``ReLU(inplace=True)``) rebases that tensor; hooks registered then receive the gradient with respect to the
value the layer produced (PyTorch's documented semantics), and the saved edge keeps the layer's backward node
reachable even when it is the first trainable layer of the graph.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils.hooks import RemovableHandle

from ..precision import full_precision, upcast
from .conv import conv_fn, conv_input, grouped_conv_grad, is_plain_conv


@dataclass
class CallState:
    """What one projector call shares with the hooks of every tracked layer.

    Attributes:
        feats: ``[b, natural_dim]`` features being filled (allocated once the forward pass has run).
        roots: gradient edges the backward pass must reach: the outputs of layers whose inputs need no
            gradient, so that the backward runs through every tracked layer and no further.
        finishers: work left for after the backward pass (the fallback's per-example gradients).
        paused: while True the hooks do nothing (the fallback re-runs modules).
    """

    feats: torch.Tensor | None = None
    roots: list[GradientEdge] = field(default_factory=list)
    finishers: list[Any] = field(default_factory=list)
    paused: bool = False


def gaussian(d: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``[d, k]`` with ``N(0, 1/k)`` entries, or the exact ``[d, d]`` identity when ``k >= d``."""
    if k >= d:
        return torch.eye(d)
    return torch.randn(d, k, generator=gen) / math.sqrt(k)


def add_root_if_first(state: CallState, inputs: list[Any], outputs: list[torch.Tensor]) -> None:
    """Make ``outputs`` backward targets when no tensor among ``inputs`` needs a gradient."""
    if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        state.roots.extend(get_gradient_edge(t) for t in outputs)


class TrackedLayer(ABC):
    """One module's trainable parameters, their block of the features, and the hooks that fill it.

    Args:
        name: the module's qualified name in the model.
        module: the module.

    Attributes:
        params: the trainable parameters this layer owns (its own, or with ``recurse`` its submodules' too).
        param_names: their names relative to ``module``.
        offset: first column of this layer's block in the natural-width features.
    """

    recurse = False

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module, self.offset = name, module, 0
        named = [(n, p) for n, p in module.named_parameters(recurse=self.recurse) if p.requires_grad]
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]

    @classmethod
    def claims(cls, module: nn.Module) -> bool:
        """This kind takes ``module``: it matches and has trainable parameters to own."""
        return any(p.requires_grad for p in module.parameters(recurse=cls.recurse)) and cls.matches(module)

    @classmethod
    @abstractmethod
    def matches(cls, module: nn.Module) -> bool:
        """The module is of this kind (whatever its parameters' ``requires_grad``)."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Number of feature columns of this layer's block."""

    @property
    def block(self) -> slice:
        """This layer's columns in the natural-width features."""
        return slice(self.offset, self.offset + self.width)

    @abstractmethod
    def project_grads(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Per-example gradients ``[b, *p.shape]`` of :attr:`params` -> ``[b, width]`` block (the reference)."""

    @abstractmethod
    def attach(self, state: CallState) -> list[RemovableHandle]:
        """Register the hooks that fill ``state.feats[:, block]`` during one call."""

    @abstractmethod
    def to(self, device: torch.device) -> None:
        """Move the projection matrices to ``device``."""


class FactoredLayer(TrackedLayer):
    """A layer whose per-example gradient is one matrix ``G`` ``[d_out, d_in]``, projected ``P_out^T G P_in``.

    The block is computed from what a forward hook saves of the input (:meth:`save`) and the gradient with
    respect to the output (:meth:`block_of`).

    Attributes:
        p_in: ``[d_in, k_in]`` input projection (identity when ``k_in >= d_in``).
        p_out: ``[d_out, k_out]`` output projection.
    """

    reads_input_later = True  # block_of reads the saved input itself (checked against later in-place edits)

    def __init__(self, name: str, module: nn.Module, k_in: int, k_out: int, gen: torch.Generator):
        super().__init__(name, module)
        d_in, d_out = self.dims()
        self.p_in = self.input_factor(d_in, k_in, gen)
        self.p_out = gaussian(d_out, k_out, gen)

    def input_factor(self, d_in: int, k_in: int, gen: torch.Generator) -> torch.Tensor:
        """``P_in``: a seeded Gaussian by default."""
        return gaussian(d_in, k_in, gen)

    @abstractmethod
    def dims(self) -> tuple[int, int]:
        """``(d_in, d_out)`` of ``G``."""

    @abstractmethod
    def gradient_matrix(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Per-example gradients of :attr:`params` -> ``[b, d_out, d_in]`` ``G``."""

    @abstractmethod
    def block_of(self, saved: Any, g: torch.Tensor) -> torch.Tensor:
        """What :meth:`save` kept and the output gradient ``[b, ...]`` -> ``[b, width]``."""

    def save(self, x: torch.Tensor) -> Any:
        """What the backward needs of the (detached) input; runs under ``no_grad`` in the forward hook."""
        return x

    @property
    def width(self) -> int:
        return self.p_out.shape[1] * self.p_in.shape[1]

    def project_exact(self, grad: torch.Tensor) -> torch.Tensor:
        """``[b, d_out, d_in]`` ``G`` -> ``[b, k_out * k_in]`` = ``P_out^T G P_in`` flattened."""
        return torch.matmul(torch.matmul(self.p_out.T, grad), self.p_in).flatten(1)

    def project_grads(self, grads: list[torch.Tensor]) -> torch.Tensor:
        return self.project_exact(self.gradient_matrix(grads))

    def to(self, device: torch.device) -> None:
        self.p_in, self.p_out = self.p_in.to(device), self.p_out.to(device)

    def attach(self, state: CallState) -> list[RemovableHandle]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not state.paused:
                self.track(state, inputs[0], output)

        return [self.module.register_forward_hook(hook)]

    def track(self, state: CallState, x: torch.Tensor, out: torch.Tensor) -> None:
        """Save what the backward needs of input ``x``; hook ``out``, the tensor whose gradient ``block_of`` reads."""
        if not out.requires_grad:
            raise RuntimeError(f"{self.name}: output does not require grad; is it run under no_grad?")
        add_root_if_first(state, [x], [out])
        x = x.detach()
        with torch.no_grad(), full_precision(x.device):  # under bf16 autocast the projection is still float32
            saved = self.save(upcast(x))
        version = x._version

        def grad_hook(g: torch.Tensor) -> None:
            if self.reads_input_later and x._version != version:
                raise RuntimeError(f"{self.name}: its input was modified in place after the forward pass")
            with torch.no_grad():  # the backward runs outside the projector's autocast
                state.feats[:, self.block] += self.block_of(saved, upcast(g))

        out.register_hook(grad_hook)


def _kronecker_block(p_out: torch.Tensor, proj_in: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``[b, k_in, S]`` projected inputs, ``[b, d_out, S]`` output gradients -> ``[b, k_out * k_in]``."""
    return torch.bmm(torch.matmul(p_out.T, g), proj_in.transpose(1, 2)).flatten(1)


def _weight_bias_matrix(grads: list[torch.Tensor], d_out: int) -> torch.Tensor:
    """``[b, d_out, ...]`` weight (and ``[b, d_out]`` bias) gradients -> ``[b, d_out, d_in]``, bias last column."""
    g = grads[0].reshape(grads[0].shape[0], d_out, -1)
    return torch.cat([g, grads[1].unsqueeze(-1)], -1) if len(grads) == 2 else g


class LinearLayer(FactoredLayer):
    """``nn.Linear`` on ``[b, ..., d_in]``: ``G = sum_s g_s (a_s, 1)^T`` over positions ``s``, never formed.

    ``P_in^T (a_s, 1)`` is computed in the forward hook, ``P_out^T g_s`` in the backward.
    """

    reads_input_later = False

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        plain = isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
        return plain and module.weight.requires_grad

    @property
    def has_bias(self) -> bool:
        """The bias is trainable (its gradient is the last column of ``G``)."""
        return len(self.params) == 2

    def dims(self) -> tuple[int, int]:
        return self.module.in_features + int(self.has_bias), self.module.out_features

    def gradient_matrix(self, grads: list[torch.Tensor]) -> torch.Tensor:
        return _weight_bias_matrix(grads, self.module.out_features)

    def save(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, ..., d_in]`` input -> ``[b, k_in, S]`` projected inputs (bias row included)."""
        d = self.module.in_features
        proj = torch.matmul(x.reshape(x.shape[0], -1, d), self.p_in[:d])
        if self.has_bias:
            proj = proj + self.p_in[d]
        return proj.transpose(1, 2)

    def block_of(self, saved: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = g.reshape(g.shape[0], -1, self.p_out.shape[0]).transpose(1, 2)
        return _kronecker_block(self.p_out, saved, g)


class ConvLayer(LinearLayer):
    """``nn.Conv1d``/``nn.Conv2d`` (one group, also 'SAME'-padding variants): Linear over input patches.

    ``P_in^T a_s`` over all patches ``s`` is itself a convolution of the input with ``P_in`` reshaped as a
    ``[k_in, C_in, *kernel]`` kernel (:attr:`kernel`), and the bias is an extra constant-1 input (the kernel's
    bias). ``G`` is ``weight.reshape(C_out, -1)`` with the bias gradient appended as the last column.
    """

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return is_plain_conv(module) and module.groups == 1 and module.weight.requires_grad

    def __init__(self, name: str, module: nn.Module, k_in: int, k_out: int, gen: torch.Generator):
        super().__init__(name, module, k_in, k_out, gen)
        self.kernel = self._kernel()

    def _kernel(self) -> torch.Tensor:
        """``P_in`` (weight rows) as a ``[k_in, C_in, *kernel]`` convolution kernel."""
        w = self.module.weight
        return self.p_in[: w[0].numel()].T.reshape(-1, *w.shape[1:]).contiguous()

    def dims(self) -> tuple[int, int]:
        w = self.module.weight
        return w[0].numel() + int(self.has_bias), w.shape[0]

    def gradient_matrix(self, grads: list[torch.Tensor]) -> torch.Tensor:
        return _weight_bias_matrix(grads, self.module.weight.shape[0])

    def save(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, C_in, *spatial]`` input -> ``[b, k_in, positions]`` projected patches (bias row included)."""
        conv = self.module
        x, padding = conv_input(conv, x)
        bias = self.p_in[-1] if self.has_bias else None
        return conv_fn(conv)(x, self.kernel, bias, conv.stride, padding, conv.dilation).flatten(2)

    def block_of(self, saved: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return _kronecker_block(self.p_out, saved, g.reshape(g.shape[0], self.p_out.shape[0], -1))

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.kernel = self.kernel.to(device)


class GroupedConvLayer(ConvLayer):
    """Grouped or depthwise ``nn.Conv2d``: the small per-example gradient is computed exactly, then projected."""

    reads_input_later = True

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (isinstance(module, nn.Conv2d) and is_plain_conv(module) and module.groups > 1
                and module.weight.requires_grad)

    def _kernel(self) -> None:
        return None

    def save(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def block_of(self, saved: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.project_exact(grouped_conv_grad(self.module, saved, g, self.has_bias))

    def to(self, device: torch.device) -> None:
        FactoredLayer.to(self, device)


class EmbeddingLayer(FactoredLayer):
    """``nn.Embedding``: a Linear layer on one-hot inputs, ``G = weight.grad^T`` ``[dim, num_embeddings]``.

    ``P_in^T onehot(i) = P_in[i]`` (zero at ``padding_idx``, whose row PyTorch never updates).
    """

    reads_input_later = False

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward
                and module.max_norm is None and not module.scale_grad_by_freq and module.weight.requires_grad)

    def dims(self) -> tuple[int, int]:
        return self.module.num_embeddings, self.module.embedding_dim

    def gradient_matrix(self, grads: list[torch.Tensor]) -> torch.Tensor:
        return grads[0].transpose(1, 2)

    def save(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, ...]`` indices -> ``[b, k_in, S]`` projected one-hot inputs."""
        rows = self.p_in[x]
        if self.module.padding_idx is not None:
            rows = rows * (x != self.module.padding_idx).unsqueeze(-1)
        return rows.reshape(x.shape[0], -1, rows.shape[-1]).transpose(1, 2)

    def block_of(self, saved: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = g.reshape(g.shape[0], -1, self.p_out.shape[0]).transpose(1, 2)
        return _kronecker_block(self.p_out, saved, g)
