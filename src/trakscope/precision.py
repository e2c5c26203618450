"""Numeric precision and memory format: bf16 autocast where the hardware has it, channels-last convolutions.

``fp32`` computes everything in float32. ``bf16`` runs the forward pass under ``torch.autocast`` with bfloat16
(convolutions and matrix products in bf16, reductions and the loss in float32; weights, gradients and the
optimizer stay float32). ``auto`` is bf16 where the device does bf16 in hardware (:func:`bf16_support`) and
fp32 elsewhere; it is resolved once (:func:`resolve_precision`) and the result is what a run folder records,
because bf16 training gives other checkpoints than fp32.

Support is read at run time: a CPU with AMX or AVX512-BF16 computes bf16 natively; any other CPU (AArch64 bf16
extensions are not read here) runs torch's bf16 kernels emulated (correct, usually slower than fp32), and so does a
CUDA GPU before Ampere. An
explicit ``bf16`` there runs with a warning, so that a folder made with bf16 elsewhere can still be retrained
(``lds``, ``removal``) on this machine; a device with no bf16 autocast at all is refused.
"""

from __future__ import annotations

import dataclasses
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from .config import PRECISIONS, RunConfig

_WARNED: set[str] = set()


def bf16_support(device: torch.device | str) -> tuple[str, str]:
    """``(level, why)``: ``native``, ``emulated`` or ``none`` bf16 autocast on ``device``, and the reason in words."""
    device = torch.device(device)
    if device.type == "cpu":
        if _cpu_has("_is_amx_tile_supported"):
            return "native", "this CPU has AMX"
        if _cpu_has("_is_avx512_bf16_supported"):
            return "native", "this CPU has AVX512-BF16"
        return "emulated", "this CPU has neither AMX nor AVX512-BF16"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "none", "torch sees no CUDA device"
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        if torch.cuda.get_device_capability(index) >= (8, 0):
            return "native", f"{name} has bf16 tensor cores"
        if torch.cuda.is_bf16_supported(including_emulation=True):
            return "emulated", f"{name} predates bf16 tensor cores (compute capability < 8.0)"
        return "none", f"{name} cannot run bf16"
    return "none", f"trakscope runs bf16 autocast on cpu and cuda only, not {device.type}"


def _cpu_has(check: str) -> bool:
    """torch's own CPU feature check (private in torch 2.x; absent means no)."""
    return bool(getattr(torch.cpu, check, lambda: False)())


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16``: ``auto`` made concrete for ``device``; an explicit ``bf16`` checked against it.

    Raises:
        ValueError: an unknown name, or ``bf16`` on a device without bf16 autocast (one line, saying why).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    level, why = bf16_support(device)
    if precision == "auto":
        return "bf16" if level == "native" else "fp32"
    if level == "none":
        raise ValueError(f"bf16 asked for, but {why}; use --precision fp32 (or auto)")
    if level == "emulated" and why not in _WARNED:
        _WARNED.add(why)
        print(f"trakscope: warning: bf16 on {torch.device(device).type}: {why}, so torch emulates it (same "
              "results, usually slower than fp32)", file=sys.stderr)
    return "bf16"


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The context a forward pass runs in: bf16 ``torch.autocast`` for ``bf16`` (or ``auto`` resolved so), else
    nothing. Backward passes need no context: their ops follow the dtypes the forward chose."""
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_memory_format(inputs: Any, fmt: torch.memory_format) -> Any:
    """Inputs with every 4-d float tensor (images ``[b, C, H, W]``; in a dict too) laid out as ``fmt``."""
    if fmt is torch.contiguous_format:
        return inputs
    if isinstance(inputs, dict):
        return {k: to_memory_format(v, fmt) for k, v in inputs.items()}
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and inputs.is_floating_point():
        return inputs.contiguous(memory_format=fmt)
    return inputs


def upcast(t: Any) -> Any:
    """A bf16 or fp16 tensor as float32 (a copy); anything else as it is (float32 and float64 are not copied)."""
    if isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16):
        return t.float()
    return t


def full_precision(device: torch.device | str) -> AbstractContextManager:
    """Autocast switched off on ``device``'s kind (hooks that accumulate TRAK features in float32)."""
    kind = torch.device(device).type
    return torch.autocast(device_type=kind, enabled=False) if kind in ("cpu", "cuda") else nullcontext()


def resolve_run_precision(cfg: RunConfig, device: torch.device | str) -> RunConfig:
    """``cfg`` with ``auto`` made concrete for ``device`` in training and featurization (what ``config.json``
    records), and an explicit ``bf16`` checked against the device.

    Raises:
        ValueError: ``bf16`` on a device without bf16 autocast, or bf16 featurization with the dense projector.
    """
    train = dataclasses.replace(cfg.train, precision=resolve_precision(cfg.train.precision, device))
    trak = dataclasses.replace(cfg.trak, precision=featurize_precision(cfg.trak.precision, cfg.trak.projector, device))
    return dataclasses.replace(cfg, train=train, trak=trak)


def featurize_precision(precision: str, projector: str, device: torch.device | str) -> str:
    """:func:`resolve_precision` for featurization: only the Kronecker projector runs bf16 (``auto`` is fp32 for the
    dense reference).

    Raises:
        ValueError: ``bf16`` with another projector, or on a device without bf16 autocast.
    """
    if projector != "kronecker" and precision != "fp32":
        if precision == "bf16":
            raise ValueError(f"bf16 featurization needs the kronecker projector; the {projector} projector computes "
                             "in fp32 only")
        precision = "fp32"
    return resolve_precision(precision, device)
