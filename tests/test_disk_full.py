"""A file that cannot be written (full disk, file-size limit, read-only, no permission) is one line, at every writer.

The writers run in a subprocess under a real ``RLIMIT_FSIZE`` (SIGXFSZ ignored, as Python does, so a write past
the limit fails with EFBIG), and the CLI on a real small tmpfs where the machine allows mounting one (root). After
the failure no partial or temporary file is left, and a rerun once space is freed equals an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trakscope.cli import main
from trakscope.io import DiskWriteError, atomic_path, save_npy

from .conftest import TINY_RUN_ARGS
from .test_crash import _assert_same

SRC = str(Path(__file__).resolve().parents[1] / "src")
LIMIT = 64 * 1024  # bytes any writer below goes past
RUN_OUTPUTS = ("config.json", "data", "models", "scores", "features")

WRITERS = r"""
import json, sys
from pathlib import Path
import numpy as np, torch
from trakscope import io
from trakscope.io import DiskWriteError

out = Path(sys.argv[1])
big = np.arange(40_000, dtype=np.float32)  # 160 kB

def memmap_in_temp(p):
    with io.atomic_path(p, suffix=".npy") as tmp:
        m = io.create_memmap(tmp, (40_000,), np.float32)
        m[:] = 1

def png(p):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(20, 20))
    fig.gca().imshow(np.random.default_rng(0).random((400, 400, 3)))
    with io.atomic_path(p, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")

writers = {
    "thumbs.npy": lambda p: io.save_npy(p, big),
    "scores.npy": memmap_in_temp,
    "features/train.npy": lambda p: io.create_memmap(p, (40_000,), np.float32),
    "model.safetensors": lambda p: io.save_tensors(p, {"w": torch.ones(40_000)}, metadata={"m": "0"}),
    "result.json": lambda p: io.write_json(p, {"x": list(range(20_000))}),
    "ranking.csv": lambda p: io.write_csv(p, ["a", "b"], [[i, i] for i in range(20_000)]),
    "grid.png": png,
}
report = {}
for name, write in writers.items():
    try:
        write(out / name)
        report[name] = "written"
    except DiskWriteError as e:
        report[name] = {"errno": e.errno, "filename": e.filename, "line": str(e)}
print(json.dumps(report))
"""


def _limited(limit: int):
    """A ``preexec_fn``: files of at most ``limit`` bytes, and a write past it an EFBIG error, not a kill."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_every_writer_past_the_file_size_limit_is_one_disk_write_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    (out / "features").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-c", WRITERS, str(out)], env={**os.environ, "PYTHONPATH": SRC},
                          capture_output=True, text=True, timeout=120, preexec_fn=_limited(LIMIT))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for name, got in report.items():
        assert got != "written", f"{name} was written past a {LIMIT}-byte limit"
        assert got["errno"] == errno.EFBIG and got["filename"] == str(out / name), (name, got)
        line = got["line"]
        assert line.startswith(f"cannot write {out / name}: File too large;"), line
        assert "ulimit -f 64" in line and "rerun the same command" in line and "\n" not in line
    assert _files(out) == [], "a partial or temporary file was left behind"


def test_a_write_error_without_errno_is_named_and_diagnosed(tmp_path, monkeypatch):
    """numpy's C writer reports a short write as "N requested and M written" with no errno: it must still read as a
    full disk naming the file, never ``[Errno None] None: 'file'``."""
    almost_full = shutil.disk_usage(tmp_path)._replace(free=4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: almost_full)
    with pytest.raises(DiskWriteError) as info, atomic_path(tmp_path / "thumbs_val.npy", suffix=".npy"):
        raise OSError("163840 requested and 4096 written")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "thumbs_val.npy")
    assert str(info.value).startswith(f"cannot write {tmp_path / 'thumbs_val.npy'}: No space left on device (0.0 MB")
    assert "None" not in str(info.value) and _files(tmp_path) == []


def test_other_write_errors_are_left_alone(tmp_path):
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "a.npy"):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert not isinstance(info.value, DiskWriteError) and info.value.filename == str(tmp_path / "a.npy")
    save_npy(tmp_path / "b.npy", [1, 2])
    assert _files(tmp_path) == ["b.npy"]


def _one_error_line(err: str, command: str, file: Path, reason: str) -> None:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"trakscope {command}: error: cannot write {file}: {reason}"), err
    assert "Traceback" not in err and "[Errno" not in err, err
    assert "rerun the same command" in lines[-1]


def _no_temps(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name], _files(folder)


@pytest.mark.slow
def test_run_past_the_file_size_limit_is_one_line_and_resumes_to_the_same_outputs(tiny_run, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "trakscope", "run", "--out", str(out), *TINY_RUN_ARGS],
                          env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=600,
                          preexec_fn=_limited(400 * 1024))  # `ulimit -f 400`: the training thumbnails do not fit
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr, "run", out / "data" / "thumbs_train.npy", "File too large")
    assert not (out / "data" / "thumbs_train.npy").exists()
    _no_temps(out)
    assert main(["run", "--out", str(out), *TINY_RUN_ARGS]) == 0
    _assert_same(tiny_run, out, RUN_OUTPUTS)


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_run_on_a_full_tmpfs_is_one_line_and_resumes_to_the_same_outputs(tiny_run, tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1400k"):  # the data fits, the features do not
        pytest.skip("mounting a tmpfs needs root and a mount command")
    try:
        out = disk / "run"
        assert main(["run", "--out", str(out), *TINY_RUN_ARGS]) == 1
        err = capsys.readouterr().err
        named = Path(err.strip().splitlines()[-1].split("cannot write ", 1)[-1].split(": ", 1)[0])
        assert named.parent.parent == out / "features", err  # a features array is the first that does not fit
        _one_error_line(err, "run", named, "No space left on device")
        assert not named.exists()
        _no_temps(out)
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)  # space freed
        assert main(["run", "--out", str(out), *TINY_RUN_ARGS]) == 0
        _assert_same(tiny_run, out, RUN_OUTPUTS)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: a failed run may leave a map
