import errno
import json
import os
import stat
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from trakscope.io import (
    atomic_path,
    clean_orphan_temps,
    create_memmap,
    load_npy,
    load_tensors,
    preallocate,
    read_json,
    save_npy,
    save_tensors,
    write_json,
)


def test_write_json_is_standard_json(tmp_path):
    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.5, float("nan")], "z": np.float64(2.0)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [1.5, None], "z": 2.0}


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    save_npy(tmp_path / "a.npy", np.arange(3))
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.npy") as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("interrupted")
    assert np.array_equal(load_npy(tmp_path / "a.npy"), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_round_trips_without_pickle(tmp_path):
    save_tensors(tmp_path / "m.safetensors", {"w": torch.ones(2, 2)}, metadata={"run": "x"})
    assert torch.equal(load_tensors(tmp_path / "m.safetensors")["w"], torch.ones(2, 2))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_npy(tmp_path / "obj.npy")
    write_json(tmp_path / "b.json", {"k": [1, 2]})
    assert read_json(tmp_path / "b.json") == {"k": [1, 2]}


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_written_files_get_the_umask_mode_not_0600(tmp_path, umask_027):
    write_json(tmp_path / "a.json", {"k": 1})
    save_npy(tmp_path / "b.npy", np.arange(3))
    with atomic_path(tmp_path / "c.npy", suffix=".npy") as tmp:
        m = create_memmap(tmp, (4, 2), np.float32)
        m[:] = 1
        m.flush()
        del m
    for name in ("a.json", "b.npy", "c.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_a_filesystem_refusing_chmod_still_gets_the_file(tmp_path, monkeypatch):
    def refuse(path, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", refuse)
    write_json(tmp_path / "a.json", {"k": 1})
    assert read_json(tmp_path / "a.json") == {"k": 1}


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json(tmp_path / "a.json", {"k": 1})
    assert events == ["fsync file", "replace", "fsync dir"]


def _orphan(folder, name, suffix="", age_s=0.0):
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".tmp{suffix}")  # what atomic_path makes
    os.close(fd)
    os.utime(tmp, (time.time() - age_s, time.time() - age_s))
    return Path(tmp)


def test_clean_orphan_temps_removes_only_old_temps_of_atomic_path(tmp_path):
    old = [_orphan(tmp_path, "scores.npy", ".npy", 7200), _orphan(tmp_path / "features", "config.json", "", 7200)]
    fresh = _orphan(tmp_path, "train.npy", ".npy")
    keep = [tmp_path / "scores.npy", tmp_path / ".notes.tmp", tmp_path / ".a.b.tmp", tmp_path / "x.tmp.npy"]
    for p in keep:
        p.write_text("user data")
        os.utime(p, (0, 0))
    assert sorted(clean_orphan_temps(tmp_path)) == sorted(old)
    assert fresh.exists() and all(p.exists() for p in keep)
    assert clean_orphan_temps(tmp_path, min_age_s=0) == [fresh]  # under the folder lock
    assert all(p.exists() for p in keep)


def test_preallocate_reserves_the_blocks(tmp_path):
    preallocate(tmp_path / "f.bin", 3 * 2**20)
    st = (tmp_path / "f.bin").stat()
    assert st.st_size >= 3 * 2**20
    if hasattr(os, "posix_fallocate"):
        assert st.st_blocks * 512 >= 3 * 2**20


def test_preallocate_on_a_full_disk_raises_enospc_naming_file_and_sizes(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError) as info:
        preallocate(tmp_path / "f.bin", 5 * 2**20)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "f.bin")
    assert "needs 5.0 MB on /" in info.value.strerror and "MB free" in info.value.strerror


def test_preallocate_without_fallocate_checks_free_space(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    monkeypatch.setattr(os, "fstatvfs", lambda fd: types.SimpleNamespace(f_bavail=256, f_frsize=4096))  # 1 MB
    preallocate(tmp_path / "small.bin", 2**19)
    with pytest.raises(OSError) as info:
        preallocate(tmp_path / "big.bin", 2 * 2**20)
    assert info.value.errno == errno.ENOSPC and "1.0 MB free" in info.value.strerror


def test_create_memmap_is_a_reserved_npy_and_leaves_nothing_when_the_disk_is_full(tmp_path, monkeypatch):
    m = create_memmap(tmp_path / "s.npy", (300, 500), np.float32)
    assert m.shape == (300, 500) and m.dtype == np.float32 and not m.any()
    m[-1, -1] = 7.0
    m.flush()
    del m
    assert load_npy(tmp_path / "s.npy")[-1, -1] == 7.0
    if hasattr(os, "posix_fallocate"):
        assert (tmp_path / "s.npy").stat().st_blocks * 512 >= 300 * 500 * 4

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError, match="needs"):
        create_memmap(tmp_path / "t.npy", (300, 500), np.float32)
    assert not (tmp_path / "t.npy").exists()
