"""User-given groups (``--groups FILE``): a CSV mapping validation (and optionally test) examples to a group.

The file has a ``group`` column (a name or an int) and identifies each example by ``source_id`` (stable ids in the
source dataset, looked up in the val and test splits) or by ``index`` (the row of ``data/val.csv``, or of
``data/test.csv`` when a ``split`` column says ``test``). Every validation example needs a row (D3M's groups);
test rows are optional, and when every test example has one, removal reports worst-group accuracy on them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..io import read_csv
from ..run_folder import RunFolder

SPLITS = ("val", "test")


class GroupsError(ValueError):
    """The groups file is unreadable, names unknown examples, or leaves validation examples without a group."""


def read_groups(run: RunFolder, path: Path | str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """``(val_groups int64 [n_val], test_groups int64 [n_test] or None, group names)`` from a groups CSV.

    Group ids are positions in the sorted list of names (ints sort as numbers), shared by both splits.

    Raises:
        GroupsError: a missing column, an unknown id, a duplicate, or validation examples without a row.
    """
    path = Path(path)
    if not path.is_file():
        raise GroupsError(f"--groups {path}: no such file (give classes, auto, or a CSV with a group column)")
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, csv.Error) as e:  # a binary file, or not CSV at all
        raise GroupsError(f"--groups {path} is not a text CSV file ({type(e).__name__}: {e}); give a CSV with a "
                          "group column and an index or source_id column") from e
    if not rows or "group" not in rows[0] or not ({"index", "source_id"} & set(rows[0])):
        raise GroupsError(f"{path} needs a `group` column and an `index` or `source_id` column")
    found = {split: _row_positions(run, split, rows, path) for split in SPLITS}
    names = _sorted_names({rows[r]["group"] for split in SPLITS for r in found[split].values()})
    ids = {name: g for g, name in enumerate(names)}
    assigned = {}
    for split in SPLITS:
        n = len(run.data.table(split)["index"])
        g = np.full(n, -1, dtype=np.int64)
        for pos, r in found[split].items():
            g[pos] = ids[rows[r]["group"]]
        assigned[split] = g
    missing = np.flatnonzero(assigned["val"] < 0)
    if len(missing):
        raise GroupsError(f"{path} gives no group for {len(missing)} of {len(assigned['val'])} validation examples "
                          f"(e.g. val index {missing[:5].tolist()}); every validation example needs one")
    test = assigned["test"] if (assigned["test"] >= 0).all() else None
    if test is None and (assigned["test"] >= 0).any():
        n_miss = int((assigned["test"] < 0).sum())
        raise GroupsError(f"{path} maps some test examples but not {n_miss} others; map all of them or none")
    return assigned["val"], test, names


def _row_positions(run: RunFolder, split: str, rows: list[dict], path: Path) -> dict[int, int]:
    """``{row of data/<split>.csv: row of the groups file}`` for the rows that name an example of ``split``."""
    table = run.data.table(split)
    by_id = {str(s): i for i, s in enumerate(table["source_id"])}
    out: dict[int, int] = {}
    for r, row in enumerate(rows):
        row_split = (row.get("split") or "").strip() or None
        if row_split is not None and row_split not in SPLITS:
            raise GroupsError(f"{path} row {r + 2}: split must be val or test, got {row_split!r}")
        if row_split not in (None, split):
            continue
        pos = _position(row, split, row_split, by_id, len(table["index"]), path, r)
        if pos is None:
            continue
        if pos in out:
            raise GroupsError(f"{path}: {split} example {pos} has two rows ({out[pos] + 2} and {r + 2})")
        out[pos] = r
    if split == "val":
        _check_known(rows, run, path)
    return out


def _position(row: dict, split: str, row_split: str | None, by_id: dict, n: int, path: Path, r: int) -> int | None:
    sid = (row.get("source_id") or "").strip()
    if sid:
        return by_id.get(sid)
    if row_split is None and split != "val":
        return None  # a bare index names a validation example
    try:
        pos = int(row["index"])
    except (KeyError, ValueError):
        raise GroupsError(f"{path} row {r + 2}: no source_id and no integer index") from None
    if not 0 <= pos < n:
        raise GroupsError(f"{path} row {r + 2}: {split} index {pos} is out of range (0..{n - 1})")
    return pos


def _check_known(rows: list[dict], run: RunFolder, path: Path) -> None:
    """Every ``source_id`` in the file names a val or test example."""
    known = {str(s) for split in SPLITS for s in run.data.table(split)["source_id"]}
    unknown = [row["source_id"] for row in rows if (row.get("source_id") or "").strip()
               and row["source_id"].strip() not in known]
    if unknown:
        raise GroupsError(f"{path}: {len(unknown)} source_id(s) are in neither the val nor the test split, e.g. "
                          f"{unknown[:3]}")


def _sorted_names(names: set[str]) -> list[str]:
    try:
        return [str(n) for n in sorted(names, key=int)]
    except ValueError:
        return sorted(names)
