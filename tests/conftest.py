"""Shared fixtures: a tiny real run folder built once per session through the CLI."""

from __future__ import annotations

import os

import pytest

# Tests run on 2 cores next to other work; keep torch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_RUN_ARGS = [
    "--dataset", "digits", "--model", "tiny_cnn", "--max-train", "200", "--max-test", "60",
    "--epochs", "6", "--ensemble", "2", "--batch-size", "32", "--lr", "0.1",
    "--proj-dim", "64", "--projector", "dense", "--noise", "0.1", "--no-progress", "--device", "cpu",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Path of a finished tiny run (digits, TinyCNN, 2 models, dense projection to 64 dims). Do not modify it."""
    from trakscope.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["run", "--out", str(out), *TINY_RUN_ARGS]) == 0
    return out
