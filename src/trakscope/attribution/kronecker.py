"""Kronecker-factored projection of per-example gradients from one batched backward pass (LoGra).

For a Linear or convolution layer the per-example weight gradient is ``G = sum_s g_s a_s^T``: output
gradients ``g_s`` times input patches ``a_s`` over positions ``s``. Its projection
``P_out^T G P_in = sum_s (P_out^T g_s)(P_in^T a_s)^T`` is computed from the forward inputs and the
backward output gradients without ever forming ``G`` (Choe et al. 2024, arXiv 2405.13954). For a
convolution, ``P_in^T a_s`` over all patches is itself a convolution of the input with ``P_in``
reshaped as a kernel, and the bias is an extra constant-1 input (the kernel's bias); an Embedding is a
Linear layer on one-hot inputs. Grouped/depthwise convolutions and normalization layers (BatchNorm, timm's
BatchNormAct2d, LayerNorm, RMSNorm, GroupNorm) have small per-example gradients, which are computed exactly and then
projected with the same ``P_out^T G P_in`` form. Every other module with trainable parameters of its own
goes through an exact per-module fallback (``torch.func`` per-example gradients of that module alone), so
no trainable parameter is left out; frozen ones (``requires_grad=False``) are not features, as in the dense
projector. Each kind is one class (:mod:`.tracked`, :mod:`.norms`, :mod:`.fallback`), listed in :data:`KINDS`.

The projector checks itself (:mod:`.selfcheck`): on the first batch it is called with, each layer's block summed
over a few examples must equal the same projection of autograd's batch gradient. A layer that fails (a hook that
never fires, a weight also used outside its module's forward) keeps its block and its projection matrices, but
its per-example gradients are computed exactly through the whole model (:func:`.fallback.model_per_example_grads`)
and projected by them; :attr:`KroneckerProjector.check` records which.

Each layer contributes a ``k_out * k_in`` block (the fallback one per parameter); the concatenation (the
*natural width*) is optionally mapped to ``proj_dim`` by one more seeded Rademacher matrix
(:attr:`KroneckerProjector.final_projection`). Entries are ``N(0, 1/k)`` (and ``+-1/sqrt(proj_dim)``), so
inner products of features estimate inner products of full gradients.

The model must be in eval mode, so each example's output depends only on its own input and the
gradient of ``output.sum()`` with respect to a layer's output is, row by row, each example's own.
Weight gradients are never computed: the backward pass asks only for gradients of layer outputs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.calling import Inputs, call_model
from ..precision import autocast
from .fallback import AttentionFallback, FallbackLayer, model_per_example_grads
from .norms import BatchNormActLayer, BatchNormLayer, GroupNormLayer, LayerNormLayer
from .output import ModelOutput
from .projector import GradientProjector
from .selfcheck import batch_gradient, check_layers, plain_cpu_float32, probe_of, true_float32
from .tracked import CallState, ConvLayer, EmbeddingLayer, GroupedConvLayer, LinearLayer, TrackedLayer

KINDS: tuple[type[TrackedLayer], ...] = (
    LinearLayer,
    ConvLayer,
    GroupedConvLayer,
    BatchNormLayer,
    BatchNormActLayer,
    LayerNormLayer,
    GroupNormLayer,
    EmbeddingLayer,
    AttentionFallback,
    FallbackLayer,  # last: takes any module with trainable parameters of its own
)
"""The layer kinds, tried in order; the first that claims a module owns its trainable parameters."""


def _kind_of(module: nn.Module) -> type[TrackedLayer] | None:
    if isinstance(module, _BatchNorm) and module.running_mean is None and any(
            p.requires_grad for p in module.parameters(recurse=False)):
        raise ValueError(f"{type(module).__name__} without running statistics normalises over the batch even in "
                         "eval mode, so an example's gradient depends on its batch; TRAK needs them independent")
    return next((kind for kind in KINDS if kind.claims(module)), None)


def build_layers(model: nn.Module, k_in: int, k_out: int, layer_k: dict[str, tuple[int, int]],
                 gen: torch.Generator) -> list[TrackedLayer]:
    """One tracked layer per module with trainable parameters, in ``named_modules`` order, blocks laid end to end.

    Raises:
        ValueError: ``layer_k`` names a module the model lacks; a parameter is shared by two modules; or
            there is no trainable parameter at all.
    """
    unknown = set(layer_k) - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"layer_k names modules the model does not have: {sorted(unknown)}")
    layers, owners, offset = [], [], 0
    for name, module in model.named_modules():
        if any(name.startswith(owner + ".") for owner in owners):
            continue  # owned with its parent (a kind with ``recurse``)
        kind = _kind_of(module)
        if kind is None:
            continue
        layer = kind(name, module, *layer_k.get(name, (k_in, k_out)), gen)
        layer.offset, offset = offset, offset + layer.width
        owners += [name] if kind.recurse else []
        layers.append(layer)
    if not layers:
        raise ValueError("the model has no trainable parameter to project")
    _check_ownership(model, layers)
    return layers


def _check_ownership(model: nn.Module, layers: list[TrackedLayer]) -> None:
    """Every trainable parameter belongs to exactly one tracked layer."""
    owned = [id(p) for layer in layers for p in layer.params]
    if len(owned) != len(set(owned)):
        raise ValueError("a trainable parameter is shared by two modules (tied weights); untie or freeze it")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in set(owned)]
    if missing:
        raise RuntimeError(f"no tracked layer owns the trainable parameters {missing}")


def natural_width(model: nn.Module, k: int) -> int:
    """Width of the Kronecker blocks of ``model`` at ``k_in = k_out = k`` (before any map to ``proj_dim``)."""
    return sum(layer.width for layer in build_layers(model, k, k, {}, torch.Generator().manual_seed(0)))


def widened_k(model: nn.Module, k: int, proj_dim: int) -> int:
    """``k``, doubled while the Kronecker blocks are narrower than ``proj_dim`` and doubling still widens them.

    ``proj_dim`` features mixed from fewer natural ones hold no more than the natural width: on `tiny_cnn`
    (560 natural features at k 16, proj_dim 2048) that cost 0.01 LDS against traker's dense projection, and
    k 64 (1,896 features, every block nearly exact) closed it (BENCHMARKS.md). Networks whose blocks are already
    at least ``proj_dim`` wide (ResNet-18: 5,920 at k 16) keep ``k``.
    """
    if proj_dim <= 0:
        return k
    width = natural_width(model, k)
    while width < proj_dim:
        wider = natural_width(model, 2 * k)
        if wider == width:  # every block is exact already
            break
        k, width = 2 * k, wider
    return k


class KroneckerProjector(GradientProjector):
    """Per-layer Kronecker-factored projection of output gradients, then an optional dense JL map.

    Args:
        model: the checkpoint's network (put in eval mode; hooks are attached only during a call).
        proj_dim: output width; ``0`` (or the natural width) returns the per-layer blocks unmixed.
        seed: seeds every random matrix (one ``torch.Generator``).
        k_in: default input-side rank per layer (capped at the layer's input dimension: exact there).
        k_out: default output-side rank per layer (likewise capped).
        layer_k: per-layer overrides ``{module name: (k_in, k_out)}``.
        output: the function whose gradient is projected (the margin if None).
        precision: ``fp32``, or ``bf16``/``auto`` (:mod:`trakscope.precision`): the model's forward pass under
            bf16 autocast, so activations and output gradients are bf16; every hook upcasts them and projects
            and accumulates in float32.

    Attributes:
        layers: the tracked layers, in ``named_modules`` order.
        natural_dim: total width of their blocks.
        check: the self-check's record (:meth:`.selfcheck.SelfCheck.record`), None until the first call.
        exact_layers: the layers that failed it, whose blocks are computed exactly.
        final_projection: ``[natural_dim, proj_dim]`` Rademacher ``+-1/sqrt(proj_dim)`` matrix that mixes the
            concatenated blocks into ``proj_dim`` features; None when ``proj_dim`` is 0 or the natural width.
    """

    def __init__(
        self,
        model: nn.Module,
        proj_dim: int,
        seed: int,
        k_in: int = 16,
        k_out: int = 16,
        layer_k: dict[str, tuple[int, int]] | None = None,
        output: ModelOutput | None = None,
        precision: str = "fp32",
    ):
        super().__init__(model, proj_dim, seed, output)
        self.precision = precision
        gen = torch.Generator().manual_seed(seed)
        self.layers = build_layers(model, k_in, k_out, layer_k or {}, gen)
        self._device = torch.device("cpu")  # where the layers' projection matrices are
        self.natural_dim = sum(layer.width for layer in self.layers)
        self.check: dict | None = None
        self.exact_layers: list[TrackedLayer] = []
        self.final_projection: torch.Tensor | None = None
        if proj_dim not in (0, self.natural_dim):
            signs = torch.randint(0, 2, (self.natural_dim, proj_dim), generator=gen).float()
            self.final_projection = (2.0 * signs - 1.0) / math.sqrt(proj_dim)

    @property
    def dim(self) -> int:
        """Width of the returned features: ``proj_dim``, or the natural width when ``proj_dim`` is 0."""
        return self.natural_dim if self.final_projection is None else self.final_projection.shape[1]

    def __call__(self, inputs: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (``[b, ...]`` tensor or dict of them), ``[b]`` labels -> (float32 ``[b, dim]``, ``[b, C]`` logits).

        The first call checks the projector on this batch's first examples (:meth:`self_check`), unless a check
        was adopted (:meth:`adopt`)."""
        feats, logits = self.natural_features(inputs, labels)
        if self.check is None:
            self.self_check(inputs, labels, feats)
        if self.final_projection is not None:
            self.final_projection = self.final_projection.to(feats.device)
            feats = feats @ self.final_projection
        return feats, logits

    def natural_features(self, inputs: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer blocks ``P_out^T G P_in`` (row-major) concatenated: ``[b, natural_dim]``, and ``[b, C]`` logits.

        The blocks of the layers that failed the self-check (:attr:`exact_layers`) are computed exactly."""
        feats, logits = self._kronecker(inputs, labels, self.precision)
        if self.exact_layers:
            self._fill_exact(feats, inputs, labels)
        return feats, logits

    def _kronecker(self, inputs: Inputs, labels: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's block from its hooks during one forward and backward pass (``[b, natural_dim]``), logits."""
        if self.model.training:
            raise RuntimeError("KroneckerProjector needs the model in eval mode (BatchNorm on running statistics)")
        device = self.layers[0].params[0].device
        self._to(device)
        state = CallState()
        with torch.enable_grad(), self._hooked(state):
            with autocast(precision, device):
                logits = call_model(self.model, _detached(inputs))
            logits = logits.float()  # the output function and TRAK's Q in float32 (no copy when already so)
            total = self.output(logits, labels).sum()
            state.feats = torch.zeros(logits.shape[0], self.natural_dim, device=logits.device)
            if not state.roots:
                raise RuntimeError("no trainable parameter took part in the forward pass")
            torch.autograd.grad(total, state.roots, allow_unused=True)
            state.paused = True
            for finish in state.finishers:
                finish()
        return state.feats, logits.detach()

    def self_check(self, inputs: Inputs, labels: torch.Tensor, feats: torch.Tensor | None = None) -> dict:
        """Check every layer's block on the batch's first examples against autograd (:mod:`.selfcheck`), in IEEE
        float32; adopt the outcome (failed layers are computed exactly from now on) and return its record.

        Args:
            feats: ``[b, natural_dim]`` this batch's blocks, just computed by :meth:`natural_features` before any
                check: where featurization is plain float32 on the CPU their first rows are compared as they are;
                elsewhere (bf16 autocast, a GPU's TF32) the probe is projected again in IEEE float32. The blocks of
                failed layers in ``feats`` are then recomputed exactly, in place.
        """
        x, y = probe_of(_detached(inputs), labels)
        device = self.layers[0].params[0].device
        reuse = feats is not None and plain_cpu_float32(self.precision, device)
        with true_float32(device):
            probe = feats[: len(y)] if reuse else self._kronecker(x, y, "fp32")[0]
            grads = batch_gradient(self.model, [p for layer in self.layers for p in layer.params], x, y, self.output)
        self.adopt(check_layers(self.layers, probe, grads, len(y)).record())
        if self.exact_layers:
            failed = ", ".join(f"{e['layer']} ({e['error']:.2g})" for e in self.check["exact"][:5])
            warnings.warn(f"trakscope: {len(self.exact_layers)} layers' Kronecker blocks disagree with autograd's "
                          f"gradient (relative error {failed}); their features are computed exactly, through the "
                          "whole model (slower)", stacklevel=2)
            if feats is not None:
                self._fill_exact(feats, inputs, labels)
        return self.check

    def adopt(self, record: dict) -> None:
        """Take a self-check's record (:meth:`self_check`'s, or one a store kept for these weights) as this one's.

        Raises:
            ValueError: the record names a layer this projector does not have.
        """
        by_name = {layer.name: layer for layer in self.layers}
        names = [entry["layer"] for entry in record["exact"]]
        unknown = sorted(set(names) - by_name.keys())
        if unknown:
            raise ValueError(f"the self-check record names layers this model does not have: {unknown}")
        self.check, self.exact_layers = record, [by_name[n] for n in names]

    def _fill_exact(self, feats: torch.Tensor, inputs: Inputs, labels: torch.Tensor) -> None:
        """Overwrite the blocks of :attr:`exact_layers` in ``[b, natural_dim]`` ``feats`` with their exact
        per-example gradients through the whole model, projected by each layer's own matrices."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        params = {names[id(p)]: p for layer in self.exact_layers for p in layer.params}
        grads = model_per_example_grads(self.model, params, _detached(inputs), labels, self.output)
        with torch.no_grad():
            for layer in self.exact_layers:
                feats[:, layer.block] = layer.project_grads([grads[names[id(p)]] for p in layer.params])

    def _to(self, device: torch.device) -> None:
        if device != self._device:
            for layer in self.layers:
                layer.to(device)
            self._device = device

    @contextmanager
    def _hooked(self, state: CallState) -> Iterator[None]:
        """Every tracked layer's hooks for the duration of one call; always removed."""
        handles = [handle for layer in self.layers for handle in layer.attach(state)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _detached(inputs: Inputs) -> Inputs:
    """The inputs cut from any graph they came with, so the backward stops at the model's own layers."""
    if isinstance(inputs, dict):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs.detach()
