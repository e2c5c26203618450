"""docs/architecture.md is true to the code: every module in one layer, imports only downwards, no import cycle.

How the document is read (keep to this when adding a module or a layer):
- The **layer table** has the header ``| layer | owns |``: one row per layer, lowest layer first.
- The **module table** has the header ``| layer | module | owns |``: one row per module. ``module`` is one
  backticked path relative to ``src/trakscope`` (``stages/run.py``, ``run_folder/__init__.py``); ``layer`` is a
  name from the layer table. A layer's rows sit together, in the layer table's order. Adding a module is adding
  one row among its layer's rows.
- Cells are split on ``|``; write a literal pipe in a cell as ``\\|``.

The rule checked: a module may import modules of its own layer and of the layers listed before it, never of a
layer listed after it. Every import counts: at the top or inside a function, relative or absolute. An import
names the module it reads from (``from ..data import load_dataset`` is ``data/__init__.py``); the parent
packages that Python also runs on the way are not counted. Imports made from a string (``importlib``) are not
seen. Within the package, no chain of imports may lead a module back to itself.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "trakscope"
DOC = ROOT / "docs" / "architecture.md"

# Imports that still break the layer rule or close an import cycle, each with the issue that removes it.
# The test fails once one of them is no longer a violation, so this list only shrinks: delete the entry then.
KNOWN: dict[tuple[str, str], str] = {}

LAYER_HEADER = ("layer", "owns")
MODULE_HEADER = ("layer", "module", "owns")


@dataclass(frozen=True)
class Layers:
    """What the document says: the layers lowest first, and each module's layer (``module -> layer``)."""

    order: tuple[str, ...]
    of: dict[str, str]


@dataclass(frozen=True)
class Edge:
    """One import inside the package: ``source`` (its line ``line``) reads from ``target``, both paths."""

    source: str
    line: int
    target: str


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row, stripped, with ``\\|`` kept as a literal pipe."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def tables(text: str) -> dict[tuple[str, ...], list[tuple[int, list[str]]]]:
    """Every Markdown table of ``text``: header -> its body rows as ``(line number, cells)``."""
    found: dict[tuple[str, ...], list[tuple[int, list[str]]]] = {}
    header: tuple[str, ...] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.lstrip().startswith("|"):
            header = None
        elif header is None:
            header = tuple(_cells(line))
            found[header] = []
        elif not set(line.replace("|", "").strip()) <= set("-: "):
            found[header].append((number, _cells(line)))
    return found


def read_layers(text: str) -> tuple[Layers, list[str]]:
    """The layers and modules the document names, and what is wrong with how it names them."""
    found = tables(text)
    if LAYER_HEADER not in found or MODULE_HEADER not in found:
        return Layers((), {}), [f"no table with header {h}" for h in (LAYER_HEADER, MODULE_HEADER) if h not in found]
    order = tuple(cells[0] for _, cells in found[LAYER_HEADER])
    of: dict[str, str] = {}
    problems: list[str] = []
    last = 0
    for number, cells in found[MODULE_HEADER]:
        layer, paths = cells[0], re.findall(r"`([^`]+)`", cells[1])
        if layer not in order:
            problems.append(f"line {number}: layer {layer!r} is not in the layer table")
            continue
        if len(paths) != 1:
            problems.append(f"line {number}: the module cell must hold one backticked path, not {cells[1]!r}")
            continue
        if order.index(layer) < last:
            problems.append(f"line {number}: {paths[0]} ({layer}) sits after the rows of a later layer")
        last = max(last, order.index(layer))
        if paths[0] in of:
            problems.append(f"line {number}: {paths[0]} is named twice ({of[paths[0]]} and {layer})")
        of.setdefault(paths[0], layer)
    return Layers(order, of), problems


def modules(root: Path) -> list[str]:
    """Every ``.py`` file of the package at ``root``, as a path relative to it (``stages/run.py``)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))


def coverage_problems(layers: Layers, present: list[str]) -> list[str]:
    """Modules the document leaves out, and modules it names that do not exist."""
    missing = [f"{m} is in no layer of docs/architecture.md" for m in present if m not in layers.of]
    return missing + [f"{m} is named in docs/architecture.md but does not exist" for m in layers.of
                      if m not in present]


def _module_path(dotted: str, present: set[str]) -> str | None:
    """``package.a.b`` -> ``a/b.py`` or ``a/b/__init__.py``, whichever exists; None if neither does."""
    parts = dotted.split(".")[1:]
    for path in ("/".join(parts) + ".py", "/".join([*parts, "__init__.py"])):
        if path in present:
            return path
    return None


def _dotted(source: str, package: str) -> list[str]:
    """The dotted name of the package that holds ``source`` (``stages/run.py`` -> ``[pkg, stages]``)."""
    parts = [package, *source.removesuffix(".py").split("/")]
    return parts[:-1]


def _targets(node: ast.Import | ast.ImportFrom, source: str, package: str) -> list[list[str]]:
    """What one import statement reads from inside ``package``: per imported name, the dotted modules it may be.

    ``from .x import y`` is ``[pkg.x.y, pkg.x]`` (the first that exists is meant), ``import pkg.a`` is ``[pkg.a]``;
    an import from outside the package gives ``[]``.
    """
    if isinstance(node, ast.Import):
        return [[a.name] for a in node.names if a.name.split(".")[0] == package]
    if node.level:
        base = _dotted(source, package)
        base = base[: len(base) - node.level + 1]
        if not base:
            return [[f"{package}.<beyond the package>"]]
        module = ".".join([*base, *([node.module] if node.module else [])])
    elif node.module and node.module.split(".")[0] == package:
        module = node.module
    else:
        return []
    return [[f"{module}.{a.name}", module] for a in node.names]


def imports(root: Path, source: str, present: set[str]) -> tuple[list[Edge], list[str]]:
    """Every import of ``source`` from its own package (any depth, any form), and those that resolve to nothing.

    ``present`` is the set of :func:`modules` of ``root``. An edge to the module itself is dropped.
    """
    package = root.name
    edges: list[Edge] = []
    unresolved: list[str] = []
    for node in ast.walk(ast.parse((root / source).read_text(), filename=source)):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for group in _targets(node, source, package):
            path = next((p for p in (_module_path(c, present) for c in group) if p), None)
            if path is None:
                unresolved.append(f"{source}:{node.lineno}: {group[-1]} is not a module of {package}")
            elif path != source:
                edges.append(Edge(source, node.lineno, path))
    return edges, unresolved


def all_imports(root: Path) -> tuple[list[Edge], list[str]]:
    """:func:`imports` of every module of the package at ``root``."""
    edges: list[Edge] = []
    unresolved: list[str] = []
    present = set(modules(root))
    for source in sorted(present):
        e, u = imports(root, source, present)
        edges, unresolved = edges + e, unresolved + u
    return edges, unresolved


def upward_imports(layers: Layers, edges: list[Edge], known: set[tuple[str, str]]) -> list[str]:
    """Each import from a layer listed after the importer's, as ``module:line imports target: layer < layer``."""
    rank = {name: i for i, name in enumerate(layers.order)}
    found = []
    for e in edges:
        if e.source not in layers.of or e.target not in layers.of or (e.source, e.target) in known:
            continue  # a module in no layer is reported by the coverage check
        low, high = layers.of[e.source], layers.of[e.target]
        if rank[high] > rank[low]:
            found.append(f"{e.source}:{e.line} imports {e.target}: layer {low!r} (#{rank[low] + 1}) may not import "
                         f"from layer {high!r} (#{rank[high] + 1}), listed after it")
    return found


def strongly_connected(edges: list[Edge], known: set[tuple[str, str]]) -> list[list[str]]:
    """The import cycles: groups of two or more modules that each reach the others (Tarjan), known edges left out."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if (e.source, e.target) not in known:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def cycle_problems(edges: list[Edge], known: set[tuple[str, str]]) -> list[str]:
    """One line per import cycle, naming its modules and the import lines that close it."""
    lines = []
    for group in strongly_connected(edges, known):
        inside = sorted(f"{e.source}:{e.line} -> {e.target}" for e in edges
                        if e.source in group and e.target in group and (e.source, e.target) not in known)
        lines.append(f"import cycle among {', '.join(group)}: {'; '.join(inside)}")
    return lines


def violations(layers: Layers, edges: list[Edge]) -> set[tuple[str, str]]:
    """Every ``(source, target)`` that is upward or inside a cycle, with nothing allow-listed."""
    rank = {name: i for i, name in enumerate(layers.order)}
    cyclic = {m: i for i, group in enumerate(strongly_connected(edges, set())) for m in group}
    upward = {(e.source, e.target) for e in edges if e.source in layers.of and e.target in layers.of
              and rank[layers.of[e.target]] > rank[layers.of[e.source]]}
    return upward | {(e.source, e.target) for e in edges
                     if e.source in cyclic and cyclic[e.source] == cyclic.get(e.target)}


# ---------------------------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def doc_layers() -> Layers:
    layers, problems = read_layers(DOC.read_text())
    assert not problems, "docs/architecture.md:\n" + "\n".join(problems)
    return layers


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    found, unresolved = all_imports(SRC)
    assert not unresolved, "\n".join(unresolved)
    return found


def test_every_module_is_in_exactly_one_layer(doc_layers: Layers):
    problems = coverage_problems(doc_layers, modules(SRC))
    assert not problems, "add a row to the module table of docs/architecture.md:\n" + "\n".join(problems)


def test_no_module_imports_from_a_layer_after_its_own(doc_layers: Layers, edges: list[Edge]):
    found = upward_imports(doc_layers, edges, set(KNOWN))
    assert not found, "\n".join(found)


def test_no_import_cycle(edges: list[Edge]):
    found = cycle_problems(edges, set(KNOWN))
    assert not found, "\n".join(found)


def test_every_known_exception_is_still_one(doc_layers: Layers, edges: list[Edge]):
    stale = set(KNOWN) - violations(doc_layers, edges)
    assert not stale, f"no longer a violation, delete from KNOWN in tests/test_architecture.py: {sorted(stale)}"


# ------------------------------------------------------------------------------ the checker on a made-up tree

TOY_DOC = """\
| layer | owns |
| --- | --- |
| base | files |
| top | the rest |

| layer | module | owns |
| --- | --- | --- |
| base | `__init__.py` | the package |
| base | `io.py` | writes (`a \\| b`) |
| base | `sub/__init__.py` | a subpackage |
| base | `sub/low.py` | low things |
| top | `cli.py` | the command line |
"""

TOY = {
    "__init__.py": "",
    "io.py": "import json\n",
    "sub/__init__.py": "",
    "sub/low.py": "from ..io import write\n",
    "cli.py": "from . import io\nfrom .sub import low\nimport toypkg.sub.low\n",
}


def toy_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package named ``toypkg`` under ``tmp_path`` holding ``files`` (path -> source)."""
    root = tmp_path / "toypkg"
    for path, source in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source)
    return root


def test_the_checker_passes_a_tree_that_keeps_the_rules(tmp_path: Path):
    root = toy_tree(tmp_path, TOY)
    layers, problems = read_layers(TOY_DOC)
    edges, unresolved = all_imports(root)
    assert problems == [] and unresolved == [] and layers.order == ("base", "top")
    assert {(e.source, e.target) for e in edges} == {
        ("sub/low.py", "io.py"), ("cli.py", "io.py"), ("cli.py", "sub/low.py")}
    assert coverage_problems(layers, modules(root)) == []
    assert upward_imports(layers, edges, set()) == [] and cycle_problems(edges, set()) == []


def test_the_checker_catches_an_upward_import_inside_a_function(tmp_path: Path):
    root = toy_tree(tmp_path, {**TOY, "sub/low.py": "import os\n\n\ndef f():\n    from .. import cli\n"})
    layers, _ = read_layers(TOY_DOC)
    edges, _ = all_imports(root)
    found = upward_imports(layers, edges, set())
    assert found == ["sub/low.py:5 imports cli.py: layer 'base' (#1) may not import from layer 'top' (#2), "
                     "listed after it"]
    assert upward_imports(layers, edges, {("sub/low.py", "cli.py")}) == []  # an allow-listed edge passes


def test_the_checker_catches_an_absolute_upward_import(tmp_path: Path):
    root = toy_tree(tmp_path, {**TOY, "io.py": "import toypkg.cli as c\n"})
    found = upward_imports(read_layers(TOY_DOC)[0], all_imports(root)[0], set())
    assert [f.split(":")[:2] for f in found] == [["io.py", "1 imports cli.py"]]


def test_the_checker_catches_a_module_missing_from_the_doc(tmp_path: Path):
    root = toy_tree(tmp_path, {**TOY, "sub/new.py": ""})
    problems = coverage_problems(read_layers(TOY_DOC)[0], modules(root))
    assert problems == ["sub/new.py is in no layer of docs/architecture.md"]


def test_the_checker_catches_a_named_module_that_does_not_exist(tmp_path: Path):
    root = toy_tree(tmp_path, {k: v for k, v in TOY.items() if k != "sub/low.py"})
    problems = coverage_problems(read_layers(TOY_DOC)[0], modules(root))
    assert problems == ["sub/low.py is named in docs/architecture.md but does not exist"]


def test_the_checker_catches_a_module_named_in_two_layers():
    doc = TOY_DOC + "| top | `io.py` | again |\n"
    _, problems = read_layers(doc)
    assert problems == ["line 13: io.py is named twice (base and top)"]


def test_the_checker_catches_rows_out_of_layer_order():
    doc = TOY_DOC + "| base | `late.py` | after the top layer's row |\n"
    _, problems = read_layers(doc)
    assert problems == ["line 13: late.py (base) sits after the rows of a later layer"]


def test_the_checker_catches_an_import_cycle(tmp_path: Path):
    root = toy_tree(tmp_path, {**TOY, "io.py": "def f():\n    from .sub.low import g\n"})
    edges, _ = all_imports(root)
    assert cycle_problems(edges, set()) == [
        "import cycle among io.py, sub/low.py: io.py:2 -> sub/low.py; sub/low.py:1 -> io.py"]
    assert cycle_problems(edges, {("io.py", "sub/low.py")}) == []
    assert violations(read_layers(TOY_DOC)[0], edges) == {("io.py", "sub/low.py"), ("sub/low.py", "io.py")}


def test_the_checker_reports_an_import_of_nothing(tmp_path: Path):
    root = toy_tree(tmp_path, {**TOY, "cli.py": "from .gone import x\n"})
    assert all_imports(root)[1] == ["cli.py:1: toypkg.gone is not a module of toypkg"]
