"""The one registry of scorers (who looks mislabeled or harmful) and removal strategies (what to drop).

A scorer has a name (also its column prefix in ``detect/ranking.csv``), a function of :class:`ScorerInputs`,
the direction in which it is suspicious, and a description. A strategy names the scorer whose ranking it
removes from and from which end. The CLI, ``ranking.csv``, the metrics, the report (its script reads the
list from the page's data) and ``removal`` all read these tables: adding a scorer is one entry here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from . import scorers


@dataclass(frozen=True)
class ScorerInputs:
    """What the scorers read: train and val only, never test.

    Attributes:
        self_scores: float ``[n_train]`` TRAK self-influence.
        val_scores: float ``[n_train, n_val]`` TRAK scores on the validation split (may be memory-mapped).
        train_labels, val_labels: int ``[n_train]`` / ``[n_val]`` labels as trained.
        train_probs, val_probs: float ``[n, C]`` ensemble-mean probabilities.
        group_ids: int ``[n_val]`` D3M validation groups.
        oos_probs: float ``[n_train, C]`` out-of-sample probabilities (k-fold), or None when not computed.
        aum: float ``[n_train]`` area under the margin recorded during training, or None (imported checkpoints,
            older run folders).
    """

    self_scores: np.ndarray
    val_scores: np.ndarray
    train_labels: np.ndarray
    val_labels: np.ndarray
    train_probs: np.ndarray
    val_probs: np.ndarray
    group_ids: np.ndarray
    oos_probs: np.ndarray | None = None
    aum: np.ndarray | None = None


@dataclass(frozen=True)
class Scorer:
    """One way to score every training example (natural units, float64 ``[n_train]``)."""

    name: str
    compute: Callable[[ScorerInputs], np.ndarray]
    worse_is_high: bool
    description: str
    needs_crossval: bool = False
    needs: tuple[str, ...] = ()  # ScorerInputs fields that may be None; the scorer is skipped without them

    def available(self, inputs: ScorerInputs) -> bool:
        """Whether the inputs this scorer needs were computed."""
        if self.needs_crossval and inputs.oos_probs is None:
            return False
        return all(getattr(inputs, field) is not None for field in self.needs)

    def suspicion(self, score: np.ndarray) -> np.ndarray:
        """float64 ``[n]``, higher = more suspicious = inspected first."""
        s = np.asarray(score, dtype=np.float64)
        return s if self.worse_is_high else -s


SCORERS: dict[str, Scorer] = {s.name: s for s in (
    Scorer("self_influence", lambda i: scorers.self_influence(i.self_scores), True,
           "TRAK self-influence scores[i, i] (high = suspicious)"),
    Scorer("val_same_label", lambda i: scorers.val_influence(i.val_scores, i.train_labels, i.val_labels), False,
           "summed TRAK influence on val examples of its own label (low = harmful)"),
    Scorer("val_all", lambda i: scorers.val_influence(i.val_scores), False,
           "summed TRAK influence on all val examples (low = harmful)"),
    Scorer("d3m", lambda i: scorers.d3m_scores(i.val_scores, i.val_probs, i.val_labels, i.group_ids)[0], False,
           "D3M group alignment A_i (low = detrimental)"),
    Scorer("loss", lambda i: scorers.training_loss(i.train_probs, i.train_labels), True,
           "ensemble training loss -log p[y] (high = suspicious)"),
    Scorer("cleanlab", lambda i: scorers.cleanlab_quality(i.oos_probs, i.train_labels)[0], False,
           "cleanlab label quality on k-fold out-of-sample probabilities (low = suspicious)", needs_crossval=True),
    Scorer("aum", lambda i: scorers.area_under_margin(i.aum), False,
           "area under the margin during training, averaged over epochs and members (low = suspicious)",
           needs=("aum",)),
    Scorer("trak_loo", lambda i: scorers.loo_margin(i.train_probs, i.train_labels, i.self_scores), False,
           "TRAK leave-one-out margin: in-sample margin minus scores[i, i] / mean p(1-p) (low = suspicious)"),
)}
# The order of ranking.csv and the report's default suspects when no canaries say better: the first of these that
# ran. AUM was the best or within 0.015 ROC-AUC of the best planted-noise detector in every regime of BENCHMARKS.md
# (memorisation, default, 30% symmetric, confusable pairs, pretrained); TRAK self-influence (the mislabel scorer of
# dattri and TracIn) when there is no AUM (imported checkpoints, older run folders). With canaries, the scorer with
# the best canary ROC-AUC is used instead. D3M ranks *detrimental* examples (for removal), which need not be
# mislabeled ones.
PRIMARY = ("aum", "self_influence")


def default_primary(available: Iterable[str]) -> str | None:
    """The scorer that orders the suspects without canaries: the first of :data:`PRIMARY` in ``available``, else
    the first available (None when there is none)."""
    names = list(available)
    return next((n for n in PRIMARY if n in names), names[0] if names else None)


@dataclass(frozen=True)
class Strategy:
    """Which training examples a removal experiment drops.

    ``scorer`` is None for the random control; ``threshold`` strategies drop every example whose score is
    below 0 and ignore the fraction; otherwise the ``fraction`` most suspicious by ``scorer`` are dropped,
    or the least suspicious when ``most_suspicious`` is False.
    """

    name: str
    scorer: str | None
    description: str
    most_suspicious: bool = True
    threshold: bool = False
    aliases: tuple[str, ...] = ()


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("positive", "val_all", "most positively influential on val (highest summed val score)",
             most_suspicious=False),
    Strategy("negative", "d3m", "most detrimental by D3M (lowest A_i)", aliases=("d3m",)),
    Strategy("d3m-heuristic", "d3m", "D3M's own rule: every example with A_i < 0", threshold=True),
    Strategy("random", None, "random control, seeded"),
    Strategy("loss", "loss", "highest ensemble training loss"),
    Strategy("cleanlab", "cleanlab", "lowest cleanlab label quality"),
    Strategy("self-influence", "self_influence", "highest TRAK self-influence", aliases=("self_influence",)),
    Strategy("val-negative", "val_all", "most negatively influential on val (TRAK without D3M's loss weights)"),
    Strategy("aum", "aum", "lowest area under the margin"),
    Strategy("trak-loo", "trak_loo", "lowest TRAK leave-one-out margin", aliases=("trak_loo",)),
)}
DEFAULT_STRATEGIES = ("positive", "negative", "d3m-heuristic", "random", "loss", "cleanlab")


def strategy(name: str) -> Strategy:
    """The strategy called ``name`` or one of its aliases.

    Raises:
        ValueError: unknown, with the closest names suggested.
    """
    for s in STRATEGIES.values():
        if name == s.name or name in s.aliases:
            return s
    names = [n for s in STRATEGIES.values() for n in (s.name, *s.aliases)]
    close = difflib.get_close_matches(name, names, n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"unknown strategy {name!r}{hint} Choose from {', '.join(STRATEGIES)}")


def strategy_help() -> str:
    """One line per strategy, for ``--help``."""
    return "; ".join(f"{s.name}{' (alias ' + ', '.join(s.aliases) + ')' if s.aliases else ''}: {s.description}"
                     for s in STRATEGIES.values())
