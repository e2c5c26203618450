"""The report's data: what the page's script needs, gathered from the run folder and kept compact.

The explorer never sees the score matrix: for every test example and every view of the scores
(:mod:`trakscope.attribution.views`) only its ``k`` highest and ``k`` lowest training examples are kept (indices
and scores), packed as base64 little-endian arrays.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from ..attribution.views import DEFAULT_VIEW, VIEWS, apply_view, normaliser
from ..io import read_csv
from ..methods import registry
from ..methods.topk import top_k
from ..run_folder import RunFolder
from ..stages.canaries import canary_table
from ..stages.export import carved_validation
from .inputs import ReportInputs


def b64(array: np.ndarray) -> str:
    """Base64 of a little-endian int32 or float32 array (read in the page as a typed array)."""
    kind = "<i4" if np.issubdtype(array.dtype, np.integer) else "<f4"
    return base64.b64encode(np.ascontiguousarray(array, dtype=kind).tobytes()).decode("ascii")


def split_table(run: RunFolder, split: str, probs: np.ndarray | None = None) -> dict[str, Any]:
    """Labels of one split, plus the ensemble's prediction and confidence from ``probs`` float ``[n, C]``
    (``models/probs_<split>.npy``) when given."""
    t = run.data.table(split)
    out: dict[str, Any] = {
        "n": int(len(t["index"])),
        "label": t["label"].tolist(),
        "true": t["true_label"].tolist(),
        "noisy": t["noisy"].tolist(),
        "source_id": [str(s) for s in t["source_id"]],
    }
    if probs is not None:
        out["pred"] = probs.argmax(axis=1).tolist()
        out["conf"] = [round(float(p), 3) for p in probs.max(axis=1)]
    return out


def keep_list_extras(run: RunFolder) -> dict[str, Any]:
    """What the suspects' keep-list download needs beyond the training table to list what ``trakscope export`` does:
    the canaries (never dropped, kept with their true label) and the validation split carved from the same pool
    (``split=val``; none for a validation split of the data's own, ``--val-fraction 0``)."""
    canaries, val = canary_table(run), carved_validation(run)  # export's own rows: the same list, one rule
    return {"canary": canaries["index"].tolist(), "canary_true": canaries["true_label"].tolist(),
            "val": {"index": [r[0] for r in val], "source_id": [r[2] for r in val], "label": [r[3] for r in val]}
            if val else None}


def read_self_influence(run: RunFolder) -> np.ndarray:
    """float32 ``[n_train]`` ``scores/self.npy``, checked to be usable by the relative view.

    Raises:
        ViewError: negative or non-finite values (a damaged file).
    """
    values = run.results.scores("self", mmap=False)
    normaliser(values)
    return values


def view_top_k(scores: np.ndarray, self_influence: np.ndarray | None, view: str, k: int,
               chunk: int = 256) -> dict[str, np.ndarray]:
    """:func:`~trakscope.methods.topk.top_k` of ``scores`` float ``[n_train, n_target]`` (memory-mapped) seen
    through ``view``, ``chunk`` targets at a time: memory stays ``n_train * chunk`` floats, as for the raw scores."""
    parts = [top_k(apply_view(np.asarray(scores[:, j:j + chunk]), self_influence, view), k)
             for j in range(0, scores.shape[1], chunk)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def explorer_payload(run: RunFolder, k: int, self_influence: np.ndarray | None) -> dict[str, Any] | None:
    """Top-k attributions of every test example under every view, or None when ``scores/test.npy`` is missing.

    Args:
        self_influence: float ``[n_train]`` ``scores/self.npy``; None (missing or damaged) offers the raw view only.

    Returns:
        ``k``, ``views`` {view: {``pos_idx``, ``pos_score``, ``neg_idx``, ``neg_score``} packed}, ``default`` (the
        view shown first), ``questions`` {view: what it answers}.
    """
    if not run.scores_path("test").exists():
        return None
    scores = run.results.scores("test")
    names = [v for v in VIEWS if v == "raw" or self_influence is not None]
    views = {v: view_top_k(scores, self_influence, v, k) for v in names}
    return {"k": int(views["raw"]["pos_idx"].shape[1]),
            "views": {v: {name: b64(a) for name, a in tk.items()} for v, tk in views.items()},
            "default": DEFAULT_VIEW if DEFAULT_VIEW in views else "raw",
            "questions": {v: VIEWS[v].question for v in names}}


def read_ranking(run: RunFolder) -> dict[str, Any] | None:
    """``detect/ranking.csv`` as the suspects view needs it, or None if ``detect`` has not run.

    Returns:
        ``scorers`` (registered names present, the primary first: ``detect/metrics.json``'s ``primary``, the best on
        the canaries, else the first of :data:`~trakscope.methods.registry.PRIMARY` present), ``primary``,
        ``order`` {scorer: training indices, most suspicious first}, ``score`` {scorer: ``[n_train]`` natural scores,
        4 digits},
        ``predicted`` ``[n_train]``, ``descriptions`` {scorer: text}; where ``detect`` wrote suggested labels,
        ``suggested`` ``[n_train]``, ``suggested_prob`` ``[n_train]`` (3 digits) and ``suggestion_source``.
    """
    if not run.ranking_path.exists():
        return None
    ranking = run.results.ranking(tuple(registry.SCORERS))
    scorers = [n for n in registry.SCORERS if n in ranking]
    metrics = run.results.optional(run.detect_metrics_path, "detect_metrics") or {}
    primary = metrics.get("primary") if metrics.get("primary") in scorers else registry.default_primary(scorers)
    scorers.sort(key=lambda n: n != primary)  # the best scorer on the canaries, when there are canaries
    order = {n: np.argsort(ranking[f"{n}_rank"], kind="stable").tolist() for n in scorers}
    score = {n: [float(f"{v:.4g}") for v in ranking[n]] for n in scorers}
    predicted = ranking.get("predicted", np.full(len(ranking["index"]), -1)).tolist()
    out = {"scorers": scorers, "primary": scorers[0] if scorers else None, "order": order, "score": score,
           "predicted": predicted, "descriptions": {n: registry.SCORERS[n].description for n in scorers}}
    if "suggested_label" in ranking:
        out.update(suggested=ranking["suggested_label"].tolist(),
                   suggested_prob=[round(float(p), 3) for p in ranking["suggested_prob"]],
                   suggestion_source=str(ranking["suggestion_source"][0]) if len(ranking["index"]) else None)
    return out


def lds_results(run: RunFolder, inputs: ReportInputs) -> tuple[list[tuple[str, Any]], np.ndarray | None]:
    """Every LDS result as ``(file name, result)`` (``lds.json`` first), and the per-target Spearman of ``lds.json``;
    a missing or damaged one is a gap of the ``lds`` section in ``inputs``.

    Returns:
        The results and float ``[n_targets]`` correlations (NaN = undefined), or None without ``lds.json``.
    """
    results = [(run.relative(p), inputs.result("lds", p, "lds")) for p in run.lds_results()]
    per_target = None
    csv_path = run.lds_per_target_path(run.lds_path)
    if results[0][1] is not None:
        per_target = inputs.read("lds", csv_path, lambda: np.array(
            [float(r["spearman"]) if r["spearman"] else np.nan for r in read_csv(csv_path)]))
    return [(n, r) for n, r in results if r is not None], per_target


def embed_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` become ``\\u`` escapes."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
