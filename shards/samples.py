"""Per-sample tables: `{shard}.parquet` beside each tar, one row per input the shard task was given.

The tar holds what a trainer reads; the table holds what a person asks about it (class, size,
instances, labeled coverage, mean instance score, packed or quarantined and why, where the time
went), in the form the field's tools read directly: pandas, polars, DuckDB, Spark, `ray.data`
(`duckdb -c "SELECT status, count(*) FROM 'out/*.parquet' GROUP BY ALL"`). Readers of the tars never
open it, so adding it changed nothing for them.

`SampleRow` is the contract: its fields are the table's columns, in order, and the Arrow schema is
made from it (`schema()`); the shard task writes it (pipelines/worker.py), `c2f validate` holds it
to its tar (same keys in the same order, the same facts as each sample's JSON and maps), and
`c2f report` extends it with its measures. pyarrow is imported where a table is made or read.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import format as fmt
from .errors import first_line
from .format import display
from .location import read_bytes

PACKED = "packed"  # in the shard's tar, at `index`
QUARANTINED = "quarantined"  # in no shard: `stage` and `reason` say why (also in quarantine.jsonl)
STATUSES = (PACKED, QUARANTINED)
STAGE_TIMES = ("read", "decode", "label_wait", "pack", "write")  # the shard task's per-image stages (`*_ms`)
TABLE_KIND = "c2f-samples-v1"  # the Parquet file's `c2f` schema metadata


def _doc(text: str) -> Any:
    return field(metadata={"doc": text})


@dataclass
class SampleRow:
    """One row of a shard's table: one input the plan gave the shard. docs/FORMAT.md lists the
    columns with these same words."""

    key: str = _doc("the sample key (docs/FORMAT.md, Keys)")
    source: str = _doc("path of the input relative to the input root (bytes that are not UTF-8 as `\\udcXX`)")
    shard: str = _doc("the shard the plan gave the input to (`{prefix}-NNNNNN.tar`), as in quarantine.jsonl")
    index: int | None = _doc("position of the sample in its tar (what wids addresses); null when quarantined")
    cls: str | None = _doc("image-level class: the synset (ImageNet folder) or class name; null without classes")
    cls_index: int | None = _doc("index of `cls` in the plan's class list (`.cls`)")
    status: str = _doc("`packed` (in the tar) or `quarantined` (in quarantine.jsonl)")
    stage: str | None = _doc("quarantined: the stage that refused it (read, decode, label, pack)")
    reason: str | None = _doc("quarantined: why, in one line")
    input_bytes: int | None = _doc("size of the input file as read (as listed when it could not be read)")
    width: int | None = _doc("image width in pixels (null when quarantined, as every fact below)")
    height: int | None = _doc("image height in pixels")
    instances: int | None = _doc("instances in `inst.png`")
    coverage: float | None = _doc("share of pixels with a semantic class (not the ignore value)")
    score: float | None = _doc("mean of the instances' scores as the JSON stores them; null without instances")
    read_ms: float | None = _doc("milliseconds reading the input")
    decode_ms: float | None = _doc("milliseconds decoding (and re-encoding) it")
    label_wait_ms: float | None = _doc("the shard task's wait for its batch's labels, shared out per image")
    pack_ms: float | None = _doc("milliseconds encoding the maps and the JSON")
    write_ms: float | None = _doc("milliseconds writing the members into the tar")


@functools.cache
def columns() -> tuple[tuple[str, type, bool], ...]:
    """(name, Python type, nullable) of every column, in order."""
    hints = typing.get_type_hints(SampleRow)
    out = []
    for f in dataclasses.fields(SampleRow):
        args = typing.get_args(hints[f.name])
        nullable = type(None) in args
        tp = next(a for a in args if a is not type(None)) if args else hints[f.name]
        out.append((f.name, tp, nullable))
    return tuple(out)


COLUMN_NAMES = tuple(f.name for f in dataclasses.fields(SampleRow))


def schema():
    """The Arrow schema of a shard table (strings, int64, float64; nullable where the row says)."""
    import pyarrow as pa

    arrow = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    return pa.schema(
        [pa.field(n, arrow[tp], nullable=nullable) for n, tp, nullable in columns()],
        metadata={"c2f": TABLE_KIND},
    )


# --- facts of one packed sample ---------------------------------------------------------------


def coverage(semantic: np.ndarray) -> float:
    """Share of a semantic map's pixels that are not the ignore value (the dtype's largest value,
    docs/FORMAT.md; also right on a big-endian view of a 16-bit map: 0xFFFF reads the same)."""
    if semantic.size == 0:
        return math.nan
    ignore = 255 if semantic.dtype.itemsize == 1 else 65535
    return 1.0 - int(np.count_nonzero(semantic == ignore)) / semantic.size


def mean_score(scores: Iterable[float]) -> float | None:
    """Mean instance score as the JSON stores each (4 decimals), so a reader of the JSON gets the same."""
    s = [round(float(x), 4) for x in scores]
    return float(np.mean(s)) if s else None


# --- building a shard's table ---------------------------------------------------------------


@dataclass
class Packed:
    """What the shard task knows of a sample once it is in the tar."""

    index: int
    width: int
    height: int
    instances: int
    coverage: float
    score: float | None


@dataclass
class InputRef:
    """An input as the plan gave it to the shard (pipelines.plan.Item's fields that the table keeps)."""

    key: str
    source: str
    cls: str | None
    cls_index: int | None
    input_bytes: int | None


def shard_rows(
    shard: str,
    inputs: Sequence[InputRef],
    packed: dict[str, Packed],
    quarantined: dict[str, tuple[str, str]],
    times: dict[str, dict[str, float]],
) -> list[SampleRow]:
    """One row per input, in the plan's (key) order: packed ones with their facts, quarantined ones
    with (stage, reason); `times[key][stage]`: milliseconds per stage (`STAGE_TIMES`)."""
    rows = []
    for it in inputs:
        t = times.get(it.key, {})
        ms = {f"{s}_ms": (round(t[s], 3) if s in t else None) for s in STAGE_TIMES}
        p = packed.get(it.key)
        # Parquet strings are UTF-8: a file name that is not (PEP 383 surrogates) keeps its bytes as escapes.
        base = dict(key=it.key, source=display(it.source), shard=shard, cls=it.cls, cls_index=it.cls_index)
        base["input_bytes"] = it.input_bytes if it.input_bytes is None or it.input_bytes >= 0 else None
        if p is not None:
            rows.append(
                SampleRow(
                    **base,
                    index=p.index,
                    status=PACKED,
                    stage=None,
                    reason=None,
                    width=p.width,
                    height=p.height,
                    instances=p.instances,
                    coverage=p.coverage,
                    score=p.score,
                    **ms,
                )
            )
            continue
        # An input neither packed nor quarantined is a bug of the shard task: the row says so, and
        # `c2f validate` finds it missing from quarantine.jsonl.
        stage, reason = quarantined.get(it.key, (None, "neither packed nor quarantined by the shard task"))
        rows.append(
            SampleRow(
                **base,
                index=None,
                status=QUARANTINED,
                stage=stage,
                reason=display(reason),
                width=None,
                height=None,
                instances=None,
                coverage=None,
                score=None,
                **ms,
            )
        )
    return rows


def to_arrow(rows: Sequence[SampleRow]):
    import pyarrow as pa

    return pa.Table.from_pydict({n: [getattr(r, n) for r in rows] for n in COLUMN_NAMES}, schema=schema())


def table_bytes(rows: Sequence[SampleRow]) -> bytes:
    """The Parquet file of `rows` (zstd), ready for an atomic write (`shards.store.Store.write_bytes`)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(to_arrow(rows), buf, compression="zstd")
    return buf.getvalue()


# --- reading one back -------------------------------------------------------------------------


class TableError(ValueError):
    """A file that is not a c2f shard table: unreadable, or a column missing or of another type."""


def read_table(data: bytes, what: str = "table"):
    """A shard table's bytes -> an Arrow table with exactly `schema()`'s columns, in order. Columns
    a newer writer added are not read; a missing column, a type that does not cast (a number column
    holding text), a null in a required column, or more rows or text than the format's limits is a
    `TableError` naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = schema()
    try:
        meta = pq.read_metadata(pa.BufferReader(data))
        have = meta.schema.to_arrow_schema()
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a file that is not Parquet
        raise TableError(f"{what} is not a Parquet file: {first_line(e, 200)}") from None
    # What the file declares is checked before anything is decompressed: a zstd page of one repeated
    # value is a few KB for a gigabyte.
    if meta.num_rows > fmt.MAX_TABLE_ROWS:
        raise TableError(f"{what} declares {meta.num_rows} rows, more than {fmt.MAX_TABLE_ROWS}")
    for f in want:
        if f.name not in have.names:
            raise TableError(f"{what} has no column {f.name!r}")
    text = [f.name for f in want if f.type == pa.string() and pa.types.is_string(have.field(f.name).type)]
    try:
        # Text columns stay dictionary-encoded until their size is known (below).
        t = pq.read_table(pa.BufferReader(data), columns=list(want.names), read_dictionary=text)
    except Exception as e:  # noqa: BLE001
        raise TableError(f"{what} does not read: {first_line(e, 200)}") from None
    size = sum(_text_bytes(t.column(n)) for n in text)
    if size > fmt.MAX_TABLE_UNPACKED_BYTES:
        raise TableError(f"{what} holds {size} bytes of text, more than {fmt.MAX_TABLE_UNPACKED_BYTES}")
    cols = []
    for f in want:
        col = t.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise TableError(f"{what}: column {f.name!r} is {have.field(f.name).type}, not {f.type}") from None
        if not f.nullable and col.null_count:
            raise TableError(f"{what}: column {f.name!r} has {col.null_count} null(s)")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=want)


def _text_bytes(col) -> int:
    """Bytes a text column takes once its dictionary is expanded (without expanding it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 0
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            total += pc.sum(pc.take(pc.binary_length(chunk.dictionary), chunk.indices)).as_py() or 0
        else:
            total += chunk.nbytes
    return total


def read_rows(data: bytes, what: str = "table") -> list[SampleRow]:
    """A shard table's rows as `SampleRow`s; `TableError` as `read_table`, or for a `status` that is
    neither packed nor quarantined."""
    d = read_table(data, what).to_pydict()
    rows = [SampleRow(**dict(zip(COLUMN_NAMES, values, strict=True))) for values in zip(*d.values(), strict=True)]
    for r in rows:
        if r.status not in STATUSES:
            raise TableError(f"{what}: {r.key}: status {r.status[:20]!r} is neither {PACKED} nor {QUARANTINED}")
    return rows


def read_url(url: str) -> list[SampleRow] | None:
    """The table at `url` (local or any fsspec URL, at most `fmt.MAX_TABLE_BYTES`); None when it does
    not exist; `TableError` when it cannot be read or is not a shard table."""
    try:
        data = read_bytes(url, fmt.MAX_TABLE_BYTES)
    except (OSError, ValueError) as e:
        raise TableError(f"cannot read it: {e}") from None
    return None if data is None else read_rows(data, url.rstrip("/").rsplit("/", 1)[-1])


def url_beside(shard_url: str) -> str:
    """The table's URL beside the tar at `shard_url`."""
    head, _, name = shard_url.rpartition("/")
    return f"{head}/{fmt.table_name(name)}" if head else fmt.table_name(name)
