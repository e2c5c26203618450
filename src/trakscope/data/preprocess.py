"""A model's own preprocessing, applied through its own library: transformers, timm or torchvision.

:class:`LibraryPreprocess` describes it in plain JSON values (what ``config.json`` records as
``data.preprocessing``), so that every stage rebuilds the same transform and a worker process can receive it
pickled. The transform itself is built once per process and description (:func:`_transform`):

- ``transformers``: the image processor's own ``to_dict()`` (its class in ``image_processor_type``), rebuilt
  with ``from_dict`` and called on each image (resize with its ``resample``, ``crop_pct``, rescale, normalise);
- ``timm``: the dict of ``timm.data.resolve_data_config``, given to ``timm.data.create_transform`` (eval);
- ``torchvision``: the name of a weights enum member, whose ``transforms()`` is applied.

Each gives a float32 ``[3, S, S]`` tensor, already normalised: trakscope feeds it to the model unchanged.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

LIBRARIES = ("transformers", "timm", "torchvision")


class PreprocessError(ValueError):
    """A recorded preprocessing description that cannot be rebuilt; the message says what to do."""


@dataclass(frozen=True)
class LibraryPreprocess:
    """How the model's library turns one RGB image into the model's input.

    Attributes:
        library: one of :data:`LIBRARIES`.
        settings: the library's own settings as a JSON object in text (hashable, picklable).
        size: side ``S`` of the square input the library produces.
        mean: per-channel mean the library subtracts from pixels in ``[0, 1]`` (to show images again).
        std: per-channel std it divides by.
    """

    library: str
    settings: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> LibraryPreprocess | None:
        """The description a ``config.json`` holds (``data.preprocessing``), or None where it holds none.

        Raises:
            PreprocessError: the record names an unknown library or lacks a key.
        """
        if record is None:
            return None
        try:
            library, settings = str(record["library"]), json.dumps(record["settings"], sort_keys=True)
            size, mean, std = int(record["size"]), _three(record["mean"]), _three(record["std"])
        except (KeyError, TypeError, ValueError) as e:
            raise PreprocessError(f"data.preprocessing in config.json is not a preprocessing record ({e}); "
                                  "rerun `trakscope run --overwrite`") from None
        if library not in LIBRARIES:
            raise PreprocessError(f"data.preprocessing names library {library!r}; trakscope knows "
                                  f"{', '.join(LIBRARIES)}")
        return cls(library, settings, size, mean, std)

    def record(self) -> dict[str, Any]:
        """Plain JSON values for ``config.json`` (the inverse of :meth:`from_record`)."""
        return {"library": self.library, "settings": json.loads(self.settings), "size": self.size,
                "mean": list(self.mean), "std": list(self.std)}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One RGB image -> float32 ``[3, S, S]``, exactly as the library prepares it.

        Raises:
            PreprocessError: the library's output is not ``[3, S, S]``.
        """
        x = _transform(self.library, self.settings)(image)
        if tuple(x.shape) != (3, self.size, self.size):
            raise PreprocessError(f"the model's {self.library} preprocessing gave a {tuple(x.shape)} tensor, not "
                                  f"(3, {self.size}, {self.size}); give --image-size to use trakscope's own resize")
        return x.float()

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[b, 3, S, S]`` library output -> uint8 pixels for display (the normalisation undone)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def _three(values: Sequence[Any]) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"expected 3 values, got {len(out)}")
    return out  # type: ignore[return-value]


@functools.lru_cache(maxsize=8)
def _transform(library: str, settings: str) -> Callable[[Image.Image], torch.Tensor]:
    """The library's own transform for ``settings`` (JSON text), built once per process."""
    values = json.loads(settings)
    if library == "transformers":
        return _hf_transform(values)
    if library == "timm":
        from timm.data import create_transform  # lazy: timm is optional (the hf extra) and slow to import

        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return create_transform(**kw, is_training=False)
    from torchvision.models import get_weight  # lazy: the model zoo is slow to import

    return get_weight(values["weights"]).transforms()


def _hf_transform(values: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The image processor recorded in ``values`` (its ``to_dict()``), as a one-image transform."""
    import transformers  # lazy: transformers is optional (the hf extra) and slow to import

    name = values.get("image_processor_type")
    cls = getattr(transformers, str(name), None)
    if cls is None or not hasattr(cls, "from_dict"):
        raise PreprocessError(f"transformers {transformers.__version__} has no image processor {name!r} (recorded in "
                              "config.json data.preprocessing); install the transformers the run was made with")
    processor = cls.from_dict(values)
    return lambda image: processor(image, return_tensors="pt")["pixel_values"][0]
