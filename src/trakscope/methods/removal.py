"""Remove-and-retrain: drop what a strategy selects, retrain from the same initial weights, measure test accuracy.

Selection reads only ``detect/ranking.csv`` (computed from the train and val splits); accuracy is
measured on test, so nothing leaks. Every retrain is cached as
``removal/retrains/<strategy>_<fraction>_s<seed>.json`` with a hash of the removed indices, so an
interrupted experiment resumes and a changed selection is retrained.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .metrics import inspection_order

# strategy -> (ranking column, whether the *highest* natural score is removed first)
RANKED = {
    "positive": ("val_all", True),  # most positively influential on val: highest summed (= mean) val score
    "negative": ("d3m", False),  # most detrimental: lowest D3M A_i
    "loss": ("loss", True),
    "cleanlab": ("cleanlab", False),
    "self_influence": ("self_influence", True),
    "val-negative": ("val_all", False),  # most negatively influential on val (TRAK without D3M's weights)
}
STRATEGIES = (*RANKED, "d3m-heuristic", "random")
DEFAULT_STRATEGIES = ("positive", "negative", "d3m-heuristic", "random", "loss", "cleanlab")
DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.10)


def select_removed(strategy: str, fraction: float, ranking: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    """Training indices a strategy removes.

    Args:
        strategy: one of :data:`STRATEGIES`. ``d3m-heuristic`` removes every example with ``A_i < 0``
            and ignores ``fraction``; ``random`` draws ``round(fraction * n)`` examples with ``seed``.
        fraction: share of the training split to remove, in ``[0, 1)``.
        ranking: columns of ``detect/ranking.csv`` in index order (:func:`~.detection.load_ranking`):
            natural scores float ``[n_train]`` per scorer.
        seed: seed of the ``random`` strategy.

    Returns:
        sorted int64 indices into the training split. Ties are broken by index (lower first).
    """
    n = len(ranking["index"])
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    k = int(round(fraction * n))
    if strategy == "d3m-heuristic":
        return np.flatnonzero(_column(ranking, "d3m") < 0).astype(np.int64)
    if strategy == "random":
        return np.sort(np.random.default_rng(seed).permutation(n)[:k]).astype(np.int64)
    if strategy not in RANKED:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    column, highest_first = RANKED[strategy]
    score = _column(ranking, column)
    return np.sort(inspection_order(score if highest_first else -score)[:k]).astype(np.int64)


def _column(ranking: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in ranking:
        hint = " (detect ran with --no-cleanlab)" if name == "cleanlab" else ""
        raise ValueError(f"detect/ranking.csv has no {name} scores{hint}; rerun `trakscope detect` "
                         "or drop that strategy")
    return np.asarray(ranking[name], dtype=np.float64)


def removal_reason(strategy: str, ranking: dict[str, np.ndarray], index: int) -> str:
    """Why ``strategy`` removed training example ``index``, e.g. ``d3m=-0.0123 (rank 4 of 1000, lowest first)``."""
    if strategy == "random":
        return "random control"
    if strategy == "d3m-heuristic":
        return f"d3m={ranking['d3m'][index]:.4g} < 0 (D3M heuristic)"
    column, highest_first = RANKED[strategy]
    score = _column(ranking, column)
    rank = int(np.flatnonzero(inspection_order(score if highest_first else -score) == index)[0]) + 1
    order = "highest" if highest_first else "lowest"
    return f"{column}={score[index]:.4g} (rank {rank} of {len(score)}, {order} first)"


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
        frac = "all" if self.strategy == "d3m-heuristic" else f"{self.fraction:g}"
        return f"{self.strategy}_{frac}_s{self.offset}"


def plan_jobs(strategies: tuple[str, ...], fractions: tuple[float, ...], seeds: int) -> list[Job]:
    """Seed-major list of retrains (a finished first seed is already a usable table); heuristic once per seed."""
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    if seeds < 1:
        raise ValueError(f"need at least one seed, got {seeds}")
    jobs = []
    for offset in range(seeds):
        for s in strategies:
            fracs = (math.nan,) if s == "d3m-heuristic" else fractions
            jobs += [Job(s, f, offset) for f in fracs]
    return jobs








def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (``std(ddof=1) / sqrt(n)``; None for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return float(v.mean()), se


def summarize(results: list[dict], references: list[dict], n_train: int, n_noisy: int) -> dict:
    """``removal/results.json``: the full-data reference and one row per (strategy, fraction)."""
    ref_mean, ref_se = mean_se([r["test_acc"] for r in references])
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    rows = []
    for (strategy, fraction), rs in groups.items():
        mean, se = mean_se([r["test_acc"] for r in rs])
        rows.append({"strategy": strategy, "fraction": fraction,
                     "removed_fraction": float(np.mean([r["n_removed"] for r in rs]) / n_train),
                     "n_removed": float(np.mean([r["n_removed"] for r in rs])),
                     "n_noisy_removed": float(np.mean([r["n_noisy_removed"] for r in rs])),
                     "test_acc": [r["test_acc"] for r in rs], "mean": mean, "se": se,
                     "delta_vs_full": mean - ref_mean, "seeds": [r["seed"] for r in rs]})
    return {"n_train": n_train, "n_noisy": n_noisy,
            "reference": {"test_acc": [r["test_acc"] for r in references], "mean": ref_mean, "se": ref_se,
                          "seeds": [r["seed"] for r in references], "source": [r["source"] for r in references]},
            "rows": rows}
