"""The data fingerprint hashes the images' content (cached by file), `config.json` is checked against its record and
rebuilt from it, and `run --data-root` re-points moved data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trakscope.cli import main
from trakscope.run_folder import RunError, RunFolder

SIZE = 16


def image_folder(root: Path) -> Path:
    """Two classes of 14 random 16x16 BMP images each: every file has the same size."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(14):
            pixels = rng.integers(0, 120, (SIZE, SIZE, 3), dtype=np.uint8) + 120 * c
            Image.fromarray(pixels).save(root / name / f"{name}{i:02d}.bmp")
    return root


def run_args(data: Path) -> list[str]:
    return ["--dataset", "imagefolder", "--data-root", str(data), "--image-size", str(SIZE), "--model", "tiny_cnn",
            "--epochs", "1", "--ensemble", "1", "--batch-size", "8", "--proj-dim", "16", "--projector", "dense",
            "--checkpoints-per-model", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """``(run folder, data folder)`` of a finished tiny image-folder run. Do not modify them."""
    base = tmp_path_factory.mktemp("fingerprint")
    data = image_folder(base / "data")
    out = base / "run"
    assert main(["run", "--out", str(out), *run_args(data)]) == 0
    return out, data


@pytest.fixture()
def copies(folder_run, tmp_path) -> tuple[RunFolder, Path]:
    """Copies of the run folder and of its data (the run's config pointed at the copy) that a test may change."""
    run, data = folder_run
    new_data = shutil.copytree(data, tmp_path / "data")
    new_run = RunFolder(shutil.copytree(run, tmp_path / "run"), data_root=new_data)
    return new_run, new_data


def test_two_same_size_images_swapped_between_classes_are_caught_and_named(copies):
    run, data = copies
    train = run.data.table("train")["source_id"]
    a = next(s for s in train if s.startswith("cat/"))
    b = next(s for s in train if s.startswith("dog/"))
    assert (data / a).stat().st_size == (data / b).stat().st_size
    (data / a).rename(data / "swap.tmp")
    (data / b).rename(data / a)
    (data / "swap.tmp").rename(data / b)
    with pytest.raises(RunError, match=r"the training split of imagefolder .* changed since `trakscope run` \(the "
                                       r"content of image files changed") as e:
        RunFolder(run.path, data_root=data).data.dataset()
    assert str(data / a) in str(e.value) and str(data / b) in str(e.value), str(e.value)


def test_an_unchanged_dataset_is_not_hashed_again(folder_run, monkeypatch):
    import trakscope.run_folder.dataset as module

    run, data = folder_run
    hashed = []
    monkeypatch.setattr(module, "sha256", lambda p: hashed.append(p) or "x")
    RunFolder(run).data.dataset()
    assert hashed == []  # every file's digest came from data/digests.json (same size, inode, mtime, ctime)
    assert len(json.loads((run / "data" / "digests.json").read_text())["files"]) == 28


def edit_ridge(path: Path) -> bytes:
    text = path.read_text()
    original = text.encode()
    edited = text.replace('"ridge": 1.0', '"ridge": 3.0')
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    return original


def test_a_hand_edited_config_is_noticed_and_rebuilt_from_the_record(copies, capsys):
    run, data = copies
    original = edit_ridge(run.config_path)
    with pytest.raises(RunError, match=r"config.json is damaged \(its contents differ .*rerun `trakscope run --out"):
        _ = RunFolder(run.path).config
    assert main(["run", "--out", str(run.path), "--data-root", str(data), "--no-progress", "--device", "cpu"]) == 0
    assert "config.json was damaged" in capsys.readouterr().out
    assert run.config_path.read_bytes() == original
    assert RunFolder(run.path).config.trak.ridge == 1.0


def test_a_truncated_config_is_rebuilt_without_overwrite(copies):
    run, data = copies
    original = run.config_path.read_bytes()
    run.config_path.write_bytes(original[:40])
    assert main(["run", "--out", str(run.path), *run_args(data)]) == 0
    assert run.config_path.read_bytes() == original


def test_run_re_points_moved_data_like_detect(copies, capsys):
    run, data = copies
    moved = data.rename(data.with_name("moved"))
    saved = run.config_path.read_bytes()
    run.scores_path("test").unlink()  # something for the resumed run to do, from the moved data
    assert main(["run", "--out", str(run.path), "--data-root", str(moved), "--no-progress", "--device", "cpu"]) == 0
    assert f"reading the data from {moved}" in capsys.readouterr().out
    assert run.config_path.read_bytes() == saved  # the saved settings stay; --data-root re-points, as in detect
    assert run.scores_path("test").exists()
