"""Plain-text (Markdown) tables that the commands print: detection quality and remove-and-retrain results."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..methods import registry
from ..methods.metrics import RECALL_FRACTIONS, recall_key


def _count(n: float) -> str:
    """A count averaged over seeds: ``6`` or ``6.7``."""
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"


def _pm(mean: float, se: float | None) -> str:
    return f"{mean:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def _signed(mean: float | None, se: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:+.4f}" + (f" ± {se:.4f}" if se is not None else "")


def removal_table(summary: dict) -> str:
    """Markdown table: strategy, fraction removed, planted-noisy removed, test accuracy mean ± SE, the paired
    difference to the full-data model of the same seed (mean ± SE over seeds), and worst-group accuracy with its
    paired difference where known. On imported checkpoints their own accuracy (mean over the members) stands under
    the full-data row, with its difference to it. With canaries, a column of those each selection held and kept,
    and a line below saying how the retrains treat them."""
    ref = summary["reference"]
    worst = "worst_group_mean" in ref
    canaries = summary.get("n_canaries", 0)
    heads = ["strategy", "removed", "noisy removed", "test acc (mean ± SE)", "Δ vs full, paired (± SE)"]
    full = ["full data", "0", f"0 of {summary['n_noisy']}", _pm(ref["mean"], ref["se"]), "—"]
    if worst:
        heads += ["worst-group acc", "Δ worst-group, paired"]
        full += [_pm(ref["worst_group_mean"], ref["worst_group_se"]), "—"]
    if canaries:
        heads.append("canaries kept")
        full.append(f"0 of {canaries}")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads), "| " + " | ".join(full) + " |"]
    if "imported" in summary:  # the checkpoints the user gave, beside the full-data retrains of trakscope's recipe
        own = summary["imported"]
        lines.append("| " + " | ".join(["imported checkpoints (not retrained)", "0", "—", _pm(own["test_acc"], None),
                                         _signed(-own["full_minus_imported"], None)] + ["—"] * (len(heads) - 5)) + " |")
    order = {s: i for i, s in enumerate(summary.get("strategies", []))}
    for r in sorted(summary["rows"], key=lambda r: (order.get(r["strategy"], len(order)), r["removed_fraction"])):
        removed = f"{r['removed_fraction'] * 100:.1f}% ({r['n_removed']:g})"
        cells = [r["strategy"], removed, _count(r["n_noisy_removed"]), _pm(r["mean"], r["se"]),
                 _signed(r.get("paired_delta", r["delta_vs_full"]), r.get("paired_se"))]
        if worst:
            has = "worst_group_mean" in r
            cells += [_pm(r["worst_group_mean"], r["worst_group_se"]) if has else "—",
                      _signed(r.get("worst_group_paired_delta"), r.get("worst_group_paired_se"))]
        if canaries:
            cells.append(_count(r.get("n_canaries_kept", 0)))
        lines.append("| " + " | ".join(cells) + " |")
    if canaries:
        lines.append(f"\ncanaries: the {canaries} labels trakscope flipped itself (--canaries) are never removed and "
                     "every retrain, the full-data reference included, trains on their true labels (as export's "
                     "keep-list has them); 'canaries kept' counts those a strategy selected, left out of 'removed'")
    return "\n".join(lines)


def detection_table(metrics: Mapping[str, Any], recall_fractions: tuple[float, ...] = RECALL_FRACTIONS) -> str:
    """The comparison table printed by ``trakscope detect`` (and pasted in the README), then a line per flagging
    scorer that ``metrics`` says was skipped."""
    cols = ["roc_auc", "average_precision"] + [recall_key(f) for f in recall_fractions]
    heads = ["scorer", "ROC-AUC", "AP"] + [f"R@{f * 100:g}%" for f in recall_fractions]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    rows = list(metrics["scorers"].items()) + [("chance", metrics["chance"])]
    for name, m in rows:
        vals = [("n/a" if m[c] is None or (isinstance(m[c], float) and math.isnan(m[c])) else f"{m[c]:.3f}")
                for c in cols]
        lines.append("| " + " | ".join([name, *vals]) + " |")
    lines += [f"{name}: {metrics[name]}" for name, s in registry.SCORERS.items()
              if s.flag is not None and isinstance(metrics.get(name), str)]
    return "\n".join(lines)


def canary_estimate_table(canaries: Mapping[str, Any], recall_fractions: tuple[float, ...] = RECALL_FRACTIONS) -> str:
    """Every scorer's recall estimated on the canaries, each with its 95% interval (``metrics.json``'s
    ``canaries.estimates``), as a Markdown table: ``0.722 (0.491–0.875)``."""
    heads = ["scorer"] + [f"R@{f * 100:g}% (95% interval)" for f in recall_fractions]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, est in canaries["estimates"].items():
        cells = [f"{e['estimate']:.3f} ({e['low']:.3f}–{e['high']:.3f})" if (e := est.get(recall_key(f))) else "n/a"
                 for f in recall_fractions]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def canary_count_lines(canaries: Mapping[str, Any], n_train: int) -> list[str]:
    """How many canaries each 95% interval width needs (``canaries.needed``) and the recommended count."""
    need, n = canaries["needed"], canaries["n"]
    widths = need["widths"]
    at = ", ".join(f"{w}: {v['at_recall']}" for w, v in widths.items())
    worst = ", ".join(f"{w}: {v['worst_case']}" for w, v in widths.items())
    lines = [f"canaries a 95% interval of each full width needs, at recall {need['at_recall']:.2f}: {at} "
             f"(at recall 0.5, the worst case: {worst}); this run's {n} give a width of {need['width_now']:.2f}",
             f"recommended: {need['recommended']} canaries (a width of at most 0.2, about ±0.1, at any recall)"]
    frac = need["recommended_fraction"]
    if round(frac * n_train) < need["recommended"]:
        lines[-1] += (f"; that is more than {frac:.0%} of these {n_train} training labels, and canaries are wrong "
                      f"labels the models learn from: at --canaries {frac:g} the width is "
                      f"{need['recommended_width']:.2f}")
    else:
        lines[-1] += f": `trakscope run --canaries {frac:g}`"
    if need.get("design", 1.0) >= 2.0:
        lines.append(f"the canaries' weights are uneven ({need['design']:.1f} canaries per effective one): the data's "
                     "errors sit in (class, wrong label) pairs few canaries were planted in; canaries planted where "
                     "the data's errors are (`--canary-kind pairs` or `mixed`) need fewer")
    return lines


def wrong_label_line(wrong: Mapping[str, Any]) -> str:
    """The estimated count of the data's own wrong labels next to how many each flagging scorer flags."""
    flagged = "".join(f"; {name} flags {k}" for name, k in wrong.get("flagged", {}).items())
    return (f"estimated wrong labels in the data: about {wrong['estimated']} of {wrong['among']} (an estimate: "
            f"cleanlab's confident joint on {wrong['probabilities']} probabilities, canaries left "
            f"out){flagged}")


def _share(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def suggestion_table(suggestions: Mapping[str, Any]) -> str:
    """Markdown table of ``detect/metrics.json``'s ``suggestions``: per truth (planted noise, canaries) and top share
    flagged by the primary scorer, how often the suggested label is the true one."""
    heads = ["known errors", "flagged", "wrong labels flagged", "suggestion right (on them)",
             "suggestion right (all flagged)"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for truth in ("planted", "canaries"):
        for top, q in (suggestions.get(truth) or {}).items():
            cells = [truth, f"{top} ({q['n_flagged']})", str(q["n_flagged_wrong"]),
                     _share(q["suggestion_correct_on_wrong"]), _share(q["suggestion_correct"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relabel_table(summary: Mapping[str, Any]) -> str:
    """Markdown table of ``removal/results.json``'s ``relabel_vs_remove``: the paired difference over seeds of
    relabelling the selection instead of removing it (test accuracy and worst-group accuracy), ± SE, and Δ / SE."""
    heads = ["relabel", "vs remove", "selected", "Δ test acc, paired (± SE)", "Δ / SE", "Δ worst-group (± SE)",
             "seeds"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in summary.get("relabel_vs_remove", []):
        ratio = f"{r['delta'] / r['se']:+.1f}" if r.get("se") else "—"
        cells = [r["relabel"], r["remove"], "—" if r["fraction"] is None else f"{r['fraction'] * 100:g}%",
                 _signed(r["delta"], r.get("se")), ratio,
                 _signed(r.get("worst_group_delta"), r.get("worst_group_se")), str(r["n_seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
