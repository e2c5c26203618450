"""The per-example weight gradient of a depthwise convolution, as trakscope computes it (one grouped convolution,
``attribution/conv.py``) against the loop over kernel positions it replaced in f08792f (kept here as the baseline),
on EfficientNet-Lite0's depthwise shapes (channels, input size, kernel, stride) at batch 32. Prints seconds per
shape, their totals and the largest relative difference. Not a test (tests/test_kronecker.py checks exactness).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/depthwise_grad.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from trakscope.attribution.conv import conv_input, grouped_conv_grad

SHAPES = [(32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 5, 2), (240, 28, 5, 1), (240, 28, 3, 2),
          (480, 14, 3, 1), (480, 14, 5, 1), (672, 14, 5, 1), (672, 14, 5, 2), (1152, 7, 5, 1), (1152, 7, 3, 1)]


def loop_grad(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The replaced implementation: for each kernel position, the strided input slice times the output gradient."""
    x, (ph, pw) = conv_input(conv, x)
    x = F.pad(x, [pw, pw, ph, ph]) if ph or pw else x
    b, c, h, w = g.shape
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    gg, cols = g.reshape(b, c, 1, h * w), []
    for i in range(kh):
        for j in range(kw):
            a = x[:, :, i * dh : i * dh + sh * (h - 1) + 1 : sh, j * dw : j * dw + sw * (w - 1) + 1 : sw]
            cols.append((gg * a.reshape(b, c, 1, h * w)).sum(-1, keepdim=True))
    return torch.stack(cols, -1).reshape(b, c, kh * kw)


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    total = {"loop": 0.0, "trakscope": 0.0}
    worst = 0.0
    print("| channels | size | kernel | stride | loop (ms) | trakscope (ms) |\n|---|---|---|---|---|---|")
    for c, size, k, s in SHAPES:
        conv = nn.Conv2d(c, c, k, stride=s, padding=k // 2, groups=c, bias=False)
        x = torch.randn(args.batch, c, size, size)
        with torch.no_grad():
            g = torch.randn_like(conv(x))
        want, got = loop_grad(conv, x, g), grouped_conv_grad(conv, x, g, bias=False)
        worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
        t_loop = timed(lambda: loop_grad(conv, x, g), args.repeats)  # noqa: B023 (used within the iteration)
        t_new = timed(lambda: grouped_conv_grad(conv, x, g, bias=False), args.repeats)  # noqa: B023
        total["loop"] += t_loop
        total["trakscope"] += t_new
        print(f"| {c} | {size} | {k} | {s} | {1000 * t_loop:.1f} | {1000 * t_new:.1f} |")
    print(f"\ntotal: loop {total['loop']:.2f} s, trakscope {total['trakscope']:.2f} s "
          f"({total['loop'] / total['trakscope']:.1f}x); largest relative difference {worst:.1e}; "
          f"{torch.get_num_threads()} thread(s), batch {args.batch}")


if __name__ == "__main__":
    main()
