"""The peers' model-randomisation check (issue 22): ``benchmarks/peers.py --random-model`` gives every method the
re-initialised model in place of its checkpoints, and ``benchmarks/views.py --peers-random`` pairs each peer matrix
with the same method and variant's matrix from that model."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trakscope.io import load_tensors, save_npy
from trakscope.run_folder import RunFolder

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmark scripts ``peers`` and ``views`` as modules (they import each other by name)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("peers"), importlib.import_module("views")


def test_random_model_replaces_every_checkpoint_alike(bench, tiny_run):
    peers, views = bench
    run = RunFolder(tiny_run)
    trained = peers.Work(run, 2)
    w = peers.Work(run, 2, random_model=True)
    fresh = views.random_model(run).state_dict()
    assert len(w.states) == len(trained.paths) == 2
    for state in w.states:
        assert state.keys() == fresh.keys()
        assert all(torch.equal(state[k], fresh[k]) for k in fresh)
    first = load_tensors(trained.paths[0])
    assert any(not torch.equal(first[k], fresh[k]) for k in fresh if fresh[k].is_floating_point())


def _write_peer(folder: Path, variants: dict[str, np.ndarray], n_val: int) -> None:
    folder.mkdir()
    files = {}
    for i, (label, s) in enumerate(variants.items()):
        files[label] = f"scores_m_{i}.npy"
        save_npy(folder / files[label], s.astype(np.float32))
    (folder / "record_m.json").write_text(json.dumps({"method": "m", "variants": files, "n_val": n_val}))


def test_peer_rows_pair_each_variant_with_its_random_matrix(bench, tmp_path):
    _, views = bench
    rng = np.random.default_rng(0)
    n_train, n_val, n_test = 30, 4, 3
    a, b = rng.normal(size=(n_train, n_val + n_test)), rng.normal(size=(n_train, n_val + n_test))
    _write_peer(tmp_path / "peers", {"a": a, "b": b}, n_val)
    rand_a = np.concatenate([-a[:, :n_val], a[:, n_val:]], axis=1)  # val columns reversed, test ones the same
    _write_peer(tmp_path / "random", {"a": rand_a}, n_val)
    labels = {"train": rng.integers(0, 3, n_train), "val": rng.integers(0, 3, n_val),
              "test": rng.integers(0, 3, n_test), "wrong": np.zeros(n_train, dtype=bool)}
    rows = {(r["variant"], r["split"]): r for r in views.peer_rows(tmp_path / "peers", labels, {}, tmp_path / "random")}
    assert rows[("a", "val")]["random_spearman"] == pytest.approx(-1.0)
    assert rows[("a", "test")]["random_spearman"] == pytest.approx(1.0)
    assert "random_spearman" not in rows[("b", "val")]  # no random matrix of that variant: nothing claimed
    plain = views.peer_rows(tmp_path / "peers", labels, {})
    assert all("random_spearman" not in r for r in plain)
