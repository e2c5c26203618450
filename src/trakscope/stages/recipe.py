"""The recipe a run's retrains use (cross-validation folds, removal retrains, LDS subset models).

By default every retrain trains the run's architecture with the run's training settings (``config.json``:
``--weights``, ``--epochs``, ``--lr``, ``--batch-size`` ...), as its ensemble was trained. Checkpoints imported with
``--checkpoints`` were trained elsewhere, with a recipe trakscope does not know: the stages then say which recipe
they retrain with (:func:`say_recipe`), and a notebook user can hand their own training function instead
(:data:`TrainFn`). Cached retrains record a user function's name (:func:`recipe_tag`) and are reused only by the
same recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from torch import nn

from .. import dist
from ..config import ModelConfig, TrainConfig, flag_name
from ..data import Dataset
from ..run_folder import RunFolder

# ``train_fn(dataset, keep, seed, device) -> network``: train on ``dataset.train`` rows ``keep`` (sorted int64
# ``[n_kept]``; the labels as the run trains them are ``dataset.train.labels``) under ``seed`` on ``device``, and return
# the network, whose forward takes a normalised image batch float ``[b, 3, S, S]`` (what ``dataset.train.images``
# yields) and returns logits ``[b, C]`` (or an output with ``.logits``).
TrainFn = Callable[[Dataset, np.ndarray, int, str], nn.Module]

# The settings of config.json that make the recipe (section, field); the rest (momentum, augmentation...) go with them.
RECIPE = (("model", "weights"), ("train", "epochs"), ("train", "lr"), ("train", "batch_size"))


def recipe_tag(train_fn: TrainFn | None) -> str | None:
    """``train_fn module.name`` of a user's training function (what cached retrains record), None for the run's own
    recipe. A function is known by its module and name: rename it when its recipe changes."""
    if train_fn is None:
        return None
    name = getattr(train_fn, "__qualname__", type(train_fn).__qualname__)
    return f"train_fn {getattr(train_fn, '__module__', None) or '?'}.{name}"


def _setting(model: ModelConfig, train: TrainConfig, section: str, name: str) -> str:
    """``--epochs 6`` with ``(trakscope's default)`` where the value is the default, i.e. perhaps not given."""
    part = model if section == "model" else train
    value = getattr(part, name)
    default = next(f.default for f in dataclasses.fields(part) if f.name == name)
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{flag_name(section, name)} {shown}" + (" (trakscope's default)" if value == default else "")


def recipe_line(run: RunFolder, what: str, train_fn: TrainFn | None = None) -> str | None:
    """One line saying which recipe the retrains of ``what`` (``cross-validation``, ``removal``, ``lds``) use: the
    user's ``train_fn``, or on an imported run the settings of ``config.json``; None for a run whose ensemble
    trakscope trained with its own settings (its retrains use that same recipe)."""
    if train_fn is not None:
        return f"{what} retrains with your {recipe_tag(train_fn)}"
    cfg = run.config
    if not cfg.model.checkpoints:
        return None
    given = ", ".join(_setting(cfg.model, cfg.train, s, n) for s, n in RECIPE)
    return (f"{what} retrains with the recipe of {run.relative(run.config_path)} ({given}), not with the recipe "
            f"of the imported checkpoints, which trakscope does not know: give yours to `trakscope run` "
            f"({', '.join(flag_name(s, n) for s, n in RECIPE)}) or pass train_fn in Python")


def say_recipe(run: RunFolder, what: str, train_fn: TrainFn | None = None) -> None:
    """Print :func:`recipe_line` (rank 0, where there is one)."""
    line = recipe_line(run, what, train_fn)
    if line is not None and dist.rank() == 0:
        print(line, flush=True)


def user_network(train_fn: TrainFn, dataset: Dataset, keep: np.ndarray | None, seed: int,
                 device: str = "cpu") -> nn.Module:
    """The network ``train_fn`` trains on the training rows ``keep`` (sorted int64, None = all) under ``seed``, in
    eval mode on ``device`` (the stages call trakscope's ``train_final_model`` themselves where there is none).

    Raises:
        TypeError: ``train_fn`` returned something other than a network, naming it.
    """
    rows = np.arange(len(dataset.train)) if keep is None else np.asarray(keep, dtype=np.int64)
    net = train_fn(dataset, rows, seed, device)
    if not isinstance(net, nn.Module):
        raise TypeError(f"{recipe_tag(train_fn)} returned {type(net).__name__}; it must return the trained network "
                        "(a torch.nn.Module)")
    return net.to(device).eval()
