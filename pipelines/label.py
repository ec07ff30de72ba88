"""The labeling job: input tree -> plan -> shards on Ray -> manifest -> validation.

`run` only wires the stages: plan (pipelines.plan), distribute (pipelines.distributor),
per-shard work (pipelines.worker), dataset files (shards.manifest), check (shards.validate).
Run it as `c2f label …` or, on a cluster, `ray job submit --working-dir . -- python -m c2f label …`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labeler.config import Settings
from shards import format as fmt
from shards.errors import DataError

from .distributor import PoolSettings

if TYPE_CHECKING:
    from shards.lease import OutputLease
    from shards.store import Store


@dataclass
class LabelConfig:
    input: str = field(
        metadata={
            "positional": True,
            "help": "images: an ImageNet-style tree (<wnid>/<file>), any folder, a .txt file list, or an fsspec URL",
        }
    )
    output: str = field(metadata={"positional": True, "help": "output directory for shards and manifest"})
    samples_per_shard: int = field(default=1000, metadata={"help": "images per shard; part of the plan"})
    prefix: str = field(default="c2f", metadata={"help": "shard name prefix: {prefix}-{index:06d}.tar"})
    estimate: int = field(
        default=0,
        metadata={
            "help": "label N images spread over INPUT in a temporary directory and print images/s, GPU-hours, "
            "storage and shard count for the whole input; OUTPUT is not touched (0: off)"
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "discard shards of a different plan in OUTPUT"})
    validate: bool = field(default=True, metadata={"help": "run `c2f validate` on the result"})
    max_pixels: int = field(
        default=fmt.MAX_PIXELS,
        metadata={
            "help": "refuse (quarantine) images whose header declares more pixels: an accepted pixel costs the "
            "labeler 70-320+ bytes (docs/LABELERS.md); the default admits every ImageNet-1K image"
        },
    )
    max_input_bytes: int = field(
        default=fmt.MAX_MEMBER_BYTES, metadata={"help": "refuse (quarantine) input files larger than this"}
    )
    lease_timeout: float = field(
        default=600.0,
        metadata={
            "help": "seconds without a heartbeat after which another job takes over OUTPUT's lease (the lease "
            "keeps a second job from writing into OUTPUT, on any machine; docs/RUNNING.md)"
        },
    )


def run(cfg: LabelConfig, pool: PoolSettings | None = None, settings: Settings | None = None) -> int:
    """The whole job; returns the exit code. User errors raise `shards.errors.UsageError`. The
    output's lease, taken by the job, is released however it ends."""
    try:
        return _job(cfg, pool, settings)
    except KeyboardInterrupt:
        if _LEASE is not None and _LEASE.lost:  # the heartbeat found the lease taken over and interrupted the job
            from shards.lease import LeaseLost

            raise LeaseLost(_LEASE.lost) from None
        raise
    finally:
        release_output()


def _job(cfg: LabelConfig, pool: PoolSettings | None = None, settings: Settings | None = None) -> int:
    from labeler.base import LabelerLoadError
    from labeler.presets_grounded import check_job
    from labeler.registry import PRESETS
    from shards.manifest import DoneShards, ShardStats, iter_done, write_dataset_files
    from shards.store import Store
    from shards.validate import format_table, validate

    from .distributor import run_shards
    from .plan import check_or_write_plan, check_or_write_settings, make_plan

    pool, settings = pool or PoolSettings(), settings or Settings()
    preset = settings.labeler.preset
    if preset not in PRESETS:
        raise LabelerLoadError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    limits = decode_limits(cfg)
    t0 = time.perf_counter()
    out = Store(cfg.output)
    if out.local and not cfg.estimate:
        prepare_output(Path(out.root))  # before listing 1.28M inputs or starting Ray
    if not cfg.estimate:
        hold_output(out, cfg.lease_timeout)  # one job per OUTPUT, on any machine; refused before listing
    plan = make_plan(cfg.input, cfg.samples_per_shard, cfg.prefix)
    check_job(settings, has_classes=plan.imagenet)  # text-prompted presets: prompts and models, before Ray
    if cfg.estimate > 0:
        from .estimate import estimate

        print(estimate(plan, cfg.estimate, pool, settings, limits).format())
        return 0
    out.makedirs()
    if out.local:
        remove_stale_temp_files(Path(out.root))
    if note := check_or_write_plan(out, plan, cfg.overwrite):
        print(note)
    check_or_write_settings(out, settings.to_json(), cfg.overwrite, Settings().to_json())

    # The done shards, one stats file at a time: a shard whose inputs changed since it was made
    # is redone from its inputs as they are now; the others are kept as shard indices only.
    def unchanged(stats: Iterable[ShardStats]) -> Iterator[ShardStats]:
        for s in stats:
            if what := plan.changes(s):
                more = f"; and {len(what) - 5} more" if len(what) > 5 else ""
                name = plan.shard_name(s.index)
                print(f"changed since {name} was made, so it is redone: {'; '.join(what[:5])}{more}")
            elif s.index < plan.num_shards:
                yield s

    done = DoneShards()  # `track` counts a copied stats file once
    resumed = sum(s.planned for s in done.track(unchanged(iter_done(out))))  # inputs done before this run
    plan.drop_inputs()  # from here on each shard's inputs are read from plan.inputs.jsonl
    todo = done.missing(plan.num_shards)
    print(f"plan: {plan.num_inputs} images -> {plan.num_shards} shards; {len(done)} already done, {len(todo)} to do")
    for line in plan.summary():
        print(line)
    result = run_shards(plan, todo, out, pool, settings, limits)
    if out.local:
        remove_stale_temp_files(Path(out.root))  # of shard tasks killed meanwhile (a job whose lease was taken)

    confirm_output()  # a job woken after another took OUTPUT over leaves the dataset files to it
    info = result.labeler_info or described_by_manifest(out)
    config = {**dataclasses.asdict(cfg), **dataclasses.asdict(pool)}
    done = DoneShards()
    manifest = write_dataset_files(
        out,
        info.label_space,
        info.labeler,
        plan.header(),
        done.track(iter_done(out)),
        config,
        plan.unplanned(),
    )
    missing = [plan.shard_name(i) for i in done.missing(plan.num_shards)]
    secs = time.perf_counter() - t0
    tot = manifest.totals
    print(
        f"done: {tot.samples} images in {tot.shards} shards, {tot.quarantined} quarantined "
        f"({out.url(fmt.QUARANTINE)}); this run labeled {result.images} inputs ({result.shards} shards) "
        f"in {secs:.1f}s, {result.images / secs:.1f} images/s; {resumed} were done before it (resumed)"
        + (f"; {result.actor_failures} labeling-actor failure(s) survived" if result.actor_failures else "")
    )
    if summary := result.summary():
        print(summary)
    labeler = manifest.labeler
    if labeler.empty_labels:
        print("note: preset 'empty' packs empty masks (all ignore, no instances): no labels were computed")
    if labeler.random_labels:
        print(f"note: preset {preset!r}: {labeler.note or 'the labels are random'}")
    if missing:
        print(f"error: {len(missing)} shard(s) still missing after retries: {', '.join(missing[:10])}", file=sys.stderr)
        for err in result.errors[:10]:
            print(f"  {err}", file=sys.stderr)
        return 1
    if cfg.validate:
        t1 = time.perf_counter()
        report = validate([out.root], workers=2, progress=False, max_pixels=cfg.max_pixels)
        print(format_table(report, time.perf_counter() - t1))
        if not report.ok:
            return 1
    print(f"manifest: {out.url(fmt.MANIFEST)}; look at samples with: c2f inspect {out} --out grid.png")
    return 0


def described_by_manifest(out):
    """What labeled an output whose every shard was done by an earlier run that left no labeler.json
    (an older version): its manifest says it."""
    from shards.manifest import LabelerRecord, ManifestMissing, read_manifest

    try:
        m = read_manifest(out)
    except ManifestMissing:
        raise DataError(
            f"{out} holds finished shards but no {fmt.LABELER} or {fmt.MANIFEST}: rerun with --overwrite"
        ) from None
    return LabelerRecord(m.label_space, m.labeler)


def decode_limits(cfg: LabelConfig):
    """The per-input limits, checked: Pillow's bomb guard (MAX_IMAGE_PIXELS) stays the outer bound."""
    from PIL import Image

    from .plan import PlanError
    from .worker import DecodeLimits

    if not 1 <= cfg.max_pixels <= Image.MAX_IMAGE_PIXELS:
        raise PlanError(
            f"--max-pixels must be in 1..{Image.MAX_IMAGE_PIXELS} (Pillow's bomb guard), got {cfg.max_pixels}"
        )
    if not 1 <= cfg.max_input_bytes <= fmt.MAX_MEMBER_BYTES:
        raise PlanError(
            f"--max-input-bytes must be in 1..{fmt.MAX_MEMBER_BYTES} (the largest tar member readers accept), "
            f"got {cfg.max_input_bytes}"
        )
    return DecodeLimits(cfg.max_pixels, cfg.max_input_bytes)


def prepare_output(out: Path) -> None:
    """Create OUTPUT and prove it writable before anything else (listing 1.28M inputs, starting
    Ray): a read-only or full target is one line and exit 2, not a traceback from deep inside."""
    from .plan import PlanError

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / fmt.temp_name("write-probe", os.getpid())
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PlanError(f"cannot write to output directory {out}: {e.strerror or e}") from None


_LEASE: OutputLease | None = None  # the lease of the output this process's job writes


def hold_output(out: Store, timeout: float) -> None:
    """Take OUTPUT's lease (shards/lease.py): a second job on any machine stops at once with a
    line naming the holder; a holder gone silent for `timeout` seconds (or whose process on this
    machine is gone) is taken over. If another job takes it over later (this one was paused past
    the timeout), the heartbeat interrupts this job, which stops with `LeaseLost`."""
    import _thread

    from shards.lease import OutputLease

    global _LEASE
    release_output()  # an earlier job of this process (tests, notebooks) that did not end through `run`
    _LEASE = OutputLease.acquire(
        out, timeout, ray_job=ray_job_id(), say=lambda line: print(line, flush=True), on_lost=_thread.interrupt_main
    )


def confirm_output() -> None:
    """`LeaseLost` unless this job still holds its output's lease (checked now, not at the last
    heartbeat): what only the holder may write comes after this."""
    from shards.lease import LeaseLost

    if _LEASE is not None and (lost := _LEASE.confirm()):
        raise LeaseLost(lost)


def release_output() -> None:
    global _LEASE
    lease, _LEASE = _LEASE, None
    if lease is not None:
        lease.release()


def ray_job_id() -> str:
    """The Ray job submission id when this driver runs under `ray job submit` (Ray passes the job's
    metadata to the driver in its environment), else ""."""
    import json

    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        return str(config.get("metadata", {}).get("job_submission_id") or "")
    except (ValueError, AttributeError):
        return ""


def remove_stale_temp_files(out: Path) -> None:
    """Temp files of a run that was killed (`format.temp_name`); safe under the output's lease."""
    from shards import format as fmt

    for p in out.iterdir():
        if fmt.is_temp_name(p.name) and p.is_file():
            p.unlink(missing_ok=True)
