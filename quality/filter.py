"""`c2f filter OUTPUT --where EXPR --out LIST`: pick samples by their report measures (the
condition language: quality/where.py) and write a subset file (shards/subset.py) that the reader
and `c2f pretrain --subset` accept. No shard is rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards.errors import UsageError
from shards.subset import write_subset

from .config import FilterConfig
from .where import select


def run(cfg: FilterConfig) -> int:
    from .output import open_output
    from .report import default_dir, fingerprint, load_summary
    from .table import read_csv

    out = Path(cfg.out)
    if out.suffix not in (".json", ".txt"):
        raise UsageError(f"--out {cfg.out}: name it .json (wids-compatible subset index) or .txt (key list)")
    report_dir = Path(cfg.report) if cfg.report else default_dir(cfg.output, "")
    summary = load_summary(report_dir)
    output = open_output(cfg.output)
    if summary.get("fingerprint") != fingerprint(output.manifest):
        raise UsageError(
            f"the report in {report_dir} describes other shards than {cfg.output} holds now: run `c2f report` again"
        )
    try:
        columns = read_csv(report_dir / "samples.csv")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {report_dir / 'samples.csv'}: {e}; run `c2f report` again") from None
    mask = select(cfg.where, columns)
    n, total = int(mask.sum()), mask.size
    write_subset(
        out,
        cfg.output,
        columns["key"][mask].tolist(),
        columns["shard"][mask].tolist(),
        columns["index"][mask].astype(np.int64).tolist(),
        {"where": cfg.where, "output": cfg.output, "fingerprint": summary["fingerprint"], "selected": n, "of": total},
    )
    print(f"filter: {n} of {total} samples ({100 * n / max(total, 1):.1f}%) match {cfg.where!r} -> {out}")
    if n:
        print(f"train on them: c2f pretrain {cfg.output} --subset {out}")
    return 0
