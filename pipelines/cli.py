"""`c2f`: one console script, one subcommand per job. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from c2fmae.probe import ProbeConfig
from c2fmae.train import TrainConfig

from .flags import add_flags, from_args, opt
from .label import add_label_flags


@dataclass
class ValidateConfig:
    paths: list[str] = opt(positional=True, help="shard directories (with manifest.json) or shard URLs")
    workers: int = opt(2, help="parallel worker processes")
    sample: int | None = opt(None, help="decode-check only N random samples per shard (structure is always checked)")
    seed: int = opt(0, help="seed for --sample")
    json: bool = opt(False, help="print a machine-readable JSON report on stdout")
    progress: bool = opt(True, help="progress bar on stderr")


@dataclass
class InspectConfig:
    path: str = opt(positional=True, help="a shard (.tar) or a shard directory")
    out: str = opt("grid.png", help="where to write the PNG grid")
    samples: int = opt(8, help="samples in the grid")
    seed: int = opt(0, help="which samples: first N when 0, else a seeded random choice")


def cmd_validate(cfg: ValidateConfig) -> int:
    from shards.validate import format_table, validate

    if cfg.workers < 1 or (cfg.sample is not None and cfg.sample < 0):
        print("error: --workers must be >= 1 and --sample >= 0", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = validate(cfg.paths, cfg.workers, cfg.sample, cfg.seed, progress=cfg.progress and not cfg.json)
    if cfg.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_table(report, time.perf_counter() - t0))
    return 0 if report.ok else 1


def cmd_inspect(cfg: InspectConfig) -> int:
    from shards.inspect import InspectError, inspect

    try:
        print(inspect(cfg.path, cfg.out, cfg.samples, cfg.seed))
    except InspectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_label(ns: argparse.Namespace) -> int:
    from .label import configs_from_args, run

    return run(*configs_from_args(ns))


# name -> (flags, run, help). `flags` is a config dataclass (run gets an instance) or a function that
# adds the flags of several dataclasses itself (run gets the namespace).
def cmd_pretrain(cfg) -> int:
    from c2fmae.train import run

    return run(cfg)


def cmd_probe(cfg) -> int:
    from c2fmae.probe import run

    return run(cfg)


COMMANDS = {
    "validate": (ValidateConfig, cmd_validate, "check shards against the format and the manifest"),
    "inspect": (InspectConfig, cmd_inspect, "render a grid of samples with their masks, and stats"),
    "label": (add_label_flags, cmd_label, "label an image collection into shards with Ray"),
    "pretrain": (TrainConfig, cmd_pretrain, "pretrain C2FMAE on shards (single process; torchrun for DDP)"),
    "probe": (ProbeConfig, cmd_probe, "kNN and linear probes of a checkpoint's frozen features"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="c2f", description="multi-granular pretraining datasets and C2FMAE")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (flags, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        flags(p) if callable(flags) and not isinstance(flags, type) else add_flags(p, flags)
    ns = parser.parse_args(argv)
    flags, fn, _ = COMMANDS[ns.command]
    try:
        return fn(from_args(flags, ns) if isinstance(flags, type) else ns)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
