"""Command-line flags generated from the configuration dataclasses (their help text is the fields' own).

Names and numbers are checked while the command line is parsed, so a typo or a zero batch size is an
argparse error naming the flag, before any data is prepared. A field's valid names come from its
metadata (``_opt(..., choices=(...), prefixes=(...))``) or else from :data:`CHOICES`; its bounds from
:data:`BOUNDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrakConfig
from ..data import CANARY_KINDS, DATASETS, NOISE_KINDS
from ..models import MODELS, WEIGHTS

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "trak": TrakConfig}  # config.SECTIONS
# Fields whose plain name would be ambiguous or unidiomatic on the command line.
FLAG_NAMES = {
    ("model", "name"): "--model",
    ("data", "seed"): "--data-seed",
    ("train", "seed"): "--train-seed",
    ("trak", "seed"): "--proj-seed",
    ("trak", "batch_size"): "--trak-batch-size",
    ("trak", "precision"): "--trak-precision",
}


# Valid names of free-text fields whose config field carries no ``choices`` metadata (yet).
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "dataset"): DATASETS,
    ("data", "noise_kind"): NOISE_KINDS,
    ("data", "canary_kind"): CANARY_KINDS,
    ("model", "name"): MODELS,
    ("model", "weights"): WEIGHTS,
    ("trak", "projector"): ("kronecker", "dense"),
    ("trak", "proj_type"): ("rademacher", "normal"),
}
# Prefixes that pass any name through to another model zoo (``--model timm:convnext_nano``).
PREFIXES: dict[tuple[str, str], tuple[str, ...]] = {("model", "name"): ("hf:", "timm:", "torchvision:")}

POSITIVE = (0, None, False)  # (lower bound, upper bound or None, lower bound allowed)
NON_NEGATIVE = (0, None, True)
FRACTION = (0, 1, True)  # [0, 1)
OPEN_FRACTION = (0, 1, False)  # (0, 1)
BOUNDS: dict[tuple[str, str], tuple[float, float | None, bool]] = {
    **{("data", n): POSITIVE for n in ("num_classes", "image_size", "max_train", "max_test")},
    **{("data", n): FRACTION for n in ("noise", "canaries", "val_fraction", "test_fraction")},
    **{("train", n): POSITIVE for n in ("ensemble", "epochs", "batch_size", "checkpoints_per_model")},
    **{("train", n): NON_NEGATIVE for n in ("lr", "weight_decay", "num_workers")},
    ("train", "momentum"): OPEN_FRACTION,  # Nesterov SGD refuses momentum 0
    **{("trak", n): POSITIVE for n in ("proj_dim", "kron_k", "batch_size")},
    ("trak", "ridge"): NON_NEGATIVE,
    **{(section, "seed"): NON_NEGATIVE for section in ("data", "train", "trak")},  # numpy refuses negative seeds
}


def _flag(section: str, name: str) -> str:
    return FLAG_NAMES.get((section, name), "--" + name.replace("_", "-"))


def _dest(section: str, name: str) -> str:
    return f"cfg__{section}__{name}"


def _base_type(hint: typing.Any) -> type:
    """``int | None`` -> int; ``tuple[str, ...] | None`` -> tuple."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _base_type(args[0])
    return typing.get_origin(hint) or hint


def name_parser(choices: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> Callable[[str], str]:
    """An argparse ``type`` accepting ``choices`` or ``<prefix><name>``, suggesting the closest on a typo."""

    def parse(text: str) -> str:
        prefix = next((p for p in prefixes if text.startswith(p)), None)
        if text in choices or (prefix is not None and len(text) > len(prefix)):
            return text
        options = ", ".join(choices) + "".join(f", {p}NAME" for p in prefixes)
        if prefix is not None:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r}: a name must follow {prefix!r}")
        candidates = list(choices) + [p + text.partition(":")[2] for p in prefixes if ":" in text]
        close = difflib.get_close_matches(text, candidates, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {options}){hint}")

    return parse


def bounded(kind: type, bounds: tuple[float, float | None, bool]) -> Callable[[str], typing.Any]:
    """An argparse ``type`` converting with ``kind`` and refusing values outside ``bounds`` (see BOUNDS)."""
    low, high, low_ok = bounds

    def parse(text: str) -> typing.Any:
        value = kind(text)  # a ValueError becomes argparse's own "invalid int value: ..."
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (value == low and not low_ok) or (high is not None and value >= high):
            if high is not None:
                rule = f"in {'[' if low_ok else '('}{low}, {high})"
            else:
                rule = f"{'>=' if low_ok else '>'} {low}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its conversion error
    return parse


def _value_parser(section: str, f: dataclasses.Field, kind: type) -> Callable[[str], typing.Any]:
    key = (section, f.name)
    choices = f.metadata.get("choices", CHOICES.get(key))
    if choices is not None:
        return name_parser(tuple(choices), tuple(f.metadata.get("prefixes", PREFIXES.get(key, ()))))
    if key in BOUNDS:
        return bounded(kind, BOUNDS[key])
    return kind


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per configuration field, grouped by section."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind, kw = _base_type(hints[f.name]), {"help": f.metadata["help"], "dest": _dest(section, f.name)}
            if kind is bool:
                group.add_argument(_flag(section, f.name), action=argparse.BooleanOptionalAction, default=f.default,
                                   **kw)
            elif kind is tuple and f.metadata.get("paths"):  # files: space-separated, stored absolute
                group.add_argument(_flag(section, f.name), default=f.default, metavar="FILE", nargs="+",
                                   type=lambda s: str(Path(s).expanduser().resolve()), **kw)
            elif kind is tuple:
                group.add_argument(_flag(section, f.name), default=f.default, metavar="A,B,...", type=_names, **kw)
            else:
                group.add_argument(_flag(section, f.name), type=_value_parser(section, f, kind), default=f.default,
                                   metavar=f.name.upper(), **kw)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe."""
    parts = {}
    for section, cls in SECTIONS.items():
        values = {f.name: getattr(args, _dest(section, f.name)) for f in dataclasses.fields(cls)}
        parts[section] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    return RunConfig(**parts)
