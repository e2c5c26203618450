"""What the mission's case costs before anyone runs it: 7,500 images at 224 px, ResNet-18, 10 epochs, through
``make demo``'s pipeline (``run`` with 2 models x 4 checkpoints, ``detect --folds 2``, ``removal`` with 3 retrains)
and an ``lds`` of 20 subset models. An estimate, built from two measurements:

1. ``benchmarks/scale.py``'s results at 32 px (ResNet-18, one thread): each stage's seconds per example-pass
   (a training example-epoch, or a featurized row x checkpoint), at its largest N;
2. on this machine, now: torchvision's ResNet-18 forward+backward per example at 32 px and at 224 px (batch 32,
   interleaved rounds, median), at one thread and at every core of this process's affinity. Their ratio carries
   (1) to 224 px.

The GPU column is an estimate from published throughput, not a measurement: timm's own benchmark of ResNet-18
training at 224 px on an RTX 3090 with AMP (``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv`` in
pytorch-image-models: 2,764 samples/s), counting every example-pass as one training sample; decoding JPEGs on the
CPU is not in it.

    python benchmarks/mission_cost.py --scale benchmarks/results/scale_32.json --out benchmarks/results/mission.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from scale import REMOVAL_FRACTION, part_seconds

GPU_SAMPLES_PER_S = 2764.22  # timm results CSV above: resnet18, train_samples_per_sec, batch 512, 224 px, AMP
MISSION = {"n_train": 6750, "n_val": 750, "n_test": 2500, "epochs": 10, "ensemble": 2, "checkpoints": 8,
           "folds": 2, "removal_retrains": 3, "removal_fraction": 0.05, "lds_models": 20, "lds_alpha": 0.5}
STAGES = ("train", "featurize", "detect", "removal", "lds")


def passes(n_train: int, rows: int, s: dict) -> dict[str, float]:
    """Example-passes per stage: training example-epochs, or featurized rows x checkpoints."""
    return {"train": s["ensemble"] * s["epochs"] * n_train,
            "featurize": rows * s["checkpoints"],
            "detect": s["folds"] * s["epochs"] * n_train * (s["folds"] - 1) / s["folds"],
            "removal": s["removal_retrains"] * s["epochs"] * n_train * (1 - s["removal_fraction"]),
            "lds": s["lds_models"] * s["epochs"] * n_train * s["lds_alpha"]}


def per_pass(result: dict) -> dict[str, float]:
    """Seconds per example-pass of each stage in one ``scale.py`` result (its settings give the passes)."""
    n = round(result["n_train"])  # the training split; scale.py's val and test are n // 10 and max(200, n // 10)
    rows, s = result["floor"]["rows"], result
    settings = {"ensemble": s["ensemble"], "epochs": s["epochs"], "checkpoints": s["floor"]["checkpoints"],
                "folds": s["folds"], "removal_retrains": 1, "removal_fraction": REMOVAL_FRACTION,
                "lds_models": s["lds_models"], "lds_alpha": 0.5}  # scale.py's: 1 retrain, lds at its default alpha
    p, seconds = passes(n, rows, settings), part_seconds(result)  # scale.py's own split of each stage's seconds
    return {k: seconds[k] / p[k] for k in STAGES}


def step_seconds(image_size: int, threads: int, rounds: int = 3, batch: int = 32) -> float:
    """Median seconds per example of torchvision ResNet-18's forward+backward (train mode) at ``image_size``."""
    from torchvision.models import resnet18  # lazy: the model zoo is slow to import

    torch.set_num_threads(threads)
    net = resnet18(num_classes=10).train()
    x, y = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 10, (batch,))
    loss = torch.nn.functional.cross_entropy
    loss(net(x), y).backward()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        loss(net(x), y).backward()
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def measure_steps(thread_counts: list[int], rounds: int) -> dict[str, dict[str, float]]:
    """Per thread count, ResNet-18 seconds per example at 32 and 224 px, measured in interleaved rounds."""
    out = {}
    for t in thread_counts:
        small, large = [], []
        for _ in range(rounds):
            small.append(step_seconds(32, t, rounds=5))
            large.append(step_seconds(224, t, rounds=1))
        out[str(t)] = {"32": statistics.median(small), "224": statistics.median(large)}
    return out


def estimate(scale_doc: dict, steps: dict) -> dict:
    """The mission's seconds per stage on this CPU (per thread count) and on one GPU (published throughput)."""
    largest = max(scale_doc["results"], key=lambda r: r["n_train"])
    base = per_pass(largest)  # one thread at 32 px, what scale.py measured
    one = steps["1"]
    mission_passes = passes(MISSION["n_train"], MISSION["n_train"] + MISSION["n_val"] + MISSION["n_test"], MISSION)
    cpu = {t: {k: mission_passes[k] * base[k] * s["224"] / one["32"] for k in STAGES} for t, s in steps.items()}
    gpu = {k: mission_passes[k] / GPU_SAMPLES_PER_S for k in STAGES}
    return {"from_scale_n": largest["n_train"], "per_pass_32px_s": base, "passes": mission_passes,
            "cpu_seconds": cpu, "gpu_seconds_estimate": gpu}


def table(est: dict) -> str:
    """Markdown: per stage, passes, and hours on this CPU at each thread count, minutes on one GPU (estimate)."""
    threads = sorted(est["cpu_seconds"], key=int)
    head = ["stage", "example-passes"] + [f"this CPU, {t} thread(s) (h)" for t in threads] + ["one GPU, est. (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in (*STAGES, "total"):
        p = sum(est["passes"].values()) if k == "total" else est["passes"][k]
        cpu = [sum(c.values()) if k == "total" else c[k] for c in (est["cpu_seconds"][t] for t in threads)]
        gpu = sum(est["gpu_seconds_estimate"].values()) if k == "total" else est["gpu_seconds_estimate"][k]
        lines.append(f"| {k} | {p:,.0f} | " + " | ".join(f"{c / 3600:.1f}" for c in cpu) + f" | {gpu / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=Path, required=True, help="scale.py's results at 32 px with ResNet-18")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per thread count")
    parser.add_argument("--out", type=Path, help="write the estimate and its measurements as JSON here")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    steps = measure_steps(sorted({1, cores}), args.rounds)
    est = {**estimate(json.loads(args.scale.read_text()), steps), "steps_s_per_example": steps,
           "mission": MISSION, "gpu_samples_per_s": GPU_SAMPLES_PER_S}
    print(table(est))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(est, indent=1))


if __name__ == "__main__":
    main()
