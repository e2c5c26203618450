"""Canary estimates of the regimes benchmark's run folders, recomputed with today's code. Not a test.

``benchmarks/regimes.py`` trains, runs ``detect`` and keeps each run folder. This script rereads those folders
(the scores in ``detect/ranking.csv``, the cached k-fold probabilities, ``data/canaries.csv``) and recomputes what
``detect`` reports about the canaries through the same functions (:func:`trakscope.stages.canaries.canary_estimates`,
``canary_weights``, ``canary_kinds``, ``wrong_label_estimate``), without retraining: a change to the estimate is
measured in minutes. The truth is the planted-noise recall@10% of the scorer that orders the suspects; "before the
cap" is the estimate without the cap at the room the top 10% leaves the estimated wrong labels.

    python benchmarks/canary_estimates.py /tmp/regimes [/tmp/regimes-mixed ...] [--save rows.json]
    python benchmarks/canary_estimates.py rows.json /tmp/more-regimes  # earlier rows and new folders together
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trakscope.run_folder import RunFolder
from trakscope.stages.canaries import canary_estimates, canary_kinds, canary_mask, canary_weights, wrong_label_estimate
from trakscope.stages.crossval import out_of_sample_probs
from trakscope.stages.detect import load_ranking

AT, TOLERANCE = "recall@10%", 0.10


def estimate(folder: Path) -> dict | None:
    """The primary scorer's canary estimate (weighted, unweighted) and its truth for one run folder, or None."""
    run = RunFolder(folder)
    if not run.detect_metrics_path.exists():
        return None
    metrics = json.loads(run.detect_metrics_path.read_text())
    if not metrics.get("scorers") or "canaries" not in metrics:
        return None
    best, labels = metrics["primary"], run.data.table("train")["label"]
    canary = canary_mask(run, len(labels))
    ranking = load_ranking(run)
    folds = len(list(run.crossval_dir.glob("fold[0-9]*.npy")))  # the k that detect used (another k would drop them)
    if folds < 2:
        return None
    oos = out_of_sample_probs(run, folds, progress=False)
    weights, kinds = canary_weights(run, labels, oos, canary), canary_kinds(run, labels)
    wrong = wrong_label_estimate(labels, oos, canary, True)
    out = canary_estimates({best: ranking[best]}, canary, best, weights, kinds, wrong["estimated"])
    est, plain = out["estimates"][best][AT], out.get("unweighted", out["estimates"])[best][AT]
    uncapped = canary_estimates({best: ranking[best]}, canary, best, weights, kinds)["estimates"][best][AT]
    truth = metrics["scorers"][best][AT]
    return {"folder": folder.name, "kind": run.config.data.canary_kind, "best": best, "truth": truth,
            "estimate": est, "unweighted": plain["estimate"], "uncapped": uncapped, "weighted": out["weighted"],
            "within": abs(est["estimate"] - truth) <= TOLERANCE, "covered": est["low"] <= truth <= est["high"],
            "wrong_labels": wrong["estimated"], "n_noisy": metrics["n_noisy"], "design": out["needed"]["design"]}


def table(rows: list[dict]) -> str:
    lines = ["| run folder | canary kind | scorer | unweighted | before the cap (95% interval) | room | estimate (95% "
             f"interval) | effective canaries | interval width | truth | gap | within ±{TOLERANCE:g} | covered | "
             "wrong labels: estimated / planted |", "|---" * 14 + "|"]
    for r in rows:
        e, u = r["estimate"], r["uncapped"]
        lines.append(f"| {r['folder']} | {r['kind']} | {r['best']} | {r['unweighted']:.3f} | {u['estimate']:.3f} "
                     f"({u['low']:.3f}–{u['high']:.3f}) | {e['room']:.3f}{' (capped)' if e['capped'] else ''} | "
                     f"{e['estimate']:.3f} "
                     f"({e['low']:.3f}–{e['high']:.3f}) | {e['n_effective']:.1f} of {e['n']} | "
                     f"{e['high'] - e['low']:.3f} | {r['truth']:.3f} | "
                     f"{e['estimate'] - r['truth']:+.3f} | {'yes' if r['within'] else 'no'} | "
                     f"{'yes' if r['covered'] else 'no'} | {r['wrong_labels']} / {r['n_noisy']} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per canary kind: how many runs met each half of the goal (before the cap and with it), the mean absolute gap
    of the estimate, before the cap and unweighted, and the mean interval width."""
    lines = ["| canary kind | runs | within ±0.1 | covered | both | both before the cap | mean abs gap (estimate) | "
             "mean abs gap (before the cap) | mean abs gap (unweighted) | mean interval width |", "|---" * 10 + "|"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        rs = [r for r in rows if r["kind"] == kind]
        gap = np.mean([abs(r["estimate"]["estimate"] - r["truth"]) for r in rs])
        plain = np.mean([abs(r["unweighted"] - r["truth"]) for r in rs])
        before = np.mean([abs(r["uncapped"]["estimate"] - r["truth"]) for r in rs])
        met = sum(abs(u["estimate"] - r["truth"]) <= TOLERANCE and u["low"] <= r["truth"] <= u["high"]
                  for r in rs if (u := r["uncapped"]))
        width = np.mean([r["estimate"]["high"] - r["estimate"]["low"] for r in rs])
        lines.append(f"| {kind} | {len(rs)} | {sum(r['within'] for r in rs)} | {sum(r['covered'] for r in rs)} | "
                     f"{sum(r['within'] and r['covered'] for r in rs)} | {met} | {gap:.3f} | {before:.3f} | "
                     f"{plain:.3f} | {width:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, nargs="+", help="folders holding the regimes benchmark's run folders, "
                        "or rows.json files an earlier call saved (their rows are reused, not recomputed)")
    parser.add_argument("--save", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = [r for w in args.work for r in (json.loads(w.read_text()) if w.is_file() else folder_rows(w))]
    if args.save:
        args.save.write_text(json.dumps(rows, indent=1))
    print(table(rows) + "\n\n" + summary(rows))


def folder_rows(work: Path) -> list[dict]:
    """The rows of every run folder under ``work`` that ``detect`` measured, named ``work/folder``."""
    rows = [r for f in sorted(work.iterdir()) if f.is_dir() and (r := estimate(f)) is not None]
    return [{**r, "folder": f"{work.name}/{r['folder']}"} for r in rows]


if __name__ == "__main__":
    main()
