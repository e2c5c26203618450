"""Our scores against the reference library ``traker`` (PyPI) on a tiny model: same checkpoints, no projection."""

import numpy as np
import pytest
import torch

from trakscope.attribution.dense import DenseProjector
from trakscope.attribution.output import out_to_loss
from trakscope.attribution.score import gram, regularized_inverse, trak_scores

trak = pytest.importorskip("trak")
LAMBDA = 1e-2


class Small(torch.nn.Module):
    """Conv + BatchNorm + linear head with fewer parameters (118) than training examples."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(2)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _checkpoints():
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = Small()
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2)
        states.append(m.state_dict())
    return states


@pytest.mark.parametrize("n_ckpts", [1, 2])
def test_scores_agree_with_traker(tmp_path, n_ckpts):
    """One checkpoint: the same scores. Several: traker rescales each checkpoint's (X^T X + lambda I)^-1 by
    its mean absolute entry before averaging (score_computers.py, "center X^TX inverse"), which reweights
    the checkpoints; we follow the paper's plain mean, and agree with traker once that rescaling is applied."""
    torch.manual_seed(0)
    x, y = torch.randn(300, 3, 8, 8), torch.randint(0, 10, (300,))
    xt, yt = torch.randn(12, 3, 8, 8), torch.randint(0, 10, (12,))
    model = Small().eval()
    ckpts = _checkpoints()[:n_ckpts]
    feats, targets, invs, qs, lams = [], [], [], [], []
    for state in ckpts:
        model.load_state_dict(state)
        proj = DenseProjector(model.eval(), 1, seed=0)
        g, logits = proj.per_example_grads(x, y)
        feats.append(g.numpy())
        targets.append(proj.per_example_grads(xt, yt)[0].numpy())
        xtx = gram(g.numpy())
        # Margin gradients are rank-deficient, so lambda > 0. traker takes one absolute lambda for all checkpoints
        # and divides the gradients by sqrt(#params) first, so its lambda is ours divided by #params.
        ours_lambda = LAMBDA * proj.num_params
        inv, lam = regularized_inverse(xtx, ours_lambda * xtx.shape[0] / np.trace(xtx))
        invs.append(inv)
        lams.append(lam)
        qs.append(out_to_loss(logits, y).numpy())
    ours, _ = trak_scores(feats, invs, targets, np.mean(qs, 0))
    rescaled = [inv / np.abs(inv).mean() for inv in invs]
    ours_traker_weighting, _ = trak_scores(feats, rescaled, targets, np.mean(qs, 0))
    from trak.projectors import NoOpProjector

    traker = trak.TRAKer(model=model, task="image_classification", train_set_size=300, save_dir=str(tmp_path),
                         device="cpu", projector=NoOpProjector(device="cpu"), proj_dim=0, use_half_precision=False,
                         lambda_reg=LAMBDA, logging_level=40)
    for mid, state in enumerate(ckpts):
        traker.load_checkpoint(state, model_id=mid)
        for s in range(0, 300, 50):
            traker.featurize(batch=(x[s : s + 50], y[s : s + 50]), num_samples=50)
    traker.finalize_features()
    for mid, state in enumerate(ckpts):
        traker.start_scoring_checkpoint(exp_name="t", checkpoint=state, model_id=mid, num_targets=12)
        traker.score(batch=(xt, yt), num_samples=12)
    reference = np.asarray(traker.finalize_scores(exp_name="t"))

    assert reference.shape == ours.shape == (300, 12)
    assert np.allclose(lams, LAMBDA * proj.num_params)
    compared = ours if n_ckpts == 1 else ours_traker_weighting
    corr = [np.corrcoef(reference[:, j], compared[:, j])[0, 1] for j in range(12)]
    assert min(corr) >= 0.99, corr
