"""Atomic writes of the run folder's file kinds: JSON, CSV, ``.npy`` and safetensors.

Every writer writes to a temporary file in the destination folder and renames it into place, so a
reader never sees half a file and an interrupted run leaves either the old file or the new one.
Nothing here pickles: ``.npy`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


@contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _standard_json(obj: Any) -> Any:
    """``obj`` with every float NaN replaced by None (standard JSON has no NaN), recursing into dicts and lists."""
    if isinstance(obj, dict):
        return {k: _standard_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard_json(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented standard JSON (NaN becomes null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_standard_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: Path | str) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_npy(path: Path | str, array: np.ndarray) -> None:
    """Write one array as ``.npy``, atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array), allow_pickle=False)


def load_npy(path: Path | str, mmap: bool = False) -> np.ndarray:
    """Read an ``.npy`` file without pickle, optionally memory-mapped."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def write_csv(path: Path | str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV with a header row, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def read_csv(path: Path | str) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` as a list of row dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_tensors(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file (contiguous CPU copies), atomically."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU."""
    return load_file(str(path), device="cpu")
