"""Shared fixtures: a tiny real run folder built once per session through the CLI."""

from __future__ import annotations

import os

import pytest

# Tests run on 2 cores next to other work; keep torch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")



def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no CUDA device (this project's CI, a laptop)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check.sh runs these where one is)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


TINY_RUN_ARGS = [
    "--dataset", "digits", "--model", "tiny_cnn", "--max-train", "200", "--max-test", "60",
    "--epochs", "6", "--ensemble", "2", "--batch-size", "32", "--lr", "0.1",
    "--proj-dim", "64", "--projector", "dense", "--noise", "0.1", "--no-progress", "--device", "cpu",
    "--checkpoints-per-model", "1", "--ridge", "3",  # the fixture's calibrated setting: one final checkpoint each
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Path of a finished tiny run (digits, TinyCNN, 2 models, dense projection to 64 dims). Do not modify it."""
    from trakscope.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["run", "--out", str(out), *TINY_RUN_ARGS]) == 0
    return out


HF_MEAN, HF_STD, HF_SIZE = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 40


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A folder with a tiny random ``ResNetForImageClassification`` (5 labels) and a ConvNeXt processor config."""
    transformers = pytest.importorskip("transformers")
    import torch

    path = tmp_path_factory.mktemp("hf") / "tiny-resnet"
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=5)
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(config).save_pretrained(path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": HF_SIZE}, image_mean=list(HF_MEAN),
                                        image_std=list(HF_STD)).save_pretrained(path)
    return path
