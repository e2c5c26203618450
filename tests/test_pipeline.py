"""The run folder end to end: CLI run + inspect, resume after interruption, and clear errors on bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from trakscope.cli import main
from trakscope.io import load_tensors
from trakscope.run_folder import RunFolder
from trakscope.stages import run as featurize_mod
from trakscope.train import load_trained, predict_logits

from .conftest import TINY_RUN_ARGS


def test_tiny_run_writes_the_contract(tiny_run):
    run = RunFolder(tiny_run)
    train, test = run.data.table("train"), run.data.table("test")
    n_train, n_test = len(train["index"]), len(test["index"])
    assert run.results.scores("test").shape == (n_train, n_test)
    assert run.results.scores("val").shape == (n_train, len(run.data.table("val")["index"]))
    assert run.results.scores("self").shape == (n_train,)
    assert np.isfinite(run.results.scores("test")).all()
    assert train["noisy"].sum() == round(0.1 * n_train)
    assert (train["noisy"] == (train["label"] != train["true_label"])).all()
    metrics = json.loads((tiny_run / "models" / "metrics.json").read_text())
    assert len(metrics["models"]) == 2
    _assert_ensemble_metrics(tiny_run, metrics, test["true_label"])
    assert run.data.thumbs("train").shape[0] == n_train and run.data.thumbs("train").dtype == np.uint8
    assert json.loads((tiny_run / "scores" / "meta.json").read_text())["checkpoints"] == 2


def _assert_ensemble_metrics(run_dir, metrics: dict, test_labels: np.ndarray) -> None:
    """metrics.json's accuracies are those of the members' final checkpoints and of their mean softmax."""
    run = RunFolder(run_dir)
    dataset = run.data.dataset()
    mean = 0.0
    for row in metrics["models"]:
        net = load_trained(run.config.model, len(dataset.classes), load_tensors(run_dir / row["checkpoint"]))
        probs = torch.softmax(torch.from_numpy(predict_logits(net, dataset.test.images)).double(), 1).numpy()
        assert row["test_acc"] == pytest.approx(float((probs.argmax(1) == test_labels).mean()))
        mean = mean + probs / len(metrics["models"])
    saved = np.load(run_dir / "models" / "probs_test.npy")
    np.testing.assert_allclose(saved, mean, atol=1e-6)
    acc = metrics["ensemble"]["test_acc"]
    assert acc == pytest.approx(float((mean.argmax(1) == test_labels).mean()))
    assert acc > 0.6  # measured 0.75 (members 0.65 and 0.68); chance is 0.1 on ten digits


def test_inspect_prints_and_saves_grid(tiny_run, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert main(["inspect", "--run", str(tiny_run), "--target", "3", "--top", "4", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 1000
    run = RunFolder(tiny_run)
    column = run.results.scores("test")[:, 3]
    best = int(np.argmax(column))
    assert f"     1 {best:>6}" in out
    label = run.classes[run.data.table("test")["label"][3]]
    assert f"highest scores: raise the margin of class '{label}' (the label" in out
    assert "pushed this prediction up" not in out


def test_rerun_same_settings_resumes_and_other_settings_are_refused(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "scores" / "test.npy").stat().st_mtime_ns
    assert main(["run", "--out", str(run), *TINY_RUN_ARGS]) == 0
    assert (run / "scores" / "test.npy").stat().st_mtime_ns == before  # nothing redone
    assert main(["run", "--out", str(run), *TINY_RUN_ARGS, "--epochs", "7"]) == 2
    assert "train.epochs: 6 -> 7" in capsys.readouterr().err
    assert (run / "scores" / "test.npy").stat().st_mtime_ns == before  # nothing lost


def test_interrupted_featurize_resumes_to_identical_scores(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    reference = np.load(tiny_run / "scores" / "test.npy")
    shutil.rmtree(run / "features")
    shutil.rmtree(run / "scores")
    real = featurize_mod.iter_batches
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        for item in real(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(featurize_mod, "iter_batches", flaky)
    args = ["run", "--out", str(run), *TINY_RUN_ARGS]
    assert main(args) == 130
    done = np.load(run / "features" / "ckpt0" / "train_done.npy")
    assert 0 < done.sum() < len(done)
    monkeypatch.setattr(featurize_mod, "iter_batches", real)
    calls["n"] = -10**9
    assert main(args) == 0
    assert np.allclose(np.load(run / "scores" / "test.npy"), reference, atol=1e-6)


def test_checkpoint_from_another_run_is_refused(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["run", "--out", str(other), *TINY_RUN_ARGS, "--train-seed", "5"]) == 0
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "features")
    shutil.rmtree(run / "scores")
    shutil.copy(other / "models" / "model0_ckpt0.safetensors", run / "models" / "model0_ckpt0.safetensors")
    assert main(["run", "--out", str(run), *TINY_RUN_ARGS]) == 2
    assert "written by a run with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "food101", "--data-root", "/nonexistent/food"], "food-101"),
        (["--classes", "1,2,banana"], "banana"),
        (["--model", "resnet18", "--weights", "imagenet", "--weights-path", "/nonexistent/w.pth"], "never downloads"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, capsys, extra, message):
    assert main(["run", "--out", str(tmp_path / "r"), *TINY_RUN_ARGS, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trakscope run: error:") and message in err
    assert "Traceback" not in err


def test_inspect_on_missing_run_says_what_to_do(tmp_path, capsys):
    assert main(["inspect", "--run", str(tmp_path / "nothing"), "--target", "0"]) == 2
    assert "trakscope run" in capsys.readouterr().err


def test_food101_layout_end_to_end_with_decoding_workers(tmp_path, capsys):
    """A real user's path: files on disk, decoded in worker processes for training and featurization."""
    from .test_data_files import make_food101

    make_food101(tmp_path / "data", n_train=12, n_test=4)
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--dataset", "food101", "--data-root", str(tmp_path / "data"),
            "--classes", "apple_pie,sushi,tacos", "--image-size", "16", "--model", "tiny_cnn", "--epochs", "2",
            "--ensemble", "1", "--batch-size", "8", "--proj-dim", "32", "--num-workers", "2", "--no-progress",
            "--device", "cpu"]
    assert main(args) == 0
    run = RunFolder(out)
    assert run.classes == ["apple_pie", "sushi", "tacos"]
    train = run.data.table("train")
    assert all(s.startswith("images/") and s.endswith(".jpg") for s in train["source_id"])
    assert run.results.scores("test").shape == (len(train["index"]), 12)
    assert main(["inspect", "--run", str(out), "--target", "0", "--top", "3"]) == 0
    assert "images/" in capsys.readouterr().out


def test_checkpoints_trained_elsewhere_give_the_same_scores(tiny_run, tmp_path, capsys):
    """A run's own final checkpoints handed back through --checkpoints: no training, the same TRAK scores."""
    from trakscope.run_folder import RunFolder as Folder

    cfg_args = [a for a in TINY_RUN_ARGS]
    files = [str(p) for p in Folder(tiny_run).checkpoint_paths()]
    out = tmp_path / "imported"
    assert main(["run", "--out", str(out), *cfg_args, "--checkpoints", *files]) == 0
    run = Folder(out)
    assert run.config.model.checkpoints == tuple(files)
    for name in ("test", "val", "self"):
        assert np.array_equal(run.results.scores(name), Folder(tiny_run).results.scores(name))
    metrics = json.loads(run.metrics_path.read_text())
    original = json.loads(Folder(tiny_run).metrics_path.read_text())
    assert [m["test_acc"] for m in metrics["models"]] == [m["test_acc"] for m in original["models"]]
    assert [m["source"] for m in metrics["models"]] == files
    assert "import" in run.results.timings() and "train" not in run.results.timings()  # nothing was trained
    assert main(["inspect", "--run", str(out), "--target", "0", "--top", "2"]) == 0
    capsys.readouterr()
    # a checkpoint of another architecture is named, with what does not fit
    bad = tmp_path / "bad"
    assert main(["run", "--out", str(bad), *cfg_args, "--model", "resnet18", "--checkpoints", files[0]]) == 2
    assert "does not fit --model resnet18" in capsys.readouterr().err


def test_dropconnect_masks_each_weight_with_probability_p_and_leaves_the_rest():
    import torch

    from trakscope import dropconnect

    state = {"conv.weight": torch.randn(64, 32, 3, 3), "fc.bias": torch.randn(10),
             "bn.running_mean": torch.randn(64), "bn.num_batches_tracked": torch.tensor(7)}
    out = dropconnect(state, 0.3, seed=5, weights=["conv.weight"])
    w, m = state["conv.weight"], out["conv.weight"]
    kept = m != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01  # 18,432 weights: SE of the fraction ~0.003
    assert torch.allclose(m[kept], w[kept] / 0.7)
    for name in ("fc.bias", "bn.running_mean", "bn.num_batches_tracked"):
        assert out[name] is state[name]
    assert torch.equal(dropconnect(state, 0.3, seed=5, weights=["conv.weight"])["conv.weight"], m)  # seeded
    assert not torch.equal(dropconnect(state, 0.3, seed=6, weights=["conv.weight"])["conv.weight"], m)
    with pytest.raises(ValueError, match=r"--mask-p: must be in \(0, 1\), got 1"):
        dropconnect(state, 1.0, seed=0, weights=["conv.weight"])
    with pytest.raises(ValueError, match=r"weights \['fc.weight'\] are not in the state dict"):
        dropconnect(state, 0.3, seed=0, weights=["fc.weight"])


def test_dropconnect_masks_conv_and_linear_weights_and_nothing_else():
    """Decided by the model's modules: an embedding table, a LayerNorm and cls-token / position parameters (all
    floating, two or more dimensions, or one) keep their values; the conv and linear weights are masked."""
    import torch
    from torch import nn

    from trakscope import dropconnect

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.conv = nn.Embedding(50, 16), nn.Conv2d(3, 16, 3)
            self.cls_token, self.pos_embed = nn.Parameter(torch.randn(1, 1, 16)), nn.Parameter(torch.randn(1, 5, 16))
            self.norm, self.head = nn.LayerNorm(16), nn.Linear(16, 10)

    net = Net()
    state = net.state_dict()
    out = dropconnect(state, 0.3, seed=(0, 0, 0), weights=net)
    for name in ("emb.weight", "cls_token", "pos_embed", "norm.weight", "norm.bias", "conv.bias", "head.bias"):
        assert torch.equal(out[name], state[name]), name
    masked = torch.cat([out["conv.weight"].flatten(), out["head.weight"].flatten()])
    assert 0.2 < (masked == 0).float().mean().item() < 0.4  # 592 weights, p 0.3: SE of the fraction ~0.02
    by_name = dropconnect(state, 0.3, seed=(0, 0, 0), weights=["conv.weight", "head.weight"])
    assert all(torch.equal(out[k], by_name[k]) for k in state)  # the names of a bare state dict: the same masks


def test_masks_are_extra_checkpoints_the_same_as_importing_the_masked_files(tiny_run, tmp_path, capsys):
    """--masks 2: each member's final checkpoint and 2 DropConnect copies of it, featurized as checkpoints; the
    scores equal those of a run that imports the masked state dicts as files in the same order, and a damaged
    masked copy's features are featurized again on a rerun."""
    from trakscope import dropconnect
    from trakscope.attribution.masks import SEED_SCHEME
    from trakscope.attribution.store import TrakStore
    from trakscope.io import load_tensors, save_tensors
    from trakscope.run_folder import RunFolder as Folder

    files = [str(p) for p in Folder(tiny_run).checkpoint_paths()]
    out = tmp_path / "masked"
    assert main(["run", "--out", str(out), *TINY_RUN_ARGS, "--checkpoints", *files, "--masks", "2"]) == 0
    run = Folder(out)
    meta = json.loads(run.scores_meta_path.read_text())
    assert meta["checkpoints"] == 6
    weights = ["features.0.weight", "features.3.weight", "head.weight"]  # tiny_cnn's convs and head, not its norm
    assert meta["dropconnect"] == {"count": 2, "p": 0.3, "proj_seed": 0, "seed": SEED_SCHEME, "masked": weights}
    assert "dropconnect" not in json.loads(Folder(tiny_run).scores_meta_path.read_text())  # no --masks: as before
    masked = []
    for m, f in enumerate(files):  # ids 2.. : member m's mask d is seeded SeedSequence([trak.seed (0), m, d])
        for d in range(2):
            masked.append(str(tmp_path / f"m{m}_{d}.safetensors"))
            save_tensors(masked[-1], dropconnect(load_tensors(f), 0.3, seed=(0, m, d), weights=weights))
    ref = tmp_path / "as_files"
    assert main(["run", "--out", str(ref), *TINY_RUN_ARGS, "--checkpoints", *files, *masked]) == 0
    for name in ("test", "val", "self"):
        assert np.array_equal(run.results.scores(name), Folder(ref).results.scores(name))
    assert not np.allclose(run.results.scores("test"), Folder(tiny_run).results.scores("test"))  # masks changed them
    damaged = TrakStore(run.features_dir).split_files(5, "train")[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert main(["run", "--out", str(out)]) == 0
    assert "features/ckpt5/train.npy is damaged (size 100 bytes, expected" in capsys.readouterr().out
    assert np.array_equal(Folder(out).results.scores("test"), Folder(ref).results.scores("test"))
    with pytest.raises(SystemExit):
        main(["run", "--out", str(tmp_path / "bad"), *TINY_RUN_ARGS, "--masks", "-1"])
    assert "argument --masks: must be >= 0, got -1" in capsys.readouterr().err


def test_a_model_at_chance_level_is_warned_about(tmp_path, capsys):
    from trakscope.stages.run import chance_warning

    labels = np.repeat(np.arange(10), 20)
    assert chance_warning(0.12, labels) is not None and chance_warning(0.5, labels) is None
    args = [a for a in TINY_RUN_ARGS]
    args[args.index("--lr") + 1] = "1e-7"  # learns nothing
    args[args.index("--epochs") + 1] = "1"
    assert main(["run", "--out", str(tmp_path / "r"), *args]) == 0
    assert "warning: the ensemble is at chance level" in capsys.readouterr().err


def test_run_without_settings_resumes_the_folder_with_its_own(tiny_run, tmp_path, capsys):
    """`trakscope run --out DIR` (the command error messages suggest) resumes a folder made with other flags."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "scores" / "test.npy").stat().st_mtime_ns
    assert main(["run", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert "with the settings in its config.json" in capsys.readouterr().out
    assert (run / "scores" / "test.npy").stat().st_mtime_ns == before
