"""What every model family provides: a network for ``C`` classes, the preprocessing its weights expect, and the
class order of its head where the model records one.

A family is one source of architectures (trakscope's built-ins, Hugging Face, timm, torchvision). Adding one
is adding a :class:`ModelFamily` subclass and an entry in ``trakscope.models.FAMILIES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from ..data.preprocess import LibraryPreprocess
from .weights import WeightsError, load_fitting, read_state_file

WEIGHTS = ("random", "imagenet", "pretrained")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model.

    Attributes:
        size: side of the square input the model's weights were made for; None = no preference.
        mean: per-channel RGB mean subtracted from pixels scaled to ``[0, 1]``.
        std: per-channel RGB standard deviation the centred pixels are divided by.
    """

    size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


IMAGENET = Preprocessing(size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def wants_pretrained(cfg: ModelConfig) -> bool:
    """True when ``cfg`` asks for the model's own pretrained weights (``imagenet`` or ``pretrained``)."""
    return cfg.weights != "random"


def weights_from_elsewhere(cfg: ModelConfig) -> bool:
    """True when the weights attributed were not trained from scratch on trakscope's inputs: pretrained weights,
    ``--weights-path`` or imported ``--checkpoints`` (so the model's own preprocessing is what they expect)."""
    return wants_pretrained(cfg) or cfg.weights_path is not None or bool(cfg.checkpoints)


class ModelFamily:
    """One source of architectures, named ``<prefix>:<spec>`` on the command line (built-ins: ``<spec>``).

    Subclasses implement :meth:`network`, and :meth:`preprocessing` where the weights expect more than
    ImageNet statistics.
    """

    def network(self, spec: str, cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None) -> nn.Module:
        """A fresh network with a ``num_classes`` head, pretrained where ``cfg`` says so (no seeding here).

        Raises:
            WeightsError: pretrained weights were asked for but are not on this machine (and not
                ``cfg.download``); the message says where to put them.
        """
        raise NotImplementedError

    def preprocessing(self, spec: str, cfg: ModelConfig) -> Preprocessing:
        """Input size and normalisation the model expects (default: ImageNet statistics, no size)."""
        return IMAGENET

    def library_preprocess(self, spec: str, cfg: ModelConfig) -> LibraryPreprocess | None:
        """The model library's own preprocessing (resize, crop, normalisation), or None: trakscope's resize with
        :meth:`preprocessing`'s statistics (the default)."""
        return None

    def label_map(self, spec: str, cfg: ModelConfig) -> list[str] | None:
        """Class names in the order of the head's outputs where the model itself records them (default: None)."""
        return None

    def reads_weights_path(self, spec: str, cfg: ModelConfig) -> bool:
        """True where :meth:`network` itself reads ``cfg.weights_path`` (it then means something else)."""
        return False

    def build(self, spec: str, cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None = None) -> nn.Module:
        """:meth:`network`, then ``cfg.weights_path`` loaded into it (instead of any pretrained weights)."""
        if cfg.weights_path is None or self.reads_weights_path(spec, cfg):
            return self.network(spec, cfg, num_classes, classes)
        model = self.network(spec, dataclasses.replace(cfg, weights="random"), num_classes, classes)
        load_fitting(model, read_state_file(cfg.weights_path), source=cfg.weights_path)
        return model


__all__ = ["IMAGENET", "WEIGHTS", "ModelFamily", "Preprocessing", "WeightsError", "wants_pretrained",
           "weights_from_elsewhere"]
