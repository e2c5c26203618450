"""User text in figures (class names, scorer and strategy names) is drawn as typed, never parsed as mathtext."""

from __future__ import annotations

import base64
import io

import matplotlib
import matplotlib.pyplot
import numpy as np

from trakscope.report import grid, plots

NAMES = (r"$\foo$", "$x^2$", "50$ each")


def _svg(uri: str) -> str:
    return base64.b64decode(uri.split(",", 1)[1]).decode()


def test_influence_grid_draws_dollar_titles_as_text(tmp_path, monkeypatch):
    """Every title is on its tile as typed, and drawn so: the figure saved as SVG text holds the literal strings
    (mathtext would draw ``$x^2$`` as an x and a raised 2, and refuse ``$\\foo$``)."""
    figures = []
    monkeypatch.setattr(grid.plt, "close", figures.append)  # keep the figure influence_grid made, to read it
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    tiles = [{"image": image, "title": name, "noisy": i == 0} for i, name in enumerate(NAMES)]
    grid.influence_grid({"image": image, "title": NAMES[0]}, {"highest": tiles, "lowest": tiles[::-1]},
                        tmp_path / "g.png")
    (fig,) = figures
    try:
        titles = [ax.title for ax in fig.axes]
        assert [t.get_text() for t in titles] == [NAMES[0], *NAMES, *NAMES[::-1]]
        assert not any(t.get_parse_math() or t.get_usetex() for t in titles)
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as <text> elements, not glyph paths
            fig.savefig(buf, format="svg")
    finally:
        matplotlib.pyplot.close(fig)
    svg = buf.getvalue()
    # each name once per row, and NAMES[0] above the target too
    assert [svg.count(f">{name}<") for name in NAMES] == [3, 2, 2], [svg.count(name) for name in NAMES]


def test_plot_legends_and_labels_keep_dollar_names_literal():
    noisy = np.array([True, False, False, True, False, False])
    svg = _svg(plots.detection_curves({NAMES[0]: [0, 3, 1, 2, 4, 5], NAMES[1]: [5, 4, 3, 2, 1, 0]}, noisy))
    assert r"$\foo$" in svg and "$x^2$" in svg
    svg = _svg(plots.removal_curves({NAMES[0]: [(0.1, 0.8, 0.01), (0.2, 0.7, 0.02)]}, (0.9, 0.01), NAMES[1]))
    assert r"$\foo$" in svg and "$x^2$" in svg
    svg = _svg(plots.histogram(np.linspace(0, 1, 20), NAMES[0], NAMES[2]))
    assert r"$\foo$" in svg and "50$ each" in svg
