"""The ``inspect`` stage: the training examples that raise and lower one class's margin on one target.

A target is an example of the test or val split (by index, ``source_id`` or file name) or a new image file.
Stored scores (``scores/<split>.npy``) are for the margin of each target's own label; the margin of any other
class, and every new image, is scored on the fly under every checkpoint of the run (nothing is stored).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..data import TensorImages, decode_file
from ..methods.topk import top_and_bottom
from ..run_folder import RunError, RunFolder
from .detect import ground_truth
from .ensemble import Runtime, engine_checkpoints, engine_state, ensemble_predict, trak_engine


@dataclass
class Inspection:
    """Who raised and who lowered the margin of one class on one target.

    ``scores`` is float ``[n_train]`` (``scores[train]``: positive raises the margin of ``margin_class``);
    ``top`` and ``bottom`` index the training split, most positive and most negative first.
    """

    description: str  # "test example 3 (digits:17)" or "image cat.png"
    image: np.ndarray  # uint8 [T, T, 3] thumbnail of the target
    label: int | None  # the target's label; None for a new image
    predicted: int  # the ensemble's predicted class
    margin_class: int
    margin_role: str  # what margin_class is to the target: "the label", "the predicted class", ...
    scores: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    png: Path  # default place of the grid


def resolve_target(table: dict[str, np.ndarray], split: str, target: str) -> int:
    """Row of ``split`` named by ``target``: an index, a ``source_id`` (exact), or a unique file-name match.

    Raises:
        ValueError: out of range, ambiguous, or unknown (the message lists close matches).
    """
    n, ids = len(table["index"]), [str(s) for s in table["source_id"]]
    if target.strip().lstrip("-").isdigit():
        i = int(target)
        if not 0 <= i < n:
            raise ValueError(f"--target must be in [0, {n - 1}] for the {split} split, got {i}")
        return i
    if target in ids:
        return ids.index(target)
    name = PurePosixPath(target.replace("\\", "/")).name
    hits = [i for i, s in enumerate(ids) if PurePosixPath(s).name == name]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"--target {target!r} matches {len(hits)} files of the {split} split: "
                         f"{', '.join(ids[i] for i in hits[:5])}; give the full source_id")
    close = difflib.get_close_matches(target, ids, n=5, cutoff=0.5) or \
        [ids[i] for i, s in enumerate(ids) if PurePosixPath(s).name in
         difflib.get_close_matches(name, [PurePosixPath(x).name for x in ids], n=5, cutoff=0.5)][:5]
    hint = f"; close matches: {', '.join(close)}" if close else f"; its source_ids look like {', '.join(ids[:3])}"
    raise ValueError(f"--target {target!r} is neither an index nor a source_id or file name of the {split} split"
                     f"{hint}")


def resolve_class(classes: list[str], value: str) -> int:
    """Class id named by ``value``: a class name (exact, else case-insensitive) or an index.

    Raises:
        ValueError: unknown or out of range (the message lists close names).
    """
    if value in classes:
        return classes.index(value)
    if value.strip().isdigit():
        c = int(value)
        if c >= len(classes):
            raise ValueError(f"--class must be in [0, {len(classes) - 1}], got {c}")
        return c
    folded = [i for i, name in enumerate(classes) if name.lower() == value.lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(value, classes, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else f"; classes: {', '.join(classes[:20])}"
    raise ValueError(f"--class {value!r} is not a class of this run{hint}")


def margin_role(margin_class: int, label: int | None, predicted: int) -> str:
    """What ``margin_class`` is to the target: "the label", "the predicted class", both, or neither."""
    roles = [r for c, r in ((label, "the label"), (predicted, "the predicted class")) if c == margin_class]
    return " and ".join(roles) if roles else "chosen with --class"


def headers(classes: list[str], found: Inspection) -> tuple[str, str]:
    """Names of the two rows: which margin the highest and the lowest scores raise and lower."""
    what = f"the margin of class '{classes[found.margin_class]}' ({found.margin_role})"
    return f"highest scores: raise {what}", f"lowest scores: lower {what}"


def score_on_the_fly(run: RunFolder, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """float32 ``[n_train, b]`` scores of normalised inputs ``x`` for the margins of ``labels``, every checkpoint.

    Args:
        x: float ``[b, 3, S, S]`` normalised like the run's batches; labels: int64 ``[b]``.
    """
    trak = trak_engine(run, Runtime(progress=False))
    states = [engine_state(run, p, mask) for p, mask in engine_checkpoints(run)]
    return trak.score_inputs(x, labels, states)


def inspect_target(run: RunFolder, split: str, target: str, margin_class: str | None = None,
                   top: int = 8) -> Inspection:
    """Attribution of example ``target`` of ``split``; stored scores unless another class's margin is asked for."""
    table, classes = run.data.table(split), run.classes
    i = resolve_target(table, split, target)
    label, predicted = int(table["label"][i]), int(run.results.probs(split)[i].argmax())
    c = label if margin_class is None else resolve_class(classes, margin_class)
    if c == label:  # scores/<split>.npy holds each target's own label's margin
        column = np.asarray(run.results.scores(split)[:, i], dtype=np.float64)
    else:
        x = run.data.dataset().split(split).images.batch(np.array([i]))
        column = score_on_the_fly(run, x, torch.tensor([c]))[:, 0].astype(np.float64)
    png = run.inspect_path(split, i if c == label else f"{i}_class{c}")
    return _found(f"{split} example {i} ({table['source_id'][i]})", run.data.thumbs(split)[i], label, predicted, c,
                  column, top, png)


def inspect_image(run: RunFolder, path: Path | str, margin_class: str | None = None, top: int = 8) -> Inspection:
    """Attribution of a new image file, decoded and normalised like the run's images, scored on the fly.

    Without ``margin_class`` the margin is the ensemble's predicted class.
    """
    data = run.config.data.with_defaults()
    x, raw = decode_file(str(path), data)  # through the model's own preprocessing where the run records one
    predicted = int(ensemble_predict(run, {"image": x}).probs["image"][0].argmax())
    c = predicted if margin_class is None else resolve_class(run.classes, margin_class)
    column = score_on_the_fly(run, x, torch.tensor([c]))[:, 0].astype(np.float64)
    thumb = TensorImages(raw).thumbnails(np.array([0]), min(data.image_size, 64))[0]
    png = run.inspect_path("image", f"{Path(path).stem}_class{c}")
    return _found(f"image {path}", thumb, None, predicted, c, column, top, png)


def _found(description: str, image: np.ndarray, label: int | None, predicted: int, c: int, column: np.ndarray,
           top: int, png: Path) -> Inspection:
    if top < 1:
        raise ValueError("--top must be at least 1")
    if not np.isfinite(column).all():
        raise RunError(f"the scores of {description} are not finite; rerun `trakscope run`")
    hi, lo = top_and_bottom(column, top)
    return Inspection(description, image, label, predicted, c, margin_role(c, label, predicted), column, hi, lo,
                      png)


def train_rows(run: RunFolder, found: Inspection) -> list[list[dict]]:
    """For the highest and the lowest scores: one dict per training example (index, score, names, noisy)."""
    train, classes = run.data.table("train"), run.classes
    known = ground_truth(run) == "planted"
    out = []
    for idx in (found.top, found.bottom):
        out.append([{"index": int(i), "score": float(found.scores[i]), "label": classes[train["label"][i]],
                     "true": classes[train["true_label"][i]] if known else "?", "noisy": bool(train["noisy"][i]),
                     "source_id": str(train["source_id"][i])} for i in idx])
    return out
