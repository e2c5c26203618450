"""Model-dependent defaults of a run configuration, filled once before ``config.json`` is written: the model's own
preprocessing, its input size and statistics, and the class order of its head."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import DEFAULT_IMAGE_SIZE, DataConfig, ModelConfig, RunConfig, SettingError
from ..data import available_classes
from .registry import model_label_map, model_library_preprocess, model_preprocessing


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the model's own preprocessing, ``data.image_size``, ``mean``, ``std`` and class order filled.

    Where ``image_size``, ``mean`` and ``std`` are all left to the model, its library's own preprocessing is
    recorded in ``data.preprocessing`` (:func:`~trakscope.models.registry.model_library_preprocess`) with its size
    and statistics; otherwise the missing fields come from :func:`~trakscope.models.model_preprocessing` (ImageNet
    statistics and :data:`~trakscope.config.DEFAULT_IMAGE_SIZE` for most) and images get trakscope's resize. A
    label map (:func:`~trakscope.models.registry.model_label_map`) fills ``data.classes`` in the head's order.
    Idempotent. Mean and std given as strings (the CLI) become floats.

    Raises:
        SettingError: mean or std is not 3 numbers, or a std is not positive (``image_size`` is checked by
            :class:`~trakscope.config.DataConfig` itself); the model's label map does not match the data's
            classes or ``--classes`` (naming both orders).
        WeightsError: an ``hf:`` model's processor configuration is not on this machine.
    """
    data = cfg.data
    if data.image_size is None and data.mean is None and data.std is None and data.preprocessing is None:
        own = model_library_preprocess(cfg.model)
        if own is not None:
            data = dataclasses.replace(data, preprocessing=own.record(), image_size=own.size, mean=own.mean,
                                       std=own.std)
    if data.image_size is None or data.mean is None or data.std is None:
        pre = model_preprocessing(cfg.model)
        data = dataclasses.replace(
            data,
            image_size=data.image_size or pre.size or DEFAULT_IMAGE_SIZE,
            mean=pre.mean if data.mean is None else data.mean,
            std=pre.std if data.std is None else data.std,
        )
    return dataclasses.replace(cfg, data=_checked(_in_head_order(data, cfg.model)))


def _in_head_order(data: DataConfig, model: ModelConfig) -> DataConfig:
    """``data`` with ``classes`` in the order of the model's label map, where it has one that applies.

    A label map applies always when it comes from ``--class-map`` or the checkpoints are imported (their head is
    the one attributed); otherwise (a pretrained head that may be replaced) only where every name of it is a class
    of the data and ``--classes`` names no other set.

    Raises:
        SettingError: an applying label map differs from ``--classes`` or names classes the data lacks.
    """
    found = model_label_map(model)
    if found is None:
        return data
    names, source = found
    strict = model.class_map is not None or bool(model.checkpoints)
    if data.classes is not None:
        if list(data.classes) == names:
            return data
        if strict or set(data.classes) == set(names):
            raise SettingError("--classes", f"the model's head orders its classes {_shown(names)} ({source}), "
                                            f"--classes gives {_shown(data.classes)}; give --classes in the head's "
                                            "order, or leave it out")
        return data
    available = available_classes(data)
    missing = [n for n in names if n not in available]
    if not missing:
        return dataclasses.replace(data, classes=tuple(names))
    if not strict:
        return data
    where = f"{data.dataset} at {data.data_root}" if data.data_root else data.dataset
    raise SettingError("--model", f"the model's head names the classes {_shown(names)} ({source}), the data "
                                  f"({where}) has {_shown(sorted(available))}; {_shown(missing)} are not in the "
                                  "data. Point --data-root at the data the model was trained on, or give "
                                  "--class-map FILE with the data's class names in the head's order")


def _shown(names: Sequence[str], limit: int = 12) -> str:
    """``[a, b, c]`` for a message, the first ``limit`` names and a count beyond them."""
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


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
