"""Run configuration: frozen dataclasses whose fields carry their own help text.

The whole configuration is saved as ``config.json`` in the run folder. A folder whose saved
configuration differs from the requested one is refused unless overwriting is asked for.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_IMAGE_SIZE = 32  # the built-in demo's side; kept whatever the model, so `make demo` does not change
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("fp32", "bf16", "auto")  # see trakscope.precision


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with its help text in the metadata.

    Metadata keys: ``runtime`` (how to run, not what to compute: left out of :func:`defining_dict`), ``paths``,
    ``choices``, ``prefixes`` (see ``commands/_config_args.py``) and ``legacy``: for a field added after run folders
    existed, the value that a ``config.json`` without it means (what trakscope did before). A field at its legacy
    value is left out of :func:`fingerprint_dict`, so that adding it keeps every existing folder's fingerprint.
    """
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class DataConfig:
    """Which images, which split, how much planted noise."""

    dataset: str = _opt("mnist", "mnist | digits | food101 | imagefolder | hf-parquet")
    data_root: str | None = _opt(None, "local folder holding the dataset (food101, imagefolder, hf-parquet)")
    classes: tuple[str, ...] | None = _opt(None, "class names to keep (default: the first 10 alphabetically)")
    num_classes: int = _opt(10, "how many classes to keep when --classes is not given")
    image_size: int | None = _opt(None, f"side of the square image fed to the model (default: an hf: model's "
                                        f"processor size, else {DEFAULT_IMAGE_SIZE})")
    mean: tuple[float, ...] | None = _opt(None, "per-channel RGB mean subtracted from pixels in [0, 1] "
                                                "(default: the model's own, ImageNet's for most)")
    std: tuple[float, ...] | None = _opt(None, "per-channel RGB std the centred pixels are divided by "
                                               "(default: the model's own)")
    noise: float = _opt(0.0, "fraction of training labels flipped on purpose to measure detection (planted noise; "
                             "never on by default: your data stays as it is)")
    noise_kind: str = _opt("symmetric", "symmetric (flip to a uniformly chosen other class) | confusable (flip "
                                        "between the confusable digits 4-9, 3-5, 7-1)")
    canaries: float = _opt(0.0, "fraction of training labels flipped as canaries (disjoint from --noise, recorded "
                                "in data/canaries.csv): known errors to measure detection on data without ground "
                                "truth; export restores their labels")
    canary_kind: str = _opt("random", "random (flip a canary to a uniformly chosen other class) | nearest (to the "
                                      "class most common among its 10 nearest training images of another label, in "
                                      "16 x 16 pixel space: a confusion the data suggests, as real errors are)",
                            legacy="random")
    max_train: int | None = _opt(None, "seeded stratified subset of the training split")
    max_test: int | None = _opt(None, "seeded stratified subset of the test split")
    val_fraction: float = _opt(0.1, "fraction of the training pool held out as the validation split")
    test_fraction: float = _opt(0.2, "fraction held out as test where the source has no test split")
    seed: int = _opt(0, "seed of the split, the subsets and the planted noise")

    def with_defaults(self) -> DataConfig:
        """This configuration with model-independent defaults where a field is None (size 32, ImageNet stats).

        Run configurations get the model's own values first (``trakscope.models.resolve_config``).
        """
        return dataclasses.replace(
            self,
            image_size=DEFAULT_IMAGE_SIZE if self.image_size is None else self.image_size,
            mean=IMAGENET_MEAN if self.mean is None else self.mean,
            std=IMAGENET_STD if self.std is None else self.std,
        )


@dataclass(frozen=True)
class ModelConfig:
    """The network and where its initial weights come from."""

    name: str = _opt("resnet18", "resnet18 | efficientnet_lite0 | tiny_cnn | hf:<folder or hub id> | "
                                 "timm:<name> | torchvision:<name>")
    weights: str = _opt("random", "random | pretrained (the named model's own weights) | imagenet (the same, "
                                  "for resnet18, efficientnet_lite0, timm:, torchvision:)")
    weights_path: str | None = _opt(None, "initial weights from a local state dict (.safetensors, or .pt/.pth/.bin "
                                          "read with weights_only); a head of another shape is replaced. For "
                                          "resnet18 with --weights imagenet: torchvision's ImageNet file")
    download: bool = _opt(False, "let transformers, timm or torchvision fetch pretrained weights or configs "
                                 "that are not on this machine (never done otherwise)", runtime=True)
    checkpoints: tuple[str, ...] | None = _opt(None, "already-trained checkpoints of this architecture to attribute "
                                                     "instead of training (.safetensors, or .pt/.pth/.bin read with "
                                                     "weights_only), one ensemble member each", paths=True)


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning of the checkpoint ensemble."""

    ensemble: int = _opt(2, "number of independently seeded models (2 x 4 checkpoints reaches the LDS plateau of "
                            "the frontier in BENCHMARKS.md; a third model adds half as much training again for +0.003)")
    epochs: int = _opt(6, "passes over the training split per model (chosen on val accuracy and planted-noise "
                          "detection: benchmarks/epochs.py)")
    batch_size: int = _opt(128, "training batch size")
    lr: float = _opt(0.05, "peak SGD learning rate (one-cycle schedule)")
    momentum: float = _opt(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = _opt(5e-4, "L2 weight decay")
    augment: bool = _opt(True, "random crop (pad 2) during training; never during attribution")
    checkpoints_per_model: int = _opt(4, "checkpoints kept per model for TRAK, at most one per epoch (evenly spaced, "
                                         "last one included; 4 along one trajectory beat 10 independent models on "
                                         "validation LDS)")
    seed: int = _opt(0, "base seed; model m uses seed + m")
    num_workers: int = _opt(0, "image decoding workers for file-backed datasets")
    precision: str = _opt("fp32", "fp32 | bf16 (forward passes under bfloat16 autocast; weights, gradients and "
                                  "optimizer stay float32) | auto (bf16 where the device does bf16 in hardware: "
                                  "AMX or AVX512-BF16 CPU, CUDA compute capability >= 8.0; else fp32). auto is "
                                  "resolved when the run folder is made and recorded; see BENCHMARKS.md, mixed "
                                  "precision", choices=PRECISIONS, legacy="fp32")
    channels_last: bool = _opt(False, "lay out images and convolution weights channels-last (NHWC) in training and "
                                      "featurization: faster convolutions on some CPUs and GPUs, the same results "
                                      "up to float rounding", runtime=True)

    @property
    def kept_checkpoints(self) -> int:
        """Checkpoints each model keeps: ``checkpoints_per_model``, at most one per epoch."""
        return min(self.checkpoints_per_model, self.epochs)


@dataclass(frozen=True)
class TrakConfig:
    """TRAK featurization and scoring."""

    projector: str = _opt("kronecker", "kronecker (fast, CPU default) | dense (reference: vmap gradients x JL)")
    proj_dim: int = _opt(2048, "dimension of the projected gradient features")
    proj_type: str = _opt("rademacher", "rademacher | normal (dense projector entries)")
    kron_k: int = _opt(16, "Kronecker projector: per-layer input and output width (kron_k^2 features per layer; "
                           "doubled while a small network's blocks are narrower than --proj-dim)")
    ridge: float = _opt(1.0, "lambda of (X^T X + lambda I) relative to the mean diagonal of X^T X (chosen by LDS "
                             "on validation targets)")
    batch_size: int = _opt(64, "examples per featurization batch")
    seed: int = _opt(0, "seed of the random projection (checkpoint c uses seed + c)")
    precision: str = _opt("fp32", "fp32 | bf16 (the model's forward pass under bfloat16 autocast; the projection "
                                  "accumulates in float32; kronecker projector only) | auto (as --precision)",
                          choices=PRECISIONS, legacy="fp32")
    masks: int = _opt(0, "DropConnect-masked copies of each model's final checkpoint, featurized as extra "
                         "checkpoints: a free ensemble when a model has one checkpoint, e.g. imported; checkpoints "
                         "along a trajectory gain little from it (BENCHMARKS.md, LDS versus training compute)",
                      legacy=0)
    mask_p: float = _opt(0.3, "fraction of the conv / linear weights each mask zeroes (the rest scaled by "
                              "1 / (1 - p); chosen by val LDS)", legacy=0.3)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trak: TrakConfig = field(default_factory=TrakConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, a missing field takes its legacy value (else its
        default)."""
        return cls(**{name: _sub_from_dict(sub_cls, d.get(name, {})) for name, sub_cls in SECTIONS.items()})


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "trak": TrakConfig}


def _sub_from_dict(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    kw = dict(d)
    for f in dataclasses.fields(cls):  # JSON lists back to the tuples the dataclasses hold
        if isinstance(kw.get(f.name), list):
            kw[f.name] = tuple(kw[f.name])
        if f.name not in kw and "legacy" in f.metadata:  # a config.json from before the field existed
            kw[f.name] = f.metadata["legacy"]
    return cls(**kw)


def load_config(path: Path) -> RunConfig:
    """Read ``config.json``."""
    return RunConfig.from_dict(json.loads(Path(path).read_text()))


def runtime_fields() -> set[tuple[str, str]]:
    """``(section, field)`` of settings that say how to run, not what to compute (e.g. ``model.download``)."""
    return {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata.get("runtime")}


_ABSENT = object()


def legacy_values() -> dict[tuple[str, str], Any]:
    """``(section, field) -> value`` of the fields added later, at the value older run folders were made with."""
    return {(s, f.name): f.metadata["legacy"] for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if "legacy" in f.metadata}


def defining_dict(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """:meth:`RunConfig.to_dict` without the runtime fields: what a run folder's results depend on."""
    skip = runtime_fields()
    return {s: {k: v for k, v in part.items() if (s, k) not in skip} for s, part in cfg.to_dict().items()}


def fingerprint_dict(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """:func:`defining_dict` without the fields at their legacy value: what a run folder's fingerprint hashes.

    A folder made before ``train.precision`` existed (fp32) keeps its fingerprint, so its checkpoints still load;
    a bf16 run hashes ``precision: "bf16"`` and gets another one.
    """
    legacy = legacy_values()
    return {s: {k: v for k, v in part.items() if legacy.get((s, k), _ABSENT) != v}
            for s, part in defining_dict(cfg).items()}


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Human-readable list of settings that differ, e.g. ``['train.epochs: 8 -> 10']`` (runtime fields aside)."""
    da, db = defining_dict(a), defining_dict(b)
    out = []
    for section in da:
        for key in da[section]:
            if da[section][key] != db[section][key]:
                out.append(f"{section}.{key}: {da[section][key]!r} -> {db[section][key]!r}")
    return out
