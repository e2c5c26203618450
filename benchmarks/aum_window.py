"""Which epochs AUM should average: every epoch, or only those before the learning rate decays. Not a test.

Pleiss et al. (2020) average the margin up to the first learning-rate decay of a step schedule. trakscope trains
with a one-cycle schedule (linear warm-up over the first 20% of steps, then linear decay to zero), so "the first
decay" is not one epoch; this measures every window. Each case trains its models once with trakscope's trainer
(:func:`~trakscope.train.train_model`), recording each example's margin on every pass, and scores AUM averaged
over the first ``e`` epochs for every ``e``, against the planted noise and the canaries of the **training** split
only (the test split is never read).

Rule (stated before looking; mean over cases and seeds): the window with the best mean planted-noise ROC-AUC; a
window other than every epoch is chosen only if it beats every epoch by more than the standard error of the paired
difference.

    OMP_NUM_THREADS=1 python benchmarks/aum_window.py [--cases demo,default,memorise,confusable] [--seeds 1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import numpy as np

from trakscope.config import DataConfig, ModelConfig, TrainConfig
from trakscope.data import load_dataset
from trakscope.methods.metrics import roc_auc
from trakscope.train import MarginRecorder, train_model

# The demo's settings (``make demo``: MNIST 32 px, ResNet-18, 6 epochs, one-cycle) and the regimes benchmark's small
# cases (16 px MNIST, timm's 0.37M-parameter test ResNet). Data seeds differ from the demo's 0.
CASES: dict[str, dict] = {
    "demo": {"data": {"noise": 0.1, "canaries": 0.03}, "model": {}, "train": {"epochs": 6}, "members": 2},
    "default": {"data": {"image_size": 16, "max_train": 600, "noise": 0.1, "canaries": 0.03},
                "model": {"name": "timm:test_resnet"}, "members": 3,
                "train": {"epochs": 8, "batch_size": 32, "lr": 0.05}},
    "memorise": {"data": {"image_size": 16, "max_train": 500, "noise": 0.1, "canaries": 0.03},
                 "model": {"name": "timm:test_resnet"}, "members": 3,
                 "train": {"epochs": 15, "batch_size": 32, "lr": 0.05, "augment": False}},
    "confusable": {"data": {"image_size": 16, "max_train": 600, "noise": 0.15, "noise_kind": "confusable",
                            "canaries": 0.03},
                   "model": {"name": "timm:test_resnet"}, "members": 3,
                   "train": {"epochs": 8, "batch_size": 32, "lr": 0.05}},
}


class PassRecorder(MarginRecorder):
    """A :class:`MarginRecorder` that also keeps each pass's margin: ``passes[e]`` float64 ``[n_train]``."""

    def __init__(self, n_train: int):
        super().__init__(n_train)
        self.passes: list[np.ndarray] = []

    def update(self, indices, logits, labels) -> None:
        before = self.total.copy()
        seen = self.count.copy()
        super().update(indices, logits, labels)
        idx = np.asarray(indices)
        for e in np.unique(seen[idx]):  # the pass each example of this batch is on (every example once per epoch)
            while len(self.passes) <= e:
                self.passes.append(np.full(len(self.total), np.nan))
            rows = idx[seen[idx] == e]
            self.passes[e][rows] = self.total[rows] - before[rows]


def one(case: dict, seed: int) -> dict:
    """Per-epoch margins of the case's members (data seed ``seed``): AUC of every window, and the schedule."""
    data = load_dataset(DataConfig(seed=seed, **case["data"]))
    model, train = ModelConfig(**case["model"]), TrainConfig(**case["train"])
    passes = []
    for m in range(case["members"]):
        rec = PassRecorder(len(data.train))
        train_model(model, dataclasses.replace(train, seed=100 * seed + m), data, seed=100 * seed + m,
                    progress=False, margins=rec)
        passes.append(np.array(rec.passes))  # [epochs, n_train]
    margins = np.mean(passes, axis=0)
    noisy = data.train.noisy
    canary = np.zeros(len(noisy), bool) if data.train.canary is None else np.asarray(data.train.canary, bool)
    windows = {e: margins[:e].mean(0) for e in range(1, len(margins) + 1)}
    return {"seed": seed, "epochs": len(margins),
            "auc": {e: roc_auc(-a, noisy) for e, a in windows.items()},
            "canary_auc": {e: roc_auc(-a, canary) for e, a in windows.items()} if canary.any() else {}}


def summary(rows: list[dict]) -> str:
    """Mean AUC of each window as a fraction of training, and its paired difference to every epoch."""
    epochs = rows[0]["epochs"]
    lines = ["| epochs averaged | share of training | LR at the window's end | planted AUC | Δ vs all (± SE) | "
             "canary AUC |", "|---|---|---|---|---|---|"]
    for e in range(1, epochs + 1):
        auc = [r["auc"][e] for r in rows]
        diff = [r["auc"][e] - r["auc"][epochs] for r in rows]
        se = np.std(diff, ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        can = [r["canary_auc"][e] for r in rows if r["canary_auc"]]
        lr = min(1.0, 1.25 * (1 - e / epochs)) if e / epochs > 0.2 else e / epochs / 0.2
        lines.append(f"| 1–{e} | {e / epochs:.2f} | {lr:.2f} × peak | {np.mean(auc):.4f} | "
                     f"{np.mean(diff):+.4f} ± {se:.4f} | {np.mean(can):.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--out", default=None, help="write the raw results here as JSON")
    args = parser.parse_args()
    print(f"# AUM window on {platform.processor() or platform.machine()}\n", flush=True)
    results = {}
    for name in args.cases.split(","):
        t0 = time.perf_counter()
        rows = [one(CASES[name], int(s)) for s in args.seeds.split(",")]
        results[name] = rows
        print(f"### {name} (seeds {args.seeds}, {time.perf_counter() - t0:.0f} s)\n\n{summary(rows)}\n", flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
