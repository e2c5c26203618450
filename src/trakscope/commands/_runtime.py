"""Flags that say how to run (device, progress bars), not what to compute; never saved in config.json."""

from __future__ import annotations

import argparse

import torch

from .. import dist
from ..config import POSITIVE
from ..stages.ensemble import Runtime
from ._config_args import bounded


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--threads", type=bounded(int, POSITIVE), default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_data_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-root DIR``: rebuild the run's dataset from moved data (checked against ``data/fingerprint.json``)."""
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="where the run's data lives now, if it moved since `trakscope run` (config.json is "
                             "left as is; the images must be the same ones)")


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    """Resolve the device, join torch.distributed if launched by torchrun, set threads."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device")
    dist.init_from_env(device)
    device = dist.local_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return Runtime(device=device, progress=not args.no_progress and dist.rank() == 0)
