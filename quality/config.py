"""Settings of `c2f report`, `c2f compare` and `c2f filter` (each field is a CLI flag, c2f.flags).

Kept apart from the modules that do the work so that building the CLI imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReportConfig:
    output: str = field(metadata={"positional": True, "help": "a labeled output directory (with manifest.json)"})
    out: str = field(default="", metadata={"help": "where to write the report (default: OUTPUT/report)"})
    workers: int = field(default=2, metadata={"help": "parallel worker processes (one shard each at a time)"})
    worst: int = field(default=6, metadata={"help": "worst images drawn per measure"})
    things: str = field(
        default="auto",
        metadata={
            "help": "semantic class ids that are objects, e.g. '0-79,90'; 'auto': the manifest's instance label "
            "space, else the categories of each image's instances (docs/QUALITY.md)"
        },
    )
    csv: bool = field(default=False, metadata={"help": "also write samples.csv (the samples.parquet table as CSV)"})
    progress: bool = field(default=True, metadata={"help": "progress bar on stderr"})


@dataclass
class CompareConfig:
    a: str = field(metadata={"positional": True, "help": "first labeled output (the one being judged)"})
    b: str = field(metadata={"positional": True, "help": "second labeled output of the same plan (the reference)"})
    out: str = field(default="", metadata={"help": "where to write the comparison (default: A/compare-<B's name>)"})
    matching: str = field(
        default="auto",
        metadata={
            "help": "how A's semantic classes map to B's: ids (same label space), names (same class names), "
            "hungarian (one-to-one, most shared pixels), auto (ids if the spaces are equal, else names if most "
            "names match, else hungarian)",
            "choices": ["auto", "ids", "names", "hungarian"],
        },
    )
    iou: float = field(default=0.5, metadata={"help": "mask IoU above which two instances match (>= 0.5)"})
    workers: int = field(default=2, metadata={"help": "parallel worker processes"})
    worst: int = field(default=6, metadata={"help": "most-disagreeing images drawn per measure"})
    progress: bool = field(default=True, metadata={"help": "progress bar on stderr"})


@dataclass
class FilterConfig:
    output: str = field(metadata={"positional": True, "help": "a labeled output directory"})
    where: str = field(
        default="",
        metadata={
            "help": "an SQL condition on the per-sample table (the report's measures if OUTPUT has a report, else "
            "the shards' tables), e.g. \"cls = 'n01440764' AND instances > 3\" (docs/QUALITY.md)"
        },
    )
    out: str = field(
        default="subset.json",
        metadata={"help": "subset file to write: .json (wids-compatible subset index) or .txt (one key per line)"},
    )
    report: str = field(
        default="", metadata={"help": "the report directory (default: OUTPUT/report, when there is one)"}
    )
