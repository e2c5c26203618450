"""``trakscope run``: data -> ensemble training -> TRAK featurization -> scores, into a run folder."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from torch import nn

from .. import dist
from ..config import RunConfig, config_diff
from ..data import load_dataset
from ..models import WeightsError, build_model, resolve_config
from ..models.weights import check_state_file
from ..precision import resolve_run_precision
from ..run_folder import RunError, RunFolder
from ..run_lock import hold
from ..stages.canaries import canary_table
from ..stages.run import run_pipeline
from ._config_args import add_config_arguments, config_from_args
from ._runtime import add_runtime_arguments, runtime_from_args

HELP = "train a checkpoint ensemble and compute TRAK scores (train x test, train x val, self-influence)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an existing run folder whose settings differ")
    parser.add_argument("--accept-low-accuracy", action="store_true",
                        help="attribute --checkpoints that score at chance here, or far below the accuracy their "
                             "safetensors metadata records (key `accuracy`), instead of stopping before featurizing "
                             "(trakscope is then likely reading them unlike they were trained)")
    add_runtime_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    rt = runtime_from_args(args)
    cfg = config_from_args(args)  # every setting within its bounds (trakscope.config), before anything is touched
    existing = RunFolder(args.out)
    cfg, moved = resume_config(cfg, existing, args.overwrite)
    cfg = resolve_config(cfg)  # the model's image size and statistics, saved in config.json
    cfg = resolve_run_precision(cfg, rt.device)  # auto made concrete for this device; bf16 checked against it
    cfg = absolute_data_root(cfg, existing)
    if moved is None:  # every setting given, the data root aside: compared once resolved like the saved ones
        cfg, moved = resume_config(cfg, existing, args.overwrite)
    # A typo (class name, model, weights) or a checkpoint that is not of --model fails here, before the run folder
    # is made, cleared by --overwrite, or anything trains.
    run_folder = RunFolder(args.out, data_root=moved)
    dataset = load_dataset(cfg.data if moved is None else dataclasses.replace(cfg.data, data_root=run_folder.data_root))
    model = build_model(cfg.model, len(dataset.classes), classes=dataset.classes)
    check_checkpoint_sources(cfg, model, len(dataset.classes), existing, args.overwrite)
    if dist.rank() == 0:
        run_folder.path.mkdir(parents=True, exist_ok=True)
    with hold(run_folder, "run"):
        if dist.rank() == 0:
            for note in run_folder.initialize(cfg, overwrite=args.overwrite):
                print(note, flush=True)
            run_folder.data.record(dataset)
        dist.barrier()
        if dist.rank() != 0:
            run_folder.data.record(dataset)  # checks rank 0's fingerprint, caches the dataset
        run_pipeline(run_folder, rt, accept_low_accuracy=args.accept_low_accuracy)
        if dist.rank() == 0:
            _summary(run_folder)
    return 0


def check_checkpoint_sources(cfg: RunConfig, model: nn.Module, num_classes: int, run_folder: RunFolder,
                             overwrite: bool) -> None:
    """Open every ``--checkpoints`` file this run will import and match its names and shapes to ``model`` (built from
    ``--model`` for ``num_classes``): all of them for a new or overwritten folder, else those whose member was not
    imported yet. Only safetensors headers are read (a torch file is loaded with ``weights_only``).

    Raises:
        WeightsError: naming the file: absent, not a state-dict file, or of another architecture.
    """
    sources = cfg.model.checkpoints or ()
    if not overwrite and run_folder.config_path.is_file():  # a resumed folder reads only what it lacks
        sources = [s for m, s in enumerate(sources) if not run_folder.checkpoint_path(m, 0).exists()]
    for source in sources:
        try:
            check_state_file(model, source, f"--model {cfg.model.name} with {num_classes} classes")
        except WeightsError as e:
            raise WeightsError(f"--checkpoints: {e}") from e
def resume_config(cfg: RunConfig, existing: RunFolder, overwrite: bool) -> tuple[RunConfig, str | None]:
    """``(settings to run with, data root to read the data from instead of the saved one)``.

    No settings given: the folder's own (from its integrity record where that holds them, so that a damaged or
    edited ``config.json`` does not decide). Only ``--data-root`` differs from the saved settings: the saved ones,
    with the data re-pointed at the new root (checked against ``data/fingerprint.json``), as ``detect`` does.
    """
    if overwrite or not existing.has_config():
        return cfg, None
    try:
        saved = existing.saved_config()
    except RunError:
        return cfg, None  # initialize() reports the foreign or damaged config
    if cfg == RunConfig():
        print(f"resuming {existing.path} with the settings in its config.json")
        return saved, None
    root = cfg.data.data_root
    same = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_root=saved.data.data_root))
    bare = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_root=None)) == RunConfig()
    if root is None or _same_place(root, saved.data.data_root) or not (bare or not config_diff(saved, same)):
        return cfg, None
    print(f"resuming {existing.path} with the settings in its config.json, reading the data from {root}")
    return saved, root


def _same_place(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def absolute_data_root(cfg: RunConfig, run_folder: RunFolder) -> RunConfig:
    """``cfg`` with ``data.data_root`` absolute, so that later commands find the data from any directory.

    A folder made before roots were stored absolute keeps its relative root when it names the same place,
    so that resuming it is not refused as "other settings".
    """
    root = cfg.data.data_root
    if root is None:
        return cfg
    absolute = str(Path(root).expanduser().resolve())
    if run_folder.config_path.is_file():
        try:
            old = run_folder.config.data.data_root
        except RunError:
            old = None  # initialize() reports the foreign or damaged config
        if old is not None and str(Path(old).expanduser().resolve()) == absolute:
            absolute = old
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_root=absolute))


def _summary(run_folder: RunFolder) -> None:
    noisy = int(run_folder.data.table("train")["noisy"].sum())
    if noisy:
        print(f"planted noise: {noisy} of {len(run_folder.data.table('train')['noisy'])} training labels flipped on "
              f"purpose (--noise {run_folder.config.data.noise:g}); data/train.csv marks them")
    canaries = canary_table(run_folder)["index"]
    if len(canaries):
        data = run_folder.config.data
        print(f"canaries: {len(canaries)} further labels flipped as known errors (--canaries {data.canaries:g}, "
              f"--canary-kind {data.canary_kind}), listed in {run_folder.canaries_path}; `detect` measures each "
              "scorer on them, `export` restores their labels")
    metrics = run_folder.results.read(run_folder.metrics_path, "model_metrics", "trakscope run")
    ens = metrics["ensemble"]
    accs = ", ".join(f"{m['test_acc']:.3f}" for m in metrics["models"])
    print(f"ensemble of {len(metrics['models'])}: test accuracy {ens['test_acc']:.3f} (members {accs}), "
          f"val accuracy {ens['val_acc']:.3f}")
    timings = run_folder.results.timings()
    print("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print(f"scores: {run_folder.scores_path('test')} [n_train, n_test], {run_folder.scores_path('val')}, "
          f"{run_folder.scores_path('self')}")
    n_test = run_folder.results.scores("test").shape[1]
    print(f"next: trakscope inspect --run {run_folder.path} --target {min(17, n_test - 1)}")
