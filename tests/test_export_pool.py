"""``export`` covers the whole training pool: the kept and removed training examples and the validation split carved
from the same pool, so that retraining on the keep-list loses only what was removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from trakscope.cli import main
from trakscope.io import read_csv
from trakscope.run_folder import RunFolder

RUN = ["--dataset", "imagefolder", "--model", "tiny_cnn", "--image-size", "16", "--ensemble", "1", "--epochs", "1",
       "--batch-size", "16", "--proj-dim", "16", "--projector", "dense", "--checkpoints-per-model", "1",
       "--noise", "0.1", "--no-progress", "--device", "cpu"]


def _image_folder(root: Path, n_train: int = 12, n_val: int = 2) -> set[str]:
    """Three classes of noisy colour images in ``train/``, ``val/`` and ``test/``; the ``train/`` files' ids."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("blue", "green", "red")):
        for split, n in (("train", n_train), ("val", n_val), ("test", 3)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (16, 16, 3)) + np.eye(3, dtype=np.int64)[k] * 160
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return {p.relative_to(root).as_posix() for p in (root / "train").rglob("*.png")}


def _export(run_dir: Path, capsys) -> tuple[list[dict], list[dict], str]:
    assert main(["detect", "--run", str(run_dir), "--no-cleanlab", "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run_dir), "--strategy", "negative", "--fraction", "0.2"]) == 0
    keep, removed = (read_csv(p) for p in RunFolder(run_dir).export_paths("negative_0.2"))
    return keep, removed, capsys.readouterr().out


def test_keep_and_removed_lists_cover_the_training_pool_with_the_validation_carve_out(tmp_path, capsys):
    files = _image_folder(tmp_path / "data")
    pool = files | {p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data" / "val").rglob("*.png")}
    run_dir = tmp_path / "run"
    assert main(["run", "--out", str(run_dir), "--data-root", str(tmp_path / "data"), "--val-fraction", "0.25",
                 *RUN]) == 0
    keep, removed, out = _export(run_dir, capsys)
    ids = [r["source_id"] for r in keep + removed]
    assert len(ids) == len(set(ids)) and set(ids) == pool  # val/ is merged into the pool, then carved by seed
    val = read_csv(RunFolder(run_dir).table_path("val"))
    assert sorted((r["index"], r["source_id"]) for r in keep if r["split"] == "val") == \
        sorted((r["index"], r["source_id"]) for r in val)
    assert removed and {r["split"] for r in removed} == {"train"}  # a train-split strategy never removes val
    assert f"and the {len(val)} validation examples carved from the same pool (split=val)" in out


def test_with_val_fraction_zero_the_data_s_own_val_folder_is_the_validation_split(tmp_path, capsys):
    files = _image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert main(["run", "--out", str(run_dir), "--data-root", str(tmp_path / "data"), "--val-fraction", "0",
                 *RUN]) == 0
    run = RunFolder(run_dir)
    assert {r["source_id"] for r in read_csv(run.table_path("val"))} == \
        {f"val/{c}/{i}.png" for c in ("blue", "green", "red") for i in range(2)}
    keep, removed, out = _export(run_dir, capsys)
    ids = [r["source_id"] for r in keep + removed]
    assert len(ids) == len(set(ids)) and set(ids) == files  # the pool is train/ alone: nothing carved, nothing lost
    assert {r["split"] for r in keep + removed} == {"train"} and "validation examples" not in out
