"""A TRAK store checks what it reads: damaged files are one-line errors naming them (never zero-extended or
trusted), one process writes at a time, and a killed writer's temporary files are cleaned up."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trakscope import TRAK
from trakscope.attribution import store_files
from trakscope.attribution.store import StoreError
from trakscope.io import read_json
from trakscope.manifest import describe


def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(30, 3, 2, 2), torch.arange(30) % 3
    return model, x, y


def _scored(root: Path) -> tuple[TRAK, torch.nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
    model, x, y = _tiny()
    trak = TRAK(model, root, proj_dim=16, progress=False)
    trak.featurize([(x[:20], y[:20]), (x[20:], y[20:])], split="train", n=30)
    trak.featurize([(x[:5], y[:5])], split="test", n=5)
    return trak, model, x, y, np.array(trak.scores("train", "test"))


def _forget_checks(monkeypatch) -> None:
    """A new process: nothing verified yet."""
    monkeypatch.setattr(store_files, "_VERIFIED", set())


def test_the_store_records_what_it_wrote_and_a_rerun_reuses_it(tmp_path):
    trak, model, x, y, scores = _scored(tmp_path / "s")
    files = read_json(tmp_path / "s" / "record.json")["files"]
    assert {"meta.json", "checkpoints.json", "rows/train.npy", "ckpt0/train.npy", "ckpt0/train_done.npy",
            "ckpt0/train_q.npy", "ckpt0/xtx.npy", "ckpt0/xtx_inv.npy", "ckpt0/lambda.json",
            "scores/train__test.npy", "scores/train__test.json"} <= set(files)
    assert files["ckpt0/train.npy"]["shape"] == [30, 16]
    assert all(files[name] == describe(tmp_path / "s" / name) for name in files)  # size, digest, shape, dtype
    again = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    np.testing.assert_array_equal(again.scores("train", "test"), scores)


def test_a_truncated_features_file_is_named_and_never_zero_extended(tmp_path, monkeypatch):
    trak, model, x, y, _ = _scored(tmp_path / "s")
    path = tmp_path / "s" / "ckpt0" / "train.npy"
    size = path.stat().st_size
    os.truncate(path, size - 200)
    _forget_checks(monkeypatch)
    for call in (lambda: trak.self_influence(), lambda: trak.scores("train", "test", out=tmp_path / "o.npy"),
                 lambda: trak.featurize([(x, y)], split="train", n=30)):
        with pytest.raises(StoreError, match=f"{path} is damaged \\(size {size - 200:,} bytes, expected {size:,}"):
            call()
    assert path.stat().st_size == size - 200


def test_a_truncated_features_file_of_a_split_being_written_is_named_not_grown(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize_batches([(np.arange(10), x[:10], y[:10])], split="train", n=30)  # an interrupted run: 10 of 30
    path = tmp_path / "s" / "ckpt0" / "train.npy"
    os.truncate(path, path.stat().st_size - 64)
    size = path.stat().st_size
    with pytest.raises(StoreError, match=f"{path} is damaged \\(size {size:,} bytes, its header"):
        trak.featurize([(x, y)], split="train", n=30)
    assert path.stat().st_size == size


DAMAGE = {
    "meta.json": b"{\"format\": 1, \"proj", "checkpoints.json": b"\x00" * 40, "record.json": b"[1, 2",
    "ckpt0/train_done.npy": b"\x93NUMPY", "ckpt0/train_q.npy": b"", "ckpt0/xtx_inv.npy": b"not an array",
    "ckpt0/train.npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (30, 16), }",
    "rows/train.npy": b"\x93NUM",
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_damaged_file_is_one_line_naming_it(tmp_path, monkeypatch, name):
    trak, model, x, y, _ = _scored(tmp_path / "s")
    (tmp_path / "s" / "scores").joinpath("train__test.npy").unlink()  # so that scores() reads the inputs again
    path = tmp_path / "s" / name
    path.write_bytes(DAMAGE[name])
    _forget_checks(monkeypatch)
    with pytest.raises(StoreError) as e:
        reopened = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
        reopened.scores("train", "test")
        reopened.featurize([(x, y)], split="train", n=30)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and ("damaged" in message or "holds" in message)


@pytest.mark.parametrize("name", ["ckpt0/xtx_inv.npy", "ckpt0/train_q.npy", "ckpt0/train.npy", "meta.json"])
def test_same_size_changes_are_caught_by_the_digest(tmp_path, monkeypatch, name):
    trak, model, x, y, _ = _scored(tmp_path / "s")
    (tmp_path / "s" / "scores" / "train__test.npy").unlink()
    path = tmp_path / "s" / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    _forget_checks(monkeypatch)
    with pytest.raises(StoreError, match=f"{path} is damaged \\(its contents differ from what was written"):
        TRAK(model, tmp_path / "s", proj_dim=16, progress=False).scores("train", "test")


def test_a_store_whose_record_was_deleted_is_not_trusted(tmp_path):
    trak, model, *_ = _scored(tmp_path / "s")
    (tmp_path / "s" / "record.json").unlink()
    with pytest.raises(StoreError, match=r"record.json is missing .*, so nothing in .* can be verified.*overwrite"):
        TRAK(model, tmp_path / "s", proj_dim=16, progress=False)


def test_a_file_is_verified_once_per_process(tmp_path, monkeypatch):
    trak, model, *_ = _scored(tmp_path / "s")
    _forget_checks(monkeypatch)
    calls = []
    real = store_files.problem
    monkeypatch.setattr(store_files, "problem", lambda path, *a, **k: calls.append(Path(path).name) or real(path, *a,
                                                                                                          **k))
    for _ in range(3):
        trak.scores("train", "test")
    assert calls.count("train__test.npy") == 1 and calls.count("train.npy") == 0  # a finished matrix: its inputs
    # are not read at all


def test_a_second_writer_is_refused_in_one_line(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    fd = os.open(tmp_path / "s" / ".lock", os.O_RDWR)  # a second handle, as another process holds it
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"4242", 0)
    try:
        for call in (lambda: trak.featurize([(x, y)], split="train", n=30),
                     lambda: TRAK(model, tmp_path / "s", proj_dim=16, progress=False)):
            with pytest.raises(StoreError, match=r"is in use by another process \(pid 4242\) writing to it; wait") as e:
                call()
            assert "\n" not in str(e.value)
    finally:
        os.close(fd)
    trak.featurize([(x, y)], split="train", n=30)  # released: the next writer goes ahead
    assert not (tmp_path / "s" / "ckpt0" / "train.npy.tmp").exists()


SECOND_PROCESS = """
import sys, torch
from trakscope import TRAK
from trakscope.attribution.store import StoreError
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
try:
    TRAK(model, sys.argv[1], proj_dim=16, progress=False)
except StoreError as e:
    print(e)
    sys.exit(2)
"""


def test_a_second_process_is_refused_while_the_first_writes(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with trak.store.writing():
        done = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(tmp_path / "s")], capture_output=True,
                              text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip().endswith(f"is in use by another process (pid {os.getpid()}) writing to it; wait for "
                                        "it to finish, or use another store folder")


def test_temporary_files_of_a_killed_writer_are_removed_when_the_lock_is_taken(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize_batches([(np.arange(10), x[:10], y[:10])], split="train", n=30)
    # what a SIGKILL during an atomic write leaves: atomic_path's temporary names, modified just now
    left = [tmp_path / "s" / "ckpt0" / ".train_q.npy.ab12cd34.tmp.npy", tmp_path / "s" / ".record.json.x9y8z7w6.tmp"]
    for p in left:
        p.write_bytes(b"partial")
    mine = tmp_path / "s" / "ckpt0" / "notes.txt"
    mine.write_text("kept")
    trak.featurize([(x, y)], split="train", n=30)
    assert not any(p.exists() for p in left) and mine.read_text() == "kept"


@pytest.mark.parametrize("name,data", [("train_done.npy", b"\x93NUMPY\x01\x00"), ("train_q.npy", b"")])
def test_damaged_flags_of_a_split_being_written_are_named(tmp_path, name, data):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize_batches([(np.arange(10), x[:10], y[:10])], split="train", n=30)  # unrecorded until complete
    path = tmp_path / "s" / "ckpt0" / name
    path.write_bytes(data)
    with pytest.raises(StoreError, match=f"{path} is damaged \\(not a valid .npy header") as e:
        trak.featurize([(x, y)], split="train", n=30)
    assert "\n" not in str(e.value)
