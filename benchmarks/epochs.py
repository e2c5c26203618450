"""Training epochs for detection, chosen without the test split. Not a test.

For each ``--epochs`` value (and each ``--seeds`` seed: data split, planted noise, canaries and training all move
with it), the CLI runs end to end in its own folder under ``--work`` (cached: a rerun resumes): ``trakscope run``
on the built-in data at the demo's settings with 10% planted noise and 3% canaries, then ``detect``. It prints one
table: the ensemble's **val** accuracy, each scorer's ROC-AUC against the planted noise (training split only), the
canaries' verdict, and the wall time of run + detect. The test split is never read.

Rule (stated before looking; means over seeds): keep the epoch counts whose val accuracy is within ``--tol`` of the
best; among them, the fewest whose default suspects scorer (``registry.PRIMARY[0]``, AUM) is within ``--tol`` of
their best planted-noise AUC. Fewer epochs are cheaper for every later stage too (a retrain in removal, a fold in
detect).

    OMP_NUM_THREADS=1 python benchmarks/epochs.py --work /tmp/epochs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from trakscope.cli import main as cli
from trakscope.methods import registry
from trakscope.run_folder import RunFolder

# The demo's run (``make demo``) with planted noise and canaries so detection can be measured; the model, image
# size, ensemble and checkpoints are trakscope's defaults.
BASE = ["--dataset", "mnist", "--noise", "0.1", "--canaries", "0.03", "--ensemble", "2", "--no-progress",
        "--device", "cpu"]
SCORERS = ("aum", "self_influence", "trak_loo", "loss", "d3m")  # shown; every registered scorer is in the json


def one(folder: Path, epochs: int, seed: int, max_train: int | None) -> dict:
    """Run + detect at ``epochs`` with ``seed`` (resumed from ``folder``); the row's numbers."""
    t0 = time.perf_counter()
    size = ["--max-train", str(max_train)] if max_train else []
    seeds = ["--data-seed", str(seed), "--train-seed", str(100 * seed)]
    assert cli(["run", "--out", str(folder), *BASE, *size, *seeds, "--epochs", str(epochs)]) == 0
    if not RunFolder(folder).detect_metrics_path.exists():
        assert cli(["detect", "--run", str(folder), "--no-cleanlab", "--no-progress"]) == 0
    run = RunFolder(folder)
    models = json.loads(run.metrics_path.read_text())
    det = json.loads(run.detect_metrics_path.read_text())
    return {"epochs": epochs, "seed": seed, "val_acc": models["ensemble"]["val_acc"],
            "auc": {k: v["roc_auc"] for k, v in det["scorers"].items()},
            "recall10": {k: v["recall@10%"] for k, v in det["scorers"].items()},
            "canary_auc": {k: v["roc_auc"] for k, v in det["canaries"]["scorers"].items()},
            "canary_best": det["primary"], "n_train": det["n_train"],
            "wall_s": round(time.perf_counter() - t0, 1), "stages_s": json.loads(run.timings_path.read_text())}


def choose(rows: list[dict], primary: str, tol: float) -> tuple[int, dict]:
    """Among the epochs within ``tol`` of the best mean val accuracy, the fewest within ``tol`` of their best mean
    AUC of ``primary``."""
    by_e: dict[int, list[dict]] = {}
    for r in rows:
        by_e.setdefault(r["epochs"], []).append(r)
    mean = {e: (float(np.mean([r["auc"][primary] for r in rs])), float(np.mean([r["val_acc"] for r in rs])))
            for e, rs in by_e.items()}
    best_acc = max(v for _, v in mean.values())
    good = [e for e, (_, v) in mean.items() if v >= best_acc - tol]  # as accurate as the best, then detection
    best_auc = max(mean[e][0] for e in good)
    return min(e for e in good if mean[e][0] >= best_auc - tol), mean


def table(rows: list[dict]) -> str:
    head = ["epochs", "seed", "val acc"] + [f"AUC {s}" for s in SCORERS] + ["AUC aum (canaries)",
                                                                            "best on canaries", "stages (s)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["epochs"], r["seed"])):
        cells = [str(r["epochs"]), str(r["seed"]), f"{r['val_acc']:.4f}"]
        cells += [f"{r['auc'][s]:.4f}" if s in r["auc"] else "—" for s in SCORERS]
        cells += [f"{r['canary_auc']['aum']:.4f}", r["canary_best"], f"{sum(r['stages_s'].values()):.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/trakscope-epochs"))
    parser.add_argument("--epochs", default="4,6,8,12,16", help="comma-separated epoch counts")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per epoch count (split, noise and training)")
    parser.add_argument("--max-train", type=int, default=None, help="training subset (default: the whole split)")
    parser.add_argument("--tol", type=float, default=0.005, help="tolerance of the choice rule (AUC and accuracy)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"# epochs benchmark on {platform.processor() or platform.machine()}\n", flush=True)
    rows = []
    for seed in range(args.seeds):
        for e in (int(x) for x in args.epochs.split(",")):
            rows.append(one(args.work / f"e{e}_s{seed}", e, seed, args.max_train))
            print(f"epochs {e} seed {seed}: val {rows[-1]['val_acc']:.4f}, AUC aum {rows[-1]['auc']['aum']:.4f}, "
                  f"{rows[-1]['wall_s']:.0f} s", flush=True)
            (args.work / "epochs.json").write_text(json.dumps(rows, indent=1))
    primary = registry.PRIMARY[0]
    pick, mean = choose(rows, primary, args.tol)
    print(table(rows))
    print("\nmean over seeds (AUC " + primary + ", val acc): "
          + ", ".join(f"{e}: ({a:.4f}, {v:.4f})" for e, (a, v) in sorted(mean.items())))
    print(f"chosen: {pick} epochs (within {args.tol} of the best val accuracy, then the fewest within {args.tol} of "
          f"the best {primary} AUC)")
    print(f"total wall time {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
