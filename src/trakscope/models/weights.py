"""Reading a local state dict and loading it into a network whose head may have another shape."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn


class WeightsError(Exception):
    """Pretrained weights were asked for but are absent or not the expected file."""


# What a wrapper adds in front of every name of the wrapped model's state dict, and the wrapper.
WRAPPERS = {"module.": "DistributedDataParallel or DataParallel", "_orig_mod.": "torch.compile"}
V = TypeVar("V")


def wrapper_prefix(names: Iterable[str], own: Iterable[str] = ()) -> str:
    """The wrappers' prefix that every name starts with: ``module.`` for a model saved from DistributedDataParallel,
    ``module._orig_mod.`` for nested wrappers, '' for none (:data:`WRAPPERS`).

    Args:
        own: the names of the model the state is for: a prefix its own names have too is no wrapper's.
    """
    names, own, prefix = list(names), list(own), ""
    while names:
        found = next((p for p in WRAPPERS if all(n.startswith(p) for n in names)
                      and not (own and all(n.startswith(prefix + p) for n in own))), None)
        if found is None:
            break
        prefix, names = prefix + found, [n[len(found):] for n in names]
    return prefix


def unwrapped(state: Mapping[str, V], own: Iterable[str] = ()) -> dict[str, V]:
    """``state`` with its :func:`wrapper_prefix` taken off every name."""
    cut = len(wrapper_prefix(state, own))
    return {k[cut:]: v for k, v in state.items()}


def describe_wrapper(prefix: str) -> str:
    """One line: what a :func:`wrapper_prefix` means and that it is stripped."""
    wrappers = " around ".join(WRAPPERS[p + "."] for p in prefix.split(".")[:-1])
    return f"every name starts with '{prefix}' (saved from a {wrappers} wrapper): the prefix is stripped"


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a torch file read with ``weights_only=True``, names as saved
    (:func:`unwrapped` takes a wrapper's ``module.`` off).

    A torch file holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` (a training checkpoint) is unwrapped.

    Raises:
        WeightsError: the file is absent or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a plain state dict
        raise WeightsError(f"cannot read {path} as a state dict (weights_only): {_torch_reason(e)}; save weights "
                           "with safetensors or torch.save(model.state_dict())") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (name -> tensor)")
    return state


def _torch_reason(error: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` found wrong, without its advice to load unsafely: the part after
    ``WeightsUnpickler error:`` where there is one (``Unsupported operand 109`` for a text file)."""
    text = str(error)
    _, found, reason = text.partition("WeightsUnpickler error:")
    if not found:
        return one_line(text)
    return one_line(reason.strip().split("\n\n")[0].split(". ")[0])


def state_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name (as saved) -> shape of every tensor in a state-dict file: from a ``.safetensors`` header alone (no tensor
    is read; the header is checked to cover the whole file), or from a torch file read with ``weights_only``.

    Raises:
        WeightsError: the file is absent, is not a whole safetensors file (text, cut short), or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.suffix != ".safetensors":
        return {k: tuple(v.shape) for k, v in read_state_file(path).items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({one_line(e)})") from e


def check_state_file(model: nn.Module, path: str | Path, described: str) -> str:
    """Refuse a state-dict file that would not load strictly into ``model``: the same names (a missing BatchNorm
    ``num_batches_tracked`` aside, as ``load_state_dict`` allows; a wrapper's prefix stripped as
    :func:`read_state_file` does) and shapes, read from the file's header.

    Args:
        described: the model in words for the message, e.g. ``--model tiny_cnn with 10 classes``.

    Returns:
        the wrapper's prefix the names had (:func:`wrapper_prefix`), '' for none.

    Raises:
        WeightsError: one line naming the file and the first names that differ.
    """
    saved = state_shapes(path)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = unwrapped(saved, own)
    missing = [k for k in own if k not in theirs and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in theirs if k not in own]
    reshaped = [f"{k} {list(theirs[k])} (model {list(own[k])})" for k in theirs if k in own and theirs[k] != own[k]]
    if missing or unexpected or reshaped:
        raise WeightsError(f"{path} does not fit {described}: missing {_few(missing)}, unexpected {_few(unexpected)}, "
                           f"other shape {_few(reshaped)}; give checkpoints of that architecture")
    return wrapper_prefix(saved, own)


def head_prefix(model: nn.Module) -> str:
    """Name of the module that owns the network's last parameter (the classifier head), e.g. ``fc``."""
    last = list(dict(model.named_parameters()))[-1]
    return last.rpartition(".")[0]


def load_fitting(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` in place (a wrapper's prefix stripped, :func:`unwrapped`); head tensors of another
    shape keep the fresh initialisation.

    Raises:
        WeightsError: keys are missing or unexpected, or a tensor outside the head has another shape.
    """
    own = model.state_dict()
    state = unwrapped(state, own)
    head = head_prefix(model)
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    misfit = [k for k in reshaped if not k.startswith(head + ".")]
    if unexpected or missing or misfit:
        raise WeightsError(
            f"{source} does not fit {type(model).__name__}: missing {_few(missing)}, unexpected {_few(unexpected)}, "
            f"other shape outside the head {head!r}: {_few(misfit)}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)


def load_error(error: BaseException) -> str:
    """torch's ``load_state_dict`` error on one line, each list of names (missing, unexpected keys) cut to the first
    few with their count, e.g. ``missing key(s) ['fc.weight', 'fc.bias'] (2); size mismatch for ...``."""
    parts = []
    for line in str(error).splitlines()[1:]:  # the first line only says "Error(s) in loading state_dict for X:"
        head, _, rest = line.strip().partition(": ")
        names = re.findall(r'"([^"]+)"', rest)
        parts.append(f"{head.removesuffix(' in state_dict').lower()} {_few(names)}" if head.endswith("key(s) in "
                     "state_dict") and names else line.strip())
    return one_line(ValueError("; ".join(p for p in parts if p))) if any(parts) else one_line(error)


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters (the CLI prints errors as one line)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _few(keys: list[str], n: int = 3) -> str:
    """``['a', 'b', ...] (7)`` for an error message."""
    return "none" if not keys else f"{keys[:n]}{' ...' if len(keys) > n else ''} ({len(keys)})"
