"""The mission's own setting end to end through the CLI: a Hugging Face ResNet (logits in ``output.logits``)
fine-tuned on a Food-101 tree (torchvision layout), then inspect, detect and report.

Every image of a class is the same solid colour, so what the results must say is known: a test image's
highest scores go to training images of its class with its label, a planted wrong label (the same image with
another class) lowers that class's margin, and the detectors put the planted labels first.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from trakscope.cli import main
from trakscope.io import read_csv
from trakscope.run_folder import RunFolder

from .conftest import HF_SIZE
from .test_data_files import make_food101

transformers = pytest.importorskip("transformers")
CLASSES = ["apple_pie", "sushi", "tacos"]


def _assert_scores_mean_what_they_say(scores: np.ndarray, train: dict, test: dict) -> None:
    """Measured on every one of the 12 test examples: the 5 highest scores go to clean training images of the
    target's class, and every planted wrong label on an image of the target's class scores below 0 (-0.05 to
    -0.02; clean images of the class score +0.003 to +0.037)."""
    clean = ~train["noisy"].astype(bool)
    for t, label in enumerate(test["label"]):
        top = np.argsort(-scores[:, t], kind="stable")[:5]
        assert clean[top].all() and (train["label"][top] == label).all(), t
        flipped_copies = ~clean & (train["true_label"] == label)
        assert (scores[flipped_copies, t] < 0).all(), t


def _assert_suspects_found(run: RunFolder, noisy: np.ndarray) -> dict:
    """detect's metrics and ranking.csv: the 4 planted labels are found (measured: ROC-AUC 1.000 for every TRAK
    scorer and the loss, 0.986 for AUM; the ranking, ordered by AUM, has planted labels at rows 1, 2, 3 and 6)."""
    metrics = json.loads(run.detect_metrics_path.read_text())
    assert metrics["n_noisy"] == noisy.sum() == 4
    for name, row in metrics["scorers"].items():
        assert row["roc_auc"] > 0.9, name
    rows = read_csv(run.ranking_path)
    assert [r["noisy"] == "1" for r in sorted(rows, key=lambda r: int(r["index"]))] == noisy.tolist()
    assert sum(r["noisy"] == "1" for r in rows[:4]) >= 2
    top_self_influence = {int(r["index"]) for r in rows if int(r["self_influence_rank"]) <= 6}  # measured: top 4
    assert set(np.flatnonzero(noisy).tolist()) <= top_self_influence
    return metrics


def _report_data(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    return json.loads(block.group(1))


def _assert_report_sections(html: str, run: RunFolder, metrics: dict, out: str) -> None:
    """The page has its six sections; the summary, suspects and detection say what the run found; removal and LDS
    name the commands that fill them."""
    assert re.findall(r'<section id="([a-z]+)">', html) == ["summary", "explorer", "suspects", "detection",
                                                            "removal", "lds"]
    summary = html[html.index('<section id="summary">'):html.index('<section id="explorer">')]
    assert '<div class="s">apple_pie, sushi, tacos</div>' in summary
    assert '<div class="k">planted noise</div><div class="v">4</div>' in summary
    accuracy = json.loads(run.metrics_path.read_text())["ensemble"]["test_acc"]
    assert f'<div class="k">ensemble accuracy</div><div class="v">{accuracy:.1%}</div>' in summary
    detection = html[html.index('<section id="detection">'):html.index('<section id="removal">')]
    assert 'alt="detection curves"' in detection
    for name, row in metrics["scorers"].items():
        assert f"<tr><td>{name}</td><td>{row['roc_auc']:.3f}</td>" in detection
    for command in ("removal", "lds"):
        assert f"<code>trakscope {command} --run {out}</code>" in html
    data = _report_data(html)
    assert data["classes"] == CLASSES and sum(data["splits"]["train"]["noisy"]) == 4
    suspects = data["suspects"]
    assert suspects["primary"] == metrics["primary"]
    ranking = [int(r["index"]) for r in read_csv(run.ranking_path)]
    assert suspects["order"][suspects["primary"]] == ranking


def test_hf_resnet_on_food101_layout_run_inspect_detect_report(hf_dir, tmp_path, capsys):
    make_food101(tmp_path / "data", n_train=14, n_test=4)
    out = tmp_path / "run"
    run_args = ["run", "--out", str(out), "--dataset", "food101", "--data-root", str(tmp_path / "data"),
                "--classes", ",".join(CLASSES), "--model", f"hf:{hf_dir}", "--weights", "pretrained",
                "--noise", "0.1", "--epochs", "2", "--ensemble", "2", "--batch-size", "8", "--proj-dim", "64",
                "--no-progress", "--device", "cpu"]
    assert main(run_args) == 0
    run = RunFolder(out)
    assert run.config.data.image_size == HF_SIZE  # from the model's own processor config
    assert run.classes == CLASSES
    train, test = run.data.table("train"), run.data.table("test")
    scores = run.results.scores("test")
    assert scores.shape == (len(train["index"]), 12) and np.isfinite(scores).all()
    _assert_scores_mean_what_they_say(scores, train, test)
    capsys.readouterr()
    assert main(["inspect", "--run", str(out), "--target", "0", "--top", "3", "--view", "raw"]) == 0
    highest = capsys.readouterr().out.split("highest raw scores")[1].split("lowest raw scores")[0].splitlines()[2:5]
    assert all("images/apple_pie/" in line and "NOISY" not in line for line in highest), highest
    assert main(["detect", "--run", str(out), "--no-cleanlab", "--no-progress", "--device", "cpu"]) == 0
    metrics = _assert_suspects_found(run, train["noisy"].astype(bool))
    assert main(["report", "--run", str(out)]) == 0
    _assert_report_sections(run.report_path.read_text(), run, metrics, str(out))
