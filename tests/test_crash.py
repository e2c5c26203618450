"""Crash safety, stage by stage: the real CLI killed with SIGKILL mid-stage, rerun, equals an uninterrupted run.

Each test starts the command in a subprocess, waits until a file of the stage appears in the run folder, kills
the process with SIGKILL, reruns the same command to completion and compares the outputs bit for bit with
those of an uninterrupted run (one shared reference per module). Scoring is too short to catch by polling, so
its test asks the writer to pause after ``scores/val.npy`` (``TRAKSCOPE_PAUSE_AFTER``, a test-only hook).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import TINY_RUN_ARGS

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
DETECT = ["--folds", "2", "--no-progress"]
REMOVAL = ["--fractions", "0.1", "--seeds", "1", "--strategies", "negative,random", "--no-progress"]
LDS = ["--models", "4", "--epochs", "1", "--no-progress"]
VOLATILE = {"seconds"}  # wall times inside records


def _command(name: str, folder: Path) -> list[str]:
    if name == "run":
        return ["run", "--out", str(folder), *TINY_RUN_ARGS]
    extra = {"detect": DETECT, "removal": REMOVAL, "lds": LDS}[name]
    return [name, "--run", str(folder), *extra]


def _cli(args: list[str], **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "2", **env}
    return subprocess.Popen([sys.executable, "-m", "trakscope", *args], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(args: list[str]) -> None:
    proc = _cli(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def _kill_when(args: list[str], marker: Path, **env: str) -> None:
    """Start the command, SIGKILL it as soon as ``marker`` exists; fail if it finished first."""
    proc = _cli(args, **env)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, f"finished before {marker.name} appeared: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the process ended before it could be killed mid-stage"


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        return fh.metadata(), {k: fh.get_tensor(k).tobytes() for k in fh.keys()}


def _assert_same(ref: Path, got: Path, subdirs: tuple[str, ...]) -> None:
    """Every output file under ``subdirs`` of ``ref`` exists in ``got`` with equal content (arrays bit for bit)."""
    files = [p for d in subdirs for p in sorted((ref / d).rglob("*") if (ref / d).is_dir() else [ref / d])
             if p.is_file() and p.suffix != ".png"]
    assert files
    for p in files:
        q = got / p.relative_to(ref)
        assert q.is_file(), f"{q} missing after the rerun"
        if p.suffix == ".npy":
            a, b = np.load(p, allow_pickle=False), np.load(q, allow_pickle=False)
            assert a.dtype == b.dtype and np.array_equal(a, b), p.relative_to(ref)
        elif p.suffix == ".safetensors":  # the header's key order is not fixed: compare tensors and metadata
            assert _safetensors(p) == _safetensors(q), p.relative_to(ref)
        elif p.suffix == ".json":
            assert _strip(json.loads(p.read_text())) == _strip(json.loads(q.read_text())), p.relative_to(ref)
        else:
            assert p.read_bytes() == q.read_bytes(), p.relative_to(ref)
    assert not [p for p in got.rglob("*.tmp*") if p.is_file()], "temp files left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted folders: after ``run``, after ``detect``, after ``removal``, and (from run) after ``lds``."""
    base = tmp_path_factory.mktemp("reference")
    ref = {"run": base / "run"}
    _finish(_command("run", ref["run"]))
    for name, source in (("detect", "run"), ("removal", "detect"), ("lds", "run")):
        ref[name] = base / name
        shutil.copytree(ref[source], ref[name])
        _finish(_command(name, ref[name]))
    return ref


RUN_OUTPUTS = ("models", "scores", "data")


def test_train_killed_after_first_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    _kill_when(_command("run", out), out / "models" / "model0_ckpt0.safetensors")
    _finish(_command("run", out))
    _assert_same(reference["run"], out, RUN_OUTPUTS)


def test_featurize_killed_mid_split(reference, tmp_path):
    out = tmp_path / "run"
    _kill_when(_command("run", out), out / "features" / "ckpt0" / "train_done.npy")
    _finish(_command("run", out))
    _assert_same(reference["run"], out, RUN_OUTPUTS)


def test_score_killed_between_score_files(reference, tmp_path):
    out = tmp_path / "run"
    _kill_when(_command("run", out), out / "scores" / "val.npy", TRAKSCOPE_PAUSE_AFTER="scores/val.npy")
    assert not (out / "scores" / "meta.json").exists()
    _finish(_command("run", out))
    _assert_same(reference["run"], out, RUN_OUTPUTS)


@pytest.mark.parametrize("stage, source, marker, outputs", [
    ("detect", "run", "detect/crossval/fold0.npy", ("detect",)),
    ("removal", "detect", "removal/retrains/negative_0.1_s0.json", ("removal",)),
    ("lds", "run", "lds/subsets/alpha0.5_seed0_ep1/model0.json", ("lds", "lds.json")),
])
def test_later_stage_killed_and_resumed(reference, tmp_path, stage, source, marker, outputs):
    out = tmp_path / "run"
    shutil.copytree(reference[source], out)
    _kill_when(_command(stage, out), out / marker)
    _finish(_command(stage, out))
    _assert_same(reference[stage], out, outputs)
