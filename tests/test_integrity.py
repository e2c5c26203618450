"""The run folder's manifest: every file trakscope writes is recorded, checked when read, and recomputed by `run`."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trakscope.attribution.store import TrakStore
from trakscope.cli import build_parser, main
from trakscope.io import load_tensors, save_tensors
from trakscope.manifest import Manifest, describe
from trakscope.run_folder import RunError, RunFolder
from trakscope.stages.ensemble import checkpoint_damaged, load_checkpoint

from .conftest import TINY_RUN_ARGS


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> RunFolder:
    """A copy of the tiny run that a test may damage."""
    return RunFolder(shutil.copytree(tiny_run, tmp_path / "run"))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def quoted_command(message: str) -> list[str]:
    """The command between backticks in a message, split as a shell would."""
    found = re.findall(r"`([^`]+)`", message)
    assert found, message
    return shlex.split(found[-1])


# --- 1. the manifest ----------------------------------------------------------------------------------------
def test_manifest_records_every_output_of_run(tiny_run):
    run = RunFolder(tiny_run)
    files = Manifest(run.manifest_path).files()
    wanted = [run.config_path, run.classes_path, run.data_fingerprint_path, run.metrics_path, run.scores_meta_path,
              *run.checkpoint_paths(), *(run.table_path(s) for s in ("train", "val", "test")),
              *(p(s) for p in (run.thumbs_path, run.probs_path) for s in ("train", "val", "test")),
              *(run.scores_path(s) for s in ("test", "val", "self")), run.scores_record_path("test")]
    for path in wanted:
        entry = {k: v for k, v in files[run.relative(path)].items() if k != "content"}  # config's own copy aside
        assert entry == describe(path), path
    scores = files["scores/test.npy"]
    assert scores["dtype"] == "<f4" and scores["shape"] == list(np.load(run.scores_path("test")).shape)


# --- 2. every read checks what it reads ---------------------------------------------------------------------
@pytest.mark.parametrize("size", [1024, 0])
def test_truncated_scores_are_named_in_one_line_with_the_command(run_copy, capsys, size):
    path = run_copy.scores_path("test")
    expected = path.stat().st_size
    truncate(path, size)
    err = one_line_error(capsys, ["inspect", "--run", str(run_copy.path), "--target", "0"])
    assert f"scores/test.npy is damaged (size {size:,} bytes, expected {expected:,})" in err
    assert quoted_command(err) == ["trakscope", "run", "--out", str(run_copy.path)]


def test_truncated_array_is_named_without_a_manifest(run_copy):
    run_copy.integrity.manifest.unlink()  # a folder written before manifests: the .npy header still tells
    truncate(run_copy.probs_path("test"), 200)
    with pytest.raises(RunError, match=r"models/probs_test.npy is damaged \(size 200 bytes, its header .* needs"):
        run_copy.results.probs("test")


def test_empty_array_without_a_manifest_is_named(run_copy):
    run_copy.integrity.manifest.unlink()
    truncate(run_copy.thumbs_path("train"), 0)
    with pytest.raises(RunError, match=r"data/thumbs_train.npy is damaged \(empty file\)"):
        run_copy.data.thumbs("train")


def test_a_checkpoint_cut_short_is_named(run_copy):
    path = run_copy.checkpoint_paths()[0]
    truncate(path, path.stat().st_size // 2)
    with pytest.raises(RunError, match=r"models/model0_ckpt0.safetensors is damaged \(size"):
        load_checkpoint(run_copy, path)


def test_invalid_json_result_is_named(run_copy, capsys):
    text = run_copy.metrics_path.read_text()
    run_copy.metrics_path.write_text(text.replace("{", "[", 1))  # same size, other bytes: the checksum tells
    with pytest.raises(RunError, match=r"models/metrics.json is damaged \(its contents differ .*digest mismatch"):
        run_copy.results.read(run_copy.metrics_path, "model_metrics")
    run_copy.integrity.manifest.unlink()  # without a record nothing is trusted, still in one line
    with pytest.raises(RunError, match=r"models/metrics.json is unverified \(not in the integrity record"):
        run_copy.results.read(run_copy.metrics_path, "model_metrics")


def test_a_ranking_missing_rows_is_named(run_copy):
    n = len(run_copy.data.table("train")["index"])
    run_copy.results.write_ranking(["index", "noisy"], [[i, 0] for i in range(n)])
    lines = run_copy.ranking_path.read_text().splitlines()
    run_copy.ranking_path.write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(RunError, match=r"detect/ranking.csv is damaged \(size .*trakscope detect --run"):
        run_copy.results.ranking(())


def test_an_unrecorded_file_is_never_read(run_copy):
    run_copy.integrity.manifest.unlink()
    with pytest.raises(RunError, match=r"scores/test.npy is unverified \(not in the integrity record: manifest.json "
                                       r"and manifest.copy.json are missing\); rerun `trakscope run --out"):
        run_copy.results.scores("test")


# --- 3. run recomputes what is damaged ----------------------------------------------------------------------
def rerun(run: RunFolder) -> None:
    assert main(["run", "--out", str(run.path), *TINY_RUN_ARGS]) == 0


def test_run_retrains_only_the_member_whose_checkpoint_is_truncated(run_copy, tiny_run):
    damaged, other = run_copy.checkpoint_path(1, 0), run_copy.checkpoint_path(0, 0)
    other_mtime = other.stat().st_mtime_ns
    truncate(damaged, 100)
    rerun(run_copy)
    retrained, original = load_tensors(damaged), load_tensors(tiny_run / run_copy.relative(damaged))
    assert all(torch.equal(retrained[k], original[k]) for k in original)  # training is seeded
    assert other.stat().st_mtime_ns == other_mtime
    np.testing.assert_allclose(run_copy.results.scores("test"), RunFolder(tiny_run).results.scores("test"),
                               rtol=1e-5, atol=1e-7)
    assert run_copy.integrity.damage(damaged) is None


def test_run_rescores_truncated_scores(run_copy, tiny_run):
    truncate(run_copy.scores_path("test"), 1024)
    ckpt_mtime = run_copy.checkpoint_path(0, 0).stat().st_mtime_ns
    rerun(run_copy)
    assert np.array_equal(run_copy.results.scores("test"), RunFolder(tiny_run).results.scores("test"))
    assert run_copy.checkpoint_path(0, 0).stat().st_mtime_ns == ckpt_mtime


def test_run_rewrites_truncated_probabilities(run_copy, tiny_run):
    truncate(run_copy.probs_path("test"), 64)
    ckpt_mtime = run_copy.checkpoint_path(0, 0).stat().st_mtime_ns
    rerun(run_copy)
    assert np.array_equal(run_copy.results.probs("test"), RunFolder(tiny_run).results.probs("test"))
    assert run_copy.checkpoint_path(0, 0).stat().st_mtime_ns == ckpt_mtime  # no retraining


# --- 4. messages name complete commands ---------------------------------------------------------------------
@pytest.mark.parametrize("producer", ["run", "trakscope run", "detect", "trakscope detect", "removal", "lds",
                                      "report"])
def test_suggested_commands_parse(tmp_path, producer):
    run = RunFolder(tmp_path / "my runs" / "a")  # a space: the command quotes the folder
    argv = shlex.split(run.command(producer))
    assert argv[0] == "trakscope"
    args = build_parser().parse_args(argv[1:])
    assert Path(getattr(args, "run", None) or args.out) == run.path


def test_missing_stage_output_names_a_command_that_parses(run_copy):
    with pytest.raises(RunError) as e:
        run_copy.results.ranking(())
    argv = quoted_command(str(e.value))
    assert argv[:2] == ["trakscope", "detect"]
    assert build_parser().parse_args(argv[1:]).run == str(run_copy.path)


# --- 5. --overwrite removes only what trakscope wrote -------------------------------------------------------
def test_overwrite_keeps_the_users_files(run_copy):
    user = [run_copy.path / "data" / "important.csv", run_copy.path / "models" / "my_model.bin",
            run_copy.path / "notes.txt"]
    for p in user:
        p.write_text("mine\n")
    run_copy.initialize(run_copy.config, overwrite=True)
    assert all(p.read_text() == "mine\n" for p in user)
    assert not run_copy.checkpoint_paths(required=False)
    assert not run_copy.scores_path("test").exists() and not run_copy.table_path("train").exists()
    assert not any(run_copy.features_dir.rglob("*.npy"))
    assert sorted(Manifest(run_copy.manifest_path).files()) == ["config.json"]


def test_overwrite_still_refuses_a_foreign_config(tmp_path, run_copy):
    folder = RunFolder(tmp_path / "theirs")
    folder.path.mkdir()
    (folder.path / "config.json").write_text(json.dumps({"learning_rate": 3}))
    with pytest.raises(RunError, match="not a trakscope configuration"):
        folder.initialize(run_copy.config, overwrite=True)
    assert (folder.path / "config.json").exists()


# --- 6. non-finite gradients are named as such --------------------------------------------------------------
def test_regularized_inverse_names_non_finite_features():
    from trakscope.attribution.score import NonFiniteFeatures, regularized_inverse

    xtx = np.eye(3)
    xtx[1, 1] = np.nan
    with pytest.raises(NonFiniteFeatures, match="not finite"):
        regularized_inverse(xtx, 1.0)


def test_run_names_the_checkpoint_whose_gradients_are_not_finite(run_copy, capsys):
    path = run_copy.features_dir / "ckpt1" / "train.npy"
    feats = np.load(path, mmap_mode="r+")
    feats[3] = np.nan
    feats.flush()
    del feats
    run_copy.integrity.seal(path)  # as if featurization had produced the NaN (a diverged model), not later damage
    TrakStore(run_copy.features_dir).recorded(path)  # in the store's own record too
    for p in [*run_copy.features_dir.glob("ckpt*/xtx*.npy"), *run_copy.features_dir.glob("ckpt*/lambda.json")]:
        p.unlink()
    shutil.rmtree(run_copy.features_dir / "scores")
    shutil.rmtree(run_copy.path / "scores")
    err = one_line_error(capsys, ["run", "--out", str(run_copy.path), *TINY_RUN_ARGS])
    name = run_copy.relative(run_copy.checkpoint_paths()[1])
    assert f"{name}: the featurized gradients of checkpoint 1, split 'train', contain NaN or inf" in err
    assert "not finite" in err and "increase --ridge" not in err


def test_run_refeaturizes_truncated_features(run_copy, tiny_run):
    path = run_copy.features_dir / "ckpt0" / "train.npy"
    assert run_copy.relative(path) in Manifest(run_copy.manifest_path).files()  # recorded once the split was done
    truncate(path, 4096)
    rerun(run_copy)
    assert run_copy.integrity.damage(path) is None
    np.testing.assert_allclose(run_copy.results.scores("test"), RunFolder(tiny_run).results.scores("test"),
                               rtol=1e-5, atol=1e-7)


def test_run_retrains_a_checkpoint_whose_bytes_changed(run_copy):
    path = run_copy.checkpoint_path(0, 0)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one weight's bits flipped: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"models/model0_ckpt0.safetensors is damaged \(its contents differ"):
        load_checkpoint(run_copy, path)
    assert checkpoint_damaged(run_copy, path)  # so `run` retrains it, as it does a truncated one


def test_a_checkpoint_from_another_run_is_not_retrained_over(run_copy, tiny_run):
    path = run_copy.checkpoint_path(0, 0)
    state = load_tensors(path)
    save_tensors(path, {k: v + 1 for k, v in state.items()}, metadata={"fingerprint": "someone else's"})
    assert not checkpoint_damaged(run_copy, path)
    with pytest.raises(RunError, match="written by a run with other settings"):
        load_checkpoint(run_copy, path)


def test_a_result_written_outside_the_folder_is_not_recorded(run_copy, tmp_path):
    outside = tmp_path / "elsewhere" / "lds.json"
    run_copy.results.write(outside, "lds", {"lds_mean": 0.1, "lds_ci95": [0, 0.2], "num_models": 2, "split": "test"})
    assert outside.exists() and not any("elsewhere" in k for k in Manifest(run_copy.manifest_path).files())
