"""Mixed precision (bf16 autocast) and channels-last: the options reach training and featurization, results stay
close to fp32, unsupported hardware is handled, and run folders made before the options existed still open."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from trakscope import precision
from trakscope.attribution.kronecker import KroneckerProjector
from trakscope.attribution.projectors import make_projector
from trakscope.attribution.store import StoreError, TrakStore
from trakscope.attribution.trak import TRAK
from trakscope.cli import main
from trakscope.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrakConfig, _opt, _sub_from_dict
from trakscope.data import load_dataset
from trakscope.models import build_model
from trakscope.run_folder import RunFolder, fingerprint
from trakscope.stages.ensemble import load_checkpoint
from trakscope.train import architecture_only, load_trained, predict_logits, train_model

from .test_kronecker import LAYERS, OneLayer, _inputs, _resnet

SMALL = RunConfig(data=DataConfig(dataset="digits", max_train=200), model=ModelConfig(name="tiny_cnn"),
                  train=TrainConfig(epochs=2, batch_size=32))
# fingerprint() of these configurations as trakscope computed it before train.precision existed (commit 0da73df)
# the defaults of the version that added the precision fields (epochs 8 then): such a folder keeps its fingerprint
OLD_FINGERPRINTS = {RunConfig(train=TrainConfig(epochs=8)): "003072660a018a5d", SMALL: "35aeba0b53e629b7"}


def test_the_canary_kind_counts_only_where_canaries_are_planted():
    """Without canaries the kind changes nothing: an old folder (kind ``random``, the default then) keeps its
    fingerprint and compares equal to the same flags today (default ``pairs``); with canaries it is a setting."""
    from trakscope.config import config_diff

    def with_kind(kind: str, canaries: float) -> RunConfig:
        return dataclasses.replace(SMALL, data=dataclasses.replace(SMALL.data, canary_kind=kind, canaries=canaries))

    assert fingerprint(with_kind("random", 0.0)) == fingerprint(with_kind("pairs", 0.0)) == OLD_FINGERPRINTS[SMALL]
    assert config_diff(with_kind("random", 0.0), with_kind("pairs", 0.0)) == []
    assert fingerprint(with_kind("random", 0.05)) != fingerprint(with_kind("pairs", 0.05))
    assert config_diff(with_kind("random", 0.05), with_kind("pairs", 0.05)) == ["data.canary_kind: 'random' -> 'pairs'"]


def _support(monkeypatch, level: str, why: str = "mocked hardware") -> None:
    monkeypatch.setattr(precision, "bf16_support", lambda device: (level, why))
    monkeypatch.setattr(precision, "_WARNED", set())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- settings and run folders ------------------------------------------------------------------
@pytest.mark.parametrize("cfg", list(OLD_FINGERPRINTS), ids=["defaults", "small"])
def test_fingerprints_of_existing_folders_are_unchanged(cfg):
    assert fingerprint(cfg) == OLD_FINGERPRINTS[cfg]
    layout = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, channels_last=True))
    assert fingerprint(layout) == OLD_FINGERPRINTS[cfg]  # how to run, not what is computed
    bf16 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="bf16"))
    assert fingerprint(bf16) != OLD_FINGERPRINTS[cfg]  # other checkpoints: another fingerprint


def test_a_config_json_without_a_field_means_its_legacy_value_not_its_default():
    old = SMALL.to_dict()
    del old["train"]["precision"], old["train"]["channels_last"], old["trak"]["precision"]
    del old["trak"]["masks"], old["trak"]["mask_p"]
    assert RunConfig.from_dict(old) == SMALL

    @dataclasses.dataclass(frozen=True)
    class Later:
        precision: str = _opt("auto", "a default that changed", legacy="fp32")

    assert _sub_from_dict(Later, {}).precision == "fp32"
    assert _sub_from_dict(Later, {"precision": "bf16"}).precision == "bf16"


ARGS = ["--dataset", "digits", "--model", "tiny_cnn", "--max-train", "100", "--max-test", "30", "--image-size", "16",
        "--epochs", "2", "--ensemble", "1", "--batch-size", "32", "--lr", "0.1", "--checkpoints-per-model", "1",
        "--proj-dim", "32", "--no-progress", "--device", "cpu"]


def _as_before_precision(run) -> None:
    """Strip what this version adds to config.json and the TRAK store's meta.json (as an older trakscope wrote)."""
    for path, drop in ((run / "config.json", ("train.precision", "train.channels_last", "trak.precision")),
                       (run / "features" / "meta.json", ("precision",))):
        d = json.loads(path.read_text())
        for key in drop:
            *section, name = key.split(".")
            del (d[section[0]] if section else d)[name]
        path.write_text(json.dumps(d))
        RunFolder(run).integrity.seal(path)  # as the older version recorded it
        if path.parent.name == "features":
            TrakStore(path.parent).recorded(path)  # in the store's own record too


def test_a_folder_from_before_the_options_opens_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), *ARGS]) == 0
    _as_before_precision(run)
    ckpt = RunFolder(run).checkpoint_paths()[0]
    stamps = {p: p.stat().st_mtime_ns for p in (ckpt, run / "scores" / "test.npy")}
    load_checkpoint(RunFolder(run), ckpt)  # the fingerprint in the checkpoint still matches
    assert main(["run", "--out", str(run), *ARGS]) == 0  # the same flags
    assert main(["run", "--out", str(run)]) == 0  # no flags: the folder's own settings
    assert main(["run", "--out", str(run), *ARGS, "--channels-last"]) == 0  # how to run: recorded, nothing redone
    assert json.loads((run / "config.json").read_text())["train"]["channels_last"] is True
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    capsys.readouterr()
    assert main(["run", "--out", str(run), *ARGS, "--precision", "bf16"]) == 2
    assert "train.precision: 'fp32' -> 'bf16'" in capsys.readouterr().err
    folder = RunFolder(run)
    model = build_model(architecture_only(folder.config.model), len(folder.classes))  # the store's architecture
    TRAK(model, run / "features", proj_dim=32)  # the old store's settings: fp32 Kronecker
    with pytest.raises(StoreError, match="precision: 'fp32' -> 'bf16'"):
        TRAK(model, run / "features", proj_dim=32, precision="bf16")


# --- hardware support ------------------------------------------------------------------------------
def test_auto_is_bf16_only_where_the_hardware_does_it(monkeypatch):
    _support(monkeypatch, "native")
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    for level in ("emulated", "none"):
        _support(monkeypatch, level)
        assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16", "cpu")


def test_emulated_bf16_runs_with_one_warning(monkeypatch, capsys):
    _support(monkeypatch, "emulated", "this CPU has neither AMX nor AVX512-BF16")
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "emulates it" in err[0] and "AVX512-BF16" in err[0]


def test_bf16_where_the_device_has_none_is_refused_in_one_line_before_anything_is_written(monkeypatch, tmp_path,
                                                                                          capsys):
    _support(monkeypatch, "none", "torch sees no CUDA device")
    with pytest.raises(ValueError, match="bf16 asked for, but torch sees no CUDA device"):
        train_model(SMALL.model, dataclasses.replace(SMALL.train, precision="bf16"),
                    load_dataset(DataConfig(dataset="digits", max_train=50, image_size=8)), seed=0, progress=False)
    assert main(["run", "--out", str(tmp_path / "run"), *ARGS, "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bf16 asked for" in err[0]
    assert not (tmp_path / "run").exists()
    assert main(["run", "--out", str(tmp_path / "run"), *ARGS, "--trak-precision", "bf16"]) == 2


PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch's CPU feature checks


@pytest.mark.parametrize("has, expected", [
    ({"_is_amx_tile_supported", "_is_avx512_bf16_supported"}, ("native", "this CPU has AMX")),
    ({"_is_avx512_bf16_supported"}, ("native", "this CPU has AVX512-BF16")),
    (set(), ("emulated", "this CPU has neither AMX nor AVX512-BF16")),
    (None, ("emulated", "this CPU has neither AMX nor AVX512-BF16")),  # a torch without the checks
], ids=["amx", "avx512-bf16", "neither", "no-probe"])
def test_the_real_support_check_names_the_hardware(monkeypatch, has, expected):
    """Every branch of the CPU check on any machine: torch's feature probes are replaced by this CPU's answers."""
    for probe in PROBES:
        if has is None:
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda probe=probe: probe in has, raising=False)
    assert precision.bf16_support("cpu") == expected
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if expected[0] == "native" else "fp32")
    assert precision.bf16_support("meta") == ("none", "trakscope runs bf16 autocast on cpu and cuda only, not meta")


@pytest.mark.parametrize("available, capability, emulated, expected", [
    (False, None, None, ("none", "torch sees no CUDA device")),
    (True, (8, 0), True, ("native", "GPU-X has bf16 tensor cores")),  # Ampere, the first with them
    (True, (7, 5), True, ("emulated", "GPU-X predates bf16 tensor cores (compute capability < 8.0)")),
    (True, (6, 0), False, ("none", "GPU-X cannot run bf16")),
], ids=["no-cuda", "ampere-or-later", "before-ampere", "no-bf16"])
def test_the_cuda_support_check_reads_the_device(monkeypatch, available, capability, emulated, expected):
    """Every branch of the CUDA check on any machine (with or without a GPU): torch.cuda's answers are replaced."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU-{'X' if index == 0 else '?'}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=False: emulated)
    assert precision.bf16_support("cuda") == expected


def test_dense_featurization_stays_fp32(tmp_path):
    cfg = RunConfig(trak=TrakConfig(projector="dense", precision="auto"))
    assert precision.resolve_run_precision(cfg, "cpu").trak.precision == "fp32"
    with pytest.raises(ValueError, match="kronecker"):
        precision.resolve_run_precision(dataclasses.replace(cfg, trak=TrakConfig(projector="dense", precision="bf16")),
                                        "cpu")
    with pytest.raises(ValueError, match="fp32 only"):
        make_projector("dense", torch.nn.Linear(3, 2), 4, 0, precision="bf16")
    with pytest.raises(ValueError, match="fp32 only"):
        TRAK(torch.nn.Linear(3, 2), tmp_path / "store", projector="dense", precision="bf16")
    assert TRAK(torch.nn.Linear(3, 2), tmp_path / "store", projector="dense", precision="auto").precision == "fp32"


# --- training ----------------------------------------------------------------------------------------
def _train(monkeypatch, **changes) -> tuple[dict, float]:
    _support(monkeypatch, "native")
    data = load_dataset(DataConfig(dataset="digits", max_train=200, max_test=100, image_size=16))
    model, train = ModelConfig(name="tiny_cnn"), TrainConfig(epochs=6, batch_size=32, lr=0.1, checkpoints_per_model=1)
    state = train_model(model, dataclasses.replace(train, **changes), data, seed=0, progress=False)[-1]
    logits = predict_logits(load_trained(model, len(data.classes), state), data.test.images)
    return state, float((logits.argmax(1) == data.test.labels).mean())


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten() for v in state.values() if v.is_floating_point()])


def test_bf16_and_channels_last_training_differ_from_fp32_but_stay_close(monkeypatch):
    fp32, acc = _train(monkeypatch)
    bf16, acc_bf16 = _train(monkeypatch, precision="bf16")
    nhwc, acc_nhwc = _train(monkeypatch, channels_last=True)
    # measured: bf16 moves the weights by 6%, channels-last (float rounding only) by 0.03%, after 6 epochs
    assert 1e-3 < _rel(_flat(bf16), _flat(fp32)) < 0.25
    assert _rel(_flat(nhwc), _flat(fp32)) < 0.02
    assert abs(acc_bf16 - acc) <= 0.1 and abs(acc_nhwc - acc) <= 0.1 and acc > 0.5
    assert all(v.is_contiguous() and v.dtype != torch.bfloat16 for v in [*bf16.values(), *nhwc.values()])


# --- featurization --------------------------------------------------------------------------------------
class OwnProduct(torch.nn.Module):
    """A matrix product with a weight of its own (the exact fallback's case), fed bf16 activations under autocast."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(5, 5) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


KINDS = {**LAYERS, "fallback_fed_bf16": lambda: OneLayer(OwnProduct(), pre=torch.nn.Conv2d(3, 3, 1))}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bf16_features_of_every_layer_kind_are_float32_and_close(kind):
    torch.manual_seed(0)
    model, x, y = KINDS[kind]().eval(), _inputs(kind), torch.tensor([0, 1, 3])
    want, _ = KroneckerProjector(model, 0, seed=3, k_in=5, k_out=3)(x, y)
    got, logits = KroneckerProjector(model, 0, seed=3, k_in=5, k_out=3, precision="bf16")(x, y)
    assert got.dtype == logits.dtype == torch.float32 and torch.isfinite(got).all()
    assert _rel(got, want) < 0.05  # measured: at most 0.011 (a bf16 forward pass, float32 projection)


def test_bf16_featurization_really_runs_in_bf16_and_channels_last_does_not_change_features():
    model, x, y = _resnet(), torch.randn(3, 3, 16, 16), torch.tensor([2, 7, 2])
    want, _ = KroneckerProjector(model, 512, seed=1)(x, y)
    bf16, _ = KroneckerProjector(model, 512, seed=1, precision="bf16")(x, y)
    assert 1e-3 < _rel(bf16, want) < 0.5  # measured 0.12 on a random ResNet-18 at 32 px, 0.03 at 224 px
    nhwc = model.to(memory_format=torch.channels_last)
    got, _ = KroneckerProjector(nhwc, 512, seed=1)(x.contiguous(memory_format=torch.channels_last), y)
    assert _rel(got, want) < 1e-5  # measured 1.2e-6 (float rounding of another convolution algorithm)


def test_trak_engine_passes_precision_and_layout_on(monkeypatch, tmp_path):
    _support(monkeypatch, "native")
    model, x, y = _resnet(), torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    plain = TRAK(model, tmp_path / "a", proj_dim=64).features(x, y)[0]
    nhwc = TRAK(model, tmp_path / "b", proj_dim=64, channels_last=True)
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(nhwc.features(x, y)[0], plain, rtol=1e-4, atol=1e-6)
    auto = TRAK(model, tmp_path / "c", proj_dim=64, precision="auto")
    assert auto.precision == "bf16"
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["precision"] == "bf16"
    assert not np.allclose(auto.features(x, y)[0], plain, rtol=1e-4, atol=1e-6)


def test_a_bf16_run_end_to_end(monkeypatch, tmp_path):
    _support(monkeypatch, "native")
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), *ARGS, "--precision", "auto", "--trak-precision", "auto",
                 "--channels-last"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["train"]["precision"], cfg["trak"]["precision"]) == ("bf16", "bf16")  # auto, recorded resolved
    assert np.isfinite(RunFolder(run).results.scores("test")).all()
    _support(monkeypatch, "none", "this device has no bf16")
    assert main(["run", "--out", str(run)]) == 2  # a bf16 folder is not silently redone in fp32
