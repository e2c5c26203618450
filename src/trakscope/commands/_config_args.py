"""Command-line flags generated from the configuration dataclasses (their help text is the fields' own).

Names and numbers are checked while the command line is parsed, so a typo or a zero batch size is an
argparse error naming the flag, before any data is prepared. A field's valid names come from its
metadata (``_opt(..., choices=(...), prefixes=(...))``) or else from :data:`CHOICES`; its bounds from its
``bound`` metadata, through :func:`trakscope.config.check_setting`: the one check that ``config.json`` and the
``TRAK`` engine make too. Rules joining fields (``--noise`` with ``--canaries``) are checked when
:func:`config_from_args` makes the sections.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from pathlib import Path

from ..config import SECTIONS, Bound, RunConfig, SettingError, check_number, check_setting, flag_name
from ..data import CANARY_KINDS, DATASETS, NOISE_KINDS
from ..models import MODELS, WEIGHTS

# Valid names of free-text fields whose config field carries no ``choices`` metadata: their lists live in the
# layers above the configuration (the data sources, the model families).
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "dataset"): DATASETS,
    ("data", "noise_kind"): NOISE_KINDS,
    ("data", "canary_kind"): CANARY_KINDS,
    ("model", "name"): MODELS,
    ("model", "weights"): WEIGHTS,
}
# Prefixes that pass any name through to another model zoo (``--model timm:convnext_nano``).
PREFIXES: dict[tuple[str, str], tuple[str, ...]] = {("model", "name"): ("hf:", "timm:", "torchvision:")}


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


def bounded(kind: type, bound: Bound) -> Callable[[str], typing.Any]:
    """An argparse ``type`` converting with ``kind`` and refusing values outside ``bound``, for a flag that is not
    a configuration field (``--threads``, ``--folds``); argparse names the flag."""

    def parse(text: str) -> typing.Any:
        value = kind(text)  # a ValueError becomes argparse's own "invalid int value: ..."
        try:
            return check_number("", value, bound, whole=kind is int)
        except SettingError as e:
            raise argparse.ArgumentTypeError(e.rule) from None

    parse.__name__ = kind.__name__  # argparse names the type in its conversion error
    return parse


def bounded_list(kind: type, bound: Bound) -> Callable[[str], tuple]:
    """An argparse ``type`` for comma-separated numbers (``0.05,0.1``), each converted with ``kind`` and within
    ``bound``."""

    def parse(text: str) -> tuple:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        try:
            return tuple(check_number("", v, bound, whole=kind is int) for v in values)
        except SettingError as e:
            raise argparse.ArgumentTypeError(f"each {e.rule}") from None

    return parse


def setting_parser(section: str, name: str, kind: type) -> Callable[[str], typing.Any]:
    """An argparse ``type`` converting with ``kind``, then :func:`~trakscope.config.check_setting`."""

    def parse(text: str) -> typing.Any:
        value = kind(text)
        try:
            return check_setting(section, name, value)
        except SettingError as e:
            raise argparse.ArgumentTypeError(e.rule) from None

    parse.__name__ = kind.__name__
    return parse


def _value_parser(section: str, f: dataclasses.Field, kind: type) -> Callable[[str], typing.Any]:
    key = (section, f.name)
    choices = f.metadata.get("choices", CHOICES.get(key))
    if choices is not None:
        return name_parser(tuple(choices), tuple(f.metadata.get("prefixes", PREFIXES.get(key, ()))))
    if "bound" in f.metadata:
        return setting_parser(section, f.name, kind)
    return kind


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per configuration field, grouped by section."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("hidden"):
                continue
            kind, kw = _base_type(hints[f.name]), {"help": f.metadata["help"], "dest": _dest(section, f.name)}
            if kind is bool:
                group.add_argument(flag_name(section, f.name), action=argparse.BooleanOptionalAction, default=f.default,
                                   **kw)
            elif kind is tuple and f.metadata.get("paths"):  # files: space-separated, stored absolute
                group.add_argument(flag_name(section, f.name), default=f.default, metavar="FILE", nargs="+",
                                   type=lambda s: str(Path(s).expanduser().resolve()), **kw)
            elif f.metadata.get("paths"):  # one file, stored absolute
                group.add_argument(flag_name(section, f.name), default=f.default, metavar="FILE",
                                   type=lambda s: str(Path(s).expanduser().resolve()), **kw)
            elif kind is tuple:
                group.add_argument(flag_name(section, f.name), default=f.default, metavar="A,B,...", type=_names, **kw)
            else:
                group.add_argument(flag_name(section, f.name), type=_value_parser(section, f, kind), default=f.default,
                                   metavar=f.name.upper(), **kw)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe.

    Raises:
        SettingError: the flags break a rule joining two fields (each field alone was checked while parsing).
    """
    parts = {}
    for section, cls in SECTIONS.items():
        values = {f.name: getattr(args, _dest(section, f.name)) for f in dataclasses.fields(cls)
                  if not f.metadata.get("hidden")}
        parts[section] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    return RunConfig(**parts)
