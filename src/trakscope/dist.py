"""torch.distributed, used only when launched by ``torchrun`` (environment variables RANK / WORLD_SIZE).

A single process needs none of it: every helper here degrades to rank 0 of a world of 1.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as tdist

# How long a rank waits at a barrier. Ranks wait there while others finish their share of the trainings (an
# ensemble member, a fold, a retrain, a subset model), which can take longer than torch's defaults (10 minutes
# with nccl, 30 with gloo). A rank that fails does not leave the others waiting: torchrun then stops them all.
BARRIER_TIMEOUT = timedelta(hours=24)


def init_from_env(device: str) -> None:
    """Join the process group named by torchrun's environment, if any (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=BARRIER_TIMEOUT)


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return tdist.get_rank() if tdist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    return tdist.get_world_size() if tdist.is_initialized() else 1


def local_device(device: str) -> str:
    """``cuda`` becomes ``cuda:<LOCAL_RANK>`` under torchrun; other devices are unchanged."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def barrier() -> None:
    """Wait for every rank (no-op without torch.distributed)."""
    if tdist.is_initialized():
        tdist.barrier()
