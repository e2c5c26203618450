"""Seconds per training step of EfficientNet-Lite0 at 224 px (batch 128, SGD, random inputs), once under glibc's
default malloc and once with large allocations kept in the heap (``MALLOC_MMAP_THRESHOLD_=4294967296``), each in a
fresh process with the threads this process has. Not a test; a lead for the allocator's share of the 224 px cost.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/allocator_steps.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {"glibc default": {}, "MALLOC_MMAP_THRESHOLD_=4294967296": {"MALLOC_MMAP_THRESHOLD_": "4294967296"}}


def steps(n: int, batch: int) -> list[float]:
    import torch

    from trakscope.config import ModelConfig
    from trakscope.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="efficientnet_lite0", weights="imagenet"), 10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 10, (batch,))
    out = []
    for _ in range(n):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(round(time.perf_counter() - start, 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(steps(args.steps, args.batch)))
        return
    results = {}
    for name, env in VARIANTS.items():
        cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--batch", str(args.batch)]
        done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: seconds per step {results[name]}", flush=True)
    print(json.dumps({"threads": os.environ.get("OMP_NUM_THREADS"), "batch": args.batch, "results": results}))


if __name__ == "__main__":
    main()
