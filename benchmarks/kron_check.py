"""What the Kronecker projector's self-check costs, and how far its passing layers are from failing. Not a test.

The cost: on the built-in ``resnet18`` (10 classes, random init, eval mode) at 224 px, what the check adds to the
first call of a checkpoint's projector (on CPU in float32: autograd's gradient of the first ``PROBE_SIZE``
examples and the comparison; the batch's own blocks are reused) against featurizing a batch of 64 with the same
projector (``proj_dim`` 2048, ``kron_k`` 16, as ``trakscope run`` does). Both are timed in this one process,
interleaved (batch, check, batch, check, ...), and the median check time is divided by the median time per
featurized example times 1,000: the machine may be shared, so only that ratio is reported as measured.

    python benchmarks/kron_check.py --batches 3           # ResNet-18, 224 px, 3 batches of 64 (~5 min, 2 cores)
    python benchmarks/kron_check.py --batches 1 --size 64 # a smoke run

``--errors`` instead prints, per model, the largest relative error of a passing layer and the failing layers
(the figures behind ``selfcheck.TOLERANCE``): ResNet-18 (built-in, 64 px), EfficientNet-Lite0, TinyCNN, timm
``vit_tiny_patch16_224`` built small (token pool and ``global_pool='map'``), a Hugging Face ``ResNetConfig`` model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from trakscope.attribution.kronecker import KroneckerProjector
from trakscope.config import ModelConfig
from trakscope.models import build_model


def _builtin(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name), 10).eval()


def _images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def cost(size: int, batch: int, batches: int) -> dict:
    """Median seconds of the check and of one featurized example, interleaved in this process, and their ratio."""
    model = _builtin("resnet18")
    warm = KroneckerProjector(model, 2048, seed=0)
    warm(*_images(2, size, seed=99))  # first-call allocations and kernel choices, timed in neither
    checks, per_example = [], []
    for b in range(batches):
        x, y = _images(batch, size, seed=b)
        proj = KroneckerProjector(model, 2048, seed=0)
        start = time.perf_counter()
        feats, _ = proj.natural_features(x, y)  # what featurizing the batch computes
        per_example.append((time.perf_counter() - start) / batch)
        start = time.perf_counter()
        record = proj.self_check(x, y, feats)  # what the first call adds to it
        checks.append(time.perf_counter() - start)
        print(f"  round {b}: check {checks[-1]:.2f} s, featurize {per_example[-1] * batch:.2f} s for {batch} "
              f"examples (max passing error {record['max_error']:.1e}, exact {record['exact']})", flush=True)
    check, example = statistics.median(checks), statistics.median(per_example)
    return {"check_s": check, "per_example_s": example, "ratio_to_1000": check / (1000 * example)}


def _timm_vit(pool: str) -> nn.Module:
    import timm  # optional: only for --errors

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool=pool, img_size=32, patch_size=8,
                             depth=2, num_classes=10).eval()


def _hf_resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification  # optional: only for --errors

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)
    return ResNetForImageClassification(config).eval()


def errors() -> None:
    """Each model's largest passing error and its failing layers, on a probe of 4 random images."""
    models = {"resnet18 (64 px)": (lambda: _builtin("resnet18"), 64),
              "efficientnet_lite0 (64 px)": (lambda: _builtin("efficientnet_lite0"), 64),
              "tiny_cnn (32 px)": (lambda: _builtin("tiny_cnn"), 32),
              "timm vit_tiny token pool (32 px)": (lambda: _timm_vit("token"), 32),
              "timm vit_tiny global_pool='map' (32 px)": (lambda: _timm_vit("map"), 32),
              "hf ResNetForImageClassification (32 px)": (_hf_resnet, 32)}
    for name, (make, size) in models.items():
        x, y = _images(4, size)
        record = KroneckerProjector(make(), 2048, seed=0).self_check(x, y)
        failed = ", ".join(f"{e['layer']} {e['error']:.2f}" for e in record["exact"]) or "none"
        print(f"| {name} | {record['layers']} | {record['max_error']:.1e} | {failed} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image size in pixels")
    parser.add_argument("--batch", type=int, default=64, help="featurization batch size")
    parser.add_argument("--batches", type=int, default=2, help="interleaved rounds (check + one batch each)")
    parser.add_argument("--errors", action="store_true", help="print passing and failing errors per model instead")
    args = parser.parse_args()
    if args.errors:
        errors()
        return
    result = cost(args.size, args.batch, args.batches)
    print(f"resnet18 at {args.size} px: check {result['check_s']:.2f} s, featurize {result['per_example_s']:.3f} s "
          f"per example; check / featurizing 1,000 examples = {100 * result['ratio_to_1000']:.2f}%")


if __name__ == "__main__":
    main()
