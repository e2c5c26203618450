"""Run configuration: frozen dataclasses whose fields carry their own help text.

The whole configuration is saved as ``config.json`` in the run folder. A folder whose saved
configuration differs from the requested one is refused unless overwriting is asked for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any

DEFAULT_IMAGE_SIZE = 32  # the built-in demo's side; kept whatever the model, so `make demo` does not change
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("fp32", "bf16", "auto")  # see trakscope.precision
# The gradient projectors (trakscope.attribution.projector), each with what it is for; the first is the default.
PROJECTORS = {"kronecker": "fast, CPU default", "dense": "reference: vmap gradients x JL"}
PROJ_TYPES = ("rademacher", "normal")  # entries of the dense projector's random matrix
# 8 x 8 px is the smallest source trakscope ships (the digits dataset's own resolution) and the smallest its tests
# run at; below it the training crop (pad 2, so shifts of up to 2 px) moves the image by more than a quarter of its
# side, and a 1 px image holds a colour, not a picture to attribute.
MIN_IMAGE_SIZE = 8



class SettingError(ValueError):
    """A setting the code cannot run with, refused before anything is read, trained, deleted or written.

    ``str(e)`` is one line, e.g. ``--ridge: must be > 0, got 0``: the same from the command line, a ``config.json``
    and the ``TRAK`` engine's arguments. ``flag`` names the setting, ``rule`` is the rest (argparse names the flag
    itself: ``argument --ridge: must be > 0, got 0``).
    """

    def __init__(self, flag: str, rule: str):
        self.flag, self.rule = flag, rule
        super().__init__(f"{flag}: {rule}")


@dataclass(frozen=True)
class Bound:
    """The numbers a setting allows: from ``low`` to ``high`` (None: unbounded), each end included or not."""

    low: float | None = None
    high: float | None = None
    low_in: bool = True
    high_in: bool = False

    def allows(self, value: float) -> bool:
        """Whether ``value`` lies within the bound."""
        above = self.low is None or value > self.low or (self.low_in and value == self.low)
        below = self.high is None or value < self.high or (self.high_in and value == self.high)
        return above and below

    def __str__(self) -> str:
        """``> 0``, ``>= 2``, ``in [0, 0.5)``."""
        if self.high is None:
            return f"{'>=' if self.low_in else '>'} {self.low:g}"
        return f"in {'[' if self.low_in else '('}{self.low:g}, {self.high:g}{']' if self.high_in else ')'}"


POSITIVE = Bound(0, low_in=False)
NON_NEGATIVE = Bound(0)
FRACTION = Bound(0, 1)  # [0, 1)
OPEN_FRACTION = Bound(0, 1, low_in=False)  # (0, 1)
# Labels flipped on purpose, [0, 0.5): a model learns the majority label of what it sees, so at half or more the
# flips are what it learns and no scorer can tell them apart; noise and canaries together stay below half as well.
MINORITY = Bound(0, 0.5)


def _shown(value: Any) -> str:
    """A number as the user typed it, whatever its type: ``0``, ``0.9``, ``nan`` (so messages match everywhere)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    return f"{value:g}" if isinstance(value, numbers.Real) else repr(value)


def check_number(flag: str, value: Any, bound: Bound, whole: bool = False) -> Any:
    """``value`` if it is a finite number (an integer where ``whole``) within ``bound``.

    Raises:
        SettingError: naming ``flag``, the bound and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError(flag, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingError(flag, f"must be a finite number, got {_shown(value)}")
    if whole and not isinstance(value, numbers.Integral):
        raise SettingError(flag, f"must be a whole number, got {_shown(value)}")
    if not bound.allows(value):
        raise SettingError(flag, f"must be {bound}, got {_shown(value)}")
    return value


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with its help text in the metadata.

    Metadata keys: ``bound`` (a :class:`~trakscope.settings.Bound`: the numbers allowed, checked whenever the
    section is made: command line, ``config.json`` and the ``TRAK`` engine alike), ``choices`` (the names allowed),
    ``flag`` (its command-line flag where not ``--field-name``), ``hidden`` (no flag: filled by trakscope itself),
    ``runtime`` (how to run, not what to compute:
    left out of :func:`defining_dict`), ``paths``, ``prefixes`` (see ``commands/_config_args.py``) and ``legacy``:
    for a field added after run folders existed, the value that a ``config.json`` without it means (what trakscope
    did before). A field at its legacy value is left out of :func:`fingerprint_dict`, so that adding it keeps every
    existing folder's fingerprint.
    """
    return field(default=default, metadata={"help": help, **kw})


class CheckedSection:
    """Base of the configuration sections: a section checks every field's ``bound`` and ``choices``, and the rules
    joining its fields (:data:`RULES`), whenever it is made (``dataclasses.replace`` included)."""

    def __post_init__(self) -> None:
        section = SECTION_NAMES[type(self)]
        for f in dataclasses.fields(self):
            check_setting(section, f.name, getattr(self, f.name))
        for rule in RULES.get(section, ()):
            rule(self)


def _flipped_labels_stay_a_minority(data: DataConfig) -> None:
    """``--noise`` and ``--canaries`` flip disjoint labels: together they must leave most labels right."""
    if not MINORITY.allows(data.noise + data.canaries):
        raise SettingError("--noise + --canaries", f"must be < {MINORITY.high:g} together (the flipped labels must "
                                                   f"stay a minority), got {data.noise:g} + {data.canaries:g}")


def _natural_width_needs_kronecker(trak: TrakConfig) -> None:
    """``--proj-dim 0`` means the Kronecker blocks' own width, which only that projector has."""
    if trak.proj_dim == 0 and trak.projector != "kronecker":
        raise SettingError("--proj-dim", f"0 (the natural width of the Kronecker blocks) needs --projector "
                                         f"kronecker, got --projector {trak.projector}")


@dataclass(frozen=True)
class DataConfig(CheckedSection):
    """Which images, which split, how much planted noise."""

    dataset: str = _opt("mnist", "mnist | digits | food101 | imagefolder | hf-parquet")
    data_root: str | None = _opt(None, "local folder holding the dataset (food101, imagefolder, hf-parquet)")
    classes: tuple[str, ...] | None = _opt(None, "class names to keep, class k being the k-th name given; a model's "
                                                 "label map (hf: id2label, --class-map) gives them in its head's "
                                                 "order (default: the first 10 alphabetically)")
    num_classes: int = _opt(10, "how many classes to keep when --classes is not given",
                            bound=Bound(2))  # a margin z_y - logsumexp_{k != y} z_k needs another class
    image_size: int | None = _opt(None, f"side of the square image fed to the model (default: the model's own "
                                        f"preprocessing's, else {DEFAULT_IMAGE_SIZE}; giving it, --mean or --std "
                                        "replaces the model's own preprocessing with trakscope's resize)",
                                  bound=Bound(MIN_IMAGE_SIZE))
    mean: tuple[float, ...] | None = _opt(None, "per-channel RGB mean subtracted from pixels in [0, 1] "
                                                "(default: the model's own, ImageNet's for most)")
    std: tuple[float, ...] | None = _opt(None, "per-channel RGB std the centred pixels are divided by "
                                               "(default: the model's own)")
    noise: float = _opt(0.0, "fraction of training labels flipped on purpose to measure detection (planted noise; "
                             "never on by default: your data stays as it is)",
                     bound=MINORITY)  # at half or more, the flipped labels are what a model learns
    noise_kind: str = _opt("symmetric", "symmetric (flip to a uniformly chosen other class) | confusable (flip "
                                        "between the confusable digits 4-9, 3-5, 7-1) | lookalike (flip to the "
                                        "class most common among its 10 nearest training images of another label, "
                                        "in 16 x 16 pixel space: look-alike errors on any dataset)")
    canaries: float = _opt(0.0, "fraction of training labels flipped as canaries (disjoint from --noise, recorded "
                                "in data/canaries.csv): known errors to measure detection on data without ground "
                                "truth; export restores their labels",
                        bound=MINORITY)  # known errors among right labels: a minority, or they measure nothing
    canary_kind: str = _opt("pairs", "random (flip a canary to a uniformly chosen other class) | nearest (to the "
                                      "class most common among its 10 nearest training images of another label, in "
                                      "16 x 16 pixel space: a confusion the data suggests, as real errors are) | "
                                      "pairs (half the canaries in the (class, wrong label) pairs where cleanlab's "
                                      "confident joint of pixel-space nearest neighbours puts the data's own "
                                      "errors, half uniform) | mixed (half pairs, half nearest: detect's interval "
                                      "covers both kinds' estimates)",
                            legacy="random")
    max_train: int | None = _opt(None, "seeded stratified subset of the training split", bound=POSITIVE)
    max_test: int | None = _opt(None, "seeded stratified subset of the test split", bound=POSITIVE)
    val_fraction: float = _opt(0.1, "fraction of the training pool held out as the validation split; 0: the "
                                    "data's own validation split (imagefolder's val/ folder, hf-parquet's "
                                    "validation shards beside test ones)", bound=FRACTION)
    test_fraction: float = _opt(0.2, "fraction held out as test where the source has no test split",
                                bound=FRACTION)
    seed: int = _opt(0, "seed of the split, the subsets and the planted noise", flag="--data-seed",
                     bound=NON_NEGATIVE)  # numpy refuses negative seeds
    preprocessing: dict[str, Any] | None = _opt(
        None, "the model library's own preprocessing (trakscope.data.preprocess), filled from the model before "
              "config.json is written; None: trakscope's resize", hidden=True, legacy=None)

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
class ModelConfig(CheckedSection):
    """The network and where its initial weights come from."""

    name: str = _opt("resnet18", "resnet18 | efficientnet_lite0 | tiny_cnn | hf:<folder or hub id> | "
                                 "timm:<name> | torchvision:<name>", flag="--model")
    weights: str = _opt("random", "random | pretrained (the named model's own weights) | imagenet (the same, "
                                  "for resnet18, efficientnet_lite0, timm:, torchvision:)")
    weights_path: str | None = _opt(None, "initial weights from a local state dict (.safetensors, or .pt/.pth/.bin "
                                          "read with weights_only); a head of another shape is replaced. For "
                                          "resnet18 with --weights imagenet: torchvision's ImageNet file")
    download: bool = _opt(False, "let transformers, timm or torchvision fetch pretrained weights or configs "
                                 "that are not on this machine (never done otherwise)", runtime=True)
    class_map: str | None = _opt(None, "the class order of the model's head: a file with a JSON list of class names "
                                       "or one name per line (line k = output k); checked against the data's "
                                       "classes. hf: models use their config.json id2label without it",
                                 paths=True, legacy=None)
    checkpoints: tuple[str, ...] | None = _opt(None, "already-trained checkpoints of this architecture to attribute "
                                                     "instead of training (.safetensors, or .pt/.pth/.bin read with "
                                                     "weights_only), one ensemble member each", paths=True)


@dataclass(frozen=True)
class TrainConfig(CheckedSection):
    """Fine-tuning of the checkpoint ensemble."""

    ensemble: int = _opt(2, "number of independently seeded models (2 x 4 checkpoints reaches the LDS plateau of "
                            "the frontier in BENCHMARKS.md; a third model adds half as much training again for +0.003)",
                    bound=POSITIVE)
    epochs: int = _opt(6, "passes over the training split per model (chosen on val accuracy and planted-noise "
                          "detection: benchmarks/epochs.py)", bound=POSITIVE)
    batch_size: int = _opt(128, "training batch size", bound=POSITIVE)
    lr: float = _opt(0.05, "peak SGD learning rate (one-cycle schedule)", bound=NON_NEGATIVE)
    momentum: float = _opt(0.9, "SGD momentum (Nesterov)", bound=OPEN_FRACTION)  # Nesterov SGD refuses 0
    weight_decay: float = _opt(5e-4, "L2 weight decay", bound=NON_NEGATIVE)
    augment: bool = _opt(True, "random crop (pad 2) during training; never during attribution")
    checkpoints_per_model: int = _opt(4, "checkpoints kept per model for TRAK, at most one per epoch (evenly spaced, "
                                         "last one included; 4 along one trajectory beat 10 independent models on "
                                         "validation LDS)", bound=POSITIVE)
    seed: int = _opt(0, "base seed; model m uses seed + m", flag="--train-seed", bound=NON_NEGATIVE)
    num_workers: int = _opt(0, "image decoding workers for file-backed datasets", bound=NON_NEGATIVE)
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
class TrakConfig(CheckedSection):
    """TRAK featurization and scoring."""

    projector: str = _opt(next(iter(PROJECTORS)), " | ".join(f"{k} ({v})" for k, v in PROJECTORS.items()),
                          choices=tuple(PROJECTORS))
    proj_dim: int = _opt(2048, "dimension of the projected gradient features (0: the Kronecker projector's "
                               "per-layer blocks, unmixed)", bound=NON_NEGATIVE)
    proj_type: str = _opt(PROJ_TYPES[0], f"{' | '.join(PROJ_TYPES)} (dense projector entries)", choices=PROJ_TYPES)
    kron_k: int = _opt(16, "Kronecker projector: per-layer input and output width (kron_k^2 features per layer; "
                           "doubled while a small network's blocks are narrower than --proj-dim)", bound=POSITIVE)
    ridge: float = _opt(1.0, "lambda of (X^T X + lambda I) relative to the mean diagonal of X^T X (chosen by LDS "
                             "on validation targets)",
                      bound=POSITIVE)  # lambda > 0 keeps X^T X + lambda I invertible whatever the features
    batch_size: int = _opt(64, "examples per featurization batch", flag="--trak-batch-size", bound=POSITIVE)
    seed: int = _opt(0, "seed of the random projection (checkpoint c uses seed + c)", flag="--proj-seed",
                     bound=NON_NEGATIVE)
    precision: str = _opt("fp32", "fp32 | bf16 (the model's forward pass under bfloat16 autocast; the projection "
                                  "accumulates in float32; kronecker projector only) | auto (as --precision)",
                          choices=PRECISIONS, flag="--trak-precision", legacy="fp32")
    masks: int = _opt(0, "DropConnect-masked copies of each model's final checkpoint, featurized as extra "
                         "checkpoints: a free ensemble when a model has one checkpoint, e.g. imported; checkpoints "
                         "along a trajectory gain little from it (BENCHMARKS.md, LDS versus training compute)",
                      bound=NON_NEGATIVE, legacy=0)
    mask_p: float = _opt(0.3, "fraction of the conv / linear weights (nn.Conv* / nn.Linear modules' weights and "
                              "nn.MultiheadAttention's in-projection weights; embeddings, norms, biases and cls / "
                              "position tokens are kept) each mask zeroes (the "
                              "rest scaled by 1 / (1 - p); chosen by val LDS)", bound=OPEN_FRACTION, legacy=0.3)


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
SECTION_NAMES: dict[type, str] = {cls: name for name, cls in SECTIONS.items()}
RULES: dict[str, tuple[typing.Callable[[Any], None], ...]] = {
    "data": (_flipped_labels_stay_a_minority,),
    "trak": (_natural_width_needs_kronecker,),
}


def _field(section: str, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)


def flag_name(section: str, name: str) -> str:
    """The command-line flag of setting ``section.name``: its ``flag`` metadata, else ``--name-with-dashes``."""
    return _field(section, name).metadata.get("flag", "--" + name.replace("_", "-"))


def _whole(section: str, name: str) -> bool:
    """Whether the field holds an integer (``int`` or ``int | None``)."""
    hint = typing.get_type_hints(SECTIONS[section])[name]
    return int in (typing.get_args(hint) or (hint,))


def check_setting(section: str, name: str, value: Any) -> Any:
    """``value`` if setting ``section.name`` allows it: its field's ``choices`` and ``bound`` (None passes where it
    is the field's default). The one check behind the command line's flags, ``config.json`` and ``TRAK(...)``.

    Raises:
        SettingError: one line naming the flag, what is allowed and the value.
    """
    f = _field(section, name)
    if value is None and f.default is None:
        return value
    flag, choices = flag_name(section, name), f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise SettingError(flag, f"must be one of {', '.join(choices)}, got {value!r}")
    if "bound" in f.metadata:
        check_number(flag, value, f.metadata["bound"], whole=_whole(section, name))
    return value


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


def runtime_fields() -> set[tuple[str, str]]:
    """``(section, field)`` of settings that say how to run, not what to compute (e.g. ``model.download``)."""
    return {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata.get("runtime")}


_ABSENT = object()


def legacy_values() -> dict[tuple[str, str], Any]:
    """``(section, field) -> value`` of the fields added later, at the value older run folders were made with."""
    return {(s, f.name): f.metadata["legacy"] for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if "legacy" in f.metadata}


def defining_dict(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """:meth:`RunConfig.to_dict` without the runtime fields: what a run folder's results depend on.

    ``data.canary_kind`` is left out where no canaries are planted (it changes nothing then), so that a folder made
    before its default became ``pairs`` keeps its fingerprint and resumes with the same flags.
    """
    skip = runtime_fields() | ({("data", "canary_kind")} if cfg.data.canaries == 0 else set())
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
