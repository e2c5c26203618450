"""Progress for people and for logs: a tqdm bar on a terminal, a plain line now and then in a log file.

A bar redraws itself with ``\\r`` and cursor moves (``ESC[A``), which a terminal turns into one moving line and a
log file keeps as hundreds of garbled ones. So :func:`progress_bar` gives a tqdm bar only when stderr is a
terminal; otherwise a :class:`LogLines`, which prints a plain line such as
``featurize ckpt 0 train: 40% (80/200 ex), 0:30 elapsed, ~0:45 left`` at most once every :data:`LOG_EVERY_S`
seconds (all bars of the process together), and nothing for work that finishes sooner.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

# Seconds between two progress lines in a log (stderr not a terminal); TRAKSCOPE_PROGRESS_S overrides it.
LOG_EVERY_S = 30.0


def log_every_s() -> float:
    """:data:`LOG_EVERY_S`, or the ``TRAKSCOPE_PROGRESS_S`` environment variable where set to a number."""
    try:
        return float(os.environ["TRAKSCOPE_PROGRESS_S"])
    except (KeyError, ValueError):
        return LOG_EVERY_S


def on_terminal() -> bool:
    """Whether stderr, where progress goes, is a terminal (so that a redrawn bar shows as one line)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


_LAST_LINE = [time.monotonic()]  # when the process last printed a progress line (or started)


class LogLines:
    """The part of tqdm's interface trakscope uses, printing a plain line at most every :func:`log_every_s`.

    Args:
        iterable: iterate through it, counting one per item (``total`` defaults to its length).
        total: units of work (None: unknown, no percentage).
        desc: what is being done, first on the line.
        unit: name of a unit (``"ex"``).
    """

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it"):
        self.iterable, self.desc, self.unit, self.postfix = iterable, desc or "", unit, ""
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.n = 0
        self.start = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in () if self.iterable is None else self.iterable:
            yield item
            self.update(1)

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; print a line if the last one is :func:`log_every_s` seconds old."""
        self.n += n
        now = time.monotonic()
        if now - _LAST_LINE[0] >= log_every_s():
            _LAST_LINE[0] = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        """``desc: 40% (80/200 ex), 0:30 elapsed, ~0:45 left, loss=0.31`` (what is known of it)."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        counted = float(self.n).is_integer() and (self.total is None or float(self.total).is_integer())
        done = f"{self.n:,.0f} {self.unit}"
        if self.total:  # counts only where they are whole units (``run``'s overall bar weighs stages in floats)
            share = f"{100 * self.n / self.total:.0f}%"
            done = f"{share} ({self.n:,.0f}/{self.total:,.0f} {self.unit})" if counted else share
        parts = [done, f"{tqdm.format_interval(elapsed)} elapsed"]
        if self.total and 0 < self.n < self.total:
            parts.append(f"~{tqdm.format_interval(elapsed * (self.total - self.n) / self.n)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        """Nothing to clear: a log keeps its lines."""


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
                 disable: bool = False, **bar_options: Any) -> tqdm | LogLines:
    """A progress bar for ``iterable`` (or for ``total`` units counted with ``update``): tqdm's on a terminal, a
    :class:`LogLines` elsewhere. ``bar_options`` (``leave``, ``position``, ``bar_format``) shape the terminal bar
    only; ``disable`` (``--no-progress``, ranks other than 0) shows nothing at all.
    """
    if disable or on_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, **bar_options)
    return LogLines(iterable, total=total, desc=desc, unit=unit)
