import json

import numpy as np
import pytest
import torch

from trakscope.io import atomic_path, load_npy, load_tensors, read_json, save_npy, save_tensors, write_json


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
