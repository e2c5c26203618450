"""The checkpoint ensemble (``stages/ensemble.py``): its one prediction against a naive reference, the engine's
checkpoint ids and masks, and a damaged member refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trakscope.attribution.masks import dropconnect
from trakscope.models import build_model
from trakscope.run_folder import RunError, RunFolder
from trakscope.stages import ensemble
from trakscope.train import architecture_only


def naive_member_probs(run: RunFolder, path: Path, x: torch.Tensor) -> np.ndarray:
    """One member's float64 softmax on ``x``, by hand: its weights read straight from the file, one forward pass."""
    net = build_model(architecture_only(run.config.model), len(run.classes))
    net.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        z = net.eval()(x).double().numpy()
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_ensemble_prediction_is_the_mean_of_the_members_softmax(tiny_run):
    run = RunFolder(tiny_run)
    dataset = run.data.dataset()
    sources = {name: dataset.split(name).images for name in ("val", "test")}
    got = ensemble.ensemble_predict(run, sources)
    finals = ensemble.final_checkpoints(run)
    assert [p.name for p in finals] == ["model0_ckpt0.safetensors", "model1_ckpt0.safetensors"]
    for name, images in sources.items():
        members = [naive_member_probs(run, p, images.batch(np.arange(len(images)))) for p in finals]
        np.testing.assert_allclose(got.probs[name], sum(members) / len(members), rtol=1e-12, atol=1e-15)
        for m, p in enumerate(members):
            np.testing.assert_array_equal(got.member_predicted[m][name], p.argmax(1))
        # what `run` stored is this same prediction, bit for bit (the one implementation wrote it)
        np.testing.assert_array_equal(got.probs[name].astype(np.float32), run.results.probs(name))
    accuracies = [m["test_acc"] for m in run.results.read(run.metrics_path, "model_metrics")["models"]]
    assert accuracies == [float((p["test"] == dataset.test.true_labels).mean()) for p in got.member_predicted]


def test_member_logits_are_the_named_members_own(tiny_run):
    run = RunFolder(tiny_run)
    images = run.data.dataset().test.images
    [(m, logits)] = ensemble.member_logits(run, {"test": images}, members=[1])
    net = build_model(architecture_only(run.config.model), len(run.classes))
    net.load_state_dict(load_file(str(run.checkpoint_path(1, 0))))
    with torch.no_grad():
        expected = net.eval()(images.batch(np.arange(len(images)))).numpy()
    assert m == 1
    np.testing.assert_array_equal(logits["test"], expected)


def fake_run(paths: list[str], masks: int) -> SimpleNamespace:
    """What the checkpoint-id functions read of a run: its checkpoint files, ``trak.masks`` and relative names."""
    files = [Path("/run") / p for p in paths]
    return SimpleNamespace(checkpoint_paths=lambda: files, config=SimpleNamespace(trak=SimpleNamespace(masks=masks)),
                           relative=lambda p: str(Path(p).relative_to("/run")))


def test_engine_checkpoint_ids_are_every_file_then_the_masked_copies_of_each_final_one():
    files = ["models/model0_ckpt0.safetensors", "models/model0_ckpt1.safetensors",
             "models/model1_ckpt0.safetensors", "models/model1_ckpt1.safetensors"]
    run = fake_run(files, masks=2)
    assert [p.name for p in ensemble.final_checkpoints(run)] == ["model0_ckpt1.safetensors", "model1_ckpt1.safetensors"]
    ids = [(str(p.relative_to("/run")), mask) for p, mask in ensemble.engine_checkpoints(run)]
    assert ids == [(f, None) for f in files] + [(files[1], 0), (files[1], 1), (files[3], 0), (files[3], 1)]
    assert ensemble.describe_checkpoint(run, 2) == "models/model1_ckpt0.safetensors"
    assert ensemble.describe_checkpoint(run, 7) == "models/model1_ckpt1.safetensors (DropConnect mask 1)"
    assert [ensemble.member_of(p) for p, _ in ensemble.engine_checkpoints(run)] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert ensemble.engine_checkpoints(fake_run(files, masks=0)) == [(Path("/run") / f, None) for f in files]


def test_a_mask_is_seeded_by_the_member_and_the_mask_index(tiny_run):
    run = RunFolder(tiny_run)
    path, t = run.checkpoint_path(1, 0), run.config.trak
    state = ensemble.load_checkpoint(run, path)
    unmasked = ensemble.engine_state(run, path, None)
    assert all(torch.equal(unmasked[k], v) for k, v in state.items())
    masked = ensemble.engine_state(run, path, 1)
    weights = ensemble.mask_targets(run)
    expected = dropconnect(state, t.mask_p, seed=(t.seed, 1, 1), weights=weights)
    assert all(torch.equal(masked[k], v) for k, v in expected.items())
    other = dropconnect(state, t.mask_p, seed=(t.seed, 0, 1), weights=weights)  # member 0's mask 1
    assert not all(torch.equal(masked[k], v) for k, v in other.items())


def test_masks_of_two_members_never_share_a_seed(tiny_run):
    """Member 0's mask 1000 and member 1's mask 0 drop different entries (``seed + 1000 * member + mask`` gave
    both the same seed, so the same pattern over the same shapes)."""
    run = RunFolder(tiny_run)

    def dropped(member: int, mask: int) -> list[torch.Tensor]:
        state = ensemble.engine_state(run, run.checkpoint_path(member, 0), mask)
        return [v == 0 for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]

    a, b = dropped(0, 1000), dropped(1, 0)
    assert any(x.any() for x in a) and not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> RunFolder:
    shutil.copytree(tiny_run, tmp_path / "run")
    return RunFolder(tmp_path / "run")


@pytest.mark.parametrize("damage", ["cut short", "bits flipped"])
def test_a_damaged_member_is_refused_by_name(run_copy, damage):
    path = run_copy.checkpoint_path(1, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "cut short" else data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert ensemble.checkpoint_damaged(run_copy, path)
    images = {"test": run_copy.data.dataset().test.images}
    named = r"models/model1_ckpt0.safetensors is damaged"
    with pytest.raises(RunError, match=named):
        ensemble.ensemble_predict(run_copy, images)
    with pytest.raises(RunError, match=named):
        list(ensemble.member_logits(run_copy, images, members=[1]))
    [(_, logits)] = ensemble.member_logits(run_copy, images, members=[0])  # the whole member is still read
    assert logits["test"].shape == (len(images["test"]), len(run_copy.classes))
