"""The ``removal`` stage: run the planned retrains (resuming from the cache), write results, table and plot."""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_path, read_json, write_json
from ..methods.removal import (
    DEFAULT_FRACTIONS,
    DEFAULT_STRATEGIES,
    Job,
    indices_hash,
    plan_jobs,
    select_removed,
    summarize,
)
from ..run_folder import RunFolder
from .detect import load_ranking


def run_removal(run: RunFolder, strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
                fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seeds: int = 3,
                device: str = "cpu", progress: bool = True) -> dict:
    """Retrain every (strategy, fraction, seed), write ``removal/results.json`` and the plot; return the results."""
    t0 = time.perf_counter()
    ranking = load_ranking(run)
    jobs = plan_jobs(strategies, fractions, seeds)
    bar = tqdm(total=len(jobs) + seeds, desc="remove and retrain", disable=not progress)
    references, results = [], []
    for offset in range(seeds):
        references.append(reference_accuracy(run, offset, device, progress=False))
        bar.update(1)
        for job in [j for j in jobs if j.offset == offset]:
            bar.set_postfix_str(job.key)
            results.append(run_job(run, job, ranking, device, progress=False))
            bar.update(1)
    bar.close()
    summary = summarize(results, references, len(ranking["index"]), int(ranking["noisy"].sum()))
    summary.update({"strategies": list(strategies), "fractions": list(fractions), "seeds": seeds,
                    "selection": "detect/ranking.csv (train and val splits only)", "metric": "test accuracy"})
    write_json(run.path / "removal" / "results.json", summary)
    plot_accuracy(summary, run.path / "removal" / "accuracy_vs_fraction.png")
    run.record_timing("removal", time.perf_counter() - t0)
    return summary








def plot_accuracy(summary: dict, path) -> None:
    """``accuracy_vs_fraction.png``: one line per strategy with SE error bars, the full-data reference as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = summary["reference"]
    ax.axhline(ref["mean"], color="black", lw=1, ls="--", label="full data")
    if ref["se"] is not None:
        ax.axhspan(ref["mean"] - ref["se"], ref["mean"] + ref["se"], color="black", alpha=0.08)
    for strategy in dict.fromkeys(r["strategy"] for r in summary["rows"]):
        rows = sorted((r for r in summary["rows"] if r["strategy"] == strategy), key=lambda r: r["removed_fraction"])
        x = np.array([r["removed_fraction"] * 100 for r in rows])
        y = np.array([r["mean"] for r in rows])
        err = np.array([r["se"] or 0.0 for r in rows])
        if strategy == "d3m-heuristic":  # one point, whatever its size
            style = dict(marker="*", ms=12, ls="none")
        else:  # each line starts at the full-data reference (0% removed)
            x, y, err = np.r_[0.0, x], np.r_[ref["mean"], y], np.r_[0.0, err]
            style = dict(marker="o", ms=4)
        ax.errorbar(x, y, yerr=err, capsize=3, label=strategy, **style)
    ax.set_xlabel("training examples removed (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"remove and retrain ({summary['seeds']} seed(s), mean ± SE)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def test_accuracy(run: RunFolder, keep: np.ndarray | None, seed: int, device: str = "cpu",
                  progress: bool = True) -> float:
    """Train the run's architecture on ``keep`` with ``seed`` and return its accuracy on the test split."""
    from ..train import predict_logits, train_final_model

    cfg, dataset = run.config, run.dataset()
    model = train_final_model(cfg.model, cfg.train, dataset, seed=seed, keep=keep, device=device, progress=progress)
    logits = predict_logits(model, dataset.test.images, device=device, num_workers=cfg.train.num_workers)
    return float((logits.argmax(axis=1) == dataset.test.labels).mean())


def run_job(run: RunFolder, job: Job, ranking: dict[str, np.ndarray], device: str = "cpu",
            progress: bool = False) -> dict:
    """The cached result of one retrain, training it first if the cache is absent or stale."""
    seed = run.config.train.seed + job.offset
    removed = select_removed(job.strategy, 0.0 if math.isnan(job.fraction) else job.fraction, ranking, seed)
    path = run.path / "removal" / "retrains" / f"{job.key}.json"
    digest = indices_hash(removed)
    if path.exists():
        cached = read_json(path)
        if cached.get("removed_sha256") == digest and cached.get("seed") == seed:
            return cached
    t0 = time.perf_counter()
    keep = np.setdiff1d(np.arange(len(ranking["index"])), removed)
    acc = test_accuracy(run, keep, seed, device, progress)
    result = {"strategy": job.strategy, "fraction": None if math.isnan(job.fraction) else job.fraction,
              "seed": seed, "n_removed": int(len(removed)), "n_noisy_removed": int(ranking["noisy"][removed].sum()),
              "removed_sha256": digest, "test_acc": acc, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(path, result)
    return result


def reference_accuracy(run: RunFolder, offset: int, device: str = "cpu", progress: bool = False) -> dict:
    """Test accuracy with all the training data for seed ``config.train.seed + offset``, cached.

    Retrained through the same code path as every removal arm (cached as ``removal/retrains/full_s<offset>.json``)
    rather than read from ``models/metrics.json``: an ensemble member trained by an older version of the code
    would not be a fair reference. The member's own accuracy is kept beside it for comparison.
    """
    seed = run.config.train.seed + offset
    path = run.path / "removal" / "retrains" / f"full_s{offset}.json"
    if path.exists() and read_json(path).get("seed") == seed:
        return read_json(path)
    result = {"seed": seed, "test_acc": test_accuracy(run, None, seed, device, progress), "source": "retrained"}
    metrics_path = run.path / "models" / "metrics.json"
    if metrics_path.exists():
        for m in read_json(metrics_path).get("models", []):
            if m.get("seed") == seed:
                result["ensemble_member_test_acc"] = m.get("test_acc")
    write_json(path, result)
    return result
