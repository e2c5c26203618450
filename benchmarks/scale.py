"""How each stage's cost grows with the dataset: the whole pipeline at N training examples, per stage wall time,
peak RSS and disk, and featurization over a plain forward+backward.

The images are generated (nothing is downloaded): ten classes of shapes (disc, ring, square, frame, triangle,
diamond, cross, X, bars across, bars down), each drawn at a random position, size and colour on a noisy background,
written once as an image folder (``DIR/train/<class>/*.png``, ``DIR/test/<class>/*.png``). For each size the
pipeline is ``make demo``'s, smaller where it would take hours: ``run`` (2 models, --epochs), ``detect --folds 2``,
``removal`` at one fraction, one seed, one strategy, and ``lds`` with a few subset models. Every stage runs in its own
process; its peak RSS comes from ``wait4``.

    python benchmarks/scale.py --sizes 1000,5000 --out benchmarks/scale.json          # 32 px, tiny_cnn-sized work
    python benchmarks/scale.py --sizes 1000,5000 --image-size 224 --model efficientnet_lite0 --weights imagenet
    python benchmarks/scale.py --chart benchmarks/scale.json benchmarks/scale_224.json --png docs/scale.png

The forward+backward floor is timed in this process right after ``run`` finishes (so under the same load as its
featurization) on 256 training images with the run's model, batch size and checkpoints, through the same image
decoding, then scaled to the rows featurized; the ratio
featurize / floor is the one the issue wants at most 1.1. Not a test.

A rerun keeps the sizes already measured under the same settings; ``--redo 1000`` measures those sizes again. Each
result names the commit and the time it was measured at.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from shapes import make_folder

from trakscope.run_folder import RunFolder

FLOOR_SAMPLE = 256
REMOVAL_FRACTION = 0.05  # removal's one retrain: one fraction, one seed, one strategy


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def anon_mb(pid: int) -> float | None:
    """The process's anonymous resident memory (heap, not memory-mapped files) in MB, from /proc; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_stage(args: list[str], log: Path) -> dict:
    """``trakscope ARGS`` in its own process: wall time, peak RSS (MB, from wait4: memory-mapped feature and score
    files' resident pages included), peak anonymous RSS (heap only, sampled every 0.2 s) and exit status."""
    start = time.perf_counter()
    with log.open("a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trakscope", *args], stdout=out, stderr=subprocess.STDOUT)
        peak_anon = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here, so that wait4 gives its rusage
            if pid:
                break
            peak_anon = max(peak_anon, anon_mb(proc.pid) or 0.0)
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "peak_anon_mb": round(peak_anon), "rc": os.waitstatus_to_exitcode(status)}


def floor_seconds(run_dir: Path, device: str = "cpu") -> dict:
    """Plain forward+backward of the margin over ``FLOOR_SAMPLE`` training images of the run, per checkpoint-row.

    Returns seconds per example-checkpoint and the rows x checkpoints the run featurized."""
    import torch

    from trakscope.attribution.output import margin
    from trakscope.data import iter_batches
    from trakscope.models.calling import call_model
    from trakscope.stages.ensemble import engine_checkpoints, load_member

    run = RunFolder(run_dir)
    cfg, dataset = run.config, run.data.dataset()
    checkpoints = engine_checkpoints(run)
    net = load_member(run, checkpoints[0][0], device).eval()
    split = dataset.train
    idx = np.arange(min(FLOOR_SAMPLE, len(split)))
    labels = torch.as_tensor(split.labels)
    start = time.perf_counter()
    for rows, x in iter_batches(split.images, idx, cfg.trak.batch_size):
        net.zero_grad(set_to_none=True)
        margin(call_model(net, x.to(device)), labels[rows].to(device)).sum().backward()
    per = (time.perf_counter() - start) / len(idx)  # decoding included, as featurization's time includes it
    rows = sum(len(dataset.split(s)) for s in ("train", "val", "test"))
    return {"s_per_example_checkpoint": per, "rows": rows, "checkpoints": len(checkpoints)}


def settings(args: argparse.Namespace) -> dict:
    """What a size's results depend on besides N: a results file is resumed only under the same settings."""
    return {k: getattr(args, k) for k in ("image_size", "model", "weights", "epochs", "ensemble",
                                          "checkpoints_per_model", "folds", "lds_models", "device")}


def pipeline(n: int, args: argparse.Namespace, work: Path) -> dict:
    """The whole pipeline at ``n`` training examples; per stage seconds, peak RSS, disk after it."""
    data = make_folder(work / f"data_{n}_{args.image_size}", n + n // 10, max(200, n // 10), args.image_size)
    run = work / f"run_{n}_{args.image_size}_{args.model}"
    shutil.rmtree(run, ignore_errors=True)
    log = work / f"log_{n}_{args.image_size}.txt"
    common = ["--no-progress", "--device", args.device]
    stages = {
        "run": ["run", "--out", str(run), "--dataset", "imagefolder", "--data-root", str(data), "--model", args.model,
                "--weights", args.weights, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                "--ensemble", str(args.ensemble), "--checkpoints-per-model", str(args.checkpoints_per_model),
                "--val-fraction", str(1 / 11), *common],
        "detect": ["detect", "--run", str(run), "--folds", str(args.folds), *common],
        "removal": ["removal", "--run", str(run), "--fractions", str(REMOVAL_FRACTION), "--seeds", "1",
                    "--strategies", "positive",  # one retrain (the full-data reference is member 0)
                    *common],
        "lds": ["lds", "--run", str(run), "--models", str(args.lds_models), "--max-targets", "200", *common],
    }
    out: dict = {"n_train": n, **settings(args), "commit": args.commit,
                 "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "stages": {}}
    for name, stage_args in stages.items():
        load_before = os.getloadavg()[0]
        result = run_stage(stage_args, log)
        result["disk_mb"] = round(disk_bytes(run) / 2**20, 1)
        result["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after
        out["stages"][name] = result
        print(f"scale: N={n} {args.image_size}px {name}: {result}", file=sys.stderr, flush=True)
        if result["rc"] != 0:
            return out
        if name == "run":  # timed now, beside featurization, not after an hour of other stages
            floor = floor_seconds(run, args.device)
    timings = json.loads(RunFolder(run).timings_path.read_text())
    work_units = floor["rows"] * floor["checkpoints"]
    out["timings"] = timings
    out["floor"] = {**floor, "seconds": round(floor["s_per_example_checkpoint"] * work_units, 2)}
    out["featurize_over_floor"] = round(timings["featurize"] / out["floor"]["seconds"], 3)
    return out


def commit() -> str:
    """The checked-out commit, ``+changes`` when the working tree differs from it (where this file lives)."""
    here = Path(__file__).parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+changes" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` is empty on Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def finished(doc: dict, n: int, args: argparse.Namespace) -> dict | None:
    """A size already measured under the same settings with every stage done, or None."""
    for r in doc.get("results", []):
        same = all(r.get(k) == v for k, v in settings(args).items())
        if r["n_train"] == n and same and "featurize_over_floor" in r:
            return r
    return None


STAGE_PARTS = ("train", "featurize", "score", "detect", "removal", "lds")  # run = train + featurize + score (+ data)


def part_seconds(r: dict) -> dict[str, float]:
    """One result's seconds per stage, ``run`` split into its parts (timings.json), the others wall time."""
    t = r["timings"]
    return {"train": t["train"], "featurize": t["featurize"], "score": t["score"],
            **{k: r["stages"][k]["seconds"] for k in ("detect", "removal", "lds")}}


def fit(results: list[dict]) -> dict[str, dict]:
    """Per stage part, seconds = a * N^b fitted in log-log over the sizes, and ms per training example at each."""
    done = sorted((r for r in results if "timings" in r), key=lambda r: r["n_train"])
    out = {}
    for stage in STAGE_PARTS:
        pts = [(r["n_train"], part_seconds(r)[stage]) for r in done]
        if len(pts) >= 2:
            b, log_a = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
            out[stage] = {"exponent": round(float(b), 3), "a": float(math.exp(log_a)),
                          "ms_per_example": {str(n): round(1000 * s / n, 3) for n, s in pts}}
    return out


def table(doc: dict) -> str:
    """Markdown: per size, each part's seconds and ms per training example, peak RSS, disk, featurize / floor."""
    head = ["N", *STAGE_PARTS, "total (s)", "peak RSS (MB)", "disk (MB)", "featurize / fwd+bwd", "commit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted((r for r in doc["results"] if "timings" in r), key=lambda r: r["n_train"]):
        parts, n = part_seconds(r), r["n_train"]
        cells = [f"{parts[k]:,.0f} s ({1000 * parts[k] / n:.1f} ms)" for k in STAGE_PARTS]
        rss = f"{max(v['peak_rss_mb'] for v in r['stages'].values()):,}"
        if all(v.get("peak_anon_mb") for v in r["stages"].values()):  # sampled since the 224 px runs
            rss += f" ({max(v['peak_anon_mb'] for v in r['stages'].values()):,} heap)"
        disk = max(v["disk_mb"] for v in r["stages"].values())
        total = sum(v["seconds"] for v in r["stages"].values())
        lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {total:,.0f} | {rss} | {disk:,.0f} | "
                     f"{r['featurize_over_floor']:.2f} | {r.get('commit', '7968f2b or older')} |")
    return "\n".join(lines)


def chart(files: list[Path], png: Path) -> None:
    """Per results file: seconds per stage part against N (log-log) above, and where each N's time goes (share of
    the total per part) below; featurize / floor in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(files), figsize=(5.8 * len(files), 7.6), squeeze=False)
    colours = dict(zip(STAGE_PARTS, plt.get_cmap("tab10").colors))
    docs = [json.loads(path.read_text()) for path in files]
    for col, doc in enumerate(docs):
        results = sorted((r for r in doc["results"] if "timings" in r), key=lambda r: r["n_train"])
        ns = [r["n_train"] for r in results]
        top, bottom = axes[0][col], axes[1][col]
        for stage in STAGE_PARTS:
            top.loglog(ns, [part_seconds(r)[stage] for r in results], marker="o", label=stage, color=colours[stage])
        ratios = ", ".join(f"{r['featurize_over_floor']:.2f}" for r in results)
        r0 = results[0]
        models, epochs = (f"{n} {w}{'s' * (n != 1)}" for n, w in ((r0["ensemble"], "model"), (r0["epochs"], "epoch")))
        top.set_title(f"{r0['model']} at {r0['image_size']} px, {models} x {epochs}\n"
                      f"featurize / plain fwd+bwd: {ratios}", fontsize=10)
        top.set(xlabel="training examples N", ylabel="wall time (s)")
        top.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8, ncol=2)
        left = np.zeros(len(results))
        for stage in STAGE_PARTS:
            share = np.array([part_seconds(r)[stage] / sum(part_seconds(r).values()) for r in results])
            bottom.barh([f"N={n:,}" for n in ns], share, left=left, color=colours[stage], label=stage)
            left += share
        bottom.set(xlabel="share of the pipeline's time", xlim=(0, 1), title="where the time goes")
    machines = [doc["machine"] for doc in docs]
    where = "; ".join(sorted({f"{len(m.get('affinity', [])) or m['cpus']} core(s), {m.get('omp_num_threads') or 'all'}"
                              f" torch thread(s)" for m in machines}))
    fig.suptitle(f"trakscope stage cost vs dataset size ({machines[0].get('processor', '')}: {where})", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,20000,60000", help="training examples, comma-separated")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model", default="resnet18", help="a trakscope model name (built-in, hf:, timm:, ...)")
    parser.add_argument("--weights", default="random", help="random or imagenet")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ensemble", type=int, default=2, help="independently seeded models")
    parser.add_argument("--checkpoints-per-model", type=int, default=2)
    parser.add_argument("--folds", type=int, default=2, help="detect's cross-validation folds")
    parser.add_argument("--lds-models", type=int, default=3, help="subset models (lds needs at least 3)")
    parser.add_argument("--redo", default="", help="sizes to measure again though already in --out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("runs/scale"), help="generated data and run folders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale.json"))
    parser.add_argument("--chart", type=Path, nargs="*",
                        help="only draw the chart from these results files and print their tables")
    parser.add_argument("--png", type=Path, default=Path("docs/scale.png"))
    args = parser.parse_args()
    if args.chart:
        chart(args.chart, args.png)
        for path in args.chart:
            doc = json.loads(path.read_text())
            print(f"{path}:\n{table(doc)}\nfit (seconds = a * N^b): {json.dumps(fit(doc['results']))}\n")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": cpu_model(),
               "affinity": sorted(os.sched_getaffinity(0)), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: list[dict] = []
    start = time.perf_counter()
    args.commit = commit()  # before this run writes its results file into the tree
    redo = {int(s) for s in args.redo.split(",") if s}
    for n in (int(s) for s in args.sizes.split(",")):
        kept = None if n in redo else finished(previous, n, args)  # a rerun resumes
        results.append(kept or pipeline(n, args, args.work))
        doc = {"machine": machine, "command": " ".join(sys.argv), "results": results, "fit": fit(results),
               "wall_s": round(time.perf_counter() - start)}
        args.out.write_text(json.dumps(doc, indent=1))  # what is done so far survives an interruption
    print(json.dumps(doc["fit"], indent=1))


if __name__ == "__main__":
    main()
