"""The report's static sections, built in Python: every value from the run folder goes through :func:`esc`.

Each renderer takes what the run folder holds (possibly nothing) and returns an HTML fragment; a
section whose stage output is missing says which command produces it.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..methods import registry
from ..methods.metrics import RECALL_FRACTIONS, recall_key
from ..run_folder import RunFolder
from . import plots, tables


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3, fixed: bool = False) -> str:
    """A number for a table cell (escaped); None/NaN as an em dash. A float under ``10**-digits`` is written in
    scientific notation, unless ``fixed`` (accuracies and their differences: ``0.000``, never ``4.00e-04`` or a
    float's rounding noise such as ``-2.22e-16``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, int):
        return esc(f"{value:,}")
    if isinstance(value, float):
        if fixed:
            return esc(f"{0.0 if abs(value) < 0.5 * 10 ** -digits else value:.{digits}f}")  # no "-0.000"
        return esc(f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}")
    return esc(value)


def missing(command: str, run_dir: str, what: str) -> str:
    """A note saying which command (``"trakscope detect"``) produces a missing section, as a complete command line."""
    folder = RunFolder(run_dir)
    return (f'<p class="missing">No {esc(what)} in this run yet. Produce it with <code>{esc(folder.command(command))}'
            f"</code>, then rerun <code>{esc(folder.command('report'))}</code>.</p>")


def gap_note(gap: Any) -> str:
    """A note where an input of the section is missing or damaged (a :class:`~trakscope.report.inputs.Gap`)."""
    return (f'<p class="missing gap"><b>{esc(gap.file)} is {esc(gap.problem)}.</b> Remake it with '
            f"<code>{esc(gap.command)}</code>, then rerun <code>{esc(gap.report)}</code>.</p>")


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "", fixed: bool = False) -> str:
    """An HTML table; header cells and cells are escaped (cells through :func:`fmt`, ``fixed`` for accuracies)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c, fixed=fixed)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists of scalars kept as leaves)."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def section(anchor: str, title: str, body: str, lead: str = "") -> str:
    """A titled ``<section>``; ``title`` and ``lead`` are escaped, ``body`` is trusted HTML built here."""
    lead_html = f'<p class="lead">{esc(lead)}</p>' if lead else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{lead_html}{body}</section>'


def detection_section(metrics: Any, ranking: Mapping[str, Any] | None, noisy: np.ndarray, run_dir: str) -> str:
    """Metrics table (``detect/metrics.json``) and curves of every scorer's order against planted noise."""
    if ranking is None and metrics is None:
        return missing("trakscope detect", run_dir, "mislabel detection results")
    parts = []
    if not np.asarray(noisy).any():
        parts.append('<p class="missing">No planted noise in this run, so detection quality cannot be measured '
                     "(use <code>--noise</code> &gt; 0).</p>")
    elif ranking is not None and ranking["order"]:
        uri = plots.detection_curves(ranking["order"], noisy)
        parts.append(f'<img class="plot" alt="detection curves" src="{esc(uri)}">')
    rows = metric_rows(metrics)
    if rows:
        cols = sorted({c for _, r in rows for c in r}, key=_metric_key)
        if isinstance(metrics.get("chance"), Mapping):
            rows.append(("chance", {k: v for k, v in metrics["chance"].items() if _is_number(v)}))
        parts.append(table(["scorer", *cols], [[name, *(r.get(c) for c in cols)] for name, r in rows], "metrics"))
    descriptions = metrics.get("descriptions") if isinstance(metrics, Mapping) else None
    if isinstance(descriptions, Mapping):
        items = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in descriptions.items())
        parts.append(f'<ul class="notes">{items}</ul>')
    canaries = metrics.get("canaries") if isinstance(metrics, Mapping) else None
    if isinstance(canaries, Mapping):
        can_rows = metric_rows(canaries)
        if can_rows:
            cols = sorted({c for _, r in can_rows for c in r}, key=_metric_key)
            parts.append(f'<h3>Estimated on canaries ({fmt(canaries.get("n"))} labels flipped by trakscope)</h3>'
                         f'<p class="muted">Suspects are ordered by {esc(str(metrics.get("primary")))}, the best '
                         "ROC-AUC on the canaries.</p>")
            parts.append(table(["scorer", *cols], [[name, *(r.get(c) for c in cols)] for name, r in can_rows],
                               "metrics"))
        parts.append(canary_estimate_html(canaries, metrics.get("n_train")))
    if isinstance(metrics, Mapping) and isinstance(metrics.get("wrong_labels"), Mapping):
        parts.append(f'<p class="muted">{esc(tables.wrong_label_line(metrics["wrong_labels"]))}.</p>')
    parts += flag_notes(metrics)
    parts += suggestion_part(metrics)
    return "".join(parts)


def canary_estimate_html(canaries: Mapping[str, Any], n_train: Any) -> str:
    """Every scorer's canary recalls with their 95% intervals, said to be estimates, and the canary counts needed
    (``detect/metrics.json``'s ``canaries.estimates`` and ``canaries.needed``; empty where they are absent)."""
    est = canaries.get("estimates")
    if not isinstance(est, Mapping) or not est:
        return ""
    weighted = " each canary weighted by the share of the data's estimated wrong labels in its (class, wrong " \
               "label) pair over the share of canaries planted there;" if canaries.get("weighted") else ""
    lead = (f"These recalls are estimates: the canaries stand in for the data's own errors, which may be harder or "
            f"easier to find. 95% intervals (Wilson) from the {fmt(canaries.get('n'))} canaries;{weighted} a recall "
            "of the data's own errors outside the interval is possible where the canaries do not resemble them.")
    keys = [recall_key(f) for f in RECALL_FRACTIONS]
    rows = [[name, *(_interval(e.get(k)) for k in keys)] for name, e in est.items() if isinstance(e, Mapping)]
    out = f'<p class="muted">{esc(lead)}</p>' + table(["scorer", *(f"{k} (95% interval)" for k in keys)], rows,
                                                       "metrics")
    if isinstance(canaries.get("needed"), Mapping) and isinstance(n_train, int):
        out += "".join(f'<p class="muted">{esc(line)}.</p>' for line in tables.canary_count_lines(canaries, n_train))
    return out


def _interval(e: Any) -> str:
    """``0.722 (0.491–0.875)`` from ``{estimate, low, high}``; n/a otherwise."""
    if not isinstance(e, Mapping) or not all(_is_number(e.get(k)) for k in ("estimate", "low", "high")):
        return "n/a"
    return f"{e['estimate']:.3f} ({e['low']:.3f}–{e['high']:.3f})"


def suggestion_part(metrics: Any) -> list[str]:
    """How often the suggested label is the true one among the primary scorer's top (``detect/metrics.json``'s
    ``suggestions``): a heading, a note on where the suggestions come from, a table; nothing where absent."""
    sug = metrics.get("suggestions") if isinstance(metrics, Mapping) else None
    if not isinstance(sug, Mapping):
        return []
    rows = [[truth, top, q.get("n_flagged"), q.get("n_flagged_wrong"), q.get("suggestion_correct_on_wrong"),
             q.get("suggestion_correct")]
            for truth in ("planted", "canaries") if isinstance(sug.get(truth), Mapping)
            for top, q in sug[truth].items() if isinstance(q, Mapping)]
    source = "k-fold out-of-sample" if sug.get("source") == "out_of_sample" else "the ensemble's (in-sample)"
    head = ["known errors", "flagged", "examples", "wrong labels among them", "suggestion right (on them)",
            "suggestion right (all flagged)"]
    return [f"<h3>Suggested labels</h3><p class=\"muted\">The suggested label is the most probable class under "
            f"{esc(source)} probabilities; flagged = the top of {esc(sug.get('scorer'))}'s ranking.</p>",
            table(head, rows, "metrics")]


def flag_notes(metrics: Any) -> list[str]:
    """One line per flagging scorer summarised in ``detect/metrics.json`` (numbers through :func:`fmt`)."""
    if not isinstance(metrics, Mapping):
        return []
    return [f'<p class="muted">{s.flag.sentence(esc(name), metrics[name], fmt, quality=True)}.</p>'
            for name, s in registry.SCORERS.items() if s.flag is not None and isinstance(metrics.get(name), Mapping)]


def _metric_key(name: str) -> tuple[int, float, str]:
    """roc_auc, average_precision, then recall@5% < recall@10% < ... (numerically), then the rest."""
    known = ["roc_auc", "average_precision"]
    if name in known:
        return known.index(name), 0.0, name
    at = re.search(r"@([0-9.]+)", name)
    return len(known), float(at.group(1)) if at else math.inf, name


def metric_rows(metrics: Any) -> list[tuple[str, dict[str, float]]]:
    """``{scorer: {metric: value}}`` (optionally under a ``"scorers"`` key) -> rows of numeric metrics."""
    if not isinstance(metrics, Mapping):
        return []
    if isinstance(metrics.get("scorers"), Mapping):
        metrics = metrics["scorers"]
    rows = []
    for name, vals in metrics.items():
        if isinstance(vals, Mapping):
            nums = {k: float(v) for k, v in flatten(vals).items() if _is_number(v)}
            if nums:
                rows.append((str(name), nums))
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def key_value_table(obj: Any) -> str:
    """Every numeric or short string leaf of a JSON object, as a two-column table."""
    rows = [(k, v) for k, v in flatten(obj).items() if _is_number(v) or (isinstance(v, str) and len(v) < 200)]
    return table(["quantity", "value"], rows, "kv") if rows else ""


def removal_rows(results: Any) -> list[dict[str, Any]]:
    """The ``rows`` of ``removal/results.json`` that have a strategy, a removed fraction and a mean accuracy."""
    rows = results.get("rows") if isinstance(results, Mapping) else None
    keep = [r for r in rows or [] if isinstance(r, Mapping) and _is_number(r.get("removed_fraction"))
            and _is_number(r.get("mean")) and "strategy" in r]
    return sorted(keep, key=lambda r: (str(r["strategy"]), r["removed_fraction"]))


def removal_section(results: Any, run_dir: str) -> str:
    """Test accuracy vs fraction removed per strategy (error bars = SE over seeds), the full-data line, the table;
    on imported checkpoints their own accuracy as a row, and the warning when the full-data retrains are far from it."""
    if results is None:
        return missing("trakscope removal", run_dir, "remove-and-retrain results")
    rows = removal_rows(results)
    if not rows:
        return '<p class="missing">removal/results.json has no rows this report can read.</p>'
    series, ref_line = plots.removal_series({**results, "rows": rows})
    ref = results.get("reference") if isinstance(results.get("reference"), Mapping) else {}
    uri = plots.removal_curves(series, ref_line, str(results.get("metric", "test accuracy")),
                               int(results.get("seeds", 0)))
    table_rows = [["full data", "0", "0", "0", ref.get("mean"), ref.get("se"), len(ref.get("test_acc") or []), None,
                   None, ref.get("worst_group_mean"), None, None]]
    own = results.get("imported") if isinstance(results.get("imported"), Mapping) else {}
    if _is_number(own.get("test_acc")):  # imported checkpoints: their own accuracy beside the full-data retrains'
        table_rows.append(["imported checkpoints (not retrained)", "0", "0", "0", own["test_acc"], None,
                           None, None, None, None, None, None])
    table_rows += [[r["strategy"], f"{100 * r['removed_fraction']:.1f}", _count(r.get("n_removed")),
                    _count(r.get("n_noisy_removed")), r["mean"], r.get("se"), len(r.get("test_acc") or []),
                    r.get("delta_vs_full"), r.get("paired_se"), r.get("worst_group_mean"),
                    r.get("worst_group_paired_delta"), r.get("worst_group_paired_se")] for r in rows]
    head = ["strategy", "removed (%)", "removed", "planted noise removed", "test accuracy", "SE", "seeds",
            "Δ vs full data", "paired SE of Δ", "worst-group acc", "Δ worst-group (paired)", "its SE"]
    warning = f'<p class="missing">{esc(own["warning"])}</p>' if isinstance(own.get("warning"), str) else ""
    return f'{warning}<img class="plot narrow" alt="accuracy vs fraction removed" src="{esc(uri)}">' + table(
        head, table_rows, "metrics", fixed=True) + relabel_part(results)


def relabel_part(results: Mapping[str, Any]) -> str:
    """Relabel against remove on the same selection (``relabel_vs_remove`` of ``removal/results.json``): the paired
    difference over seeds of test and worst-group accuracy; empty where no relabel strategy ran beside its twin."""
    versus = [v for v in results.get("relabel_vs_remove") or [] if isinstance(v, Mapping)]
    if not versus:
        return ""
    own = {(r.get("strategy"), r.get("fraction")): r for r in results.get("rows") or [] if isinstance(r, Mapping)}
    rows = [[v.get("relabel"), v.get("remove"), v.get("fraction"), v.get("delta"), v.get("se"),
             v.get("delta") / v["se"] if _is_number(v.get("delta")) and v.get("se") else None,
             v.get("worst_group_delta"), v.get("worst_group_se"), v.get("n_seeds"),
             _corrected(own.get((v.get("relabel"), v.get("fraction")), {}))] for v in versus]
    head = ["relabel", "vs remove", "selected (share)", "Δ test accuracy (paired)", "its SE", "Δ / SE",
            "Δ worst-group (paired)", "its SE", "seeds", "planted wrong labels corrected"]
    return ('<h3>Relabel instead of remove</h3><p class="muted">The same selection given its suggested label instead '
            "of removed; positive = relabelling is better (mean over seeds of the same-seed difference). A relabel "
            "row's removed counts above are the examples it relabels (kept, with their suggested label); "
            "corrected = its planted wrong labels whose suggestion is their true label.</p>"
            + table(head, rows, "metrics", fixed=True))


def _corrected(row: Mapping[str, Any]) -> Any:
    """A relabel row's planted wrong labels given their true label, of those it selected (means over seeds):
    ``"24 of 29"``."""
    n, of = row.get("n_corrected"), row.get("n_noisy_removed")
    return f"{round(n, 1):g} of {round(of, 1):g}" if _is_number(n) and _is_number(of) else None


def _count(v: Any) -> Any:
    """A mean count over seeds: ``3.0`` -> ``"3"``, ``2.5`` -> ``"2.5"``."""
    return f"{v:g}" if _is_number(v) else v


def lds_section(results: list[tuple[str, Any]], per_target: np.ndarray | None, run_dir: str) -> str:
    """The linear datamodeling score: headline card, a table of every evaluated attribution, a histogram.

    Args:
        results: ``(file name, parsed JSON)`` of ``lds.json`` first (if present), then ``lds/lds_*.json``.
        per_target: float ``[n_targets]`` Spearman correlations behind ``lds.json`` (NaN = undefined), or None.
        run_dir: the run folder, for the note when nothing was computed.
    """
    results = [(name, r) for name, r in results if isinstance(r, Mapping) and _is_number(r.get("lds_mean"))]
    if not results:
        return missing("trakscope lds", run_dir, "linear datamodeling score")
    cards = ""
    name, main = results[0]
    if main.get("projector") is not None:  # the run's own scores (other matrices have no projector)
        ci = main.get("lds_ci95") or [None, None]
        cards = (f'<div class="cards"><div class="card"><div class="k">LDS (mean Spearman)</div>'
                 f'<div class="v">{fmt(float(main["lds_mean"]))}</div><div class="s">95% CI {fmt(ci[0])} – '
                 f'{fmt(ci[1])} · {fmt(main.get("targets"))} targets · {fmt(main.get("num_models"))} subset models '
                 f'(α = {fmt(main.get("alpha"), 2)})</div></div></div>')
    rows = []
    for name, r in results:
        ci = r.get("lds_ci95") or [None, None]
        rows.append([name, r.get("scores_path"), r.get("projector"), r.get("proj_dim"), r.get("checkpoints"),
                     r.get("lds_mean"), ci[0], ci[1], r.get("targets"), r.get("num_models")])
    head = ["file", "scores", "projector", "dim", "checkpoints", "LDS", "CI low", "CI high", "targets", "models"]
    hist = ""
    if per_target is not None and np.isfinite(per_target).any():
        uri = plots.histogram(per_target[np.isfinite(per_target)], "Spearman correlation per target",
                              "Per-target LDS")
        hist = f'<img class="plot narrow" alt="per-target LDS" src="{esc(uri)}">'
    return cards + table(head, rows, "metrics") + hist
