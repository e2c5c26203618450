"""The checkpoint ensemble of a run: its members' checkpoints, verified, and what the ensemble predicts.

One owner for what every stage asks of the trained (or imported) models: loading a checkpoint and refusing one
that is damaged or from a run with other settings (:func:`load_checkpoint`), the final checkpoint of every
member, the engine's checkpoint ids with their DropConnect masks (:func:`engine_checkpoints`), the
:class:`~trakscope.attribution.trak.TRAK` engine of the run (:func:`trak_engine`), and the ensemble's prediction,
the mean over members of each member's softmax (:func:`ensemble_predict`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..attribution.masks import SEED_SCHEME, dropconnect, masked_weights
from ..attribution.store import TrakStore
from ..attribution.trak import TRAK
from ..config import ModelConfig
from ..data import ImageSource
from ..io import load_tensors
from ..models import build_model
from ..models.calling import call_model
from ..run_folder import SPLITS, RunError, RunFolder, checkpoint_key, fingerprint
from ..train import architecture_only, load_trained, predict_logits


@dataclass(frozen=True)
class Runtime:
    """How to run (not what to compute): none of this is part of the configuration."""

    device: str = "cpu"
    progress: bool = True


def _checkpoint_meta(path: Path) -> dict[str, str]:
    """A checkpoint's safetensors metadata (raises SafetensorError or OSError where it cannot be read)."""
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def recorded_accuracy(path: str | Path) -> float | None:
    """The accuracy a checkpoint file says its model reached where it was trained: the safetensors metadata key
    ``accuracy`` (a number in [0, 1], e.g. ``save_file(state, path, metadata={"accuracy": "0.63"})``); None for a
    file without it (or a torch file, which has no metadata).

    Raises:
        RunError: a value that is not a number in [0, 1], naming the file.
    """
    try:
        value = _checkpoint_meta(Path(path)).get("accuracy")
    except (SafetensorError, OSError):
        return None  # not a safetensors file: a torch file read with weights_only
    if value is None:
        return None
    try:
        acc = float(value)
    except ValueError:
        acc = float("nan")
    if not 0.0 <= acc <= 1.0:
        raise RunError(f"--checkpoints {path}: its metadata accuracy={value!r} is not a number in [0, 1]; save it "
                       "as a fraction, e.g. safetensors.torch.save_file(state, path, metadata={'accuracy': '0.63'})")
    return acc


def load_checkpoint(run: RunFolder, path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, refused when it is cut short, was written by a run with other settings, or is
    not what this run wrote.

    Raises:
        RunError: naming the file and the command that retrains it (or ``--overwrite``).
    """
    try:
        meta = _checkpoint_meta(path)
        state = load_tensors(path)
    except (SafetensorError, OSError) as e:
        run.integrity.verify(path, checksum=False)  # a checkpoint cut short is named by its size
        raise RunError(f"{run.relative(path)} is damaged ({e}); rerun `{run.command()}` to retrain that model") from e
    if meta.get("fingerprint") != fingerprint(run.config):
        raise RunError(f"{path} was written by a run with other settings (fingerprint "
                       f"{meta.get('fingerprint')!r}, this run {fingerprint(run.config)!r}); rerun with --overwrite")
    run.integrity.verify(path)  # the checksum, where the manifest has one and the file is small
    return state


def checkpoint_damaged(run: RunFolder, path: Path) -> bool:
    """Not what was written and either unreadable (cut short) or under this run's fingerprint: not a whole file
    from another run, which :func:`load_checkpoint` refuses rather than have `run` retrain over it."""
    if not path.exists() or run.integrity.damage(path) is None:
        return False
    try:
        return _checkpoint_meta(path).get("fingerprint") == fingerprint(run.config)
    except (SafetensorError, OSError):
        return True


def member_of(path: Path) -> int:
    """The ensemble member ``m`` of checkpoint ``models/model{m}_ckpt{c}.safetensors``."""
    return checkpoint_key(path)[0]


def final_checkpoints(run: RunFolder, paths: list[Path] | None = None) -> list[Path]:
    """The last checkpoint of every ensemble member, in member order (of ``paths``, default the run's)."""
    last: dict[int, Path] = {}
    for path in run.checkpoint_paths() if paths is None else paths:
        last[member_of(path)] = path
    return [last[m] for m in sorted(last)]


def engine_checkpoints(run: RunFolder, paths: list[Path] | None = None) -> list[tuple[Path, int | None]]:
    """``(checkpoint file, mask)`` for every checkpoint id of the run's TRAK engine, in id order: each file
    (mask None), then ``trak.masks`` DropConnect copies (mask 0, 1, ...) of each member's final checkpoint.
    ``paths``: the checkpoint files to use (default the run's, all required)."""
    paths = run.checkpoint_paths() if paths is None else paths
    masks = run.config.trak.masks
    return [(p, None) for p in paths] + [(p, d) for p in final_checkpoints(run, paths) for d in range(masks)]


def mask_targets(run: RunFolder) -> list[str]:
    """The state-dict names of the run's architecture's conv / linear weights, which its DropConnect masks zero
    (:func:`~trakscope.attribution.masks.masked_weights`)."""
    return list(_conv_linear_weights(architecture_only(run.config.model), len(run.classes)))


@lru_cache(maxsize=4)
def _conv_linear_weights(model: ModelConfig, num_classes: int) -> tuple[str, ...]:
    """:func:`mask_targets` of one architecture, built once per process (not once per masked checkpoint)."""
    return tuple(masked_weights(build_model(model, num_classes)))


def masks_record(run: RunFolder) -> dict | None:
    """What ``scores/meta.json`` records of the run's DropConnect masks (None without ``--masks``): their count,
    ``p``, seed scheme and the weights they mask."""
    t = run.config.trak
    if not t.masks:
        return None
    return {"count": t.masks, "p": t.mask_p, "proj_seed": t.seed, "seed": SEED_SCHEME, "masked": mask_targets(run)}


def engine_state(run: RunFolder, path: Path, mask: int | None) -> dict[str, torch.Tensor]:
    """The state dict the engine featurizes under one checkpoint id (see :func:`engine_checkpoints`); mask ``d``
    of member ``m`` masks the conv / linear weights, seeded ``SeedSequence([trak.seed, m, d])``."""
    state = load_checkpoint(run, path)
    if mask is None:
        return state
    t = run.config.trak
    return dropconnect(state, t.mask_p, seed=(t.seed, member_of(path), mask), weights=mask_targets(run))


def describe_checkpoint(run: RunFolder, k: int) -> str:
    """A checkpoint id of the engine in words: the file, and the mask where it is a masked copy."""
    path, mask = engine_checkpoints(run)[k]
    return run.relative(path) + ("" if mask is None else f" (DropConnect mask {mask})")


def kernel_files(store: TrakStore, n_checkpoints: int) -> list:
    """``X^T X``, its inverse and lambda of every checkpoint id of the store."""
    return [p for k in range(n_checkpoints) for p in (store.gram_path(k), store.inverse_path(k), store.lambda_path(k))]


def self_files(store: TrakStore) -> list:
    """The store's own self-influence over every checkpoint (``scores/self.npy`` is its copy) and its record."""
    path = store.self_path("train")
    return [path, path.with_suffix(".json")]


def check_store(run: RunFolder, n_checkpoints: int) -> None:
    """Refuse a file of the run's TRAK store that is damaged or unrecorded (features being filled aside).

    Raises:
        RunError: naming the file and ``trakscope run --out DIR``, which recomputes it.
    """
    store = TrakStore(run.features_dir)
    split_files = [p for k in range(n_checkpoints) for s in SPLITS for p in store.split_files(k, s)]
    for path in [store.meta_path, store.checkpoints_path, *split_files, *kernel_files(store, n_checkpoints),
                 *self_files(store)]:
        what = run.integrity.damage(path) if path.exists() else None
        if what and not (path in split_files and what.startswith("trakscope began")):
            raise RunError(run.integrity.message(path, what, "run"))


def trak_engine(run: RunFolder, rt: Runtime) -> TRAK:
    """The :class:`TRAK` engine of the run: its architecture, its TRAK settings, its ``features/`` store."""
    cfg = run.config
    check_store(run, len(engine_checkpoints(run)))  # the engine trusts its store's files: verify them first
    model = build_model(architecture_only(cfg.model), len(run.classes))  # no need to rebuild the dataset
    t = cfg.trak
    return TRAK(model, run.features_dir, projector=t.projector, proj_dim=t.proj_dim, kron_k=t.kron_k,
                proj_type=t.proj_type, ridge=t.ridge, seed=t.seed, device=rt.device, progress=rt.progress,
                precision=t.precision, channels_last=cfg.train.channels_last)


def load_member(run: RunFolder, path: Path, device: str = "cpu") -> nn.Module:
    """The network of checkpoint ``path`` (verified by :func:`load_checkpoint`), in eval mode on ``device``."""
    return load_trained(run.config.model, len(run.classes), load_checkpoint(run, path), device)


Source = ImageSource | torch.Tensor  # a split's images, or a batch already normalised (float [b, 3, S, S])


def _logits(net: nn.Module, source: Source, device: str, num_workers: int) -> np.ndarray:
    """float32 ``[n, C]`` logits of ``net`` on a source: an image source in batches, or a prepared batch as it is
    (its memory layout kept, which can change the last bits of a convolution)."""
    if isinstance(source, torch.Tensor):
        with torch.no_grad():
            return call_model(net, source.to(device)).float().cpu().numpy()
    return predict_logits(net, source, device=device, num_workers=num_workers)


def member_logits(run: RunFolder, sources: Mapping[str, Source], device: str = "cpu",
                  members: Sequence[int] | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(m, {name: float32 [n_name, C] logits})`` of the final checkpoint of each member ``m`` (default all, in
    member order) on each of ``sources``; each network is loaded once and dropped before the next."""
    finals = final_checkpoints(run)
    for m in range(len(finals)) if members is None else members:
        net = load_member(run, finals[m], device)
        yield m, {name: _logits(net, source, device, run.config.train.num_workers) for name, source in sources.items()}


@dataclass(frozen=True)
class EnsemblePrediction:
    """What the ensemble predicts on some named image sources.

    ``probs[name]``: float64 ``[n, C]``, the mean over the members of each member's softmax (computed in float64
    from its float32 logits); ``member_predicted[m][name]``: int64 ``[n]``, member ``m``'s argmax of its softmax.
    """

    probs: dict[str, np.ndarray]
    member_predicted: list[dict[str, np.ndarray]]


def ensemble_predict(run: RunFolder, sources: Mapping[str, Source], device: str = "cpu") -> EnsemblePrediction:
    """The mean softmax of the final model of every ensemble member on each source (``models/probs_*`` on the
    splits), summed member by member in member order."""
    n = len(final_checkpoints(run))
    probs: dict[str, np.ndarray | float] = dict.fromkeys(sources, 0.0)
    predicted: list[dict[str, np.ndarray]] = []
    for _, logits in member_logits(run, sources, device):
        member = {}
        for name, z in logits.items():
            p = torch.softmax(torch.from_numpy(z).double(), 1).numpy()
            probs[name] = probs[name] + p / n
            member[name] = p.argmax(1)
        predicted.append(member)
    return EnsemblePrediction(probs, predicted)


def chance_level(acc: float, labels: np.ndarray) -> str | None:
    """``majority class 0.100 of 40`` when accuracy ``acc`` cannot be told apart from always predicting the
    majority class of int ``labels`` ``[n]``, else None.

    Chance is the majority class's share ``p``; "near" means within two binomial standard errors
    ``sqrt(p (1 - p) / n)`` above it (or anywhere below).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    p, n = counts.max() / counts.sum(), int(counts.sum())
    if acc > p + 2 * np.sqrt(p * (1 - p) / n):
        return None
    return f"majority class {p:.3f} of {n}"
