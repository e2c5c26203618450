"""The mission's own setting end to end through the CLI: a Hugging Face ResNet (logits in ``output.logits``)
fine-tuned on a Food-101 tree (torchvision layout), then inspect, detect and report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trakscope.cli import main
from trakscope.run_folder import RunFolder

from .conftest import HF_SIZE
from .test_data_files import make_food101

transformers = pytest.importorskip("transformers")


def test_hf_resnet_on_food101_layout_run_inspect_detect_report(hf_dir, tmp_path, capsys):
    make_food101(tmp_path / "data", n_train=14, n_test=4)
    out = tmp_path / "run"
    run_args = ["run", "--out", str(out), "--dataset", "food101", "--data-root", str(tmp_path / "data"),
                "--classes", "apple_pie,sushi,tacos", "--model", f"hf:{hf_dir}", "--weights", "pretrained",
                "--noise", "0.1", "--epochs", "2", "--ensemble", "2", "--batch-size", "8", "--proj-dim", "64",
                "--no-progress", "--device", "cpu"]
    assert main(run_args) == 0
    run = RunFolder(out)
    assert run.config.data.image_size == HF_SIZE  # from the model's own processor config
    n_train = len(run.table("train")["index"])
    assert run.scores("test").shape == (n_train, 12) and np.isfinite(run.scores("test")).all()
    assert len(json.loads(run.metrics_path.read_text())["models"]) == 2
    assert main(["inspect", "--run", str(out), "--target", "0", "--top", "3"]) == 0
    assert main(["detect", "--run", str(out), "--no-cleanlab", "--no-progress", "--device", "cpu"]) == 0
    assert main(["report", "--run", str(out)]) == 0
    html = run.report_path.read_text()
    assert "sushi" in html and "hf:" in html
    out_text = capsys.readouterr().out
    assert "images/" in out_text  # inspect names the training images by their Food-101 path
