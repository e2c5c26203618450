"""The scorer registry is the one place a scorer lives: one entry reaches detect's ranking, metrics and help."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from trakscope.cli import build_parser, main
from trakscope.io import read_csv
from trakscope.methods import registry
from trakscope.methods.metrics import roc_auc
from trakscope.run_folder import RunFolder
from trakscope.stages import detect as detect_stage

DETECT = ["--no-progress", "--device", "cpu"]


def _help(capsys, *argv: str) -> str:
    """``trakscope ARGV --help`` as printed, with argparse's line wrapping undone."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(re.sub(r"(?<=\w-)\n\s*", "", capsys.readouterr().out).split())  # "out-\nof" was one word


def _copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the fixture's folder is shared: work on a copy
    return run


def test_one_register_entry_and_one_provider_reach_ranking_metrics_and_help(tiny_run, tmp_path, monkeypatch, capsys):
    # a scorer reading an input no scorer read before: its entry, and the input's provider, and nothing else
    monkeypatch.setitem(detect_stage.PROVIDERS, "train_index", lambda src, _: src.run.data.table("train")["index"])
    monkeypatch.setitem(registry.SCORERS, "index_order", registry.Scorer(
        "index_order", lambda i: i["train_index"].astype(np.float64), True, "the example's index (high = suspicious)",
        ("train_index",)))
    run = _copy(tiny_run, tmp_path)
    assert main(["detect", "--run", str(run), "--no-cleanlab", *DETECT]) == 0
    out = capsys.readouterr().out
    assert "  index_order: the example's index (high = suspicious)" in out
    assert re.search(r"^\| index_order \| [0-9.]+ \|", out, re.M)  # the printed detection table

    rows = sorted(read_csv(run / "detect" / "ranking.csv"), key=lambda r: int(r["index"]))
    n = len(rows)
    assert [float(r["index_order_score"]) for r in rows] == list(range(n))
    assert [int(r["index_order_rank"]) for r in rows] == list(range(n, 0, -1))  # highest index inspected first
    metrics = json.loads((run / "detect" / "metrics.json").read_text())
    noisy = RunFolder(run).data.table("train")["noisy"].astype(bool)
    assert metrics["scorers"]["index_order"]["roc_auc"] == pytest.approx(roc_auc(np.arange(n), noisy))
    assert metrics["descriptions"]["index_order"] == "the example's index (high = suspicious)"
    assert "index_order: the example's index (high = suspicious)" in _help(capsys, "detect")


def test_find_label_issues_runs_once_per_detect(tiny_run, tmp_path, monkeypatch, capsys):
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    calls = []
    real = cleanlab_filter.find_label_issues

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cleanlab_filter, "find_label_issues", counting)
    # the in-sample probabilities stand in for the k-fold ones: what is counted is cleanlab, not the retraining
    monkeypatch.setattr(detect_stage, "out_of_sample_probs", lambda run, k, **_: run.results.probs("train"))
    run = _copy(tiny_run, tmp_path)
    assert main(["detect", "--run", str(run), "--folds", "2", *DETECT]) == 0
    assert len(calls) == 1
    rows = read_csv(run / "detect" / "ranking.csv")
    metrics = json.loads((run / "detect" / "metrics.json").read_text())
    flagged = sum(int(r["cleanlab_issue"]) for r in rows)
    assert metrics["cleanlab"]["n_issues"] == flagged and metrics["cleanlab"]["folds"] == 2
    assert f"cleanlab find_label_issues flags {flagged} examples (2-fold" in capsys.readouterr().out


def test_each_input_is_computed_once_and_only_when_a_scorer_that_runs_needs_it(tiny_run, tmp_path, monkeypatch):
    calls: dict[str, int] = {}

    def counted(name, provider):
        def provide(src, inputs):
            calls[name] = calls.get(name, 0) + 1
            return provider(src, inputs)
        return provide

    for name, provider in list(detect_stage.PROVIDERS.items()):
        monkeypatch.setitem(detect_stage.PROVIDERS, name, counted(name, provider))

    def no_crossval(*args, **kwargs):
        raise AssertionError("cross-validated retraining ran for scorers that were left out")

    monkeypatch.setattr(detect_stage, "out_of_sample_probs", no_crossval)
    run = RunFolder(_copy(tiny_run, tmp_path))
    det = detect_stage.compute_scores(run, progress=False, scorers=("val_all", "val_same_label", "d3m"))
    assert list(det.scores) == ["val_same_label", "val_all", "d3m"]  # registry order
    assert calls["val_scores"] == 1  # read by three scorers and by the D3M groups
    assert "oos_probs" not in calls and "aum" not in calls and "self_scores" not in calls
    with pytest.raises(ValueError, match="unknown scorer nope"):
        detect_stage.compute_scores(run, progress=False, scorers=("nope",))


def test_a_scorer_sees_only_the_inputs_it_declares_and_is_left_out_without_them():
    sneaky = registry.Scorer("sneaky", lambda i: i["val_scores"].sum(1), True, "reads an undeclared input",
                             ("self_scores",))
    inputs = {"self_scores": np.ones(3), "val_scores": np.ones((3, 2))}
    with pytest.raises(KeyError, match="val_scores"):
        sneaky.run(inputs)
    aum = registry.SCORERS["aum"]
    assert aum.run({"aum": None}) is None and aum.skip is not None
    np.testing.assert_array_equal(aum.run({"aum": np.array([0.5, -1.0])}).score, [0.5, -1.0])


def test_help_lists_every_registered_scorer_and_strategy(capsys):
    from trakscope.commands import detect as detect_cmd

    text = _help(capsys, "detect")
    for s in registry.SCORERS.values():
        assert f"{s.name}: {s.description}" in text, s.name
        assert s.name in detect_cmd.HELP  # `trakscope --help`'s line
        if s.skip is not None and s.skip.option:
            assert f"{s.skip.option} {s.skip.why}" in text  # the option that leaves it out, with its help
    removal = _help(capsys, "removal")
    for s in registry.STRATEGIES.values():
        assert re.search(rf"{s.name}( \(alias [^)]*\))?: {re.escape(s.description)}", removal), s.name
