"""Suggested labels, the label-issues table, and relabel strategies next to removal."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import trakscope
from trakscope.methods import registry
from trakscope.methods.labels import issue_table, suggested_labels, suggestion_accuracy, suggestion_quality
from trakscope.methods.removal import (
    relabel_versus_remove,
    relabeled_labels,
    remove_and_retrain,
    select_removed,
    summarize,
)

RANKING = {
    "index": np.arange(10),
    "noisy": np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1], dtype=bool),
    "loss": np.array([0.1, 2.0, 0.2, 0.3, 1.5, 0.2, 0.0, 0.1, 0.1, 1.0]),
    "label": np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]),
    "suggested_label": np.array([0, 2, 2, 0, 1, 2, 0, 1, 2, 1]),
}


def test_suggested_label_is_the_most_probable_class_with_its_probability():
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]])
    labels, prob = suggested_labels(probs)
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(prob, [0.7, 0.5])
    with pytest.raises(ValueError, match="C >= 2"):
        suggested_labels(np.ones(3))


def test_suggestion_accuracy_by_hand():
    suggested = np.array([1, 0, 2, 2, 0])
    true = np.array([1, 1, 2, 0, 0])
    flagged = np.array([1, 1, 1, 0, 0], dtype=bool)
    wrong = np.array([1, 1, 0, 1, 0], dtype=bool)
    q = suggestion_accuracy(suggested, true, flagged, wrong)
    assert q["n_flagged"] == 3 and q["n_flagged_wrong"] == 2
    assert q["suggestion_correct_on_wrong"] == 0.5  # example 0 right, example 1 wrong
    assert q["suggestion_correct"] == pytest.approx(2 / 3)  # examples 0 and 2 of the three flagged
    empty = suggestion_accuracy(suggested, true, np.zeros(5, dtype=bool), wrong)
    assert math.isnan(empty["suggestion_correct"]) and math.isnan(empty["suggestion_correct_on_wrong"])
    # the top 40% by suspicion are examples 4 and 3
    top = suggestion_quality(np.array([0, 1, 2, 3, 4.0]), suggested, true, wrong, fractions=(0.4,))["top 40%"]
    assert top["n_flagged"] == 2 and top["n_flagged_wrong"] == 1 and top["suggestion_correct_on_wrong"] == 0.0


def _noisy_probs(n: int = 300, classes: int = 3, seed: int = 0):
    """Probabilities that know the true label, and 10% of the labels flipped: (labels, true, probs, noisy)."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, n)
    probs = np.full((n, classes), 0.1 / (classes - 1))
    probs[np.arange(n), true] = 0.9
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.choice(n, n // 10, replace=False)] = True
    labels = np.where(noisy, (true + 1) % classes, true)
    return labels, true, probs, noisy


def test_issue_table_flags_the_planted_noise_and_suggests_the_true_label():
    labels, true, probs, noisy = _noisy_probs()
    table = issue_table(labels, probs, classes=["a", "b", "c"])
    assert list(table.columns[:3]) == ["is_label_issue", "label_quality", "given_label"]
    assert {"suggested_label", "suggested_label_name", "suggested_prob", "self_confidence_score"} <= set(table)
    np.testing.assert_array_equal(table["is_label_issue"], noisy)  # the confident joint counts 30 issues here
    np.testing.assert_array_equal(table["suggested_label"], true)
    np.testing.assert_allclose(table["label_quality"], probs[np.arange(len(labels)), labels])
    assert table["given_label_name"].iloc[0] == "abc"[labels[0]]


def test_issue_table_follows_the_given_scores_and_count():
    labels, _, probs, noisy = _noisy_probs()
    scores = np.arange(len(labels), dtype=float)  # high = suspicious: the last five
    table = issue_table(labels, probs, scores, worse_is_high=True, scorer="mine", num_issues=5)
    np.testing.assert_array_equal(np.flatnonzero(table["is_label_issue"]), np.arange(len(labels) - 5, len(labels)))
    assert table["inspect_rank"].iloc[-1] == 1 and table["label_quality"].iloc[-1] == 0.0
    assert table["label_quality"].iloc[0] == 1.0
    np.testing.assert_array_equal(table["mine_score"], scores)
    with pytest.raises(ValueError, match="scores must be"):
        issue_table(labels, probs, scores[:3])


def test_label_issues_api_takes_arrays_and_a_registered_scorers_direction():
    labels, _, probs, noisy = _noisy_probs()
    loss = -np.log(probs[np.arange(len(labels)), labels])
    table = trakscope.label_issues(labels=labels, pred_probs=probs, scores=loss, scorer="loss")
    assert "loss_score" in table
    np.testing.assert_array_equal(table["is_label_issue"], noisy)  # loss: high = suspicious, from the registry
    with pytest.raises(ValueError, match="either a run folder"):
        trakscope.label_issues(labels=labels)


def test_every_ranked_removal_has_a_relabel_twin_with_the_same_selection():
    twins = {s.relabels: s for s in registry.STRATEGIES.values() if s.relabels}
    assert {"random", "loss", "aum", "trak-loo", "cleanlab", "negative"} <= set(twins)
    assert "positive" not in twins and "d3m-heuristic" not in twins
    assert registry.strategy("relabel_trak_loo").name == "relabel-trak-loo"
    assert registry.strategy("relabel_d3m").name == "relabel-negative"
    for strategy, seed in (("loss", 0), ("random", 3)):
        np.testing.assert_array_equal(select_removed(f"relabel-{strategy}", 0.3, RANKING, seed),
                                      select_removed(strategy, 0.3, RANKING, seed))


def test_relabeled_labels_give_the_selection_its_suggestion():
    selected = select_removed("relabel-loss", 0.3, RANKING)  # 1, 4, 9
    labels = relabeled_labels("relabel-loss", selected, RANKING)
    np.testing.assert_array_equal(labels, [0, 2, 2, 0, 1, 2, 0, 1, 2, 1])
    assert relabeled_labels("loss", selected, RANKING) is None
    with pytest.raises(ValueError, match="rerun `trakscope detect`"):
        relabeled_labels("relabel-loss", selected, {"index": RANKING["index"], "loss": RANKING["loss"]})


def test_remove_and_retrain_trains_a_relabel_on_every_row_with_the_new_labels():
    calls = []

    def evaluate(job, keep, seed, labels=None):
        calls.append((job.strategy, len(keep), None if labels is None else labels.copy()))
        return 0.5 if labels is None else 0.6

    true = np.where(RANKING["noisy"], RANKING["suggested_label"], RANKING["label"])
    out = remove_and_retrain(RANKING, evaluate, strategies=("loss", "relabel-loss"), fractions=(0.3,), seeds=2,
                             noisy=RANKING["noisy"], true_labels=true)
    by = {s: (n, lab) for s, n, lab in calls}
    assert by["loss"][0] == 7 and by["loss"][1] is None and by["relabel-loss"][0] == 10
    np.testing.assert_array_equal(by["relabel-loss"][1], [0, 2, 2, 0, 1, 2, 0, 1, 2, 1])
    row = next(r for r in out["rows"] if r["strategy"] == "relabel-loss")
    assert row["action"] == "relabel" and row["n_corrected"] == 3
    [versus] = out["relabel_vs_remove"]
    assert versus["relabel"] == "relabel-loss" and versus["remove"] == "loss"
    assert versus["delta"] == pytest.approx(0.1) and versus["se"] == 0.0 and versus["n_seeds"] == 2


def test_relabel_versus_remove_is_paired_over_the_seeds_both_ran():
    rows = [{"strategy": "aum", "fraction": 0.1, "n_removed": 1, "n_noisy_removed": 1, "test_acc": 0.5 + 0.1 * s,
             "seed": s, "removed_sha256": "", "worst_group_acc": None} for s in (0, 1, 2)]  # seeds differ a lot
    rows += [{"strategy": "relabel-aum", "fraction": 0.1, "n_removed": 1, "n_noisy_removed": 1, "seed": s,
              "test_acc": 0.5 + 0.1 * s + d, "removed_sha256": "", "worst_group_acc": None, "action": "relabel"}
             for s, d in ((0, 0.01), (1, 0.03))]
    summary = summarize(rows, [{"seed": s, "test_acc": 0.5} for s in (0, 1, 2)], 10, 1)
    [versus] = summary["relabel_vs_remove"]
    assert versus["n_seeds"] == 2 and versus["delta"] == pytest.approx(0.02)
    assert versus["se"] == pytest.approx(0.01)  # std(0.01, 0.03; ddof 1) / sqrt 2
    assert relabel_versus_remove([r for r in summary["rows"] if r["strategy"] == "aum"]) == []


def test_detect_suggests_labels_removal_relabels_export_and_label_issues(tiny_run, tmp_path, monkeypatch, capsys):
    from trakscope.cli import main
    from trakscope.io import read_csv
    from trakscope.run_folder import RunFolder
    from trakscope.stages import removal

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the fixture's folder is shared: work on a copy
    assert main(["detect", "--run", str(run), "--folds", "2", "--no-progress", "--device", "cpu"]) == 0
    rows = read_csv(run / "detect" / "ranking.csv")
    folder = RunFolder(run)
    classes = folder.classes
    assert all(r["suggestion_source"] == "out_of_sample" for r in rows)  # cleanlab's k-fold probabilities
    assert all(r["suggested_label_name"] == classes[int(r["suggested_label"])] for r in rows)
    assert all(0.0 < float(r["suggested_prob"]) <= 1.0 for r in rows)
    metrics = json.loads((run / "detect" / "metrics.json").read_text())
    sug = metrics["suggestions"]
    assert sug["source"] == "out_of_sample" and sug["scorer"] == metrics["primary"]
    top = sug["planted"]["top 10%"]
    assert top["n_flagged"] == 20 and 0 < top["n_flagged_wrong"] <= 20
    assert 0.0 <= top["suggestion_correct_on_wrong"] <= 1.0
    assert "suggestion right" in capsys.readouterr().out

    trained_with = []

    def spy(run_folder, keep, seed, device="cpu", progress=True, labels=None, train_fn=None):
        trained_with.append((keep, labels))
        return np.ones(len(run_folder.data.table("test")["label"]), dtype=bool)

    monkeypatch.setattr(removal, "correct_on_test", spy)
    args = ["removal", "--run", str(run), "--fractions", "0.1", "--strategies", "loss,relabel-loss", "--seeds", "1",
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    given = folder.data.table("train")["label"]
    [(keep_removed, none), (keep_all, labels)] = trained_with
    assert len(keep_removed) == 180 and none is None and keep_all is None
    changed = np.flatnonzero(labels != given)
    suggested = np.array([int(r["suggested_label"]) for r in sorted(rows, key=lambda r: int(r["index"]))])
    np.testing.assert_array_equal(labels[changed], suggested[changed])
    assert set(changed) <= set(np.setdiff1d(np.arange(200), keep_removed))  # only the loss selection changes
    results = json.loads((run / "removal" / "results.json").read_text())
    assert results["relabel_vs_remove"][0]["remove"] == "loss"
    assert "relabel instead of remove" in capsys.readouterr().out
    trained_with.clear()
    assert main(args) == 0 and trained_with == []  # both retrains are cached

    assert main(["export", "--run", str(run), "--strategy", "relabel-loss", "--fraction", "0.1"]) == 0
    keep = read_csv(run / "export" / "keep_relabel-loss_0.1.csv")
    relabeled = read_csv(run / "export" / "removed_relabel-loss_0.1.csv")
    train_keep = [r for r in keep if r["split"] == "train"]  # the pool's validation carve-out follows (split=val)
    assert len(train_keep) == 200 and len(relabeled) == len(changed)
    assert all(int(train_keep[int(r["index"])]["label"]) == int(r["suggested_label"]) for r in relabeled)
    assert main(["export", "--run", str(run), "--strategy", "loss", "--fraction", "0.1"]) == 0
    removed = read_csv(run / "export" / "removed_loss_0.1.csv")
    assert all(r["suggested_label"] == str(suggested[int(r["index"])]) for r in removed)

    table = trakscope.label_issues(run)
    assert len(table) == 200 and f"{metrics['primary']}_score" in table
    assert (table["suggestion_source"] == "out_of_sample").all()
    np.testing.assert_array_equal(table["suggested_label"], suggested)
    assert table["is_label_issue"].sum() > 0


def test_report_shows_suggested_labels_and_relabel_against_remove(tmp_path):
    from tests.test_report import make_run, page_data
    from trakscope.report import sections
    from trakscope.report.html import render
    from trakscope.run_folder import RunFolder
    from trakscope.stages.detect import Detection, quality_metrics, ranking_rows

    run = RunFolder(make_run(tmp_path / "run"))
    rng = np.random.default_rng(0)
    n = len(run.data.table("train")["index"])
    suggested, prob = suggested_labels(rng.dirichlet(np.ones(len(run.classes)), n))
    det = Detection({"loss": rng.normal(size=n)}, suggested, {"groups": "classes", "n_groups": 4},
                    suggested=suggested, suggested_prob=prob, suggestion_source="out_of_sample")
    run.results.write_ranking(*ranking_rows(run, det))
    run.results.write(run.detect_metrics_path, "detect_metrics", quality_metrics(run, det))
    html = render(run)
    data = page_data(html)
    assert data["suspects"]["suggested"] == suggested.tolist()
    assert data["suspects"]["suggestion_source"] == "out_of_sample"
    assert "<h3>Suggested labels</h3>" in html and "k-fold out-of-sample" in html

    rows = [{"strategy": s, "fraction": 0.1, "seed": seed, "n_removed": 15, "n_noisy_removed": 5,
             "test_acc": 0.8 + 0.01 * seed + (0.02 if s.startswith("relabel") else 0.0),
             **({"action": "relabel", "n_corrected": 3 + seed % 2} if s.startswith("relabel") else {})}
            for s in ("aum", "relabel-aum") for seed in (0, 1, 2)]
    results = summarize(rows, [{"seed": s, "test_acc": 0.8} for s in (0, 1, 2)], 150, 15)
    part = sections.removal_section(results, "RUN")
    assert "<h3>Relabel instead of remove</h3>" in part and "<td>relabel-aum</td><td>aum</td>" in part
    assert "<td>0.020</td>" in part  # relabel minus remove, the same seeds
    assert "<td>3.3 of 5</td>" in part  # the relabel row's planted wrong labels given their true label (mean)


def test_readme_label_issues_block_runs_and_finds_the_flips(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```python\n([^`]*?label_issues\(labels=.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - the README's own code
    flagged, flipped = ns["flagged"], ns["flipped"]
    assert np.isin(flagged.index, flipped).mean() > 0.8  # the flagged are mostly the flipped labels
    assert (flagged.suggested_label == ns["digits"].target[flagged.index]).mean() > 0.8
    assert "flagged" in capsys.readouterr().out
