"""trak_loo against trak_loo_leverage: how close each is to real leave-one-out, and how well each ranks. Not a test.

Part 1, exactness: binary logistic regressions (exact features ``s_i x_i``), each refitted without every example in
turn; the real drop of each example's own margin against each scorer's predicted drop, with the ridge matched to the
model's L2 (and at trakscope's default ``--ridge 1``). Part 2, ranking, on validation only: the regimes benchmark's
small cases at data seed 1 with 3% canaries, ``trakscope run`` then ``detect --no-cleanlab`` (cached under
``--work``); ROC-AUC and recall@10% of both scorers against the planted noise and the canaries of the **training**
split, and why they differ (mean predicted drop of clean and wrong labels; the margin averaged over every checkpoint).

    OMP_NUM_THREADS=1 python benchmarks/trak_loo.py --work /tmp/trak_loo [--cases default,memorise]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trakscope.attribution.score import gram, regularized_inverse, trak_scores
from trakscope.cli import main as cli
from trakscope.methods import scorers
from trakscope.methods.metrics import roc_auc
from trakscope.run_folder import RunFolder
from trakscope.stages.leverage import checkpoint_fit

BASE = ["--dataset", "mnist", "--image-size", "16", "--max-test", "500", "--canaries", "0.03", "--proj-dim", "512",
        "--no-progress", "--device", "cpu", "--data-seed", "1"]
SMALL = ["--model", "timm:test_resnet", "--max-train", "600", "--epochs", "8", "--batch-size", "32", "--lr", "0.05",
         "--ensemble", "3"]
CASES = {  # the regimes benchmark's cases (benchmarks/regimes.py), at another data seed
    "default": [*SMALL, "--noise", "0.1"],
    "memorise": ["--model", "timm:test_resnet", "--max-train", "500", "--noise", "0.1", "--epochs", "15",
                 "--no-augment", "--batch-size", "32", "--lr", "0.05", "--ensemble", "3"],
    "confusable": [*SMALL, "--noise", "0.15", "--noise-kind", "confusable"],
    "symmetric30": [*SMALL, "--noise", "0.3"],
}
LOGISTIC = [(80, 2, 2.0, 1.0), (200, 10, 4.0, 0.1), (150, 20, 6.0, 0.01), (100, 30, 6.0, 0.1)]  # n, d, separation, L2


def _fit(x: np.ndarray, s: np.ndarray, lam: float, w: np.ndarray | None = None) -> np.ndarray:
    w = np.zeros(x.shape[1]) if w is None else w.copy()
    for _ in range(100):
        p = 1 / (1 + np.exp(-s * (x @ w)))
        step = np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x + lam * np.eye(x.shape[1]),
                               lam * w - x.T @ (s * (1 - p)))
        w -= step
        if np.abs(step).max() < 1e-12:
            break
    return w


def logistic_case(n: int, d: int, sep: float, lam: float, seed: int) -> dict:
    """Real / predicted total margin drop and correlation of each scorer on one logistic regression."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.c_[rng.normal(size=(n, d)) + sep * (2 * y[:, None] - 1) / np.sqrt(d), np.ones(n)]
    s = 2.0 * np.where(rng.random(n) < 0.1, 1 - y, y) - 1  # 10% flipped labels
    w = _fit(x, s, lam)
    margin = s * (x @ w)
    true = margin - np.array([s[i] * x[i] @ _fit(np.delete(x, i, 0), np.delete(s, i), lam, w) for i in range(n)])
    p, phi = 1 / (1 + np.exp(-margin)), s[:, None] * x
    wt, probs, given = p * (1 - p), np.c_[1 - p, p], np.ones(n, dtype=np.int64)
    out = {}
    for ridge_kind in ("matched", "default"):
        old_ridge = lam / wt.mean() * (d + 1) / np.trace(gram(phi)) if ridge_kind == "matched" else 1.0
        new_ridge = lam * (d + 1) / np.trace(gram(phi, weights=wt)) if ridge_kind == "matched" else 1.0
        _, self_scores = trak_scores([phi], [regularized_inverse(gram(phi), old_ridge)[0]], None, 1 - p)
        old = margin - scorers.loo_margin(probs, given, self_scores)
        new = margin - scorers.loo_margin_leverage(p[None], scorers.leverage(phi, wt, new_ridge)[None])
        for name, est in (("trak_loo", old), ("trak_loo_leverage", new)):
            out[f"{name}, ridge {ridge_kind}"] = (float(true.sum() / est.sum()), float(np.corrcoef(true, est)[0, 1]))
    return out


def ranking_case(work: Path, name: str) -> dict:
    """Detection quality of both scorers (and loss) on one validation run, and the diagnostics."""
    folder = work / name
    if not RunFolder(folder).detect_metrics_path.exists():
        assert cli(["run", "--out", str(folder), *BASE, *CASES[name]]) == 0
        assert cli(["detect", "--run", str(folder), "--no-cleanlab", "--no-progress"]) == 0
    run = RunFolder(folder)
    metrics = json.loads(run.detect_metrics_path.read_text())
    rows = {n: (metrics["scorers"][n], metrics["canaries"]["scorers"][n])
            for n in ("trak_loo", "trak_loo_leverage", "loss")}
    noisy = run.data.table("train")["noisy"].astype(bool)
    given, leverages = checkpoint_fit(run)
    w = given * (1 - given)
    drop = ((1 - given) * leverages / (1 - w * leverages)).mean(0)
    return {"rows": rows, "drop_clean": float(np.median(drop[~noisy])), "drop_noisy": float(np.median(drop[noisy])),
            "auc_drop": roc_auc(drop, noisy), "auc_margin_all": roc_auc(-scorers._log_odds(given).mean(0), noisy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/trakscope-trak-loo"))
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    print("| logistic regression (n, d, separation, L2) | scorer, ridge | real / predicted drop | correlation |\n"
          "|---|---|---|---|")
    for seed, case in enumerate(LOGISTIC):
        for label, (ratio, corr) in logistic_case(*case, seed=seed).items():
            print(f"| {case} | {label} | {ratio:.3f} | {corr:.3f} |")
    print("\n| case | scorer | planted AUC | planted R@10% | canary AUC | canary R@10% |\n|---|---|---|---|---|---|")
    notes = []
    for name in args.cases.split(","):
        r = ranking_case(args.work, name)
        for scorer, (planted, canary) in r["rows"].items():
            print(f"| {name} | {scorer} | {planted['roc_auc']:.4f} | {planted['recall@10%']:.3f} | "
                  f"{canary['roc_auc']:.4f} | {canary['recall@10%']:.3f} |")
        notes.append(f"{name}: median predicted drop clean {r['drop_clean']:.2f}, wrong {r['drop_noisy']:.2f} (AUC of "
                     f"the drop alone {r['auc_drop']:.3f}); margin averaged over every checkpoint AUC "
                     f"{r['auc_margin_all']:.3f}")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
