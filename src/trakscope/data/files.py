"""Datasets read from local files: Food-101, image folders and Hugging Face parquet shards.

Each loader takes a :class:`~trakscope.config.DataConfig` and returns ``(classes, train_pool, test_pool)``
with ``labels == true_labels``; :func:`trakscope.data.load_dataset` does the splitting, subsetting and
noise planting. trakscope never downloads: a missing or malformed folder is a :class:`DataError` that
shows the expected layout.

Class choice is the same for every loader: ``cfg.classes`` picks classes by name, in the order given (a model's
label map, filled in by ``trakscope.models.resolve_config``, gives it that way), otherwise the first
``cfg.num_classes`` names in alphabetical order are kept (all of them if there are fewer). Class ``k`` is the
``k``-th of the chosen names, one map shared by both splits. :func:`available_classes` lists a source's class
names without reading its images.

Images are decoded by trakscope's own resize, or by the model library's (``cfg.preprocessing``, see
:mod:`trakscope.data.preprocess`).
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from .images import DataError, FileImages, ImageSource, ImageSplit, decode_image, open_rgb, preprocessed
from .preprocess import LibraryPreprocess, PreprocessError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
NEVER_DOWNLOADS = "trakscope never downloads data; put the files there yourself."

FOOD101_LAYOUT = """\
<data_root>/food-101/          (or --data-root pointing at food-101/ itself)
    meta/train.json            {"apple_pie": ["apple_pie/1005649", ...], ...}
    meta/test.json
    images/apple_pie/1005649.jpg
    images/<class>/<id>.jpg ..."""

IMAGEFOLDER_LAYOUT = """\
<data_root>/train/<class>/<image>      with split folders: test/ (optional; carved by seed if absent)
<data_root>/test/<class>/<image>       and val/ (optional; merged into the training pool)
or a single folder:
<data_root>/<class>/<image>            (test carved by seed)
image files: .jpg .jpeg .png .bmp .gif .webp"""

HF_PARQUET_LAYOUT = """\
<data_root>/**/*train*.parquet         e.g. data/train-00000-of-00008.parquet
<data_root>/**/*validation*.parquet    or *test*.parquet (optional; carved by seed if absent)
columns: image {bytes, path}, label (int); class names from the Hugging Face features metadata,
or from <data_root>/classes.txt (one name per line, line k = label k)"""


def _layout_error(problem: str, layout: str) -> DataError:
    return DataError(f"{problem}\nexpected layout:\n{layout}\n{NEVER_DOWNLOADS}")


def _data_root(cfg: DataConfig, layout: str) -> Path:
    """``cfg.data_root`` as an existing folder, else a :class:`DataError` showing ``layout``."""
    if not cfg.data_root:
        raise _layout_error(f"dataset {cfg.dataset!r} needs --data-root, a local folder", layout)
    root = Path(cfg.data_root).expanduser()
    if not root.is_dir():
        raise _layout_error(f"{cfg.dataset} data root {root} is not a folder", layout)
    return root


def choose_classes(available: Sequence[str], cfg: DataConfig) -> list[str]:
    """The chosen class names: ``cfg.classes`` in its order, or the first ``cfg.num_classes`` alphabetically.

    Raises:
        DataError: an unknown or repeated name, or fewer than two classes.
    """
    names = sorted(set(available))
    if cfg.classes is not None:
        unknown = [c for c in cfg.classes if c not in names]
        if unknown:
            raise DataError(f"unknown class name(s) {unknown} in {cfg.dataset}; {_name_hint(unknown, names)}")
        if len(set(cfg.classes)) != len(cfg.classes):
            raise DataError(f"repeated class name(s) in {list(cfg.classes)}")
        chosen = list(cfg.classes)
    else:
        if cfg.num_classes < 1:
            raise DataError(f"num_classes must be positive, got {cfg.num_classes}")
        chosen = names[: cfg.num_classes]
    if len(chosen) < 2:
        raise DataError(f"{cfg.dataset} needs at least two classes, got {chosen} (of {len(names)} available)")
    return chosen


def _name_hint(unknown: Sequence[str], names: Sequence[str]) -> str:
    close = sorted({m for u in unknown for m in difflib.get_close_matches(u, names, n=3)})
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    hint = f"valid names ({len(names)}): {shown}"
    return f"did you mean {', '.join(close)}? {hint}" if close else hint


# --------------------------------------------------------------------------------------------- Food-101


def _food101_dir(cfg: DataConfig) -> Path:
    """The ``food-101`` folder: ``data_root/food-101`` or ``data_root`` itself."""
    root = _data_root(cfg, FOOD101_LAYOUT)
    for base in (root / "food-101", root):
        if (base / "meta" / "train.json").is_file() and (base / "meta" / "test.json").is_file():
            return base
    raise _layout_error(f"no Food-101 meta/train.json and meta/test.json under {root}", FOOD101_LAYOUT)


def _read_food101_meta(path: Path) -> dict[str, list[str]]:
    """``{class name: ["class/id", ...]}`` from ``meta/{train,test}.json``."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read Food-101 meta file {path}: {e}") from None
    ok = isinstance(meta, dict) and all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in meta.values()
    )
    if not ok:
        raise _layout_error(f"{path} is not a JSON object of class name -> list of 'class/id'", FOOD101_LAYOUT)
    return meta


def load_food101(cfg: DataConfig) -> tuple[list[str], ImageSplit, ImageSplit]:
    """Food-101 in the torchvision layout under ``cfg.data_root``; the official train/test split.

    Only the chosen classes' image folders are checked up front; a missing or corrupt image is a
    :class:`DataError` naming its path when it is decoded. ``source_id`` is e.g. ``images/apple_pie/1005649.jpg``.
    """
    base = _food101_dir(cfg)
    train_meta = _read_food101_meta(base / "meta" / "train.json")
    test_meta = _read_food101_meta(base / "meta" / "test.json")
    classes = choose_classes(train_meta, cfg)
    missing = [c for c in classes if not (base / "images" / c).is_dir()]
    if missing:
        raise _layout_error(f"missing image folder(s) {[str(base / 'images' / c) for c in missing]}", FOOD101_LAYOUT)
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for meta in (train_meta, test_meta):
        rel = [(f"images/{entry}.jpg", index[c]) for c in classes for entry in meta.get(c, [])]
        splits.append(_file_split([base / r for r, _ in rel], [y for _, y in rel], [r for r, _ in rel], cfg))
    return classes, splits[0], splits[1]


def library_preprocess(cfg: DataConfig) -> LibraryPreprocess | None:
    """The model library's preprocessing recorded in ``cfg.preprocessing`` (None: trakscope's own resize).

    Raises:
        DataError: the record cannot be rebuilt; the message says what to do.
    """
    try:
        return LibraryPreprocess.from_record(cfg.preprocessing)
    except PreprocessError as e:
        raise DataError(str(e)) from None


def _file_split(paths: Sequence[Path], labels: Sequence[int], ids: Sequence[str], cfg: DataConfig) -> ImageSplit:
    y = np.asarray(labels, dtype=np.int64)
    images = FileImages([str(p) for p in paths], cfg.image_size, preprocess=library_preprocess(cfg))
    return ImageSplit(images, y, y.copy(), list(ids))


# --------------------------------------------------------------------------------------------- image folder


def _class_dirs(folder: Path) -> dict[str, Path]:
    """``{name: path}`` of the visible sub-folders of ``folder``."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / f for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def _folder_split(root: Path, split_dirs: Sequence[Path], classes: list[str], cfg: DataConfig) -> ImageSplit:
    """All images of ``classes`` under each of ``split_dirs``; ``source_id`` is the path relative to ``root``."""
    paths, labels = [], []
    for y, c in enumerate(classes):
        for d in split_dirs:
            files = _image_files(d / c) if (d / c).is_dir() else []
            paths += files
            labels += [y] * len(files)
    return _file_split(paths, labels, [p.relative_to(root).as_posix() for p in paths], cfg)


def load_imagefolder(cfg: DataConfig) -> tuple[list[str], ImageSplit, ImageSplit | None]:
    """Images in ``<root>/<split>/<class>/`` (``train``, optional ``test`` and ``val``) or ``<root>/<class>/``.

    With split folders, classes are the sub-folders of ``train/`` and a ``val/`` folder is merged into
    the training pool (``load_dataset`` carves validation by seed); without ``test/`` (or with a single
    folder) the test pool is ``None`` and is carved by seed.

    Raises:
        DataError: the folder is missing, or a chosen class has no training image.
    """
    root = _data_root(cfg, IMAGEFOLDER_LAYOUT)
    if (root / "train").is_dir():
        train_dirs = [root / "train"] + ([root / "val"] if (root / "val").is_dir() else [])
        test_dirs = [root / "test"] if (root / "test").is_dir() else []
    else:
        train_dirs, test_dirs = [root], []
    available = _class_dirs(train_dirs[0])
    if not available:
        raise _layout_error(f"no class folders in {train_dirs[0]}", IMAGEFOLDER_LAYOUT)
    classes = choose_classes(list(available), cfg)
    train = _folder_split(root, train_dirs, classes, cfg)
    empty = [c for y, c in enumerate(classes) if not np.any(train.labels == y)]
    if empty:
        raise _layout_error(f"no training images for class(es) {empty} under {train_dirs[0]}", IMAGEFOLDER_LAYOUT)
    test = _folder_split(root, test_dirs, classes, cfg) if test_dirs else None
    return classes, train, test


# --------------------------------------------------------------------------------------------- parquet


class BytesImages(ImageSource):
    """Encoded images (JPEG/PNG bytes) held in memory, decoded on demand like :class:`FileImages`.

    ``names[i]`` (the source id) is what a decoding error reports.
    """

    def __init__(self, blobs: Sequence[bytes], names: Sequence[str], size: int,
                 preprocess: LibraryPreprocess | None = None):
        if len(blobs) != len(names):
            raise ValueError("blobs and names must have the same length")
        self.blobs, self.names, self.size, self.preprocess = list(blobs), list(names), size, preprocess

    def __len__(self) -> int:
        return len(self.blobs)

    def uint8(self, indices: np.ndarray) -> torch.Tensor:
        if self.preprocess is not None:
            return self.preprocess.to_uint8(self.batch(indices))
        out = [self._decode(int(i)) for i in np.asarray(indices)]
        return torch.stack(out) if out else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        if self.preprocess is None:
            return super().batch(indices)
        out = [preprocessed(open_rgb(self._bytes(int(i)), self.names[int(i)]), self.preprocess, self.names[int(i)])
               for i in np.asarray(indices)]
        return torch.stack(out) if out else torch.zeros(0, 3, self.size, self.size)

    def _bytes(self, i: int) -> io.BytesIO:
        if not self.blobs[i]:
            raise DataError(f"cannot read image {self.names[i]}: no image bytes")
        return io.BytesIO(self.blobs[i])

    def _decode(self, i: int) -> torch.Tensor:
        return decode_image(self._bytes(i), self.size, name=self.names[i])

    def subset(self, indices: np.ndarray) -> BytesImages:
        idx = [int(i) for i in np.asarray(indices)]
        return BytesImages([self.blobs[i] for i in idx], [self.names[i] for i in idx], self.size, self.preprocess)


def _split_tags(rel: Path) -> set[str]:
    """Words of a parquet file's relative path, e.g. ``data/train-00000-of-00002.parquet`` -> {data, train, ...}."""
    return set(re.split(r"[-_./\\]+", rel.with_suffix("").as_posix().lower()))


def _parquet_files(root: Path) -> tuple[list[Path], list[Path]]:
    """``(train files, test files)``: test is ``*test*`` if present, else ``*validation*``.

    Validation files are merged into the training files when test files exist too.
    """
    files = sorted(root.rglob("*.parquet"))
    tags = {f: _split_tags(f.relative_to(root)) for f in files}
    train = [f for f in files if "train" in tags[f]]
    valid = [f for f in files if tags[f] & {"validation", "valid", "val"} and f not in train]
    test = [f for f in files if "test" in tags[f] and f not in train]
    if not train:
        raise _layout_error(f"no *train*.parquet files under {root}", HF_PARQUET_LAYOUT)
    return (train + valid, test) if test else (train, valid)


def _hf_class_names(schema: Any, label: str) -> list[str] | None:
    """ClassLabel names of column ``label`` from the Hugging Face schema metadata, if present."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    features = meta.get("info", {}).get("features") or meta.get("features") or {}
    names = features.get(label, {}).get("names") if isinstance(features, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def _parquet_class_names(root: Path, files: Sequence[Path], pq: Any) -> list[str]:
    """Class names, index = label int: from the first file's metadata, else ``root/classes.txt``."""
    try:
        schema = pq.read_schema(files[0])
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read parquet file {files[0]}: {e}") from None
    names = _hf_class_names(schema, "label")
    if names is not None:
        return names
    txt = root / "classes.txt"
    if txt.is_file():
        return [line.strip() for line in txt.read_text().splitlines() if line.strip()]
    raise _layout_error(f"no class names in the metadata of {files[0]} and no {txt}", HF_PARQUET_LAYOUT)


def _read_parquet_split(
    root: Path, files: Sequence[Path], old_to_new: dict[int, int], cfg: DataConfig, pq: Any
) -> ImageSplit:
    """Rows of ``files`` whose label is a key of ``old_to_new``; image bytes kept in memory."""
    blobs: list[bytes] = []
    labels: list[int] = []
    ids: list[str] = []
    keep = np.array(sorted(old_to_new), dtype=np.int64)
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            pf = pq.ParquetFile(f)
            missing = {"image", "label"} - set(pf.schema_arrow.names)
            if missing:
                raise _layout_error(f"{f} lacks column(s) {sorted(missing)}", HF_PARQUET_LAYOUT)
            start = 0
            for g in range(pf.num_row_groups):
                y = pf.read_row_group(g, columns=["label"]).column("label").to_numpy(zero_copy_only=False)
                rows = np.flatnonzero(np.isin(y, keep))
                if len(rows):
                    images = pf.read_row_group(g, columns=["image"]).column("image").take(rows).to_pylist()
                    blobs += [(im or {}).get("bytes") or b"" for im in images]
                    labels += [old_to_new[int(v)] for v in y[rows]]
                    ids += [f"{rel}#{start + int(r)}" for r in rows]
                start += len(y)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            raise DataError(f"cannot read parquet file {f}: {e}") from None
    y = np.asarray(labels, dtype=np.int64)
    return ImageSplit(BytesImages(blobs, ids, cfg.image_size, library_preprocess(cfg)), y, y.copy(), ids)


def load_hf_parquet(cfg: DataConfig) -> tuple[list[str], ImageSplit, ImageSplit | None]:
    """Hugging Face image-classification parquet shards (e.g. Food-101's) from a local folder, read with pyarrow.

    Labels are mapped to names with the dataset's ClassLabel order, classes are chosen by name and
    renumbered ``0..K-1`` in the chosen order. The chosen rows' encoded images are held in memory
    (about 50 kB per Food-101 image) and decoded on demand. ``source_id`` is ``<file>#<row>``.
    """
    try:
        import pyarrow.parquet as pq  # lazy: pyarrow is optional (the hf extra), only for hf-parquet
    except ImportError:
        raise DataError("hf-parquet needs pyarrow: pip install 'trakscope[hf]'") from None
    root = _data_root(cfg, HF_PARQUET_LAYOUT)
    train_files, test_files = _parquet_files(root)
    names = _parquet_class_names(root, train_files, pq)
    classes = choose_classes(names, cfg)
    old_to_new = {names.index(c): i for i, c in enumerate(classes)}
    train = _read_parquet_split(root, train_files, old_to_new, cfg, pq)
    test = _read_parquet_split(root, test_files, old_to_new, cfg, pq) if test_files else None
    return classes, train, test


def available_classes(cfg: DataConfig) -> list[str]:
    """Every class name the file source of ``cfg`` offers (its folder names, meta file or parquet metadata),
    read without decoding an image.

    Raises:
        DataError: the source is missing or malformed; the message shows the expected layout.
    """
    if cfg.dataset == "food101":
        return sorted(_read_food101_meta(_food101_dir(cfg) / "meta" / "train.json"))
    if cfg.dataset == "imagefolder":
        root = _data_root(cfg, IMAGEFOLDER_LAYOUT)
        return list(_class_dirs(root / "train" if (root / "train").is_dir() else root))
    try:
        import pyarrow.parquet as pq  # lazy: pyarrow is optional (the hf extra), only for hf-parquet
    except ImportError:
        raise DataError("hf-parquet needs pyarrow: pip install 'trakscope[hf]'") from None
    root = _data_root(cfg, HF_PARQUET_LAYOUT)
    return _parquet_class_names(root, _parquet_files(root)[0], pq)
