"""The HTML report: compact top-k payload, escaping, sprite sheets, tolerant sections, the CLI command."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trakscope.attribution.views import DEFAULT_VIEW, apply_view
from trakscope.config import DataConfig, RunConfig
from trakscope.io import read_csv, save_npy, write_csv, write_json
from trakscope.methods.topk import top_k
from trakscope.report import payload, sections
from trakscope.report.html import render, write_report
from trakscope.report.sprites import sprite_sheets
from trakscope.run_folder import RunFolder
from trakscope.stages.detect import Detection, quality_metrics, ranking_rows

XSS = "<img src=x onerror=alert(1)>"
CLASSES = ["zero", XSS, "two", 'a "quoted" & <b>bold</b>']


def make_run(path: Path, n_train: int = 150, n_test: int = 40, thumb: int = 16, seed: int = 0,
             detect: bool = True) -> Path:
    """A synthetic run folder per docs/run-folder.md: random scores, probabilities and thumbnails.

    Class 1 is named like an XSS payload; training labels have planted noise (10%); ``detect/`` is written
    with the detect stage's own ``ranking_rows`` / ``quality_metrics`` from random scorer outputs.
    """
    rng = np.random.default_rng(seed)
    run = RunFolder(path)
    run.initialize(RunConfig(data=DataConfig(dataset="digits", noise=0.1)))
    write_json(path / "data/classes.json", CLASSES)
    c = len(CLASSES)
    for split, n in (("train", n_train), ("val", 20), ("test", n_test)):
        true = rng.integers(0, c, n)
        label = true.copy()
        noisy = np.zeros(n, dtype=int)
        if split == "train":
            flip = rng.choice(n, n // 10, replace=False)
            label[flip] = (true[flip] + 1 + rng.integers(0, c - 1, len(flip))) % c
            noisy[flip] = 1
        ids = [f"{split}/{i}<x>.png" for i in range(n)]
        write_csv(path / f"data/{split}.csv", ["index", "source_id", "label", "true_label", "noisy"],
                  [[i, ids[i], label[i], true[i], noisy[i]] for i in range(n)])
        thumbs = rng.integers(0, 256, (n, thumb, thumb, 3), dtype=np.uint8)
        thumbs[:, : thumb // 2, : thumb // 2] = (true * 60)[:, None, None, None].astype(np.uint8)
        save_npy(path / f"data/thumbs_{split}.npy", thumbs)
        save_npy(path / f"models/probs_{split}.npy", rng.dirichlet(np.ones(c), n).astype(np.float32))
    save_npy(path / "scores/test.npy", rng.normal(size=(n_train, n_test)).astype(np.float32))
    save_npy(path / "scores/self.npy", rng.uniform(0.1, 10.0, n_train).astype(np.float32))
    seal_all(run)  # written by hand here: recorded as trakscope's stages record theirs
    run.results.write(run.metrics_path, "model_metrics",
                     {"models": [], "ensemble": {"val_acc": 0.91, "test_acc": 0.875}})
    write_json(path / "timings.json", {"train": 12.5, "featurize": 3.25})
    if detect:
        write_detection(run, rng)
        run.results.write(run.removal_results_path, "removal_results", removal_results(rng))
        write_lds(run, rng, n_test)
    seal_all(run)
    return path


def seal_all(run: RunFolder) -> None:
    """Record every file of the synthetic folder in its integrity record (unrecorded files are never read)."""
    records = {run.manifest_path, run.manifest_copy_path, run.lock_path}
    run.integrity.seal(*(p for p in sorted(run.path.rglob("*")) if p.is_file() and p not in records))


def write_lds(run: RunFolder, rng: np.random.Generator, n_test: int) -> None:
    """``lds.json`` with its per-target CSV (the keys ``stages.lds.run_lds`` writes), and one comparison."""
    rho = rng.uniform(-0.2, 0.6, n_test)
    rho[0] = np.nan
    base = {"alpha": 0.5, "num_models": 20, "subset_seed": 0, "split": "test", "targets": n_test,
            "targets_defined": n_test - 1, "projector": "kronecker", "proj_dim": 2048, "checkpoints": 3}
    run.results.write(run.lds_path, "lds", {"lds_mean": float(np.nanmean(rho)), "lds_ci95": [0.1, 0.3],
                                           "scores_path": "scores/test.npy", **base})
    write_csv(run.lds_per_target_path(run.lds_path), ["index", "spearman"],
              [(i, "" if np.isnan(r) else f"{r:.6f}") for i, r in enumerate(rho)])
    run.results.write(run.lds_result_path("traker"), "lds", {"lds_mean": 0.123, "lds_ci95": [0.05, 0.2],
                                                            "scores_path": "/x/traker<1>.npy", **base})


def write_detection(run: RunFolder, rng: np.random.Generator) -> None:
    """``detect/ranking.csv`` and ``detect/metrics.json`` through the detect stage's writers."""
    n = len(run.data.table("train")["index"])
    scores = {name: rng.normal(size=n) for name in ("self_influence", "d3m", "loss")}
    det = Detection(scores, run.results.probs("train").argmax(1).astype(np.int64), {"groups": "classes", "n_groups": 4})
    header, rows = ranking_rows(run, det)
    write_csv(run.path / "detect/ranking.csv", header, rows)
    run.results.write(run.detect_metrics_path, "detect_metrics", quality_metrics(run, det))


@pytest.fixture
def synth_run(tmp_path):
    return make_run(tmp_path / "run")


def page_data(html: str) -> dict:
    """The JSON block of a rendered page."""
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def test_top_k_matches_a_full_argsort():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(57, 23)).astype(np.float32)
    tk = top_k(scores, 5, chunk=4)
    for j in range(scores.shape[1]):
        col = scores[:, j]
        assert tk["pos_idx"][j].tolist() == np.argsort(-col, kind="stable")[:5].tolist()
        assert tk["neg_idx"][j].tolist() == np.argsort(col, kind="stable")[:5].tolist()
        np.testing.assert_array_equal(tk["pos_score"][j], col[tk["pos_idx"][j]])
    assert np.all(np.diff(tk["pos_score"], axis=1) <= 0) and np.all(np.diff(tk["neg_score"], axis=1) >= 0)


def test_top_k_with_k_above_n_train_and_ties():
    scores = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    tk = top_k(scores, 10)
    assert tk["pos_idx"].shape == (2, 3)
    assert tk["pos_idx"][0].tolist() == [1, 0, 2]  # ties by training index, as a stable argsort
    assert tk["neg_idx"][1].tolist() == [0, 1, 2]


def test_embedded_json_cannot_close_the_script_and_round_trips():
    obj = {"name": "</script><script>alert(1)</script> & <!--", "x": [1, 2.5]}
    text = payload.embed_json(obj)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == obj


def test_sprite_sheets_keep_every_thumbnail_in_its_cell():
    rng = np.random.default_rng(2)
    thumbs = rng.integers(0, 256, (21, 8, 8, 3), dtype=np.uint8)
    out = sprite_sheets(thumbs, cols=4, fmt="PNG")
    assert out["size"] == 8 and len(out["sheets"]) == 2  # 16 per sheet
    sheets = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in out["sheets"]]
    for i in (0, 5, 15, 16, 20):
        s, cell = divmod(i, 16)
        r, c = divmod(cell, 4)
        np.testing.assert_array_equal(sheets[s][r * 8:(r + 1) * 8, c * 8:(c + 1) * 8], thumbs[i])
    assert sprite_sheets(thumbs, cols=4)["sheets"][0].startswith("data:image/jpeg;")  # noise: JPEG is far smaller
    flat = np.repeat(thumbs[:, :1, :1], 8, axis=1).repeat(8, axis=2)
    assert sprite_sheets(flat, cols=4)["sheets"][0].startswith("data:image/png;")


def test_page_escapes_every_class_name_and_embeds_exact_data(synth_run):
    html = render(RunFolder(synth_run))
    assert XSS not in html and "<b>bold</b>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # summary card, as text
    data = page_data(html)
    assert data["classes"] == CLASSES
    assert data["splits"]["train"]["source_id"][3] == "train/3<x>.png"
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert "Content-Security-Policy" in html and "connect-src &#x27;none&#x27;" in html


def test_explorer_payload_is_top_k_of_the_score_matrix_in_every_view(synth_run):
    data = page_data(render(RunFolder(synth_run), k=7))
    x = data["explorer"]
    raw = np.load(synth_run / "scores/test.npy")
    views = {"raw": raw, "relative": raw / np.sqrt(np.load(synth_run / "scores/self.npy"))[:, None]}
    assert sorted(x["views"]) == sorted(views) and x["default"] == DEFAULT_VIEW
    assert x["questions"]["raw"].startswith("counterfactual") and x["questions"]["relative"].startswith("relative")
    for view, scores in views.items():
        pos = np.frombuffer(base64.b64decode(x["views"][view]["pos_idx"]), "<i4").reshape(-1, x["k"])
        neg = np.frombuffer(base64.b64decode(x["views"][view]["neg_idx"]), "<i4").reshape(-1, x["k"])
        assert pos.shape == (40, 7)
        for j in (0, 13, 39):
            assert pos[j].tolist() == np.argsort(-scores[:, j], kind="stable")[:7].tolist()
            assert neg[j].tolist() == np.argsort(scores[:, j], kind="stable")[:7].tolist()
    assert not np.array_equal(np.argsort(-views["raw"], 0)[:7], np.argsort(-views["relative"], 0)[:7])


def test_explorer_without_self_influence_offers_the_raw_view_only(synth_run):
    (synth_run / "scores/self.npy").unlink()
    x = page_data(render(RunFolder(synth_run), k=5))["explorer"]
    assert list(x["views"]) == ["raw"] and x["default"] == "raw"


def test_suspects_follow_ranking_csv(synth_run):
    data = page_data(render(RunFolder(synth_run)))
    s = data["suspects"]
    assert set(s["scorers"]) == {"self_influence", "d3m", "loss"}
    csv_order = [int(r["index"]) for r in read_csv(synth_run / "detect/ranking.csv")]
    assert s["order"]["self_influence"] == csv_order  # the file is written in self-influence order


def test_missing_stages_say_which_command_produces_them(tmp_path):
    run_dir = make_run(tmp_path / "run", detect=False)
    (run_dir / "scores/test.npy").unlink()
    html = render(RunFolder(run_dir))
    for command in ("trakscope detect --run", "trakscope removal --run", "trakscope lds --run", "trakscope run --out"):
        assert f"<code>{command} " in html  # complete commands (`trakscope run --run DIR` was not one)
    assert '<div id="explorer-app"' not in html and '<div id="suspects-app"' not in html


def test_detection_section_has_curves_and_metrics(synth_run):
    html = render(RunFolder(synth_run))
    sec = html[html.index('<section id="detection">'):html.index('<section id="removal">')]
    assert 'alt="detection curves" src="data:image/svg+xml;base64,' in sec
    for name in ("self_influence", "d3m", "loss", "chance", "roc_auc", "average_precision"):
        assert name in sec


def removal_results(rng: np.random.Generator) -> dict:
    """A ``removal/results.json`` through the removal stage's own ``summarize``."""
    from trakscope.methods.removal import summarize

    results = [{"strategy": s, "fraction": f, "seed": seed, "n_removed": int(f * 150),
                "n_noisy_removed": int(f * 50), "test_acc": float(0.8 + rng.normal(0, 0.01))}
               for s in ("negative", "random") for f in (0.02, 0.1) for seed in (0, 1)]
    refs = [{"seed": s, "test_acc": 0.8 + 0.01 * s, "source": "ensemble member 0"} for s in (0, 1)]
    return summarize(results, refs, 150, 15)


def test_removal_section_plots_and_tabulates_every_row():
    results = removal_results(np.random.default_rng(3))
    rows = sections.removal_rows(results)
    assert len(rows) == 4 and [r["strategy"] for r in rows] == ["negative", "negative", "random", "random"]
    html = sections.removal_section(results, "RUN")
    assert 'alt="accuracy vs fraction removed" src="data:image/svg+xml;base64,' in html
    assert html.count("<tr>") == 1 + 1 + 4  # header, full data, one per row
    assert "missing" in sections.removal_section({"rows": []}, "RUN")


def test_lds_section_shows_every_result_and_the_per_target_histogram(synth_run):
    html = render(RunFolder(synth_run))
    sec = html[html.index('<section id="lds">'):]
    mean = json.loads((synth_run / "lds.json").read_text())["lds_mean"]
    assert f'<div class="v">{mean:.3f}</div>' in sec
    assert "lds/lds_traker.json" in sec and "/x/traker&lt;1&gt;.npy" in sec and "0.123" in sec
    assert 'alt="per-target LDS" src="data:image/svg+xml;base64,' in sec


def test_report_command_writes_index_html_and_prints_its_path(synth_run, capsys):
    from trakscope.cli import main

    assert main(["report", "--run", str(synth_run), "--top-k", "5"]) == 0
    out = capsys.readouterr().out.strip()
    assert Path(out) == (synth_run / "report/index.html").resolve()
    assert "report" in json.loads((synth_run / "timings.json").read_text())


def test_report_on_no_run_folder_is_a_clear_error(tmp_path, capsys):
    from trakscope.cli import main

    assert main(["report", "--run", str(tmp_path / "nothing")]) == 2
    assert "trakscope run" in capsys.readouterr().err


def test_report_of_a_real_tiny_run(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    path = write_report(run_dir, k=6)
    data = page_data(path.read_text())
    scores = np.load(run_dir / "scores/test.npy")
    pos = np.frombuffer(base64.b64decode(data["explorer"]["views"]["raw"]["pos_idx"]), "<i4").reshape(
        scores.shape[1], 6)
    assert pos[0].tolist() == np.argsort(-scores[:, 0], kind="stable")[:6].tolist()
    assert len(data["splits"]["train"]["label"]) == scores.shape[0]


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start:html.index("</section>", start)]


def _report(run_dir: Path, capsys) -> tuple[int, str, list[str]]:
    """``trakscope report`` on ``run_dir``: exit status, the page, and the lines written to stderr."""
    from trakscope.cli import main

    code = main(["report", "--run", str(run_dir)])
    return code, (run_dir / "report/index.html").read_text(), capsys.readouterr().err.splitlines()


def test_a_truncated_removal_result_is_named_in_its_section_with_the_command(synth_run, capsys):
    results = synth_run / "removal/results.json"
    results.write_bytes(results.read_bytes()[:200])
    code, html, err = _report(synth_run, capsys)
    sec = _section(html, "removal")
    assert "removal/results.json is damaged" in sec and "No remove-and-retrain results" not in sec
    assert f"<code>trakscope removal --run {synth_run}</code>" in sec
    assert code != 0 and len(err) == 1
    assert err[0].startswith("trakscope report: warning: removal/results.json is damaged (")
    assert err[0].endswith(f"; remake it with `trakscope removal --run {synth_run}`, then rerun "
                           f"`trakscope report --run {synth_run}`")
    assert all('class="missing gap"' not in _section(html, s) for s in ("summary", "detection", "lds"))


def test_a_deleted_detect_metrics_file_is_named_in_the_detection_section(synth_run, capsys):
    (synth_run / "detect/metrics.json").unlink()
    code, html, err = _report(synth_run, capsys)
    sec = _section(html, "detection")
    assert "detect/metrics.json is missing" in sec and f"<code>trakscope detect --run {synth_run}</code>" in sec
    assert 'alt="detection curves"' in sec  # what ranking.csv still gives is shown
    assert code != 0 and err == [f"trakscope report: warning: detect/metrics.json is missing; remake it with "
                                 f"`trakscope detect --run {synth_run}`, then rerun "
                                 f"`trakscope report --run {synth_run}`"]


def test_deleted_thumbnails_are_named_where_the_images_were(tiny_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    for split in ("train", "test"):
        (run_dir / f"data/thumbs_{split}.npy").unlink()
    code, html, err = _report(run_dir, capsys)
    assert page_data(html)["thumbs"] == {}
    for split, sections_named in (("train", ("explorer", "suspects")), ("test", ("explorer",))):
        for anchor in sections_named:
            assert f"data/thumbs_{split}.npy is missing" in _section(html, anchor)
        assert f"trakscope report: warning: data/thumbs_{split}.npy is missing; remake it with " \
               f"`trakscope run --out {run_dir}`, then rerun `trakscope report --run {run_dir}`" in err
    assert code != 0 and len(err) == 2
    whole = tmp_path / "whole"  # the undamaged run: no warning, status 0
    shutil.copytree(tiny_run, whole)
    code, html, err = _report(whole, capsys)
    assert code == 0 and err == [] and 'class="missing gap"' not in html and page_data(html)["thumbs"]


def test_view_top_k_in_chunks_is_top_k_of_the_whole_view():
    rng = np.random.default_rng(1)
    scores, self_inf = rng.normal(size=(50, 20)).astype(np.float32), rng.uniform(0.1, 5.0, 50)
    for view in ("raw", "relative"):
        whole = top_k(apply_view(scores, self_inf, view), 6)
        chunked = payload.view_top_k(scores, self_inf, view, 6, chunk=3)
        assert all(np.array_equal(whole[name], chunked[name]) for name in whole)


def test_accuracy_tables_write_fixed_decimals_not_scientific_notation_or_rounding_noise():
    from trakscope.methods.removal import summarize
    from trakscope.report import sections

    # differences of 0.0004 and of float noise (0.8 + 0.1 - 0.1 - 0.8) against the full-data model
    rows = [{"strategy": "loss", "fraction": f, "seed": s, "n_removed": 15, "n_noisy_removed": 5, "test_acc": acc}
            for f, acc in ((0.05, 0.8004), (0.1, 0.8 + 0.1 - 0.1)) for s in (0, 1)]
    part = sections.removal_section(summarize(rows, [{"seed": s, "test_acc": 0.8} for s in (0, 1)], 150, 15), "RUN")
    assert "e-0" not in part and "e-1" not in part and "-0.000" not in part
    assert "<td>0.000</td>" in part and "<td>0.800</td>" in part
    assert sections.fmt(4e-4) == "4.00e-04"  # elsewhere (scores, ridge) small values keep their digits
