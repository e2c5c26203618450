"""``torchvision:<name>``: any builder in ``torchvision.models``, built for ``num_classes``.

The network is always built with ``weights=None, num_classes=C`` so that a pretrained run and
:func:`~trakscope.train.load_trained` give the same architecture; pretrained weights are then loaded from
torch's hub cache, the 1000-class head left freshly initialised. Only ``ModelConfig.download`` fetches them.
Where the weights come from elsewhere (pretrained, ``--weights-path``, ``--checkpoints``), images are prepared by
the ``DEFAULT`` weights' own ``transforms()``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..data.preprocess import LibraryPreprocess
from ..progress import on_terminal
from .base import IMAGENET, ModelFamily, Preprocessing, WeightsError, wants_pretrained, weights_from_elsewhere
from .weights import load_fitting


class TorchvisionModels(ModelFamily):
    """torchvision classification (and other) model builders, by the name ``torchvision.models`` lists."""

    def network(self, spec: str, cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None) -> nn.Module:
        from torchvision import models  # lazy: the model zoo is slow to import; only torchvision:<name> needs it

        try:
            builder = models.get_model_builder(spec)
        except ValueError:
            raise ValueError(f"unknown torchvision model {spec!r} (see torchvision.models.list_models())") from None
        model = builder(weights=None, num_classes=num_classes)
        if wants_pretrained(cfg):
            weights = default_weights(spec)
            if weights is None:
                raise WeightsError(f"torchvision:{spec} has no pretrained weights; use --weights random")
            load_fitting(model, pretrained_state(spec, weights, cfg.download), source=f"torchvision {weights}")
        return model

    def preprocessing(self, spec: str, cfg: ModelConfig) -> Preprocessing:
        weights = default_weights(spec)
        if weights is None:
            return IMAGENET
        transform = weights.transforms()
        mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
        if mean is None or std is None:
            return IMAGENET
        return Preprocessing(size=None, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))

    def library_preprocess(self, spec: str, cfg: ModelConfig) -> LibraryPreprocess | None:
        """The ``DEFAULT`` weights' ``transforms()`` (resize, centre crop, normalise), where the weights come from
        elsewhere; recorded by the weights' name, e.g. ``ResNet18_Weights.IMAGENET1K_V1``."""
        weights = default_weights(spec)
        if weights is None or not weights_from_elsewhere(cfg):
            return None
        transform = weights.transforms()
        crop = getattr(transform, "crop_size", None)
        if not crop or not hasattr(transform, "mean"):
            return None  # not the classification transform (a detection or video model's)
        settings = json.dumps({"weights": f"{type(weights).__name__}.{weights.name}"})
        mean, std = tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)
        return LibraryPreprocess("torchvision", settings, int(crop[0]), mean, std)  # type: ignore[arg-type]


def default_weights(spec: str) -> Any | None:
    """The builder's ``DEFAULT`` weights enum member, or None where it has no weights."""
    from torchvision import models  # lazy: the model zoo is slow to import; only torchvision:<name> needs it

    try:
        return models.get_model_weights(spec).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def pretrained_state(spec: str, weights: Any, download: bool) -> dict[str, torch.Tensor]:
    """The state dict of ``weights`` from torch's hub cache (fetched there only if ``download``).

    Raises:
        WeightsError: the file is not in the cache and ``download`` is false.
    """
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if download:
        return weights.get_state_dict(progress=on_terminal(), check_hash=True)  # no bar garbling a log
    raise WeightsError(
        f"torchvision:{spec}: pretrained weights {weights} not found at {path}. Copy {path.name} there, or add "
        "--download to let torchvision fetch it, or pass --weights-path FILE, or use --weights random"
    )
