"""One validation of settings: the command line, a run folder's config.json and the ``TRAK`` engine refuse the same
value with the same line, and ``run`` refuses a bad setting or a checkpoint that is not of ``--model`` before it
deletes, trains or writes anything."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trakscope import TRAK, SettingError
from trakscope.attribution.score import regularized_inverse
from trakscope.cli import build_parser, main
from trakscope.commands._config_args import config_from_args
from trakscope.commands.run import check_checkpoint_sources
from trakscope.config import DataConfig, RunConfig
from trakscope.models import TinyCNN, WeightsError
from trakscope.models.weights import check_state_file, load_fitting, read_state_file, wrapper_prefix
from trakscope.run_folder import FORMAT, RunFolder

from .conftest import TINY_RUN_ARGS

# (flags, the same setting as config.json sections, the one line every path gives)
BAD = {
    "ridge 0": (["--ridge", "0"], {"trak": {"ridge": 0}}, "--ridge: must be > 0, got 0"),
    "ridge nan": (["--ridge", "nan"], {"trak": {"ridge": float("nan")}}, "--ridge: must be a finite number, got nan"),
    "proj_dim -1": (["--proj-dim", "-1"], {"trak": {"proj_dim": -1}}, "--proj-dim: must be >= 0, got -1"),
    "proj_dim 0 dense": (["--proj-dim", "0", "--projector", "dense"], {"trak": {"proj_dim": 0, "projector": "dense"}},
                         "--proj-dim: 0 (the natural width of the Kronecker blocks) needs --projector kronecker, got "
                         "--projector dense"),
    "kron_k 0": (["--kron-k", "0"], {"trak": {"kron_k": 0}}, "--kron-k: must be > 0, got 0"),
    "proj seed -1": (["--proj-seed", "-1"], {"trak": {"seed": -1}}, "--proj-seed: must be >= 0, got -1"),
    "canaries 0.9": (["--canaries", "0.9"], {"data": {"canaries": 0.9}}, "--canaries: must be in [0, 0.5), got 0.9"),
    "image size 1": (["--image-size", "1"], {"data": {"image_size": 1}}, "--image-size: must be >= 8, got 1"),
    "noise + canaries": (["--noise", "0.3", "--canaries", "0.3"], {"data": {"noise": 0.3, "canaries": 0.3}},
                         "--noise + --canaries: must be < 0.5 together (the flipped labels must stay a minority), "
                         "got 0.3 + 0.3"),
}


# Tiny data and model, so that a check that fails to refuse costs seconds, not an MNIST training.
SMALL = ["--dataset", "digits", "--model", "tiny_cnn", "--max-train", "60", "--max-test", "30", "--no-progress",
         "--device", "cpu"]


@pytest.fixture
def no_training(monkeypatch) -> None:
    """Training or importing a model fails the test: every refusal here must come before it."""
    import trakscope.stages.run as stages

    def trained(*args, **kwargs):
        raise AssertionError("a model was trained or imported before the settings were checked")

    monkeypatch.setattr(stages, "train_ensemble", trained)
    monkeypatch.setattr(stages, "import_checkpoints", trained)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of the CLI, whether argparse or the command refused."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _tree(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (folders as "dir"): equal before and after means byte-identical.

    The folder's lock (``.trakscope.lock``, empty, made by whichever command opens the folder first) is left out.
    """
    return {str(p.relative_to(path)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.name != ".trakscope.lock"}


def _api(sections: dict, tmp_path: Path) -> None:
    """The Python API's way to give the same setting: ``TRAK(...)`` for TRAK's, a ``DataConfig`` for the data's."""
    if "trak" in sections:
        TRAK(torch.nn.Linear(4, 3), tmp_path / "store", **sections["trak"])
    else:
        DataConfig(**sections["data"])


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_value_is_refused_with_the_same_line_by_the_cli_config_json_and_the_api(case, tmp_path, capsys,
                                                                                      no_training):
    flags, sections, line = BAD[case]
    code, err = _cli(["run", "--out", str(tmp_path / "cli"), *SMALL, *flags], capsys)
    last = err.strip().splitlines()[-1]  # argparse prints its usage above
    assert code == 2 and last.startswith("trakscope run: error: ") and last.endswith(line)
    assert not (tmp_path / "cli").exists()

    folder = tmp_path / "from_json"
    folder.mkdir()
    raw = RunConfig.from_dict({"data": {"dataset": "digits", "max_train": 60, "max_test": 30},
                               "model": {"name": "tiny_cnn"}}).to_dict()
    for section, values in sections.items():
        raw[section].update(values)
    (folder / "config.json").write_text(json.dumps({"format": FORMAT, **raw}))
    before = _tree(folder)
    code, err = _cli(["run", "--out", str(folder)], capsys)  # no flags: resume with the folder's config.json
    assert code == 2 and err.strip().endswith(line) and "config.json" in err and len(err.strip().splitlines()) == 1
    assert _tree(folder) == before

    with pytest.raises(SettingError) as info:
        _api(sections, tmp_path)
    assert str(info.value) == line
    assert not (tmp_path / "store").exists()  # refused before the engine made its store


def test_the_inverse_checks_ridge_with_the_same_bound():
    xtx = np.eye(3)
    with pytest.raises(SettingError, match=r"^--ridge: must be > 0, got 0$"):
        regularized_inverse(xtx, 0.0)
    assert regularized_inverse(xtx, 1e-6)[1] == pytest.approx(1e-6)


def test_the_same_edge_values_are_accepted_everywhere(tmp_path):
    """proj_dim 0 (the Kronecker blocks' natural width) and a tiny ridge are valid on every path."""
    args = build_parser().parse_args(["run", "--out", "unused", "--proj-dim", "0", "--ridge", "1e-9",
                                      "--image-size", "8", "--canaries", "0.49"])
    cfg = config_from_args(args)
    assert (cfg.trak.proj_dim, cfg.trak.ridge, cfg.data.image_size, cfg.data.canaries) == (0, 1e-9, 8, 0.49)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    trak = TRAK(TinyCNN(3), tmp_path / "store", proj_dim=0, ridge=1e-9, progress=False)
    assert trak.proj_dim == 0


@pytest.fixture
def overwritable(tiny_run, tmp_path, no_training) -> Path:
    """A copy of the finished tiny run; training or importing into it fails the test."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


@pytest.mark.parametrize("case", ["ridge 0", "canaries 0.9", "image size 1", "noise + canaries", "proj_dim 0 dense"])
def test_overwrite_with_a_bad_setting_leaves_the_folder_byte_identical(overwritable, case, capsys):
    before = _tree(overwritable)
    code, err = _cli(["run", "--out", str(overwritable), "--overwrite", *TINY_RUN_ARGS, *BAD[case][0]], capsys)
    assert code == 2 and BAD[case][2] in err
    assert _tree(overwritable) == before


def _other_architecture(path: Path) -> None:
    save_file(TinyCNN(10, width=4).state_dict(), str(path))  # the same names, other shapes


def _another_network(path: Path) -> None:
    save_file(torch.nn.Sequential(torch.nn.Linear(3, 10)).state_dict(), str(path))  # other names


def _cut_short(path: Path) -> None:
    save_file(TinyCNN(10).state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:-100])


CHECKPOINTS = {
    "notes.txt": (lambda p: p.write_text("my notes\n"), "as a state dict"),
    "notes.safetensors": (lambda p: p.write_text("my notes\n"), "is not a readable safetensors file"),
    "cut.safetensors": (_cut_short, "is not a readable safetensors file"),
    "wide.safetensors": (_other_architecture, "does not fit --model tiny_cnn with 10 classes"),
    "linear.safetensors": (_another_network, "does not fit --model tiny_cnn with 10 classes"),
}


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_a_checkpoint_not_of_the_model_is_refused_before_the_folder_is_touched(overwritable, tmp_path, name, capsys):
    make, expected = CHECKPOINTS[name]
    checkpoint = tmp_path / name
    make(checkpoint)
    before = _tree(overwritable)
    code, err = _cli(["run", "--out", str(overwritable), "--overwrite", *TINY_RUN_ARGS, "--checkpoints",
                      str(checkpoint)], capsys)
    assert code == 2 and err.startswith("trakscope run: error: --checkpoints: ") and str(checkpoint) in err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert _tree(overwritable) == before


def test_a_checkpoint_of_the_model_passes_and_a_resume_reads_only_what_it_lacks(tiny_run, tmp_path):
    good = tiny_run / "models" / "model0_ckpt0.safetensors"
    check_state_file(TinyCNN(10), good, "--model tiny_cnn with 10 classes")  # its own architecture fits
    with pytest.raises(WeightsError, match="does not fit --model tiny_cnn with 3 classes"):
        check_state_file(TinyCNN(3), good, "--model tiny_cnn with 3 classes")  # the head's shape differs

    folder = tmp_path / "resumed"  # member 0 imported already; its source has since been moved away
    (folder / "models").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "models" / "model0_ckpt0.safetensors").write_bytes(good.read_bytes())
    cfg = RunConfig.from_dict({"model": {"name": "tiny_cnn", "checkpoints": [str(tmp_path / "moved.safetensors")]}})
    check_checkpoint_sources(cfg, TinyCNN(10), 10, RunFolder(folder), overwrite=False)
    with pytest.raises(WeightsError, match="moved.safetensors not found"):
        check_checkpoint_sources(cfg, TinyCNN(10), 10, RunFolder(folder), overwrite=True)


def test_a_checkpoint_saved_from_distributed_data_parallel_is_imported_without_its_prefix(tiny_run, tmp_path,
                                                                                          capsys):
    """DDP saves every name as ``module.<name>``: the prefix is stripped, a line says so, the weights are the same."""
    original = RunFolder(tiny_run)
    files = []
    for m, path in enumerate(original.checkpoint_paths()):
        state = {f"module.{k}": v for k, v in read_state_file(path).items()}
        files.append(tmp_path / (f"ddp{m}.safetensors" if m == 0 else f"ddp{m}.pt"))
        save_file(state, str(files[0])) if m == 0 else torch.save({"model": state}, files[m])
    out = tmp_path / "imported"
    assert main(["run", "--out", str(out), *SMALL, "--projector", "dense", "--proj-dim", "16",
                 "--checkpoints", *map(str, files)]) == 0
    printed = capsys.readouterr().out
    for f in files:
        assert (f"--checkpoints: {f}: every name starts with 'module.' (saved from a DistributedDataParallel or "
                "DataParallel wrapper): the prefix is stripped") in printed
    run = RunFolder(out)
    for m, path in enumerate(original.checkpoint_paths()):
        theirs, ours = read_state_file(path), read_state_file(run.checkpoint_path(m, 0))
        assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_checkpoint_that_does_not_load_is_named_with_its_keys(tmp_path, monkeypatch, capsys):
    """Past the up-front check (e.g. the Python path), the load error names the keys instead of stopping at
    torch's first line "Error(s) in loading state_dict for TinyCNN:"."""
    import trakscope.commands.run as run_cmd

    monkeypatch.setattr(run_cmd, "check_checkpoint_sources", lambda *a, **k: None)
    bad = tmp_path / "linear.safetensors"
    save_file(torch.nn.Sequential(torch.nn.Linear(3, 10)).state_dict(), str(bad))
    code, err = _cli(["run", "--out", str(tmp_path / "run"), *SMALL, "--checkpoints", str(bad)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "does not fit --model tiny_cnn with 10 classes: missing key(s) ['" in err
    assert "unexpected key(s) ['0.bias', '0.weight'] (2)" in err


def test_a_wrapper_prefix_is_stripped_only_where_the_model_has_none():
    names = ["module.conv.weight", "module.fc.weight"]
    assert wrapper_prefix(names) == "module." and wrapper_prefix(["module._orig_mod.a"]) == "module._orig_mod."
    assert wrapper_prefix(names, own=["module.conv.weight"]) == ""  # the model's own child is called module
    assert wrapper_prefix(["module.a", "fc.b"]) == ""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    wrapped = {f"module.{k}": torch.ones_like(v) for k, v in model.state_dict().items()}
    load_fitting(model, wrapped, "ddp.pt")  # --weights-path reads it too
    assert all(torch.equal(v, torch.ones_like(v)) for v in model.state_dict().values())


@pytest.mark.parametrize("argv, line", [
    (["detect", "--run", "unused", "--folds", "1"], "argument --folds: must be >= 2, got 1"),
    (["removal", "--run", "unused", "--seeds", "0"], "argument --seeds: must be > 0, got 0"),
    (["removal", "--run", "unused", "--fractions", "0.1,1"], "argument --fractions: each must be in [0, 1), got 1"),
])
def test_detect_and_removal_numbers_are_checked_while_parsing(argv, line, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and line in capsys.readouterr().err
