"""Logs as clean as a terminal: bars only on a TTY, a plain line at most every N seconds in a log file, and
transformers' load report printed once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm.auto import tqdm

from trakscope import progress
from trakscope.progress import LogLines, progress_bar

SRC = str(Path(__file__).resolve().parents[1] / "src")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_file(monkeypatch):
    """stderr is not a terminal; a fake clock that the test advances; the last line printed "now"."""
    clock = Clock()
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress.time, "monotonic", clock)
    monkeypatch.setattr(progress, "_LAST_LINE", [clock.now])
    monkeypatch.delenv("TRAKSCOPE_PROGRESS_S", raising=False)
    return clock


def test_in_a_log_a_bar_is_a_plain_line_at_most_every_interval(log_file, capsys):
    bar = progress_bar(range(100), desc="featurize ckpt 0 train", unit="ex", leave=False, position=0)
    assert isinstance(bar, LogLines)
    for _ in bar:
        log_file.now += 1.0  # one second per item: 100 s in all
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["featurize ckpt 0 train: 30% (30/100 ex), 00:30 elapsed, ~01:10 left",
                     "featurize ckpt 0 train: 60% (60/100 ex), 01:00 elapsed, ~00:40 left",
                     "featurize ckpt 0 train: 90% (90/100 ex), 01:30 elapsed, ~00:10 left"]


def test_the_interval_is_one_setting_shared_by_every_bar(log_file, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 10.0)
    outer, inner = progress_bar(total=4.5, desc="trakscope run"), progress_bar(range(30), desc="train seed 0")
    for i in inner:
        log_file.now += 1.0
        if i % 15 == 14:
            outer.update(1.5)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["train seed 0: 33% (10/30 it), 00:10 elapsed, ~00:20 left",  # two bars, one clock:
                     "train seed 0: 67% (20/30 it), 00:20 elapsed, ~00:10 left",  # 30 s, at most every 10 s
                     "trakscope run: 67%, 00:30 elapsed, ~00:15 left"]
    monkeypatch.setenv("TRAKSCOPE_PROGRESS_S", "0")
    outer.update(0.5)
    assert capsys.readouterr().err == "trakscope run: 78%, 00:30 elapsed, ~00:08 left\n"


def test_on_a_terminal_it_is_tqdm_and_no_progress_shows_nothing(monkeypatch, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    bar = progress_bar(range(3), desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
    capsys.readouterr()
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    for _ in progress_bar(range(3), desc="x", disable=True):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_logged_run_of_a_transformers_model_has_no_bar_codes_and_one_load_report(hf_dir, tmp_path):
    log = tmp_path / "run.log"
    args = ["run", "--out", str(tmp_path / "run"), "--dataset", "digits", "--model", f"hf:{hf_dir}", "--weights",
            "pretrained", "--max-train", "40", "--max-test", "10", "--epochs", "1", "--ensemble", "2",
            "--batch-size", "20", "--proj-dim", "16", "--projector", "dense", "--device", "cpu",
            "--checkpoints-per-model", "1"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "2", "TRAKSCOPE_PROGRESS_S": "0"}
    with open(log, "w") as fh:  # a log file, as `trakscope run ... 2> run.log` makes
        proc = subprocess.run([sys.executable, "-m", "trakscope", *args], stdout=fh, stderr=fh, env=env, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text, text[:2000]
    assert text.count("LOAD REPORT") == 1, text  # the ensemble builds the model twice
    assert "featurize ckpt 0 train: " in text and "Loading weights" not in text
