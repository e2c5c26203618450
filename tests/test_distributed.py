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
