"""Checkpoints trained elsewhere (``run --checkpoints``): stopped when trakscope reads them wrongly, and their retrains
(cross-validation, removal, LDS) say and take the user's recipe."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from trakscope.cli import main
from trakscope.io import load_tensors, save_tensors
from trakscope.run_folder import RunFolder
from trakscope.stages.run import imported_accuracy_problem

from .conftest import TINY_RUN_ARGS


def _args(**changed: str) -> list[str]:
    """TINY_RUN_ARGS with some flags' values changed (``lr="1e-7"`` -> ``--lr 1e-7``)."""
    args = list(TINY_RUN_ARGS)
    for name, value in changed.items():
        args[args.index("--" + name.replace("_", "-")) + 1] = value
    return args


def _finals(tiny_run) -> list[str]:
    return [str(p) for p in RunFolder(tiny_run).checkpoint_paths()]


def test_imported_checkpoints_at_chance_stop_with_the_likely_causes(tiny_run, tmp_path, capsys):
    """The tiny run's checkpoints with their head's rows rolled (a class order that is not the model's) score at
    chance: run stops before featurizing, names preprocessing / class order / architecture, not "train longer";
    metrics.json stays; a rerun stops again; --accept-low-accuracy attributes them with a warning."""
    rolled = []
    for m, path in enumerate(_finals(tiny_run)):
        state = load_tensors(path)
        state["head.weight"], state["head.bias"] = state["head.weight"].roll(1, 0), state["head.bias"].roll(1, 0)
        rolled.append(str(tmp_path / f"rolled{m}.safetensors"))
        save_tensors(rolled[-1], state)
    out = tmp_path / "rolled"
    assert main(["run", "--out", str(out), *TINY_RUN_ARGS, "--checkpoints", *rolled]) == 2
    err = capsys.readouterr().err
    assert "the imported checkpoints score at chance (val accuracy" in err
    assert "class order" in err and "preprocessing" in err and "architecture" in err and "--accept-low-accuracy" in err
    assert "train longer" not in err and len(err.strip().splitlines()) == 1
    run = RunFolder(out)
    assert run.metrics_path.exists() and not run.features_dir.exists() and not run.scores_path("test").exists()
    assert main(["run", "--out", str(out)]) == 2  # the rerun does not continue silently
    assert "score at chance" in capsys.readouterr().err and not run.scores_path("test").exists()
    assert main(["run", "--out", str(out), "--accept-low-accuracy"]) == 0
    err = capsys.readouterr().err
    assert "warning: the imported checkpoints score at chance" in err and "train longer" not in err
    assert run.scores_path("test").exists()


def test_imported_checkpoints_far_below_their_recorded_accuracy_stop(tiny_run, tmp_path, capsys):
    """A checkpoint whose safetensors metadata records an accuracy far above what it scores here stops the run, and
    metrics.json keeps both numbers; one within 5 points of what it records passes; an unreadable value is named."""
    metrics = json.loads(RunFolder(tiny_run).metrics_path.read_text())
    own = [m["test_acc"] for m in metrics["models"]]
    files = []
    for m, path in enumerate(_finals(tiny_run)):
        files.append(str(tmp_path / f"m{m}.safetensors"))
        claimed = 0.99 if m == 1 else own[m]
        save_tensors(files[-1], load_tensors(path), metadata={"accuracy": str(claimed)})
    out = tmp_path / "claimed"
    assert main(["run", "--out", str(out), *TINY_RUN_ARGS, "--checkpoints", *files]) == 2
    err = capsys.readouterr().err
    assert f"imported checkpoint {files[1]} scores {own[1]:.3f} on test here, far below the accuracy 0.990" in err
    saved = json.loads(RunFolder(out).metrics_path.read_text())
    assert [r["recorded_acc"] for r in saved["models"]] == [pytest.approx(own[0]), 0.99]
    run = RunFolder(out)
    val, n_test = run.data.table("val")["true_label"], len(run.data.table("test")["index"])
    assert imported_accuracy_problem(saved, val, n_test) is not None
    saved["models"][1]["recorded_acc"] = own[1] + 0.05  # within 5 points: what it records, as far as a test split says
    assert imported_accuracy_problem(saved, val, n_test) is None
    save_tensors(files[0], load_tensors(_finals(tiny_run)[0]), metadata={"accuracy": "63%"})
    assert main(["run", "--out", str(tmp_path / "percent"), *TINY_RUN_ARGS, "--checkpoints", *files]) == 2
    assert "metadata accuracy='63%' is not a number in [0, 1]" in capsys.readouterr().err


@pytest.fixture(scope="module")
def imported_run(tiny_run, tmp_path_factory):
    """The tiny run's checkpoints imported into a folder whose own recipe learns nothing (--lr 1e-7, 1 epoch)."""
    out = tmp_path_factory.mktemp("imported") / "run"
    assert main(["run", "--out", str(out), *_args(lr="1e-7", epochs="1"), "--checkpoints", *_finals(tiny_run)]) == 0
    return out


def test_detect_on_imported_checkpoints_says_its_recipe_and_withholds_chance_probabilities(imported_run, capsys):
    """detect's cross-validation says it retrains with config.json's recipe, flags given and defaults marked; its
    out-of-sample probabilities are at chance, so cleanlab is left out (said, and absent from ranking.csv)."""
    capsys.readouterr()
    assert main(["detect", "--run", str(imported_run), "--folds", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ("cross-validation retrains with the recipe of config.json (--weights random (trakscope's default), "
            "--epochs 1, --lr 1e-07, --batch-size 32)") in out
    assert re.search(r"cleanlab left out: 2-fold out-of-sample accuracy 0\.\d+ is at chance \(majority class", out)
    assert "not used to choose or order suspects" in out
    with open(RunFolder(imported_run).ranking_path) as fh:
        header = next(csv.reader(fh))
    assert not any(h.startswith("cleanlab") for h in header)


def _removal(imported_run) -> None:
    """detect (without cleanlab, if detect has not run) and a one-seed random removal on the imported run."""
    if not RunFolder(imported_run).ranking_path.exists():
        assert main(["detect", "--run", str(imported_run), "--no-cleanlab", "--no-progress"]) == 0
    assert main(["removal", "--run", str(imported_run), "--fractions", "0.05", "--seeds", "1", "--strategies",
                 "random", "--no-progress"]) == 0


def test_removal_on_imported_checkpoints_sets_their_accuracy_beside_full_data(imported_run, capsys):
    """removal says its recipe, shows the imported checkpoints' own accuracy under the full-data row, and warns when
    the two are more than 5 points apart (a recipe that learns nothing against trained checkpoints)."""
    capsys.readouterr()
    _removal(imported_run)
    captured = capsys.readouterr()
    assert "removal retrains with the recipe of config.json (--weights random (trakscope's default)" in captured.out
    summary = json.loads(RunFolder(imported_run).removal_results_path.read_text())
    own = np.mean([m["test_acc"] for m in json.loads(RunFolder(imported_run).metrics_path.read_text())["models"]])
    assert summary["imported"]["test_acc"] == pytest.approx(own)
    assert f"| imported checkpoints (not retrained) | 0 | — | {own:.4f} |" in captured.out
    assert "points apart, so the retrains do not reproduce your model" in captured.err
    assert summary["reference"]["mean"] < own - 0.05


def test_report_describes_imported_checkpoints_as_imported(imported_run):
    """The model card says imported, not "random init · ensemble of 2 · 1 epochs"; the time card says import, not
    train; the removal section sets the checkpoints' accuracy beside full data, with the warning."""
    if not RunFolder(imported_run).removal_results_path.exists():
        _removal(imported_run)
    assert main(["report", "--run", str(imported_run)]) == 0
    html = RunFolder(imported_run).report_path.read_text()
    assert "imported · 2 checkpoints trained elsewhere" in html
    assert "init · ensemble of" not in html
    timings = RunFolder(imported_run).results.timings()
    assert "import" in timings and "train" not in timings
    assert re.search(r"import \d+s", html) and not re.search(r"train \d+s", html)
    assert "imported checkpoints (not retrained)" in html and "so the retrains do not reproduce your model" in html


class Centroids(nn.Module):
    """Nearest class mean in pixel space: logits ``-|x - mean_c|^2`` ``[b, C]``."""

    def __init__(self, means: torch.Tensor):
        super().__init__()
        self.register_buffer("means", means)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x.flatten(1), self.means) ** 2


CALLS: list[tuple[int, int]] = []


def centroid_recipe(dataset, keep: np.ndarray, seed: int, device: str) -> nn.Module:
    """A user's training function: class means of the kept training images (recorded in CALLS)."""
    CALLS.append((len(keep), seed))
    x = torch.cat([dataset.train.images.batch(keep[i:i + 64]) for i in range(0, len(keep), 64)]).flatten(1)
    y = torch.as_tensor(dataset.train.labels[keep])
    return Centroids(torch.stack([x[y == c].mean(0) for c in range(len(dataset.classes))]))


def test_a_train_fn_trains_every_retrain_and_keys_its_caches(imported_run, capsys):
    """run_removal, run_lds and compute_scores with a train_fn: it trains every retrain (the full-data reference
    too), the line names it, and its cached results are not those of config.json's recipe nor reused by it."""
    from trakscope.stages.detect import compute_scores
    from trakscope.stages.lds import run_lds
    from trakscope.stages.removal import run_removal

    run = RunFolder(imported_run)
    n_train = len(run.data.table("train")["index"])
    CALLS.clear()
    summary = run_removal(run, ("random",), (0.05,), seeds=1, progress=False, train_fn=centroid_recipe)
    assert CALLS == [(n_train, 0), (n_train - round(0.05 * n_train), 0)]  # full data and random, seed 0 each
    assert "removal retrains with your train_fn tests.test_imported.centroid_recipe" in capsys.readouterr().out
    assert summary["recipe"] == "train_fn tests.test_imported.centroid_recipe"
    assert summary["reference"]["mean"] > 0.5  # the class means learn digits; config.json's recipe does not
    assert "warning" not in summary["imported"] or summary["imported"]["full_minus_imported"] > -0.05
    CALLS.clear()
    run_removal(run, ("random",), (0.05,), seeds=1, progress=False, train_fn=centroid_recipe)
    assert CALLS == []  # cached, by this recipe
    theirs = run_removal(run, ("random",), (0.05,), seeds=1, progress=False)
    assert theirs["reference"]["mean"] != summary["reference"]["mean"]  # config.json's recipe retrained its own
    result = run_lds(run, k=3, max_targets=5, progress=False, out=imported_run / "lds_fn.json",
                     train_fn=centroid_recipe)
    assert len(CALLS) == 3 and result["recipe"] == "train_fn tests.test_imported.centroid_recipe"
    with pytest.raises(ValueError, match="set the epochs inside your train_fn"):
        run_lds(run, k=3, epochs=2, progress=False, train_fn=centroid_recipe)
    CALLS.clear()
    det = compute_scores(run, cleanlab_folds=2, progress=False, scorers=["cleanlab"], train_fn=centroid_recipe)
    assert len(CALLS) == 2 and "cleanlab" in det.scores and det.info["left_out"] == {}
