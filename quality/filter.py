"""`c2f filter OUTPUT --where SQL --out LIST`: pick samples by an SQL condition on the per-sample
table (quality/query.py: DuckDB, no file access) and write a subset file (shards/subset.py) that the
reader and `c2f pretrain --subset` accept. No shard is rewritten.

The table is the report's `samples.parquet` (the shards' tables with every measure) when OUTPUT
has a report, else the shards' own tables (`{shard}.parquet`: class, size, instances, coverage,
score, status), so the common questions need no report at all.
"""

from __future__ import annotations

from pathlib import Path

from shards.errors import UsageError
from shards.location import is_local
from shards.subset import write_subset

from .config import FilterConfig
from .query import select


def shard_tables(output) -> object:
    """Every shard's table of `output` (quality.output.Output), as one Arrow table in shard order."""
    import pyarrow as pa

    from shards.samples import TableError, read_url, to_arrow, url_beside

    rows = []
    for url in output.shards:
        try:
            part = read_url(url_beside(url))
        except TableError as e:
            raise UsageError(f"{url_beside(url)}: {e}; run `c2f validate {output.path}`") from None
        if part is None:
            raise UsageError(
                f"{output.path} has no per-sample tables (an output made before them): run `c2f report "
                f"{output.path}` first, and filter on its table"
            )
        rows.append(to_arrow(part))
    return pa.concat_tables(rows)


def report_table(report_dir: Path, output) -> object | None:
    """The report's samples.parquet, when OUTPUT has a report (None: it has none); a report of other
    shards than OUTPUT holds now is refused."""
    import pyarrow.parquet as pq

    from .report import SAMPLES, fingerprint, load_summary

    if not (report_dir / "report.json").exists():
        return None
    summary = load_summary(report_dir)
    if summary.get("fingerprint") != fingerprint(output.manifest):
        raise UsageError(
            f"the report in {report_dir} describes other shards than {output.path} holds now: run `c2f report` again"
        )
    try:
        return pq.read_table(report_dir / SAMPLES)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {report_dir / SAMPLES}: {e}; run `c2f report` again") from None


def run(cfg: FilterConfig) -> int:
    from .output import open_output
    from .report import default_dir, fingerprint

    out = Path(cfg.out)
    if out.suffix not in (".json", ".txt"):
        raise UsageError(f"--out {cfg.out}: name it .json (wids-compatible subset index) or .txt (key list)")
    output = open_output(cfg.output)
    report_dir = Path(cfg.report) if cfg.report else (default_dir(cfg.output, "") if is_local(cfg.output) else None)
    if cfg.report and not (report_dir / "report.json").exists():
        raise UsageError(f"no report at {report_dir}: run `c2f report` first")
    table = report_table(report_dir, output) if report_dir is not None else None
    source = "the report's measures" if table is not None else "the shards' tables"
    if table is None:
        table = shard_tables(output)
    picked, total = select(cfg.where, table)
    listed = {s.name for s in output.manifest.shards}
    shards = picked.column("shard").to_pylist()
    if any(s not in listed for s in shards):
        raise UsageError(
            f"the per-sample table names shards the manifest does not list: run `c2f validate {cfg.output}`"
        )
    n = picked.num_rows
    write_subset(
        out,
        cfg.output,
        output.manifest.shards,
        picked.column("key").to_pylist(),
        shards,
        picked.column("index").to_pylist(),
        {
            "where": cfg.where,
            "output": cfg.output,
            "fingerprint": fingerprint(output.manifest),
            "selected": n,
            "of": total,
        },
    )
    print(f"filter: {n} of {total} samples ({100 * n / max(total, 1):.1f}%) match {cfg.where!r} ({source}) -> {out}")
    if n:
        print(f"train on them: c2f pretrain {cfg.output} --subset {out}")
    return 0
