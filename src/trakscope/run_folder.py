"""The run folder: where each stage finds its inputs and leaves its outputs (see docs/run-folder.md)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from .config import RunConfig, config_diff, load_config
from .io import load_npy, read_csv, read_json, write_json

SPLITS = ("train", "val", "test")


class RunError(Exception):
    """The run folder is missing, from another configuration, or lacks a stage's output."""


class RunFolder:
    """Paths and readers of one run folder. Construction does no I/O."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._dataset = None

    # --- creation -----------------------------------------------------------------------------
    def initialize(self, config: RunConfig, overwrite: bool = False) -> None:
        """Create the folder with ``config.json``, or check that an existing one has the same config.

        Raises:
            RunError: the folder holds a run with other settings and ``overwrite`` is false.
        """
        cfg_path = self.path / "config.json"
        if cfg_path.exists() and not overwrite:
            try:
                old = load_config(cfg_path)
            except (ValueError, json.JSONDecodeError, TypeError) as e:
                msg = f"{cfg_path} is not a trakscope configuration ({e}); use --overwrite to replace it"
                raise RunError(msg) from e
            diff = config_diff(old, config)
            if diff:
                raise RunError(
                    f"{self.path} holds a run with other settings ({'; '.join(diff)}). "
                    "Use another --out, or --overwrite to discard it."
                )
            return
        if cfg_path.exists() and overwrite:
            _clear_outputs(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(cfg_path, config.to_dict())

    # --- reading ------------------------------------------------------------------------------
    @cached_property
    def config(self) -> RunConfig:
        """The saved configuration."""
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise RunError(
                f"{self.path} is not a trakscope run folder (no config.json); create one with `trakscope run`"
            )
        return load_config(cfg_path)

    @cached_property
    def classes(self) -> list[str]:
        """Class names, index = class id."""
        return read_json(self.require("data/classes.json", "trakscope run"))

    def table(self, split: str) -> dict[str, np.ndarray]:
        """``data/<split>.csv`` as columns: index, label, true_label, noisy (arrays) and source_id (str array)."""
        rows = read_csv(self.require(f"data/{split}.csv", "trakscope run"))
        cols = {k: [r[k] for r in rows] for k in ("index", "source_id", "label", "true_label", "noisy")}
        out = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items() if k != "source_id"}
        out["source_id"] = np.asarray(cols["source_id"], dtype=object)
        return out

    def thumbs(self, split: str) -> np.ndarray:
        """uint8 ``[n, T, T, 3]`` thumbnails of a split."""
        return load_npy(self.require(f"data/thumbs_{split}.npy", "trakscope run"), mmap=True)

    def probs(self, split: str) -> np.ndarray:
        """float32 ``[n, C]`` ensemble-mean softmax probabilities."""
        return load_npy(self.require(f"models/probs_{split}.npy", "trakscope run"))

    def scores(self, split: str, mmap: bool = True) -> np.ndarray:
        """float32 ``[n_train, n_split]`` TRAK scores (``split`` = test or val), or ``[n_train]`` for ``self``."""
        return load_npy(self.require(f"scores/{split}.npy", "trakscope run"), mmap=mmap)

    def dataset(self):
        """The run's :class:`~trakscope.data.Dataset`, rebuilt from ``config.json`` (deterministic, cached)."""
        if self._dataset is None:
            from .data import load_dataset

            self._dataset = load_dataset(self.config.data)
        return self._dataset

    def checkpoint_paths(self) -> list[Path]:
        """``models/model{m}_ckpt{c}.safetensors`` in (model, checkpoint) order."""
        paths = sorted(self.path.glob("models/model*_ckpt*.safetensors"), key=_ckpt_key)
        if not paths:
            self.require("models/model0_ckpt0.safetensors", "trakscope run")
        return paths

    def require(self, relative: str, producer: str) -> Path:
        """The path of a stage output, or a RunError that names the command producing it."""
        path = self.path / relative
        if not path.exists():
            _ = self.config  # a clearer error first if this is no run folder at all
            raise RunError(f"{path} does not exist yet; run `{producer} --out {self.path}` (or the stage) first")
        return path

    def timings(self) -> dict[str, float]:
        """Seconds per stage recorded so far."""
        path = self.path / "timings.json"
        return read_json(path) if path.exists() else {}

    def record_timing(self, stage: str, seconds: float) -> None:
        """Add or replace the time of one stage in ``timings.json``."""
        timings = self.timings()
        timings[stage] = round(float(seconds), 3)
        write_json(self.path / "timings.json", timings)


def _ckpt_key(path: Path) -> tuple[int, int]:
    model, ckpt = path.stem.removeprefix("model").split("_ckpt")
    return int(model), int(ckpt)


def _clear_outputs(path: Path) -> None:
    """Remove what trakscope wrote in ``path`` (its known subfolders and files), nothing else."""
    import shutil

    for name in ("data", "models", "features", "scores", "detect", "removal", "lds", "report", "inspect", "export"):
        if (path / name).is_dir():
            shutil.rmtree(path / name)
    for name in ("config.json", "timings.json", "lds.json"):
        if (path / name).exists():
            (path / name).unlink()
