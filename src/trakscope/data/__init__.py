"""Datasets: built-in digits, Food-101, image folders and Hugging Face parquet, all read locally.

:func:`load_dataset` is the one entry point. It asks a source loader for the class names and the
source's own train (and test, where it has one) pools, then, all seeded by ``DataConfig.seed``:
carves test (if the source has none) and validation out of the training pool (``val_fraction`` 0: takes the
source's own validation split instead, where it has one), takes the
``max_train`` / ``max_test`` stratified subsets, and plants label noise in the training split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from .builtin import load_digits, load_mnist
from .files import available_classes as _file_classes
from .files import library_preprocess, load_food101, load_hf_parquet, load_imagefolder, own_validation
from .images import (
    DataError,
    Dataset,
    FileImages,
    ImageSource,
    ImageSplit,
    NormalizedImages,
    TensorImages,
    batch_slices,
    decode_image,
    iter_batches,
    normalize_uint8,
)
from .neighbours import lookalike_pairs, nearest_confusion
from .preprocess import LibraryPreprocess
from .splits import (
    CANARY_KINDS,
    CONFUSABLE_PAIRS,
    NOISE_KINDS,
    plant_canaries,
    plant_noise,
    stratified_split,
    stratified_subset,
)

__all__ = [
    "CANARY_KINDS",
    "CANARY_SEED_OFFSET",
    "NOISE_KINDS",
    "DataError",
    "Dataset",
    "FileImages",
    "ImageSource",
    "ImageSplit",
    "LibraryPreprocess",
    "NormalizedImages",
    "TensorImages",
    "available_classes",
    "batch_slices",
    "decode_file",
    "dataset_fingerprint",
    "describe_change",
    "iter_batches",
    "load_dataset",
    "plant_dataset_canaries",
    "plant_noise",
    "stratified_split",
    "stratified_subset",
]

DATASETS = ("mnist", "digits", "food101", "imagefolder", "hf-parquet")


def _load_source(cfg: DataConfig) -> tuple[list[str], ImageSplit, ImageSplit | None]:
    """``(classes, train_pool, test_pool or None)`` from the named source."""
    if cfg.dataset in ("mnist", "digits"):
        classes, pool = (load_mnist if cfg.dataset == "mnist" else load_digits)(cfg.image_size,
                                                                                library_preprocess(cfg))
        return (*_select_builtin_classes(classes, pool, cfg), None)
    if cfg.dataset == "food101":
        return load_food101(cfg)
    if cfg.dataset == "imagefolder":
        return load_imagefolder(cfg)
    if cfg.dataset == "hf-parquet":
        return load_hf_parquet(cfg)
    raise DataError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")


def available_classes(cfg: DataConfig) -> list[str]:
    """Every class name the source of ``cfg`` offers, read without decoding an image (a label map is checked
    against these before anything is written).

    Raises:
        DataError: the source is missing or malformed.
    """
    if cfg.dataset in ("mnist", "digits"):
        return [str(c) for c in range(10)]
    if cfg.dataset in DATASETS:
        return _file_classes(cfg)
    raise DataError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")


def decode_file(path: str, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One image file decoded as the run's images are: ``(float32 [1, 3, S, S] model input, uint8 [1, 3, S, S])``,
    through the model library's preprocessing where ``cfg`` records one, else trakscope's resize and ``cfg``'s
    mean and std.

    Raises:
        DataError: the image cannot be read.
    """
    cfg = cfg.with_defaults()
    preprocess = library_preprocess(cfg)
    if preprocess is None:
        raw = decode_image(path, cfg.image_size)[None]
        return normalize_uint8(raw, cfg.mean, cfg.std), raw
    x = FileImages([path], cfg.image_size, preprocess=preprocess).batch(np.array([0]))
    return x, preprocess.to_uint8(x)


def _select_builtin_classes(classes: list[str], pool: ImageSplit, cfg: DataConfig) -> tuple[list[str], ImageSplit]:
    if cfg.classes is None:
        return classes, pool
    unknown = [c for c in cfg.classes if c not in classes]
    if unknown:
        raise DataError(f"unknown class name(s) {unknown}; {cfg.dataset} has {classes}")
    keep_names = list(cfg.classes)
    old_to_new = {classes.index(c): i for i, c in enumerate(keep_names)}
    idx = np.flatnonzero(np.isin(pool.labels, list(old_to_new)))
    sub = pool.subset(idx)
    remap = np.vectorize(old_to_new.get, otypes=[np.int64])
    return keep_names, ImageSplit(sub.images, remap(sub.labels), remap(sub.true_labels), sub.source_ids)


CANARY_SEED_OFFSET = 6  # DataConfig.seed + this seeds the canaries' look-alike classes (pairs and nearest)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load, split, subset and plant noise as ``cfg`` says. Deterministic under ``cfg.seed``.

    Fields left None get :meth:`DataConfig.with_defaults` (32 px, ImageNet mean and std); batches of every
    split are normalised with ``cfg.mean`` and ``cfg.std``.

    Raises:
        DataError: the data is absent or malformed; the message names the expected layout.
    """
    cfg = cfg.with_defaults()
    classes, pool, test = _load_source(cfg)
    if test is None:
        rest, held = stratified_split(pool.labels, cfg.test_fraction, seed=cfg.seed)
        pool, test = pool.subset(rest), pool.subset(held)
    if cfg.val_fraction == 0:
        train, val = pool, _own_validation(cfg, classes)
    else:
        train_idx, val_idx = stratified_split(pool.labels, cfg.val_fraction, seed=cfg.seed + 1)
        train, val = pool.subset(train_idx), pool.subset(val_idx)
    if cfg.max_train is not None and cfg.max_train < len(classes):
        raise DataError(f"--max-train {cfg.max_train} is fewer than the {len(classes)} classes; a stratified subset "
                        f"needs at least one training image per class (use --max-train {len(classes)} or more, "
                        "or fewer --classes)")
    if cfg.max_train is not None:
        train = train.subset(stratified_subset(train.labels, cfg.max_train, seed=cfg.seed + 2))
    if cfg.max_test is not None:
        test = test.subset(stratified_subset(test.labels, cfg.max_test, seed=cfg.seed + 3))
    noisy, flipped = plant_noise(train.labels, len(classes), cfg.noise, seed=cfg.seed + 4, kind=cfg.noise_kind,
                                 pairs=_confusable_pairs(classes) if cfg.noise_kind == "confusable" else (),
                                 confusion=nearest_confusion(train.images, train.labels, seed=cfg.seed + 7)
                                 if cfg.noise_kind == "lookalike" and cfg.noise > 0 else None)
    labels, canary, _ = plant_dataset_canaries(cfg, train.images, noisy, flipped, len(classes))
    train = ImageSplit(train.images, labels, train.true_labels, train.source_ids, canary)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise DataError(f"the {name} split of {cfg.dataset} is empty; add data or change the split fractions")
    return Dataset(cfg.dataset, classes, train, val, test).normalized(cfg.mean, cfg.std)


# The scorers of `detect` that read the validation split (the inputs val_scores, val_probs, val_labels of
# methods/registry.py; tests/test_data_files.py checks this list against the registry).
VALIDATION_SCORERS = ("d3m", "val_all", "val_same_label")
_NO_OWN_VALIDATION = {"imagefolder": ("no val/ folder beside train/ in {root}", ", or add {root}/val/<class>/ images"),
                      "hf-parquet": ("no *validation*.parquet shards beside *test* ones in {root}",
                                     ", or add validation shards")}


def _own_validation(cfg: DataConfig, classes: list[str]) -> ImageSplit:
    """The source's own validation split for ``--val-fraction 0`` (:func:`~.files.own_validation`).

    Raises:
        DataError: the source has none; one line saying what would give one and why trakscope needs it.
    """
    val = own_validation(cfg, classes)
    if val is not None:
        return val
    lacks, add = _NO_OWN_VALIDATION.get(cfg.dataset, ("it has a training and a test split only", ""))
    root = cfg.data_root or "the data root"
    raise DataError(f"--val-fraction 0 takes the data's own validation split, and {cfg.dataset} has none "
                    f"({lacks.format(root=root)}); trakscope needs one: `run` measures the ensemble on it and "
                    f"detect's D3M and validation-influence scorers ({', '.join(VALIDATION_SCORERS)}) score every "
                    "training example against it. Use --val-fraction 0.1 (the default: carved from the training "
                    f"pool and listed in `export`'s keep-list with split=val){add.format(root=root)}")
def plant_dataset_canaries(cfg: DataConfig, images: ImageSource, noisy: np.ndarray, flipped: np.ndarray,
                           num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The canaries of ``cfg`` on the training labels ``noisy`` (int ``[n]``, after the planted noise ``flipped``).

    ``mixed`` plants half (rounded down) as ``pairs`` and the rest as ``nearest`` among the examples left.

    Returns:
        ``(labels, canary, kind)``: int64 ``[n]``, bool ``[n]``, and int8 ``[n]`` the index in :data:`CANARY_KINDS`
        of each canary's kind (-1 elsewhere); ``detect`` replays this to know each canary's kind.
    """
    if cfg.canary_kind != "mixed":
        labels, canary = plant_canaries(noisy, num_classes, cfg.canaries, seed=cfg.seed + 5, exclude=flipped,
                                        confusion=_canary_confusion(cfg, images, noisy),
                                        pair_weights=_canary_pairs(cfg, images, noisy, num_classes))
        return labels, canary, np.where(canary, CANARY_KINDS.index(cfg.canary_kind), -1).astype(np.int8)
    n = int(round(cfg.canaries * len(noisy)))
    half = dataclasses.replace(cfg, canary_kind="pairs", canaries=(n // 2) / len(noisy))
    first, canary1, kind1 = plant_dataset_canaries(half, images, noisy, flipped, num_classes)
    rest = dataclasses.replace(cfg, canary_kind="nearest", canaries=(n - n // 2) / len(noisy), seed=cfg.seed)
    labels, canary2 = plant_canaries(first, num_classes, rest.canaries, seed=cfg.seed + 8,
                                     exclude=np.asarray(flipped, bool) | canary1,
                                     confusion=_canary_confusion(rest, images, noisy))
    kind = np.where(canary2, CANARY_KINDS.index("nearest"), kind1).astype(np.int8)
    return labels, canary1 | canary2, kind


def _canary_confusion(cfg: DataConfig, images: ImageSource, labels: np.ndarray):
    """``plant_canaries``' ``confusion`` for ``cfg.canary_kind``: None (uniform flips, and ``pairs``, which draws
    its pairs instead) or nearest neighbours."""
    if cfg.canary_kind not in CANARY_KINDS:
        raise DataError(f"unknown canary kind {cfg.canary_kind!r}; choose one of {', '.join(CANARY_KINDS)}")
    seed = cfg.seed + CANARY_SEED_OFFSET
    return nearest_confusion(images, labels, seed=seed) if cfg.canary_kind == "nearest" else None


def _canary_pairs(cfg: DataConfig, images: ImageSource, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """``plant_canaries``' ``pair_weights``: the look-alike pairs for ``--canary-kind pairs``, else None."""
    if cfg.canary_kind != "pairs" or cfg.canaries == 0:
        return None
    return lookalike_pairs(images, labels, num_classes, seed=cfg.seed + CANARY_SEED_OFFSET)


def _confusable_pairs(classes: list[str]) -> tuple[tuple[int, int], ...]:
    """Class ids of :data:`~.splits.CONFUSABLE_PAIRS` (digit names) in ``classes``."""
    pairs = tuple((classes.index(a), classes.index(b)) for a, b in CONFUSABLE_PAIRS if a in classes and b in classes)
    if not pairs:
        raise DataError(f"--noise-kind confusable flips between the digit pairs {CONFUSABLE_PAIRS}; "
                        f"none of them is among the classes {classes}")
    return pairs


def _file_paths(images: ImageSource) -> list[str] | None:
    """The image files behind ``images`` (unwrapping normalisation), or None when they are not files."""
    images = _unwrap(images)
    return images.paths if isinstance(images, FileImages) else None


def _unwrap(images: ImageSource) -> ImageSource:
    while isinstance(images, NormalizedImages):
        images = images.source
    return images


def _sha256(parts: list[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


FileDigests = Callable[[list[str]], list[str]]  # image file paths -> the sha256 of each file's bytes


def _content_digest(images: ImageSource, file_digests: FileDigests | None) -> str | None:
    """sha256 over the images' bytes in order: of each file (through ``file_digests``), of each encoded image held
    in memory, or of the pixel tensor; None for files when no ``file_digests`` is given."""
    images = _unwrap(images)
    if isinstance(images, FileImages):
        return None if file_digests is None else _sha256(file_digests(list(images.paths)))
    if isinstance(images, TensorImages):
        return hashlib.sha256(images.images.contiguous().numpy().tobytes()).hexdigest()
    blobs = getattr(images, "blobs", None)  # parquet: encoded images held in memory
    if blobs is not None:
        return _sha256([hashlib.sha256(b).hexdigest() for b in blobs])
    return None


def split_fingerprint(split: ImageSplit, file_digests: FileDigests | None = None) -> dict[str, Any]:
    """``{n, ids_labels, files, content}`` of a split: count, sha256 of the ordered (source id, label, true label),
    sha256 of the image files' sizes (None where the images are not files; sizes survive copying, mtimes do not),
    and sha256 of the images' content in order (see :func:`_content_digest`).
    """
    rows = [f"{s}\t{y}\t{t}" for s, y, t in zip(split.source_ids, split.labels, split.true_labels)]
    paths = _file_paths(split.images)
    files = None
    if paths is not None:
        files = _sha256([str(os.stat(p).st_size) if os.path.exists(p) else "missing" for p in paths])
    return {"n": len(split), "ids_labels": _sha256(rows), "files": files,
            "content": _content_digest(split.images, file_digests)}


def dataset_fingerprint(dataset: Dataset, file_digests: FileDigests | None = None) -> dict[str, dict[str, Any]]:
    """:func:`split_fingerprint` of train, val and test (``file_digests``: how to hash image files, e.g. cached)."""
    return {name: split_fingerprint(dataset.split(name), file_digests) for name in ("train", "val", "test")}


def describe_change(recorded: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """What changed between two :func:`split_fingerprint` results, e.g. ``12 images added``; "" when nothing did."""
    if recorded is None:
        return ""
    if recorded["n"] != now["n"]:
        diff = now["n"] - recorded["n"]
        return f"{abs(diff)} image{'s' if abs(diff) != 1 else ''} {'added' if diff > 0 else 'removed'}"
    if recorded["ids_labels"] != now["ids_labels"]:
        return "other images or labels in the same number"
    if recorded.get("files") is not None and now["files"] is not None and recorded["files"] != now["files"]:
        return "image files of the same names changed size"
    if recorded.get("content") is not None and now.get("content") is not None and recorded["content"] != now["content"]:
        return "the content of image files changed (same names and sizes)"
    return ""
