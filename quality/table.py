"""Per-image tables as CSV (`samples.csv`): one row per sample, one column per measure.

CSV because every tool reads it (pandas, a spreadsheet, awk) and it stays small at ImageNet scale
(~100 bytes a row). Undefined values (a mean score without instances) are empty cells.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from shards.writer import atomic_write_bytes

TEXT_COLUMNS = {"key", "shard", "synset"}


def _cell(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "" if math.isnan(v) else f"{v:.6g}"


def write_csv(path: str | Path, columns: dict[str, np.ndarray | list]) -> None:
    names = list(columns)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    w.writerows(zip(*([_cell(v) for v in columns[n]] for n in names), strict=True))
    atomic_write_bytes(path, buf.getvalue().encode())


def read_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns by name: text columns as str arrays, the rest as float64 (NaN for empty cells)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty")
    header, body = rows[0], rows[1:]
    if any(len(r) != len(header) for r in body):
        raise ValueError(f"{path}: rows of different lengths")
    cols = list(zip(*body, strict=True)) if body else [() for _ in header]
    out: dict[str, np.ndarray] = {}
    for name, values in zip(header, cols, strict=True):
        if name in TEXT_COLUMNS:
            out[name] = np.array(values, dtype=str)
        else:
            try:
                out[name] = np.array([float(v) if v else math.nan for v in values], dtype=np.float64)
            except ValueError:
                raise ValueError(f"{path}: column {name!r} holds a value that is not a number") from None
    return out
