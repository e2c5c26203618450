"""Featurization speed: plain forward+backward vs trakscope's Kronecker and dense projectors vs traker.

Every case runs in its own subprocess (so peak RSS is per case) on the same model (torchvision
ResNet-18, 10 classes, random init, eval mode) and the same MNIST images at 32x32. Time per example is
what is compared; the expensive cases (dense, traker) are timed on fewer examples. Not a test.

    python benchmarks/featurize_speed.py            # full table (~10 min on 2 shared cores)
    python benchmarks/featurize_speed.py --quick    # a smoke run in about a minute

``--ecosystem`` instead times the Kronecker projector against a plain forward+backward (same run, same
batches) on ResNet-18 as torchvision, Hugging Face (``ResNetForImageClassification`` from a ResNet-18
``ResNetConfig``, fed a ``{"pixel_values": x}`` dict) and timm (``resnet18``) build it, random init, at each
``--sizes`` image size:

    python benchmarks/featurize_speed.py --ecosystem --sizes 32,224 --batch 8 --n 16
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


MODELS = ("torchvision_resnet18", "hf_resnet18", "timm_resnet18")


def _model(name: str = "torchvision_resnet18") -> torch.nn.Module:
    """ResNet-18 with 10 classes, random init, eval mode, as ``name``'s library builds it (nothing downloaded)."""
    torch.manual_seed(0)
    if name == "hf_resnet18":
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                              layer_type="basic", num_labels=10)  # microsoft/resnet-18's architecture
        return ResNetForImageClassification(config).eval()
    if name == "timm_resnet18":
        import timm

        return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    from torchvision.models import resnet18

    return resnet18(num_classes=10).eval()


def _as_inputs(name: str, x: torch.Tensor):
    """What the model is called with: a Hugging Face model gets the collator's dict."""
    return {"pixel_values": x} if name == "hf_resnet18" else x


def _plain(model):
    from trakscope.attribution.output import margin
    from trakscope.models.calling import call_model

    def run(x, y):
        model.zero_grad(set_to_none=True)
        margin(call_model(model, x), y).sum().backward()

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


def _kronecker_error(proj, x, y: torch.Tensor) -> float:
    """Relative error of the Kronecker blocks against exact (vmap) per-example gradients, same matrices."""
    from trakscope.attribution.dense import DenseProjector

    dense = DenseProjector(proj.model, 1, 0, output=proj.output)
    flat, _ = dense.per_example_grads(x, y)
    named = dict(proj.model.named_parameters())
    grads, start = {}, 0
    for name in dense.params:
        p = named[name]
        grads[id(p)], start = flat[:, start : start + p.numel()].reshape(len(y), *p.shape), start + p.numel()
    want = torch.cat([layer.project_grads([grads[id(p)] for p in layer.params]) for layer in proj.layers], 1)
    got, _ = proj.natural_features(x, y)
    return float((got - want).norm() / want.norm())


def _sync(device: str) -> None:
    """Wait for queued CUDA work, so that wall time covers it (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_case(args) -> dict:
    """Time one case in this process; return its measurements."""
    torch.set_num_threads(args.threads)
    model = _model(args.model).to(args.device)
    x, y = _data(args.n + args.warmup, args.image_size)
    x, y = x.to(args.device), y.to(args.device)
    extra = {}
    if args.case == "plain":
        fn = _plain(model)
    elif args.case == "kronecker":
        from trakscope.attribution.kronecker import KroneckerProjector

        proj = KroneckerProjector(model, args.proj_dim, seed=0)
        m = 2 if args.image_size > 64 else 4
        error = _kronecker_error(proj, _as_inputs(args.model, x[:m]), y[:m])
        extra = {"dim": proj.dim, "natural_dim": proj.natural_dim, "rel_error": error}
        fn = proj
    elif args.case == "dense":
        from trakscope.attribution.dense import DenseProjector

        fn = DenseProjector(model, args.proj_dim, seed=0)
    else:
        tmp = tempfile.TemporaryDirectory()
        fn = _traker(model, args.proj_dim, args.n + args.warmup, tmp.name)
    x = _as_inputs(args.model, x) if args.case in ("plain", "kronecker") else x
    x_at = (lambda a, b: {"pixel_values": x["pixel_values"][a:b]}) if isinstance(x, dict) else (lambda a, b: x[a:b])
    for start in range(0, args.warmup, args.batch):
        fn(x_at(start, min(start + args.batch, args.warmup)), y[start : min(start + args.batch, args.warmup)])
    _sync(args.device)
    t0 = time.perf_counter()
    for start in range(args.warmup, args.warmup + args.n, args.batch):
        stop = min(start + args.batch, args.warmup + args.n)
        fn(x_at(start, stop), y[start:stop])
    _sync(args.device)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        extra["peak_gpu_mb"] = torch.cuda.max_memory_allocated(args.device) / 2**20
    return {"s_per_example": seconds / args.n, "n": args.n, "peak_rss_mb": rss_mb, **extra}


def _spawn(case: str, proj_dim: int, n: int, warmup: int, args, tuned: bool, model: str = MODELS[0]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--case",
        case,
        "--model",
        model,
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
        "--device",
        args.device,
    ]
    env = {**os.environ, **(TUNED_MALLOC if tuned else {})}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    malloc = "tuned" if tuned else "default"
    print(f"  {model} {args.image_size}px {case:9s} proj_dim={proj_dim:<6d} malloc={malloc}: {result}", file=sys.stderr)
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


def ecosystem_table(args) -> None:
    """Kronecker featurization time over plain forward+backward time for each library's ResNet-18 and image size."""
    print(f"\nnproc={os.cpu_count()} torch={torch.__version__} threads={args.threads} batch={args.batch} "
          f"examples timed={args.n} proj_dim={args.proj_dim}\n")
    rows = []
    for size in args.sizes:
        args.image_size = size
        for model in MODELS:
            plain = _spawn("plain", 0, args.n, args.batch, args, False, model)
            kron = _spawn("kronecker", args.proj_dim, args.n, args.batch, args, False, model)
            rows.append((model, size, plain, kron))
    print("| model | image size | forward+backward (ms / example) | kronecker (ms / example) | kronecker / fwd+bwd "
          "| rel. error vs exact |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, size, plain, kron in rows:
        p, k = plain["s_per_example"], kron["s_per_example"]
        print(f"| {model} | {size} | {1000 * p:.2f} | {1000 * k:.2f} | {k / p:.2f} | {kron['rel_error']:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("plain", "kronecker", "dense", "traker"), help="run one case (internal)")
    parser.add_argument("--model", choices=MODELS, default=MODELS[0], help="which ResNet-18 (internal)")
    parser.add_argument("--ecosystem", action="store_true", help="kronecker vs fwd+bwd on each library's ResNet-18")
    parser.add_argument("--sizes", default="32,224", help="image sizes for --ecosystem, comma-separated")
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda (plain and kronecker cases; --ecosystem)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    if args.quick:
        args.proj_dim, args.n, args.n_slow, args.batch = 256, 64, 8, 8
    if args.ecosystem:
        args.sizes = [int(s) for s in args.sizes.split(",")]
        ecosystem_table(args)
        return
    main_table(args)


if __name__ == "__main__":
    main()
