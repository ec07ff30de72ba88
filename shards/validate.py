"""`c2f validate`: check shards against the v1 format and the manifest. Never imports torch.

Stages, each small and testable alone (webdataset's tariterators style):
    open_url -> tar_members -> group_samples (shards.tar) -> check_sample      (per shard, in a worker)
    check_dataset                                                   (cross-shard, in the parent)
Every problem becomes a `Finding(shard, key, code, message)`; nothing is raised to the user.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from . import format as fmt
from .location import join, list_shards, open_url, read_text
from .manifest import Manifest, Quarantined
from .tar import (  # noqa: F401 - the tar problem codes are finding codes too
    BAD_MEMBER,
    DUPLICATE_KEY,
    NOT_A_TAR,
    TRUNCATED,
    UNSAFE_NAME,
    HashingReader,
    TarError,
    group_samples,
    tar_members,
)

# Finding codes (docs/FORMAT.md lists them with their meaning).
EMPTY_SHARD = "empty-shard"
MISSING_MEMBER = "missing-member"
BAD_JPEG = "bad-jpeg"
BAD_PNG = "bad-png"
BAD_JSON = "bad-json"
MASK_SIZE = "mask-size"
CLASS_RANGE = "class-out-of-range"
INSTANCE_MISMATCH = "instance-mismatch"
CHECKSUM = "checksum"
COUNT = "count"
MISSING_SHARD = "missing-shard"
UNLISTED_SHARD = "unlisted-shard"
PLAN = "plan"
MANIFEST = "manifest"


@dataclass
class Finding:
    shard: str
    key: str | None
    code: str
    message: str


@dataclass
class Expect:
    """What the manifest says about one shard and the label space; None where unknown."""

    samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    num_classes: int | None = None  # semantic label space size; ids 0..n-1 and the ignore value are valid
    has_classes: bool = False  # every sample must carry `.cls`


@dataclass
class ShardReport:
    shard: str
    samples: int = 0
    bytes: int = 0
    keys: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def _decode(data: bytes, what: str) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
        im.load()
    if what == "jpeg" and im.format != "JPEG":
        raise ValueError(f"is {im.format}, not JPEG")
    if what == "png" and im.format != "PNG":
        raise ValueError(f"is {im.format}, not PNG")
    return im


def check_sample(shard: str, key: str, s: dict[str, bytes], expect: Expect, deep: bool) -> list[Finding]:
    """Members present; with `deep`, everything decodes and agrees with everything else."""
    out: list[Finding] = []
    required = fmt.REQUIRED_MEMBERS + ((fmt.CLS,) if expect.has_classes else ())
    missing = [e for e in required if e not in s]
    if missing:
        out.append(Finding(shard, key, MISSING_MEMBER, f"missing {', '.join('.' + m for m in missing)}"))
        return out
    if not deep:
        return out
    try:
        meta = json.loads(s[fmt.META])
        ids = [int(i["id"]) for i in meta["instances"]]
    except (ValueError, KeyError, TypeError) as e:
        return out + [Finding(shard, key, BAD_JSON, f".json is not a valid sample record ({e})")]
    try:
        im = _decode(s[fmt.JPG], "jpeg")
    except Exception as e:  # noqa: BLE001 - any decoder failure is the finding
        out.append(Finding(shard, key, BAD_JPEG, f".jpg does not decode: {e}"))
        im = None
    maps = {}
    for ext in (fmt.SEM, fmt.INST):
        try:
            m = _decode(s[ext], "png")
            if m.mode not in ("L", "I;16", "I;16B", "I"):
                raise ValueError(f"mode {m.mode}, expected a single-channel map")
            maps[ext] = np.asarray(m)
        except Exception as e:  # noqa: BLE001
            out.append(Finding(shard, key, BAD_PNG, f".{ext} does not decode: {e}"))
    if im is not None:
        for ext, m in maps.items():
            if m.shape != (im.height, im.width):
                out.append(
                    Finding(
                        shard, key, MASK_SIZE, f".{ext} is {m.shape[1]}x{m.shape[0]}, image is {im.width}x{im.height}"
                    )
                )
        if (meta.get("width"), meta.get("height")) != (im.width, im.height):
            out.append(
                Finding(
                    shard,
                    key,
                    BAD_JSON,
                    f".json says {meta.get('width')}x{meta.get('height')}, image is {im.width}x{im.height}",
                )
            )
    if fmt.SEM in maps and expect.num_classes is not None:
        sem = maps[fmt.SEM]
        ignore = fmt.semantic_ignore(expect.num_classes)
        vals = np.unique(sem)
        bad = vals[(vals >= expect.num_classes) & (vals != ignore)]
        if bad.size:
            out.append(
                Finding(
                    shard,
                    key,
                    CLASS_RANGE,
                    f"class ids {bad[:5].tolist()} outside the label space "
                    f"(0..{expect.num_classes - 1}, ignore {ignore})",
                )
            )
    if fmt.INST in maps:
        present = set(np.unique(maps[fmt.INST]).tolist()) - {0}
        if present != set(ids) or len(ids) != len(set(ids)):
            out.append(
                Finding(
                    shard,
                    key,
                    INSTANCE_MISMATCH,
                    f"instance ids in .inst.png {sorted(present)[:8]} do not match the .json list {sorted(ids)[:8]}",
                )
            )
    if fmt.CLS in s:
        cls = meta.get("class") or {}
        try:
            if int(s[fmt.CLS]) != cls.get("index"):
                out.append(
                    Finding(shard, key, BAD_JSON, f".cls {int(s[fmt.CLS])} differs from .json class {cls.get('index')}")
                )
        except ValueError:
            out.append(Finding(shard, key, BAD_JSON, ".cls is not an integer"))
    return out


def check_shard(url: str, expect: Expect, sample: int | None = None, seed: int = 0) -> ShardReport:
    """Every check that needs only this shard. `sample`: decode-check only that many random samples."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    rep = ShardReport(name)
    try:
        f = open_url(url)
    except Exception as e:  # noqa: BLE001 - missing file, bad URL, no permission
        rep.findings.append(Finding(name, None, MISSING_SHARD, f"cannot open: {e}"))
        return rep
    with f:
        stream = HashingReader(f)
        samples: list[tuple[str, dict[str, bytes]]] = []

        def report(key: str | None, code: str, message: str) -> None:
            rep.findings.append(Finding(name, key, code, message))

        try:
            buffered = io.BufferedReader(stream, 1 << 20)
            for key, s in group_samples(tar_members(buffered), report):
                samples.append((key, s))
            buffered.read()
        except TarError as e:
            rep.findings.append(Finding(name, None, e.code, str(e)))
        stream.drain()
    rep.bytes, sha = stream.size, stream.sha256.hexdigest()
    rep.samples = len(samples)
    rep.keys = [k for k, _ in samples]
    if rep.samples == 0 and not any(f.code in (NOT_A_TAR, TRUNCATED) for f in rep.findings):
        rep.findings.append(Finding(name, None, EMPTY_SHARD, "shard holds no samples"))
    deep_keys = {k for k, _ in samples}
    if sample is not None and sample < len(samples):
        deep_keys = set(random.Random(f"{seed}:{name}").sample(sorted(deep_keys), sample))
    for key, s in samples:
        rep.findings.extend(check_sample(name, key, s, expect, key in deep_keys))
    if expect.bytes is not None and rep.bytes != expect.bytes:
        rep.findings.append(Finding(name, None, CHECKSUM, f"size {rep.bytes} bytes, manifest says {expect.bytes}"))
    if expect.sha256 is not None and sha != expect.sha256:
        rep.findings.append(
            Finding(name, None, CHECKSUM, f"sha256 {sha[:16]}… differs from the manifest's {expect.sha256[:16]}…")
        )
    if expect.samples is not None and rep.samples != expect.samples:
        rep.findings.append(Finding(name, None, COUNT, f"{rep.samples} samples, manifest says {expect.samples}"))
    return rep


@dataclass
class Report:
    shards: list[ShardReport]
    findings: list[Finding]
    manifest: bool  # whether manifest and plan checks ran

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "manifest_checked": self.manifest,
            "shards": len(self.shards),
            "samples": sum(r.samples for r in self.shards),
            "bytes": sum(r.bytes for r in self.shards),
            "findings": [asdict(f) for f in self.findings],
        }


def plan_targets(path: str) -> tuple[list[tuple[str, Expect]], Manifest | None, list[Finding]]:
    """The shards to check, what to expect of each, and findings about the directory itself.
    `path` is a shard or a directory, local or any fsspec URL."""
    shards = list_shards(path)
    if shards is None:
        return [(path, Expect())], None, []
    on_disk = {u.rsplit("/", 1)[-1]: u for u in shards}
    text = read_text(join(path, fmt.MANIFEST))
    if text is None:
        return [(u, Expect()) for u in shards], None, []
    try:
        manifest = Manifest.from_json(json.loads(text))
        listed = {s.name: s for s in manifest.shards}
        num_classes = len(manifest.semantic_names)
        has_classes = bool(manifest.plan.classes)
    except (ValueError, RecursionError) as e:
        return (
            [(u, Expect()) for u in shards],
            None,
            [Finding(fmt.MANIFEST, None, MANIFEST, f"unreadable manifest: {e}")],
        )
    findings = [
        Finding(n, None, UNLISTED_SHARD, "tar is not listed in the manifest") for n in on_disk if n not in listed
    ]
    targets = []
    for n, s in sorted(listed.items()):
        if n not in on_disk:
            findings.append(Finding(n, None, MISSING_SHARD, "listed in the manifest but missing on disk"))
            continue
        targets.append((on_disk[n], Expect(s.samples, s.bytes, s.sha256, num_classes, has_classes)))
    return targets, manifest, findings


def check_plan(manifest: Manifest, out_dir: str) -> list[Finding]:
    """Samples + quarantined per shard must add up to the plan's shard sizes."""
    findings = []
    plan = manifest.plan
    quarantined: Counter[str] = Counter()
    for n, line in enumerate((read_text(join(out_dir, fmt.QUARANTINE)) or "").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            quarantined[Quarantined.from_json(json.loads(line)).shard] += 1
        except (ValueError, RecursionError) as e:
            findings.append(Finding(fmt.QUARANTINE, None, MANIFEST, f"line {n} is not a quarantine record: {e}"))
    samples = {s.name: s.samples for s in manifest.shards}
    for i, size in enumerate(plan.shard_sizes):
        name = fmt.shard_name(plan.prefix, i)
        got = samples.get(name, 0) + quarantined[name]
        if got != size:
            findings.append(
                Finding(
                    name,
                    None,
                    PLAN,
                    f"plan has {size} inputs, found {samples.get(name, 0)} samples + {quarantined[name]} quarantined",
                )
            )
    return findings


def validate(
    paths: list[str], workers: int = 2, sample: int | None = None, seed: int = 0, progress: bool = True
) -> Report:
    targets: list[tuple[str, Expect]] = []
    findings: list[Finding] = []
    manifest_checked = False
    for path in paths:
        t, manifest, f = plan_targets(path)
        targets += t
        findings += f
        if manifest is not None:
            manifest_checked = True
            findings += check_plan(manifest, path)
    reports: list[ShardReport] = []
    from tqdm import tqdm

    bar = tqdm(total=len(targets), unit="shard", desc="validate", disable=not progress)
    if workers <= 1 or len(targets) <= 1:
        for url, exp in targets:
            reports.append(check_shard(url, exp, sample, seed))
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            futs = [pool.submit(check_shard, url, exp, sample, seed) for url, exp in targets]
            for fut in as_completed(futs):
                reports.append(fut.result())
                bar.update()
    bar.close()
    reports.sort(key=lambda r: r.shard)
    owner: dict[str, str] = {}
    for r in reports:
        findings += r.findings
        for k in r.keys:
            if k in owner and owner[k] != r.shard:
                findings.append(Finding(r.shard, k, DUPLICATE_KEY, f"key also in {owner[k]}"))
            owner.setdefault(k, r.shard)
    return Report(reports, findings, manifest_checked)


def format_table(report: Report, seconds: float) -> str:
    lines = []
    if report.findings:
        w = max(len(f.shard) for f in report.findings)
        lines.append(f"{'SHARD':<{w}}  {'KEY':<24}  {'PROBLEM':<20}  DETAIL")
        for f in report.findings:
            lines.append(f"{f.shard:<{w}}  {(f.key or '-'):<24}  {f.code:<20}  {f.message}")
        lines.append("")
    n = sum(r.samples for r in report.shards)
    nbytes = sum(r.bytes for r in report.shards)
    status = "OK" if report.ok else f"FAILED: {len(report.findings)} problem(s)"
    note = "" if report.manifest else " (no manifest: checksum, count and plan checks skipped)"
    lines.append(
        f"{status}: {len(report.shards)} shards, {n} samples, {nbytes / 1e6:.1f} MB in {seconds:.1f}s "
        f"({nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s){note}"
    )
    return "\n".join(lines)
