"""Remove-and-retrain: what each strategy removes, the experiment's loop, and its summary (array in, dict out).

Selection reads only rankings computed from the train and val splits; accuracy is measured on test by the
caller's ``evaluate`` function, so nothing leaks. :func:`remove_and_retrain` runs with any training recipe:
trakscope's own (the ``removal`` stage, which caches every retrain) or the user's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from . import registry
from .metrics import inspection_order

DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.10)


def select_removed(strategy: str, fraction: float, ranking: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    """Training indices a strategy removes.

    Args:
        strategy: a name (or alias) in :data:`~.registry.STRATEGIES`. ``d3m-heuristic`` removes every example
            with ``A_i < 0`` and ignores ``fraction``; ``random`` draws ``round(fraction * n)`` examples with ``seed``.
        fraction: share of the training split to remove, in ``[0, 1)``.
        ranking: ``index`` int ``[n_train]`` and, per scorer, its natural scores float ``[n_train]``
            (:meth:`~trakscope.run_folder.RunFolder.ranking` reads them from ``detect/ranking.csv``).
        seed: seed of the ``random`` strategy.

    Returns:
        sorted int64 indices into the training split. Ties are broken by index (lower first).
    """
    n = len(ranking["index"])
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    k = int(round(fraction * n))
    s = registry.strategy(strategy)
    if s.scorer is None:
        return np.sort(np.random.default_rng(seed).permutation(n)[:k]).astype(np.int64)
    score = _column(ranking, s.scorer)
    if s.threshold:
        return np.flatnonzero(score < 0).astype(np.int64)
    return np.sort(inspection_order(_removal_key(s, score))[:k]).astype(np.int64)


def _removal_key(s: registry.Strategy, score: np.ndarray) -> np.ndarray:
    """Higher = removed first: the scorer's suspicion, or its opposite for ``most_suspicious=False``."""
    suspicion = registry.SCORERS[s.scorer].suspicion(score)
    return suspicion if s.most_suspicious else -suspicion


def _column(ranking: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in ranking:
        skip = registry.SCORERS[name].skip
        hint = f" ({skip.reason})" if skip else ""
        raise ValueError(f"detect/ranking.csv has no {name} scores{hint}; rerun `trakscope detect` "
                         "or drop that strategy")
    return np.asarray(ranking[name], dtype=np.float64)


def removal_reason(strategy: str, ranking: dict[str, np.ndarray], index: int) -> str:
    """Why ``strategy`` removed training example ``index``, e.g. ``d3m=-0.0123 (rank 4 of 1000, lowest first)``."""
    s = registry.strategy(strategy)
    if s.scorer is None:
        return "random control"
    score = _column(ranking, s.scorer)
    if s.threshold:
        return f"{s.scorer}={score[index]:.4g} < 0 ({s.description})"
    rank = int(np.flatnonzero(inspection_order(_removal_key(s, score)) == index)[0]) + 1
    return f"{s.scorer}={score[index]:.4g} (rank {rank} of {len(score)}: {s.description})"


def relabeled_labels(strategy: str, selected: np.ndarray, ranking: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The training labels a relabel strategy trains with, or None for a strategy that removes.

    Args:
        strategy: a name or alias in :data:`~.registry.STRATEGIES`.
        selected: sorted int64 indices :func:`select_removed` chose.
        ranking: ``label`` (given) and ``suggested_label`` int ``[n_train]`` (``detect/ranking.csv``'s columns).

    Returns:
        int64 ``[n_train]``: the given labels, with ``selected`` given their suggested label.
    """
    if registry.strategy(strategy).relabels is None:
        return None
    if "suggested_label" not in ranking or "label" not in ranking:
        raise ValueError("detect/ranking.csv has no suggested_label column (written by an older trakscope); rerun "
                         "`trakscope detect`, or drop the relabel strategies")
    labels = np.asarray(ranking["label"], dtype=np.int64).copy()
    labels[selected] = np.asarray(ranking["suggested_label"], dtype=np.int64)[selected]
    return labels


def indices_hash(indices: np.ndarray) -> str:
    """Short SHA-256 of a sorted index array (identifies a selection in the cache)."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """One retrain: a strategy at a fraction with one seed offset (seed = config.train.seed + offset)."""

    strategy: str
    fraction: float
    offset: int

    @property
    def key(self) -> str:
        frac = "all" if math.isnan(self.fraction) else f"{self.fraction:g}"
        return f"{self.strategy}_{frac}_s{self.offset}"


def plan_jobs(strategies: tuple[str, ...], fractions: tuple[float, ...], seeds: int) -> list[Job]:
    """Seed-major list of retrains (a finished first seed is already a usable table); heuristic once per seed."""
    strategies = tuple(registry.strategy(s).name for s in strategies)
    if seeds < 1:
        raise ValueError(f"need at least one seed, got {seeds}")
    jobs = []
    for offset in range(seeds):
        for s in strategies:
            fracs = (math.nan,) if registry.STRATEGIES[s].threshold else fractions
            jobs += [Job(s, f, offset) for f in fracs]
    return jobs


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (``std(ddof=1) / sqrt(n)``; None for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return float(v.mean()), se


def worst_group_accuracy(correct: np.ndarray, groups: np.ndarray) -> float:
    """The lowest per-group accuracy (D3M's metric): ``correct`` bool ``[n_test]``, ``groups`` int ``[n_test]``."""
    correct, groups = np.asarray(correct, dtype=bool), np.asarray(groups, dtype=np.int64)
    if correct.shape != groups.shape:
        raise ValueError(f"correct {correct.shape} and groups {groups.shape} must have the same shape")
    return float(min(correct[groups == g].mean() for g in np.unique(groups)))


def paired_delta(values: list[float], reference: dict[int, float], seeds: list[int]) -> tuple[float, float | None]:
    """Mean and SE over seeds of ``value(seed) - reference(seed)``: the paired difference to the full-data model."""
    return mean_se([v - reference[s] for v, s in zip(values, seeds)])


def summarize(results: list[dict], references: list[dict], n_train: int, n_noisy: int) -> dict:
    """``removal/results.json``: the full-data reference and one row per (strategy, fraction).

    Each row has the test accuracy per seed, its mean and SE, ``delta_vs_full`` (difference of means) and
    ``paired_delta`` / ``paired_se``: mean and SE over seeds of ``acc(strategy, seed) - acc(full, seed)``, which
    removes the seed-to-seed spread the two share. Where ``evaluate`` gave per-example correctness and test groups
    were known, ``worst_group_acc`` (per seed, mean, SE, paired delta and SE) stands beside it. A relabel strategy's
    row has ``action: relabel`` (its ``n_removed`` and ``n_noisy_removed`` count the selection it relabels) and
    ``n_corrected``; ``relabel_vs_remove`` (:func:`relabel_versus_remove`) compares it with its remove twin.
    """
    ref_acc = {r["seed"]: r["test_acc"] for r in references}
    ref_worst = {r["seed"]: r["worst_group_acc"] for r in references if r.get("worst_group_acc") is not None}
    ref_mean, ref_se = mean_se([r["test_acc"] for r in references])
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    rows = []
    for (strategy, fraction), rs in groups.items():
        seeds = [r["seed"] for r in rs]
        accs = [r["test_acc"] for r in rs]
        mean, se = mean_se(accs)
        paired, paired_se = paired_delta(accs, ref_acc, seeds)
        row = {"strategy": strategy, "fraction": fraction,
               "removed_fraction": float(np.mean([r["n_removed"] for r in rs]) / n_train),
               "n_removed": float(np.mean([r["n_removed"] for r in rs])),
               "n_noisy_removed": float(np.mean([r["n_noisy_removed"] for r in rs])),
               "test_acc": accs, "mean": mean, "se": se, "delta_vs_full": mean - ref_mean,
               "paired_delta": paired, "paired_se": paired_se, "seeds": seeds}
        worst = [r.get("worst_group_acc") for r in rs]
        if all(w is not None for w in worst) and all(s in ref_worst for s in seeds):
            row["worst_group_acc"] = worst
            row["worst_group_mean"], row["worst_group_se"] = mean_se(worst)
            row["worst_group_paired_delta"], row["worst_group_paired_se"] = paired_delta(worst, ref_worst, seeds)
        row.update(_relabel_facts(rs))
        rows.append(row)
    reference = {"test_acc": [r["test_acc"] for r in references], "mean": ref_mean, "se": ref_se,
                 "seeds": [r["seed"] for r in references],
                 "source": [r.get("source", "retrained") for r in references]}
    if len(ref_worst) == len(references):
        reference["worst_group_acc"] = [ref_worst[r["seed"]] for r in references]
        reference["worst_group_mean"], reference["worst_group_se"] = mean_se(reference["worst_group_acc"])
    out = {"n_train": n_train, "n_noisy": n_noisy, "reference": reference, "rows": rows}
    versus = relabel_versus_remove(rows)
    if versus:
        out["relabel_vs_remove"] = versus
    return out


def _relabel_facts(results: list[dict]) -> dict:
    """``action: relabel`` and the mean ``n_corrected`` over seeds, for a relabel strategy's results ({} else)."""
    if not any(r.get("action") == "relabel" for r in results):
        return {}
    out: dict = {"action": "relabel"}
    if all("n_corrected" in r for r in results):
        out["n_corrected"] = float(np.mean([r["n_corrected"] for r in results]))
    return out


def _paired(a: Mapping, b: Mapping, key: str) -> dict | None:
    """Mean and SE over the seeds both rows ran of ``a[key] - b[key]`` (per-seed lists), or None."""
    if a.get(key) is None or b.get(key) is None:
        return None
    other = dict(zip(b["seeds"], b[key]))
    diffs = [v - other[s] for v, s in zip(a[key], a["seeds"]) if s in other]
    if not diffs:
        return None
    mean, se = mean_se(diffs)
    return {"delta": mean, "se": se, "n_seeds": len(diffs)}


def relabel_versus_remove(rows: list[dict]) -> list[dict]:
    """Relabel against remove on the same selection: per relabel row of :func:`summarize` whose remove twin ran at
    the same fraction, the paired difference over seeds of test accuracy (``delta``, ``se``, ``n_seeds``) and, where
    known, of worst-group accuracy (``worst_group_delta``, ``worst_group_se``). Positive = relabelling is better."""
    by = {(r["strategy"], r["fraction"]): r for r in rows}
    out = []
    for r in rows:
        twin = registry.STRATEGIES[r["strategy"]].relabels if r["strategy"] in registry.STRATEGIES else None
        if twin is None or (twin, r["fraction"]) not in by:
            continue
        acc = _paired(r, by[(twin, r["fraction"])], "test_acc")
        if acc is None:
            continue
        entry = {"relabel": r["strategy"], "remove": twin, "fraction": r["fraction"], **acc}
        worst = _paired(r, by[(twin, r["fraction"])], "worst_group_acc")
        if worst is not None:
            entry["worst_group_delta"], entry["worst_group_se"] = worst["delta"], worst["se"]
        out.append(entry)
    return out


Evaluate = Callable[..., "float | Mapping"]  # (job, keep, seed), and labels= for a relabel strategy


def planned_evaluations(ranking: Mapping[str, np.ndarray], *,
                        strategies: tuple[str, ...] = registry.DEFAULT_STRATEGIES,
                        fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seeds: int = 3,
                        base_seed: int = 0) -> list[tuple[Job, int, np.ndarray]]:
    """Every ``evaluate`` call of :func:`remove_and_retrain`, in its order, as ``(job, seed, removed)``.

    Per seed offset: the full-data reference (``job.strategy == "full"``, nothing removed), then
    :func:`plan_jobs`' jobs of that offset. ``removed`` is the sorted int64 selection of :func:`select_removed`;
    the rows kept are the others. Lets a caller run the retrains ahead (e.g. shared out over processes).
    """
    plan = plan_jobs(strategies, fractions, seeds)
    out = []
    for offset in range(seeds):
        seed = base_seed + offset
        out.append((Job("full", math.nan, offset), seed, np.zeros(0, dtype=np.int64)))
        for job in [j for j in plan if j.offset == offset]:
            fraction = 0.0 if math.isnan(job.fraction) else job.fraction
            out.append((job, seed, select_removed(job.strategy, fraction, ranking, seed)))
    return out


def _entry(job: Job, seed: int, selected: np.ndarray, labels: np.ndarray | None, noisy: np.ndarray,
           true_labels: np.ndarray | None, got: dict) -> dict:
    """One retrain's record: what was selected (removed, or relabeled when ``labels`` is given) and its accuracy."""
    entry = {"strategy": job.strategy, "fraction": None if math.isnan(job.fraction) else job.fraction,
             "seed": seed, "n_removed": int(len(selected)), "n_noisy_removed": int(noisy[selected].sum()),
             "removed_sha256": indices_hash(selected), "test_acc": got["test_acc"],
             "worst_group_acc": got.get("worst_group_acc")}
    if labels is not None:
        entry["action"] = "relabel"
        if true_labels is not None:  # relabeled to their true label: the errors the relabel fixed
            entry["n_corrected"] = int((labels[selected] == true_labels[selected])[noisy[selected]].sum())
    return entry


def remove_and_retrain(ranking: Mapping[str, np.ndarray], evaluate: Evaluate, *,
                       strategies: tuple[str, ...] = registry.DEFAULT_STRATEGIES,
                       fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seeds: int = 3, base_seed: int = 0,
                       noisy: np.ndarray | None = None, test_groups: np.ndarray | None = None,
                       on_job: Callable[[Job], None] | None = None, true_labels: np.ndarray | None = None) -> dict:
    """Retrain without each strategy's selection, ``seeds`` times, and summarise accuracy against full data.

    Args:
        ranking: ``index`` and per-scorer natural scores (see :func:`select_removed`).
        evaluate: ``(job, keep, seed) -> accuracy``: train with your recipe on the training rows ``keep``
            (int64, sorted) from initial weights fixed by ``seed``, return test accuracy. Called once per job and
            once per seed with every row (the full-data reference, ``job.strategy == "full"``), in the order of
            :func:`planned_evaluations`. It may instead return ``{"test_acc": ..., "correct": bool [n_test],
            "source": ...}``: with ``correct`` and ``test_groups``, worst-group accuracy is reported too; ``source``
            says where a reference came from. For a relabel strategy (``relabel-...``) it is called as
            ``evaluate(job, keep, seed, labels=labels)`` with every row kept and ``labels`` int64 ``[n_train]``
            the labels to train with (:func:`relabeled_labels`; ``ranking`` then needs ``label`` and
            ``suggested_label``).
        noisy: bool ``[n_train]`` planted wrong labels, to count how many each selection removed.
        true_labels: int ``[n_train]`` true labels where known, to count how many wrong labels a relabel fixed.
        test_groups: int ``[n_test]`` group of each test example (e.g. its class) for worst-group accuracy.
        on_job: called before each job (a progress bar's hook).

    Returns:
        :func:`summarize`'s dictionary.
    """
    n = len(ranking["index"])
    noisy = np.zeros(n, dtype=bool) if noisy is None else np.asarray(noisy, dtype=bool)
    every = np.arange(n, dtype=np.int64)
    references, results = [], []
    plan = planned_evaluations(ranking, strategies=strategies, fractions=fractions, seeds=seeds, base_seed=base_seed)
    for job, seed, removed in plan:
        if on_job:
            on_job(job)
        labels = None if job.strategy == "full" else relabeled_labels(job.strategy, removed, ranking)
        if labels is None:
            got = _as_result(evaluate(job, np.setdiff1d(every, removed), seed), test_groups)
        else:  # a relabel strategy: every row is kept, the selection trains with its suggested label
            got = _as_result(evaluate(job, every, seed, labels=labels), test_groups)
        if job.strategy == "full":
            references.append({"seed": seed, **got})
            continue
        results.append(_entry(job, seed, removed, labels, noisy, true_labels, got))
    return summarize(results, references, n, int(noisy.sum()))


def _as_result(value: float | Mapping, test_groups: np.ndarray | None = None) -> dict:
    """What ``evaluate`` returned, as ``{"test_acc": float, "worst_group_acc": float or None, ...}``."""
    out = dict(value) if isinstance(value, Mapping) else {"test_acc": value}
    out["test_acc"] = float(out["test_acc"])
    correct = out.pop("correct", None)
    out["worst_group_acc"] = None
    if correct is not None and test_groups is not None:
        out["worst_group_acc"] = worst_group_accuracy(correct, test_groups)
    return out
