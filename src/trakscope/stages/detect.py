"""The ``detect`` stage: every registered scorer on a run folder -> ``detect/ranking.csv`` and ``detect/metrics.json``.

Inputs (train and val only, never test): the val and self scores, the ensemble's train and val probabilities, the
split tables, the training-time AUM and, for scorers that need them, k-fold cross-validated retraining
(:mod:`.crossval`). Each input has one provider in :data:`PROVIDERS`, run once and only when a scorer that runs
needs it (:class:`LazyInputs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import dist
from ..methods import labels as suggestions
from ..methods import registry
from ..methods.metrics import RECALL_FRACTIONS, detection_metrics, inspection_rank, recall_key, roc_auc
from ..methods.scorers import resolve_groups
from ..run_folder import RunFolder
from ..table_files import FORMATS, write_parquet
from .canaries import canary_estimates, canary_kinds, canary_mask, canary_weights, wrong_label_estimate
from .crossval import out_of_sample_probs
from .ensemble import chance_level
from .groups import read_groups
from .leverage import checkpoint_fit
from .recipe import TrainFn


@dataclass
class Detection:
    """Scores of every scorer that ran (natural units, float64 ``[n_train]``) and what is known about them.

    ``info`` holds ``groups``, ``n_groups``, ``canary`` (bool ``[n_train]``), ``left_out`` (scorer -> why an input
    it needs was withheld, see :class:`Source`) and ``wrong_labels`` (the estimated count,
    :func:`~.canaries.wrong_label_estimate`); ``flags`` the bool ``[n_train]`` flags of each flagging scorer that
    ran (:class:`~.registry.Flag`) and ``facts`` their summaries.
    """

    scores: dict[str, np.ndarray]
    predicted: np.ndarray  # int64 [n_train] argmax of the ensemble's train probabilities
    info: dict = field(default_factory=dict)
    flags: dict[str, np.ndarray] = field(default_factory=dict)
    facts: dict[str, dict] = field(default_factory=dict)
    suggested: np.ndarray | None = None  # int64 [n_train] suggested labels (methods/labels.py)
    suggested_prob: np.ndarray | None = None  # float64 [n_train] their probabilities
    suggestion_source: str = suggestions.ENSEMBLE  # out_of_sample (k-fold) or ensemble


@dataclass(frozen=True)
class Source:
    """Where detect's inputs come from: the run folder and the options that shape them (see :func:`compute_scores`).

    ``withheld`` is filled by the providers: input name -> why it was withheld (None given to the scorers), e.g.
    out-of-sample probabilities at chance.
    """

    run: RunFolder
    groups: str = "classes"
    folds: int | None = 3
    device: str = "cpu"
    progress: bool = True
    train_fn: TrainFn | None = None
    withheld: dict[str, str] = field(default_factory=dict)


Provider = Callable[[Source, Mapping[str, Any]], Any]


def _group_ids(src: Source, inputs: Mapping[str, Any]) -> np.ndarray:
    """int64 ``[n_val]`` D3M validation groups: per class, Auto-D3M, or a groups file."""
    given = src.groups if src.groups in ("classes", "auto") else read_groups(src.run, src.groups)[0]
    return resolve_groups(given, inputs["val_scores"], inputs["val_labels"])


def _oos_probs(src: Source, inputs: Mapping[str, Any]) -> np.ndarray | None:
    """float ``[n_train, C]`` k-fold out-of-sample probabilities (timed), or None without folds, and None (withheld,
    said in ``src.withheld``) when their accuracy on the labels is at chance (:func:`~.ensemble.chance_level`): the
    retrains did not learn the data, and their probabilities must not choose or order suspects."""
    if src.folds is None:
        return None
    t0 = time.perf_counter()
    oos = out_of_sample_probs(src.run, src.folds, device=src.device, progress=src.progress, train_fn=src.train_fn)
    if dist.rank() == 0:
        src.run.results.record_timing("detect_crossval", time.perf_counter() - t0)
    labels = inputs["train_labels"]
    acc = float((oos.argmax(1) == labels).mean())
    chance = chance_level(acc, labels)
    if chance is None:
        return oos
    src.withheld["oos_probs"] = (f"{src.folds}-fold out-of-sample accuracy {acc:.3f} is at chance ({chance}); those "
                                 "probabilities are not used to choose or order suspects: the retrains' recipe did "
                                 "not learn this data")
    return None


def _aum(src: Source, inputs: Mapping[str, Any]) -> np.ndarray | None:
    """float ``[n_train]`` AUM recorded during training, verified, or None (imported checkpoints); a trained run
    whose AUM is missing or damaged is refused (`trakscope run` rebuilds it)."""
    return src.run.aum()


# One provider per input a scorer may read (the names of registry.Inputs).
PROVIDERS: dict[str, Provider] = {
    "self_scores": lambda src, _: src.run.results.scores("self"),
    "val_scores": lambda src, _: src.run.results.scores("val"),
    "train_labels": lambda src, _: src.run.data.table("train")["label"],
    "val_labels": lambda src, _: src.run.data.table("val")["label"],
    "train_probs": lambda src, _: src.run.results.probs("train"),
    "val_probs": lambda src, _: src.run.results.probs("val"),
    "group_ids": _group_ids,
    "folds": lambda src, _: src.folds,
    "oos_probs": _oos_probs,
    "aum": _aum,
    "checkpoint_fit": lambda src, _: checkpoint_fit(src.run, src.device),
}


class LazyInputs(Mapping[str, Any]):
    """The scorers' inputs by name: each computed by its provider on first use, then kept."""

    def __init__(self, source: Source, providers: Mapping[str, Provider] = PROVIDERS) -> None:
        self._source, self._providers, self._values = source, providers, {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            if name not in self._providers:
                raise KeyError(f"no provider for the scorer input {name!r}: add one to PROVIDERS in stages/detect.py")
            self._values[name] = self._providers[name](self._source, self)
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def computed(self, name: str) -> Any:
        """The input ``name`` if a scorer already read it, else None (nothing is computed)."""
        return self._values.get(name)


def selected_scorers(names: Collection[str] | None = None) -> list[registry.Scorer]:
    """The registered scorers named in ``names`` (None: :func:`~trakscope.methods.registry.default_scorers`), in
    registry order.

    Raises:
        ValueError: a name that is not registered.
    """
    unknown = sorted(set(names or ()) - set(registry.SCORERS))
    if unknown:
        raise ValueError(f"unknown scorer {', '.join(unknown)}; choose from {', '.join(registry.SCORERS)}")
    chosen = registry.default_scorers() if names is None else names
    return [s for n, s in registry.SCORERS.items() if n in chosen]


def compute_scores(run: RunFolder, groups: str = "classes", cleanlab_folds: int | None = 3,
                   device: str = "cpu", progress: bool = True, scorers: Collection[str] | None = None,
                   train_fn: TrainFn | None = None) -> Detection:
    """Run the registered scorers (``scorers``: their names; None: all but the opt-in ones) on the run folder.

    ``cleanlab_folds`` is the k of the cross-validation that gives out-of-sample probabilities (cleanlab's input);
    None computes none; ``train_fn`` trains its folds instead of the run's recipe (:mod:`.recipe`). A scorer is left
    out when an input it needs is None (see :class:`~.registry.Skip`); ``info["left_out"]`` says why where a
    provider withheld it.
    """
    src = Source(run, groups, cleanlab_folds, device, progress, train_fn)
    inputs = LazyInputs(src)
    chosen = selected_scorers(scorers)
    ran = {s.name: scored for s in chosen if (scored := s.run(inputs)) is not None}
    left_out = {s.name: why for s in chosen for name, why in src.withheld.items() if name in s.needs}
    info = {"groups": str(groups), "n_groups": int(inputs["group_ids"].max()) + 1,
            "canary": canary_mask(run, len(inputs["train_labels"])), "left_out": left_out}
    flags = {n: r.flagged for n, r in ran.items() if r.flagged is not None}
    oos = inputs.computed("oos_probs")  # the estimate of the wrong labels reads out-of-sample probabilities if any
    info["wrong_labels"] = wrong_label_estimate(inputs["train_labels"], inputs["train_probs"] if oos is None else oos,
                                                info["canary"], oos is not None, flags)
    info["canary_weights"] = None if oos is None else canary_weights(run, inputs["train_labels"], oos, info["canary"])
    info["canary_kinds"] = canary_kinds(run, inputs["train_labels"])
    det = Detection({n: r.score for n, r in ran.items()}, inputs["train_probs"].argmax(axis=1).astype(np.int64),
                    info, flags=flags, facts={n: r.facts for n, r in ran.items() if r.flagged is not None})
    return with_suggestions(det, inputs)


def with_suggestions(det: Detection, inputs: LazyInputs) -> Detection:
    """``det`` with suggested labels: from the k-fold out-of-sample probabilities where a scorer computed them
    (nothing is trained for them alone), else from the ensemble's probabilities."""
    oos = inputs.computed("oos_probs")
    probs = inputs["train_probs"] if oos is None else oos
    det.suggested, det.suggested_prob = suggestions.suggested_labels(probs)
    det.suggestion_source = suggestions.ENSEMBLE if oos is None else suggestions.OUT_OF_SAMPLE
    return det


def ground_truth(run: RunFolder) -> str:
    """``planted`` when the run planted label noise (so ``true_label`` and ``noisy`` are known), else ``unknown``.

    Without planted noise ``true_label`` is only a copy of the label: nothing says the label is right.
    """
    planted = run.config.data.noise > 0 or bool(run.data.table("train")["noisy"].any())
    return "planted" if planted else "unknown"


def truth_columns(run: RunFolder, i: int, train: dict[str, np.ndarray], known: bool,
                  canary: np.ndarray | None = None) -> list:
    """``ground_truth, true_label, true_label_name, noisy`` of training example ``i`` (empty where unknown).

    ``noisy`` stays 0 when unknown (readers parse it as an int); ``ground_truth`` says it was not verified. A
    canary (bool ``canary[i]``) is ``ground_truth=canary`` with its true label and ``noisy`` 0: it is not the
    data's own error.
    """
    if canary is not None and canary[i]:
        true = int(train["true_label"][i])
        return ["canary", true, run.classes[true], 0]
    if not known:
        return ["unknown", None, None, 0]
    true = int(train["true_label"][i])
    return ["planted", true, run.classes[true], int(train["noisy"][i])]


def primary_scorer(det: Detection) -> str:
    """The scorer whose rank orders ``ranking.csv`` and the report's suspects.

    With canaries, the scorer of highest ROC-AUC on them (first registered on a tie); otherwise the first of
    :data:`~.registry.PRIMARY` that ran (AUM, else TRAK self-influence).
    """
    canary = det.info.get("canary")
    if canary is not None and canary.any() and not canary.all():
        auc = {n: roc_auc(registry.SCORERS[n].suspicion(s), canary) for n, s in det.scores.items()}
        return max(auc, key=lambda n: (auc[n], -list(auc).index(n)))
    return registry.default_primary(det.scores)


# ranking.csv's (and export's removed list's) suggestion columns (see suggestion_cells)
SUGGESTION_COLUMNS = ["suggested_label", "suggested_label_name", "suggested_prob", "suggestion_source"]


def ranking_rows(run: RunFolder, det: Detection) -> tuple[list[str], list[list]]:
    """Header and rows of ``detect/ranking.csv``, ordered by :func:`primary_scorer`'s rank (inspected first on top).

    ``inspect_order`` is 1..n in that order; ``<scorer>_score`` is the natural score (float, 9 significant
    digits), ``<scorer>_rank`` 1 = inspected first (most suspicious). Class names stand beside every label;
    ``true_label`` and ``true_label_name`` are None (empty) unless noise was planted (:func:`ground_truth`) or
    the example is a canary (``canary`` 1, ``ground_truth=canary``). The :data:`SUGGESTION_COLUMNS` follow
    (:func:`suggestion_cells`). Each flag a scorer set (``cleanlab_issue``) is a
    last column, 1 = flagged.
    """
    train, classes = run.data.table("train"), run.classes
    known = ground_truth(run) == "planted"
    names = list(det.scores)
    ranks = {n: inspection_rank(registry.SCORERS[n].suspicion(det.scores[n])) for n in names}
    canary = det.info.get("canary")
    header = ["inspect_order", "index", "source_id", "label", "label_name", "predicted", "predicted_name",
              "ground_truth", "true_label", "true_label_name", "noisy", "canary"]
    header += SUGGESTION_COLUMNS
    header += [f"{n}_{kind}" for n in names for kind in ("score", "rank")]
    flagged = [n for n in names if n in det.flags]
    header += [registry.SCORERS[n].flag.column for n in flagged]
    rows = []
    for order, i in enumerate(np.argsort(ranks[primary_scorer(det)], kind="stable"), start=1):
        label, pred = int(train["label"][i]), int(det.predicted[i])
        row = [order, int(train["index"][i]), str(train["source_id"][i]), label, classes[label], pred, classes[pred],
               *truth_columns(run, i, train, known, canary), int(canary is not None and canary[i])]
        row += suggestion_cells(det, int(i), classes)
        for n in names:
            row += [float(f"{det.scores[n][i]:.9g}"), int(ranks[n][i])]
        row += [int(det.flags[n][i]) for n in flagged]
        rows.append(row)
    return header, rows


def suggestion_cells(det: Detection, i: int, classes: list[str]) -> list:
    """The :data:`SUGGESTION_COLUMNS` of training example ``i``: the suggested label, its name, its probability
    (6 significant digits) and where it comes from (``out_of_sample`` k-fold or ``ensemble`` probabilities); empty
    where ``det`` has no suggestions."""
    if det.suggested is None or det.suggested_prob is None:
        return [None] * len(SUGGESTION_COLUMNS)
    suggested = int(det.suggested[i])
    return [suggested, classes[suggested], float(f"{det.suggested_prob[i]:.6g}"), det.suggestion_source]


def suggestion_metrics(run: RunFolder, det: Detection, noisy: np.ndarray, canary: np.ndarray | None) -> dict:
    """How often the suggested label is the true one among the primary scorer's top 5/10/20%: on the planted wrong
    labels (``planted``, where there are) and on the canaries (``canaries``, where there are); see
    :func:`~trakscope.methods.labels.suggestion_quality`. ``source`` says where the suggestions come from."""
    primary = primary_scorer(det)
    suspicion = registry.SCORERS[primary].suspicion(det.scores[primary])
    true = run.data.table("train")["true_label"]
    out: dict = {"source": det.suggestion_source, "scorer": primary}
    for name, wrong in (("planted", noisy), ("canaries", canary)):
        if wrong is not None and wrong.any():
            out[name] = suggestions.suggestion_quality(suspicion, det.suggested, true, wrong)
    return out


def quality_metrics(run: RunFolder, det: Detection) -> dict | None:
    """Per-scorer ROC-AUC, AP and recall@5/10/20% against the planted noise and on the canaries.

    ``scorers`` holds the planted-noise metrics (empty without planted noise), ``canaries`` the same metrics
    with the canaries as the errors to find (absent without canaries), ``primary`` the scorer that orders
    ``ranking.csv``. Both rankings are the full training split's: canaries compete with the data's own errors
    for the top places, as they would on real data. None when there is neither planted noise nor canaries.
    """
    noisy = run.data.table("train")["noisy"].astype(bool)
    canary = det.info.get("canary")
    has_canaries = canary is not None and canary.any()
    if not noisy.any() and not has_canaries:
        return None
    per = {n: detection_metrics(registry.SCORERS[n].suspicion(s), noisy)
           for n, s in det.scores.items()} if noisy.any() else {}
    out = {"n_train": int(len(noisy)), "n_noisy": int(noisy.sum()), "noise_rate": float(noisy.mean()),
           "groups": det.info["groups"], "n_groups": det.info["n_groups"], "scorers": per,
           "chance": _chance(noisy), "descriptions": {n: registry.SCORERS[n].description for n in det.scores},
           "primary": primary_scorer(det)}
    if has_canaries:
        out["canaries"] = {"n": int(canary.sum()), "chance": _chance(canary),
                           "scorers": {n: detection_metrics(registry.SCORERS[n].suspicion(s), canary)
                                       for n, s in det.scores.items()},
                           **canary_estimates(det.scores, canary, out["primary"], det.info.get("canary_weights"),
                                              det.info.get("canary_kinds"))}
    if "wrong_labels" in det.info:
        out["wrong_labels"] = det.info["wrong_labels"]
    out.update(flag_summaries(det, noisy))
    if det.suggested is not None and det.scores:
        out["suggestions"] = suggestion_metrics(run, det, noisy, canary)
    return out


def flag_summaries(det: Detection, noisy: np.ndarray) -> dict[str, dict | str]:
    """Per flagging scorer: its facts with the flags' precision and recall on ``noisy`` (bool ``[n_train]``), or
    ``skipped (...)`` when it did not run."""
    out: dict[str, dict | str] = {}
    for name, s in registry.SCORERS.items():
        if s.flag is None:
            continue
        if name in det.facts:
            out[name] = {**det.facts[name], **s.flag.quality(det.flags[name], noisy)}
        elif name in det.info.get("left_out", {}):
            out[name] = f"skipped ({det.info['left_out'][name]})"
        else:
            out[name] = f"skipped ({s.skip.option or s.skip.why})" if s.skip else "skipped"
    return out


def _chance(truth: np.ndarray) -> dict:
    chance = {"roc_auc": 0.5, "average_precision": float(truth.mean())}
    chance.update({recall_key(f): f for f in RECALL_FRACTIONS})
    return chance


def run_detection(run: RunFolder, groups: str = "classes", cleanlab_folds: int | None = 3, device: str = "cpu",
                  progress: bool = True, fmt: str = "csv", scorers: Collection[str] | None = None,
                  train_fn: TrainFn | None = None) -> tuple[Detection, dict | None]:
    """Compute, write ``detect/ranking.csv`` (and ``detect/metrics.json`` under planted noise or canaries), time it.

    With ``fmt="parquet"`` the same table is also written as ``detect/ranking.parquet`` (the CSV is what the
    other stages read, so it is always written). ``scorers``: the names to run (None: all but the opt-in ones, see
    :func:`compute_scores`); ``train_fn``: the user's recipe for the cross-validation folds (:mod:`.recipe`). Under
    torchrun the folds are shared out (:mod:`.crossval`) and rank 0 writes.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    det = compute_scores(run, groups, cleanlab_folds, device, progress, scorers, train_fn)
    metrics = quality_metrics(run, det)
    if dist.rank() == 0:  # under torchrun every rank has the same scores; one writes them
        header, rows = ranking_rows(run, det)
        run.results.write_ranking(header, rows)
        if fmt == "parquet":
            write_parquet(run.ranking_parquet_path, header, rows)
        if metrics is not None:
            run.results.write(run.detect_metrics_path, "detect_metrics", metrics)
        run.results.record_timing("detect", time.perf_counter() - t0)
    dist.barrier()
    return det, metrics


def load_ranking(run: RunFolder) -> dict[str, np.ndarray]:
    """``detect/ranking.csv`` as columns in example-index order (:meth:`RunFolder.ranking` over every scorer)."""
    flags = tuple(s.flag.column for s in registry.SCORERS.values() if s.flag is not None)
    return run.results.ranking(tuple(registry.SCORERS), flags)
