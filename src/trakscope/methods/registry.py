"""The one registry of scorers (who looks mislabeled or harmful) and removal strategies (what to drop).

A scorer is one :class:`Scorer` entry: its name (also its column prefix in ``detect/ranking.csv``), a function of
the inputs it names in ``needs`` (``detect`` computes each input once, and only when a scorer it runs needs it),
the direction in which it is suspicious, its description, the yes/no :class:`Flag` it sets beside its score if any,
and when it may be left out (:class:`Skip`). A strategy names the scorer whose ranking it removes from and from
which end. detect's help, ``ranking.csv``, the metrics, the report and ``removal`` all read these tables: adding
a scorer is one entry here (and, if it reads an input no scorer read before, one provider in ``stages/detect.py``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import scorers

# What scorers read, by name (``detect`` provides each; a scorer sees only the ones it needs). Train and val only,
# never test: ``self_scores`` float [n_train] TRAK self-influence; ``val_scores`` float [n_train, n_val] TRAK scores
# on the validation split (may be memory-mapped); ``train_labels`` / ``val_labels`` int [n_train] / [n_val] labels as
# trained; ``train_probs`` / ``val_probs`` float [n, C] ensemble-mean probabilities; ``group_ids`` int [n_val] D3M
# validation groups; ``folds`` the k of the k-fold cross-validation; ``oos_probs`` float [n_train, C] out-of-sample
# probabilities of that cross-validation; ``aum`` float [n_train] area under the margin recorded during training;
# ``checkpoint_fit`` (given, leverages), float [K, n_train] each: the probability of the given label and the
# leverage under the p(1-p)-weighted kernel of each of the K checkpoints.
# An input can be None (not computed, not recorded): the scorers that need it are then left out.
Inputs = Mapping[str, Any]
Number = Callable[[Any], str]  # how a number is written (the CLI's and the report's differ)


@dataclass(frozen=True)
class Flag:
    """A yes/no verdict a scorer sets beside its score: a ``ranking.csv`` column and a summary in ``metrics.json``.

    A scorer with a flag computes ``(score, flagged)``, flagged bool ``[n_train]``. ``facts(inputs, flagged)`` is the
    summary's start, with ``n_<noun>`` (how many are flagged) among its keys; :meth:`quality` adds
    ``<noun>_precision`` and ``<noun>_recall`` against the planted noise. ``detail(summary, number)`` says the
    facts other than the count in words.
    """

    column: str
    verdict: str
    noun: str
    facts: Callable[[Inputs, np.ndarray], dict]
    detail: Callable[[Mapping, Number], str]

    def quality(self, flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Share of the flagged that are wrong labels and of the wrong labels flagged (NaN where undefined)."""
        flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
        return {f"{self.noun}_precision": float(truth[flagged].mean()) if flagged.any() else math.nan,
                f"{self.noun}_recall": float(flagged[truth].mean()) if truth.any() else math.nan}

    def sentence(self, scorer: str, summary: Mapping, number: Number, quality: bool = False) -> str:
        """``cleanlab find_label_issues flags 105 examples (2-fold out-of-sample accuracy 0.210)``; with ``quality``
        the precision and recall of :meth:`quality` come first in the brackets."""
        said = [self.detail(summary, number)]
        if quality:
            said = [f"{kind} {number(summary.get(f'{self.noun}_{kind}'))}" for kind in ("precision", "recall")] + said
        return f"{scorer} {self.verdict} {number(summary.get(f'n_{self.noun}'))} examples ({', '.join(said)})"


@dataclass(frozen=True)
class Skip:
    """When ``detect`` leaves a scorer out.

    With an ``option`` (a flag of ``detect``, e.g. ``--no-cleanlab``) the user leaves it out, and ``why`` is that
    option's help; without, it is left out when an input it needs was not recorded, and ``why`` says when. An
    ``opt_in`` option works the other way: the scorer is left out unless the option is given.
    """

    why: str
    option: str | None = None
    opt_in: bool = False

    @property
    def reason(self) -> str:
        """Why a run folder may have no scores of it, e.g. ``detect ran with --no-cleanlab or left it out (...)``."""
        if self.option and self.opt_in:
            return f"detect ran without {self.option}"
        return f"detect ran with {self.option} or left it out (its output says why)" if self.option else self.why

    def leaves_out(self, given: bool) -> bool:
        """True where the option's state (``given``: the flag was passed) leaves the scorer out."""
        return given != self.opt_in

    @property
    def dest(self) -> str | None:
        """The option's attribute in argparse's namespace (``no_cleanlab``), or None."""
        return self.option.lstrip("-").replace("-", "_") if self.option else None


@dataclass(frozen=True)
class Scored:
    """What a scorer computed: float64 ``[n_train]`` natural scores, and for a flagging scorer the bool ``[n_train]``
    flags with the facts of :attr:`Flag.facts`."""

    score: np.ndarray
    flagged: np.ndarray | None = None
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scorer:
    """One way to score every training example (natural units, float64 ``[n_train]``).

    ``compute`` reads the inputs named in ``needs`` and nothing else (it is given those alone) and returns the
    scores, or ``(scores, flagged)`` when the scorer has a ``flag``.
    """

    name: str
    compute: Callable[[Inputs], Any]
    worse_is_high: bool
    description: str
    needs: tuple[str, ...]
    flag: Flag | None = None
    skip: Skip | None = None

    def run(self, inputs: Inputs) -> Scored | None:
        """The scores on ``inputs`` (read lazily: only ``needs``), or None when one of them is None."""
        given = {}
        for name in self.needs:
            given[name] = inputs[name]
            if given[name] is None:
                return None
        out = self.compute(given)
        if self.flag is None:
            return Scored(np.asarray(out, dtype=np.float64))
        score, flagged = out
        flagged = np.asarray(flagged, dtype=bool)
        return Scored(np.asarray(score, dtype=np.float64), flagged, self.flag.facts(given, flagged))

    def suspicion(self, score: np.ndarray) -> np.ndarray:
        """float64 ``[n]``, higher = more suspicious = inspected first."""
        s = np.asarray(score, dtype=np.float64)
        return s if self.worse_is_high else -s


def _cleanlab_facts(inputs: Inputs, issues: np.ndarray) -> dict:
    oos, labels = inputs["oos_probs"], inputs["train_labels"]
    return {"folds": inputs["folds"], "n_issues": int(issues.sum()),
            "oos_acc": float((oos.argmax(1) == labels).mean())}


CLEANLAB_ISSUES = Flag("cleanlab_issue", "find_label_issues flags", "issues", _cleanlab_facts,
                       lambda s, number: f"{number(s.get('folds'))}-fold out-of-sample accuracy "
                                         f"{number(s.get('oos_acc'))}")

SCORERS: dict[str, Scorer] = {s.name: s for s in (
    Scorer("self_influence", lambda i: scorers.self_influence(i["self_scores"]), True,
           "TRAK self-influence scores[i, i] (high = suspicious)", ("self_scores",)),
    Scorer("val_same_label", lambda i: scorers.val_influence(i["val_scores"], i["train_labels"], i["val_labels"]),
           False, "summed TRAK influence on val examples of its own label (low = harmful)",
           ("val_scores", "train_labels", "val_labels")),
    Scorer("val_all", lambda i: scorers.val_influence(i["val_scores"]), False,
           "summed TRAK influence on all val examples (low = harmful)", ("val_scores",)),
    Scorer("d3m", lambda i: scorers.d3m_scores(i["val_scores"], i["val_probs"], i["val_labels"], i["group_ids"])[0],
           False, "D3M group alignment A_i (low = detrimental)",
           ("val_scores", "val_probs", "val_labels", "group_ids")),
    Scorer("loss", lambda i: scorers.training_loss(i["train_probs"], i["train_labels"]), True,
           "ensemble training loss -log p[y] (high = suspicious)", ("train_probs", "train_labels")),
    Scorer("cleanlab", lambda i: scorers.cleanlab_quality(i["oos_probs"], i["train_labels"]), False,
           "cleanlab label quality on k-fold out-of-sample probabilities (low = suspicious)",
           ("oos_probs", "train_labels", "folds"), flag=CLEANLAB_ISSUES,
           skip=Skip("skip the cleanlab baseline (it retrains k models)", "--no-cleanlab")),
    Scorer("aum", lambda i: scorers.area_under_margin(i["aum"]), False,
           "area under the margin during training, averaged over epochs and members (low = suspicious)", ("aum",),
           skip=Skip("the run recorded no AUM (imported checkpoints: AUM is recorded while trakscope trains)")),
    Scorer("trak_loo", lambda i: scorers.loo_margin(i["train_probs"], i["train_labels"], i["self_scores"]), False,
           "TRAK leave-one-out margin: in-sample margin minus scores[i, i] / mean p(1-p) (low = suspicious)",
           ("train_probs", "train_labels", "self_scores")),
    # The closer leave-one-out estimate (real/predicted drop 1.09 on logistic regression, against 3.1 for trak_loo)
    # but the worse detector on validation (planted noise and canaries, BENCHMARKS.md): the p(1-p) weights leave the
    # well-fit examples out of the kernel, so a clean example's leverage is large, and early checkpoints' margins
    # count as much as the final ones. Hence a scorer of its own, not trak_loo.
    # Opt-in: it costs a kernel per checkpoint (about 35 s on the demo) for a worse ranking.
    Scorer("trak_loo_leverage", lambda i: scorers.loo_margin_leverage(*i["checkpoint_fit"]), False,
           "TRAK leave-one-out margin per checkpoint, mean of margin - (1-p) h / (1 - p(1-p) h), h the leverage "
           "under that checkpoint's p(1-p)-weighted kernel (low = suspicious)", ("checkpoint_fit",),
           skip=Skip("also run trak_loo_leverage (the closer leave-one-out estimate, the worse detector; one kernel "
                     "per checkpoint)", "--leverage", opt_in=True)),
)}
# The order of ranking.csv and the report's default suspects when no canaries say better: the first of these that
# ran. AUM was the best or within 0.015 ROC-AUC of the best planted-noise detector in every regime of BENCHMARKS.md
# (memorisation, default, 30% symmetric, confusable pairs, pretrained); TRAK self-influence (the mislabel scorer of
# dattri and TracIn) when there is no AUM (imported checkpoints). With canaries, the scorer with
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
    or the least suspicious when ``most_suspicious`` is False. A relabel strategy (``relabels``: the name of the
    strategy whose selection it takes) keeps that same selection but gives each its suggested label instead.
    """

    name: str
    scorer: str | None
    description: str
    most_suspicious: bool = True
    threshold: bool = False
    aliases: tuple[str, ...] = ()
    relabels: str | None = None


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


def _relabel(s: Strategy) -> Strategy:
    """``relabel-<name>``: the same examples as ``s`` (aliases ``relabel_<name or alias>``, underscored), given their
    suggested label."""
    aliases = tuple(dict.fromkeys(f"relabel_{a.replace('-', '_')}" for a in (s.name, *s.aliases)))
    return Strategy(f"relabel-{s.name}", s.scorer, f"{s.description}, given their suggested label instead of removed",
                    s.most_suspicious, s.threshold, aliases, relabels=s.name)


# Relabel next to remove: each ranked strategy that takes the most suspicious examples (and the random control) has a
# relabel twin, so `removal` measures both actions on one selection.
STRATEGIES.update({r.name: r for r in map(_relabel, list(STRATEGIES.values()))
                   if r.most_suspicious and not r.threshold})
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


def needing(name: str, among: Iterable[str] = SCORERS) -> list[str]:
    """The scorers among ``among`` (registered names) that read the input ``name``."""
    return [n for n in among if name in SCORERS[n].needs]


def default_scorers() -> list[str]:
    """The scorers ``detect`` runs when none are named: all but the opt-in ones."""
    return [n for n, s in SCORERS.items() if not (s.skip and s.skip.opt_in)]


def scorer_help() -> str:
    """Every scorer with its description and when it is left out, for detect's ``--help``."""
    def left_out(s: Scorer) -> str:
        if s.skip is None:
            return ""
        if s.skip.option:
            return f", only with {s.skip.option}" if s.skip.opt_in else f", left out with {s.skip.option}"
        return f", left out when {s.skip.why}"

    return "; ".join(f"{s.name}: {s.description}{left_out(s)}" for s in SCORERS.values())
