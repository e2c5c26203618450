"""The README's "Use it from Python" block, run as it stands, and the TRAK engine's contract."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trakscope import TRAK
from trakscope.attribution.store import StoreError

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Use it from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_and_attributes_sensibly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), ns)  # noqa: S102 - the README's own code
    scores, y = np.asarray(ns["scores"]), ns["y"].numpy()
    assert scores.shape == (1200, 100) and np.isfinite(scores).all()
    # the training examples that raise a digit's margin most are that digit (measured 1.00; chance 0.10)
    top5 = np.argsort(-scores, axis=0)[:5]
    assert (y[:1200][top5] == y[1200:1300][None, :]).mean() > 0.9
    relative = ns["relative"]
    np.testing.assert_allclose(relative, scores / np.sqrt(ns["self_influence"])[:, None], rtol=1e-5)
    assert (y[:1200][ns["similar"]] == y[1200]).all()
    assert ns["self_influence"].shape == (1200,)
    # a rerun reuses the finished matrix and every featurized row
    path = tmp_path / "runs/notebook/trak/scores/train__test.npy"
    before = path.stat().st_mtime_ns
    trak = ns["trak"]
    assert np.array_equal(trak.scores("train", "test"), scores) and path.stat().st_mtime_ns == before
    assert len(trak.pending("train", 1200, 0)) == 0 and trak.checkpoints("train", "test") == [0, 1, 2, 3]


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(30, 3, 2, 2), torch.arange(30) % 3
    return model, x, y


def test_dict_batches_and_logits_objects_are_accepted(tmp_path):
    class Wrapped(torch.nn.Module):  # a Hugging Face-like model: keyword input, output with .logits
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return type("Out", (), {"logits": self.inner(pixel_values)})()

    model, x, y = _tiny()
    plain = TRAK(model, tmp_path / "a", proj_dim=16, progress=False)
    plain.featurize([(x[:20], y[:20]), (x[20:], y[20:])], split="train", n=30)
    wrapped = TRAK(Wrapped(model), tmp_path / "b", proj_dim=16, progress=False)
    wrapped.featurize([{"pixel_values": x[:10], "labels": y[:10]}, {"pixel_values": x[10:], "labels": y[10:]}],
                      split="train", n=30)
    np.testing.assert_allclose(wrapped.self_influence(), plain.self_influence(), rtol=1e-4, atol=1e-7)


def test_a_checkpoint_saved_from_a_ddp_or_compiled_wrapper_loads_as_the_same_checkpoint(tmp_path):
    model, x, y = _tiny()
    state = {k: v + 0.05 for k, v in model.state_dict().items()}
    wrapped = {f"module._orig_mod.{k}": v for k, v in state.items()}  # DistributedDataParallel around torch.compile
    plain = TRAK(model, tmp_path / "a", proj_dim=16, progress=False)
    plain.featurize([(x, y)], split="train", checkpoint=state, n=30)
    again = TRAK(model, tmp_path / "b", proj_dim=16, progress=False)
    again.featurize([(x, y)], split="train", checkpoint=wrapped, n=30)
    np.testing.assert_array_equal(again.self_influence(), plain.self_influence())


def test_every_checkpoint_counts_and_missing_splits_are_named(tmp_path):
    model, x, y = _tiny()
    states = [{k: v + 0.05 * i for k, v in model.state_dict().items()} for i in range(2)]
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize([(x, y)], split="train", checkpoint=states[0], n=30)
    trak.featurize([(x[:5], y[:5])], split="test", checkpoint=states[0], n=5)
    trak.featurize([(x, y)], split="train", checkpoint=states[1], n=30)
    with pytest.raises(StoreError, match="checkpoint 1 split 'test'"):
        trak.scores("train", "test")
    trak.featurize([(x[:5], y[:5])], split="test", checkpoint=states[1], n=5)
    both = np.asarray(trak.scores("train", "test"))
    one = TRAK(model, tmp_path / "one", proj_dim=16, progress=False)
    one.featurize([(x, y)], split="train", checkpoint=states[1], checkpoint_id=1, n=30)
    one.featurize([(x[:5], y[:5])], split="test", checkpoint=states[1], checkpoint_id=1, n=5)
    assert not np.allclose(both, one.scores("train", "test"))  # the average is not the last checkpoint alone


def test_other_settings_are_refused_and_ridge_only_rescores(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize([(x, y)], split="train", n=30)
    with pytest.raises(StoreError, match="proj_dim: 16 -> 32"):
        TRAK(model, tmp_path / "s", proj_dim=32)
    first = np.asarray(trak.self_influence()).copy()
    again = TRAK(model, tmp_path / "s", proj_dim=16, ridge=30.0, progress=False)
    assert again.pending("train", 30, 0).size == 0  # features kept
    assert (np.asarray(again.self_influence()) < first).all()  # a larger ridge shrinks every self-influence


def _two_checkpoint_store(path):
    """The tiny model, its data, two checkpoints of it, and a store featurized on both (30 train, 5 test)."""
    model, x, y = _tiny()
    states = [{k: v + 0.05 * i for k, v in model.state_dict().items()} for i in range(2)]
    trak = TRAK(model, path, proj_dim=16, progress=False)
    for state in states:
        trak.featurize([(x, y)], split="train", checkpoint=state, n=30)
        trak.featurize([(x[:5], y[:5])], split="test", checkpoint=state, n=5)
    return model, x, y, states, trak


def test_a_checkpoint_subset_and_a_new_ridge_reuse_the_features_and_the_gram(tmp_path):
    model, x, y, states, trak = _two_checkpoint_store(tmp_path / "s")
    full = np.asarray(trak.scores("train", "test")).copy()
    first = np.asarray(trak.scores("train", "test", out=tmp_path / "first.npy", checkpoints=[0]))
    alone = TRAK(model, tmp_path / "alone", proj_dim=16, progress=False)
    alone.featurize([(x, y)], split="train", checkpoint=states[0], n=30)
    alone.featurize([(x[:5], y[:5])], split="test", checkpoint=states[0], n=5)
    np.testing.assert_allclose(first, alone.scores("train", "test"), rtol=1e-5, atol=1e-8)
    assert not np.allclose(first, full)
    with pytest.raises(StoreError, match="no featurized checkpoints \\[7\\]"):
        trak.scores("train", "test", checkpoints=[7])
    gram_file = trak.store.gram_path(0)
    before = gram_file.stat().st_mtime_ns
    trak.ridge = 10.0
    assert not np.allclose(trak.scores("train", "test", out=tmp_path / "r10.npy"), full)
    assert gram_file.stat().st_mtime_ns == before  # a new ridge costs an inverse, not another pass over X


def test_self_influence_over_a_checkpoint_subset_is_the_exact_average_over_that_subset(tmp_path):
    model, x, y = _tiny()
    states = [{k: v + 0.05 * i for k, v in model.state_dict().items()} for i in range(3)]
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    for state in states:
        trak.featurize([(x, y)], split="train", checkpoint=state, n=30)
    full = np.asarray(trak.self_influence()).copy()
    subset = [2, 0]
    got = np.asarray(trak.self_influence(checkpoints=subset))
    # the dense reference, in float64 from the stored features: mean_k diag(X_k (X_k^T X_k + lambda_k I)^-1 X_k^T)
    # times mean_k Q_k, over the subset only (lambda_k = ridge * trace(X_k^T X_k) / d)
    diags, qs = [], []
    for k in sorted(subset):
        feats, q = trak.store.features(k, "train", 0, 0).load()
        xk = np.asarray(feats, dtype=np.float64)
        xtx = xk.T @ xk
        a = xtx + trak.ridge * np.trace(xtx) / xtx.shape[0] * np.eye(xtx.shape[0])
        diags.append(np.einsum("id,id->i", xk, np.linalg.solve(a, xk.T).T))
        qs.append(q)
    np.testing.assert_allclose(got, np.mean(diags, axis=0) * np.mean(qs, axis=0), rtol=1e-4)
    assert not np.allclose(got, full)
    assert trak.store.self_path("train", [0, 2]).exists()  # its own file: the average over all is not replaced
    np.testing.assert_array_equal(trak.self_influence(), full)
    # Q of the margin is 1 - p[label] under each checkpoint: the subset's mean
    given = []
    for k in (0, 2):
        model.load_state_dict(states[k])
        given.append(torch.softmax(model(x), 1)[torch.arange(30), y].detach().numpy())
    given = np.mean(given, axis=0)
    np.testing.assert_allclose(1 - trak.out_to_loss(checkpoints=[0, 2]), given, rtol=1e-5, atol=1e-6)
    with pytest.raises(StoreError, match="no featurized checkpoints \\[5\\]"):
        trak.self_influence(checkpoints=[0, 5])


def test_kronecker_blocks_narrower_than_proj_dim_are_widened_and_a_store_records_it(tmp_path):
    from trakscope.attribution.kronecker import natural_width, widened_k
    from trakscope.io import read_json, write_json
    from trakscope.models.builtin import TinyCNN

    model = TinyCNN(10).eval()
    assert natural_width(model, 16) == 560  # tiny_cnn's blocks at the default kron_k: narrower than 2048
    k = widened_k(model, 16, 2048)
    assert k > 16 and natural_width(model, k) > natural_width(model, k // 2)
    assert natural_width(model, k) >= 2048 or natural_width(model, 2 * k) == natural_width(model, k)
    assert widened_k(model, 16, 500) == 16 and widened_k(model, 16, 0) == 16  # wide enough / natural width asked
    trak = TRAK(model, tmp_path / "wide", proj_dim=2048, progress=False)
    assert trak.kron_k_used == k
    assert trak.features(torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]))[0].shape == (3, 2048)
    # a store written before kron_k_used was recorded (and before stores kept a record and the architecture):
    # its blocks were built at kron_k itself
    def make_old(store):
        meta = store / "meta.json"
        write_json(meta, {key: v for key, v in read_json(meta).items() if key not in ("kron_k_used", "architecture")})
        (store / "record.json").unlink()

    make_old(tmp_path / "wide")
    with pytest.raises(StoreError, match=f"kron_k_used: 16 -> {k}"):
        TRAK(model, tmp_path / "wide", proj_dim=2048)
    TRAK(model, tmp_path / "narrow", proj_dim=256, progress=False)  # 560 >= 256: kept at 16
    make_old(tmp_path / "narrow")
    assert TRAK(model, tmp_path / "narrow", proj_dim=256, progress=False).kron_k_used == 16


def test_scores_view_relative_divides_each_row_by_sqrt_self_influence_of_the_same_checkpoints(tmp_path):
    from trakscope import apply_view
    from trakscope.attribution.views import ViewError

    model, x, y, states, trak = _two_checkpoint_store(tmp_path / "s")
    raw = np.asarray(trak.scores("train", "test")).copy()
    assert np.array_equal(trak.scores("train", "test", view="raw"), raw)
    for ckpts in (None, [1]):
        self_inf = np.asarray(trak.self_influence(checkpoints=ckpts), dtype=np.float64)
        sub = np.asarray(trak.scores("train", "test", checkpoints=ckpts, out=tmp_path / f"{ckpts}.npy"))
        rel = trak.scores("train", "test", checkpoints=ckpts, out=tmp_path / f"{ckpts}.npy", view="relative")
        np.testing.assert_allclose(rel, sub / np.sqrt(self_inf)[:, None], rtol=1e-5)
        np.testing.assert_allclose(apply_view(sub, self_inf, "relative"), rel, rtol=1e-6)
    assert np.array_equal(trak.scores("train", "test"), raw)  # the stored matrix is untouched
    with pytest.raises(ViewError, match="unknown view 'cosine'; choose one of raw, relative"):
        trak.scores("train", "test", view="cosine")
    zero = np.array([4.0, 0.0])  # an example with no self-influence keeps a zero row instead of 0 / 0
    assert apply_view(np.array([[2.0], [0.0]]), zero, "relative").tolist() == [[1.0], [0.0]]
    with pytest.raises(ViewError, match="finite and >= 0"):
        apply_view(np.ones((2, 1)), np.array([1.0, -1.0]), "relative")
