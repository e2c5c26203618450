"""The report's data: what the page's script needs, gathered from the run folder and kept compact.

The explorer never sees the score matrix: for every test example only its ``k`` most positive and ``k``
most negative training examples are kept (indices and scores), packed as base64 little-endian arrays.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from ..io import read_csv, read_json
from ..run_folder import RunFolder


def top_k(scores: np.ndarray, k: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """The ``k`` highest and ``k`` lowest training scores of every target.

    Args:
        scores: float ``[n_train, n_target]`` TRAK scores ``scores[train, target]`` (may be memory-mapped);
            higher = that training example pushed the target's prediction towards its label.
        k: how many of each to keep (capped at ``n_train``).
        chunk: targets processed at a time (bounds memory to ``n_train * chunk`` floats).

    Returns:
        ``pos_idx``/``neg_idx`` int32 ``[n_target, k]`` and ``pos_score``/``neg_score`` float32 ``[n_target, k]``;
        positives in decreasing score order, negatives in increasing order (most negative first).
    """
    n_train, n_target = scores.shape
    k = min(k, n_train)
    out = {name: np.empty((n_target, k), dtype=np.int32 if "idx" in name else np.float32)
           for name in ("pos_idx", "pos_score", "neg_idx", "neg_score")}
    for j0 in range(0, n_target, chunk):
        block = np.asarray(scores[:, j0:j0 + chunk], dtype=np.float32).T  # [c, n_train]
        for sign, name in ((-1.0, "pos"), (1.0, "neg")):
            key = sign * block
            if k < n_train:
                part = np.argpartition(key, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(n_train), key.shape)
            part_key = np.take_along_axis(key, part, axis=1)
            # sort the k kept by score, ties by training index (as a stable argsort of the column would)
            order = np.lexsort((part, part_key), axis=1)
            idx = np.take_along_axis(part, order, axis=1)
            out[f"{name}_idx"][j0:j0 + chunk] = idx
            out[f"{name}_score"][j0:j0 + chunk] = np.take_along_axis(block, idx, axis=1)
    return out


def b64(array: np.ndarray) -> str:
    """Base64 of a little-endian int32 or float32 array (read in the page as a typed array)."""
    kind = "<i4" if np.issubdtype(array.dtype, np.integer) else "<f4"
    return base64.b64encode(np.ascontiguousarray(array, dtype=kind).tobytes()).decode("ascii")


def split_table(run: RunFolder, split: str) -> dict[str, Any]:
    """Labels of one split, plus the ensemble's prediction and confidence when ``models/probs_<split>.npy`` exists."""
    t = run.table(split)
    out: dict[str, Any] = {
        "n": int(len(t["index"])),
        "label": t["label"].tolist(),
        "true": t["true_label"].tolist(),
        "noisy": t["noisy"].tolist(),
        "source_id": [str(s) for s in t["source_id"]],
    }
    if (run.path / f"models/probs_{split}.npy").exists():
        probs = run.probs(split)
        out["pred"] = probs.argmax(axis=1).tolist()
        out["conf"] = [round(float(p), 3) for p in probs.max(axis=1)]
    return out


def explorer_payload(run: RunFolder, k: int) -> dict[str, Any] | None:
    """Top-k attributions of every test example, or None when ``scores/test.npy`` is missing."""
    if not (run.path / "scores/test.npy").exists():
        return None
    tk = top_k(run.scores("test"), k)
    return {"k": int(tk["pos_idx"].shape[1]), **{name: b64(a) for name, a in tk.items()}}


def read_ranking(run: RunFolder) -> dict[str, Any] | None:
    """``detect/ranking.csv`` as inspection orders per scorer (rank 1 = inspected first), or None if absent.

    Returns:
        ``scorers`` (names, from the ``<scorer>_rank`` columns), ``order`` {scorer: training indices, most
        suspicious first}, ``score`` {scorer: float ``[n_train]`` by training index}, ``predicted`` ``[n_train]``.
    """
    path = run.path / "detect/ranking.csv"
    if not path.exists():
        return None
    rows = read_csv(path)
    if not rows:
        return None
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    n = int(index.max()) + 1
    rank_cols = [c for c in rows[0] if c.endswith("_rank")]
    scorers = [c[: -len("_rank")] for c in rank_cols]
    order, score = {}, {}
    for name, col in zip(scorers, rank_cols):
        ranks = np.array([float(r[col]) for r in rows])
        order[name] = index[np.lexsort((index, ranks))].tolist()
        if f"{name}_score" in rows[0]:
            s = np.full(n, np.nan)
            s[index] = [float(r[f"{name}_score"]) for r in rows]
            score[name] = [None if np.isnan(v) else float(f"{v:.4g}") for v in s]
    predicted = np.full(n, -1, dtype=np.int64)
    if "predicted" in rows[0]:
        predicted[index] = [int(r["predicted"]) for r in rows]
    return {"scorers": scorers, "order": order, "score": score, "predicted": predicted.tolist()}


def optional_json(run: RunFolder, relative: str) -> Any | None:
    """A JSON stage output, or None when it does not exist (or is unreadable)."""
    path = run.path / relative
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None


def lds_results(run: RunFolder) -> tuple[list[tuple[str, Any]], np.ndarray | None]:
    """``lds.json`` and ``lds/lds_*.json`` as ``(name, parsed)``, and the per-target Spearman of ``lds.json``.

    Returns:
        The results (``lds.json`` first) and float ``[n_targets]`` correlations (NaN = undefined), or None.
    """
    results = [("lds.json", optional_json(run, "lds.json"))]
    results += [(f"lds/{p.name}", optional_json(run, f"lds/{p.name}")) for p in sorted(run.path.glob("lds/lds_*.json"))]
    per_target = None
    csv_path = run.path / "lds" / "lds_per_target.csv"
    if results[0][1] is not None and csv_path.exists():
        per_target = np.array([float(r["spearman"]) if r["spearman"] else np.nan for r in read_csv(csv_path)])
    return [(n, r) for n, r in results if r is not None], per_target


def embed_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` become ``\\u`` escapes."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
