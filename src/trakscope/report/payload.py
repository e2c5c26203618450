"""The report's data: what the page's script needs, gathered from the run folder and kept compact.

The explorer never sees the score matrix: for every test example only its ``k`` most positive and ``k``
most negative training examples are kept (indices and scores), packed as base64 little-endian arrays.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from ..io import read_csv
from ..methods import registry
from ..methods.topk import top_k
from ..run_folder import RunFolder
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


def explorer_payload(run: RunFolder, k: int) -> dict[str, Any] | None:
    """Top-k attributions of every test example, or None when ``scores/test.npy`` is missing."""
    if not run.scores_path("test").exists():
        return None
    tk = top_k(run.results.scores("test"), k)
    return {"k": int(tk["pos_idx"].shape[1]), **{name: b64(a) for name, a in tk.items()}}


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
