"""Files the user hands trakscope (``lds --scores``, ``detect --groups``) that are not what they should be: one line
naming the file and saying what it should be, never a numpy or codec message alone."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from trakscope.cli import main


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path / "run"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_lds_scores_given_a_text_file_names_it_as_no_npy_score_matrix(run_copy, tmp_path, capsys):
    text = tmp_path / "scores.csv"
    text.write_text("0.1,0.2\n0.3,0.4\n")
    assert main(["lds", "--run", str(run_copy), "--scores", str(text), "--models", "2", "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"--scores {text} is not a .npy score matrix" in err and "numpy.save" in err and "pickled" not in err


def test_lds_scores_of_object_values_names_the_file(run_copy, tmp_path, capsys):
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["lds", "--run", str(run_copy), "--scores", str(objects), "--models", "2", "--no-progress"]) == 2
    assert f"--scores {objects} is not a readable .npy score matrix" in _one_line(capsys)


def test_detect_groups_given_a_binary_file_names_it(run_copy, tmp_path, capsys):
    binary = tmp_path / "groups.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["detect", "--run", str(run_copy), "--groups", str(binary), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"--groups {binary} is not a text CSV file" in err and "group column" in err
