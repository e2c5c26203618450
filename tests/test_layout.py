"""One owner for the run folder: its layout document is generated from it, and no other module names its files."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

from trakscope.run_folder import layout_markdown

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "trakscope"
OWNERS = {*(SRC / "run_folder").glob("*.py"), SRC / "attribution" / "store.py"}  # the run folder, its TRAK store
NAMES = ("config.json", "timings.json", "classes.json", "thumbs_", "metrics.json", "probs_", "ranking.csv",
         "ranking.parquet", "folds.npy", "results.json", "accuracy_vs_fraction.png", "retrains/", "lds.json",
         "subsets/", "index.html", "_per_target.csv", "scores/", "models/", "detect/", "features/")
ELSEWHERE = {SRC / "models" / "hf.py"}  # Hugging Face's own config.json, not a run-folder file


def test_docs_run_folder_is_generated_from_the_layout():
    assert (ROOT / "docs" / "run-folder.md").read_text() == layout_markdown()


def string_literals(path: Path) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], t.string) for t in tokens if t.type == tokenize.STRING]


def test_no_module_but_the_run_folder_names_its_files():
    offenders = []
    for path in [*SRC.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        if path in OWNERS | ELSEWHERE:
            continue
        for line, text in string_literals(path):
            if text.lstrip("rbfuRBFU").startswith(('"""', "'''")) or " " in text:
                continue  # docstrings, help and messages may name files; a path literal has no spaces
            offenders += [f"{path.relative_to(ROOT)}:{line}: {name}" for name in NAMES if name in text]
    assert not offenders, "\n".join(offenders)
