"""Removal selection, result summaries, and one end-to-end detect + removal + export run on tiny data."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from trakscope.methods.removal import (
    mean_se,
    plan_jobs,
    planned_evaluations,
    remove_and_retrain,
    select_removed,
    summarize,
    worst_group_accuracy,
)
from trakscope.run_folder import RunFolder
from trakscope.stages import removal

RANKING = {
    "index": np.arange(10),
    "noisy": np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1], dtype=bool),
    "val_all": np.array([5.0, -3, 1, 2, -1, 0, 9, 4, 3, -2]),
    "d3m": np.array([0.5, -0.3, 0.1, 0.2, -0.1, 0.0, 0.9, 0.4, 0.3, -0.2]),
    "loss": np.array([0.1, 2.0, 0.2, 0.3, 1.5, 0.2, 0.0, 0.1, 0.1, 1.0]),
    "self_influence": np.arange(10.0),
}


def test_ranked_strategies_take_their_top_k():
    np.testing.assert_array_equal(select_removed("positive", 0.2, RANKING), [0, 6])  # val_all 9 and 5
    np.testing.assert_array_equal(select_removed("negative", 0.3, RANKING), [1, 4, 9])  # lowest d3m
    np.testing.assert_array_equal(select_removed("val-negative", 0.2, RANKING), [1, 9])
    np.testing.assert_array_equal(select_removed("loss", 0.2, RANKING), [1, 4])
    np.testing.assert_array_equal(select_removed("self_influence", 0.1, RANKING), [9])
    assert len(select_removed("negative", 0.0, RANKING)) == 0


def test_d3m_heuristic_removes_negative_scores_whatever_the_fraction():
    np.testing.assert_array_equal(select_removed("d3m-heuristic", 0.0, RANKING), [1, 4, 9])
    np.testing.assert_array_equal(select_removed("d3m-heuristic", 0.5, RANKING), [1, 4, 9])


def test_random_is_seeded_and_sized():
    a, b = select_removed("random", 0.3, RANKING, seed=1), select_removed("random", 0.3, RANKING, seed=1)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 3 and len(np.unique(a)) == 3
    draws = {tuple(select_removed("random", 0.3, RANKING, seed=s)) for s in range(10)}
    assert len(draws) > 1


def test_bad_requests():
    with pytest.raises(ValueError, match="no-cleanlab"):
        select_removed("cleanlab", 0.1, RANKING)
    with pytest.raises(ValueError):
        select_removed("best", 0.1, RANKING)
    with pytest.raises(ValueError):
        select_removed("negative", 1.0, RANKING)
    with pytest.raises(ValueError):
        plan_jobs(("negative",), (0.1,), seeds=0)


def test_plan_jobs_is_seed_major_with_one_heuristic_point():
    jobs = plan_jobs(("negative", "d3m-heuristic"), (0.01, 0.05), seeds=2)
    assert [j.key for j in jobs] == ["negative_0.01_s0", "negative_0.05_s0", "d3m-heuristic_all_s0",
                                     "negative_0.01_s1", "negative_0.05_s1", "d3m-heuristic_all_s1"]


def test_mean_and_standard_error():
    assert mean_se([0.5]) == (0.5, None)
    mean, se = mean_se([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and se == pytest.approx(0.1 / math.sqrt(3))


def test_summarize_groups_seeds():
    results = [{"strategy": "negative", "fraction": 0.1, "seed": s, "n_removed": 10, "n_noisy_removed": k,
                "test_acc": a} for s, k, a in [(0, 6, 0.9), (1, 8, 0.8)]]
    refs = [{"seed": 0, "test_acc": 0.85, "source": "x"}, {"seed": 1, "test_acc": 0.75, "source": "x"}]
    out = summarize(results, refs, n_train=100, n_noisy=10)
    (row,) = out["rows"]
    assert row["mean"] == pytest.approx(0.85) and row["n_noisy_removed"] == 7
    assert row["delta_vs_full"] == pytest.approx(0.05) and row["removed_fraction"] == pytest.approx(0.1)
    assert out["reference"]["se"] == pytest.approx(0.05)
    assert row["paired_delta"] == pytest.approx(0.05) and row["paired_se"] == pytest.approx(0.0)


def test_paired_difference_removes_the_shared_seed_spread():
    # seeds differ a lot, the strategy adds +0.01, +0.03 to its own seed's full-data model
    results = [{"strategy": "loss", "fraction": 0.1, "seed": s, "n_removed": 1, "n_noisy_removed": 0, "test_acc": a,
                "worst_group_acc": w} for s, a, w in [(0, 0.71, 0.5), (1, 0.93, 0.7)]]
    refs = [{"seed": 0, "test_acc": 0.70, "worst_group_acc": 0.4}, {"seed": 1, "test_acc": 0.90,
                                                                     "worst_group_acc": 0.7}]
    (row,) = summarize(results, refs, n_train=10, n_noisy=0)["rows"]
    assert row["se"] == pytest.approx(0.11)  # the row's own SE is dominated by the seeds
    assert row["paired_delta"] == pytest.approx(0.02) and row["paired_se"] == pytest.approx(0.01)
    assert row["worst_group_mean"] == pytest.approx(0.6)
    assert row["worst_group_paired_delta"] == pytest.approx(0.05)
    assert row["worst_group_paired_se"] == pytest.approx(0.05)


def test_worst_group_accuracy_by_hand():
    correct = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    assert worst_group_accuracy(correct, np.array([0, 0, 1, 1, 2, 2])) == 0.0
    assert worst_group_accuracy(correct, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        worst_group_accuracy(correct, np.array([0, 1]))


def test_remove_and_retrain_accepts_floats_and_per_example_correctness():
    ranking = {"index": np.arange(10), "loss": np.arange(10.0)}
    groups = np.array([0, 0, 1, 1])

    def as_float(job, keep, seed):  # a user's recipe that returns plain accuracy still works
        return 0.5 + 0.01 * len(keep) / 10 + 0.1 * seed

    out = remove_and_retrain(ranking, as_float, strategies=("loss",), fractions=(0.2,), seeds=2, test_groups=groups)
    (row,) = out["rows"]
    assert row["paired_delta"] == pytest.approx(-0.002) and "worst_group_mean" not in row

    def with_correct(job, keep, seed):
        correct = np.array([1, 1, 1, 0], bool) if len(keep) == 10 else np.array([1, 0, 1, 1], bool)
        return {"test_acc": correct.mean(), "correct": correct}

    out = remove_and_retrain(ranking, with_correct, strategies=("loss",), fractions=(0.2,), seeds=2,
                             test_groups=groups)
    (row,) = out["rows"]
    assert out["reference"]["worst_group_mean"] == pytest.approx(0.5)
    assert row["worst_group_mean"] == pytest.approx(0.5) and row["worst_group_paired_delta"] == pytest.approx(0.0)
    assert row["paired_delta"] == pytest.approx(0.0)


def test_planned_evaluations_are_the_calls_remove_and_retrain_makes():
    """What a caller may run ahead (e.g. shared out over torchrun ranks) is exactly what the loop asks for."""
    calls = []

    def record(job, keep, seed):
        calls.append((job, seed, np.setdiff1d(np.arange(10), keep).tolist()))
        return 0.5

    strategies, fractions = ("random", "loss", "negative"), (0.1, 0.2)
    kwargs = {"strategies": strategies, "fractions": fractions, "seeds": 2, "base_seed": 7}
    remove_and_retrain(RANKING, record, **kwargs)
    plan = [(job, seed, removed.tolist()) for job, seed, removed in planned_evaluations(RANKING, **kwargs)]
    assert plan == calls
    assert [(j.strategy, s) for j, s, _ in plan if j.strategy == "full"] == [("full", 7), ("full", 8)]
    assert [j for j, _, _ in plan if j.strategy != "full"] == plan_jobs(strategies, fractions, 2)


def test_detect_removal_export_end_to_end(tiny_run, tmp_path, monkeypatch, capsys):
    from trakscope.cli import main
    from trakscope.io import read_csv

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the fixture's folder is shared: work on a copy
    assert main(["detect", "--run", str(run), "--folds", "2", "--no-progress", "--device", "cpu"]) == 0
    rows = read_csv(run / "detect" / "ranking.csv")
    train = read_csv(run / "data" / "train.csv")
    assert sorted(int(r["index"]) for r in rows) == list(range(len(train)))
    metrics = json.loads((run / "detect" / "metrics.json").read_text())
    assert set(metrics["scorers"]) == {"self_influence", "val_same_label", "val_all", "d3m", "loss", "cleanlab", "aum",
                                       "trak_loo"}  # trak_loo_leverage is opt-in (detect --leverage)
    assert metrics["scorers"]["d3m"]["roc_auc"] > 0.5  # planted noise ranks above chance, even on tiny data
    assert (run / "detect" / "crossval" / "fold1.npy").exists()
    assert "| d3m |" in capsys.readouterr().out

    args = ["removal", "--run", str(run), "--fractions", "0.1", "--strategies", "negative,random", "--seeds", "1",
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    results = json.loads((run / "removal" / "results.json").read_text())
    assert {r["strategy"] for r in results["rows"]} == {"negative", "random"}
    assert all(0.0 <= r["mean"] <= 1.0 and r["n_removed"] == 20 for r in results["rows"])
    # worst-class accuracy beside overall accuracy, for the reference and every row (one seed: no paired SE)
    assert results["test_groups"] == "classes" and results["n_test_groups"] == len(RunFolder(run).classes)
    assert all(r["worst_group_mean"] <= r["mean"] and r["paired_se"] is None for r in results["rows"])
    assert results["reference"]["worst_group_mean"] <= results["reference"]["mean"]
    # the full-data reference is ensemble member 0 (same seed, data and recipe), not a second identical training
    assert results["reference"]["source"] == ["ensemble member 0"]
    assert removal.accuracy_on_test(RunFolder(run), None, results["reference"]["seeds"][0], progress=False) == \
        results["reference"]["test_acc"][0]
    assert (run / "removal" / "accuracy_vs_fraction.png").stat().st_size > 1000

    # finished retrains are cached: a rerun trains nothing
    def no_training(*a, **k):
        raise AssertionError("retrained a cached job")

    monkeypatch.setattr(removal, "correct_on_test", no_training)  # what every retrain calls
    assert main(args) == 0
    assert json.loads((run / "removal" / "results.json").read_text())["rows"] == results["rows"]

    assert main(["export", "--run", str(run), "--strategy", "negative", "--fraction", "0.1"]) == 0
    keep = read_csv(run / "export" / "keep_negative_0.1.csv")
    removed = read_csv(run / "export" / "removed_negative_0.1.csv")
    assert len(keep) + len(removed) == len(train) and len(removed) == 20
    assert not {r["index"] for r in keep} & {r["index"] for r in removed}
    assert all(r["reason"].startswith("d3m=") for r in removed)
    classes = RunFolder(run).classes
    assert all(r["label_name"] == classes[int(r["label"])] for r in keep + removed)
    assert all(r["ground_truth"] == "planted" and r["true_label_name"] == classes[int(r["true_label"])]
               for r in removed)


def test_default_strategies_drop_cleanlab_when_detect_skipped_it(tiny_run, tmp_path, monkeypatch, capsys):
    from trakscope.cli import main
    from trakscope.commands import removal as removal_cmd

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["detect", "--run", str(run), "--no-cleanlab", "--no-progress", "--device", "cpu"]) == 0
    seen = {}

    def fake_run_removal(run_folder, strategies, fractions, seeds, device, progress, groups):
        seen["strategies"] = strategies
        return {"n_noisy": 0, "n_train": 0, "rows": [], "reference": {"mean": 0.0, "se": None}}

    monkeypatch.setattr(removal_cmd, "run_removal", fake_run_removal)
    monkeypatch.setattr(removal_cmd, "removal_table", lambda summary: "")
    monkeypatch.setattr(removal_cmd, "removal_png", lambda summary, path: path.parent.mkdir() or path.touch())
    assert main(["removal", "--run", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert "cleanlab" not in seen["strategies"] and "negative" in seen["strategies"]
    assert "cleanlab strategy skipped" in capsys.readouterr().out


def test_worst_group_test_groups_from_classes_or_a_groups_file(tiny_run, tmp_path):
    run = RunFolder(tiny_run)
    val, test = run.data.table("val"), run.data.table("test")
    groups, what = removal.test_groups(run, "classes")
    np.testing.assert_array_equal(groups, test["label"])
    assert what == "classes"
    rows = [f"{i},val,{int(y) % 2}" for i, y in enumerate(val["label"])]
    only_val = tmp_path / "val.csv"
    only_val.write_text("index,split,group\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="maps no test examples"):
        removal.test_groups(run, str(only_val))
    both = tmp_path / "both.csv"
    both.write_text("index,split,group\n" + "\n".join(rows + [f"{i},test,{int(y) % 2}"
                                                            for i, y in enumerate(test["label"])]) + "\n")
    groups, what = removal.test_groups(run, str(both))
    np.testing.assert_array_equal(groups, test["label"] % 2)
    assert what == str(both)


def test_a_short_last_batch_joins_the_one_before():
    from trakscope.data import batch_slices

    def sizes(n, bs, merge=True):
        return [s.stop - s.start for s in batch_slices(n, bs, merge_short=merge)]

    # 450 = 14 x 32 + 2: a batch of 2 with BatchNorm on 1 x 1 features wrecked every retrain (0.34 vs 0.81 test acc)
    assert sizes(450, 32) == [32] * 13 + [34] and sizes(450, 32, merge=False) == [32] * 14 + [2]
    assert sizes(464, 32) == [32] * 13 + [48]  # a remainder of exactly half a batch still joins: at most 1.5 x 32
    assert sizes(465, 32) == [32] * 14 + [17]  # more than half a batch trains on its own
    assert sizes(448, 32) == [32] * 14 and sizes(20, 32) == [20] and sizes(0, 32) == []
    assert sizes(5, 2) == [2, 3]  # never a batch of one where there is another batch
    for n in range(1, 200):
        cuts = batch_slices(n, 16, merge_short=True)
        assert cuts[0].start == 0 and cuts[-1].stop == n and all(a.stop == b.start for a, b in zip(cuts, cuts[1:]))
        assert all(8 < c.stop - c.start <= 24 for c in cuts) or len(cuts) == 1


@pytest.mark.parametrize("kept", [33, 34])
def test_training_sees_every_example_once_per_epoch_whatever_the_last_batch(kept, monkeypatch):
    # 33 = 4 x 8 + 1 and 34 = 4 x 8 + 2: BatchNorm on 1 x 1 features refused a batch of one, and a batch of two
    # corrupted its statistics; the remainder now joins the batch before it
    import torch

    from trakscope.config import DataConfig, ModelConfig, TrainConfig
    from trakscope.data import load_dataset
    from trakscope.train import MarginRecorder, train_model, trainer

    fed = []
    call = trainer.call_model
    monkeypatch.setattr(trainer, "call_model", lambda model, x: fed.append(len(x)) or call(model, x))
    ds = load_dataset(DataConfig(dataset="digits", max_train=40, image_size=16))
    margins = MarginRecorder(len(ds.train))
    recipe = TrainConfig(epochs=2, batch_size=8, augment=False, checkpoints_per_model=1)
    states = train_model(ModelConfig(name="timm:test_resnet"), recipe,
                         ds, seed=0, keep=np.arange(kept), progress=False, margins=margins)
    assert len(states) == 1 and all(torch.isfinite(v.float()).all() for v in states[0].values())
    assert fed == [8, 8, 8, kept - 24] * 2  # the 1 or 2 left over train with the last full batch
    np.testing.assert_array_equal(margins.count, np.r_[np.full(kept, 2), np.zeros(40 - kept)])  # once per epoch
    assert np.isfinite(margins.aum()[:kept]).all() and np.isnan(margins.aum()[kept:]).all()
