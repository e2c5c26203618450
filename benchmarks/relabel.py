"""Relabel next to remove: the same top-k suspects given their suggested label instead of being removed. Not a test.

For each case of ``benchmarks/regimes.py`` named in ``--cases`` (its run flags, uniform canaries), in its own run
folder under ``--work`` (cached there, so a rerun resumes): ``trakscope run``, ``detect`` (k-fold out-of-sample
probabilities, so the suggestions are out-of-sample), then ``removal`` at 5% and 10% with ``--seeds`` seeds for
the detector with the best ROC-AUC on the canaries (chosen without planted-noise labels or the test split), its
relabel twin, and random removal. It prints Markdown tables: the suggestions' accuracy among the flagged, the
removal table (paired Δ vs full data, worst class), relabel vs remove and both vs random (paired over seeds).

    OMP_NUM_THREADS=1 python benchmarks/relabel.py --work /tmp/relabel --cases confusable,memorise
    OMP_NUM_THREADS=1 python benchmarks/relabel.py --work /tmp/relabel --cases pretrained --fractions 0.1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from regimes import BASE, CASES, run_flags, strategy_for, versus_random

from trakscope.cli import main as cli
from trakscope.report.tables import relabel_table, removal_table, suggestion_table
from trakscope.run_folder import RunFolder

FRACTIONS = "0.05,0.1"


def run_case(name: str, case: dict, work: Path, seeds: int, fractions: str = FRACTIONS) -> dict:
    """Run, detect and remove/relabel/random-retrain one case; its metrics and removal results."""
    t0 = time.perf_counter()
    folder = work / name
    assert cli(["run", "--out", str(folder), *BASE, "--canary-kind", "random", *run_flags(case, folder)]) == 0
    assert cli(["detect", "--run", str(folder), "--folds", str(case["folds"] or 2), "--no-progress"]) == 0
    run = RunFolder(folder)
    metrics = json.loads(run.detect_metrics_path.read_text())
    remove = (strategy_for(metrics["primary"]) or ["aum"])[0]  # a scorer without a removal strategy: AUM
    strategies = [remove, f"relabel-{remove}", "random"]
    assert cli(["removal", "--run", str(folder), "--fractions", fractions, "--seeds", str(seeds),
                "--strategies", ",".join(strategies), "--no-progress"]) == 0
    return {"what": case["what"], "metrics": metrics, "strategies": strategies,
            "removal": json.loads(run.removal_results_path.read_text()), "seconds": time.perf_counter() - t0}


def corrected(removal: dict) -> str:
    """One line: per relabel row, how many of the planted wrong labels in its selection got their true label (means
    over seeds)."""
    parts = [f"{r['strategy']} at {r['fraction']:g}: {r['n_corrected']:g} of {r['n_noisy_removed']:g} planted wrong "
             f"labels corrected (of {r['n_removed']:g} relabeled)"
             for r in removal["rows"] if r.get("action") == "relabel" and "n_corrected" in r]
    return "Relabel selections (means over seeds): " + "; ".join(parts) + "." if parts else ""


def render(name: str, r: dict) -> str:
    m = r["metrics"]
    return "\n".join([
        f"### {name}: {r['what']}", "",
        f"{m['n_noisy']} planted wrong labels, {m['canaries']['n']} canaries among {m['n_train']}; suspects ordered by "
        f"**{m['primary']}** (best on the canaries); case wall time {r['seconds'] / 60:.1f} min", "",
        f"Suggested labels ({m['suggestions']['source']} probabilities) among the top of {m['primary']}'s ranking:",
        "", suggestion_table(m["suggestions"]), "",
        "Remove, relabel and random (test accuracy; Δ paired = mean ± SE over seeds of acc(strategy, seed) − "
        "acc(full, seed); worst group = worst class):", "", removal_table(r["removal"]), "",
        "Relabel against remove on the same selection, same seed:", "", relabel_table(r["removal"]), "",
        corrected(r["removal"]), "",
        "Each against random removal of as many examples, same seed:", "", versus_random(r["removal"]), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/trakscope-relabel"))
    parser.add_argument("--cases", default="confusable,memorise,pretrained",
                        help=f"comma-separated cases of benchmarks/regimes.py ({', '.join(CASES)})")
    parser.add_argument("--seeds", type=int, default=5, help="retrains per (strategy, fraction)")
    parser.add_argument("--fractions", default=FRACTIONS, help="comma-separated shares selected (cached retrains are "
                        "reused, so a later run with more fractions adds only the new ones)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"# relabel benchmark on {platform.processor() or platform.machine()}: {args.cases}\n", flush=True)
    results = {}
    for name in args.cases.split(","):
        results[name] = run_case(name, CASES[name], args.work, args.seeds, args.fractions)
        print(render(name, results[name]), flush=True)
        (args.work / "relabel.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"total wall time {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
