"""The ``removal`` stage: run the planned retrains (resuming from the cache), write results, table and plot."""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_path, write_json
from ..run import RunFolder
from .detection import load_ranking
from .removal import DEFAULT_FRACTIONS, DEFAULT_STRATEGIES, plan_jobs, reference_accuracy, run_job, summarize


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


def _count(n: float) -> str:
    """A count averaged over seeds: ``6`` or ``6.7``."""
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"


def _pm(mean: float, se: float | None) -> str:
    return f"{mean:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def format_table(summary: dict) -> str:
    """Markdown table: strategy, fraction removed, planted-noisy removed, test accuracy mean ± SE, change vs full."""
    ref = summary["reference"]
    heads = ["strategy", "removed", "noisy removed", "test acc (mean ± SE)", "Δ vs full data"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads),
             f"| full data | 0 | 0 of {summary['n_noisy']} | {_pm(ref['mean'], ref['se'])} | — |"]
    order = {s: i for i, s in enumerate(summary.get("strategies", []))}
    for r in sorted(summary["rows"], key=lambda r: (order.get(r["strategy"], len(order)), r["removed_fraction"])):
        removed = f"{r['removed_fraction'] * 100:.1f}% ({r['n_removed']:g})"
        lines.append(f"| {r['strategy']} | {removed} | {_count(r['n_noisy_removed'])} | {_pm(r['mean'], r['se'])} "
                     f"| {r['delta_vs_full']:+.4f} |")
    return "\n".join(lines)


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
