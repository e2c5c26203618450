"""The ``trakscope run`` stages: data -> train ensemble (or import checkpoints) -> featurize -> score.

Each stage resumes from the run folder, and redoes what is damaged: before the stages, :func:`repair` deletes
every output that no longer matches the manifest (truncated, emptied, rewritten) together with what was
computed from it, so that the stage that made it makes it again. Featurization and scoring go through the public
:class:`~trakscope.attribution.trak.TRAK` engine, whose store is the run folder's ``features/``.

Under ``torchrun`` (torch.distributed initialised from the environment), ensemble members are trained
on ``m % world == rank`` and featurization batches are sharded by rank; rank 0 writes the shared files
and computes the scores. The run folder must then be on a file system all ranks share.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..attribution.score import NonFiniteFeatures
from ..attribution.store import TrakStore
from ..attribution.trak import TRAK
from ..data import Dataset, ImageSplit, iter_batches
from ..io import read_json, save_npy, save_tensors, write_json
from ..models.weights import load_error, read_state_file, unwrapped
from ..progress import progress_bar
from ..run_folder import SPLITS, UNRECORDED, RunError, RunFolder, fingerprint
from ..train import MarginRecorder, load_trained, train_model
from .canaries import write_canaries
from .ensemble import (
    Runtime,
    chance_level,
    checkpoint_damaged,
    describe_checkpoint,
    engine_checkpoints,
    engine_state,
    ensemble_predict,
    final_checkpoints,
    kernel_files,
    masks_record,
    member_of,
    recorded_accuracy,
    self_files,
    trak_engine,
)


@contextmanager
def timed(run: RunFolder, stage: str):
    """Record the stage's wall time in ``timings.json`` (rank 0) if the block finishes."""
    start = time.perf_counter()
    yield
    if dist.rank() == 0:
        run.results.record_timing(stage, time.perf_counter() - start)


def data_files(run: RunFolder) -> list:
    """What :func:`prepare_data` writes: ``data/classes.json``, the split tables and thumbnails."""
    return [run.classes_path, *(run.table_path(s) for s in SPLITS), *(run.thumbs_path(s) for s in SPLITS)]


def prepare_data(run: RunFolder) -> Dataset:
    """Write ``data/classes.json``, the split tables and thumbnails (once); return the dataset."""
    dataset = run.data.dataset()
    if dist.rank() != 0 or all(p.exists() for p in data_files(run)):
        return dataset
    write_json(run.classes_path, dataset.classes)
    thumb = min(run.config.data.image_size, 64)
    for name in SPLITS:
        split = dataset.split(name)
        run.data.write_table(name, [(i, split.source_ids[i], int(split.labels[i]), int(split.true_labels[i]),
                                int(split.noisy[i])) for i in range(len(split))])
        thumbs = np.concatenate([split.images.thumbnails(np.arange(s, min(s + 256, len(split))), thumb)
                                 for s in range(0, len(split), 256)])
        save_npy(run.thumbs_path(name), thumbs)
    write_canaries(run, dataset.train)
    canaries = [run.canaries_path] if run.canaries_path.exists() else []
    run.integrity.seal(run.classes_path, *(run.thumbs_path(s) for s in SPLITS), *canaries)  # the tables seal themselves
    return dataset


def train_ensemble(run: RunFolder, rt: Runtime) -> None:
    """Train the ensemble members that have no checkpoints yet, then write metrics and probabilities."""
    cfg, dataset = run.config, run.data.dataset()
    per_model = cfg.train.kept_checkpoints
    for m in range(cfg.train.ensemble):
        if m % dist.world_size() != dist.rank():
            continue
        if all(run.checkpoint_path(m, c).exists() for c in range(per_model)):
            continue
        seed = cfg.train.seed + m
        margins = MarginRecorder(len(dataset.train))
        states = train_model(cfg.model, cfg.train, dataset, seed=seed, device=rt.device, progress=rt.progress,
                             margins=margins)
        save_npy(run.aum_path(m), margins.aum())  # before the checkpoints: a member with checkpoints has its AUM
        meta = {"fingerprint": fingerprint(cfg), "model": str(m), "seed": str(seed)}
        for c, state in enumerate(states):
            save_tensors(run.checkpoint_path(m, c), state, metadata={**meta, "checkpoint": str(c)})
    dist.barrier()
    if dist.rank() == 0:
        ensemble_metrics(run, rt)
        ensemble_aum(run)


def ensemble_aum(run: RunFolder) -> None:
    """``models/aum.npy``: the mean of the members' AUM, each verified first (skipped when a member's file is
    absent: a member trained before AUM existed, which :func:`repair` has retrained by now)."""
    paths = [run.aum_path(m) for m in range(run.config.train.ensemble)]
    if all(p.exists() for p in paths):
        save_npy(run.aum_path(), np.mean([run.integrity.array(p) for p in paths], axis=0))
        run.integrity.seal(run.aum_path())


def import_checkpoints(run: RunFolder, rt: Runtime) -> None:
    """Attribute models trained elsewhere: copy ``model.checkpoints`` in as ensemble members, then write metrics.

    Each file (safetensors, or a torch file read with ``weights_only``) must load strictly into the configured
    architecture, once a wrapper's ``module.`` prefix is stripped; it is stored as ``model{m}_ckpt0`` with the run's
    fingerprint, its source path and the accuracy its metadata records (:func:`~.ensemble.recorded_accuracy`), if
    any.
    """
    cfg = run.config
    if dist.rank() == 0:
        for m, source in enumerate(cfg.model.checkpoints):
            if run.checkpoint_path(m, 0).exists():
                continue
            state = unwrapped(read_state_file(source))  # DistributedDataParallel's module. off (`run` says so)
            try:
                load_trained(cfg.model, len(run.data.dataset().classes), state)
            except RuntimeError as e:
                raise RunError(f"checkpoint {source} does not fit --model {cfg.model.name} with "
                               f"{len(run.data.dataset().classes)} classes: {load_error(e)}") from e
            meta = {"fingerprint": fingerprint(cfg), "model": str(m), "source": str(source), "checkpoint": "0"}
            recorded = recorded_accuracy(source)
            if recorded is not None:
                meta["accuracy"] = str(recorded)
            save_tensors(run.checkpoint_path(m, 0), state, metadata=meta)
        ensemble_metrics(run, rt)
    dist.barrier()


def ensemble_metrics(run: RunFolder, rt: Runtime) -> None:
    """``models/metrics.json`` (accuracy of every member and of the ensemble) and ``models/probs_<split>.npy``.

    An imported checkpoint's row also holds ``recorded_acc``, the accuracy its file records (None where it records
    none); imported checkpoints are checked by :func:`check_imported`, not warned about here.
    """
    cfg, dataset = run.config, run.data.dataset()
    aum = [p for p in map(run.aum_path, range(cfg.train.ensemble)) if p.exists() and cfg.model.checkpoints is None]
    run.integrity.seal_pending(*run.checkpoint_paths(), *aum)  # every rank's files are on disk now (after the barrier)
    predicted = ensemble_predict(run, {name: dataset.split(name).images for name in SPLITS}, rt.device)
    probs, models = predicted.probs, []
    for m, path in enumerate(final_checkpoints(run)):
        imported = cfg.model.checkpoints is not None
        row = {"model": m, "seed": None if imported else cfg.train.seed + m, "checkpoint": run.relative(path),
               "source": cfg.model.checkpoints[m] if imported else "trained by trakscope"}
        for name in SPLITS[1:]:  # val and test
            row[f"{name}_acc"] = float((predicted.member_predicted[m][name] == dataset.split(name).true_labels).mean())
        if imported:
            row["recorded_acc"] = recorded_accuracy(path)
        models.append(row)
    ensemble = {f"{n}_acc": float((probs[n].argmax(1) == dataset.split(n).true_labels).mean()) for n in ("val", "test")}
    for name in SPLITS:
        save_npy(run.probs_path(name), probs[name].astype(np.float32))
    run.integrity.seal(*(run.probs_path(name) for name in SPLITS))
    shared = {"train_ranks": dist.world_size()} if dist.world_size() > 1 else {}  # what timings' train was shared by
    run.results.write(run.metrics_path, "model_metrics", {"models": models, "ensemble": ensemble, **shared})
    warning = None if cfg.model.checkpoints else chance_warning(ensemble["val_acc"], dataset.val.true_labels)
    if warning:
        print(f"trakscope: warning: {warning}", file=sys.stderr)


def chance_warning(val_acc: float, val_labels: np.ndarray) -> str | None:
    """A warning when the validation accuracy of an ensemble trakscope trained cannot be told apart from always
    predicting the majority class (:func:`~.ensemble.chance_level`). Attributions of such a model, and removal
    experiments on it, say little.
    """
    chance = chance_level(val_acc, val_labels)
    if chance is None:
        return None
    return (f"the ensemble is at chance level (val accuracy {val_acc:.3f}, {chance}); "
            "attributions and removal results of such a model say little: train longer (--epochs), check --lr, "
            "or check the data and labels")


# What makes checkpoints trained elsewhere score at chance when trakscope reads them (the remedies are flags of run).
IMPORT_CAUSES = ("likely causes: preprocessing that is not the model's (--image-size, --mean, --std), a class order "
                 "that is not the model's (--classes in the order of its head), or another architecture or head "
                 "than --model")


def imported_accuracy_problem(metrics: dict, val_labels: np.ndarray, n_test: int) -> str | None:
    """What is wrong with imported checkpoints' accuracy (``models/metrics.json``), or None: the ensemble at chance on
    val (:func:`~.ensemble.chance_level`), or a member whose test accuracy is far below the accuracy its file
    records: more than 5 points and more than two binomial standard errors of the recorded one on ``n_test``.
    """
    val_acc = metrics["ensemble"]["val_acc"]
    chance = chance_level(val_acc, val_labels)
    if chance is not None:
        return f"the imported checkpoints score at chance (val accuracy {val_acc:.3f}, {chance})"
    for row in metrics["models"]:
        recorded = row.get("recorded_acc")
        if recorded is None:
            continue
        margin = max(0.05, 2 * np.sqrt(recorded * (1 - recorded) / n_test))
        if recorded - row["test_acc"] > margin:
            return (f"imported checkpoint {row['source']} scores {row['test_acc']:.3f} on test here, far below the "
                    f"accuracy {recorded:.3f} its metadata records")
    return None


def check_imported(run: RunFolder, accept_low_accuracy: bool = False) -> None:
    """Stop before featurizing imported checkpoints that trakscope reads wrongly (:func:`imported_accuracy_problem`),
    on every run of the folder until the user accepts them; ``models/metrics.json`` stays for them to look at.

    Raises:
        RunError: the problem, its likely causes and the flag that attributes the checkpoints anyway.
    """
    metrics = run.results.read(run.metrics_path, "model_metrics", "trakscope run")
    problem = imported_accuracy_problem(metrics, run.data.table("val")["true_label"],
                                        len(run.data.table("test")["index"]))
    if problem is None:
        return
    if accept_low_accuracy:
        print(f"trakscope: warning: {problem}; {IMPORT_CAUSES}; attributing them anyway (--accept-low-accuracy)",
              file=sys.stderr)
        return
    raise RunError(f"{problem}: trakscope does not read them as they were trained; {IMPORT_CAUSES}; "
                   f"{run.relative(run.metrics_path)} has each checkpoint's accuracy; `trakscope run --out {run.path} "
                   "--accept-low-accuracy` attributes them anyway")


def split_batches(split: ImageSplit, rows: np.ndarray, batch_size: int, num_workers: int
                  ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """``(indices, images, labels)`` batches of ``split`` over ``rows``, in order."""
    labels = torch.as_tensor(split.labels)
    for idx, x in iter_batches(split.images, rows, batch_size, num_workers):
        yield idx, x, labels[idx]


def rows_to_featurize(done: np.ndarray, batch_size: int, shard: tuple[int, int]) -> np.ndarray:
    """Rows of the fixed batches ``[b * B, (b + 1) * B)`` with ``b % world == rank`` that are not all done."""
    rank, world = shard
    n = len(done)
    starts = [s for b, s in enumerate(range(0, n, batch_size)) if b % world == rank]
    todo = [np.arange(s, min(s + batch_size, n)) for s in starts if not done[s : s + batch_size].all()]
    return np.concatenate(todo) if todo else np.zeros(0, dtype=np.int64)


def featurize(run: RunFolder, rt: Runtime, trak: TRAK | None = None) -> TRAK:
    """Projected margin gradients of train, val and test under every checkpoint, resumable.

    ``trak``: another engine (other projector settings, its own store outside the run folder) to featurize the
    run's checkpoints into; default the run's own, whose finished files are sealed in the run's manifest.
    """
    cfg, dataset = run.config, run.data.dataset()
    own = trak is None
    trak = trak_engine(run, rt) if own else trak
    shard = (dist.rank(), dist.world_size())
    for k, (path, mask) in enumerate(engine_checkpoints(run)):
        state = engine_state(run, path, mask)
        for name in SPLITS:
            split = dataset.split(name)
            done = np.ones(len(split), dtype=bool)
            done[trak.pending(name, len(split), k)] = False
            rows = rows_to_featurize(done, cfg.trak.batch_size, shard)
            if own and not done.all():
                run.integrity.expect(*trak.store.split_files(k, name))  # trakscope's, not finished until sealed
            batches = split_batches(split, rows, cfg.trak.batch_size, cfg.train.num_workers)
            trak.featurize_batches(batches, split=name, n=len(split), checkpoint=state, checkpoint_id=k)
            if own:  # this split is complete now: record its files (once)
                run.integrity.seal_pending(*trak.store.split_files(k, name))
    if own:
        run.integrity.seal(trak.store.meta_path, trak.store.checkpoints_path)  # written by this engine just now
    return trak


SCORED = ("val", "test", "self")


def score_files(run: RunFolder) -> list:
    """What :func:`score` writes: the score matrices, their records and ``scores/meta.json``."""
    return [*(run.scores_path(s) for s in SCORED), *(run.scores_record_path(s) for s in SCORED[:2]),
            run.scores_meta_path]


def score(run: RunFolder, trak: TRAK) -> None:
    """``scores/{test,val,self}.npy`` and ``scores/meta.json`` (rank 0 computes, every rank waits).

    Raises:
        RunError: a checkpoint's featurized gradients are not finite (a diverged model), naming its file.
    """
    store = TrakStore(run.features_dir)
    made = [*score_files(run), *kernel_files(store, len(trak.checkpoints())), *self_files(store)]
    run.integrity.expect(*made)
    meta = {}
    try:
        for name in ("val", "test"):
            trak.scores("train", name, out=run.scores_path(name))
            meta = read_json(run.scores_record_path(name))
        trak.self_influence("train", out=run.scores_path("self") if dist.rank() == 0 else None)
    except NonFiniteFeatures as e:
        path = describe_checkpoint(run, e.checkpoint)
        raise RunError(f"{path}: {e}; check that model's training (a lower --lr), or remove that checkpoint") from e
    if dist.rank() == 0:
        masks = masks_record(run)  # recorded only with --masks: a run without them writes what it always did
        exact = store.kronecker_exact()  # likewise only when the Kronecker self-check sent layers to the exact path
        write_json(run.scores_meta_path, {
            "projector": run.config.trak.projector, "proj_dim": meta["proj_dim"],
            "checkpoints": len(meta["checkpoints"]), "lambda": meta["lambda"], "ridge": meta["ridge"],
            "score": meta["score"], **({"dropconnect": masks} if masks else {}),
            **({"kronecker_exact": exact} if exact else {})})
        run.integrity.seal(*(p for p in made if p.exists()))
    dist.barrier()


def repair(run: RunFolder) -> list[tuple[str, str]]:
    """Delete every output of ``trakscope run`` that is damaged or unrecorded, and what was computed from it (rank 0,
    before the stages), so that the stage that made it makes it again from verified inputs only.

    A damaged checkpoint or member AUM retrains that member (seeded: the same bits), taking its features, the
    ensemble's metrics, probabilities, AUM and the scores with it; damaged features of one split are featurized
    again (with that checkpoint's kernel and the scores); a damaged kernel (``X^T X``, its inverse, lambda) is
    recomputed from the features; damaged metrics, probabilities or AUM are rewritten from the checkpoints; a damaged
    score file is rescored. Returns ``(file, what is wrong)`` of each, for the log.
    """
    found: dict = {}

    def bad(*paths) -> bool:
        hits = {p: run.integrity.damage(p) for p in paths if Path(p).exists()}
        found.update({p: w for p, w in hits.items() if w})
        return any(hits.values())

    data = [*data_files(run), run.canaries_path]
    if bad(*data):
        run.integrity.discard(*data)
    _repair_members(run, bad, found)
    model_outputs = [run.metrics_path, *(run.probs_path(s) for s in SPLITS)]
    if bad(*model_outputs):
        run.integrity.discard(*model_outputs)
    if bad(run.aum_path()):
        run.integrity.discard(run.aum_path())
    _repair_store(run, bad, len(engine_checkpoints(run, run.checkpoint_paths(required=False))))
    if bad(*score_files(run)):
        run.integrity.discard(*(p for p in found if p in score_files(run)), run.scores_meta_path)
    run.integrity.forget_missing()
    return [(run.relative(p), "unverified" if w.startswith(UNRECORDED) else
             "missing" if w == "it is missing" else f"damaged ({w})") for p, w in found.items()]


def _repair_members(run: RunFolder, bad, found: dict) -> None:
    """Retrain (or import again) each member whose checkpoint or AUM is damaged, or whose AUM is missing."""
    checkpoints = run.checkpoint_paths(required=False)  # a stray checkpoint file is named here
    engine = engine_checkpoints(run, checkpoints)
    retrain = {member_of(p) for p in checkpoints if checkpoint_damaged(run, p) and bad(p)}
    if run.config.model.checkpoints is None:
        for m in sorted({member_of(p) for p in checkpoints}):
            aum = run.aum_path(m)
            if bad(aum) or not aum.exists():
                found.setdefault(aum, "it is missing")
                retrain.add(m)
    for k, (path, _) in enumerate(engine):
        if member_of(path) in retrain:
            run.integrity.discard(path, run.aum_path(member_of(path)), run.aum_path(), run.metrics_path,
                                  *(run.probs_path(s) for s in SPLITS), *score_files(run))
            store = TrakStore(run.features_dir)
            store.forget(k)
            if store.checkpoints_path.exists():
                run.integrity.seal(store.checkpoints_path)  # rewritten by forget() just now, without checkpoint k


def _repair_store(run: RunFolder, bad, n_checkpoints: int) -> None:
    """Drop the store's damaged or unrecorded files with what was computed from them: a split's features (not
    those being filled) take the checkpoint's kernel and the scores; a kernel file, the store's self-influence, its
    settings or checkpoint records take the scores (rescored, and re-registered, from verified files)."""
    store = TrakStore(run.features_dir)
    scores = [*score_files(run), *self_files(store)]
    for k, split in ((k, s) for k in range(n_checkpoints) for s in SPLITS):
        files = store.split_files(k, split)
        what = [run.integrity.damage(p) for p in files if p.exists()]
        if any(w and not w.startswith("trakscope began") for w in what):
            bad(*files)
            run.integrity.discard(*files, *kernel_files(store, n_checkpoints)[3 * k:3 * k + 3], *scores)
            store.forget_split(k, split)
    for k in range(n_checkpoints):
        kernel = kernel_files(store, n_checkpoints)[3 * k:3 * k + 3]
        if bad(*kernel):
            run.integrity.discard(*kernel, *scores)
    if bad(*self_files(store), store.meta_path, store.checkpoints_path):
        run.integrity.discard(*self_files(store), store.meta_path, store.checkpoints_path, *scores)


def run_pipeline(run: RunFolder, rt: Runtime, accept_low_accuracy: bool = False) -> None:
    """All stages in order; each skips what is already on disk and whole, and redoes what is damaged.

    Imported checkpoints are checked before they are featurized (:func:`check_imported`, on every run: a rerun
    stops again); ``accept_low_accuracy`` turns that stop into a warning.
    """
    if dist.rank() == 0:
        for name, what in repair(run):
            print(f"{name} is {what}; recomputing it", flush=True)
    dist.barrier()
    with timed(run, "data"):
        dataset = prepare_data(run)
    dist.barrier()
    cost = stage_costs(run.config, {s: len(dataset.split(s)) for s in SPLITS})
    bar = progress_bar(total=sum(cost.values()), desc="trakscope run", unit="ex", disable=not rt.progress, position=0,
               bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
    bar.update(cost["data"])
    imported = bool(run.config.model.checkpoints)
    if not run.metrics_path.exists() or not all(run.probs_path(s).exists() for s in SPLITS):
        bar.set_description_str("trakscope run: " + ("import" if imported else "train"))
        with timed(run, "import" if imported else "train"):
            (import_checkpoints if imported else train_ensemble)(run, rt)
    elif not imported and not run.aum_path().exists() and dist.rank() == 0:
        ensemble_aum(run)  # removed by repair, while the members' AUM are whole
    bar.update(cost["train"])
    if imported:
        check_imported(run, accept_low_accuracy)
    if not all(p.exists() for p in score_files(run)):
        bar.set_description_str("trakscope run: featurize")
        with timed(run, "featurize"):
            trak = featurize(run, rt)
        bar.update(cost["featurize"])
        bar.set_description_str("trakscope run: score")
        with timed(run, "score"):
            score(run, trak)
    bar.update(bar.total - bar.n)
    bar.close()
    dist.barrier()


def stage_costs(cfg, sizes: dict[str, int]) -> dict[str, float]:
    """Rough work of each ``run`` stage in example-passes, so the overall bar's ETA is proportional to time.

    A training step and a featurization step each cost about one forward and one backward pass per example; data
    preparation (decoding, thumbnails) and scoring (a few matrix products) are small beside them.
    """
    n = sum(sizes.values())
    members = len(cfg.model.checkpoints) if cfg.model.checkpoints else cfg.train.ensemble
    trained = 0 if cfg.model.checkpoints else members * cfg.train.epochs * sizes["train"]
    checkpoints = members * ((1 if cfg.model.checkpoints else cfg.train.kept_checkpoints) + cfg.trak.masks)
    return {"data": 0.05 * n, "train": trained + members * n / 3, "featurize": checkpoints * n, "score": 0.05 * n}
