"""The exact fallback for any module the Kronecker kinds do not cover: per-example gradients by torch.func.

A forward hook keeps the module's (detached) arguments and registers hooks on its output tensors; after the
batched backward pass, each example's gradient of its own parameters is ``d/d theta <module(x_i), g_i>`` with
``g_i`` the example's output gradient, computed for the whole batch at once with ``vmap(grad(...))`` over the
module alone (its submodules' parameters stay constants: they belong to their own tracked layers). Each
parameter ``p`` is laid out as ``G = p.reshape(p.shape[0], -1)`` (a 1-d parameter as a ``[d, 1]`` column) and
projected ``P_out^T G P_in`` with its own seeded factors, so memory stays ``O(d_out k_out + d_in k_in)``.

Costs one more forward and backward of the module itself (cheap for the norms, activations-with-parameters,
tokens and scales it is meant for); the Kronecker kinds never come here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten
from torch.utils.hooks import RemovableHandle

from ..models.calling import logits_of
from ..precision import upcast
from .tracked import CallState, TrackedLayer, add_root_if_first, gaussian


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """``(d_out, d_in)`` of a parameter laid out as ``G``: ``[shape[0], rest]``, a 1-d one as ``[d, 1]``."""
    if len(shape) == 0:
        return 1, 1
    return shape[0], int(torch.Size(shape[1:]).numel())


def output_tensors(output: Any) -> list[Any]:
    """The leaves of a module's output (a tensor, or tuples/lists/dicts of them), or its logits when the output
    is an object pytrees do not open (e.g. a dataclass with ``logits``)."""
    leaves = tree_leaves(output)
    if any(isinstance(t, torch.Tensor) for t in leaves):
        return leaves
    return [logits_of(output)]


@dataclass
class _Call:
    """One call of the module: its detached arguments (flattened) and, after the backward, its output gradients.

    Attributes:
        flat: the tensor and other leaves of ``(args, kwargs)``, tensors detached.
        spec: their pytree structure.
        versions: each tensor leaf's version counter at the call (an in-place edit afterwards is refused).
        grads: output leaf index -> ``[b, ...]`` gradient, filled by the backward pass.
    """

    flat: list[Any]
    spec: Any
    versions: list[int | None]
    grads: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> _Call:
        leaves, spec = tree_flatten((args, kwargs))
        flat = [upcast(t.detach()) if isinstance(t, torch.Tensor) else t for t in leaves]  # bf16 autocast: in fp32
        return cls(flat, spec, [t._version if isinstance(t, torch.Tensor) else None for t in flat])

    def check_unchanged(self, name: str) -> None:
        """Raise when an argument was modified in place after the call (its saved value is no longer the input)."""
        for t, version in zip(self.flat, self.versions, strict=True):
            if version is not None and t._version != version:
                raise RuntimeError(f"{name}: an input was modified in place after the forward pass")


class FallbackLayer(TrackedLayer):
    """Any module with trainable parameters of its own that no other kind claims.

    Attributes:
        factors: per parameter, ``(P_in [d_in, k_in], P_out [d_out, k_out])``.
    """

    def __init__(self, name: str, module: nn.Module, k_in: int, k_out: int, gen: torch.Generator):
        super().__init__(name, module)
        self.factors = []
        for p in self.params:
            d_out, d_in = matrix_shape(p.shape)
            self.factors.append((gaussian(d_in, k_in, gen), gaussian(d_out, k_out, gen)))

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return True

    @property
    def width(self) -> int:
        return sum(p_in.shape[1] * p_out.shape[1] for p_in, p_out in self.factors)

    def project_grads(self, grads: list[torch.Tensor]) -> torch.Tensor:
        blocks = []
        for g, (p_in, p_out) in zip(grads, self.factors, strict=True):
            d_out, d_in = matrix_shape(g.shape[1:])
            blocks.append(torch.matmul(torch.matmul(p_out.T, g.reshape(-1, d_out, d_in)), p_in).flatten(1))
        return torch.cat(blocks, 1)

    def to(self, device: torch.device) -> None:
        self.factors = [(p_in.to(device), p_out.to(device)) for p_in, p_out in self.factors]

    def attach(self, state: CallState) -> list[RemovableHandle]:
        return [self.module.register_forward_hook(self._forward_hook(state), with_kwargs=True)]

    def _forward_hook(self, state: CallState):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if state.paused:
                return
            leaves = output_tensors(output)
            live = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad]
            if not live:
                raise RuntimeError(f"{self.name}: output does not require grad; is it run under no_grad?")
            call = _Call.of(args, kwargs)
            add_root_if_first(state, tree_leaves((args, kwargs)), [leaves[i] for i in live])
            for i in live:
                leaves[i].register_hook(_store(call.grads, i))
            state.finishers.append(lambda: self._finish(call, state))

        return hook

    def _finish(self, call: _Call, state: CallState) -> None:
        if call.grads:
            call.check_unchanged(self.name)
            with torch.no_grad():
                state.feats[:, self.block] += self.project_grads(self.per_example_grads(call))

    def per_example_grads(self, call: _Call) -> list[torch.Tensor]:
        """``[b, *p.shape]`` gradients of ``sum_outputs <module(x_i), g_i>`` for each of :attr:`params`.

        One ``vmap(grad(...))`` over the batch; a module torch.func cannot batch (``.item()``, data-dependent
        control flow) is differentiated one example at a time instead.
        """
        idx = sorted(call.grads)
        b = call.grads[idx[0]].shape[0]
        batched = [isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == b for t in call.flat]
        params = {n: p.detach() for n, p in zip(self.param_names, self.params, strict=True)}

        def one(params: dict, flat_in: list, grads: list) -> torch.Tensor:
            flat_in = [t.unsqueeze(0) if is_b else t for t, is_b in zip(flat_in, batched, strict=True)]
            args, kwargs = tree_unflatten(flat_in, call.spec)
            leaves = output_tensors(functional_call(self.module, params, args, kwargs))
            return sum((leaves[i] * g.unsqueeze(0)).sum() for i, g in zip(idx, grads, strict=True))

        grads = [call.grads[i] for i in idx]
        in_dims = (None, [0 if is_b else None for is_b in batched], [0] * len(idx))
        with torch.enable_grad():
            try:
                out = vmap(grad(one), in_dims=in_dims)(params, call.flat, grads)
            except RuntimeError:
                out = _one_by_one(one, params, call.flat, batched, grads)
        return [out[n] for n in self.param_names]


def _one_by_one(one, params: dict, flat: list, batched: list[bool], grads: list[torch.Tensor]) -> dict:
    """``grad(one)`` example by example with autograd, stacked: ``{name: [b, *shape]}``."""
    rows = []
    for i in range(grads[0].shape[0]):
        live = {n: p.detach().requires_grad_() for n, p in params.items()}
        flat_i = [t[i] if is_b else t for t, is_b in zip(flat, batched, strict=True)]
        total = one(live, flat_i, [g[i] for g in grads])
        rows.append(torch.autograd.grad(total, list(live.values()), allow_unused=True, materialize_grads=True))
    return {n: torch.stack([row[j] for row in rows]) for j, n in enumerate(params)}


def _store(grads: dict[int, torch.Tensor], i: int):
    def hook(g: torch.Tensor) -> None:
        grads[i] = g.detach()

    return hook


class AttentionFallback(FallbackLayer):
    """``nn.MultiheadAttention``: it applies ``out_proj``'s weight itself (never calling that Linear), so it
    owns its submodules' parameters too and goes through the exact fallback as one module."""

    recurse = True

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)


def model_per_example_grads(model: nn.Module, params: dict[str, nn.Parameter], inputs: Any, labels: torch.Tensor,
                            output) -> dict[str, torch.Tensor]:
    """Exact ``[b, *p.shape]`` gradients of ``output(model(x_i), y_i)`` for each named parameter, through the whole
    model: for the layers whose Kronecker blocks failed the projector's self-check (:mod:`.selfcheck`), wherever
    in the model their weights are used.

    One ``vmap(grad(...))`` over the batch, in float32 with every other parameter a constant; a model torch.func
    cannot batch is differentiated one example at a time with autograd instead.

    Args:
        params: qualified name (as in ``model.named_parameters()``) -> parameter.
        inputs: ``[b, ...]`` tensor, or a dict of them passed by name.
        output: the attributed function of ``([b, C] logits, [b] labels)`` -> ``[b]``.
    """
    flat, spec = tree_flatten(inputs)
    batched = [isinstance(t, torch.Tensor) and t.dim() > 0 for t in flat]

    def one(live: dict, flat_in: list, label: list[torch.Tensor]) -> torch.Tensor:
        flat_in = [t.unsqueeze(0) if is_b else t for t, is_b in zip(flat_in, batched, strict=True)]
        x = tree_unflatten(flat_in, spec)
        args, kwargs = ((), x) if isinstance(x, dict) else ((x,), {})
        logits = logits_of(functional_call(model, live, args, kwargs)).float()
        return output(logits, label[0].unsqueeze(0)).sum()

    detached = {n: p.detach() for n, p in params.items()}
    in_dims = (None, [0 if b else None for b in batched], [0])
    try:
        with torch.no_grad():  # only the named parameters are differentiated (torch.func ignores no_grad)
            return vmap(grad(one), in_dims=in_dims)(detached, flat, [labels])
    except RuntimeError:
        with torch.enable_grad():
            return _one_by_one(one, detached, flat, batched, [labels])
