"""Model factory: trakscope's built-in networks and any classifier from Hugging Face, timm or torchvision.

A model is named ``<prefix>:<spec>`` (``hf:./my-vit``, ``timm:resnet18``, ``torchvision:mobilenet_v3_small``)
or by a built-in name (``resnet18``, ``efficientnet_lite0``, ``tiny_cnn``). :data:`FAMILIES` maps each prefix
to the :class:`ModelFamily` that builds it; :func:`build_model` and :func:`model_preprocessing` are the entry
points. Nothing downloads unless ``ModelConfig.download`` is set.
"""

from __future__ import annotations

from .base import IMAGENET, WEIGHTS, ModelFamily, Preprocessing, WeightsError
from .builtin import MODELS, RESNET18_FILE, RESNET18_SHA256_PREFIX, TinyCNN, resnet18_weights_file
from .registry import BUILTIN, FAMILIES, build_model, family_of, model_preprocessing
from .resolve import resolve_config

__all__ = [
    "BUILTIN",
    "FAMILIES",
    "IMAGENET",
    "MODELS",
    "RESNET18_FILE",
    "RESNET18_SHA256_PREFIX",
    "WEIGHTS",
    "ModelFamily",
    "Preprocessing",
    "TinyCNN",
    "WeightsError",
    "build_model",
    "family_of",
    "model_preprocessing",
    "resnet18_weights_file",
    "resolve_config",
]
