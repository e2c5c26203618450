"""Two ranks under torchrun (gloo, CPU) give the same results as one process, and share out the trainings."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import TINY_RUN_ARGS

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on loopback is tested on Linux")
SRC = str(Path(__file__).resolve().parents[1] / "src")

# Run as torchrun's script: trakscope's CLI, with every train_final_model call (folds, retrains) logged to
# TRAINED_LOG/rank<r>.txt as "seed sha1(keep)", so that a test sees which rank trained what, and how often.
LOGGED_CLI = """
import hashlib, os, sys
import numpy as np
import trakscope.train, trakscope.stages.crossval
original = trakscope.train.train_final_model
def logged(*args, keep=None, seed=None, **kwargs):
    what = "all" if keep is None else hashlib.sha1(np.asarray(keep, dtype=np.int64).tobytes()).hexdigest()[:12]
    with open(os.path.join(os.environ["TRAINED_LOG"], "rank" + os.environ["RANK"] + ".txt"), "a") as fh:
        fh.write(f"{seed} {what}\\n")
    return original(*args, keep=keep, seed=seed, **kwargs)
trakscope.train.train_final_model = trakscope.stages.crossval.train_final_model = logged
from trakscope.cli import main
sys.exit(main())
"""


def _torchrun(target: list[str], args: list[str]) -> None:
    """``torchrun --nproc_per_node 2 TARGET -- ARGS`` on this worktree's code, as many threads as this process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),  # same kernels, same rounding
           "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target,
           "--", *args]  # "--": torchrun would take --run for its own --run-path
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _logged_torchrun(tmp_path: Path, args: list[str]) -> dict[int, list[str]]:
    """Run the CLI under torchrun with trainings logged; ``{rank: ["seed keep-hash", ...]}``."""
    script, log = tmp_path / "logged_cli.py", tmp_path / "trained"
    script.write_text(LOGGED_CLI)
    shutil.rmtree(log, ignore_errors=True)
    log.mkdir()
    os.environ["TRAINED_LOG"] = str(log)
    try:
        _torchrun([str(script)], args)
    finally:
        del os.environ["TRAINED_LOG"]
    return {r: (log / f"rank{r}.txt").read_text().split("\n")[:-1] if (log / f"rank{r}.txt").exists() else []
            for r in range(2)}


def _copies(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    one, two = tmp_path / "one", tmp_path / "two"
    for dst in (one, two):
        shutil.copytree(tiny_run, dst)
    return one, two


def _removed_in_one_process(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Two detected copies of the run, ``one`` with removal done in this process; and the removal arguments."""
    from trakscope.cli import main

    one, _ = _copies(tiny_run, tmp_path)
    assert main(["detect", "--run", str(one), "--no-cleanlab", "--no-progress", "--device", "cpu"]) == 0
    two = tmp_path / "two"
    shutil.rmtree(two)
    shutil.copytree(one, two)
    removal_args = ["--strategies", "random,loss", "--fractions", "0.1", "--seeds", "2", "--no-progress",
                    "--device", "cpu"]
    assert main(["removal", "--run", str(one), *removal_args]) == 0
    return one, two, removal_args


def test_torchrun_two_ranks_match_single_process(tiny_run, tmp_path):
    out = tmp_path / "dist"
    _torchrun(["-m", "trakscope"], ["run", "--out", str(out), *TINY_RUN_ARGS])
    for name in ("test", "val", "self"):
        assert np.array_equal(np.load(out / "scores" / f"{name}.npy"), np.load(tiny_run / "scores" / f"{name}.npy"))
    # the ensemble's training was shared by 2 ranks: the estimates read one process's speed from it
    assert json.loads((out / "models" / "metrics.json").read_text())["train_ranks"] == 2
    assert "train_ranks" not in json.loads((tiny_run / "models" / "metrics.json").read_text())


def test_lds_subset_models_shared_out_over_two_ranks_match_one_process(tiny_run, tmp_path):
    """LDS, the heaviest job: two ranks each train half of the subset models; the result is one process's."""
    from trakscope.cli import main

    one, two = _copies(tiny_run, tmp_path)
    lds_args = ["--models", "4", "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(["lds", "--run", str(one), *lds_args]) == 0
    _torchrun(["-m", "trakscope"], ["lds", "--run", str(two), *lds_args])
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


def test_detect_folds_shared_out_over_two_ranks_match_one_process(tiny_run, tmp_path):
    """Each rank trains one of the two cross-validation folds; ranking and metrics are one process's."""
    from trakscope.cli import main

    one, two = _copies(tiny_run, tmp_path)
    detect_args = ["--folds", "2", "--no-progress", "--device", "cpu"]
    assert main(["detect", "--run", str(one), *detect_args]) == 0
    trained = _logged_torchrun(tmp_path, ["detect", "--run", str(two), *detect_args])
    assert [len(trained[r]) for r in (0, 1)] == [1, 1] and trained[0] != trained[1]  # each fold once, by one rank
    for name in ("crossval/folds.npy", "crossval/fold0.npy", "crossval/fold1.npy"):
        assert np.array_equal(np.load(one / "detect" / name), np.load(two / "detect" / name))
    for name in ("ranking.csv", "metrics.json"):
        assert (one / "detect" / name).read_bytes() == (two / "detect" / name).read_bytes()
    assert "detect_crossval" in json.loads((two / "timings.json").read_text())


def test_removal_retrains_shared_out_over_two_ranks_match_one_process(tiny_run, tmp_path):
    """Four retrains, two per rank; the full-data references stay the ensemble members; a lost retrain is redone."""
    one, two, removal_args = _removed_in_one_process(tiny_run, tmp_path)
    trained = _logged_torchrun(tmp_path, ["removal", "--run", str(two), *removal_args])
    assert [len(trained[r]) for r in (0, 1)] == [2, 2] and len(set(trained[0] + trained[1])) == 4
    results = (two / "removal/results.json").read_bytes()
    assert results == (one / "removal/results.json").read_bytes()
    assert json.loads(results)["reference"]["source"] == ["ensemble member 0", "ensemble member 1"]

    def retrains(folder: Path) -> dict[str, dict]:
        records = {p.name: json.loads(p.read_text()) for p in (folder / "removal/retrains").iterdir()}
        return {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in records.items()}

    assert sorted(retrains(two)) == ["loss_0.1_s0.json", "loss_0.1_s1.json", "random_0.1_s0.json",
                                     "random_0.1_s1.json"]
    assert retrains(two) == retrains(one)
    # a rank killed before its retrain was written: the rerun trains that one alone, to the same result
    (two / "removal/retrains/loss_0.1_s1.json").unlink()
    trained = _logged_torchrun(tmp_path, ["removal", "--run", str(two), *removal_args])
    assert len(trained[0] + trained[1]) == 1
    assert retrains(two) == retrains(one)
    assert (two / "removal/results.json").read_bytes() == results


def test_a_rank_killed_mid_way_resumes_on_rerun(tiny_run, tmp_path):
    """Rank 1 dies (SIGKILL-like ``os._exit``) right after its first retrain, before writing it; torchrun stops
    the job. The rerun trains only what no rank wrote, and the results equal one process's."""
    one, two, removal_args = _removed_in_one_process(tiny_run, tmp_path)
    script = tmp_path / "dies.py"
    script.write_text(LOGGED_CLI.replace(
        "    return original(*args, keep=keep, seed=seed, **kwargs)",
        "    out = original(*args, keep=keep, seed=seed, **kwargs)\n"
        "    if os.environ['RANK'] == '1':\n"
        "        os._exit(9)\n"
        "    return out"))
    log = tmp_path / "trained"
    log.mkdir()
    os.environ["TRAINED_LOG"] = str(log)
    try:
        with pytest.raises(AssertionError):  # torchrun reports the dead rank
            _torchrun([str(script)], ["removal", "--run", str(two), *removal_args])
    finally:
        del os.environ["TRAINED_LOG"]
    written = set(p.name for p in (two / "removal/retrains").glob("*.json"))
    assert len(written) < 4 and not (two / "removal/results.json").exists()
    trained = _logged_torchrun(tmp_path, ["removal", "--run", str(two), *removal_args])
    assert len(trained[0] + trained[1]) == 4 - len(written)
    assert (two / "removal/results.json").read_bytes() == (one / "removal/results.json").read_bytes()
