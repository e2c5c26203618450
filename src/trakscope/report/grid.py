"""The ``inspect`` picture: a test image beside its most positive and most negative training examples."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402

POSITIVE, NEGATIVE, NOISY, CANARY = "#1a7f37", "#cf222e", "#bf8700", "#8250df"
# Titles hold class names and file names: show them as typed, never as mathtext ("$x^2$") or LaTeX.
PLAIN = {"parse_math": False, "usetex": False}


TILE_CHARS = 20  # characters of 7.5 pt text that fit above one tile; longer lines wrap
TITLE_LINES = 2  # wrapped lines kept per title line; the rest is cut with an ellipsis


def fit_text(text: str, width: int, max_lines: int = TITLE_LINES) -> str:
    """``text`` with every line wrapped to ``width`` characters, at most ``max_lines`` each (then cut with …).

    Long class names and file names would otherwise run into the neighbouring tiles.
    """
    out = []
    for line in text.split("\n"):
        parts = textwrap.wrap(line, width, break_long_words=True, break_on_hyphens=False) or [""]
        if len(parts) > max_lines:
            parts = parts[:max_lines]
            parts[-1] = parts[-1][: width - 1] + "…"
        out += parts
    return "\n".join(out)


def _tile(ax, image: np.ndarray, title: str, color: str, noisy: bool = False, width: int = TILE_CHARS,
          canary: bool = False) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(NOISY if noisy else CANARY if canary else color)
        spine.set_linewidth(3 if noisy or canary else 1.5)
    ax.set_title(fit_text(title, width), fontsize=7.5, color="black", pad=3, **PLAIN)


def influence_grid(target: dict, rows: dict[str, list[dict]], path: Path) -> None:
    """Save a PNG: the target, then one row of tiles per key of ``rows``, headed by the key.

    The keys say which margin the scores are for (e.g. "highest scores: raise the margin of class 'sushi'
    (the label)"); titles and headers are wrapped to their tile's width (:func:`fit_text`).

    Args:
        target: ``image`` (uint8 ``[T, T, 3]``), ``title``.
        rows: name -> list of ``{"image", "title", "noisy"}`` tiles, with ``"canary": True`` for a canary.
    """
    k = max(len(v) for v in rows.values())
    lines = max(fit_text(t["title"], TILE_CHARS).count("\n") + 1 for v in rows.values() for t in v)
    height = (1.2 + 0.14 * lines) * len(rows) + 0.5  # room for wrapped titles and the row header
    fig = plt.figure(figsize=(1.35 * (k + 1.4), height), dpi=150)
    grid = fig.add_gridspec(len(rows), k + 1, width_ratios=[1.4] + [1] * k, wspace=0.15, hspace=0.25 + 0.12 * lines)
    ax = fig.add_subplot(grid[:, 0])
    _tile(ax, target["image"], target["title"], "#24292f", width=int(TILE_CHARS * 1.4))
    for r, (name, tiles) in enumerate(rows.items()):
        color = POSITIVE if r == 0 else NEGATIVE
        for c, tile in enumerate(tiles):
            _tile(fig.add_subplot(grid[r, c + 1]), tile["image"], tile["title"], color, tile["noisy"],
                  canary=tile.get("canary", False))
        fig.text(0.5 + 0.5 * 1.4 / (k + 1.4), 1 - (r + 0.02) / len(rows), fit_text(name, 13 * k, 3), color=color,
                 fontsize=9,
                 ha="center", va="bottom", weight="bold", **PLAIN)
    tiles = [tile for row in rows.values() for tile in row]
    legend = [(text, color) for text, color, shown in (
        ("thick gold frame: a planted wrong label (label ≠ true)", NOISY, any(t["noisy"] for t in tiles)),
        ("thick purple frame: a canary, a label trakscope flipped itself (--canaries)", CANARY,
         any(t.get("canary", False) for t in tiles))) if shown]
    for line, (text, color) in enumerate(legend):
        fig.text(0.5 + 0.5 * 1.4 / (k + 1.4), 0.03 - 0.04 * line, text, color=color, fontsize=8, ha="center",
                 va="top")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
