"""Report figures drawn with matplotlib as SVG and embedded as ``<img>`` data URIs.

An SVG shown through ``<img>`` cannot run scripts or load anything, and it stays crisp at any zoom.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_path

RC = {"svg.fonttype": "none", "svg.hashsalt": "trakscope", "font.family": "sans-serif", "font.size": 9}
MAX_POINTS = 400  # per curve
PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


def svg_data_uri(fig: Figure) -> str:
    """Render a figure as an SVG data URI (text kept as text, so it is small and sharp)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg")
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plain(texts) -> None:
    """Show labels as typed (scorer, strategy and metric names come from files): no mathtext, no LaTeX."""
    for text in texts:
        text.set_parse_math(False)
        text.set_usetex(False)


def _legend(ax, **kw) -> None:
    _plain(ax.legend(**kw).get_texts())


def _style(ax) -> None:
    _plain((ax.title, ax.xaxis.label, ax.yaxis.label))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)


def detection_curves(orders: Mapping[str, Sequence[int]], noisy: np.ndarray) -> str:
    """Recall vs fraction inspected, and precision vs recall, of every scorer's inspection order.

    Args:
        orders: scorer -> training indices, most suspicious (inspected first) first.
        noisy: bool ``[n_train]``, True where the label was flipped on purpose.

    Returns:
        An SVG data URI with two panels.
    """
    with matplotlib.rc_context(RC):
        return _detection_curves(orders, np.asarray(noisy, dtype=bool))


def _detection_curves(orders: Mapping[str, Sequence[int]], noisy: np.ndarray) -> str:
    n, n_noisy = len(noisy), int(noisy.sum())
    fig = Figure(figsize=(9.2, 3.4))  # fixed margins: a layout engine costs seconds on a busy CPU
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.15, top=0.91, wspace=0.22)
    ax_r, ax_p = fig.subplots(1, 2)
    x = np.arange(1, n + 1)
    keep = np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).round().astype(np.int64))  # enough to look exact
    for color, (name, order) in zip(PALETTE * 4, orders.items()):
        hits = np.cumsum(noisy[np.asarray(order, dtype=np.int64)])[keep]
        ax_r.plot(x[keep] / n, hits / n_noisy, color=color, lw=1.6, label=name)
        ax_p.plot(hits / n_noisy, hits / x[keep], color=color, lw=1.6, label=name)
    ax_r.plot([0, 1], [0, 1], color="#9ca3af", lw=1, ls="--", label="random")
    ax_r.plot([0, n_noisy / n, 1], [0, 1, 1], color="#9ca3af", lw=1, ls=":", label="perfect")
    ax_p.axhline(n_noisy / n, color="#9ca3af", lw=1, ls="--", label="random")
    ax_r.set(xlabel="fraction of training set inspected", ylabel="fraction of flipped labels found",
             xlim=(0, 1), ylim=(0, 1.02), title="Recall vs inspected")
    ax_p.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision vs recall")
    for ax in (ax_r, ax_p):
        _style(ax)
    _legend(ax_r, frameon=False, fontsize=8, loc="lower right")
    return svg_data_uri(fig)


def removal_curves(series: Mapping[str, Sequence[tuple[float, float, float]]],
                   reference: tuple[float, float] | None, ylabel: str, seeds: int = 0) -> str:
    """Accuracy vs fraction removed, one line with error bars per strategy, the full-data accuracy as a band.

    Args:
        series: strategy -> rows ``(fraction removed, mean accuracy, standard error)`` sorted by fraction.
        reference: ``(mean, standard error)`` with all the training data, or None.
        ylabel: what the y values are (e.g. "test accuracy").
        seeds: retrains per point, named in the title (0: not stated).

    Returns:
        An SVG data URI.
    """
    with matplotlib.rc_context(RC):
        return svg_data_uri(_removal_figure(series, reference, ylabel, seeds))


def removal_series(results: Mapping) -> tuple[dict[str, list[tuple[float, float, float]]], tuple[float, float] | None]:
    """``removal/results.json`` -> (strategy -> ``(fraction removed, mean, SE)`` rows by fraction, full-data line)."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    rows = sorted(results.get("rows") or [], key=lambda r: (str(r["strategy"]), r["removed_fraction"]))
    for r in rows:
        series.setdefault(str(r["strategy"]), []).append((r["removed_fraction"], r["mean"], r.get("se") or 0.0))
    ref = results.get("reference") or {}
    return series, ((ref["mean"], ref.get("se") or 0.0) if ref.get("mean") is not None else None)


def removal_png(results: Mapping, path) -> None:
    """``removal/accuracy_vs_fraction.png``: the report's removal chart, as a PNG file (atomically)."""
    series, reference = removal_series(results)
    with matplotlib.rc_context(RC):
        fig = _removal_figure(series, reference, str(results.get("metric", "test accuracy")),
                              int(results.get("seeds", 0)))
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)


def _removal_figure(series: Mapping[str, Sequence[tuple[float, float, float]]],
                    reference: tuple[float, float] | None, ylabel: str, seeds: int = 0) -> Figure:
    fig = Figure(figsize=(7.4, 3.7))
    fig.subplots_adjust(left=0.1, right=0.77, bottom=0.14, top=0.91)
    ax = fig.subplots()
    if reference is not None:
        ax.axhline(reference[0], color="#111827", lw=1, ls="--", label="full data")
        ax.axhspan(reference[0] - reference[1], reference[0] + reference[1], color="#111827", alpha=0.07, lw=0)
    for color, (name, rows) in zip(PALETTE * 4, series.items()):
        f, m, s = (np.asarray(c, dtype=float) for c in zip(*rows))
        style = {"marker": "*", "ms": 11, "ls": "none"} if len(f) == 1 else {"marker": "o", "ms": 3.5, "lw": 1.6}
        ax.errorbar(f * 100, m, yerr=s, color=color, capsize=3, label=name, **style)
    fractions = [100 * f for rows in series.values() for f, _, _ in rows]
    if fractions:  # from no removal (the full-data line) to a little past the largest fraction
        ax.set_xlim(0, 1.15 * max(fractions))
    over = "one seed" if seeds == 1 else "mean ± SE over seeds" if seeds == 0 else f"mean ± SE over {seeds} seeds"
    ax.set(xlabel="training examples removed (%)", ylabel=ylabel, title=f"Remove and retrain ({over})")
    _style(ax)
    _legend(ax, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


def histogram(values: np.ndarray, xlabel: str, title: str) -> str:
    """A histogram of float ``[n]`` values with their mean marked, as an SVG data URI."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(6.0, 2.8))
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.18, top=0.89)
        ax = fig.subplots()
        ax.hist(values, bins=min(30, max(5, len(values) // 4)), color=PALETTE[0], alpha=0.8)
        ax.axvline(float(np.mean(values)), color="#111827", lw=1.2, ls="--", label=f"mean {np.mean(values):.3f}")
        ax.set(xlabel=xlabel, ylabel="targets", title=title)
        _style(ax)
        _legend(ax, frameon=False, fontsize=8)
        return svg_data_uri(fig)
