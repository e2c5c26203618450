"""The CUDA code paths, checked against the CPU: featurization, scores, and a whole CLI run on ``--device cuda``.

Marked ``cuda``: skipped where torch sees no CUDA device (CI here); ``scripts/gpu-check.sh`` runs them on a GPU.
The CPU side of the same paths (device placement through ``inputs_to``, the float64 Cholesky on the CPU, memmaps)
runs in every other test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trakscope import TRAK
from trakscope.cli import main

from .conftest import TINY_RUN_ARGS

pytestmark = pytest.mark.cuda


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(64, 3))
    x, y = torch.randn(40, 3, 4, 4), torch.arange(40) % 3
    return model, x, y


@pytest.mark.parametrize("projector", ["kronecker", "dense"])
def test_features_and_scores_on_cuda_match_the_cpu(tmp_path, projector):
    """The same model, data and seeds: cuda's scores equal the CPU's to float32 round-off (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    scores = {}
    for device in ("cpu", "cuda"):
        model, x, y = _tiny()
        trak = TRAK(model, tmp_path / device, projector=projector, proj_dim=32, device=device, progress=False)
        trak.featurize([(x[:30], y[:30])], split="train", n=30)
        trak.featurize([(x[30:], y[30:])], split="test", n=10)
        scores[device] = trak.scores("train", "test")
    assert np.abs(scores["cuda"] - scores["cpu"]).max() <= 1e-3 * np.abs(scores["cpu"]).max()


def test_a_cli_run_on_cuda_matches_the_cpu_run(tiny_run, tmp_path):
    """``trakscope run --device cuda`` trains, featurizes and scores; its ensemble is as accurate as the CPU's
    (training order is seeded alike, but CUDA kernels round differently), and its scores agree in rank.

    Calibration, on the CPU: two tiny runs that differ only in --train-seed have a median per-target rank
    correlation of 0.73 (0.83 for --proj-seed); scores on the wrong device or unrelated to the model give about 0.
    Rounding differences are bounded by a different seed, so 0.5 passes a correct run and fails a broken one."""
    out = tmp_path / "run"
    args = [a if a != "cpu" else "cuda" for a in TINY_RUN_ARGS]
    assert main(["run", "--out", str(out), *args]) == 0
    cpu = json.loads((tiny_run / "models" / "metrics.json").read_text())["ensemble"]
    gpu = json.loads((out / "models" / "metrics.json").read_text())["ensemble"]
    assert abs(gpu["test_acc"] - cpu["test_acc"]) <= 0.1
    a, b = np.load(tiny_run / "scores" / "test.npy"), np.load(out / "scores" / "test.npy")
    ranks = [np.corrcoef(np.argsort(np.argsort(a[:, j])), np.argsort(np.argsort(b[:, j])))[0, 1]
             for j in range(a.shape[1])]
    assert np.median(ranks) >= 0.5
