"""Detection and remove-and-retrain across training regimes, with canaries. Not a test.

Each case runs the CLI end to end in its own run folder under ``--work`` (everything is cached there, so a rerun
resumes): ``trakscope run`` (with ``--canaries``), ``detect`` (every registered scorer, cleanlab on k-fold
probabilities) and ``removal`` at 5% and 10% for negative, positive, random, loss, cleanlab and the detector with
the best ROC-AUC **on the canaries** (chosen from the training split only, as a user without ground truth would).
It prints Markdown tables: detection per scorer against planted noise and on canaries, and removal with the
paired difference to the full-data model of the same seed and worst-class accuracy.

Extra measurements (benchmark only): train accuracy on the given labels (does the ensemble memorise?), the raw
``margin - scores[i, i]`` LOO variant without the Hessian-weight factor, and the slope of the k-fold margin drop
(in-sample margin minus out-of-sample margin) on ``scores[i, i]``: TRAK's self-influence in measured units.

    python benchmarks/regimes.py --work /tmp/regimes [--cases memorise,default]
    python benchmarks/regimes.py --work /tmp/more --cases default --kinds pairs --no-removal --canaries 0.05 \
        --max-train 1880 --data-seed 1  # every case's canaries, size and data seed overridden
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from shapes import make_folder

from trakscope.cli import main as cli
from trakscope.io import load_npy
from trakscope.methods import registry, scorers
from trakscope.methods.metrics import roc_auc
from trakscope.methods.removal import mean_se
from trakscope.report.tables import detection_table, removal_table
from trakscope.run_folder import RunFolder

# Shared by every case: small enough for 2 shared cores (16 px MNIST), seeded, with 3% canaries.
BASE = ["--dataset", "mnist", "--image-size", "16", "--max-test", "500", "--canaries", "0.03",
        "--proj-dim", "512", "--no-progress", "--device", "cpu"]
# timm's 0.37M-parameter test ResNet (random init): tiny_cnn (3k parameters) underfits at this size (test accuracy
# 0.24-0.32 in a first try) and cannot memorise; ResNet-18 costs ~30 s per epoch here.
SMALL = ["--model", "timm:test_resnet", "--max-train", "600", "--epochs", "8", "--batch-size", "32", "--lr", "0.05",
         "--ensemble", "3"]
# Each case declares all its settings here: run flags, detect folds, and removal (strategies, fractions) or None.
# Sizes come from timing on this machine's 2 cores shared with other engineers' jobs. Run it with
# OMP_NUM_THREADS=1: with 2 threads per process on loaded cores one timm:test_resnet training (300 x 8 epochs) took
# 5-26 s instead of ~1 s.
ALL = ("negative", "positive", "random", "loss", "cleanlab")  # + the best detector on the canaries
CASES: dict[str, dict] = {
    "memorise": {  # (b) long training without augmentation until the given (wrong) labels are fitted
        "what": "(b) memorisation: timm:test_resnet (0.37M parameters, random init), 500 train, 10% symmetric "
                "noise, 15 epochs, no augmentation",
        # 500: a 10% retrain keeps 450 = 14 x 32 + 2, whose last batch of 2 (BatchNorm on 1 x 1 features) once wrecked
        # every 10% retrain (test accuracy 0.34 vs 0.81); the trainer now merges a short last batch into the one before
        "run": ["--model", "timm:test_resnet", "--max-train", "500", "--noise", "0.1", "--epochs", "15",
                "--no-augment", "--batch-size", "32", "--lr", "0.05", "--ensemble", "3"],
        "folds": 3, "removal": (ALL, "0.05,0.1")},
    "default": {  # (a) today's recipe (augmented, few epochs), at this benchmark's size
        "what": "(a) default recipe: timm:test_resnet, 600 train, 10% symmetric noise, 8 epochs, augmented",
        "run": [*SMALL, "--noise", "0.1"], "folds": 3, "removal": (ALL, "0.05,0.1")},
    "symmetric30": {  # (d) heavy uniform noise
        "what": "(d) 30% symmetric noise: timm:test_resnet, 600 train, 8 epochs, augmented",
        "run": [*SMALL, "--noise", "0.3"], "folds": 3, "removal": (ALL, "0.05,0.1")},
    "confusable": {  # (d) class-conditional flips 4<->9, 3<->5, 7<->1 (15% of all labels = 1/4 of those classes)
        "what": "(d) confusable-pair noise 4↔9, 3↔5, 7↔1 (15% of all labels): timm:test_resnet, 600 train, 8 epochs",
        "run": [*SMALL, "--noise", "0.15", "--noise-kind", "confusable"], "folds": 3,
        "removal": (ALL, "0.05,0.1")},
    "lookalike": {  # (e) look-alike errors on any dataset: each flip goes to the class its 10 nearest training images
        # of another label (16 x 16 pixel space) vote for, on seeded random examples (--noise-kind lookalike)
        "what": "(e) look-alike noise (each flipped to the class its pixel-space neighbours of another label vote for, "
                "15% of all labels): timm:test_resnet, 600 train, 8 epochs, augmented",
        "run": [*SMALL, "--noise", "0.15", "--noise-kind", "lookalike"], "folds": 3,
        "removal": (ALL, "0.05,0.1")},
    "pretrained": {  # (c) ImageNet EfficientNet-Lite0 fine-tuned until it fits most given labels (~1 min a training)
        # lr 0.02 at batch 32 for 6 epochs stayed at test accuracy 0.17-0.38 and lr 0.1 diverged; batch 16 at lr 0.01
        # for 12 epochs reaches 0.88 test / 0.96 train on the given labels (one model, seed 0, with
        # this case's 10% noise)
        "what": "(c) pretrained: efficientnet_lite0 (ImageNet weights), 64 px, 300 train, 10% symmetric noise, "
                "12 epochs, batch 16, lr 0.01",
        "run": ["--model", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "64", "--max-train", "300",
                "--max-test", "300", "--val-fraction", "0.05", "--noise", "0.1", "--epochs", "12", "--batch-size",
                "16", "--lr", "0.01", "--ensemble", "2", "--proj-dim", "256"],
        "folds": 2, "removal": (ALL, "0.05,0.1")},
    "shapes": {  # (f) look-alike noise on data other than digits: generated shapes (benchmarks/shapes.py) at 32 px,
        # whose look-alike classes (disc/ring, square/frame, cross/X, bars across/down) are where the flips go
        "what": "(f) look-alike noise on generated shapes (not digits; 15% of all labels): timm:test_resnet, 600 "
                "train, 32 px, 8 epochs, augmented",
        "shapes": (700, 500), "run": [*SMALL, "--image-size", "32", "--noise", "0.15", "--noise-kind", "lookalike"],
        "folds": 3, "removal": (ALL, "0.05,0.1")},
}
# Every case runs once per canary kind (the first also gets removal): which canaries predict planted-noise recall?
CANARY_KINDS = ("pairs", "nearest", "random")
AT = "recall@10%"  # the recall whose canary estimate is checked against the truth
TOLERANCE = 0.10  # the goal: |estimate - truth| <= this, and the 95% interval covers the truth
SEEDS = 5  # seeds 0..2 are the ensemble members (their full-data reference costs nothing); 3, 4 are retrained


def strategy_for(scorer: str) -> list[str]:
    """The removal strategy that drops the most suspicious examples by ``scorer`` (none for some scorers)."""
    return [s.name for s in registry.STRATEGIES.values()
            if s.scorer == scorer and s.most_suspicious and not s.threshold][:1]


def extras(run: RunFolder) -> dict:
    """Benchmark-only numbers: memorisation, the raw LOO variant, and the self-influence units check."""
    train = run.data.table("train")
    probs, labels = run.results.probs("train").astype(np.float64), train["label"]
    noisy = train["noisy"].astype(bool)
    self_scores = np.asarray(run.results.scores("self"), dtype=np.float64)
    margin = scorers.train_margin(probs, labels)
    out = {"train_acc_given": float((probs.argmax(1) == labels).mean()),
           "noisy_fit": float((probs.argmax(1) == labels)[noisy].mean()) if noisy.any() else None,
           "raw_loo_auc": roc_auc(-(margin - self_scores), noisy) if noisy.any() else None}
    out.update(early_checkpoint_aucs(run, noisy))
    folds = sorted(run.crossval_dir.glob("fold*.npy"))
    if run.fold_assignment_path.exists() and folds:
        assign = load_npy(run.fold_assignment_path)
        oos = np.zeros_like(probs)
        for f in range(int(assign.max()) + 1):
            oos[assign == f] = load_npy(run.fold_probs_path(f))
        drop = margin - scorers.train_margin(oos, labels)  # what including the example did to its margin (k-fold)
        out["loo_slope"] = float(np.polyfit(self_scores, drop, 1)[0])
        out["loo_corr"] = float(np.corrcoef(self_scores, drop)[0, 1])
        out["mean_drop"], out["mean_self"] = float(drop.mean()), float(self_scores.mean())
        out["oos_margin_auc"] = roc_auc(-scorers.train_margin(oos, labels), noisy) if noisy.any() else None
    return out


def run_flags(case: dict, folder: Path) -> list[str]:
    """The case's run flags; a case on generated shapes also gets its image folder, written once beside ``folder``."""
    if "shapes" not in case:
        return case["run"]
    n_train, n_test = case["shapes"]
    root = make_folder(folder.parent / f"shapes_{n_train}_{n_test}", n_train, n_test, 32)
    return [*case["run"], "--dataset", "imagefolder", "--data-root", str(root)]


def run_and_detect(folder: Path, case: dict, canary_kind: str, extra: tuple[str, ...] = ()) -> RunFolder:
    """``trakscope run`` with this case's flags and canaries of ``canary_kind`` (``extra`` flags last: they
    override the case's), then ``detect``."""
    flags = [*BASE, "--canary-kind", canary_kind, *run_flags(case, folder), *extra]
    assert cli(["run", "--out", str(folder), *flags]) == 0
    folds = ["--no-cleanlab"] if case["folds"] is None else ["--folds", str(case["folds"])]
    assert cli(["detect", "--run", str(folder), *folds, "--no-progress"]) == 0
    return RunFolder(folder)


def canary_estimate(run: RunFolder, at: str = AT) -> dict:
    """The recommended (best-on-canaries) scorer's canary recall, with its 95% interval, next to its planted-noise
    recall; and the estimated count of wrong labels next to the planted count."""
    metrics = json.loads(run.detect_metrics_path.read_text())
    best = metrics["primary"]
    est = metrics["canaries"]["estimates"][best][at]
    truth = metrics["scorers"][best][at]
    return {"best": best, "canary": est["estimate"], "unweighted": metrics["canaries"]["scorers"][best][at],
            "weighted": metrics["canaries"].get("weighted", False), "n_effective": est.get("n_effective"),
            "planted": truth, "low": est["low"], "high": est["high"], "n_canaries": metrics["canaries"]["n"],
            "within": abs(est["estimate"] - truth) <= TOLERANCE, "covered": est["low"] <= truth <= est["high"],
            "wrong_labels": metrics.get("wrong_labels", {}).get("estimated"), "n_noisy": metrics["n_noisy"]}


def early_checkpoint_aucs(run: RunFolder, noisy: np.ndarray) -> dict:
    """TRAK self-influence and leave-one-out margin from each member's earliest kept checkpoint only (before the
    network memorises), from the features the run stored: the issue's early-checkpoint detectors. They measured
    below their final-checkpoint counterparts in every regime, so they are benchmark extras, not product scorers."""
    from trakscope.run_folder import checkpoint_key
    from trakscope.stages.ensemble import Runtime, trak_engine

    keys = [checkpoint_key(p) for p in run.checkpoint_paths()]
    first = {m: min(c for mm, c in keys if mm == m) for m, _ in keys}
    ids = [k for k, (m, c) in enumerate(keys) if c == first[m]]
    if len(ids) == len(keys) or not noisy.any():  # one checkpoint per member: nothing earlier than the final one
        return {}
    trak = trak_engine(run, Runtime(progress=False))
    early_self = np.asarray(trak.self_influence("train", checkpoints=ids), dtype=np.float64)
    given = 1.0 - trak.out_to_loss("train", checkpoints=ids)
    return {"early_self_influence_auc": roc_auc(early_self, noisy),
            "early_loo_auc": roc_auc(-scorers.loo_margin_of(given, early_self), noisy)}


def run_case(name: str, case: dict, work: Path, kinds: tuple[str, ...] = CANARY_KINDS,
             removal: bool = True, extra: tuple[str, ...] = ()) -> dict:
    """One case: a run and ``detect`` per canary kind (``extra``: flags overriding the case's), removal on the
    first kind's run folder."""
    t0 = time.perf_counter()
    folder = work / name if kinds[0] == CANARY_KINDS[0] else work / f"{name}-canaries-{kinds[0]}"
    run = run_and_detect(folder, case, kinds[0], extra)
    metrics = json.loads(run.detect_metrics_path.read_text())
    best = metrics["primary"]
    out = {"what": case["what"], "metrics": metrics, "extras": extras(run), "best": best,
           "model_metrics": json.loads(run.metrics_path.read_text()),
           "canary_kinds": {kinds[0]: canary_estimate(run)}, "seconds_per_kind": {kinds[0]: time.perf_counter() - t0}}
    for kind in kinds[1:]:  # the same case with other canaries: detection only
        t1 = time.perf_counter()
        out["canary_kinds"][kind] = canary_estimate(run_and_detect(work / f"{name}-canaries-{kind}", case, kind,
                                                                   extra))
        out["seconds_per_kind"][kind] = time.perf_counter() - t1
    if removal and case["removal"] is not None:
        baselines, fractions = case["removal"]
        strategies = list(dict.fromkeys([*baselines, *strategy_for(best)]))
        assert cli(["removal", "--run", str(folder), "--fractions", fractions, "--seeds", str(SEEDS),
                    "--strategies", ",".join(strategies), "--no-progress"]) == 0
        out["removal"] = json.loads(run.removal_results_path.read_text())
    out["seconds"] = time.perf_counter() - t0
    return out


def canary_vs_planted(metrics: dict, at: str = "recall@10%") -> str:
    """One line per scorer: recall on canaries vs on planted noise at the same inspected share."""
    lines = ["| scorer | canary AUC | planted AUC | canary R@10% | planted R@10% | gap |", "|---|---|---|---|---|---|"]
    can = metrics["canaries"]["scorers"]
    for n, m in metrics["scorers"].items():
        c = can[n]
        lines.append(f"| {n} | {c['roc_auc']:.3f} | {m['roc_auc']:.3f} | {c[at]:.3f} | {m[at]:.3f} | "
                     f"{c[at] - m[at]:+.3f} |")
    return "\n".join(lines)


def canary_kinds_table(kinds: dict) -> str:
    lines = ["| canary kind | canaries (effective) | recommended scorer | unweighted canary R@10% | canary estimate "
             f"R@10% (95% interval) | planted R@10% | gap | within ±{TOLERANCE:g} | covered | wrong labels: estimated "
             "/ planted |", "|---" * 10 + "|"]
    for kind, e in kinds.items():
        eff = f" ({e['n_effective']:.1f})" if e.get("weighted") else ""
        lines.append(f"| {kind} | {e['n_canaries']}{eff} | {e['best']} | {e['unweighted']:.3f} | {e['canary']:.3f} "
                     f"({e['low']:.3f}–{e['high']:.3f}) | {e['planted']:.3f} | {e['canary'] - e['planted']:+.3f} | "
                     f"{'yes' if e['within'] else 'no'} | "
                     f"{'yes' if e['covered'] else 'no'} | {e['wrong_labels']} / {e['n_noisy']} |")
    return "\n".join(lines)


def goal_table(results: dict) -> str:
    """Every case and canary kind: the estimate against the truth, and whether the goal is met."""
    lines = ["| case | canary kind | scorer | estimate (95% interval) | truth | gap | goal met |", "|---" * 7 + "|"]
    for name, r in results.items():
        for kind, e in r["canary_kinds"].items():
            met = e["within"] and e["covered"]
            lines.append(f"| {name} | {kind} | {e['best']} | {e['canary']:.3f} ({e['low']:.3f}–{e['high']:.3f}) | "
                         f"{e['planted']:.3f} | {e['canary'] - e['planted']:+.3f} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def versus_random(removal: dict) -> str:
    """Per fraction and strategy: mean ± SE over seeds of acc(strategy, seed) - acc(random, seed)."""
    rows = {(r["strategy"], r["fraction"]): dict(zip(r["seeds"], r["test_acc"])) for r in removal["rows"]}
    lines = ["| strategy | removed | Δ vs random, paired (± SE) | ratio to SE |", "|---|---|---|---|"]
    for (strategy, fraction), accs in rows.items():
        rand = rows.get(("random", fraction))
        if strategy == "random" or rand is None:
            continue
        diffs = [accs[s] - rand[s] for s in accs if s in rand]
        mean, se = mean_se(diffs)
        ratio = f"{mean / se:+.1f}" if se else "—"
        lines.append(f"| {strategy} | {fraction:g} | {mean:+.4f} ± {se or 0:.4f} | {ratio} |")
    return "\n".join(lines)


def render(name: str, r: dict) -> str:
    m, x = r["metrics"], r["extras"]
    ens = r["model_metrics"]["ensemble"]
    parts = [f"### {name}: {r['what']}", "",
             f"ensemble test accuracy {ens['test_acc']:.3f}; train accuracy on the given labels "
             f"{x['train_acc_given']:.3f} (planted wrong labels fitted: {x['noisy_fit']:.3f}); "
             f"{m['n_noisy']} planted wrong labels, {m['canaries']['n']} canaries among {m['n_train']}; "
             f"case wall time {r['seconds'] / 60:.1f} min", "",
             "Detection of the planted noise:", "", detection_table(m), "",
             "Canaries vs planted noise (the canary estimate a user would see, and the truth):", "",
             canary_vs_planted(m), "",
             "Canary kinds: the recommended scorer's canary recall@10% vs its planted-noise recall@10%:", "",
             canary_kinds_table(r["canary_kinds"]), "",
             f"Best on canaries (the default suspects list, and the removal 'best detector'): **{r['best']}**. "
             f"Raw `margin - scores[i,i]` (no Hessian-weight factor) AUC {x['raw_loo_auc']:.3f}."]
    if "early_self_influence_auc" in x:
        parts.append(f"From each member's earliest kept checkpoint only: TRAK self-influence AUC "
                     f"{x['early_self_influence_auc']:.3f}, TRAK leave-one-out margin AUC {x['early_loo_auc']:.3f}.")
    if "loo_slope" in x:
        parts.append(f"Self-influence units: k-fold margin drop (in-sample − out-of-sample margin) regressed on "
                     f"scores[i,i]: slope {x['loo_slope']:.1f}, correlation {x['loo_corr']:.3f} (mean drop "
                     f"{x['mean_drop']:.3f} vs mean scores[i,i] {x['mean_self']:.4f}); k-fold out-of-sample margin "
                     f"alone: AUC {x['oos_margin_auc']:.3f}.")
    if "removal" in r:
        parts += ["", "Remove and retrain (test accuracy; Δ paired = mean ± SE over seeds of acc(strategy, seed) − "
                      "acc(full, seed); worst group = worst class):", "", removal_table(r["removal"]), "",
                  "The same retrains against random removal of as many examples, same seed:", "",
                  versus_random(r["removal"])]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/trakscope-regimes"))
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names, in order")
    parser.add_argument("--kinds", default=",".join(CANARY_KINDS), help="comma-separated canary kinds (the first "
                        "gets the removal)")
    parser.add_argument("--no-removal", action="store_true", help="detection and canary estimates only")
    parser.add_argument("--canaries", help="override every case's --canaries fraction (default: BASE's 0.03)")
    parser.add_argument("--max-train", help="override every case's --max-train")
    parser.add_argument("--data-seed", help="override the data seed (split, subsets, noise, canaries; default 0)")
    args = parser.parse_args()
    kinds = tuple(args.kinds.split(","))
    overrides = (("--canaries", args.canaries), ("--max-train", args.max_train), ("--data-seed", args.data_seed))
    extra = tuple(x for flag, v in overrides if v for x in (flag, v))
    t0 = time.perf_counter()
    print(f"# regimes benchmark on {platform.processor() or platform.machine()}: {args.cases}\n", flush=True)
    results = {}
    for name in args.cases.split(","):
        results[name] = run_case(name, CASES[name], args.work, kinds, removal=not args.no_removal, extra=extra)
        print(render(name, results[name]), flush=True)
        (args.work / "regimes.json").write_text(json.dumps(results, indent=1, default=str))
    print("## Canary estimates against the truth (every case and kind)\n\n" + goal_table(results) + "\n")
    print(f"total wall time {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
