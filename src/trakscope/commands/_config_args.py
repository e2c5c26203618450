"""Command-line flags generated from the configuration dataclasses (their help text is the fields' own)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrakConfig

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "trak": TrakConfig}
# Fields whose plain name would be ambiguous or unidiomatic on the command line.
FLAG_NAMES = {
    ("model", "name"): "--model",
    ("data", "seed"): "--data-seed",
    ("train", "seed"): "--train-seed",
    ("trak", "seed"): "--proj-seed",
    ("trak", "batch_size"): "--trak-batch-size",
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
            elif kind is tuple:
                group.add_argument(_flag(section, f.name), default=f.default, metavar="A,B,...",
                                   type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()), **kw)
            else:
                group.add_argument(_flag(section, f.name), type=kind, default=f.default, metavar=f.name.upper(), **kw)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe."""
    parts = {}
    for section, cls in SECTIONS.items():
        parts[section] = cls(**{f.name: getattr(args, _dest(section, f.name)) for f in dataclasses.fields(cls)})
    return RunConfig(**parts)
