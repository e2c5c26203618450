"""Say it before doing it: how many trainings a stage still has to do, and about how long they will take.

The speed is the run's own: ``timings.json``'s ``train`` seconds for the ensemble over the example-epochs it
trained (members x epochs x training examples). Each training still to do costs its kept examples x its epochs at
that speed (cached trainings cost nothing). Where the run measured no training (imported checkpoints, a folder
whose ``timings.json`` has no ``train`` time) the line says so instead of guessing. Under torchrun the trainings
are shared by the ranks, so the wall time is the total divided by the ranks that share them.

The speed includes what the ``train`` stage does besides the optimiser steps (data loading, the ensemble's
predictions on every split), as each retrain also loads data and predicts. An ensemble trained under torchrun
records how many ranks shared its members (``models/metrics.json``'s ``train_ranks``): the speed is one process's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .. import dist
from ..run_folder import RunFolder


def seconds_per_example_epoch(timings: Mapping[str, object], *, members: int, epochs: int, n_train: int,
                              imported: bool, ranks: int = 1) -> float | None:
    """Measured seconds per training example per epoch of one process:
    ``timings["train"] * min(ranks, members) / (members * epochs * n_train)``.

    ``ranks``: the torchrun ranks that shared the ensemble's members (``models/metrics.json``'s ``train_ranks``),
    whose wall time covers only their share. None where nothing was measured: imported checkpoints (their ``train``
    time is the import), no positive ``train`` time in ``timings`` (an older folder, a damaged ``timings.json``),
    or no example-epochs.
    """
    seconds = timings.get("train")
    work = members * epochs * n_train
    if imported or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0 or work <= 0:
        return None
    return float(seconds) * min(max(ranks, 1), members) / work


def estimate_seconds(examples: Sequence[int], epochs: int, speed: float | None, world: int = 1) -> float | None:
    """Wall seconds of trainings on ``examples`` (kept examples, one entry per training) for ``epochs`` each.

    ``sum(examples) * epochs * speed``, divided by the ranks that share them (``min(world, len(examples))``);
    None without a measured ``speed``, 0.0 with nothing to train.
    """
    if speed is None:
        return None
    if not examples:
        return 0.0
    return sum(examples) * epochs * speed / min(world, len(examples))


def duration(seconds: float) -> str:
    """``12 s``, ``4 min``, ``2.5 h``: a duration rounded as an estimate deserves."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_line(what: str, examples: Sequence[int], epochs: int, done: int, speed: float | None, world: int = 1,
              imported: bool = False, recipe: str | None = None) -> str:
    """One line: the trainings ``what`` still has to do, ``done`` excluded, and their estimated time.

    e.g. ``cross-validation: 3 of 3 trainings to do (0 already done), 133 examples x 6 epochs each on average:
    about 12 s (the ensemble's measured 4.8 µs per example-epoch, timings.json)``. ``recipe``: a user's training
    function (:func:`~.recipe.recipe_tag`), whose epochs and speed are its own, so nothing is estimated.
    """
    todo = len(examples)
    line = f"{what}: {todo} of {todo + done} trainings to do ({done} already done)"
    if not todo:
        return line
    line += f", {sum(examples) / todo:,.0f} examples" + (" each" if recipe else f" x {epochs} epochs each") + \
        " on average"
    seconds = None if recipe else estimate_seconds(examples, epochs, speed, world)
    if seconds is None:
        return f"{line}: no time estimate, this run has no measured training speed: {_no_speed(imported, recipe)}"
    ranks = min(world, todo)
    shared = f", shared by {ranks} ranks (total {duration(seconds * ranks)})" if ranks > 1 else ""
    per = f"{speed * 1e3:.3g} ms" if speed >= 1e-3 else f"{speed * 1e6:.3g} µs"
    return f"{line}: about {duration(seconds)}{shared} (the ensemble's measured {per} per example-epoch, timings.json)"


def _no_speed(imported: bool, recipe: str | None) -> str:
    """Why a run has no measured speed for these trainings."""
    if recipe:
        return f"they train with your {recipe}, which this run has not timed"
    if imported:
        return "the ensemble was imported (--checkpoints), not trained here"
    return "timings.json records no `train` time (a folder from an older trakscope, or a damaged timings.json)"


def training_ranks(run: RunFolder) -> int:
    """The torchrun ranks that trained the ensemble (``models/metrics.json``'s ``train_ranks``; 1 where it says
    none: one process, an older folder, or metrics that are absent, damaged or of another format)."""
    metrics = run.results.optional(run.metrics_path, "model_metrics") or {}
    ranks = metrics.get("train_ranks", 1)
    return ranks if isinstance(ranks, int) and not isinstance(ranks, bool) and ranks > 0 else 1


def announce_trainings(run: RunFolder, what: str, examples: Sequence[int], epochs: int, done: int,
                       recipe: str | None = None) -> str:
    """Print (rank 0) and return :func:`plan_line` for ``run``, at the speed its ensemble's training measured.

    ``examples``: kept training examples of each training still to do; ``done``: trainings cached already;
    ``recipe``: the user's training function's tag, if they train with one.
    """
    cfg = run.config
    imported = bool(cfg.model.checkpoints)
    speed = seconds_per_example_epoch(run.results.timings(), members=cfg.train.ensemble, epochs=cfg.train.epochs,
                                      n_train=len(run.data.dataset().train), imported=imported,
                                      ranks=training_ranks(run))
    line = plan_line(what, examples, epochs, done, speed, dist.world_size(), imported, recipe)
    if dist.rank() == 0:
        print(line, flush=True)
    return line
