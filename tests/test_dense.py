"""The reference projector against a for-loop autograd gradient, and the projection's properties."""

import numpy as np
import torch

from trakscope.attribution.dense import DenseProjector, projection_block
from trakscope.attribution.output import margin
from trakscope.models import TinyCNN


def loop_grads(model, images, labels):
    """Per-example margin gradients, one autograd call per example (the naive reference)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x, y in zip(images, labels):
        m = margin(model(x.unsqueeze(0)), y.view(1)).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(m, params)]))
    return torch.stack(rows)


def test_vmap_gradients_equal_for_loop_reference():
    torch.manual_seed(0)
    model = TinyCNN(5).eval()
    x, y = torch.randn(6, 3, 12, 12), torch.tensor([0, 1, 2, 3, 4, 0])
    proj = DenseProjector(model, 16, seed=0)
    flat, logits = proj.per_example_grads(x, y)
    assert torch.allclose(flat, loop_grads(model, x, y), atol=1e-5, rtol=1e-4)
    assert torch.allclose(logits, model(x), atol=1e-5)


def test_projection_is_seeded_blockwise_and_chunk_invariant():
    torch.manual_seed(0)
    model = TinyCNN(3).eval()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    a = DenseProjector(model, 32, seed=7, chunk_rows=64)(x, y)[0]
    b = DenseProjector(model, 32, seed=7, chunk_rows=64)(x, y)[0]
    c = DenseProjector(model, 32, seed=8, chunk_rows=64)(x, y)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(projection_block(10, 4, 3, 5, "normal"), projection_block(10, 4, 3, 5, "normal"))


def test_projection_approximately_preserves_inner_products():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(20, 3000, generator=gen)
    for kind in ("rademacher", "normal"):
        p = projection_block(3000, 4096, seed=1, block=0, proj_type=kind)
        exact, approx = (g @ g.T).numpy(), ((g @ p) @ (g @ p).T).numpy()
        assert np.corrcoef(exact.ravel(), approx.ravel())[0, 1] > 0.99
        assert np.allclose(np.diag(approx) / np.diag(exact), 1, atol=0.15)
