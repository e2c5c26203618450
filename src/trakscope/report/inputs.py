"""The report's inputs, read so that none is lost quietly: a file the run folder once held (``manifest.json``
records it) that is now missing, or one that is damaged or unreadable, is a :class:`Gap`, named in the section it
would fill with the command that remakes it, and again as a warning by ``trakscope report``.

A stage that has not run is no gap: its section says which command produces it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..manifest import Manifest
from ..run_folder import RunError, RunFolder
from .sections import gap_note

T = TypeVar("T")
READ_ERRORS = (RunError, ValueError, OSError, EOFError, KeyError, TypeError, IndexError, json.JSONDecodeError)


@dataclass(frozen=True)
class Gap:
    """An input of the report that is missing or damaged.

    Attributes:
        file: its path relative to the run folder (``detect/metrics.json``).
        problem: ``"missing"`` or ``"damaged (why)"``.
        command: the complete command line that remakes it (``trakscope detect --run DIR``).
        report: the command that rebuilds the report afterwards.
    """

    file: str
    problem: str
    command: str
    report: str

    def line(self) -> str:
        """One line for the terminal: ``detect/metrics.json is missing; remake it with `...`, then rerun `...```."""
        return f"{self.file} is {self.problem}; remake it with `{self.command}`, then rerun `{self.report}`"


class ReportInputs:
    """Reads each input of the report once, recording a :class:`Gap` per section for each one missing or damaged.

    Args:
        run: the run folder the report is made from.
    """

    def __init__(self, run: RunFolder):
        self.run = run
        self.recorded = set(Manifest(run.manifest_path).files())
        self.gaps: dict[str, list[Gap]] = {}
        self.loaded: set[Path] = set()

    def problem(self, path: Path) -> str | None:
        """``"missing"`` (recorded as written, now absent), ``"damaged (why)"`` (not what was recorded), else None."""
        if not path.exists():
            return "missing" if self.run.relative(path) in self.recorded else None
        found = self.run.integrity.damage(path)
        return None if found is None else f"damaged ({found})"

    def read(self, sections: str | tuple[str, ...], path: Path, reader: Callable[[], T]) -> T | None:
        """``reader()`` where ``path`` is whole; None where it is absent, or missing or damaged (then a gap in each
        of ``sections``, the report sections that it would fill)."""
        problem = self.problem(path)
        if problem is None and path.exists():
            try:
                value = reader()
            except READ_ERRORS as e:
                problem = f"damaged ({_short(e)})"
            else:
                self.loaded.add(path)
                return value
        if problem is not None:
            self.add(sections, path, problem)
        return None

    def result(self, section: str, path: Path, kind: str) -> dict[str, Any] | None:
        """A stage's JSON result (:meth:`RunFolder.read_result`), or None (a gap where it is missing or damaged)."""
        return self.read(section, path, lambda: self.run.results.read(path, kind))

    def add(self, sections: str | tuple[str, ...], path: Path, problem: str) -> None:
        """Record that ``path`` is ``problem`` in each of ``sections``."""
        gap = Gap(self.run.relative(path), problem, self.run.command(self.run.producer(path)),
                  self.run.command("report"))
        for section in (sections,) if isinstance(sections, str) else sections:
            if gap not in self.gaps.setdefault(section, []):
                self.gaps[section].append(gap)

    def notes(self, section: str) -> str:
        """The HTML notes of a section's gaps (every value escaped)."""
        return "".join(gap_note(g) for g in self.gaps.get(section, []))

    def lost(self, section: str, primary: tuple[Path, ...]) -> bool:
        """Whether the section's main inputs are gone: one of ``primary`` is a gap and none of them was read."""
        gapped = {g.file for g in self.gaps.get(section, [])}
        return any(self.run.relative(p) in gapped for p in primary) and not any(p in self.loaded for p in primary)

    def all_gaps(self) -> list[Gap]:
        """Every gap once, in the order they were found."""
        seen: dict[str, Gap] = {}
        for gaps in self.gaps.values():
            for g in gaps:
                seen.setdefault(g.file, g)
        return list(seen.values())


def _short(error: BaseException, limit: int = 160) -> str:
    """An error as a short reason: its first line, without the remedy a RunError appends."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = text.split("; rerun `")[0].split("; run `")[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
