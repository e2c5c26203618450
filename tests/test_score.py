"""TRAK scoring against closed forms: an exact dense solve, a logistic model, and every checkpoint counted."""

import numpy as np
import pytest
import torch

from trakscope.attribution.dense import DenseProjector
from trakscope.attribution.output import out_to_loss
from trakscope.attribution.score import gram, regularized_inverse, trak_scores


def test_gram_and_inverse_match_dense_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    xtx = gram(x, block=7)
    assert np.allclose(xtx, x.astype(np.float64).T @ x, atol=1e-8)
    inv, lam = regularized_inverse(xtx, ridge=0.1)
    assert lam == pytest.approx(0.1 * np.trace(xtx) / 8)
    assert np.allclose(inv, np.linalg.inv(xtx + lam * np.eye(8)), atol=1e-10)


def test_ridge_keeps_few_examples_many_dims_solvable():
    """5 examples in 40 dims: X^T X has rank 5, and the ridge makes the inverse exact: (X^T X + lambda I)^-1."""
    x = np.random.default_rng(0).normal(size=(5, 40))
    inv, lam = regularized_inverse(gram(x), ridge=1e-3)
    assert lam == pytest.approx(1e-3 * np.trace(x.T @ x) / 40)
    dense = np.linalg.solve(x.T @ x + lam * np.eye(40), np.eye(40))  # condition number ~1.3e4
    # measured: max error 4.6e-13 of the largest entry (213); a float32 Cholesky gives 1.9e-4
    assert np.abs(inv - dense).max() < 1e-9 * np.abs(dense).max()


def test_scores_average_every_checkpoint_then_multiply_mean_q():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(30, 6)) for _ in range(3)]
    phis = [rng.normal(size=(4, 6)) for _ in range(3)]
    qs = [rng.uniform(0.1, 0.9, size=30) for _ in range(3)]
    invs = [regularized_inverse(gram(x), 0.05)[0] for x in xs]
    scores, self_inf = trak_scores(xs, invs, phis, np.mean(qs, 0), block=7)
    expected = np.mean([x @ a @ p.T for x, a, p in zip(xs, invs, phis)], 0) * np.mean(qs, 0)[:, None]
    assert np.allclose(scores, expected, rtol=1e-4, atol=1e-5)
    last_only = (xs[-1] @ invs[-1] @ phis[-1].T) * np.mean(qs, 0)[:, None]
    assert not np.allclose(scores, last_only, rtol=1e-2)  # the official D3M code's bug: only the last one
    self_expected = np.mean([np.einsum("id,de,ie->i", x, a, x) for x, a in zip(xs, invs)], 0) * np.mean(qs, 0)
    assert np.allclose(self_inf, self_expected, rtol=1e-4)


def test_scores_written_to_disk_equal_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    x, phi, q = rng.normal(size=(23, 5)), rng.normal(size=(9, 5)), rng.uniform(size=23)
    inv = regularized_inverse(gram(x), 0.1)[0]
    mem, _ = trak_scores([x], [inv], [phi], q, block=4)
    disk, _ = trak_scores([x], [inv], [phi], q, out_path=tmp_path / "s.npy", block=4)
    assert disk.shape == (23, 9) and np.allclose(mem, disk)
    assert list(tmp_path.iterdir()) == [tmp_path / "s.npy"]  # no temp files left behind


def test_logistic_model_without_projection_equals_closed_form():
    """Linear model z = W x + b: grad of the margin is (e_y - softmax_{k!=y}(z)) outer [x, 1]."""
    torch.manual_seed(0)
    n, t, d, c = 40, 5, 4, 3
    model = torch.nn.Linear(d, c).double()
    x, xt = torch.randn(n, d, dtype=torch.float64), torch.randn(t, d, dtype=torch.float64)
    y, yt = torch.randint(0, c, (n,)), torch.randint(0, c, (t,))

    def closed_form_grads(inp, lab):
        z = (inp @ model.weight.T + model.bias).detach().numpy()
        rows = []
        for zi, xi, yi in zip(z, inp.numpy(), lab.numpy()):
            others = np.exp(zi - zi.max())
            others[yi] = 0
            coef = -others / others.sum()
            coef[yi] = 1.0
            rows.append(np.concatenate([np.outer(coef, xi).ravel(), coef]))
        return np.array(rows)

    proj = DenseProjector(model, 1, seed=0)
    g, logits = proj.per_example_grads(x, y)
    gt, _ = proj.per_example_grads(xt, yt)
    phi, phi_t = closed_form_grads(x, y), closed_form_grads(xt, yt)
    assert np.allclose(g.numpy(), phi, atol=1e-10) and np.allclose(gt.numpy(), phi_t, atol=1e-10)
    q = out_to_loss(logits, y).numpy()
    lam = 1e-3 * np.trace(phi.T @ phi) / phi.shape[1]
    expected = phi @ np.linalg.solve(phi.T @ phi + lam * np.eye(phi.shape[1]), phi_t.T) * q[:, None]
    inv, _ = regularized_inverse(gram(g.numpy()), 1e-3)
    scores, _ = trak_scores([g.numpy()], [inv], [gt.numpy()], q)
    assert np.allclose(scores, expected, rtol=1e-4, atol=1e-6)
