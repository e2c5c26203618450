"""The naive reference for the Kronecker projector: a for-loop of per-example autograd gradients of the
trainable parameters, projected by each tracked layer's own matrices (``layer.project_grads``)."""

from __future__ import annotations

import torch

from trakscope.attribution.kronecker import KroneckerProjector
from trakscope.models.calling import Inputs, batch_size_of, call_model


def example(inputs: Inputs, i: int) -> Inputs:
    """Example ``i`` of a batch as a batch of one."""
    if isinstance(inputs, dict):
        return {k: v[i : i + 1] for k, v in inputs.items()}
    return inputs[i : i + 1]


def loop_grads(model, params, inputs: Inputs, labels: torch.Tensor, output) -> list[list[torch.Tensor]]:
    """``[example][param]`` gradients of ``output(model(x_i), y_i)``, one ``autograd.grad`` per example."""
    rows = []
    for i in range(batch_size_of(inputs)):
        out = output(call_model(model, example(inputs, i)), labels[i : i + 1]).sum()
        grads = torch.autograd.grad(out, params, allow_unused=True)
        rows.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)])
    return rows


def reference_features(proj: KroneckerProjector, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
    """``[b, natural_dim]``: per example, autograd.grad of ``proj.output``, then each layer's own projection."""
    params = [p for layer in proj.layers for p in layer.params]
    rows = []
    for grads in loop_grads(proj.model, params, inputs, labels, proj.output):
        blocks, start = [], 0
        for layer in proj.layers:
            own = grads[start : start + len(layer.params)]
            blocks.append(layer.project_grads([g.unsqueeze(0) for g in own]))
            start += len(layer.params)
        rows.append(torch.cat(blocks, 1))
    return torch.cat(rows)


def assert_blocks_match(proj: KroneckerProjector, got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    """Every layer's block within ``rtol`` relative (Frobenius) error of the reference's; all-zero blocks zero."""
    assert got.shape == want.shape == (want.shape[0], proj.natural_dim)
    for layer in proj.layers:
        g, w = got[:, layer.block], want[:, layer.block]
        scale = w.norm()
        if scale == 0:
            assert g.abs().max() <= 1e-7, f"{layer.name}: expected zero gradient"
            continue
        err = float((g - w).norm() / scale)
        assert err <= rtol, f"{layer.name} ({type(layer).__name__}): relative error {err:.2e}"


def check_against_reference(proj: KroneckerProjector, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
    """Natural features of ``proj`` match the for-loop reference block by block; returns them."""
    got, logits = proj.natural_features(inputs, labels)
    want = reference_features(proj, inputs, labels)
    assert want.abs().max() > 1e-6
    assert_blocks_match(proj, got, want)
    torch.testing.assert_close(logits, call_model(proj.model, inputs).detach(), rtol=1e-4, atol=1e-5)
    return got
