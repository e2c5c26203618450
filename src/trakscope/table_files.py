"""User-facing tables as CSV or Parquet: one header, rows of Python values (int, float, str, None = empty/null)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .io import atomic_path, write_csv

FORMATS = ("csv", "parquet")


def write_parquet(path: Path | str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write ``rows`` as a Parquet table, atomically; each column's type is that of its Python values.

    A column of ints (None allowed) becomes int64 with nulls, floats float64, anything else strings.
    """
    import pyarrow as pa  # lazy: pyarrow is optional (the hf extra), needed only for --format parquet
    import pyarrow.parquet as pq

    columns = {name: [r[j] for r in rows] for j, name in enumerate(header)}
    table = pa.table({name: _arrow_column(values) for name, values in columns.items()})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def _arrow_column(values: list[Any]):
    import pyarrow as pa  # lazy: pyarrow is optional (the hf extra), needed only for --format parquet

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else int(v) for v in values], type=pa.int64())
    if present and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def write_rows(path: Path | str, header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "csv") -> None:
    """:func:`~trakscope.io.write_csv` (None written as an empty cell) or :func:`write_parquet`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        write_parquet(path, header, rows)
    else:
        write_csv(path, header, rows)
