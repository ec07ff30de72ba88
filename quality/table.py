"""Per-image tables. The report's `samples.parquet`: every row of the shards' own tables
(shards/samples.py: one per input, packed or quarantined) extended with the report's measures,
the table `c2f filter` selects from; with `--csv`, the same as `samples.csv`. `c2f compare` writes
its per-image agreement as CSV (`write_csv`, `read_csv`).

Parquet because the field's tools read it typed and fast (pandas, polars, DuckDB: 1.28M rows in
tens of MB); CSV because every tool reads it (a spreadsheet, awk). Undefined values (a mean score
without instances, every measure of a quarantined input) are nulls, and empty cells in CSV.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from shards.samples import COLUMN_NAMES, PACKED, SampleRow
from shards.writer import atomic_write_bytes

from .measures import INT_COLUMNS, MEASURE_NAMES

TEXT_COLUMNS = {"key", "shard", "synset"}
# The report's table: the shard table's columns, then the measures it does not have.
REPORT_COLUMNS = list(COLUMN_NAMES) + [m for m in MEASURE_NAMES if m not in COLUMN_NAMES]
# What the report's pass knows better than the shard task did: the measures, and where the sample is.
MEASURED = {*MEASURE_NAMES, "index", "width", "height"}


def report_schema():
    """The shard tables' schema (shards.samples.schema) plus the measures: int64 counts, float64 shares."""
    import pyarrow as pa

    from shards.samples import schema

    base = schema()
    extra = [pa.field(m, pa.int64() if m in INT_COLUMNS else pa.float64()) for m in REPORT_COLUMNS[len(base) :]]
    return pa.schema(list(base) + extra, metadata={"c2f": "c2f-report-samples-v1"})


def extend(shard: str, rows: list[SampleRow] | None, measured: dict[str, np.ndarray], classes: list[str]) -> tuple:
    """One shard's rows of the report's table (an Arrow table): each row of its table with the
    measures of the sample (the maps' `coverage`, `instances`, `score` replace the shard task's);
    a measured sample the table lacks (no table: an output made before them) gets a row from its
    JSON. In key order, as the shards are."""
    import pyarrow as pa

    at = {k: i for i, k in enumerate(measured["key"].tolist())}
    out: dict[str, list] = {c: [] for c in REPORT_COLUMNS}

    def add(base: dict, i: int | None) -> None:
        for c in REPORT_COLUMNS:
            v = base.get(c)
            if i is not None and c in MEASURED:
                v = measured[c][i].item()
                v = None if isinstance(v, float) and math.isnan(v) else v
            out[c].append(v)

    seen = set()
    for r in rows or []:
        i = at.get(r.key) if r.status == PACKED else None
        if i is not None:
            seen.add(r.key)
        add(asdict(r), i)
    rest = [k for k in at if k not in seen]
    for k in rest:
        i = at[k]
        c = int(measured["cls_index"][i])
        base = {
            "key": k,
            "source": str(measured["source"][i]),
            "shard": shard,
            "index": int(measured["index"][i]),
            "cls": classes[c] if 0 <= c < len(classes) else None,
            "cls_index": c if c >= 0 else None,
            "status": PACKED,
        }
        add(base, i)
    table = pa.Table.from_pydict(out, schema=report_schema())
    return table.sort_by("key") if rows and rest else table


def write_parquet(path: str | Path, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def write_table_csv(path: str | Path, table) -> None:
    """An Arrow table as CSV: a header, strings quoted where needed, nulls as empty cells."""
    import pyarrow.csv as pcsv

    buf = io.BytesIO()
    pcsv.write_csv(table, buf, pcsv.WriteOptions(quoting_style="needed"))
    atomic_write_bytes(path, buf.getvalue())


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
