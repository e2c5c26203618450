"""What sharing trainings over torchrun ranks buys: ``make demo``'s stages (and ``lds``) with 2 ranks x 1 thread
against 1 process x 2 threads, on the same machine, one after the other, with their results compared.

    python benchmarks/ranks.py --out benchmarks/ranks.json          # about 2 x 7 min on 2 cores

Each configuration gets its own run folder (``--work``); every stage's wall time is measured around the command,
and the outputs that must agree (scores, ranking, removal and LDS results) are compared byte for byte. The ratio
per stage is the single process's time over the two ranks'. Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trakscope.run_folder import RunFolder

STAGES = (
    ("run", ["run", "--out", "{run}", "--noise", "0.1", "--ensemble", "2", "--epochs", "6"]),
    ("detect", ["detect", "--run", "{run}", "--folds", "2"]),
    ("removal", ["removal", "--run", "{run}", "--fractions", "0.05", "--seeds", "1",
                 "--strategies", "positive,negative,random"]),
    ("lds", ["lds", "--run", "{run}", "--models", "{lds_models}", "--max-targets", "200"]),
)
COMPARED = {  # the outputs that must agree, by what the run folder calls them
    "test scores": lambda run: run.scores_path("test"), "self-influence": lambda run: run.scores_path("self"),
    "ranking": lambda run: run.ranking_path, "removal": lambda run: run.removal_results_path,
    "lds": lambda run: run.lds_path}
VOLATILE = {"seconds", "wall_s", "created", "timings"}  # keys that hold times, not results


def _command(stage_args: list[str], run: Path, ranks: int, lds_models: int) -> tuple[list[str], dict]:
    args = [a.format(run=run, lds_models=lds_models) for a in stage_args] + ["--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // ranks)}
    if ranks == 1:
        return [sys.executable, "-m", "trakscope", *args, "--threads", "2"], env
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
            "-m", "trakscope", "--", *args, "--threads", "1"], env


def _digest(path: Path) -> str | None:
    """sha256 of a result file, times and dates left out of JSON files."""
    if not path.exists():
        return None
    if path.suffix != ".json":
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VOLATILE}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return hashlib.sha256(json.dumps(strip(json.loads(path.read_text())), sort_keys=True).encode()).hexdigest()[:16]


def configuration(ranks: int, work: Path, lds_models: int) -> dict:
    run = work / f"ranks{ranks}"
    shutil.rmtree(run, ignore_errors=True)
    seconds = {}
    for name, stage_args in STAGES:
        cmd, env = _command(stage_args, run, ranks, lds_models)
        start = time.perf_counter()
        with (work / f"ranks{ranks}-{name}.log").open("w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        seconds[name] = round(time.perf_counter() - start, 2)
        print(f"ranks={ranks} {name}: {seconds[name]} s", file=sys.stderr, flush=True)
    folder = RunFolder(run)
    return {"seconds": seconds, "digests": {name: _digest(path(folder)) for name, path in COMPARED.items()},
            "stage_timings": json.loads(folder.timings_path.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/ranks"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ranks.json"))
    parser.add_argument("--lds-models", type=int, default=4, help="LDS subset models (3 at least)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    one, two = configuration(1, args.work, args.lds_models), configuration(2, args.work, args.lds_models)
    ratios = {s: round(one["seconds"][s] / two["seconds"][s], 2) for s in one["seconds"]}
    same = {p: one["digests"][p] == two["digests"][p] for p in COMPARED}
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "one_process_2_threads": one, "two_ranks_1_thread": two, "speedup": ratios, "identical": same}
    args.out.write_text(json.dumps(doc, indent=1))
    print("| stage | 1 process x 2 threads (s) | 2 ranks x 1 thread (s) | speed-up |")
    print("| --- | --- | --- | --- |")
    for s in ratios:
        print(f"| {s} | {one['seconds'][s]} | {two['seconds'][s]} | {ratios[s]} |")
    print("identical results:", same)


if __name__ == "__main__":
    main()
