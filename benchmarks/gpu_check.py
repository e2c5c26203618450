"""The GPU check: CUDA tests, ``make demo``'s commands on ``--device cuda`` timed, featurize / forward+backward.

Run through ``scripts/gpu-check.sh`` on a machine with a CUDA device (it sets up the paths); it writes one JSON::

    python benchmarks/gpu_check.py --out gpu-check/gpu-check.json

The JSON holds the device, the library versions, the CUDA tests' summary, each demo command's wall time and exit
status (and the run folder's own ``timings.json``), and the Kronecker featurization time over a plain
forward+backward on ResNet-18 at 32 and 224 px. Goals (issue 21): the demo's run + detect + removal under one
minute, featurize / fwd+bwd at most 1.1. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trakscope.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
# make demo's commands (Makefile), with the device and no progress bars added
DEMO = (
    ("run", ["run", "--out", "{run}", "--noise", "0.1", "--ensemble", "2", "--epochs", "6"]),
    ("inspect", ["inspect", "--run", "{run}", "--target", "17", "--top", "8"]),
    ("detect", ["detect", "--run", "{run}", "--folds", "2"]),
    ("removal", ["removal", "--run", "{run}", "--fractions", "0.05", "--seeds", "1",
                 "--strategies", "positive,negative,random"]),
    ("report", ["report", "--run", "{run}"]),
)
DEVICE_FLAG = {"run", "detect", "removal"}  # the commands that take --device


def _timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``, its output into ``log``; its wall time and exit status."""
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return {"seconds": round(time.perf_counter() - start, 2), "rc": rc, "log": log.name}


def cuda_tests(out_dir: Path) -> dict:
    """``pytest -m cuda``: its exit status and its last line (the counts)."""
    log = out_dir / "cuda-tests.log"
    result = _timed([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], log)
    lines = log.read_text().strip().splitlines()
    return {**result, "summary": lines[-1] if lines else ""}


def demo(out_dir: Path, device: str) -> dict:
    """``make demo``'s five commands on ``device``, each timed, into a fresh run folder."""
    run = Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    steps = {}
    for name, args in DEMO:
        cmd = [sys.executable, "-m", "trakscope", *(a.format(run=run) for a in args)]
        if name in DEVICE_FLAG:
            cmd += ["--device", device, "--no-progress"]
        steps[name] = _timed(cmd, out_dir / f"demo-{name}.log")
        if steps[name]["rc"] != 0:
            break
    timings = RunFolder(run).timings_path
    main3 = [steps[s]["seconds"] for s in ("run", "detect", "removal") if s in steps]
    return {"run_folder": str(run), "steps": steps, "run_detect_removal_s": round(sum(main3), 2),
            "stage_timings": json.loads(timings.read_text()) if timings.exists() else None}


def featurize_ratio(out_dir: Path, device: str, sizes: tuple[int, ...], n: int) -> list[dict]:
    """Kronecker featurization over plain forward+backward, torchvision ResNet-18, per image size."""
    bench = ROOT / "benchmarks" / "featurize_speed.py"
    rows = []
    for size in sizes:
        row = {"image_size": size}
        for case in ("plain", "kronecker"):
            cmd = [sys.executable, str(bench), "--case", case, "--proj-dim", "2048", "--n", str(n), "--warmup", "64",
                   "--batch", "64", "--image-size", str(size), "--device", device]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            (out_dir / f"featurize-{case}-{size}.log").write_text(done.stdout + done.stderr)
            row[case] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
        if row["plain"] and row["kronecker"]:
            row["kronecker_over_plain"] = round(row["kronecker"]["s_per_example"] / row["plain"]["s_per_example"], 3)
        rows.append(row)
    return rows


def machine(device: str) -> dict:
    cuda = torch.cuda.is_available()
    return {"device": device, "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check/gpu-check.json"), help="the JSON written")
    parser.add_argument("--device", default="cuda", help="the device every step runs on")
    parser.add_argument("--skip", default="", help="steps to leave out, comma-separated: tests,demo,featurize")
    parser.add_argument("--n", type=int, default=512, help="examples timed per featurize case")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(args.device)}
    steps = (("tests", lambda: cuda_tests(args.out.parent)), ("demo", lambda: demo(args.out.parent, args.device)),
             ("featurize", lambda: featurize_ratio(args.out.parent, args.device, (32, 224), args.n)))
    for name, step in steps:
        if name not in skip:
            result[name] = step()
            args.out.write_text(json.dumps(result, indent=1))  # what is done so far survives a timeout
            print(f"gpu-check: {name} done", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
