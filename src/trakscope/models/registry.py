"""The registry: a model name's prefix -> the :class:`ModelFamily` that builds it, and the two entry points."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..config import ModelConfig
from .base import WEIGHTS, ModelFamily, Preprocessing
from .builtin import MODELS, BuiltinModels
from .hf import HFModels
from .timm_models import TimmModels
from .torchvision_models import TorchvisionModels

BUILTIN = BuiltinModels()
FAMILIES: dict[str, ModelFamily] = {"hf": HFModels(), "timm": TimmModels(), "torchvision": TorchvisionModels()}


def family_of(name: str) -> tuple[ModelFamily, str]:
    """``(family, spec)`` for a model name: ``timm:resnet18`` -> ``(TimmModels, "resnet18")``.

    Raises:
        ValueError: an unknown prefix or an empty spec.
    """
    prefix, sep, spec = name.partition(":")
    if not sep:
        return BUILTIN, name
    if prefix not in FAMILIES or not spec:
        raise ValueError(f"unknown model {name!r}; use {', '.join(MODELS)}, or "
                         f"{', '.join(p + ':<name>' for p in FAMILIES)}")
    return FAMILIES[prefix], spec


def build_model(cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None = None) -> nn.Module:
    """A fresh network with a ``num_classes`` head, initial weights as ``cfg`` says (no seeding here).

    Args:
        cfg: the model's name, weights, weights file and whether downloading is allowed.
        num_classes: outputs of the head.
        classes: class names (Hugging Face models record them as ``id2label``).

    Raises:
        ValueError: an unknown model or weights setting.
        WeightsError: pretrained weights are absent; the message says where to put them.
    """
    if cfg.weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {cfg.weights!r}")
    family, spec = family_of(cfg.name)
    return family.build(spec, cfg, num_classes, classes)


def model_preprocessing(cfg: ModelConfig) -> Preprocessing:
    """Input size and normalisation the model named by ``cfg`` expects.

    ImageNet statistics (no size) for the built-ins and timm/torchvision models unless their pretrained
    configuration says otherwise; an ``hf:`` model's from its ``preprocessor_config.json``.
    """
    family, spec = family_of(cfg.name)
    return family.preprocessing(spec, cfg)
