"""``report/index.html``: one self-contained page (inline CSS, vanilla JS, embedded data, no network).

Static sections (summary, detection quality, removal, LDS) are built here with every run-folder value
escaped; the explorer and the suspects grid are drawn by ``static/report.js`` from a JSON block, using
``textContent`` only. A Content-Security-Policy lets only the page's own script run and forbids every
network request.
"""

from __future__ import annotations

import base64
import hashlib
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..io import atomic_path, read_json
from ..run_folder import RunFolder
from . import payload, sections
from .inputs import Gap, ReportInputs
from .sections import esc
from .sprites import sprite_sheets

DEFAULT_K = 24  # top-k attributions kept per test example (each of positive and negative)


def _static(name: str) -> str:
    return resources.files("trakscope.report").joinpath("static", name).read_text(encoding="utf-8")


def build_data(run: RunFolder, k: int = DEFAULT_K, inputs: ReportInputs | None = None) -> dict[str, Any]:
    """Everything the page's script needs: classes, labels, thumbnails, top-k attributions, suspects.

    A missing or damaged thumbnail, probability, score or ranking file is left out and noted in ``inputs``.
    """
    inputs = inputs if inputs is not None else ReportInputs(run)
    data: dict[str, Any] = {"classes": [str(c) for c in run.classes], "splits": {}, "thumbs": {},
                            "keep": payload.keep_list_extras(run)}
    for split in ("train", "test"):
        shown_in = ("explorer", "suspects") if split == "train" else ("explorer",)
        probs = inputs.read(shown_in, run.probs_path(split), lambda s=split: run.results.probs(s))
        data["splits"][split] = payload.split_table(run, split, probs)
        sheets = inputs.read(shown_in, run.thumbs_path(split), lambda s=split: sprite_sheets(run.data.thumbs(s)))
        if sheets is not None:
            data["thumbs"][split] = sheets
    self_influence = inputs.read("explorer", run.scores_path("self"), lambda: payload.read_self_influence(run)) \
        if run.scores_path("test").exists() else None
    data["explorer"] = inputs.read("explorer", run.scores_path("test"),
                                   lambda: payload.explorer_payload(run, k, self_influence))
    data["suspects"] = inputs.read(("suspects", "detection"), run.ranking_path, lambda: payload.read_ranking(run))
    return data


def summary_section(run: RunFolder, data: dict[str, Any], inputs: ReportInputs) -> str:
    """Cards with dataset, classes, sizes, planted noise, model, ensemble accuracy, TRAK settings, timings."""
    cfg = run.config
    sizes = {s: data["splits"][s]["n"] for s in ("train", "test")}
    if run.table_path("val").exists():
        sizes["val"] = len(run.data.table("val")["index"])
    noisy = int(np.sum(data["splits"]["train"]["noisy"]))
    metrics = inputs.result("summary", run.metrics_path, "model_metrics")
    acc = metrics["ensemble"] if metrics else {}
    meta = inputs.read("summary", run.scores_meta_path, lambda: dict(read_json(run.scores_meta_path)))
    n_ckpt = meta.get("checkpoints") if meta else None
    timings = _stage_timings(run)
    cards = [
        ("dataset", cfg.data.dataset, f"{cfg.data.image_size}×{cfg.data.image_size} px"),
        ("classes", len(data["classes"]), _class_list(data["classes"])),
        ("train / val / test", " / ".join(f"{sizes[s]:,}" if s in sizes else "—" for s in ("train", "val", "test")),
         "examples"),
        ("planted noise", f"{noisy:,}", f"{cfg.data.noise:.0%} of training labels flipped"),
        ("model", cfg.model.name, _model_card(cfg)),
        ("ensemble accuracy", "—" if acc.get("test_acc") is None else f"{acc['test_acc']:.1%}",
         "test" + ("" if acc.get("val_acc") is None else f" · val {acc['val_acc']:.1%}")),
        ("TRAK", f"{cfg.trak.projector} · {cfg.trak.proj_dim}",
         f"ridge {cfg.trak.ridge:g}" + ("" if n_ckpt is None else f" · {n_ckpt} checkpoints")),
        ("time", f"{_total_time(timings):.0f} s" if timings else "—",
         " · ".join(f"{k} {v:.0f}s" for k, v in _top_stages(timings)[:6])),
    ]
    html_cards = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div>'
                         f'<div class="s">{esc(s)}</div></div>' for k, v, s in cards)
    detail = sections.table(["stage", "seconds"], timings.items(), "kv") if timings else ""
    return (f'<section id="summary">{inputs.notes("summary")}<div class="cards">{html_cards}</div>'
            f'<details><summary>all settings and timings</summary>{sections.key_value_table(cfg.to_dict())}{detail}'
            "</details></section>")


def _model_card(cfg: RunConfig) -> str:
    """The model card's line: how trakscope trained the ensemble, or that its checkpoints were imported."""
    if cfg.model.checkpoints:
        n = len(cfg.model.checkpoints)
        masks = f" · {cfg.trak.masks} DropConnect masks each" if cfg.trak.masks else ""
        return f"imported · {n} checkpoint{'s' if n > 1 else ''} trained elsewhere{masks}"
    return f"{cfg.model.weights} init · ensemble of {cfg.train.ensemble} · {cfg.train.epochs} epochs"


def _stage_timings(run: RunFolder) -> dict[str, float]:
    """``timings.json``, with an imported run's ``train`` (written before imports were timed as such) called
    ``import``: nothing was trained."""
    timings = run.results.timings()
    if run.config.model.checkpoints and "train" in timings and "import" not in timings:
        timings = {("import" if k == "train" else k): v for k, v in timings.items()}
    return timings


def _top_stages(timings: dict[str, float]) -> list[tuple[str, float]]:
    """Stages without their sub-stages: ``<stage>_<part>`` is already counted in ``<stage>``."""
    return [(k, v) for k, v in timings.items() if not any(k.startswith(f"{o}_") for o in timings if o != k)]


def _total_time(timings: dict[str, float]) -> float:
    return sum(v for _, v in _top_stages(timings))


def _class_list(classes: list[str], n: int = 12) -> str:
    return ", ".join(classes[:n]) + (" …" if len(classes) > n else "")


def render(run: RunFolder, k: int = DEFAULT_K, inputs: ReportInputs | None = None) -> str:
    """The whole page as a string; every missing or damaged input is noted in ``inputs`` and on the page."""
    inputs = inputs if inputs is not None else ReportInputs(run)
    data = build_data(run, k, inputs)
    run_dir = str(run.path)
    noisy = np.asarray(data["splits"]["train"]["noisy"], dtype=bool)
    ranking = data["suspects"]
    detect_metrics = inputs.result("detection", run.detect_metrics_path, "detect_metrics")
    removal = inputs.result("removal", run.removal_results_path, "removal_results")
    lds = payload.lds_results(run, inputs)
    summary = summary_section(run, data, inputs)
    body = [
        summary,
        _section(inputs, "explorer", "Explorer", _explorer_shell(data, run_dir),
                 "Pick a test example: beside it are the training examples with the highest and lowest TRAK scores "
                 "for the model's margin on the example's label, in the view chosen above them: raw (what leaving "
                 "each one out would do) or relative (the same scores over each one's own influence).",
                 (run.scores_path("test"),)),
        _section(inputs, "suspects", "Suspects", _suspects_shell(data, run_dir),
                 "Training examples most likely mislabeled, most suspicious first.", (run.ranking_path,)),
        _section(inputs, "detection", "Detection quality",
                 sections.detection_section(detect_metrics, ranking, noisy, run_dir),
                 "How quickly each scorer's order finds the labels flipped on purpose.",
                 (run.ranking_path, run.detect_metrics_path)),
        _section(inputs, "removal", "Removal", sections.removal_section(removal, run_dir),
                 "Retrain without the top-ranked examples of each strategy: does accuracy go up or down?",
                 (run.removal_results_path,)),
        _section(inputs, "lds", "Linear datamodeling score", sections.lds_section(*lds, run_dir),
                 "How well the raw (counterfactual) scores predict the margins of models retrained on random "
                 "half-size subsets.",
                 tuple(run.lds_results())),
    ]
    return _page(run, "".join(body), payload.embed_json(data))


def _section(inputs: ReportInputs, anchor: str, title: str, body: str, lead: str, primary: tuple[Path, ...]) -> str:
    """A section with its gaps first; without its "not produced yet" note where its main inputs were lost."""
    return sections.section(anchor, title, inputs.notes(anchor) + ("" if inputs.lost(anchor, primary) else body),
                            lead)


def _explorer_shell(data: dict[str, Any], run_dir: str) -> str:
    if data["explorer"] is None:
        return sections.missing("trakscope run", run_dir, "TRAK scores (scores/test.npy)")
    return '<div id="explorer-app" class="app"></div>'


def _suspects_shell(data: dict[str, Any], run_dir: str) -> str:
    if data["suspects"] is None:
        return sections.missing("trakscope detect", run_dir, "suspect ranking (detect/ranking.csv)")
    return '<div id="suspects-app" class="app"></div>'


def _page(run: RunFolder, body: str, data_json: str) -> str:
    script = _static("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "img-src data: blob:; connect-src 'none'; form-action 'none'; base-uri 'none'")
    title = f"trakscope · {run.config.data.dataset} · {run.path.name}"
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("summary", "Summary"), ("explorer", "Explorer"), ("suspects", "Suspects"), ("detection", "Detection"),
        ("removal", "Removal"), ("lds", "LDS")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_static("report.css")}</style></head>
<body><header><div class="brand">trakscope</div><div class="run" title="{esc(run.path)}">{esc(title)}</div>
<nav>{nav}</nav></header><main>{body}</main>
<footer>Generated by trakscope on {esc(time.strftime("%Y-%m-%d %H:%M"))} from <code>{esc(run.path)}</code>.</footer>
<script type="application/json" id="report-data">{data_json}</script>
<script>{script}</script></body></html>
"""


def write_report(run_dir: Path | str, k: int = DEFAULT_K) -> Path:
    """Build ``<run_dir>/report/index.html`` (atomically) and return its path (:func:`build_report` without gaps)."""
    return build_report(run_dir, k)[0]


def build_report(run_dir: Path | str, k: int = DEFAULT_K) -> tuple[Path, list[Gap]]:
    """Build ``<run_dir>/report/index.html`` (atomically).

    Returns:
        Its path, and every input that is missing or damaged (each named on the page in its section).
    """
    run = RunFolder(run_dir)
    inputs = ReportInputs(run)
    page = render(run, k, inputs)
    out = run.report_path
    with atomic_path(out, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    run.integrity.seal(out)
    return out, inputs.all_gaps()


__all__ = ["DEFAULT_K", "build_data", "build_report", "render", "write_report"]
