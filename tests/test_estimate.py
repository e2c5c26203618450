"""Say it before doing it: the trainings a stage still has to do and their time, from the run's measured speed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trakscope
from trakscope.cli import main
from trakscope.methods.folds import fold_assignment
from trakscope.methods.lds import subset_masks
from trakscope.run_folder import RunFolder
from trakscope.stages.estimate import estimate_seconds, plan_line, seconds_per_example_epoch, training_ranks

CPU = ["--no-progress", "--device", "cpu"]


def test_speed_and_estimate_are_exact_on_a_fake_timings_record():
    timings = {"data": 1.0, "train": 12.0, "featurize": 30.0}  # 2 members x 6 epochs x 200 examples in 12 s
    speed = seconds_per_example_epoch(timings, members=2, epochs=6, n_train=200, imported=False)
    assert speed == pytest.approx(12.0 / 2400)
    # an ensemble trained by 2 torchrun ranks: its 12 s were each rank's half, one process would take 24 s
    assert seconds_per_example_epoch(timings, members=2, epochs=6, n_train=200, imported=False,
                                     ranks=2) == pytest.approx(24.0 / 2400)
    assert seconds_per_example_epoch(timings, members=2, epochs=6, n_train=200, imported=False,
                                     ranks=4) == pytest.approx(24.0 / 2400)  # 2 members: 2 ranks worked
    assert estimate_seconds([100, 150], 8, speed) == pytest.approx(10.0)  # 250 example x 8 epochs x 5 ms
    assert estimate_seconds([100, 150], 8, speed, world=2) == pytest.approx(5.0)  # two ranks share two trainings
    assert estimate_seconds([100], 8, speed, world=4) == pytest.approx(4.0)  # one training: one rank works
    assert estimate_seconds([], 8, speed) == 0.0
    line = plan_line("remove and retrain", [100, 150], 8, 3, speed)
    assert line.startswith("remove and retrain: 2 of 5 trainings to do (3 already done), 125 examples x 8 epochs")
    assert "about 10 s (the ensemble's measured 5 ms per example-epoch, timings.json)" in line
    shared = plan_line("remove and retrain", [100, 150], 8, 3, speed, world=2)
    assert "about 5 s, shared by 2 ranks (total 10 s)" in shared


def test_no_measured_speed_says_so_instead_of_guessing():
    for timings, imported in [({"train": 12.0}, True), ({"data": 1.0}, False), ({"train": "12"}, False),
                              ({"train": 0.0}, False), ({}, False)]:
        assert seconds_per_example_epoch(timings, members=2, epochs=6, n_train=200, imported=imported) is None
    assert estimate_seconds([100], 6, None) is None
    imported = plan_line("cross-validation", [100, 100], 6, 0, None, imported=True)
    assert "no time estimate" in imported and "imported (--checkpoints)" in imported and "about" not in imported
    old = plan_line("cross-validation", [100, 100], 6, 0, None)
    assert "no time estimate" in old and "timings.json records no `train` time" in old
    assert plan_line("cross-validation", [], 6, 3, None) == "cross-validation: 0 of 3 trainings to do (3 already done)"
    own = plan_line("cross-validation", [100, 100], 6, 0, 0.005, recipe="train_fn mine.fit")  # a speed, not theirs
    assert own == ("cross-validation: 2 of 2 trainings to do (0 already done), 100 examples each on average: no time "
                   "estimate, this run has no measured training speed: they train with your train_fn mine.fit, which "
                   "this run has not timed")


def _speed(run: RunFolder) -> float:
    cfg = run.config
    timings = json.loads((run.path / "timings.json").read_text())
    return timings["train"] / (cfg.train.ensemble * cfg.train.epochs * len(run.data.table("train")["index"]))


def _plan_lines(out: str, what: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(what + ":")]


def test_training_ranks_are_read_only_from_verified_metrics(tiny_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(tiny_run, path)
    run = RunFolder(path)
    assert training_ranks(run) == 1  # one process wrote no train_ranks
    metrics = json.loads(run.metrics_path.read_text())
    run.results.write(run.metrics_path, "model_metrics", {k: v for k, v in metrics.items()
                                                          if k not in ("format", "kind")} | {"train_ranks": 2})
    assert training_ranks(RunFolder(path)) == 2
    edited = json.loads(run.metrics_path.read_text()) | {"train_ranks": 3}  # changed behind trakscope's back
    run.metrics_path.write_text(json.dumps(edited))
    assert training_ranks(RunFolder(path)) == 1  # not trusted: the estimate falls back to one process


def test_detect_says_its_folds_before_training_them(tiny_run, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(tiny_run, path)  # the fixture's folder is shared: work on a copy
    run = RunFolder(path)
    folds = fold_assignment(run.data.table("train")["label"], 2, run.config.train.seed)
    capsys.readouterr()
    assert main(["detect", "--run", str(path), "--folds", "2", *CPU]) == 0
    expected = plan_line("cross-validation", [int((folds != f).sum()) for f in range(2)], run.config.train.epochs, 0,
                         _speed(run))
    assert _plan_lines(capsys.readouterr().out, "cross-validation") == [expected]
    assert "2 of 2 trainings to do (0 already done)" in expected and "about" in expected
    run.fold_probs_path(1).unlink()  # one fold still to train, the other cached
    assert main(["detect", "--run", str(path), "--folds", "2", *CPU]) == 0
    [line] = _plan_lines(capsys.readouterr().out, "cross-validation")
    assert line == plan_line("cross-validation", [int((folds != 1).sum())], run.config.train.epochs, 1, _speed(run))


def test_removal_counts_only_the_retrains_not_cached(tiny_run, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(tiny_run, path)
    assert main(["detect", "--run", str(path), "--no-cleanlab", *CPU]) == 0
    removal = ["removal", "--run", str(path), "--strategies", "random", "--fractions", "0.1", "--seeds", "1", *CPU]
    capsys.readouterr()
    assert main(removal) == 0
    [line] = _plan_lines(capsys.readouterr().out, "remove and retrain")
    # full data is ensemble member 0 (already done); random removes 10% of 200 and keeps 180
    assert line.startswith("remove and retrain: 1 of 2 trainings to do (1 already done), 180 examples x 6 epochs")
    seconds = 180 * 6 * _speed(RunFolder(path))
    assert re.search(r"about (\d+) s", line).group(1) == f"{seconds:.0f}"
    assert main(removal) == 0
    assert _plan_lines(capsys.readouterr().out, "remove and retrain") == [
        "remove and retrain: 0 of 2 trainings to do (2 already done)"]


def test_lds_counts_the_subset_models_not_cached_at_its_own_epochs(tiny_run, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(tiny_run, path)
    run = RunFolder(path)
    kept = int(subset_masks(200, 0.5, 1, 0).sum())
    capsys.readouterr()
    assert main(["lds", "--run", str(path), "--models", "3", "--epochs", "2", *CPU]) == 0  # the fewest it takes
    [line] = _plan_lines(capsys.readouterr().out, "LDS subset models (alpha=0.5)")
    assert line == plan_line("LDS subset models (alpha=0.5)", [kept] * 3, 2, 0, _speed(run))
    assert "3 of 3 trainings to do (0 already done), 100 examples x 2 epochs" in line
    (path / "timings.json").unlink()  # no measured speed: said, not guessed
    assert main(["lds", "--run", str(path), "--models", "4", "--epochs", "2", *CPU]) == 0  # the first 3 are cached
    [line] = _plan_lines(capsys.readouterr().out, "LDS subset models (alpha=0.5)")
    assert line.startswith("LDS subset models (alpha=0.5): 1 of 4 trainings to do (3 already done)")
    assert "no time estimate" in line and "timings.json records no `train` time" in line
    assert np.isfinite(json.loads((path / "lds.json").read_text())["lds_mean"])


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on loopback is tested on Linux")
def test_under_torchrun_the_estimate_is_shared_by_the_ranks_and_said_once(tiny_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(tiny_run, path)
    assert main(["detect", "--run", str(path), "--no-cleanlab", *CPU]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(trakscope.__file__).parents[1]),
                                                         *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trakscope",
           "--", "removal", "--run", str(path), "--strategies", "random", "--fractions", "0.1", "--seeds", "2", *CPU]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = _plan_lines(proc.stdout, "remove and retrain")  # every rank plans, rank 0 speaks for both
    speed = _speed(RunFolder(path))  # two random retrains keep 180 each; the full-data references are the members
    assert line == plan_line("remove and retrain", [180, 180], 6, 2, speed, world=2)
    assert f"about {180 * 6 * speed:.0f} s, shared by 2 ranks (total {2 * 180 * 6 * speed:.0f} s)" in line
