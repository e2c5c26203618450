"""Model-dependent defaults of a run configuration, filled once before ``config.json`` is written."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import DEFAULT_IMAGE_SIZE, DataConfig, RunConfig, SettingError
from .registry import model_preprocessing


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.image_size``, ``data.mean`` and ``data.std`` filled from the model where None.

    The model's preprocessing (:func:`~trakscope.models.model_preprocessing`) is read only when a field is
    missing: an ``hf:`` model gives its processor's size and statistics; the others ImageNet statistics and
    :data:`~trakscope.config.DEFAULT_IMAGE_SIZE`. Idempotent. Mean and std given as strings (the CLI) become
    floats.

    Raises:
        SettingError: mean or std is not 3 numbers, or a std is not positive (``image_size`` is checked by
            :class:`~trakscope.config.DataConfig` itself).
        WeightsError: an ``hf:`` model's processor configuration is not on this machine.
    """
    data = cfg.data
    if data.image_size is None or data.mean is None or data.std is None:
        pre = model_preprocessing(cfg.model)
        data = dataclasses.replace(
            data,
            image_size=data.image_size or pre.size or DEFAULT_IMAGE_SIZE,
            mean=pre.mean if data.mean is None else data.mean,
            std=pre.std if data.std is None else data.std,
        )
    return dataclasses.replace(cfg, data=_checked(data))


def _checked(data: DataConfig) -> DataConfig:
    mean, std = _three_floats(data.mean, "mean"), _three_floats(data.std, "std")
    if min(std) <= 0:
        raise SettingError("--std", f"must be > 0 each, got {','.join(f'{s:g}' for s in std)}")
    return dataclasses.replace(data, mean=mean, std=std)


def _three_floats(values: Sequence[float | str], name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except ValueError:
        raise SettingError(f"--{name}", f"must be 3 numbers (R,G,B), got {','.join(map(str, values))}") from None
    if len(out) != 3:
        raise SettingError(f"--{name}", f"must be 3 numbers (R,G,B), got {','.join(f'{v:g}' for v in out)}")
    return out
