"""Two ranks under torchrun (gloo, CPU) give the same scores as one process."""

import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import TINY_RUN_ARGS


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on loopback is tested on Linux")
def test_torchrun_two_ranks_match_single_process(tiny_run, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # as the fixture: same kernels, same rounding
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trakscope", "run", "--out", str(out), *TINY_RUN_ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("test", "val", "self"):
        assert np.array_equal(np.load(out / "scores" / f"{name}.npy"), np.load(tiny_run / "scores" / f"{name}.npy"))


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on loopback is tested on Linux")
def test_lds_subset_models_shared_out_over_two_ranks_match_one_process(tiny_run, tmp_path):
    """LDS, the heaviest job: two ranks each train half of the subset models; the result is one process's."""
    import json
    import shutil

    from trakscope.cli import main

    one, two = tmp_path / "one", tmp_path / "two"
    for dst in (one, two):
        shutil.copytree(tiny_run, dst)
    lds_args = ["--models", "4", "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(["lds", "--run", str(one), *lds_args]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trakscope", "--", "lds", "--run", str(two), *lds_args]  # "--": torchrun would take --run
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads((one / "lds.json").read_text()), json.loads((two / "lds.json").read_text())
    assert a["lds_mean"] == b["lds_mean"] and a["lds_ci95"] == b["lds_ci95"]
    folder = next((one / "lds" / "subsets").iterdir()).name
    for i in range(4):
        for split in ("test", "val"):
            name = f"model{i}_{split}.npy"
            a_margins, b_margins = (np.load(d / "lds/subsets" / folder / name) for d in (one, two))
            assert np.array_equal(a_margins, b_margins)
    seconds = [json.loads((two / "lds/subsets" / folder / f"model{i}.json").read_text()) for i in range(4)]
    assert len({s["seed"] for s in seconds}) == 4
