"""LDS of TRAK scores as a function of the ridge (lambda relative to the mean diagonal of X^T X). Not a test.

Reuses a finished run's features and its cached LDS subset models (trained on first use), recomputes the scores
for each ridge from the stored features, and prints one table row per ridge. Nothing in the run folder changes
except the LDS subset-model cache.

    python benchmarks/ridge_lds.py --run runs/demo --models 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from trakscope.attribution.featurize import FeatureStore
from trakscope.attribution.score import gram, regularized_inverse, trak_scores
from trakscope.methods.lds import ci95, lds, predicted_outputs
from trakscope.run_folder import RunFolder
from trakscope.stages.lds import subset_margins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="finished run folder (trakscope run)")
    parser.add_argument("--models", type=int, default=20, help="LDS subset models (cached in the run folder)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--ridges", default="0.001,0.01,0.1,0.3,1,3,10,30,100")
    args = parser.parse_args()
    run = RunFolder(args.run)
    t0 = time.perf_counter()
    masks, margins = subset_margins(run, alpha=args.alpha, k=args.models, split="test")
    folders = sorted((run.path / "features").glob("ckpt*"), key=lambda p: int(p.name[4:]))
    n_train, n_test = len(run.table("train")["index"]), len(run.table("test")["index"])
    train = [FeatureStore(f, "train", n_train, 0).load() for f in folders]
    targets = [FeatureStore(f, "test", n_test, 0).load()[0] for f in folders]
    q_mean = np.mean([q for _, q in train], axis=0)
    grams = [gram(x) for x, _ in train]
    print(f"{run.path}: {n_train} train, {n_test} test targets, {len(folders)} checkpoints, "
          f"{train[0][0].shape[1]} dims, {args.models} subset models at alpha={args.alpha} "
          f"(subset models ready after {time.perf_counter() - t0:.0f} s)")
    print("| ridge | LDS | 95% CI |\n|---|---|---|")
    for ridge in (float(r) for r in args.ridges.split(",")):
        invs = [regularized_inverse(g, ridge)[0] for g in grams]
        scores, _ = trak_scores([x for x, _ in train], invs, targets, q_mean)
        mean, per_target = lds(predicted_outputs(scores, masks), margins)
        lo, hi = ci95(per_target)
        print(f"| {ridge:g} | {mean:.3f} | {lo:.3f} to {hi:.3f} |", flush=True)


if __name__ == "__main__":
    main()
