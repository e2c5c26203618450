"""LDS of TRAK scores as a function of the ridge (lambda relative to the mean diagonal of X^T X). Not a test.

Reuses a finished run's features (its TRAK store) and its cached LDS subset models (trained on first use),
rescores with the TRAK engine for each ridge, and prints one table row per ridge. The ridge is chosen on
**validation** targets by default (``--split val``): the test split never picks a setting. The score matrices
go to ``--work``; in the run folder only the LDS subset-model cache and the per-checkpoint kernel cache change
(the engine recomputes the kernel for the run's own ridge when it next needs it).

    python benchmarks/ridge_lds.py --run runs/demo --models 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from trakscope.methods.lds import ci95, lds, predicted_outputs
from trakscope.run_folder import RunFolder
from trakscope.stages.ensemble import Runtime, trak_engine
from trakscope.stages.lds import subset_margins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="finished run folder (trakscope run)")
    parser.add_argument("--models", type=int, default=20, help="LDS subset models (cached in the run folder)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--split", choices=("val", "test"), default="val", help="targets the ridge is chosen on")
    parser.add_argument("--ridges", default="0.001,0.01,0.1,0.3,1,3,10,30,100")
    parser.add_argument("--work", type=Path, default=None, help="where score matrices go (default: a temp dir)")
    args = parser.parse_args()
    run = RunFolder(args.run)
    t0 = time.perf_counter()
    masks, margins = subset_margins(run, alpha=args.alpha, k=args.models, split=args.split)
    work = args.work or Path(tempfile.mkdtemp(prefix="ridge_lds_"))
    print(f"{run.path}: {masks.shape[1]} train, {margins.shape[1]} {args.split} targets, {args.models} subset "
          f"models at alpha={args.alpha} (ready after {time.perf_counter() - t0:.0f} s)")
    print("| ridge | LDS | 95% CI |\n|---|---|---|")
    for ridge in (float(r) for r in args.ridges.split(",")):
        trak = trak_engine(run, Runtime(progress=False))
        trak.ridge = ridge
        scores = trak.scores("train", args.split, out=work / f"ridge{ridge:g}_{args.split}.npy")
        mean, per_target = lds(predicted_outputs(np.asarray(scores), masks), margins)
        lo, hi = ci95(per_target)
        print(f"| {ridge:g} | {mean:.3f} | {lo:.3f} to {hi:.3f} |", flush=True)


if __name__ == "__main__":
    main()
