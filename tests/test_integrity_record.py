"""The integrity record: every file trakscope writes is in it, it proves itself, nothing unrecorded is trusted, and a
repair recomputes from verified inputs the very bits that were lost."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from trakscope.attribution.store import TrakStore
from trakscope.cli import build_parser, main
from trakscope.io import load_tensors
from trakscope.manifest import Manifest, describe
from trakscope.run_folder import SPLITS, RunError, RunFolder

from .conftest import TINY_RUN_ARGS

RECORDS = {"manifest.json", "manifest.copy.json", ".trakscope.lock"}


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> RunFolder:
    """A copy of the tiny run that a test may damage."""
    return RunFolder(shutil.copytree(tiny_run, tmp_path / "run"))


def rerun(run: RunFolder, capsys=None) -> str:
    assert main(["run", "--out", str(run.path), *TINY_RUN_ARGS]) == 0
    return capsys.readouterr().out if capsys is not None else ""


def change_values(path: Path) -> None:
    """Same shape, dtype and size; other values (what a stray write or a bit flip leaves)."""
    a = np.load(path)
    a.flat[0] = a.flat[0] + 1
    np.save(path, a)


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


def quoted_command(message: str) -> list[str]:
    found = re.findall(r"`([^`]+)`", message)
    assert found, message
    argv = shlex.split(found[-1])
    build_parser().parse_args(argv[1:])  # it parses
    return argv


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# --- 1. every file is recorded, and the record proves itself ------------------------------------------------
def test_the_record_holds_every_file_run_wrote(tiny_run):
    run = RunFolder(tiny_run)
    files = Manifest(run.manifest_path).files()
    # the TRAK store's own bookkeeping (its record, lock and rows) changes as it writes and is verified by the store
    store = {run.relative(p) for p in TrakStore(run.features_dir).bookkeeping()}
    assert store == {"features/record.json", "features/.lock", *(f"features/rows/{s}.npy" for s in SPLITS)}
    on_disk = {run.relative(p) for p in tiny_run.rglob("*") if p.is_file()} - RECORDS - store
    assert on_disk == set(files)
    for name in ["features/ckpt0/xtx_inv.npy", "features/ckpt0/xtx.npy", "features/ckpt1/lambda.json",
                 "features/ckpt0/train_done.npy", "features/ckpt0/train_q.npy", "features/scores/self__train.npy",
                 "features/meta.json", "features/checkpoints.json", "models/aum.npy", "models/aum_model1.npy",
                 "data/thumbs_val.npy", "timings.json", "scores/meta.json"]:
        assert files[name] == {**describe(tiny_run / name), **({"content": files[name].get("content")}
                                                               if "content" in files[name] else {})}, name
    assert Manifest(run.manifest_path).load().state == "ok"
    assert run.manifest_copy_path.read_bytes() == run.manifest_path.read_bytes()


def flip_a_digit(path: Path) -> None:
    """Change one hex digit of a recorded digest: the JSON stays valid, the record does not."""
    text = path.read_text()
    i = text.index('"digest": "sha256:') + len('"digest": "sha256:')
    path.write_text(text[:i] + chr(ord(text[i]) ^ 1) + text[i + 1:])


DAMAGES = {"truncated": lambda p: truncate(p, p.stat().st_size // 2),
           "zeroed": lambda p: p.write_bytes(b"\0" * p.stat().st_size),
           "bit-flipped": flip_a_digit}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_record_is_restored_from_its_copy_and_still_catches_damage(run_copy, tiny_run, capsys, damage):
    DAMAGES[damage](run_copy.manifest_path)
    scores = np.load(run_copy.scores_path("test"))
    scores[137 % scores.shape[0], 3] = 50  # the battery's planted top influencer
    np.save(run_copy.scores_path("test"), scores)
    err = one_line_error(capsys, ["inspect", "--run", str(run_copy.path), "--target", "3"])
    assert "scores/test.npy is damaged (its contents differ" in err
    out = rerun(run_copy, capsys)
    assert "restored it from manifest.copy.json" in out
    assert Manifest(run_copy.manifest_path).load().state == "ok"
    assert "scores/test.npy is damaged" in out
    assert run_copy.scores_path("test").read_bytes() == (tiny_run / "scores" / "test.npy").read_bytes()


def test_with_both_copies_damaged_nothing_is_trusted(run_copy, capsys):
    DAMAGES["zeroed"](run_copy.manifest_path)
    DAMAGES["bit-flipped"](run_copy.manifest_copy_path)
    with pytest.raises(RunError, match=r"scores/test.npy is unverified \(not in the integrity record: manifest.json "
                                       r"and manifest.copy.json are both damaged\)") as e:
        RunFolder(run_copy.path).results.scores("test")
    assert quoted_command(str(e.value)) == ["trakscope", "run", "--out", str(run_copy.path)]


def test_a_file_missing_from_the_record_is_not_trusted(run_copy):
    Manifest(run_copy.manifest_path).update({}, remove=("models/probs_test.npy",))
    with pytest.raises(RunError, match=r"models/probs_test.npy is unverified \(not in the integrity record"):
        run_copy.results.probs("test")


# --- 2. a repair recomputes from verified inputs, bit for bit -----------------------------------------------
def test_a_changed_inverse_is_refused_then_recomputed_bit_for_bit(run_copy, tiny_run, capsys):
    inv = TrakStore(run_copy.features_dir).inverse_path(0)
    change_values(inv)
    other = RunFolder(run_copy.path).classes[1]
    err = one_line_error(capsys, ["inspect", "--run", str(run_copy.path), "--target", "0", "--class", other])
    assert "features/ckpt0/xtx_inv.npy is damaged (its contents differ" in err
    assert quoted_command(err) == ["trakscope", "run", "--out", str(run_copy.path)]
    rerun(run_copy)
    assert inv.read_bytes() == (tiny_run / run_copy.relative(inv)).read_bytes()


def test_scores_are_rebuilt_only_from_verified_inputs(run_copy, tiny_run):
    truncate(run_copy.scores_path("test"), 1024)
    store = TrakStore(run_copy.features_dir)
    feats, inv = store.features(1, "test", 0, 0).features_path, store.inverse_path(0)
    change_values(feats)  # inputs of the scores, damaged too
    change_values(inv)
    rerun(run_copy)
    for path in (run_copy.scores_path("test"), feats, inv):
        assert path.read_bytes() == (tiny_run / run_copy.relative(path)).read_bytes(), path


def test_self_influence_is_rebuilt_bit_for_bit(run_copy, tiny_run):
    store_self = TrakStore(run_copy.features_dir).self_path("train")
    change_values(store_self)
    truncate(run_copy.scores_path("self"), 100)
    rerun(run_copy)
    for path in (run_copy.scores_path("self"), store_self):
        assert path.read_bytes() == (tiny_run / run_copy.relative(path)).read_bytes(), path


def test_thumbnails_are_refused_then_rebuilt_bit_for_bit(run_copy, tiny_run):
    path = run_copy.thumbs_path("train")
    change_values(path)
    DAMAGES["zeroed"](run_copy.manifest_path)  # the record too: its copy still tells
    with pytest.raises(RunError, match=r"data/thumbs_train.npy is damaged \(its contents differ"):
        run_copy.data.thumbs("train")
    rerun(run_copy)
    assert path.read_bytes() == (tiny_run / run_copy.relative(path)).read_bytes()


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_aum_is_refused_then_rebuilt_bit_for_bit(run_copy, tiny_run, damage):
    path = run_copy.aum_path()
    change_values(path) if damage == "changed" else path.unlink()
    with pytest.raises(RunError, match="models/aum.npy (is damaged|does not exist yet)") as e:
        run_copy.aum()  # detect's input: never used damaged, never silently dropped
    assert quoted_command(str(e.value)) == ["trakscope", "run", "--out", str(run_copy.path)]
    rerun(run_copy)
    assert path.read_bytes() == (tiny_run / "models" / "aum.npy").read_bytes()


def test_a_members_lost_aum_retrains_that_member_bit_for_bit(run_copy, tiny_run):
    run_copy.aum_path(1).unlink()
    rerun(run_copy)
    for path in (run_copy.aum_path(1), run_copy.aum_path(), run_copy.scores_path("test")):
        assert path.read_bytes() == (tiny_run / run_copy.relative(path)).read_bytes(), path
    original = load_tensors(tiny_run / "models" / "model1_ckpt0.safetensors")  # the header's key order may differ
    retrained = load_tensors(run_copy.checkpoint_path(1, 0))
    assert sorted(retrained) == sorted(original)
    assert all(np.array_equal(v.numpy(), original[k].numpy()) for k, v in retrained.items())


# --- 8. stray or missing checkpoints are named --------------------------------------------------------------
def test_a_stray_checkpoint_is_named(run_copy, capsys):
    stray = run_copy.path / "models" / "model0_ckpt5.safetensors"
    shutil.copy(run_copy.checkpoint_path(0, 0), stray)
    other = run_copy.classes[1]
    err = one_line_error(capsys, ["inspect", "--run", str(run_copy.path), "--target", "0", "--class", other])
    assert "models/model0_ckpt5.safetensors is not a checkpoint of this run" in err
    assert stray.exists()
    err = one_line_error(capsys, ["run", "--out", str(run_copy.path), *TINY_RUN_ARGS])
    assert "models/model0_ckpt5.safetensors is not a checkpoint of this run" in err


def test_a_missing_checkpoint_is_named(run_copy):
    run_copy.checkpoint_path(1, 0).unlink()
    with pytest.raises(RunError, match=r"models/model1_ckpt0.safetensors does not exist yet"):
        run_copy.checkpoint_paths()
