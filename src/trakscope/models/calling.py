"""How trakscope talks to any image classifier: batches in, logits out.

A batch is either a ``(inputs, labels)`` pair (as a torchvision ``DataLoader`` makes it) or a dict as a
Hugging Face collator makes it (``pixel_values`` and ``labels``; every key but ``labels`` is passed to the
model by name). A model's output is a logits tensor, or an object or dict with ``logits`` (Hugging Face
``ImageClassifierOutput``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

Inputs = torch.Tensor | dict[str, torch.Tensor]
LABEL_KEYS = ("labels", "label", "targets", "target")


def logits_of(output: Any) -> torch.Tensor:
    """``[b, C]`` logits from a model's output: a tensor, ``output.logits`` or ``output["logits"]``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}; "
                    "return a tensor, or an object or dict with `logits`")


def call_model(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model(inputs)`` (or ``model(**inputs)`` for a dict) as ``[b, C]`` logits."""
    output = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return logits_of(output)


def split_batch(batch: Any) -> tuple[Inputs, torch.Tensor]:
    """``(inputs, labels)`` of one batch: a ``(x, y)`` pair (extra items ignored) or a dict with a label key.

    Raises:
        TypeError: the batch has no labels where trakscope can find them.
    """
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            raise TypeError(f"a dict batch needs labels under one of {LABEL_KEYS}; it has {sorted(batch)}")
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS}, torch.as_tensor(batch[key])
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise TypeError(f"a batch must be an (inputs, labels) pair or a dict with labels, got {type(batch).__name__}")


def batch_size_of(inputs: Inputs) -> int:
    """Number of examples in ``inputs`` (the first dimension of its first tensor)."""
    if isinstance(inputs, dict):
        return next(iter(inputs.values())).shape[0]
    return inputs.shape[0]


def inputs_to(inputs: Inputs, device: torch.device | str) -> Inputs:
    """``inputs`` moved to ``device`` (every tensor of a dict)."""
    if isinstance(inputs, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs.to(device)
