"""Slow quality checks on real data (run with ``pytest -m slow``): attribution that predicts retraining, and
detection of planted label noise. Thresholds are far below what the benchmarks measure, far above chance."""

import json

import numpy as np
import pytest

from trakscope.cli import main

pytestmark = pytest.mark.slow

RUN_ARGS = [
    "--noise", "0.1","--dataset", "mnist", "--model", "tiny_cnn", "--max-train", "600", "--max-test", "150",
            "--epochs", "8", "--ensemble", "3", "--batch-size", "32", "--lr", "0.1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "run"
    assert main(["run", "--out", str(out), *RUN_ARGS]) == 0
    return out


def test_lds_of_trak_is_well_above_chance_for_both_projectors(mnist_run, tmp_path):
    assert main(["lds", "--run", str(mnist_run), "--models", "16", "--no-progress"]) == 0
    kron = json.loads((mnist_run / "lds.json").read_text())["lds_mean"]
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(np.load(mnist_run / "scores" / "test.npy"), axis=0)
    np.save(tmp_path / "shuffled.npy", shuffled)
    assert main(["lds", "--run", str(mnist_run), "--models", "16", "--scores", str(tmp_path / "shuffled.npy"),
                 "--out", str(tmp_path / "shuffled.json"), "--no-progress"]) == 0
    chance = json.loads((tmp_path / "shuffled.json").read_text())["lds_mean"]
    assert kron > 0.15 and kron > chance + 0.1, (kron, chance)


def test_planted_noise_is_found_by_trak_self_influence_and_d3m(mnist_run):
    assert main(["detect", "--run", str(mnist_run), "--no-cleanlab", "--no-progress"]) == 0
    metrics = json.loads((mnist_run / "detect" / "metrics.json").read_text())
    per = metrics["scorers"]
    assert per["self_influence"]["roc_auc"] > 0.8
    assert per["d3m"]["roc_auc"] > 0.7
