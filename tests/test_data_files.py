"""Local-file datasets: Food-101 layout, image folders, Hugging Face parquet shards.

Every image is a solid colour that encodes its class, so decoded pixels show whether labels are right.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trakscope.config import DataConfig
from trakscope.data import DataError, FileImages, ImageSplit, iter_batches, load_dataset
from trakscope.data.files import load_food101, load_hf_parquet, load_imagefolder
from trakscope.data.images import decode_image

# Meta order is deliberately not alphabetical.
COLORS = {"tacos": (220, 40, 40), "apple_pie": (40, 220, 40), "sushi": (40, 40, 220), "baklava": (220, 220, 40)}
SIZE = 8


def _save(path: Path, color: tuple[int, int, int], fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (14, 10), color).save(path, format=fmt)


def _encoded(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 12), color).save(buf, format="PNG")
    return buf.getvalue()


def _pixel_classes(split: ImageSplit) -> list[str]:
    """The class whose colour is nearest to each decoded image's mean colour."""
    means = split.images.uint8(np.arange(len(split))).float().mean(dim=(2, 3)).numpy()
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=np.float64)
    return [names[i] for i in np.argmin(((means[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)]


def _assert_labels_match_pixels(classes: list[str], split: ImageSplit) -> None:
    assert [classes[y] for y in split.true_labels] == _pixel_classes(split)


def make_food101(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    """A Food-101 tree under ``root/food-101`` with every class of COLORS."""
    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    for c, color in COLORS.items():
        for split, start, n in (("train", 1000, n_train), ("test", 5000, n_test)):
            meta[split][c] = [f"{c}/{start + k}" for k in range(n)]
            for k in range(n):
                _save(base / "images" / c / f"{start + k}.jpg", color)
    (base / "meta").mkdir()
    for split in meta:
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta[split]))
    return base


def food_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "food101", "data_root": str(root), "image_size": SIZE, **kw})


# --------------------------------------------------------------------------------------------- Food-101


@pytest.mark.parametrize("at_food101_dir", [False, True])
def test_food101_classes_by_name_share_one_map(tmp_path: Path, at_food101_dir: bool) -> None:
    base = make_food101(tmp_path)
    root = base if at_food101_dir else tmp_path
    classes, train, test = load_food101(food_cfg(root, classes=("apple_pie", "sushi")))
    assert classes == ["apple_pie", "sushi"]
    assert (len(train), len(test)) == (12, 6)
    for split, first_id in ((train, 1000), (test, 5000)):
        assert np.array_equal(split.labels, split.true_labels)
        _assert_labels_match_pixels(classes, split)
        assert split.source_ids[0] == f"images/apple_pie/{first_id}.jpg"
        assert all(
            sid.startswith(f"images/{classes[y]}/") for sid, y in zip(split.source_ids, split.labels, strict=True)
        )
    assert split.images.uint8(np.array([0, 1])).shape == (2, 3, SIZE, SIZE)


def test_food101_default_is_first_n_alphabetically(tmp_path: Path) -> None:
    make_food101(tmp_path, n_train=2, n_test=1)
    classes, train, _ = load_food101(food_cfg(tmp_path, num_classes=3))
    assert classes == ["apple_pie", "baklava", "sushi"]
    assert sorted(set(train.labels.tolist())) == [0, 1, 2]
    classes, _, _ = load_food101(food_cfg(tmp_path))  # default 10 > 4 available: all of them
    assert classes == sorted(COLORS)


def test_food101_through_load_dataset(tmp_path: Path) -> None:
    make_food101(tmp_path, n_train=10, n_test=4)
    cfg = food_cfg(tmp_path, num_classes=3, noise=0.25, val_fraction=0.2, seed=3)
    ds = load_dataset(cfg)
    assert ds.classes == ["apple_pie", "baklava", "sushi"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 12)
    assert ds.train.noisy.sum() == round(0.25 * 24) and not ds.val.noisy.any() and not ds.test.noisy.any()
    assert not set(ds.train.source_ids) & set(ds.val.source_ids)
    assert all("/50" in s for s in ds.test.source_ids)  # the official test split, ids 5000+
    for split in (ds.train, ds.val, ds.test):
        _assert_labels_match_pixels(ds.classes, split)
    assert np.array_equal(load_dataset(cfg).train.labels, ds.train.labels)  # seeded


def test_food101_unknown_class_lists_valid_names(tmp_path: Path) -> None:
    make_food101(tmp_path, n_train=1, n_test=1)
    with pytest.raises(DataError) as e:
        load_food101(food_cfg(tmp_path, classes=("apple_pi", "sushi")))
    msg = str(e.value)
    assert "apple_pi" in msg and "did you mean apple_pie" in msg and "baklava" in msg


@pytest.mark.parametrize("where", ["none", "absent", "empty"])
def test_food101_missing_root_names_the_layout(tmp_path: Path, where: str) -> None:
    (tmp_path / "empty").mkdir()
    root = {"none": None, "absent": str(tmp_path / "absent"), "empty": str(tmp_path / "empty")}[where]
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset="food101", data_root=root))
    msg = str(e.value)
    assert "food-101/" in msg and "meta/train.json" in msg and "images/apple_pie/1005649.jpg" in msg
    assert "never downloads" in msg


def test_food101_missing_class_folder(tmp_path: Path) -> None:
    base = make_food101(tmp_path, n_train=1, n_test=1)
    for f in (base / "images" / "sushi").iterdir():
        f.unlink()
    (base / "images" / "sushi").rmdir()
    with pytest.raises(DataError, match="images/sushi"):
        load_food101(food_cfg(tmp_path, classes=("sushi", "tacos")))
    assert load_food101(food_cfg(tmp_path, classes=("baklava", "tacos")))[0] == ["baklava", "tacos"]


def test_corrupt_image_error_names_the_path(tmp_path: Path) -> None:
    base = make_food101(tmp_path, n_train=5, n_test=2)
    bad = base / "images" / "apple_pie" / "1003.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = load_dataset(food_cfg(tmp_path, num_classes=2, noise=0.0, val_fraction=0.2))
    split = next(s for s in (ds.train, ds.val) if "images/apple_pie/1003.jpg" in s.source_ids)
    i = split.source_ids.index("images/apple_pie/1003.jpg")
    with pytest.raises(DataError, match=str(bad)):
        split.images.batch(np.array([0, i]))


def test_file_images_decode_in_workers(tmp_path: Path) -> None:
    base = make_food101(tmp_path, n_train=3, n_test=1)
    paths = sorted(str(p) for p in (base / "images").rglob("*.jpg"))
    images = FileImages(paths, SIZE)
    order = np.arange(len(paths))[::-1].copy()
    serial = list(iter_batches(images, order, batch_size=3))
    parallel = list(iter_batches(images, order, batch_size=3, num_workers=2))
    assert len(parallel) == len(serial) == 6
    for (i0, x0), (i1, x1) in zip(serial, parallel, strict=True):
        assert np.array_equal(i0, i1) and x0.shape == (len(i0), 3, SIZE, SIZE)
        assert x0.dtype == x1.dtype and bool((x0 == x1).all())
    Path(paths[4]).write_bytes(b"broken")
    with pytest.raises(DataError, match=paths[4]):
        list(iter_batches(images, order, batch_size=3, num_workers=2))
    assert multiprocessing.active_children() == []  # workers stopped at once, not when the traceback is collected


# --------------------------------------------------------------------------------------------- image folder


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "imagefolder", "data_root": str(root), "image_size": SIZE, **kw})


def test_imagefolder_split_layout(tmp_path: Path) -> None:
    for c, color in COLORS.items():
        for k in range(3):
            _save(tmp_path / "train" / c / f"a{k}.JPG", color)
        _save(tmp_path / "train" / c / "nested" / "b.png", color, fmt="PNG")
        _save(tmp_path / "val" / c / "v.webp", color, fmt="WEBP")
        _save(tmp_path / "test" / c / "t.bmp", color, fmt="BMP")
    (tmp_path / "train" / "tacos" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "tacos" / ".hidden.jpg").write_bytes(b"")
    classes, train, test = load_imagefolder(folder_cfg(tmp_path, classes=("baklava", "tacos")))
    assert classes == ["baklava", "tacos"]
    assert (len(train), len(test)) == (10, 2)  # 3 + nested + val, per class
    assert train.source_ids[:5] == ["train/baklava/a0.JPG", "train/baklava/a1.JPG", "train/baklava/a2.JPG",
                                    "train/baklava/nested/b.png", "val/baklava/v.webp"]  # fmt: skip
    assert test.source_ids == ["test/baklava/t.bmp", "test/tacos/t.bmp"]
    _assert_labels_match_pixels(classes, train)
    _assert_labels_match_pixels(classes, test)
    assert load_imagefolder(folder_cfg(tmp_path, num_classes=2))[0] == ["apple_pie", "baklava"]


def test_imagefolder_single_folder_is_split_by_seed(tmp_path: Path) -> None:
    for c, color in COLORS.items():
        for k in range(10):
            _save(tmp_path / c / f"{k}.png", color, fmt="PNG")
    classes, pool, test = load_imagefolder(folder_cfg(tmp_path))
    assert classes == sorted(COLORS) and test is None and len(pool) == 40
    assert pool.source_ids[0] == "apple_pie/0.png"
    ds = load_dataset(folder_cfg(tmp_path, test_fraction=0.2, val_fraction=0.25, noise=0.1))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 8, 8)
    assert len(set(ds.train.source_ids) | set(ds.val.source_ids) | set(ds.test.source_ids)) == 40
    _assert_labels_match_pixels(ds.classes, ds.test)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="never downloads"):
        load_imagefolder(folder_cfg(tmp_path / "nowhere"))
    _save(tmp_path / "train" / "sushi" / "0.jpg", COLORS["sushi"])
    (tmp_path / "train" / "tacos").mkdir()
    with pytest.raises(DataError, match="no training images for class"):
        load_imagefolder(folder_cfg(tmp_path))
    with pytest.raises(DataError, match="valid names"):
        load_imagefolder(folder_cfg(tmp_path, classes=("pizza", "sushi")))


# --------------------------------------------------------------------------------------------- parquet


def write_parquet(path: Path, rows: list[tuple[str, bytes]], names: list[str] | None, row_group_size: int = 3) -> None:
    """A Hugging Face style shard: ``image`` {bytes, path}, ``label`` int64, ClassLabel names in the metadata."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": b, "path": None} for _, b in rows], type=image_type)
    labels = pa.array([list(COLORS).index(c) for c, _ in rows], type=pa.int64())
    table = pa.table({"image": images, "label": labels})
    if names is not None:
        features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)


def make_hf_food(root: Path, names: list[str] | None = list(COLORS)) -> None:  # noqa: B006 - read only
    rows = [(c, _encoded(color)) for _ in range(5) for c, color in COLORS.items()]  # classes interleaved
    write_parquet(root / "data" / "train-00000-of-00002.parquet", rows[:12], names)
    write_parquet(root / "data" / "train-00001-of-00002.parquet", rows[12:], names)
    write_parquet(root / "data" / "validation-00000-of-00001.parquet", rows[:8], names)


def hf_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "hf-parquet", "data_root": str(root), "image_size": SIZE, **kw})


def test_hf_parquet_names_selection_and_remap(tmp_path: Path) -> None:
    make_hf_food(tmp_path)
    classes, train, test = load_hf_parquet(hf_cfg(tmp_path, num_classes=3))
    assert classes == ["apple_pie", "baklava", "sushi"]  # ClassLabel order is tacos, apple_pie, sushi, baklava
    assert (len(train), len(test)) == (15, 6)
    assert train.source_ids[:2] == ["data/train-00000-of-00002.parquet#1", "data/train-00000-of-00002.parquet#2"]
    assert train.source_ids[-1] == "data/train-00001-of-00002.parquet#7"
    assert all(s.startswith("data/validation-") for s in test.source_ids)
    _assert_labels_match_pixels(classes, train)
    _assert_labels_match_pixels(classes, test)
    ds = load_dataset(hf_cfg(tmp_path, classes=("tacos", "sushi"), val_fraction=0.2, noise=0.25))
    assert ds.classes == ["tacos", "sushi"] and (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 4)
    assert ds.train.noisy.sum() == 2
    _assert_labels_match_pixels(ds.classes, ds.val)


def test_hf_parquet_classes_txt_and_corrupt_bytes(tmp_path: Path) -> None:
    make_hf_food(tmp_path, names=None)
    with pytest.raises(DataError, match="classes.txt"):
        load_hf_parquet(hf_cfg(tmp_path))
    (tmp_path / "classes.txt").write_text("\n".join(COLORS) + "\n")
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", [("sushi", b"junk"), ("tacos", b"")], None)
    classes, train, test = load_hf_parquet(hf_cfg(tmp_path))
    assert classes == sorted(COLORS) and len(train) == 20
    _assert_labels_match_pixels(classes, train)
    with pytest.raises(DataError, match="validation-00000-of-00001.parquet#0"):
        test.images.batch(np.array([0]))
    with pytest.raises(DataError, match="#1: no image bytes"):
        test.images.batch(np.array([1]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*train\\*.parquet"):
        load_hf_parquet(hf_cfg(tmp_path / "empty"))


def _gradient(dtype: str, top: float) -> np.ndarray:
    """``[64, 64]`` values rising from 0 at the left edge to ``top`` at the right edge."""
    return np.tile(np.linspace(0, top, 64), (64, 1)).astype(dtype)


def _png_rgb16(path: Path, rgb: np.ndarray) -> None:
    """Write uint16 ``[H, W, 3]`` as a 16-bit-per-channel PNG (Pillow cannot write one)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _assert_keeps_gradient(row: np.ndarray) -> None:
    """A decoded row (centre crop of the 0..max gradient) still rises across nearly the whole 8-bit range."""
    assert np.all(np.diff(row.astype(int)) >= 0)
    assert row.min() < 25 and row.max() > 230


@pytest.mark.parametrize(
    "dtype, top, mode",
    [("<u2", 65535, "I;16"), (">u2", 65535, "I;16B"), ("<i4", 65535, "I"), ("<f4", 1.0, "F"), ("<f4", 700.0, "F")],
)
def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path: Path, dtype: str, top: float, mode: str) -> None:
    im = Image.fromarray(_gradient(dtype, top))
    assert im.mode == mode
    path = tmp_path / "g.tiff"
    im.save(path)
    x = decode_image(path, 56).numpy()  # 64 px short side, centre 56 kept
    _assert_keeps_gradient(x[0, 28])
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])


def test_16_bit_greyscale_png_keeps_its_gradient(tmp_path: Path) -> None:
    Image.fromarray(_gradient("<u2", 65535)).save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode.startswith("I")
    _assert_keeps_gradient(decode_image(tmp_path / "g.png", 56).numpy()[0, 28])


def test_16_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    g = _gradient("<u2", 65535)
    _png_rgb16(tmp_path / "c.png", np.stack([g, 65535 - g, np.full_like(g, 32768)], axis=-1))
    x = decode_image(tmp_path / "c.png", 56).numpy()
    _assert_keeps_gradient(x[0, 28])
    _assert_keeps_gradient(x[1, 28, ::-1])
    assert np.all(np.abs(x[2].astype(int) - 128) <= 1)


def _solid(mode: str) -> Image.Image:
    """A 20x20 image of one colour in ``mode``; palette images use entry 1, (220, 40, 40)."""
    if mode.startswith("P"):
        im = Image.new(mode, (20, 20), 1)
        im.putpalette([0, 0, 0, 220, 40, 40])
        return im
    values = {"L": 100, "LA": (100, 255), "1": 1, "RGBA": (220, 40, 40, 255)}
    return Image.new(mode, (20, 20), values[mode]) if mode in values else Image.new("RGB", (20, 20), (220, 40, 40))


@pytest.mark.parametrize(
    "mode, expected",
    [("P", (220, 40, 40)), ("P-transparent", (220, 40, 40)), ("LA", (100,) * 3),
     ("L", (100,) * 3), ("1", (255,) * 3), ("RGBA", (220, 40, 40)), ("CMYK", (220, 40, 40))],
)
def test_other_modes_decode_to_their_colours(tmp_path: Path, mode: str, expected: tuple[int, int, int]) -> None:
    im = _solid(mode.split("-")[0])
    if mode == "CMYK":
        im = im.convert("CMYK")
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    im.save(path, **({"transparency": b"\x00\x80"} if mode == "P-transparent" else {}))  # per-entry alpha
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a palette with transparency makes Pillow warn unless converted via RGBA
        x = decode_image(path, 8).numpy()
    assert np.abs(x.reshape(3, -1).astype(int) - np.array(expected)[:, None]).max() <= 1
