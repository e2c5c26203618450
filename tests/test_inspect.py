"""``trakscope inspect``: naming a target, a new image, another class's margin, and headers that say which margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trakscope.attribution.views import DEFAULT_VIEW, VIEWS
from trakscope.cli import main
from trakscope.report.grid import fit_text
from trakscope.run_folder import RunFolder
from trakscope.stages import inspect as stage

TABLE = {"index": np.arange(4),
         "source_id": np.array(["images/sushi/1.jpg", "images/tacos/2.jpg", "images/tacos/1.jpg", "digits:7"],
                               dtype=object)}


@pytest.mark.parametrize("target, row", [("1", 1), ("images/tacos/2.jpg", 1), ("2.jpg", 1),
                                         ("/home/me/food/images/tacos/2.jpg", 1), ("digits:7", 3)])
def test_target_is_an_index_a_source_id_or_a_unique_file_name(target, row):
    assert stage.resolve_target(TABLE, "test", target) == row


@pytest.mark.parametrize("target, message", [("9", "[0, 3]"), ("1.jpg", "matches 2 files"),
                                             ("images/tacos/3.jpg", "close matches: images/tacos/2.jpg")])
def test_unknown_or_ambiguous_target_is_one_clear_error(target, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        stage.resolve_target(TABLE, "test", target)


def test_class_by_name_index_or_case_and_close_matches():
    classes = ["apple_pie", "sushi", "tacos"]
    assert [stage.resolve_class(classes, v) for v in ("sushi", "2", "SUSHI")] == [1, 2, 1]
    with pytest.raises(ValueError, match="close matches: sushi"):
        stage.resolve_class(classes, "sushy")


def test_cli_target_by_source_id_prints_the_same_as_by_index(tiny_run, tmp_path, capsys):
    source = str(RunFolder(tiny_run).data.table("test")["source_id"][3])
    assert main(["inspect", "--run", str(tiny_run), "--target", "3", "--top", "3", "--png", str(tmp_path / "a.png")]) \
        == 0
    by_index = capsys.readouterr().out
    assert main(["inspect", "--run", str(tiny_run), "--target", source, "--top", "3",
                 "--png", str(tmp_path / "a.png")]) == 0
    assert capsys.readouterr().out == by_index
    assert main(["inspect", "--run", str(tiny_run), "--target", source.replace("digits", "digit")]) == 2
    assert f"close matches: {source}" in capsys.readouterr().err
    assert main(["inspect", "--run", str(tiny_run), "--target", "nothing"]) == 2
    assert "source_ids look like digits:" in capsys.readouterr().err


def test_a_training_file_as_target_names_its_training_index_and_suggests_split_train(tiny_run, tmp_path, capsys):
    run = RunFolder(tiny_run)
    train, test = run.data.table("train"), run.data.table("test")
    i = 18
    source = str(train["source_id"][i])
    assert source not in set(test["source_id"])
    assert main(["inspect", "--run", str(tiny_run), "--target", source]) == 2
    err = capsys.readouterr().err
    assert f"is training example {i} ({source}), not an example of the test split; add --split train" in err
    assert "close matches" not in err and len(err.strip().splitlines()) == 1
    png = tmp_path / "t.png"
    assert main(["inspect", "--run", str(tiny_run), "--split", "train", "--target", source, "--top", "3",
                 "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"train example {i} ({source})") and png.stat().st_size > 1000
    own = run.results.scores("self")[i]
    found = stage.inspect_target(run, "train", str(i), top=3, view="raw")
    assert np.isclose(found.scores[i], own, rtol=1e-3)  # its own raw score: its self-influence
    found = stage.inspect_target(run, "train", str(i), top=3, view="relative")
    assert np.isclose(found.scores[i], np.sqrt(own), rtol=1e-3)  # relative: self-influence over its square root


def test_stored_scores_are_the_labels_margin_and_on_the_fly_scoring_reproduces_them(tiny_run):
    run = RunFolder(tiny_run)
    found = stage.inspect_target(run, "test", "3", top=4)
    x = run.data.dataset().split("test").images.batch(np.array([3]))
    again = stage.score_on_the_fly(run, x, torch.tensor([found.label]))[:, 0]
    assert np.allclose(again, run.results.scores("test")[:, 3], atol=1e-6)


def test_class_changes_the_scores_and_the_header(tiny_run, tmp_path, capsys):
    run = RunFolder(tiny_run)
    own = stage.inspect_target(run, "test", "3")
    other = next(c for c in range(len(run.classes)) if c not in (own.label, own.predicted))
    found = stage.inspect_target(run, "test", "3", str(other))
    assert found.margin_class == other and found.margin_role == "chosen with --class"
    assert not np.allclose(found.scores, own.scores)
    assert main(["inspect", "--run", str(tiny_run), "--target", "3", "--class", run.classes[other], "--top", "2",
                 "--png", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert f"highest {DEFAULT_VIEW} scores: raise the margin of class '{run.classes[other]}' (chosen with --class)" \
        in out
    assert f"{int(np.argmax(found.scores)):>6}" in out.split(f"highest {DEFAULT_VIEW} scores")[1].splitlines()[2]


def test_headers_name_the_margin_even_on_a_misclassified_target(tiny_run):
    run = RunFolder(tiny_run)
    test = run.data.table("test")
    wrong = int(np.flatnonzero(run.results.probs("test").argmax(1) != test["label"])[0])
    found = stage.inspect_target(run, "test", str(wrong))
    label = run.classes[test["label"][wrong]]
    assert stage.headers(run.classes, found) == (
        f"highest {DEFAULT_VIEW} scores: raise the margin of class '{label}' (the label)",
        f"lowest {DEFAULT_VIEW} scores: lower the margin of class '{label}' (the label)")
    assert stage.margin_role(2, 2, 2) == "the label and the predicted class"


def test_image_file_is_scored_on_the_fly_under_the_predicted_class(tiny_run, tmp_path, capsys):
    run = RunFolder(tiny_run)
    train = run.data.table("train")
    j = int(np.flatnonzero(train["noisy"] == 0)[0])
    Image.fromarray(run.data.thumbs("train")[j]).save(tmp_path / "mine.png")
    png = tmp_path / "grid.png"
    for view in VIEWS:
        assert main(["inspect", "--run", str(tiny_run), "--image", str(tmp_path / "mine.png"), "--png", str(png),
                     "--view", view]) == 0
        out = capsys.readouterr().out
        predicted = run.classes[train["label"][j]]
        assert f"ensemble predicts {predicted}" in out
        head = f"highest {view} scores"
        assert f"{head}: raise the margin of class '{predicted}' (the predicted class)" in out
        top = [int(line.split()[1]) for line in out.split(head)[1].split("lowest")[0].splitlines()[2:] if line]
        assert len(top) == 8 and j in top  # the image is one of its own most positive training examples
        assert png.stat().st_size > 1000


def test_long_titles_wrap_to_the_tile_width():
    name = "a_very_long_class_name_from_the_users_own_folders_that_goes_on"
    text = fit_text(f"#12  +0.1\nlabel {name}", 20)
    lines = text.split("\n")
    assert all(len(line) <= 20 for line in lines) and len(lines) == 3 and lines[-1].endswith("…")


def test_views_rank_the_same_stored_column_and_every_output_names_its_view(tiny_run, capsys):
    run = RunFolder(tiny_run)
    raw = stage.inspect_target(run, "test", "3", top=5, view="raw")
    rel = stage.inspect_target(run, "test", "3", top=5, view="relative")
    stored, self_inf = run.results.scores("test")[:, 3], run.results.scores("self")
    assert np.allclose(raw.scores, stored)
    assert np.allclose(rel.scores, stored / np.sqrt(self_inf), rtol=1e-5)  # RelatIF: over sqrt(self-influence)
    assert list(rel.top) == list(np.argsort(-(stored / np.sqrt(self_inf)), kind="stable")[:5])
    assert (raw.png.name, rel.png.name) == ("test_3_raw.png", "test_3_relative.png")
    assert main(["inspect", "--run", str(tiny_run), "--target", "3", "--top", "2", "--view", "raw"]) == 0
    out = capsys.readouterr().out
    assert "view: raw, counterfactual" in out and "highest raw scores" in out and (run.path / "inspect" /
                                                                                  "test_3_raw.png").exists()
    with pytest.raises(SystemExit):
        main(["inspect", "--run", str(tiny_run), "--target", "3", "--view", "cosine"])
    assert "invalid choice: 'cosine'" in capsys.readouterr().err
