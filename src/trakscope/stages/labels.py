"""``label_issues``: cleanlab's ``find_label_issues`` in spirit, over arrays or over a run folder that ran ``detect``.

Arrays in (labels, predicted probabilities, optionally one scorer's scores) or a run folder in, a pandas DataFrame
out with ``is_label_issue``, ``label_quality``, ``given_label``, ``suggested_label`` and the score of the scorer that
ordered it (:func:`~trakscope.methods.labels.issue_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..methods import labels as suggestions
from ..methods import registry
from ..run_folder import RunFolder
from .canaries import canary_mask
from .detect import load_ranking


def label_issues(run: str | Path | RunFolder | None = None, *, labels: np.ndarray | None = None,
                 pred_probs: np.ndarray | None = None, scores: np.ndarray | None = None, scorer: str | None = None,
                 worse_is_high: bool | None = None, num_issues: int | None = None,
                 classes: Sequence[str] | None = None) -> Any:
    """Which labels look wrong, and what they should be: a ``pandas.DataFrame``, one row per training example.

    Give either a run folder (``run``: ``trakscope detect`` has run in it) or arrays:

    Args:
        run: a run folder. Its ranking orders the examples (``scorer``, default the primary scorer of ``detect``:
            the best on the canaries, else AUM or self-influence), the k-fold out-of-sample probabilities cached by
            ``detect`` give the suggestions and the issue count (else the ensemble's), and the table adds
            ``index``, ``source_id``, ``canary`` and ``suggestion_source``.
        labels: int ``[n]`` given labels. pred_probs: float ``[n, C]`` predicted probabilities, out-of-sample if
            you can (cleanlab's input).
        scores: float ``[n]`` one scorer's scores (None: cleanlab's self-confidence orders the examples).
        scorer: the scores' name (a registered scorer sets the direction; its column is ``<scorer>_score``).
        worse_is_high: the direction of unregistered ``scores`` (default False: low = suspicious).
        num_issues: how many to flag (default: cleanlab's confident-joint estimate from ``pred_probs``).
        classes: class names (a run folder's are used by default).

    Returns:
        :func:`~trakscope.methods.labels.issue_table`'s DataFrame.

    Raises:
        ValueError: neither a run folder nor ``labels`` and ``pred_probs``, or both.
    """
    if (run is None) == (labels is None or pred_probs is None):
        raise ValueError("give label_issues either a run folder, or labels= and pred_probs= (arrays), not both")
    if run is not None:
        return _of_run(run if isinstance(run, RunFolder) else RunFolder(run), scorer, num_issues)
    name = scorer or ("self_confidence" if scores is None else "given")
    high = registry.SCORERS[name].worse_is_high if name in registry.SCORERS else bool(worse_is_high)
    return suggestions.issue_table(labels, pred_probs, scores, worse_is_high=high, scorer=name,
                                   num_issues=num_issues, classes=classes)


def out_of_sample_or_ensemble(run: RunFolder) -> tuple[np.ndarray, str]:
    """float ``[n_train, C]`` the k-fold out-of-sample probabilities ``detect`` cached (every fold verified), else
    the ensemble's train probabilities; and which (:data:`~trakscope.methods.labels.OUT_OF_SAMPLE` or ``ENSEMBLE``).
    Nothing is trained."""
    probs = run.results.probs("train")
    assign_path = run.fold_assignment_path
    if not assign_path.exists() or run.integrity.damaged(assign_path):
        return probs, suggestions.ENSEMBLE
    folds = run.integrity.array(assign_path)
    paths = [run.fold_probs_path(f) for f in range(int(folds.max()) + 1)]
    if not all(p.exists() and not run.integrity.damaged(p) for p in paths):
        return probs, suggestions.ENSEMBLE
    oos = np.zeros(probs.shape, dtype=np.float64)
    for f, path in enumerate(paths):
        oos[folds == f] = run.integrity.array(path)
    return oos, suggestions.OUT_OF_SAMPLE


def _of_run(run: RunFolder, scorer: str | None, num_issues: int | None) -> Any:
    """:func:`label_issues` of a run folder (see there)."""
    ranking = load_ranking(run)
    metrics = run.results.optional(run.detect_metrics_path, "detect_metrics") or {}
    ran = [n for n in registry.SCORERS if n in ranking]
    name = scorer or (metrics.get("primary") if metrics.get("primary") in ran else registry.default_primary(ran))
    if name not in ran:
        raise ValueError(f"detect/ranking.csv in {run.path} has no {name} scores; choose one of {', '.join(ran)} or "
                         f"rerun `{run.command('detect')}`")
    probs, source = out_of_sample_or_ensemble(run)
    train = run.data.table("train")
    table = suggestions.issue_table(train["label"], probs, ranking[name], worse_is_high=registry.SCORERS[name]
                                    .worse_is_high, scorer=name, num_issues=num_issues, classes=run.classes)
    table.insert(0, "index", train["index"])
    table.insert(1, "source_id", [str(s) for s in train["source_id"]])
    table["canary"] = canary_mask(run, len(train["index"]))
    table["suggestion_source"] = source
    return table
