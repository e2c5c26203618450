"""The field's standard checks of an attribution matrix, as quanda 0.5 defines them (arrays in, numbers out).

quanda (Bareeva et al., 2024, ``quanda.metrics``) is not a dependency: its release pins numpy below 2 and pulls in
lightning and datasets. The definitions below follow its source:

- class detection (``downstream_eval/class_detection.py``, Hanawa et al., ICLR 2021): for each target, the share
  of its ``s`` highest-scoring training examples whose given label is the target's label; ``s = 1`` is Hanawa's
  top-1 check; the mean over targets;
- top-k cardinality (``heuristics/top_k_cardinality.py``, Barshan et al., AISTATS 2020): distinct training
  examples among all targets' top-k, over ``n_targets * k`` (1 = every target has its own explanations);
- model randomisation (``heuristics/model_randomization.py``, Adebayo et al., NeurIPS 2018; Hanawa et al.): the
  Spearman correlation, per target over the training examples, of the scores against scores from the same method
  on a model with re-initialised weights; the mean. Near 1 fails the sanity check.

``wrong_label_share`` is trakscope's own (issue 22): how many planted wrong labels sit at each end of the lists.
"""

from __future__ import annotations

import numpy as np

from .lds import spearman_columns
from .topk import top_k


def _ends(scores: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """int32 ``[n_target, k]`` most positive (``top``) and most negative (``bottom``) training indices."""
    tk = top_k(scores, k)
    return {"top": tk["pos_idx"], "bottom": tk["neg_idx"]}


def class_detection(scores: np.ndarray, train_labels: np.ndarray, target_labels: np.ndarray, s: int = 1) -> float:
    """Mean share of each target's ``s`` highest-scoring training examples that carry the target's label.

    Args:
        scores: float ``[n_train, n_target]`` ``scores[train, target]`` (higher = counts more for the target).
        train_labels: int ``[n_train]`` given (possibly wrong) labels; target_labels: int ``[n_target]``.
    """
    top = _ends(scores, s)["top"]
    return float(np.mean(np.asarray(train_labels)[top] == np.asarray(target_labels)[:, None]))


def top_k_cardinality(scores: np.ndarray, k: int, end: str = "top") -> tuple[int, float]:
    """Distinct training examples among every target's ``k`` highest (``end="top"``) or lowest (``"bottom"``).

    Returns:
        ``(count, count / (n_target * k))``: the second is quanda's score (higher = more target-specific).
    """
    idx = _ends(scores, k)[end]
    count = int(np.unique(idx).size)
    return count, count / idx.size


def wrong_label_share(scores: np.ndarray, wrong: np.ndarray, k: int) -> dict[str, float]:
    """Share of planted wrong labels among each target's ``k`` highest and ``k`` lowest training examples.

    Args:
        wrong: bool ``[n_train]`` True where the given label is a planted wrong one (its mean is the base rate).

    Returns:
        ``{"top": share, "bottom": share, "base": base rate}`` over all targets' lists.
    """
    wrong = np.asarray(wrong, dtype=bool)
    ends = _ends(scores, k)
    return {"top": float(wrong[ends["top"]].mean()), "bottom": float(wrong[ends["bottom"]].mean()),
            "base": float(wrong.mean())}


def randomisation_correlation(scores: np.ndarray, random_scores: np.ndarray) -> float:
    """Mean over targets of the Spearman correlation (over training examples) of two ``[n_train, n_target]``
    matrices: a method's scores and its scores under a model with re-initialised weights. Lower is better; a
    target whose scores are constant in either is left out (NaN)."""
    return float(np.nanmean(spearman_columns(np.asarray(scores, dtype=np.float64),
                                             np.asarray(random_scores, dtype=np.float64))))
