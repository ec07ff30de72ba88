"""`c2f`: one console script, one subcommand per job. Heavy imports happen inside each command.

Every subcommand's flags come from config dataclasses (c2f.flags). Errors a user can cause
(shards.errors) print one line and exit 2 (usage) or 1 (data); anything else prints one line
too, and its traceback only with `c2f --debug …`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from c2fmae.probe import ProbeConfig
from c2fmae.train import TrainConfig
from labeler.config import GroundedConfig, LabelerConfig, PanopticConfig, SamConfig
from pipelines.distributor import PoolSettings
from pipelines.label import LabelConfig
from quality.config import CompareConfig, FilterConfig, ReportConfig
from shards.format import MAX_PIXELS

from .flags import add_flags, from_args


@dataclass
class ValidateConfig:
    paths: list[str] = field(
        metadata={"positional": True, "help": "shard directories (with manifest.json) or shard URLs"}
    )
    workers: int = field(default=2, metadata={"help": "parallel worker processes"})
    sample: int | None = field(
        default=None, metadata={"help": "decode-check only N random samples per shard (structure is always checked)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for --sample"})
    json: bool = field(default=False, metadata={"help": "print a machine-readable JSON report on stdout"})
    progress: bool = field(default=True, metadata={"help": "progress bar on stderr"})
    max_pixels: int = field(
        default=MAX_PIXELS,
        metadata={
            "help": "refuse to decode images and maps declaring more pixels (as `c2f label --max-pixels`; "
            "raise it for shards labeled with a larger limit)"
        },
    )


@dataclass
class InspectConfig:
    path: str = field(metadata={"positional": True, "help": "a shard (.tar) or a shard directory"})
    out: str = field(default="grid.png", metadata={"help": "where to write the PNG grid"})
    samples: int = field(default=8, metadata={"help": "samples in the grid"})
    seed: int = field(default=0, metadata={"help": "which samples: first N when 0, else a seeded random choice"})


def cmd_validate(cfg: ValidateConfig) -> int:
    from shards.errors import UsageError
    from shards.validate import format_table, validate

    if cfg.workers < 1 or (cfg.sample is not None and cfg.sample < 0) or cfg.max_pixels < 1:
        raise UsageError("--workers and --max-pixels must be >= 1 and --sample >= 0")
    t0 = time.perf_counter()
    report = validate(
        cfg.paths, cfg.workers, cfg.sample, cfg.seed, progress=cfg.progress and not cfg.json, max_pixels=cfg.max_pixels
    )
    if cfg.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_table(report, time.perf_counter() - t0))
    return 0 if report.ok else 1


def cmd_inspect(cfg: InspectConfig) -> int:
    from shards.inspect import inspect

    print(inspect(cfg.path, cfg.out, cfg.samples, cfg.seed))
    return 0


LABEL_GROUPS = {
    LabelConfig: None,
    PoolSettings: "Ray cluster",
    LabelerConfig: "labeler",
    SamConfig: "SAM (preset sam)",
    PanopticConfig: "panoptic (preset panoptic)",
    GroundedConfig: "text-prompted (presets grounded, sam3)",
}


def cmd_report(cfg: ReportConfig) -> int:
    from quality.report import run

    return run(cfg)


def cmd_compare(cfg: CompareConfig) -> int:
    from quality.compare import run

    return run(cfg)


def cmd_filter(cfg: FilterConfig) -> int:
    from quality.filter import run

    return run(cfg)


def cmd_label(
    job: LabelConfig,
    pool: PoolSettings,
    labeler: LabelerConfig,
    sam: SamConfig,
    panoptic: PanopticConfig,
    grounded: GroundedConfig,
) -> int:
    from labeler.config import Settings
    from pipelines.label import run

    return run(job, pool, Settings(labeler, sam, panoptic, grounded))


def cmd_pretrain(cfg: TrainConfig) -> int:
    from c2fmae.train import run

    return run(cfg)


def cmd_probe(cfg: ProbeConfig) -> int:
    from c2fmae.probe import run

    return run(cfg)


@dataclass(frozen=True)
class Command:
    configs: dict[type, str | None]  # config dataclass -> --help heading (None: the command's own)
    run: Callable[..., int]  # gets one instance of each config, in order
    help: str


COMMANDS = {
    "validate": Command({ValidateConfig: None}, cmd_validate, "check shards against the format and the manifest"),
    "inspect": Command({InspectConfig: None}, cmd_inspect, "render a grid of samples with their masks, and stats"),
    "report": Command(
        {ReportConfig: None}, cmd_report, "measure label quality over a whole output: report/ (HTML, JSON, Parquet)"
    ),
    "compare": Command(
        {CompareConfig: None}, cmd_compare, "agreement of two outputs of one plan, per image and overall"
    ),
    "filter": Command(
        {FilterConfig: None},
        cmd_filter,
        "select samples by an SQL condition on the per-sample table into a subset file",
    ),
    "label": Command(LABEL_GROUPS, cmd_label, "label an image collection into shards with Ray"),
    "pretrain": Command(
        {TrainConfig: None}, cmd_pretrain, "pretrain C2FMAE on shards (one process; torchrun -m c2f pretrain for DDP)"
    ),
    "probe": Command({ProbeConfig: None}, cmd_probe, "kNN and linear probes of a checkpoint's frozen features"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="c2f", description="multi-granular pretraining datasets and C2FMAE")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        for cls, group in cmd.configs.items():
            add_flags(p, cls, group)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shards.errors import C2FError, first_line

    ns = build_parser().parse_args(argv)
    cmd = COMMANDS[ns.command]
    configs: list[Any] = [from_args(cls, ns) for cls in cmd.configs]
    try:
        return cmd.run(*configs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except C2FError as e:
        if ns.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the error boundary: one line, the traceback on --debug
        if ns.debug:
            raise
        print(f"error: {type(e).__name__}: {first_line(e)} (c2f --debug {ns.command} … shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
