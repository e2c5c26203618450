"""What trakscope writes for users: class names beside labels, the sort column, unknown ground truth, Parquet."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from trakscope.cli import main
from trakscope.io import read_csv
from trakscope.run_folder import RunFolder

DETECT = ["detect", "--no-cleanlab", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def detected(tiny_run, tmp_path_factory):
    """A copy of the tiny run (planted noise) after ``detect --format parquet``, and detect's output."""
    run = tmp_path_factory.mktemp("outputs") / "run"
    shutil.copytree(tiny_run, run)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*DETECT, "--run", str(run), "--format", "parquet"]) == 0
    return run, printed.getvalue()


def _parquet_rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _same(csv_rows, parquet_rows):
    """Every CSV cell equals the Parquet value (empty cell = null, numbers compared as numbers)."""
    assert len(csv_rows) == len(parquet_rows) and list(csv_rows[0]) == list(parquet_rows[0])
    for c, p in zip(csv_rows, parquet_rows):
        for k, v in c.items():
            w = p[k]
            assert (v == "" and w is None) or (isinstance(w, str) and v == w) or float(v) == pytest.approx(w), k


def test_ranking_has_class_names_its_sort_column_and_a_parquet_twin(detected):
    detected, out = detected
    assert "rows sorted by aum_rank" in out  # no canaries: AUM, the best detector across the regimes measured
    run = RunFolder(detected)
    rows = read_csv(run.ranking_path)
    assert list(rows[0])[:1] == ["inspect_order"]
    assert [int(r["inspect_order"]) for r in rows] == list(range(1, len(rows) + 1))
    assert [int(r["aum_rank"]) for r in rows] == list(range(1, len(rows) + 1))
    classes = run.classes
    for r in rows:
        assert r["label_name"] == classes[int(r["label"])] and r["predicted_name"] == classes[int(r["predicted"])]
        assert r["true_label_name"] == classes[int(r["true_label"])] and r["ground_truth"] == "planted"
    assert run.results.ranking(("self_influence",))["noisy"].sum() == round(0.1 * len(rows))  # readers still parse it
    _same(rows, _parquet_rows(run.ranking_parquet_path))


def test_export_lists_have_class_names_and_a_parquet_format(detected):
    detected, _ = detected
    args = ["export", "--run", str(detected), "--strategy", "negative", "--fraction", "0.1"]
    assert main(args) == 0 and main([*args, "--format", "parquet"]) == 0
    run = RunFolder(detected)
    classes = run.classes
    for csv_path, pq_path in zip(run.export_paths("negative_0.1"), run.export_paths("negative_0.1", fmt="parquet")):
        rows = read_csv(csv_path)
        assert rows and all(r["label_name"] == classes[int(r["label"])] for r in rows)
        _same(rows, _parquet_rows(pq_path))
    removed = read_csv(run.export_paths("negative_0.1")[1])
    assert all(r["ground_truth"] == "planted" and r["true_label_name"] == classes[int(r["true_label"])]
               for r in removed)


def test_without_planted_noise_ground_truth_reads_unknown(tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["noise"] = 0.0
    (run_dir / "config.json").write_text(json.dumps(config))
    run = RunFolder(run_dir)
    run.integrity.seal(run.config_path)  # an edit on purpose, recorded (an unrecorded edit is refused)
    table = run.data.table("train")  # as if no label had been flipped: the labels are the user's, unverified
    run.data.write_table("train", [(int(i), s, int(t), int(t), 0)  # through the folder, so its manifest follows
                              for i, s, t in zip(table["index"], table["source_id"], table["true_label"])])
    assert main([*DETECT, "--run", str(run_dir), "--format", "parquet"]) == 0
    assert "true labels are unknown" in capsys.readouterr().out
    rows = read_csv(run.ranking_path)
    assert all(r["ground_truth"] == "unknown" and r["true_label"] == "" and r["true_label_name"] == ""
               and r["noisy"] == "0" for r in rows)
    assert all(r["true_label"] is None for r in _parquet_rows(run.ranking_parquet_path))
    assert main(["export", "--run", str(run_dir), "--strategy", "negative", "--fraction", "0.1"]) == 0
    removed = read_csv(run.export_paths("negative_0.1")[1])
    assert removed and all(r["ground_truth"] == "unknown" and r["true_label"] == "" for r in removed)
