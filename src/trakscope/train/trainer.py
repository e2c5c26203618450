"""Training one model, on any subset of the training split, deterministically under a seed.

Removal experiments, LDS and cross-validation all retrain through :func:`train_model` with a ``keep``
mask over the training split (airbench's idea: removal is a mask over the loader's indices). The seed
alone fixes the initial weights and the data order, so the same seed means the same initialisation
whatever is kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..data import Dataset, ImageSource, batch_slices, iter_batches
from ..models import build_model
from ..models.calling import call_model
from ..precision import autocast, memory_format, resolve_precision, to_memory_format
from ..progress import progress_bar


def checkpoint_epochs(epochs: int, per_model: int) -> list[int]:
    """Epochs (1-based) after which a checkpoint is kept: evenly spaced, the last epoch always included."""
    if per_model < 1 or per_model > epochs:
        raise ValueError(f"checkpoints per model must be in [1, epochs={epochs}], got {per_model}")
    return sorted({math.ceil(epochs * (c + 1) / per_model) for c in range(per_model)})


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels (zero padding), like CIFAR's random crop. ``[b,3,S,S]``.

    One gather for the whole batch (a per-image loop cost more than a small network's training step).
    """
    b, c, h, w = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    rows = (shifts[:, 0, None] + torch.arange(h))[:, None, :, None]  # [b, 1, h, 1]
    cols = (shifts[:, 1, None] + torch.arange(w))[:, None, None, :]  # [b, 1, 1, w]
    batch = torch.arange(b)[:, None, None, None]
    channel = torch.arange(c)[None, :, None, None]
    return padded[batch, channel, rows, cols]


class MarginRecorder:
    """Area under the margin (AUM, Pleiss et al. 2020), recorded during training at no extra cost.

    Every time a training example passes through the network (training mode, augmented as trained), its margin
    ``logit[given label] - max(other logits)`` is added; :meth:`aum` is the mean over the epochs it was seen.
    A flipped label keeps a low (negative) margin for as long as the network has not memorised it.

    Every epoch counts, the learning-rate tail included. Pleiss et al. stop at the first decay of a step schedule;
    under trakscope's one-cycle schedule that is the end of the warm-up, and every shorter window detected planted
    noise worse on validation (``benchmarks/aum_window.py``, BENCHMARKS.md "AUM: which epochs to average").
    """

    def __init__(self, n_train: int):
        self.total = np.zeros(n_train, dtype=np.float64)
        self.count = np.zeros(n_train, dtype=np.int64)

    def update(self, indices: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add the margins of one batch: ``indices`` int ``[b]``, ``logits`` ``[b, C]``, ``labels`` int ``[b]``."""
        z = logits.detach().float().cpu()
        y = labels.detach().cpu()
        given = z.gather(1, y[:, None])[:, 0]
        other = z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
        np.add.at(self.total, np.asarray(indices), (given - other).double().numpy())
        np.add.at(self.count, np.asarray(indices), 1)

    def aum(self) -> np.ndarray:
        """float64 ``[n_train]`` mean margin; NaN for examples never trained on. **Low = suspicious.**"""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)


def _lr_at(step: int, total: int, peak: float) -> float:
    """One-cycle schedule: linear warm-up over the first 20% of steps, then linear decay to zero."""
    warm = max(1, total // 5)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset: Dataset,
    seed: int,
    keep: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    margins: MarginRecorder | None = None,
    desc: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Train one model on ``dataset.train`` restricted to ``keep``.

    Args:
        keep: sorted int indices into the training split (None = all of it).
        seed: fixes the initial weights, the data order and the augmentation.
        margins: records each example's training-time margin every epoch (AUM), if given.

    Returns:
        CPU state dicts after each checkpoint epoch (:func:`checkpoint_epochs`); the last is the final model.
    """
    train = dataset.train
    keep = np.arange(len(train)) if keep is None else np.asarray(keep, dtype=np.int64)
    if len(keep) == 0:
        raise ValueError("cannot train on an empty set of examples")
    precision, fmt = resolve_precision(train_cfg.precision, device), memory_format(train_cfg.channels_last)
    torch.manual_seed(seed)
    model = build_model(model_cfg, len(dataset.classes), classes=dataset.classes).to(device, memory_format=fmt)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(train.labels)
    opt = torch.optim.SGD(model.parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum, nesterov=True,
                          weight_decay=train_cfg.weight_decay)
    # A short last batch joins the one before (batch_slices): a batch of 1 or 2 examples with BatchNorm on 1 x 1
    # features (a 16 px image deep in a ResNet) wrecked whole retrains; every example is still seen once per epoch.
    steps_per_epoch = len(batch_slices(len(keep), train_cfg.batch_size, merge_short=True))
    total, step = train_cfg.epochs * steps_per_epoch, 0
    keep_at = set(checkpoint_epochs(train_cfg.epochs, train_cfg.kept_checkpoints))
    checkpoints = []
    bar = progress_bar(range(1, train_cfg.epochs + 1), desc=desc or f"train seed {seed}", disable=not progress,
                       leave=False)
    for epoch in bar:
        model.train()
        order = keep[torch.randperm(len(keep), generator=gen).numpy()]
        batches = iter_batches(train.images, order, train_cfg.batch_size, train_cfg.num_workers, merge_short=True)
        step, loss, train_acc = _train_epoch(model, opt, batches, labels, _Steps(step, total, train_cfg.lr),
                                             train_cfg.augment, gen, device, fmt, precision, margins)
        bar.set_postfix(loss=f"{loss:.3f}", train_acc=f"{train_acc:.3f}")
        if epoch in keep_at:
            checkpoints.append({k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
                                for k, v in model.state_dict().items()})
    return checkpoints


class _Steps(NamedTuple):
    """Where the learning-rate schedule stands: ``done`` optimiser steps of ``total``, peak rate ``lr``."""

    done: int
    total: int
    lr: float


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, batches: Iterable[tuple[np.ndarray, torch.Tensor]],
                 labels: torch.Tensor, steps: _Steps, augment: bool, gen: torch.Generator, device: torch.device | str,
                 fmt: torch.memory_format, precision: str, margins: MarginRecorder | None) -> tuple[int, float, float]:
    """One epoch of SGD over ``batches`` (``(indices, images)`` pairs); returns the steps done so far in the
    schedule, the last batch's loss and the epoch's training accuracy."""
    step, correct, seen = steps.done, 0, 0
    for idx, x in batches:
        if augment:
            x = random_crop(x, 2, gen)
        x, y = to_memory_format(x.to(device), fmt), labels[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps.total, steps.lr)
        with autocast(precision, device):  # bf16: the forward pass only; the loss and the weights stay fp32
            logits = call_model(model, x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if margins is not None:
            margins.update(idx, logits, y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
    return step, loss.item(), correct / seen


def load_trained(model_cfg: ModelConfig, num_classes: int, state_dict: dict[str, torch.Tensor],
                 device: torch.device | str = "cpu") -> nn.Module:
    """A network with ``state_dict`` loaded (strictly), in eval mode, on ``device``.

    The architecture is rebuilt without reading pretrained weights or touching the network (an ``hf:`` model
    from its configuration only), since ``state_dict`` overwrites every weight.
    """
    model = build_model(architecture_only(model_cfg), num_classes)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def train_final_model(model_cfg: ModelConfig, train_cfg: TrainConfig, dataset: Dataset, seed: int,
                      keep: np.ndarray | None = None, device: torch.device | str = "cpu",
                      progress: bool = True, desc: str | None = None) -> nn.Module:
    """:func:`train_model`, then its final checkpoint as a network in eval mode (for retrain experiments)."""
    states = train_model(model_cfg, train_cfg, dataset, seed=seed, keep=keep, device=device, progress=progress,
                         desc=desc)
    return load_trained(model_cfg, len(dataset.classes), states[-1], device=device)


def architecture_only(cfg: ModelConfig) -> ModelConfig:
    """The same architecture without reading pretrained weights (they are overwritten anyway) or downloading."""
    return dataclasses.replace(cfg, weights="random", weights_path=None, download=False)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: ImageSource,
    indices: np.ndarray | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> np.ndarray:
    """float32 ``[n, C]`` logits of ``model`` (in eval mode) on ``images[indices]`` (default: all)."""
    model.eval()
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    batches = iter_batches(images, indices, batch_size, num_workers)
    out = [call_model(model, x.to(device)).float().cpu() for _, x in batches]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
