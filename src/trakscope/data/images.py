"""The image-split abstraction every stage works with.

An :class:`ImageSplit` holds labels, true labels and stable source ids as arrays, and its pixels in an
:class:`ImageSource`: either tensors in memory (:class:`TensorImages`, for the built-in datasets) or
files decoded on demand (:class:`FileImages`, for Food-101 and image folders). Pixels reach the model
as float32 ``[b, 3, S, S]`` batches normalised with the ImageNet statistics, or with the model's own
(:class:`NormalizedImages`, which :func:`~trakscope.data.load_dataset` puts around every split). A source
given a :class:`~trakscope.data.preprocess.LibraryPreprocess` hands over the model library's own output
instead (its resize, crop and normalisation), which :class:`NormalizedImages` passes on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from ..config import IMAGENET_MEAN as IMAGENET_MEAN_RGB
from ..config import IMAGENET_STD as IMAGENET_STD_RGB
from .preprocess import LibraryPreprocess

IMAGENET_MEAN = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)


class DataError(Exception):
    """A dataset is missing, malformed or unreadable; the message says what and where."""


def normalize_uint8(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN_RGB, std: Sequence[float] = IMAGENET_STD_RGB
) -> torch.Tensor:
    """uint8 ``[b, 3, S, S]`` -> float32 ``(x / 255 - mean) / std`` per channel (default: ImageNet's)."""
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean_t) / std_t


class ImageSource:
    """Pixels of one split. Subclasses implement ``__len__``, ``uint8`` and ``subset``."""

    in_memory = False  # True where decoding costs nothing, so worker processes would only add overhead
    preprocess: LibraryPreprocess | None = None  # set: batch() is the model library's own output, normalised

    def __len__(self) -> int:
        raise NotImplementedError

    def uint8(self, indices: np.ndarray) -> torch.Tensor:
        """Images ``indices`` as uint8 ``[b, 3, S, S]`` at the model's input size."""
        raise NotImplementedError

    def subset(self, indices: np.ndarray) -> ImageSource:
        """A source holding only ``indices`` (in that order)."""
        raise NotImplementedError

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """Images ``indices`` as normalised float32 ``[b, 3, S, S]``."""
        return normalize_uint8(self.uint8(np.asarray(indices)))

    def thumbnails(self, indices: np.ndarray, size: int) -> np.ndarray:
        """uint8 ``[b, size, size, 3]`` thumbnails for reports."""
        x = self.uint8(np.asarray(indices)).float()
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class TensorImages(ImageSource):
    """Images held in memory as uint8 ``[n, 3, H, W]`` (``H = W = S`` unless a ``preprocess`` makes them ``S``)."""

    in_memory = True

    def __init__(self, images: torch.Tensor, preprocess: LibraryPreprocess | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 [n, 3, S, S], got {images.dtype} {tuple(images.shape)}")
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return self.images.shape[0]

    def _stored(self, indices: np.ndarray) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    def uint8(self, indices: np.ndarray) -> torch.Tensor:
        if self.preprocess is None:
            return self._stored(indices)
        return self.preprocess.to_uint8(self.batch(indices))

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        if self.preprocess is None:
            return super().batch(indices)
        stored = self._stored(indices)
        return torch.stack([self.preprocess(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in stored])

    def subset(self, indices: np.ndarray) -> TensorImages:
        return TensorImages(self._stored(indices), self.preprocess)


class NormalizedImages(ImageSource):
    """Another source's pixels, normalised with a given per-channel ``mean`` and ``std`` (3 floats each)."""

    def __init__(self, source: ImageSource, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {tuple(mean)} and {tuple(std)}")
        self.source, self.mean, self.std = source, tuple(mean), tuple(std)

    @property
    def in_memory(self) -> bool:
        return self.source.in_memory

    @property
    def preprocess(self) -> LibraryPreprocess | None:  # type: ignore[override]
        return self.source.preprocess

    def __len__(self) -> int:
        return len(self.source)

    def uint8(self, indices: np.ndarray) -> torch.Tensor:
        return self.source.uint8(indices)

    def subset(self, indices: np.ndarray) -> NormalizedImages:
        return NormalizedImages(self.source.subset(indices), self.mean, self.std)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        if self.source.preprocess is not None:  # the model library's own output, normalised as it does
            return self.source.batch(indices)
        return normalize_uint8(self.uint8(np.asarray(indices)), self.mean, self.std)


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Pixels of a 16-bit, 32-bit integer or float image scaled (not clipped) into uint8 ``[H, W]``.

    ``I;16*`` spans 0..65535. ``I`` (32-bit) does not record its depth: values within 0..65535 are taken
    as 16-bit (how a 16-bit PNG or TIFF often opens), others are stretched from their min to their max.
    ``F`` within 0..1 is taken as a fraction, otherwise stretched the same way.
    """
    x = np.nan_to_num(values.astype(np.float64))
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        x = x / 65535
    elif mode == "F" and lo >= 0 and hi <= 1:
        pass
    else:
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. Pillow's own ``convert`` clips 16-bit values at 255, so those are scaled here."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")  # what Pillow asks for; converting straight to RGB warns
    return im.convert("RGB")


def open_rgb(source: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Decode one image (a path or a binary file object) to an 8-bit RGB PIL image at its own size.

    Any mode Pillow opens is accepted: greyscale, palette, CMYK, with alpha (dropped), and 16-bit or float
    images, which are scaled by their depth into 8 bits.

    Raises:
        DataError: the image is missing or cannot be decoded; the message names ``name`` (default: the path).
    """
    try:
        with Image.open(source) as im:
            return _to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {name if name is not None else source}: {e}") from None


def decode_image(source: str | Path | BinaryIO, size: int, name: str | None = None) -> torch.Tensor:
    """Decode one image (a path or a binary file object) to uint8 ``[3, size, size]``: trakscope's own resize.

    The image is read by :func:`open_rgb`, its short side resized to ``size * 256 / 224`` (bilinear) and the
    centre ``size x size`` square cropped.

    Raises:
        DataError: the image is missing or cannot be decoded; the message names ``name`` (default: the path).
    """
    im = open_rgb(source, name)
    try:
        w, h = im.size
        scale = size * 256 / 224 / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {name if name is not None else source}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def preprocessed(image: Image.Image, preprocess: LibraryPreprocess, name: str) -> torch.Tensor:
    """``preprocess(image)``: float32 ``[3, S, S]``; a library's failure on one image names it.

    Raises:
        DataError: the library could not prepare the image; the message names ``name``.
    """
    try:
        return preprocess(image)
    except (OSError, ValueError, RuntimeError) as e:
        raise DataError(f"the model's {preprocess.library} preprocessing failed on image {name}: {e}") from None


class FileImages(ImageSource):
    """Images decoded from files on demand: trakscope's resize (short side, centre crop to ``size``) through
    ``reader``, or the model library's own ``preprocess`` where one is given."""

    def __init__(self, paths: Sequence[str], size: int, reader: Callable[[str, int], torch.Tensor] = decode_image,
                 preprocess: LibraryPreprocess | None = None):
        self.paths = list(paths)
        self.size = size
        self.reader = reader
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def uint8(self, indices: np.ndarray) -> torch.Tensor:
        if self.preprocess is not None:
            return self.preprocess.to_uint8(self.batch(indices))
        return torch.stack([self.reader(self.paths[int(i)], self.size) for i in np.asarray(indices)])

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        if self.preprocess is None:
            return super().batch(indices)
        paths = [self.paths[int(i)] for i in np.asarray(indices)]
        return torch.stack([preprocessed(open_rgb(p), self.preprocess, p) for p in paths])

    def subset(self, indices: np.ndarray) -> FileImages:
        return FileImages([self.paths[int(i)] for i in np.asarray(indices)], self.size, self.reader, self.preprocess)


@dataclass
class ImageSplit:
    """One split: pixels, the label used for training, the true label and a stable source id.

    ``labels`` and ``true_labels`` are int64 ``[n]``; they differ where noise or canaries were planted.
    ``canary`` (bool ``[n]`` or None) marks canaries: flips planted to measure detection, not the data's errors.
    """

    images: ImageSource
    labels: np.ndarray
    true_labels: np.ndarray
    source_ids: list[str]
    canary: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.labels) == len(self.true_labels) == len(self.source_ids) == n):
            raise ValueError("images, labels, true_labels and source_ids must have the same length")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.true_labels = np.asarray(self.true_labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def noisy(self) -> np.ndarray:
        """bool ``[n]``: the training label differs from the true label (canaries aside)."""
        wrong = self.labels != self.true_labels
        return wrong if self.canary is None else wrong & ~self.canary

    def subset(self, indices: np.ndarray) -> ImageSplit:
        """The examples ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSplit(
            self.images.subset(idx), self.labels[idx], self.true_labels[idx], [self.source_ids[i] for i in idx],
            None if self.canary is None else self.canary[idx],
        )


@dataclass
class Dataset:
    """Class names and the three splits."""

    name: str
    classes: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit

    def split(self, name: str) -> ImageSplit:
        """The split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise KeyError(f"unknown split {name!r}")
        return getattr(self, name)

    def normalized(self, mean: Sequence[float], std: Sequence[float]) -> Dataset:
        """The same dataset whose batches are normalised with ``mean`` and ``std`` (3 floats each)."""
        splits = [
            ImageSplit(NormalizedImages(s.images, mean, std), s.labels, s.true_labels, s.source_ids, s.canary)
            for s in (self.train, self.val, self.test)
        ]
        return Dataset(self.name, self.classes, *splits)


def batch_slices(n: int, batch_size: int, merge_short: bool = False) -> list[slice]:
    """Consecutive batches over ``n`` items: ``batch_size`` each, the last one shorter where ``n`` is not a multiple.

    With ``merge_short``, a last batch of at most half ``batch_size`` joins the batch before it instead (when there
    is one): every item still comes once, no batch is smaller than about half ``batch_size`` (or ``n``), and none is
    larger than 1.5 ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    starts = list(range(0, n, batch_size))
    if merge_short and len(starts) > 1 and 2 * (n - starts[-1]) <= batch_size:
        starts.pop()
    return [slice(s, e) for s, e in zip(starts, [*starts[1:], n])]


def iter_batches(
    images: ImageSource, indices: np.ndarray, batch_size: int, num_workers: int = 0, merge_short: bool = False
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(batch_indices, float32 images)`` over ``indices`` in order, decoding in workers if asked.

    The batches are :func:`batch_slices` of ``indices`` (``merge_short``: no short last batch).
    """
    indices = np.asarray(indices, dtype=np.int64)
    chunks = [indices[s] for s in batch_slices(len(indices), batch_size, merge_short)]
    if num_workers <= 0 or images.in_memory:
        for chunk in chunks:
            yield chunk, images.batch(chunk)
        return
    loader = torch.utils.data.DataLoader(
        _ChunkDataset(images, chunks), batch_size=None, num_workers=num_workers, persistent_workers=False
    )
    batches = iter(loader)
    try:
        for chunk in chunks:
            yield chunk, next(batches)
    finally:
        # Stop the workers now. After a decoding error the traceback keeps the iterator alive, and when it is
        # finally collected the shutdown waits 5 s per worker on join timeouts. DataLoader has no public close.
        getattr(batches, "_shutdown_workers", lambda: None)()


class _ChunkDataset(torch.utils.data.Dataset):
    """Each item is one whole batch, so workers decode batches in parallel."""

    def __init__(self, images: ImageSource, chunks: list[np.ndarray]):
        self.images, self.chunks = images, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images.batch(self.chunks[i])
