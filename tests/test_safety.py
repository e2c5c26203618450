"""The first hour on your own data: the run-folder lock, changed or moved data, and starts that fail cleanly."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trakscope.cli import main
from trakscope.run_folder import RunError, RunFolder
from trakscope.run_folder.results import Results
from trakscope.run_lock import hold

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = ["--model", "tiny_cnn", "--epochs", "1", "--ensemble", "1", "--batch-size", "32", "--proj-dim", "16",
        "--projector", "dense", "--no-progress", "--device", "cpu"]
HOLDER = """
import sys, time
from trakscope.run_folder import RunFolder
from trakscope.run_lock import hold
with hold(RunFolder(sys.argv[1]), "run"):
    print("held", flush=True)
    time.sleep(60)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC}


# --- the lock ---------------------------------------------------------------------------------------------
def test_second_writer_refused_while_another_process_holds_the_folder(tiny_run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tiny_run)], stdout=subprocess.PIPE, env=_env(),
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["detect", "--run", str(tiny_run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by trakscope run (pid {holder.pid}) since " in err
        assert len(err.strip().splitlines()) == 1
        assert main(["inspect", "--run", str(tiny_run), "--target", "0", "--png", "/dev/null"]) == 2
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the killed holder: nothing stale remains
    with hold(RunFolder(tiny_run), "detect"):
        pass


def test_readers_share_the_folder_but_keep_writers_out(tiny_run, tmp_path, capsys):
    with hold(RunFolder(tiny_run), "inspect", shared=True):
        assert main(["inspect", "--run", str(tiny_run), "--target", "0", "--png", str(tmp_path / "g.png")]) == 0
        assert main(["lds", "--run", str(tiny_run), "--models", "2"]) == 2
    assert "in use by another trakscope command that reads it" in capsys.readouterr().err


def test_ranks_of_one_torchrun_job_do_not_block_each_other(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    with hold(folder, "run"):
        monkeypatch.setenv("RANK", "1")
        with hold(folder, "run"):  # rank 1 trusts rank 0
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunError, match="in use by trakscope run"):
            with hold(folder, "run"):
                pass


def test_writer_removes_temp_files_of_a_killed_writer(tmp_path):
    orphan = tmp_path / "scores" / ".test.npy.abcd1234.tmp.npy"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half")
    with hold(RunFolder(tmp_path), "removal", shared=True):
        assert orphan.exists()  # a reader leaves them: a writer beside it is impossible, but not another reader
    with hold(RunFolder(tmp_path), "removal"):
        assert not orphan.exists()


def test_timings_not_writable_is_skipped_quietly(tmp_path, monkeypatch, capsys):
    """A refused write of timings.json (read-only mount, another user's folder) raises nothing and prints nothing;
    any other failure to write still raises."""
    run = RunFolder(tmp_path)
    run.results.record_timing("train", 2.0)
    before = run.timings_path.read_bytes()
    owner = sys.modules[Results.record_timing.__module__]  # the module whose write_json record_timing calls
    refused = []

    def refuse(path, obj):
        refused.append(Path(path))
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(owner, "write_json", refuse)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would not be quiet either
        run.results.record_timing("report", 1.0)
    assert refused == [run.timings_path]
    assert capsys.readouterr() == ("", "")
    assert run.timings_path.read_bytes() == before

    def disk_full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(owner, "write_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run.results.record_timing("report", 1.0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_no_op_commands_work_on_a_read_only_folder(tiny_run, tmp_path):
    ro = tmp_path / "ro"
    shutil.copytree(tiny_run, ro)
    for p in [ro, *ro.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        assert main(["inspect", "--run", str(ro), "--target", "0", "--png", str(tmp_path / "g.png")]) == 0
        args = json.loads((ro / "config.json").read_text())
        assert args["format"]
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


# --- changed and moved data -------------------------------------------------------------------------------
def _image_folder(root: Path, per_class: int, classes=("ant", "bee", "cat")) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A one-model run on a tiny image folder, started with a relative --data-root."""
    base = tmp_path_factory.mktemp("own")
    _image_folder(base / "imgs", 12)
    cwd = os.getcwd()
    os.chdir(base)
    try:
        assert main(["run", "--out", "run", "--dataset", "imagefolder", "--data-root", "imgs",
                     "--image-size", "16", "--noise", "0", *FAST]) == 0
    finally:
        os.chdir(cwd)
    return base


def test_data_root_is_stored_absolute(folder_run):
    cfg = json.loads((folder_run / "run" / "config.json").read_text())
    assert cfg["data"]["data_root"] == str((folder_run / "imgs").resolve())
    assert (folder_run / "run" / "data" / "fingerprint.json").is_file()


def test_folder_with_a_relative_root_still_resumes(folder_run, monkeypatch):
    config = folder_run / "run" / "config.json"
    saved = config.read_bytes()
    cfg = json.loads(saved)
    cfg["data"]["data_root"] = "imgs"  # as written before roots were stored absolute
    config.write_text(json.dumps(cfg))
    RunFolder(folder_run / "run").integrity.seal(config)  # as the older version recorded it
    relative = config.read_bytes()
    monkeypatch.chdir(folder_run)
    every_call = {folder_run / "run" / name  # run touches these: its lock, its timing, and the record of that timing
                  for name in (".trakscope.lock", "timings.json", "manifest.json", "manifest.copy.json")}
    stamps = {p: p.stat().st_mtime_ns for p in folder_run.glob("run/**/*") if p.is_file() and p not in every_call}
    try:
        assert main(["run", "--out", "run", "--dataset", "imagefolder", "--data-root", "imgs",
                     "--image-size", "16", "--noise", "0", *FAST]) == 0
        assert config.read_bytes() == relative  # the folder keeps its own (relative) root
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained, featurized or scored again
    finally:
        config.write_bytes(saved)
        RunFolder(folder_run / "run").integrity.seal(config)


def test_added_images_are_noticed(folder_run, tmp_path, capsys):
    imgs, run = tmp_path / "imgs", tmp_path / "run"
    shutil.copytree(folder_run / "imgs", imgs)
    shutil.copytree(folder_run / "run", run)
    _image_folder(imgs, 12)
    for i in range(12, 22):  # 10 more bees
        shutil.copy(imgs / "bee" / "0.png", imgs / "bee" / f"{i}.png")
    assert main(["lds", "--run", str(run), "--models", "2", "--data-root", str(imgs)]) == 2
    err = capsys.readouterr().err.strip()
    assert "split of imagefolder at" in err and "changed since `trakscope run` (" in err and "added" in err
    assert f"`trakscope run --out {run} --overwrite`" in err
    assert len(err.splitlines()) == 1


def test_same_names_other_sizes_are_noticed(folder_run, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(folder_run / "imgs", imgs)
    for p in imgs.rglob("*.png"):
        Image.new("RGB", (9, 9)).save(p)  # other content, other size, same names
    with pytest.raises(RunError, match="changed size"):
        RunFolder(folder_run / "run", data_root=imgs).data.dataset()


def test_moved_data_is_re_pointed_and_checked(folder_run, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder_run / "imgs", moved)
    config_before = (folder_run / "run" / "config.json").read_bytes()
    dataset = RunFolder(folder_run / "run", data_root=moved).data.dataset()
    assert dataset.train.source_ids == RunFolder(folder_run / "run").data.dataset().train.source_ids
    assert (folder_run / "run" / "config.json").read_bytes() == config_before
    (moved / "ant" / "3.png").unlink()
    with pytest.raises(RunError, match="changed since `trakscope run`"):
        RunFolder(folder_run / "run", data_root=moved).data.dataset()


# --- a failed start leaves nothing behind -----------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--classes", "0,1,seven"], ["--weights", "imagenet"], ["--max-train", "5"]])
def test_failed_start_writes_nothing(tmp_path, capsys, bad):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--dataset", "digits", "--max-train", "60", "--max-test", "30",
                 *FAST, *bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    if bad[0] == "--max-train":
        assert "fewer than the 10 classes" in err


def test_fixed_typo_needs_no_overwrite(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--dataset", "digits", "--max-train", "30", "--max-test", "30", *FAST]
    assert main([*args, "--classes", "0,1,sevn"]) == 2
    assert main([*args, "--classes", "0,1,7"]) == 0
    assert json.loads((out / "data" / "classes.json").read_text()) == ["0", "1", "7"]
