"""``timm:<name>``: any ``timm.create_model`` architecture with ``num_classes`` outputs.

Pretrained weights are read from the Hugging Face cache or torch's hub cache; only ``ModelConfig.download``
lets timm fetch them. Where the weights come from elsewhere (pretrained, ``--weights-path``, ``--checkpoints``),
images are prepared by timm itself: ``resolve_data_config`` of the model's pretrained configuration, then
``create_transform`` (eval).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, SettingError
from ..data.preprocess import LibraryPreprocess
from .base import IMAGENET, ModelFamily, Preprocessing, WeightsError, wants_pretrained, weights_from_elsewhere


class TimmModels(ModelFamily):
    """timm models; timm itself replaces the classifier of pretrained weights for ``num_classes``."""

    def network(self, spec: str, cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None) -> nn.Module:
        import timm  # lazy: timm is optional (the hf extra) and slow to import

        if not timm.is_model(spec):
            raise ValueError(f"unknown timm model {spec!r} (see timm.list_models())")
        if not wants_pretrained(cfg):
            return timm.create_model(spec, pretrained=False, num_classes=num_classes)
        overlay = None if cfg.download else {"file": str(local_weights_file(spec))}
        return timm.create_model(spec, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay)

    def preprocessing(self, spec: str, cfg: ModelConfig) -> Preprocessing:
        from timm.models import get_pretrained_cfg  # lazy: timm is optional (the hf extra)

        pretrained = get_pretrained_cfg(spec)
        if pretrained is None:
            return IMAGENET
        return Preprocessing(size=None, mean=tuple(pretrained.mean), std=tuple(pretrained.std))

    def library_preprocess(self, spec: str, cfg: ModelConfig) -> LibraryPreprocess | None:
        """timm's eval transform of the model's pretrained configuration, where the weights come from elsewhere.

        Raises:
            SettingError: the configuration's input is not square (trakscope feeds square images).
        """
        from timm.data import resolve_data_config  # lazy: timm is optional (the hf extra)
        from timm.models import get_pretrained_cfg

        pretrained = get_pretrained_cfg(spec)
        if pretrained is None or not weights_from_elsewhere(cfg):
            return None
        data = resolve_data_config({}, pretrained_cfg=pretrained.to_dict())
        _, height, width = data["input_size"]
        if height != width:
            raise SettingError("--image-size", f"timm:{spec} expects {height} x {width} inputs and trakscope feeds "
                                               "square ones; give --image-size N to use trakscope's own resize")
        settings = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}, sort_keys=True)
        return LibraryPreprocess("timm", settings, int(height), tuple(data["mean"]), tuple(data["std"]))


def local_weights_file(spec: str) -> Path:
    """The pretrained weights of ``spec`` already on this machine (Hugging Face cache, then torch's hub cache).

    Raises:
        WeightsError: neither cache has them; the message names both places and ``--download``.
    """
    from huggingface_hub import constants, hf_hub_download  # lazy: optional (the hf extra), only for weights
    from huggingface_hub.utils import LocalEntryNotFoundError  # also where older huggingface_hub versions have it
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(spec)
    if pretrained is None or not (pretrained.hf_hub_id or pretrained.url):
        raise WeightsError(f"timm:{spec} has no pretrained weights; use --weights random or --weights-path FILE")
    if pretrained.hf_hub_id:
        repo, _, revision = pretrained.hf_hub_id.partition("@")
        for name in (pretrained.hf_hub_filename or "model.safetensors", "pytorch_model.bin"):
            try:
                return Path(hf_hub_download(repo, name, revision=revision or None, local_files_only=True))
            except (LocalEntryNotFoundError, FileNotFoundError):
                continue
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(pretrained.url or "none").name
    if pretrained.url and hub_file.is_file():
        return hub_file
    raise WeightsError(
        f"timm:{spec}: pretrained weights are not on this machine (looked for {pretrained.hf_hub_id} in the "
        f"Hugging Face cache {constants.HF_HUB_CACHE}" + (f" and for {hub_file}" if pretrained.url else "")
        + "). Add --download to let timm fetch them, or pass --weights-path FILE, or use --weights random"
    )
