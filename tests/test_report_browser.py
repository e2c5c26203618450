"""The report in a real browser: Debian's headless Chromium driven by Playwright, from ``file://``.

Skips when ``/usr/bin/chromium`` or the ``playwright`` package is missing (``scripts/install-browser.sh``
installs Chromium). Screenshots go to pytest's tmp_path and, when ``TRAKSCOPE_ARTIFACTS`` is set, there too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trakscope.io import read_csv
from trakscope.report.html import write_report

try:  # tests/ is a package (tests/__init__.py) or a plain folder on sys.path
    from tests.test_report import CLASSES, XSS, make_run
except ImportError:
    from test_report import CLASSES, XSS, make_run

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOCAL_SCHEMES = ("file:", "data:", "blob:")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (run scripts/install-browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield b
        b.close()


class Page:
    """A page opened from ``file://`` that records console errors, page errors, requests and dialogs."""

    def __init__(self, browser, html: Path):
        self.context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)
        self.page.goto(html.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def indices(self, selector: str) -> list[int]:
        return [int(v) for v in self.page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.index)")]

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.dialogs == []
        assert [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)] == []


@pytest.fixture(scope="module")
def synth_report(tmp_path_factory):
    run_dir = make_run(tmp_path_factory.mktemp("browser") / "run", n_train=300, n_test=60)
    return run_dir, write_report(run_dir, k=24)


def save_artifact(path: Path) -> None:
    """Copy a screenshot to ``$TRAKSCOPE_ARTIFACTS`` when set."""
    dest = os.environ.get("TRAKSCOPE_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(dest) / path.name)


def test_page_loads_offline_without_console_errors(browser, synth_report):
    _, html = synth_report
    p = Page(browser, html)
    p.page.wait_for_selector("#pos-gallery .tile")
    p.page.wait_for_selector("#suspects-grid .tile")
    p.assert_clean()
    assert p.requests and all(u.startswith(LOCAL_SCHEMES) for u in p.requests)


def test_choosing_a_test_example_shows_exactly_its_top_k(browser, synth_report, tmp_path):
    run_dir, html = synth_report
    scores = np.load(run_dir / "scores/test.npy")
    p = Page(browser, html)
    p.page.select_option("#ex-k", "12")
    p.page.select_option("#ex-view", "raw")
    for j in (17, 0, 59):
        p.page.fill("#ex-index", str(j))
        p.page.dispatch_event("#ex-index", "change")
        assert p.indices("#query") == [j]
        assert p.indices("#pos-gallery .tile") == np.argsort(-scores[:, j], kind="stable")[:12].tolist()
        assert p.indices("#neg-gallery .tile") == np.argsort(scores[:, j], kind="stable")[:12].tolist()
    third = p.indices(".strip .pick")[2]
    p.page.click(".strip .pick:nth-child(3)")  # picking from the strip of matching test examples
    assert p.indices("#query") == [third]
    assert p.indices("#pos-gallery .tile") == np.argsort(-scores[:, third], kind="stable")[:12].tolist()
    p.page.screenshot(path=str(tmp_path / "explorer_synthetic.png"))
    p.assert_clean()


def test_view_toggle_reranks_the_lists_and_says_what_each_view_answers(browser, synth_report):
    run_dir, html = synth_report
    raw = np.load(run_dir / "scores/test.npy")
    relative = raw / np.sqrt(np.load(run_dir / "scores/self.npy"))[:, None]
    p = Page(browser, html)
    p.page.fill("#ex-index", "5")
    p.page.dispatch_event("#ex-index", "change")
    assert p.page.input_value("#ex-view") == "relative"  # the default view, chosen on val targets
    assert p.indices("#pos-gallery .tile") == np.argsort(-relative[:, 5], kind="stable")[:8].tolist()
    assert p.indices("#neg-gallery .tile") == np.argsort(relative[:, 5], kind="stable")[:8].tolist()
    assert p.page.text_content("#ex-view-note").startswith("view relative: relative influence")
    assert "(relative view)" in p.page.text_content("#pos-gallery h3")
    p.page.select_option("#ex-view", "raw")
    assert p.indices("#query") == [5]
    assert p.indices("#pos-gallery .tile") == np.argsort(-raw[:, 5], kind="stable")[:8].tolist()
    assert p.page.text_content("#ex-view-note").startswith("view raw: counterfactual")
    assert "(raw view)" in p.page.text_content("#neg-gallery h3")
    p.assert_clean()


def test_explorer_filters_by_class_and_misclassified(browser, synth_report):
    run_dir, html = synth_report
    label = np.array([int(r["label"]) for r in read_csv(run_dir / "data/test.csv")])
    pred = np.load(run_dir / "models/probs_test.npy").argmax(1)
    p = Page(browser, html)
    p.page.select_option("#ex-class", "2")
    shown = p.indices(".strip .pick")
    assert shown == np.flatnonzero(label == 2)[:24].tolist()
    p.page.check("#ex-mis")
    assert p.indices(".strip .pick") == np.flatnonzero((label == 2) & (pred != 2))[:24].tolist()
    assert p.indices("#query")[0] in np.flatnonzero((label == 2) & (pred != 2))
    p.assert_clean()


def test_suspects_grid_matches_ranking_csv_and_keep_list_downloads(browser, synth_report, tmp_path):
    run_dir, html = synth_report
    rows = read_csv(run_dir / "detect/ranking.csv")
    p = Page(browser, html)
    assert p.indices("#suspects-grid .tile") == [int(r["index"]) for r in rows][:48]  # rows are in self-influence order
    p.page.select_option("#sus-scorer", "loss")
    by_loss = sorted(rows, key=lambda r: int(r["loss_rank"]))
    assert p.indices("#suspects-grid .tile") == [int(r["index"]) for r in by_loss][:48]
    p.page.select_option("#sus-class", "3")
    assert p.indices("#suspects-grid .tile") == [int(r["index"]) for r in by_loss if r["label"] == "3"][:48]
    p.page.fill("#sus-flag", "10")
    p.page.dispatch_event("#sus-flag", "change")
    with p.page.expect_download() as dl:
        p.page.click("#sus-download")
    path = tmp_path / "keep.csv"
    dl.value.save_as(path)
    listed = read_csv(path)
    kept = [int(r["index"]) for r in listed if r["split"] == "train"]
    dropped = {int(r["index"]) for r in by_loss[:10]}
    assert len(kept) == len(rows) - 10 and not dropped & set(kept)
    # as `trakscope export`: the validation split carved from the same pool follows, so retraining loses only the drop
    val = read_csv(run_dir / "data/val.csv")
    assert [(r["index"], r["source_id"], r["label"]) for r in listed if r["split"] == "val"] == \
        [(r["index"], r["source_id"], r["label"]) for r in val] and len(listed) == len(kept) + len(val)
    p.assert_clean()


def test_class_names_render_as_text_never_as_markup(browser, synth_report):
    run_dir, html = synth_report
    label = np.array([int(r["label"]) for r in read_csv(run_dir / "data/test.csv")])
    p = Page(browser, html)
    j = int(np.flatnonzero(label == 1)[0])
    p.page.fill("#ex-index", str(j))
    p.page.dispatch_event("#ex-index", "change")
    assert f"label: {XSS}" in p.page.inner_text("#query")
    assert XSS in p.page.inner_text("#summary")
    p.page.select_option("#sus-class", "1")
    assert XSS in p.page.inner_text("#suspects-grid")
    options = p.page.eval_on_selector_all("#ex-class option", "os => os.map(o => o.textContent)")
    assert options[1:] == CLASSES
    # nothing was parsed as markup: no <img src=x>, no element whose whole text is "bold"
    assert p.page.locator("img[src=x]").count() == 0
    assert p.page.eval_on_selector_all("b", "bs => bs.filter(b => b.textContent === 'bold').length") == 0
    p.assert_clean()


def test_screenshot_of_a_real_run(browser, tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    html = write_report(run_dir)
    scores = np.load(run_dir / "scores/test.npy") / np.sqrt(np.load(run_dir / "scores/self.npy"))[:, None]
    p = Page(browser, html)
    p.page.select_option("#ex-k", "8")
    p.page.check("#ex-mis")  # a misclassified example is the interesting case
    j = p.indices("#query")[0]
    assert p.indices("#pos-gallery .tile") == np.argsort(-scores[:, j], kind="stable")[:8].tolist()  # relative
    p.page.locator("#explorer").scroll_into_view_if_needed()
    p.page.wait_for_timeout(200)  # sprite sheets decode asynchronously
    shot = tmp_path / "explorer.png"
    p.page.locator("#explorer").screenshot(path=str(shot))
    p.page.screenshot(path=str(tmp_path / "report_full.png"), full_page=True)
    assert shot.stat().st_size > 10_000
    save_artifact(shot)
    save_artifact(tmp_path / "report_full.png")
    p.assert_clean()
