"""The ``removal`` stage: remove-and-retrain with trakscope's own trainer, every retrain cached in the run folder.

The loop and the summary are :func:`~trakscope.methods.removal.remove_and_retrain`; this stage gives it an
``evaluate`` that trains the run's architecture with the run's recipe, caches each result as
``removal/retrains/<job>.json`` (with a hash of the removed indices, so a changed selection is retrained),
and takes the full-data reference of a seed from the ensemble member trained with that same seed and recipe.
"""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from ..io import read_json, write_json
from ..methods.registry import DEFAULT_STRATEGIES
from ..methods.removal import DEFAULT_FRACTIONS, Job, indices_hash, remove_and_retrain
from ..run_folder import RunFolder
from .detect import load_ranking


def test_accuracy(run: RunFolder, keep: np.ndarray | None, seed: int, device: str = "cpu",
                  progress: bool = True) -> float:
    """Train the run's architecture on ``keep`` with ``seed`` and return its accuracy on the test split."""
    from ..train import predict_logits, train_final_model

    cfg, dataset = run.config, run.dataset()
    model = train_final_model(cfg.model, cfg.train, dataset, seed=seed, keep=keep, device=device, progress=progress)
    logits = predict_logits(model, dataset.test.images, device=device, num_workers=cfg.train.num_workers)
    return float((logits.argmax(axis=1) == dataset.test.labels).mean())


def ensemble_member_accuracy(run: RunFolder, seed: int) -> dict | None:
    """The test accuracy of the ensemble member trained with ``seed`` (same data and recipe as a full-data retrain).

    None when no member has that seed, or when the members were not trained by trakscope from this config.
    """
    metrics = run.optional_result(run.metrics_path, "model_metrics")
    for m in (metrics or {}).get("models", []):
        if m.get("seed") == seed and m.get("test_acc") is not None and not run.config.model.checkpoints:
            return {"test_acc": float(m["test_acc"]), "source": f"ensemble member {m['model']}"}
    return None


def cached_evaluate(run: RunFolder, device: str = "cpu"):
    """``evaluate(job, keep, seed)`` for :func:`remove_and_retrain`: trakscope's trainer, cached per job."""
    n_train = len(run.table("train")["index"])

    def evaluate(job: Job, keep: np.ndarray, seed: int):
        if job.strategy == "full":
            member = ensemble_member_accuracy(run, seed)
            if member is not None:
                return member
        removed = np.setdiff1d(np.arange(n_train), keep)
        path = run.retrain_path(job.key if job.strategy != "full" else f"full_s{job.offset}")
        digest = indices_hash(removed)
        if path.exists():
            cached = read_json(path)
            if cached.get("removed_sha256") == digest and cached.get("seed") == seed:
                return {"test_acc": cached["test_acc"], "source": "retrained"}
        t0 = time.perf_counter()
        acc = test_accuracy(run, keep if len(removed) else None, seed, device, progress=False)
        write_json(path, {"strategy": job.strategy, "fraction": None if math.isnan(job.fraction) else job.fraction,
                          "seed": seed, "removed_sha256": digest, "n_removed": int(len(removed)), "test_acc": acc,
                          "seconds": round(time.perf_counter() - t0, 2)})
        return {"test_acc": acc, "source": "retrained"}

    return evaluate


def run_removal(run: RunFolder, strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
                fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seeds: int = 3,
                device: str = "cpu", progress: bool = True) -> dict:
    """Retrain every (strategy, fraction, seed), write ``removal/results.json`` and the plot; return the results."""
    from ..methods.removal import plan_jobs
    from ..report.plots import removal_png

    t0 = time.perf_counter()
    ranking = load_ranking(run)
    bar = tqdm(total=len(plan_jobs(strategies, fractions, seeds)) + seeds, desc="remove and retrain",
               disable=not progress)

    def on_job(job: Job) -> None:
        bar.set_postfix_str(job.key)
        bar.update(1)

    summary = remove_and_retrain(ranking, cached_evaluate(run, device), strategies=strategies, fractions=fractions,
                                 seeds=seeds, base_seed=run.config.train.seed, noisy=ranking["noisy"], on_job=on_job)
    bar.close()
    summary.update({"strategies": list(strategies), "fractions": list(fractions), "seeds": seeds,
                    "selection": "detect/ranking.csv (train and val splits only)", "metric": "test accuracy"})
    run.write_result(run.removal_results_path, "removal_results", summary)
    removal_png(summary, run.removal_plot_path)
    run.record_timing("removal", time.perf_counter() - t0)
    return summary
