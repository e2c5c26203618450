"""The registry: a model name's prefix -> the :class:`ModelFamily` that builds it, and the two entry points."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..config import ModelConfig, SettingError
from ..data.preprocess import LibraryPreprocess
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


def model_library_preprocess(cfg: ModelConfig) -> LibraryPreprocess | None:
    """The model library's own preprocessing for ``cfg`` (an ``hf:`` model's image processor; timm's or
    torchvision's eval transform where the weights come from elsewhere), or None: trakscope's resize."""
    family, spec = family_of(cfg.name)
    return family.library_preprocess(spec, cfg)


def model_label_map(cfg: ModelConfig) -> tuple[list[str], str] | None:
    """``(class names in the head's output order, where they come from)``: ``--class-map`` where given, else what
    the model records (an ``hf:`` model's ``id2label`` with real names); None where neither names classes.

    Raises:
        SettingError: the ``--class-map`` file is absent, empty, repeats a name or is not a list of names.
    """
    if cfg.class_map is not None:
        return read_class_map(cfg.class_map), f"--class-map {cfg.class_map}"
    family, spec = family_of(cfg.name)
    names = family.label_map(spec, cfg)
    return None if names is None else (names, f"{cfg.name} config.json id2label")


def read_class_map(path: str) -> list[str]:
    """Class names from a file: a JSON list of names, or one name per line (line k = output k; blank lines skipped).

    Raises:
        SettingError: one line naming the file and what is wrong.
    """
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingError("--class-map", f"cannot read {path} ({e.__class__.__name__}); give a file with one class "
                                          "name per line, or a JSON list") from None
    names: object = [line.strip() for line in text.splitlines() if line.strip()]
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise SettingError("--class-map", f"{path} is not a JSON list ({e})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise SettingError("--class-map", f"{path} must hold class names: a JSON list of strings or one per line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SettingError("--class-map", f"{path} repeats class name(s) {repeated}")
    return list(names)
