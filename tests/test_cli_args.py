"""Configuration flags are checked while the command line is parsed: names against their choices, numbers
against their bounds, each error naming the flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from trakscope.cli import build_parser
from trakscope.commands import _config_args
from trakscope.commands._config_args import config_from_args
from trakscope.config import RunConfig


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--model", "resnt18", "did you mean 'resnet18'?"),
        ("--model", "tim:convnext_nano", "did you mean 'timm:convnext_nano'?"),
        ("--model", "timm:", "a name must follow 'timm:'"),
        ("--dataset", "imagefoldr", "did you mean 'imagefolder'?"),
        ("--dataset", "cifar", "invalid choice 'cifar' (choose from mnist, digits,"),
        ("--weights", "imagnet", "did you mean 'imagenet'?"),
        ("--projector", "kron", "did you mean 'kronecker'?"),
        ("--proj-type", "gaussian", "choose from rademacher, normal"),
    ],
)
def test_a_misspelt_name_is_refused_at_parse_time_with_a_suggestion(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--out", "unused", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and expected in err


@pytest.mark.parametrize("model", ["tiny_cnn", "hf:org/vit-tiny", "timm:convnext_nano", "torchvision:resnet50"])
def test_model_accepts_plain_names_and_zoo_prefixes(model):
    args = build_parser().parse_args(["run", "--out", "unused", "--model", model])
    assert config_from_args(args).model.name == model


def test_defaults_pass_the_checks():
    args = build_parser().parse_args(["run", "--out", "unused"])
    assert config_from_args(args) == RunConfig()


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--ensemble", "0", "must be > 0, got 0"),
        ("--epochs", "-1", "must be > 0"),
        ("--batch-size", "0", "must be > 0"),
        ("--trak-batch-size", "0", "must be > 0"),
        ("--proj-dim", "-1", "must be >= 0"),
        ("--kron-k", "0", "must be > 0"),
        ("--checkpoints-per-model", "0", "must be > 0"),
        ("--image-size", "7", "must be >= 8, got 7"),
        ("--num-classes", "1", "must be >= 2"),
        ("--max-train", "0", "must be > 0"),
        ("--max-test", "-5", "must be > 0"),
        ("--ridge", "0", "must be > 0, got 0"),
        ("--lr", "-1e-3", "must be >= 0"),
        ("--weight-decay", "-1", "must be >= 0"),
        ("--num-workers", "-1", "must be >= 0"),
        ("--noise", "0.5", "must be in [0, 0.5)"),
        ("--canaries", "0.9", "must be in [0, 0.5), got 0.9"),
        ("--masks", "-1", "must be >= 0"),
        ("--mask-p", "1", "must be in (0, 1)"),
        ("--val-fraction", "-0.1", "must be in [0, 1)"),
        ("--test-fraction", "1", "must be in [0, 1)"),
        ("--momentum", "0", "must be in (0, 1)"),
        ("--data-seed", "-1", "must be >= 0"),
        ("--lr", "nan", "must be a finite number"),
        ("--epochs", "many", "invalid int value: 'many'"),
    ],
)
def test_a_number_out_of_range_is_refused_naming_the_flag(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--out", "unused", f"{flag}={value}"])
    assert info.value.code == 2
    assert f"argument {flag}: {expected}" in capsys.readouterr().err


def test_choices_in_field_metadata_are_used():
    @dataclass(frozen=True)
    class Section:
        colour: str = dataclasses.field(default="red", metadata={"help": "h", "choices": ("red", "green")})

    parse = _config_args._value_parser("paint", dataclasses.fields(Section)[0], str)
    assert parse("green") == "green"
    with pytest.raises(Exception, match="did you mean 'green'"):
        parse("gren")




@pytest.mark.parametrize("command", ["run", "detect", "lds"])
def test_threads_must_be_positive(capsys, command):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--run" if command != "run" else "--out", "unused", "--threads", "0"])
    assert "argument --threads: must be > 0, got 0" in capsys.readouterr().err
