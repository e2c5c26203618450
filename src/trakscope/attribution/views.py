"""Views of the same stored scores: what each one answers, and the transform that gives it.

``scores[train, target]`` (TRAK) answers a counterfactual question: what leaving training example ``i`` out
would do to target ``j``'s margin. The training examples with the largest such effects are mostly the dataset's
high-loss outliers (its wrong labels among them), whatever the target, so a list sorted by it shows the same
outliers at both ends for most targets. The relative view divides each training example's scores by the square
root of its self-influence ``scores[i, i]`` (RelatIF's relative influence, Barshan et al., AISTATS 2020, in
TRAK's metric): an example counts by how much of its own influence goes to this target, which ranks the training
examples that resemble the target first. Both are cheap transforms of ``scores/<split>.npy`` and
``scores/self.npy``; nothing is recomputed.

Which view ``inspect`` and the report show first (:data:`DEFAULT_VIEW`) was chosen on validation targets by
``benchmarks/views.py`` (BENCHMARKS.md, "Views of the scores"); removal, D3M and the LDS always use ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ViewError(ValueError):
    """An unknown view name, or self-influence that cannot normalise the scores (one line: what to do)."""


@dataclass(frozen=True)
class View:
    """One view: its name, the question it answers (one line, shown beside every list), and its formula."""

    name: str
    question: str
    formula: str


VIEWS: dict[str, View] = {v.name: v for v in (
    View("raw", "counterfactual: how much leaving this training example out would lower the target's margin "
                "(TRAK's estimate; what removal, D3M and the LDS use)",
         "scores[i, j]"),
    View("relative", "relative influence: the training examples this target draws on most for their own size, "
                     "i.e. the ones that resemble it (RelatIF: the score over sqrt(self-influence))",
         "scores[i, j] / sqrt(self_influence[i])"),
)}

DEFAULT_VIEW = "relative"  # chosen on the demo's val targets by benchmarks/views.py (class detection, wrong labels)


def check_view(name: str) -> str:
    """``name`` if it is a view, else a :class:`ViewError` listing the views."""
    if name not in VIEWS:
        raise ViewError(f"unknown view {name!r}; choose one of {', '.join(VIEWS)}")
    return name


def normaliser(self_influence: np.ndarray) -> np.ndarray:
    """float64 ``[n_train]`` ``1 / sqrt(self_influence)``, what the relative view multiplies each row by.

    Self-influence is ``Q_i x_i^T A^-1 x_i >= 0``; an example the models fit perfectly (``Q_i = 0`` in float32)
    has none, and its scores are all zero as well, so its row stays zero rather than dividing 0 by 0.

    Raises:
        ViewError: a negative or non-finite self-influence (a damaged ``scores/self.npy``).
    """
    s = np.asarray(self_influence, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all() or (s < 0).any():
        raise ViewError("self-influence must be finite and >= 0 for the relative view; rerun `trakscope run` "
                        "(it rewrites scores/self.npy)")
    out = np.zeros_like(s)
    np.divide(1.0, np.sqrt(s), out=out, where=s > 0)
    return out


def apply_view(scores: np.ndarray, self_influence: np.ndarray | None, view: str) -> np.ndarray:
    """``scores`` seen through ``view``.

    Args:
        scores: float ``[n_train]`` (one target) or ``[n_train, n_target]`` ``scores[train, target]``; may be
            memory-mapped (``raw`` returns it as it is, other views a new float32 array).
        self_influence: float ``[n_train]`` ``scores[i, i]`` of the same checkpoints (unused by ``raw``).
        view: a name in :data:`VIEWS`.

    Returns:
        An array of the shape of ``scores``: higher = training example ``i`` counts more for target ``j``.
    """
    check_view(view)
    if view == "raw":
        return scores
    if self_influence is None or len(self_influence) != scores.shape[0]:
        raise ViewError(f"the {view} view needs the self-influence of all {scores.shape[0]} training examples")
    scale = normaliser(self_influence).astype(np.float32)
    return np.asarray(scores, dtype=np.float32) * (scale if scores.ndim == 1 else scale[:, None])
