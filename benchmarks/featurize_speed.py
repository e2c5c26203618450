"""Featurization speed: plain forward+backward vs trakscope's Kronecker and dense projectors vs traker.

Every case runs in its own subprocess (so peak RSS is per case) on the same model (torchvision
ResNet-18, 10 classes, random init, eval mode) and the same MNIST images at 32x32. Time per example is
what is compared; the expensive cases (dense, traker) are timed on fewer examples. Not a test.

    python benchmarks/featurize_speed.py            # full table (~10 min on 2 shared cores)
    python benchmarks/featurize_speed.py --quick    # a smoke run in about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def _data(n: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST training images (normalized ``[n, 3, S, S]``) and labels, from the local copy."""
    import numpy as np

    from trakscope.config import DataConfig
    from trakscope.data import load_dataset

    data = load_dataset(DataConfig(dataset="mnist", image_size=image_size, noise=0.0))
    idx = np.arange(n) % len(data.train)
    return data.train.images.batch(idx), torch.as_tensor(data.train.labels[idx], dtype=torch.int64)


def _model() -> torch.nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


def _plain(model):
    from trakscope.attribution.output import margin

    def run(x, y):
        model.zero_grad(set_to_none=True)
        margin(model(x), y).sum().backward()

    return run


def _traker(model, proj_dim: int, n: int, save_dir: str):
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    grad_dim = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(grad_dim, proj_dim, 0, ProjectionType.rademacher, "cpu", dtype=torch.float32)
    traker = TRAKer(
        model,
        "image_classification",
        n,
        save_dir=save_dir,
        device="cpu",
        projector=projector,
        proj_dim=proj_dim,
        use_half_precision=False,
        logging_level=40,
    )
    traker.load_checkpoint(model.state_dict(), model_id=0)
    return lambda x, y: traker.featurize(batch=(x, y), num_samples=len(x))


def _kronecker_error(proj, x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative error of the Kronecker blocks against exact (vmap) per-example gradients, same matrices."""
    from trakscope.attribution.dense import DenseProjector

    flat, _ = DenseProjector(proj.model, 1, 0).per_example_grads(x, y)
    sizes = {k: v.numel() for k, v in proj.model.named_parameters()}
    grads, start = {}, 0
    for name, size in sizes.items():
        grads[name], start = flat[:, start : start + size], start + size
    blocks = []
    for layer in proj.layers:
        w, b = grads[f"{layer.name}.weight"], grads.get(f"{layer.name}.bias")
        g = torch.stack([w, b], -1) if layer.kind == "bn" else w.reshape(len(x), layer.p_out.shape[0], -1)
        if layer.kind != "bn" and b is not None:
            g = torch.cat([g, b.unsqueeze(-1)], -1)
        blocks.append((layer.p_out.T @ g @ layer.p_in).flatten(1))
    want = torch.cat(blocks, 1)
    got, _ = proj.natural_features(x, y)
    return float((got - want).norm() / want.norm())


def run_case(args) -> dict:
    """Time one case in this process; return its measurements."""
    torch.set_num_threads(args.threads)
    model = _model()
    x, y = _data(args.n + args.warmup, args.image_size)
    extra = {}
    if args.case == "plain":
        fn = _plain(model)
    elif args.case == "kronecker":
        from trakscope.attribution.kronecker import KroneckerProjector

        proj = KroneckerProjector(model, args.proj_dim, seed=0)
        extra = {"dim": proj.dim, "natural_dim": proj.natural_dim, "rel_error": _kronecker_error(proj, x[:4], y[:4])}
        fn = proj
    elif args.case == "dense":
        from trakscope.attribution.dense import DenseProjector

        fn = DenseProjector(model, args.proj_dim, seed=0)
    else:
        tmp = tempfile.TemporaryDirectory()
        fn = _traker(model, args.proj_dim, args.n + args.warmup, tmp.name)
    for start in range(0, args.warmup, args.batch):
        fn(x[start : min(start + args.batch, args.warmup)], y[start : min(start + args.batch, args.warmup)])
    t0 = time.perf_counter()
    for start in range(args.warmup, args.warmup + args.n, args.batch):
        stop = min(start + args.batch, args.warmup + args.n)
        fn(x[start:stop], y[start:stop])
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_example": seconds / args.n, "n": args.n, "peak_rss_mb": rss_mb, **extra}


def _spawn(case: str, proj_dim: int, n: int, warmup: int, args, tuned: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--case",
        case,
        "--proj-dim",
        str(proj_dim),
        "--n",
        str(n),
        "--warmup",
        str(warmup),
        "--batch",
        str(args.batch),
        "--image-size",
        str(args.image_size),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, **(TUNED_MALLOC if tuned else {})}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"  {case:9s} proj_dim={proj_dim:<6d} malloc={'tuned' if tuned else 'default'}: {result}", file=sys.stderr)
    return result


def _plan(args, natural: int) -> list[tuple[str, str, int, int, int, bool]]:
    """(label, case, proj_dim, n, warmup, tuned malloc) of each row."""
    fast, slow, warm = args.n, args.n_slow, args.batch
    rows = [("(a) forward+backward", "plain", 0, fast, warm, False)]
    for dim in (args.proj_dim, natural):
        rows.append((f"(b) trakscope kronecker, k={dim}", "kronecker", dim, fast, warm, False))
        if (dim == args.proj_dim or args.slow_natural) and not args.skip_slow:
            rows.append((f"(c) trakscope dense, k={dim}", "dense", dim, slow, 0, False))
        if (dim == args.proj_dim or args.slow_natural) and not args.skip_slow:
            rows.append((f"(d) traker BasicProjector fp32, k={dim}", "traker", dim, slow, 0, False))
    rows += [
        ("(a) forward+backward, tuned malloc", "plain", 0, fast, warm, True),
        (f"(b) trakscope kronecker, k={args.proj_dim}, tuned malloc", "kronecker", args.proj_dim, fast, warm, True),
    ]
    return rows


def main_table(args) -> None:
    from trakscope.attribution.kronecker import KroneckerProjector

    natural = KroneckerProjector(_model(), 0, seed=0).natural_dim
    results = []
    for label, case, dim, n, warmup, tuned in _plan(args, natural):
        results.append((label, dim, _spawn(case, dim, n, warmup, args, tuned)))
    floor = results[0][2]["s_per_example"]
    traker_at = {dim: r["s_per_example"] for label, dim, r in results if label.startswith("(d)")}
    print(
        f"\nnproc={os.cpu_count()} torch={torch.__version__} threads={args.threads} python={platform.python_version()}"
        f" batch={args.batch} image_size={args.image_size} natural_width={natural}\n"
    )
    print("| case | examples timed | ms / example | x forward+backward | x traker (same k) | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, dim, r in results:
        t = r["s_per_example"]
        vs_traker = f"{t / traker_at[dim]:.4f}" if dim in traker_at else ""
        err = f" (rel. error vs exact {r['rel_error']:.1e})" if "rel_error" in r else ""
        print(f"| {label}{err} | {r['n']} | {1000 * t:.2f} | {t / floor:.2f} | {vs_traker} | {r['peak_rss_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("plain", "kronecker", "dense", "traker"), help="run one case (internal)")
    parser.add_argument("--proj-dim", type=int, default=2048, help="projection width besides the natural one")
    parser.add_argument("--n", type=int, default=512, help="examples timed for plain and kronecker")
    parser.add_argument("--n-slow", type=int, default=64, help="examples timed for dense and traker")
    parser.add_argument("--warmup", type=int, default=0, help="untimed examples first (internal)")
    parser.add_argument("--batch", type=int, default=64, help="batch size for every case")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on shared cores)")
    parser.add_argument("--slow-natural", action="store_true", help="also time dense and traker at natural width")
    parser.add_argument("--skip-slow", action="store_true", help="only forward+backward and kronecker rows")
    parser.add_argument("--quick", action="store_true", help="small sizes: proj_dim 256, 64 and 8 examples")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    if args.quick:
        args.proj_dim, args.n, args.n_slow, args.batch = 256, 64, 8, 8
    main_table(args)


if __name__ == "__main__":
    main()
