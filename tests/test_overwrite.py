"""`--overwrite` removes only the files the integrity record says trakscope wrote, and names every file it keeps."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from trakscope.cli import main
from trakscope.manifest import Manifest
from trakscope.run_folder import RunError, RunFolder

USER_FILES = ["features/ckpt0/mynotes.txt", "scores/custom.npy", "export/keep_mine_v2.csv",
              "inspect/test_myfigure.png", "lds/my_per_target.csv", "models/my_finetuned.safetensors",
              "data/my_labels.csv", "notes.txt"]


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> RunFolder:
    run = RunFolder(shutil.copytree(tiny_run, tmp_path / "run"))
    for name in USER_FILES:
        (run.path / name).parent.mkdir(parents=True, exist_ok=True)
        (run.path / name).write_text(f"mine: {name}\n")
    return run


def other_ridge(run: RunFolder):
    cfg = run.saved_config()
    return dataclasses.replace(cfg, trak=dataclasses.replace(cfg.trak, ridge=2.0))


def test_overwrite_keeps_and_names_every_user_file(run_copy):
    written = set(Manifest(run_copy.manifest_path).files())
    notes = run_copy.initialize(other_ridge(run_copy), overwrite=True)
    for name in USER_FILES:
        assert (run_copy.path / name).read_text() == f"mine: {name}\n", name
    kept = [n for n in notes if n.startswith("--overwrite kept")]
    assert kept and all(name in kept[0] for name in USER_FILES if name != "notes.txt")
    assert not any((run_copy.path / name).exists() for name in written if name != "config.json")
    assert sorted(Manifest(run_copy.manifest_path).files()) == ["config.json"]
    assert run_copy.config.trak.ridge == 2.0


def test_overwrite_removes_what_trakscope_began_writing(run_copy):
    partial = run_copy.features_dir / "ckpt2" / "train.npy"  # as if a featurize was killed while filling it
    partial.parent.mkdir()
    partial.write_bytes(b"\x93NUMPY partial")
    RunFolder(run_copy.path).integrity.expect(partial)
    temp = run_copy.features_dir / "ckpt0" / ".xtx.npy.abcd1234.tmp.npy"  # a temporary file left by kill -9
    temp.write_bytes(b"x")
    run_copy.initialize(other_ridge(run_copy), overwrite=True)
    assert not partial.exists() and not temp.exists()
    assert (run_copy.path / "features/ckpt0/mynotes.txt").exists()


@pytest.mark.parametrize("record", ["missing", "damaged"])
def test_overwrite_without_a_readable_record_deletes_nothing_and_lists_what_it_would_have(run_copy, capsys, record):
    for path in (run_copy.manifest_path, run_copy.manifest_copy_path):
        path.unlink() if record == "missing" else path.write_text("{")
    before = sorted(p for p in run_copy.path.rglob("*") if p.is_file())
    argv = ["run", "--out", str(run_copy.path), "--overwrite", "--dataset", "digits", "--model", "tiny_cnn",
            "--max-train", "200", "--max-test", "60", "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "refusing to --overwrite" in err and "scores/test.npy" in err, err
    assert "`trakscope run --out" in err
    assert sorted(p for p in run_copy.path.rglob("*") if p.is_file()) == before
    with pytest.raises(RunError, match="refusing to --overwrite"):
        run_copy.initialize(other_ridge(run_copy), overwrite=True)
