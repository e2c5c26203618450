"""Projection width (``--proj-dim``), Kronecker factor width (``--kron-k``) and ridge, chosen on validation LDS.

On an existing run folder and its cached LDS subset models (``trakscope lds`` / ``benchmarks/peers.py``), every
checkpoint of the run is featurized again through the TRAK engine for each (proj_dim, kron_k) into its own store
under ``--work`` (cached: a rerun only scores), then scored at each ridge against the val and the test targets.
The settings are compared on **val** LDS; test LDS is printed beside it and is not used to choose. Featurization
time is the engine's wall time for train + val + test over all checkpoints, one process, ``--threads`` threads.

    python benchmarks/proj_sweep.py --run /tmp/peers2/run_ii --models 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from trakscope import TRAK
from trakscope.io import write_json
from trakscope.methods.lds import ci95, lds, predicted_outputs
from trakscope.models import build_model
from trakscope.run_folder import RunFolder
from trakscope.stages.ensemble import Runtime
from trakscope.stages.lds import subset_margins
from trakscope.stages.run import featurize as featurize_run
from trakscope.train import architecture_only


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--models", type=int, default=50, help="LDS subset models (cached in the run)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--proj-dims", default="512,1024,2048,4096,0", help="0 = the Kronecker blocks' natural width")
    p.add_argument("--kron-ks", default="8,16,32")
    p.add_argument("--ridges", default="0.3,1,3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", choices=("all", "last"), default="all",
                   help="last: every parameter but the last Linear layer's is frozen (TRAK on the classifier only)")
    p.add_argument("--work", type=Path, default=None, help="stores and summary (default <run>_proj)")
    args = p.parse_args()
    args.work = args.work or args.run.parent / f"{args.run.name}_proj"
    return args


def featurize(run: RunFolder, trak: TRAK) -> float:
    """Featurize train, val and test under every checkpoint of the run (resumed); wall seconds spent."""
    t0 = time.perf_counter()
    featurize_run(run, Runtime(progress=False), trak)
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    run = RunFolder(args.run)
    lds_data = {s: subset_margins(run, args.alpha, args.models, seed=0, split=s, progress=False)
                for s in ("val", "test")}
    ridges = [float(r) for r in args.ridges.split(",")]
    rows = []
    for kron_k in (int(k) for k in args.kron_ks.split(",")):
        for proj_dim in (int(d) for d in args.proj_dims.split(",")):
            model = build_model(architecture_only(run.config.model), len(run.data.dataset().classes))
            if args.layers == "last":
                head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
                keep = {id(p) for p in head.parameters()}
                for param in model.parameters():
                    param.requires_grad_(id(param) in keep)
            store = args.work / f"store_{args.layers}_d{proj_dim}_k{kron_k}"
            trak = TRAK(model, store, proj_dim=proj_dim, kron_k=kron_k, progress=False)
            timing = store / "featurize_seconds.json"
            if not timing.exists():
                write_json(timing, {"seconds": round(featurize(run, trak), 2)})
            seconds = json.loads(timing.read_text())["seconds"]
            width = trak._projector(0).dim  # proj_dim 0: the natural width of the Kronecker blocks
            row = {"layers": args.layers, "proj_dim": proj_dim, "kron_k": kron_k, "width": width,
                   "featurize_s": seconds, "val": {}, "test": {}}
            for ridge in ridges:
                trak.ridge = ridge
                for split in ("val", "test"):
                    masks, margins = lds_data[split]
                    scores = trak.scores("train", split, out=store / f"scores_{split}_r{ridge:g}.npy")
                    mean, per = lds(predicted_outputs(np.asarray(scores), masks), margins)
                    row[split][str(ridge)] = (round(mean, 4), [round(v, 4) for v in ci95(per)])
            print(json.dumps(row), flush=True)
            rows.append(row)
    best = max(((r, ridge) for r in rows for ridge in ridges), key=lambda rr: rr[0]["val"][str(rr[1])][0])
    write_json(args.work / f"summary_{args.layers}.json", {"rows": rows, "ridges": ridges, "run": str(args.run),
                                            "best_on_val": {"proj_dim": best[0]["proj_dim"],
                                                            "kron_k": best[0]["kron_k"], "ridge": best[1]},
                                            "wall_s": round(time.perf_counter() - t_all, 1)})
    head = " | ".join(f"val, ridge {r:g}" for r in ridges)
    print(f"| kron_k | proj_dim | featurize (s) | {head} | test at the val-best ridge |")
    print("|" + "---|" * (4 + len(ridges)))
    for r in rows:
        best_ridge = max(ridges, key=lambda x: r["val"][str(x)][0])
        vals = " | ".join(f"{r['val'][str(x)][0]:.4f}" for x in ridges)
        print(f"| {r['kron_k']} | {r['proj_dim'] or 'natural'} | {r['featurize_s']:.0f} | {vals} | "
              f"{r['test'][str(best_ridge)][0]:.4f} (ridge {best_ridge:g}) |")
    print(f"best on val: kron_k {best[0]['kron_k']}, proj_dim {best[0]['proj_dim']}, ridge {best[1]:g}")


if __name__ == "__main__":
    main()
