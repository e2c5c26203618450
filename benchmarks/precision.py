"""Mixed precision and channels-last: speed of training and featurization, and what they do to accuracy and LDS.

**Speed.** The default model (``resnet18``, 10 classes, random init) at 32 px and 224 px, in four modes: fp32,
bf16 autocast, fp32 channels-last, bf16 channels-last. A training step is the trainer's own (forward under
``trakscope.precision.autocast``, float32 loss, backward, Nesterov SGD step); a featurization step is the Kronecker
projector at the defaults (``proj_dim`` 2048, ``kron_k`` 16) on a batch. The modes are interleaved, round after
round, and each mode's time is the median over rounds, so that a burst of load from other jobs hits every mode
alike; ratios are within one run. The bf16 featurization's relative error against fp32 features of the same batch
is reported beside its time.

**Quality.** Four ``trakscope run`` folders of one small case (MNIST 32 px, 500 training examples, ``tiny_cnn``,
2 models x 4 checkpoints, Kronecker at 256) that differ only in ``--precision`` / ``--trak-precision``. Each run's
test scores are scored by LDS against the *same* subset models, trained in fp32 (those of the fp32 run), on the
same targets, so the differences are paired; the bf16-trained runs are also scored against subset models trained
in bf16 (what their own ``trakscope lds`` would do). Accuracy is the ensemble's on the test split, and, paired by
seed, that of ``--seeds`` more models trained in fp32 and in bf16.

**The default model's features.** ResNet-18 trained once in fp32 (MNIST 32 px, 500 examples, 4 epochs) is featurized
in fp32, in bf16, and in fp32 with another projection seed; the per-target rank agreement of the scores says how far
bf16 moves them, beside how far TRAK's own random projection does. (LDS needs subset models of ResNet-18, more than
this benchmark's budget on 2 cores.)

    OMP_NUM_THREADS=1 python benchmarks/precision.py --out /tmp/prec_bench     # ~3.5 min on 2 shared cores
    OMP_NUM_THREADS=1 python benchmarks/precision.py --out /tmp/prec_q --quick  # a smoke run in about a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trakscope.attribution.kronecker import KroneckerProjector
from trakscope.attribution.store import TrakStore
from trakscope.cli import main as trakscope
from trakscope.config import ModelConfig
from trakscope.io import load_tensors, write_json
from trakscope.methods.lds import choose_targets, ci95, lds, predicted_outputs, spearman_columns
from trakscope.models import build_model
from trakscope.precision import autocast, bf16_support, memory_format, to_memory_format
from trakscope.run_folder import RunFolder
from trakscope.stages.lds import subset_margins
from trakscope.train import predict_logits, train_final_model

MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "fp32 + channels_last": ("fp32", True),
         "bf16 + channels_last": ("bf16", True)}
BATCH = {32: {"train": 32, "featurize": 16}, 224: {"train": 8, "featurize": 4}}  # small: 2 shared cores
BATCH.update({s: {"train": 16, "featurize": 8} for s in (64, 96, 128)})
QUALITY_ARGS = ["--dataset", "mnist", "--model", "tiny_cnn", "--image-size", "32", "--max-train", "500",
                "--max-test", "500", "--epochs", "8", "--batch-size", "32", "--lr", "0.1", "--proj-dim", "256",
                "--no-progress", "--device", "cpu"]
RUNS = {"fp32": [], "bf16 training": ["--precision", "bf16"], "bf16 featurization": ["--trak-precision", "bf16"],
        "bf16 both": ["--precision", "bf16", "--trak-precision", "bf16"]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder: run folders and precision.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on shared cores)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per mode")
    p.add_argument("--models", type=int, default=40, help="LDS subset models (alpha 0.5)")
    p.add_argument("--targets", type=int, default=200, help="LDS test targets")
    p.add_argument("--seeds", type=int, default=10, help="models per precision for the paired accuracy comparison")
    p.add_argument("--sizes", default="32,224", help="image sides timed")
    p.add_argument("--speed-only", action="store_true", help="time the modes; skip the quality runs")
    p.add_argument("--quick", action="store_true", help="2 rounds, 32 px only, 10 subset models")
    return p.parse_args()


# --- speed ---------------------------------------------------------------------------------------------------
def _model(channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(), 10).to(memory_format=memory_format(channels_last))


def train_step(size: int, batch: int, precision: str, channels_last: bool) -> Callable[[], None]:
    """One training step of the trainer's loop (trakscope.train.trainer.train_model) on a fixed batch."""
    model, fmt = _model(channels_last).train(), memory_format(channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    x = to_memory_format(torch.randn(batch, 3, size, size, generator=gen), fmt)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step() -> None:
        with autocast(precision, "cpu"):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def featurize_step(size: int, batch: int, precision: str, channels_last: bool, out: dict) -> Callable[[], None]:
    """One Kronecker featurization of a fixed batch (defaults: proj_dim 2048, kron_k 16); keeps the features."""
    model = _model(channels_last).eval()
    projector = KroneckerProjector(model, 2048, seed=0, precision=precision)
    gen = torch.Generator().manual_seed(1)
    x = to_memory_format(torch.randn(batch, 3, size, size, generator=gen), memory_format(channels_last))
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step() -> None:
        out["features"] = projector(x, y)[0]

    return step


def time_modes(steps: dict[str, Callable[[], None]], rounds: int, calls: int) -> dict[str, float]:
    """Median over ``rounds`` of the seconds per call of each step, the modes interleaved within every round."""
    for step in steps.values():
        step()  # warm-up: allocator, oneDNN primitive caches
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            times[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def speed(sizes: list[int], rounds: int) -> list[dict]:
    rows = []
    for size in sizes:
        for task in ("train", "featurize"):
            batch = BATCH[size][task]
            kept: dict[str, dict] = {name: {} for name in MODES}
            if task == "train":
                steps = {name: train_step(size, batch, *mode) for name, mode in MODES.items()}
            else:
                steps = {name: featurize_step(size, batch, *mode, kept[name]) for name, mode in MODES.items()}
            seconds = time_modes(steps, rounds, calls=2)
            for name in MODES:
                row = {"task": task, "size": size, "batch": batch, "mode": name,
                       "ms_per_example": 1000 * seconds[name] / batch, "vs_fp32": seconds["fp32"] / seconds[name]}
                if task == "featurize":
                    ref, got = kept["fp32"]["features"], kept[name]["features"]
                    row["feature_rel_err"] = float(((got - ref).norm(dim=1) / ref.norm(dim=1)).median())
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


# --- quality -------------------------------------------------------------------------------------------------
def quality_runs(out: Path, threads: int) -> dict[str, RunFolder]:
    runs = {}
    for name, extra in RUNS.items():
        path = out / name.replace(" ", "_")
        t0 = time.perf_counter()
        if trakscope(["run", "--out", str(path), *QUALITY_ARGS, "--threads", str(threads), *extra]) != 0:
            raise SystemExit(f"trakscope run failed for {name}")
        print(f"run {name}: {time.perf_counter() - t0:.1f}s", flush=True)
        runs[name] = RunFolder(path)
    return runs


def same_checkpoints(a: RunFolder, b: RunFolder) -> bool:
    """Both runs hold bit-identical checkpoints (training is deterministic on the CPU under one seed)."""
    pa, pb = a.checkpoint_paths(), b.checkpoint_paths()
    return len(pa) == len(pb) and all(
        all(torch.equal(sa[n], sb[n]) for n in sa) for sa, sb in ((load_tensors(x), load_tensors(y)) for x, y in
                                                                   zip(pa, pb, strict=True)))


def feature_error(a: RunFolder, b: RunFolder) -> float:
    """Median over training examples and checkpoints of ``|x_b - x_a| / |x_a|`` (same checkpoints, two stores)."""
    if not same_checkpoints(a, b):
        return float("nan")
    sa, sb = TrakStore(a.features_dir), TrakStore(b.features_dir)
    errs = []
    for k in sa.checkpoint_ids():
        xa, xb = sa.features(k, "train", 0, 0).load()[0], sb.features(k, "train", 0, 0).load()[0]
        errs.append(np.linalg.norm(xb - xa, axis=1) / np.linalg.norm(xa, axis=1))
    return float(np.median(np.concatenate(errs)))


def _paired(per: np.ndarray, base: np.ndarray) -> tuple[float, float, float]:
    """Mean of the per-target differences and its normal 95% interval."""
    d = (per - base)[~np.isnan(per) & ~np.isnan(base)]
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def quality(out: Path, threads: int, k: int, max_targets: int) -> list[dict]:
    runs = quality_runs(out, threads)
    truth = {"fp32": runs["fp32"], "bf16": runs["bf16 training"]}  # whose cached subset models are the ground truth
    margins = {}
    for name, run in truth.items():
        t0 = time.perf_counter()
        margins[name] = subset_margins(run, alpha=0.5, k=k, seed=0, split="test", progress=False)
        print(f"{k} subset models trained in {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    targets = choose_targets(len(runs["fp32"].data.table("test")["index"]), max_targets, 0)
    same_weights = {"fp32": "fp32", "bf16 training": "bf16 training", "bf16 featurization": "fp32",
                    "bf16 both": "bf16 training"}  # the run whose checkpoints are these, featurized in fp32
    rows = []
    for gt, (masks, observed) in margins.items():
        per_target = {}
        for name, run in runs.items():
            per_target[name] = lds(predicted_outputs(np.asarray(run.results.scores("test")[:, targets]), masks),
                                   observed[:, targets])[1]
            metrics, timings = run.results.read(run.metrics_path, "model_metrics"), run.results.timings()
            diff, lo, hi = _paired(per_target[name], per_target["fp32"])
            rows.append({"run": name, "subset_models": gt, "lds": float(np.nanmean(per_target[name])),
                         "lds_ci95": list(ci95(per_target[name])), "paired_diff_vs_fp32": diff,
                         "paired_diff_ci95": [lo, hi], "test_acc": metrics["ensemble"]["test_acc"],
                         "member_test_acc": [m["test_acc"] for m in metrics["models"]],
                         "train_s": timings.get("train"), "featurize_s": timings.get("featurize"),
                         "feature_rel_err_vs_fp32": feature_error(runs[same_weights[name]], run)
                         if "--trak-precision" in RUNS[name] else None})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def accuracy_pairs(run: RunFolder, seeds: int) -> dict:
    """Test accuracy of ``seeds`` models trained in fp32 and in bf16 with the same seeds (paired), and seconds each."""
    cfg, data = run.config, run.data.dataset()
    acc: dict[str, list[float]] = {"fp32": [], "bf16": []}
    secs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for seed in range(100, 100 + seeds):
        for prec in acc:
            t0 = time.perf_counter()
            net = train_final_model(cfg.model, dataclasses.replace(cfg.train, precision=prec), data, seed=seed,
                                    progress=False)
            secs[prec].append(time.perf_counter() - t0)
            acc[prec].append(float((predict_logits(net, data.test.images).argmax(1) == data.test.labels).mean()))
    d = np.subtract(acc["bf16"], acc["fp32"])
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    out = {"seeds": seeds, "fp32_acc": float(np.mean(acc["fp32"])), "bf16_acc": float(np.mean(acc["bf16"])),
           "paired_diff": float(d.mean()), "paired_diff_ci95": [float(d.mean() - half), float(d.mean() + half)],
           "fp32_s_per_model": float(np.median(secs["fp32"])), "bf16_s_per_model": float(np.median(secs["bf16"]))}
    print(json.dumps(out), flush=True)
    return out


RESNET_ARGS = ["--dataset", "mnist", "--model", "resnet18", "--image-size", "32", "--max-train", "500", "--max-test",
               "200", "--epochs", "4", "--ensemble", "1", "--checkpoints-per-model", "1", "--batch-size", "32",
               "--proj-dim", "256", "--no-progress", "--device", "cpu"]


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Per test target, the Spearman correlation over training examples of two ``[n_train, n_test]`` score
    matrices (median and minimum), and the mean overlap of their top-10 training examples."""
    rho = spearman_columns(a.astype(np.float64), b.astype(np.float64))
    top = [len(set(np.argsort(-a[:, j])[:10]) & set(np.argsort(-b[:, j])[:10])) / 10 for j in range(a.shape[1])]
    return {"spearman_median": float(np.nanmedian(rho)), "spearman_min": float(np.nanmin(rho)),
            "top10_overlap": float(np.mean(top))}


def resnet_agreement(out: Path, threads: int) -> dict:
    """The default model, trained once in fp32 (the same checkpoint in every folder), featurized in fp32, in bf16,
    and in fp32 with another projection seed: how far bf16 moves the features and scores, beside how far TRAK's own
    random projection moves them."""
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["--trak-precision", "bf16"]), ("fp32_seed1", ["--proj-seed", "1"])):
        path = out / f"resnet18_{name}_featurization"
        if trakscope(["run", "--out", str(path), *RESNET_ARGS, "--threads", str(threads), *extra]) != 0:
            raise SystemExit(f"trakscope run failed for resnet18 {name}")
        runs[name] = RunFolder(path)
    scores = {name: np.asarray(run.results.scores("test")) for name, run in runs.items()}
    res = {"feature_rel_err": feature_error(runs["fp32"], runs["bf16"]),
           "bf16_vs_fp32": _agreement(scores["fp32"], scores["bf16"]),
           "proj_seed1_vs_seed0": _agreement(scores["fp32"], scores["fp32_seed1"]),
           "test_acc": runs["fp32"].results.read(runs["fp32"].metrics_path, "model_metrics")["ensemble"]["test_acc"],
           "featurize_s": {n: r.results.timings().get("featurize") for n, r in runs.items()}}
    print(json.dumps(res), flush=True)
    return res


def _err(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


# --- report --------------------------------------------------------------------------------------------------
def machine() -> dict:
    level, why = bf16_support("cpu")
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "bf16": f"{level} ({why})", "amx": torch.cpu._is_amx_tile_supported(),
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "threads": torch.get_num_threads()}


def print_tables(speed_rows: list[dict], quality_rows: list[dict]) -> None:
    print("\n| task | size (batch) | mode | ms / example | speed vs fp32 | feature rel. error |")
    print("|---|---|---|---|---|---|")
    for r in speed_rows:
        print(f"| {r['task']} | {r['size']} px ({r['batch']}) | {r['mode']} | {r['ms_per_example']:.2f} | "
              f"{r['vs_fp32']:.2f}x | {_err(r.get('feature_rel_err'))} |")
    if not quality_rows:
        return
    print("\n| run | subset models | LDS | 95% CI | paired diff vs fp32 (95% CI) | test acc (members) | "
          "train s | featurize s | feature rel. error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in quality_rows:
        lo, hi = r["lds_ci95"]
        dlo, dhi = r["paired_diff_ci95"]
        members = ", ".join(f"{a:.3f}" for a in r["member_test_acc"])
        print(f"| {r['run']} | {r['subset_models']} | {r['lds']:.4f} | {lo:.4f} to {hi:.4f} | "
              f"{r['paired_diff_vs_fp32']:+.4f} ({dlo:+.4f} to {dhi:+.4f}) | {r['test_acc']:.3f} ({members}) | "
              f"{r['train_s']:.1f} | {r['featurize_s']:.1f} | {_err(r['feature_rel_err_vs_fp32'])} |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rounds, sizes = (2, [32]) if args.quick else (args.rounds, [int(x) for x in args.sizes.split(",")])
    k = 10 if args.quick else args.models
    print(json.dumps(machine()), flush=True)
    speed_rows = speed(sizes, rounds)
    if args.speed_only:
        print_tables(speed_rows, [])
        print(f"\nwall time {time.perf_counter() - t0:.0f}s")
        return
    quality_rows = quality(args.out, args.threads, k, args.targets)
    accuracy = accuracy_pairs(RunFolder(args.out / "fp32"), 3 if args.quick else args.seeds)
    resnet = resnet_agreement(args.out, args.threads)
    wall = time.perf_counter() - t0
    write_json(args.out / "precision.json", {"machine": machine(), "speed": speed_rows, "quality": quality_rows,
                                             "accuracy": accuracy, "resnet18_featurization": resnet, "wall_s": wall,
                                             "models": k, "rounds": rounds})
    print_tables(speed_rows, quality_rows)
    print(f"\ntiny_cnn test accuracy over {accuracy['seeds']} seeds: fp32 {accuracy['fp32_acc']:.4f}, bf16 "
          f"{accuracy['bf16_acc']:.4f}, paired diff {accuracy['paired_diff']:+.4f} "
          f"({accuracy['paired_diff_ci95'][0]:+.4f} to {accuracy['paired_diff_ci95'][1]:+.4f}); s/model fp32 "
          f"{accuracy['fp32_s_per_model']:.2f}, bf16 {accuracy['bf16_s_per_model']:.2f}")
    print(f"resnet18 bf16 vs fp32 featurization: {json.dumps(resnet)}")
    print(f"\nwall time {wall:.0f}s")


if __name__ == "__main__":
    main()
