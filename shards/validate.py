"""`c2f validate`: check shards against the v1 format, the manifest and the plan. Never imports torch.

Stages, each small and testable alone (webdataset's tariterators style):
    open_url -> tar_members -> group_samples (shards.tar) -> check_sample      (per shard, in a worker)
    the shard's table (shards.samples) -> check_table: the same inputs as the tar, the plan and the
        quarantine, and the same facts as each decoded sample                 (in the same worker)
    plan_targets (what each shard must hold) ... check_dataset (cross-shard, in the parent)

The validator is total: every problem in what it reads, however malformed (a truncated tar, a
sparse member claiming gigabytes, JSON nested 100,000 deep, `1e999`, a PNG that inflates to
gigabytes), becomes a `Finding(shard, key, code, message)`; nothing is raised to the user, and
every decode is bounded by what its header declares and by `max_pixels` (docs/FORMAT.md).

It is also meant to be bound by JPEG decoding: masks are read by the zlib-ng fast path
(shards.png), and the id checks look at the runs of each map instead of sorting every pixel
(`present_ids`), so a full check costs about 1.2x decoding the JPEGs alone (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import format as fmt
from .errors import first_line
from .image import BadImage, check_scaled, load_image, open_image
from .location import join, list_names, list_shards, open_url, read_bytes
from .manifest import (
    Manifest,
    ManifestError,
    ManifestMissing,
    PlanHeader,
    PlanInputsFile,
    Quarantined,
    SampleMeta,
    ShardStats,
    from_json,
    load_json,
    parse_plan_inputs,
    read_manifest,
    read_plan_inputs,
    scan_plan_inputs,
)
from .pack import decode_png
from .samples import PACKED, QUARANTINED, SampleRow, TableError, coverage, mean_score, read_url
from .store import Store
from .tar import (  # noqa: F401 - the tar problem codes are finding codes too
    BAD_KEY,
    BAD_MEMBER,
    DUPLICATE_KEY,
    NOT_A_TAR,
    TRUNCATED,
    UNEXPECTED_MEMBER,
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
BAD_CLS = "bad-cls"
MASK_SIZE = "mask-size"
CLASS_RANGE = "class-out-of-range"
INSTANCE_MISMATCH = "instance-mismatch"
CHECKSUM = "checksum"
COUNT = "count"
MISSING_SHARD = "missing-shard"
UNLISTED_SHARD = "unlisted-shard"
MISSING_SAMPLE = "missing-sample"
UNPLANNED_KEY = "unplanned-key"
PLAN = "plan"
MANIFEST = "manifest"
INCOMPLETE = "incomplete"
NO_SHARDS = "no-shards"
CHECK_FAILED = "check-failed"
MISSING_TABLE = "missing-table"
BAD_TABLE = "bad-table"
UNLISTED_TABLE = "unlisted-table"

# JPEGs are checked with libjpeg's 1/8 DCT scaling: every marker is parsed and every Huffman-coded
# coefficient of every block is decoded (so truncated or corrupt entropy data fails exactly as in a
# full decode), but only the DC term goes through the inverse DCT, upsampling and colour
# conversion, steps that cannot fail. It saves about a fifth of the decode (docs/BENCHMARKS.md).
JPEG_DCT_SCALING = True

MAX_LINE_BYTES = 8192  # per input, for plan.inputs.jsonl and quarantine.jsonl (paths are < 4 KB)


@dataclass
class Finding:
    shard: str
    key: str | None
    code: str
    message: str


@dataclass
class Expect:
    """What the manifest and the plan say about one shard; None where unknown."""

    samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    num_classes: int | None = None  # semantic label space size; ids 0..n-1 and the ignore value are valid
    has_classes: bool = False  # every sample must carry `.cls`
    classes: list[str] | None = None  # image-level classes (synsets): `.cls` indexes this list
    planned: dict[str, tuple[str, int | None]] | None = None  # key -> (source, class) of inputs due here
    max_pixels: int = fmt.MAX_PIXELS
    table: str | None = None  # URL of the shard's table (shards.samples) to check; None: none to check
    table_required: bool = False  # a missing table is a finding (the manifest's `sample_tables`)
    quarantined: dict[str, str] | None = None  # key -> stage of this shard's lines of quarantine.jsonl


@dataclass
class ShardReport:
    shard: str
    samples: int = 0
    bytes: int = 0
    keys: list[str] = field(default_factory=list)  # emptied by `validate` once its cross-shard checks have them
    findings: list[Finding] = field(default_factory=list)


def present_ids(a: np.ndarray) -> np.ndarray:
    """The distinct values of a label map, sorted. Maps are piecewise constant, so the values at
    the starts of runs (row-major) are all the values there are: a few per row to sort instead of
    every pixel (np.unique on the whole map cost more than decoding the JPEG), and exact whatever
    the map (noise just makes every pixel a run)."""
    d = np.ascontiguousarray(a).reshape(-1)
    if d.size == 0:
        return d
    starts = np.flatnonzero(d[1:] != d[:-1]) + 1
    return np.unique(np.concatenate([d[:1], d[starts]]))


def _instance_ids(m: np.ndarray) -> set[int]:
    """Distinct ids of an instance map; a 16-bit map may come as the PNG's big-endian view: its
    runs are found on the bytes as they are and only the distinct ids are swapped."""
    if m.dtype.byteorder == ">":
        return set(present_ids(m.view(m.dtype.newbyteorder("="))).byteswap().tolist())
    return set(present_ids(m).tolist())


def _out_of_range(sem: np.ndarray, n: int, ignore: int) -> list[int]:
    """Semantic ids outside 0..n-1 and the ignore value (at most 5). Fast paths for the usual
    cases: the largest id is below n; or one wrapping subtraction and a comparison find no id in
    n..ignore-1."""
    top = int(sem.max()) if sem.size else 0
    if top < n:
        return []
    if sem.dtype in (np.uint8, np.uint16) and ignore == np.iinfo(sem.dtype).max and n <= ignore:
        if not (sem - sem.dtype.type(n) < sem.dtype.type(ignore - n)).any():
            return []
    vals = present_ids(sem)
    return vals[(vals >= n) & (vals != ignore)][:5].tolist()


def _parse_cls(raw: bytes) -> int | None:
    return int(raw) if 1 <= len(raw) <= 9 and raw.isdigit() else None


def check_sample(
    shard: str, key: str, s: dict[str, bytes], expect: Expect, deep: bool, row: SampleRow | None = None
) -> list[Finding]:
    """Members present and `.cls` in range; with `deep`, everything decodes (bounded) and agrees
    with everything else, the sample's `row` of the shard's table included."""
    out: list[Finding] = []
    required = fmt.REQUIRED_MEMBERS + ((fmt.CLS,) if expect.has_classes else ())
    missing = [e for e in required if e not in s]
    if missing:
        out.append(Finding(shard, key, MISSING_MEMBER, f"missing {', '.join('.' + m for m in missing)}"))
        return out
    cls = None
    if fmt.CLS in s:
        cls = _parse_cls(s[fmt.CLS])
        if cls is None:
            out.append(Finding(shard, key, BAD_CLS, f".cls {s[fmt.CLS][:20]!r} is not a class index"))
        elif expect.classes is not None and cls >= len(expect.classes):
            out.append(
                Finding(shard, key, BAD_CLS, f".cls {cls} outside the class list (0..{len(expect.classes) - 1})")
            )
        elif expect.planned is not None and key in expect.planned and expect.planned[key][1] not in (None, cls):
            out.append(Finding(shard, key, BAD_CLS, f".cls {cls}, the plan gives class {expect.planned[key][1]}"))
    if not deep:
        return out
    try:
        meta: SampleMeta | None = from_json(SampleMeta, load_json(s[fmt.META], ".json"), ".json")
    except ValueError as e:
        out.append(Finding(shard, key, BAD_JSON, f".json is not a valid sample record ({e})"))
        meta = None
    size = None
    try:
        im = open_image(s[fmt.JPG], ("JPEG",), expect.max_pixels)
        size = im.size
        if JPEG_DCT_SCALING:  # the same check as a full decode, at 1/8 of its cost (image.check_scaled)
            check_scaled(im)
        else:
            load_image(im)
    except BadImage as e:
        out.append(Finding(shard, key, BAD_JPEG, f".jpg does not decode: {e}"))
    maps = {}
    for ext in (fmt.SEM, fmt.INST):
        try:
            maps[ext] = decode_png(s[ext], expect.max_pixels, native=False)
        except Exception as e:  # noqa: BLE001 - any decoder failure is the finding
            out.append(Finding(shard, key, BAD_PNG, f".{ext} does not decode: {type(e).__name__}: {e}"))
    if size is not None:
        w, h = size
        for ext, m in maps.items():
            if m.shape != (h, w):
                out.append(Finding(shard, key, MASK_SIZE, f".{ext} is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}"))
        if meta is not None and (meta.width, meta.height) != (w, h):
            out.append(Finding(shard, key, BAD_JSON, f".json says {meta.width}x{meta.height}, image is {w}x{h}"))
    if meta is None:
        return out
    if row is not None:
        out += _row_disagrees(shard, key, row, meta, size, maps.get(fmt.SEM), expect)
    if meta.key != key:
        out.append(Finding(shard, key, BAD_JSON, f".json names key {meta.key[:40]!r}"))
    if fmt.SEM in maps and expect.num_classes is not None:
        ignore = fmt.semantic_ignore(expect.num_classes)
        bad = _out_of_range(maps[fmt.SEM], expect.num_classes, ignore)
        if bad:
            out.append(
                Finding(
                    shard,
                    key,
                    CLASS_RANGE,
                    f"class ids {bad} outside the label space (0..{expect.num_classes - 1}, ignore {ignore})",
                )
            )
    if fmt.INST in maps:
        ids = [i.id for i in meta.instances]
        present = _instance_ids(maps[fmt.INST]) - {0}
        if present != set(ids) or len(ids) != len(set(ids)):
            out.append(
                Finding(
                    shard,
                    key,
                    INSTANCE_MISMATCH,
                    f"instance ids in .inst.png {sorted(present)[:8]} do not match the .json list {sorted(ids)[:8]}",
                )
            )
    index = meta.class_.index if meta.class_ is not None else None
    if cls is not None and cls != index:
        out.append(Finding(shard, key, BAD_JSON, f".cls {cls} differs from .json class {index}"))
    elif meta.class_ is not None and expect.classes is not None:
        if not 0 <= index < len(expect.classes):
            out.append(Finding(shard, key, BAD_JSON, f".json class {index} outside the class list"))
        elif meta.class_.synset not in (None, expect.classes[index]):
            out.append(
                Finding(
                    shard,
                    key,
                    BAD_JSON,
                    f".json synset {meta.class_.synset[:20]!r} is not class {index} ({expect.classes[index]})",
                )
            )
    return out


def _row_disagrees(shard: str, key: str, row: SampleRow, meta: SampleMeta, size, sem, expect: Expect) -> list[Finding]:
    """Where a packed sample's row of the table differs from its JSON and maps (one finding)."""
    wrong = []
    facts = {
        "source": (row.source, fmt.display(meta.source)),
        "width": (row.width, meta.width if size is None else size[0]),
        "height": (row.height, meta.height if size is None else size[1]),
        "cls_index": (row.cls_index, meta.class_.index if meta.class_ is not None else None),
        "instances": (row.instances, len(meta.instances)),
    }
    wrong += [f"{n} {a!r:.40} (the sample: {b!r:.40})" for n, (a, b) in facts.items() if a != b]
    score = mean_score(i.score for i in meta.instances)
    if (row.score is None) != (score is None) or (score is not None and abs(row.score - score) > 1e-9):
        wrong.append(f"score {row.score!r} (the sample's instances: {score!r})")
    if sem is not None and (row.coverage is None or abs(row.coverage - coverage(sem)) > 1e-9):
        wrong.append(f"coverage {row.coverage!r} (.sem.png: {coverage(sem)!r})")
    classes = expect.classes
    if row.cls_index is not None and classes is not None and 0 <= row.cls_index < len(classes):
        if row.cls != classes[row.cls_index]:
            wrong.append(f"cls {row.cls!r:.40} (class {row.cls_index} is {classes[row.cls_index]!r:.40})")
    if not wrong:
        return []
    return [Finding(shard, key, BAD_TABLE, f"{fmt.table_name(shard)} says {'; '.join(wrong[:3])}")]


def check_table(shard: str, rows: list[SampleRow], tar_keys: list[str], expect: Expect) -> list[Finding]:
    """The table against its tar (its packed rows are the tar's samples, in order, at their
    positions), the quarantine (its quarantined rows are this shard's lines of quarantine.jsonl, with
    their stage) and the plan (its rows are the shard's planned inputs, with their sources)."""
    table = fmt.table_name(shard)
    out: list[Finding] = []

    def differ(what: str, extra: list[str], absent: list[str], here: str, there: str) -> None:
        if extra:
            out.append(Finding(shard, extra[0], BAD_TABLE, f"{table} {here} {len(extra)} key(s) {there} lacks"))
        if absent:
            out.append(Finding(shard, absent[0], BAD_TABLE, f"{table} lacks {len(absent)} key(s) of {what}"))

    seen = Counter(r.key for r in rows)
    dup = sorted(k for k, n in seen.items() if n > 1)
    if dup:
        out.append(Finding(shard, dup[0], BAD_TABLE, f"{table} lists {len(dup)} key(s) twice"))
    other = [r.key for r in rows if r.shard != shard]
    if other:
        out.append(Finding(shard, other[0], BAD_TABLE, f"{table}: {len(other)} row(s) name another shard"))
    packed = [r for r in rows if r.status == PACKED]
    in_tar = set(tar_keys)
    differ(
        "the tar",
        [r.key for r in packed if r.key not in in_tar],
        sorted(in_tar - {r.key for r in packed}),
        "packs",
        "the tar",
    )
    if not out and [r.key for r in packed] != tar_keys:
        out.append(Finding(shard, None, BAD_TABLE, f"{table} lists the tar's samples in another order"))
    moved = [r.key for i, r in enumerate(packed) if i < len(tar_keys) and r.key == tar_keys[i] and r.index != i]
    if moved:
        out.append(
            Finding(shard, moved[0], BAD_TABLE, f"{table}: {len(moved)} row(s) give another position in the tar")
        )
    if expect.quarantined is not None:
        q = {r.key: r.stage for r in rows if r.status == QUARANTINED}
        differ(
            f"{fmt.QUARANTINE} for this shard",
            sorted(set(q) - set(expect.quarantined)),
            sorted(set(expect.quarantined) - set(q)),
            "quarantines",
            fmt.QUARANTINE,
        )
        stage = [k for k, st in q.items() if k in expect.quarantined and st != expect.quarantined[k]]
        if stage:
            out.append(Finding(shard, stage[0], BAD_TABLE, f"{table}: {len(stage)} quarantine stage(s) differ"))
    if expect.planned is not None:
        planned = {**expect.planned}
        sources = {r.key: r.source for r in rows}
        gone = set(expect.quarantined or ())
        differ(
            "the plan",
            sorted(k for k in sources if k not in planned and k not in gone),
            sorted(k for k in planned if k not in sources),
            "lists",
            fmt.PLAN_INPUTS,
        )
        wrong = sorted(k for k, src in sources.items() if k in planned and fmt.display(planned[k][0]) != src)
        if wrong:
            out.append(Finding(shard, wrong[0], BAD_TABLE, f"{table}: {len(wrong)} source(s) differ from the plan"))
    return out


def check_shard(url: str, expect: Expect, sample: int | None = None, seed: int = 0) -> ShardReport:
    """Every check that needs only this shard. `sample`: decode-check only that many random samples.
    Never raises: a failure of the check itself (a bug, MemoryError) is a `check-failed` finding."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    rep = ShardReport(name)
    try:
        _check_shard(url, name, rep, expect, sample, seed)
    except Exception as e:  # noqa: BLE001 - the validator reports, it does not crash
        rep.findings.append(
            Finding(name, None, CHECK_FAILED, f"cannot check this shard: {first_line(e, 200, typed=True)}")
        )
    return rep


def _check_shard(url: str, name: str, rep: ShardReport, expect: Expect, sample: int | None, seed: int) -> None:
    try:
        f = open_url(url)
    except Exception as e:  # noqa: BLE001 - missing file, bad URL, no permission
        rep.findings.append(Finding(name, None, MISSING_SHARD, f"cannot open: {e}"))
        return
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
    rows = _shard_table(name, expect, rep.keys, rep.findings)
    for key, s in samples:
        try:
            rep.findings.extend(check_sample(name, key, s, expect, key in deep_keys, rows.get(key)))
        except Exception as e:  # noqa: BLE001 - one sample the checks did not foresee costs only itself
            rep.findings.append(
                Finding(name, key, CHECK_FAILED, f"cannot check this sample: {first_line(e, 200, typed=True)}")
            )
    if expect.planned is not None:
        present = set(rep.keys)
        for key in sorted(set(expect.planned) - present):
            source = fmt.display(expect.planned[key][0])
            rep.findings.append(
                Finding(name, key, MISSING_SAMPLE, f"planned input {source} is in neither this shard nor quarantine")
            )
        for key in sorted(present - set(expect.planned)):
            rep.findings.append(Finding(name, key, UNPLANNED_KEY, "key is not among this shard's planned inputs"))
    if expect.bytes is not None and rep.bytes != expect.bytes:
        rep.findings.append(Finding(name, None, CHECKSUM, f"size {rep.bytes} bytes, manifest says {expect.bytes}"))
    if expect.sha256 is not None and sha != expect.sha256:
        rep.findings.append(
            Finding(name, None, CHECKSUM, f"sha256 {sha[:16]}… differs from the manifest's {expect.sha256[:16]}…")
        )
    if expect.samples is not None and rep.samples != expect.samples:
        rep.findings.append(Finding(name, None, COUNT, f"{rep.samples} samples, manifest says {expect.samples}"))


def _shard_table(name: str, expect: Expect, tar_keys: list[str], findings: list[Finding]) -> dict[str, SampleRow]:
    """Check the shard's table against what is known here (`check_table`); its packed rows by key,
    for the per-sample comparison."""
    if expect.table is None:
        return {}
    try:
        rows = read_url(expect.table)
    except TableError as e:
        findings.append(Finding(name, None, BAD_TABLE, str(e)))
        return {}
    if rows is None:
        if expect.table_required:
            findings.append(Finding(name, None, MISSING_TABLE, f"no {fmt.table_name(name)} beside the tar"))
        return {}
    findings += check_table(name, rows, tar_keys, expect)
    return {r.key: r for r in rows if r.status == PACKED}


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


@dataclass
class Target:
    """What to check in one directory (or one shard URL) and what is known about it."""

    shards: list[tuple[str, Expect]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    manifest: Manifest | None = None
    quarantined: dict[str, str] = field(default_factory=dict)  # key -> shard, from quarantine.jsonl
    # shard name -> {key: (source, class)} it must hold, looked up as each shard is checked (`_Planned`)
    planned: Any = None


_ABSENT = object()


def _read_json(base: str, name: str, max_bytes: int, findings: list[Finding]) -> Any:
    """A JSON file of the dataset; `_ABSENT` when there is none; None (and a `manifest` finding)
    when it cannot be read or parsed."""
    try:
        data = read_bytes(join(base, name), max_bytes)
        return _ABSENT if data is None else load_json(data, name, max_bytes)
    except (OSError, ValueError) as e:
        findings.append(Finding(name, None, MANIFEST, f"unreadable {name}: {e}"))
        return None


def plan_targets(path: str, max_pixels: int = fmt.MAX_PIXELS) -> Target:
    """The shards to check, what to expect of each, and findings about the directory itself.
    `path` is a shard or a directory, local or any fsspec URL."""
    shards = list_shards(path)
    if shards is None:
        return Target([(path, Expect(max_pixels=max_pixels))])
    t = Target()
    on_disk = {u.rsplit("/", 1)[-1]: u for u in shards}
    plan: PlanHeader | None = None
    plan_json = _read_json(path, fmt.PLAN, fmt.MAX_MANIFEST_BYTES, t.findings)
    if plan_json not in (None, _ABSENT):
        try:
            plan = PlanHeader.from_json(plan_json)
        except ValueError as e:
            t.findings.append(Finding(fmt.PLAN, None, MANIFEST, f"unreadable {fmt.PLAN}: {e}"))
    absent = False
    try:
        t.manifest = read_manifest(path)
    except ManifestMissing:
        absent = True
    except ManifestError as e:
        t.findings.append(Finding(fmt.MANIFEST, None, MANIFEST, f"unreadable {fmt.MANIFEST}: {e}"))
    m = t.manifest
    if m is None:
        plain = Expect(max_pixels=max_pixels, classes=plan.classes if plan else None)
        t.shards = [(u, plain) for u in on_disk.values()]
        if plan is not None and absent:
            t.findings += _incomplete(path, plan, on_disk)
        elif not on_disk and not t.findings:
            t.findings.append(
                Finding(path, None, NO_SHARDS, f"no shards in {path} (no PREFIX-NNNNNN.tar, no {fmt.MANIFEST})")
            )
        return t
    if plan is not None and any(
        getattr(plan, k) != getattr(m.plan, k) for k in ("listing_sha256", "samples_per_shard", "prefix", "num_shards")
    ):
        t.findings.append(Finding(fmt.PLAN, None, PLAN, f"{fmt.PLAN} and {fmt.MANIFEST} describe different plans"))
    if not m.shards:
        t.findings.append(
            Finding(path, None, NO_SHARDS, f"the manifest lists no shards ({m.totals.quarantined} inputs quarantined)")
        )
    t.quarantined, per_shard = _read_quarantine(path, m, t.findings)
    planned = _planned_keys(path, m, per_shard, t.findings)
    listed = {s.name: s for s in m.shards}
    t.findings += [
        Finding(n, None, UNLISTED_SHARD, "tar is not listed in the manifest") for n in on_disk if n not in listed
    ]
    tables = {fmt.parse_table_name(n) for n in list_names(path)} - {None}
    owners = set(listed) | set(m.empty_shards)
    t.findings += [
        Finding(fmt.table_name(n), None, UNLISTED_TABLE, f"a table of {n}, which the manifest does not list")
        for n in sorted(tables - owners)  # type: ignore[type-var]
    ]
    classes = m.plan.classes
    for n, s in sorted(listed.items()):
        if n not in on_disk:
            t.findings.append(Finding(n, None, MISSING_SHARD, "listed in the manifest but missing on disk"))
            continue
        k = m.label_space.num_classes
        exp = Expect(s.samples, s.bytes, s.sha256, k, bool(classes), classes, None, max_pixels=max_pixels)
        exp.table = join(path, fmt.table_name(n)) if (n in tables or m.sample_tables) else None
        exp.table_required = m.sample_tables
        exp.quarantined = {q.key: q.stage for q in per_shard.get(n, [])}
        t.shards.append((on_disk[n], exp))
    t.planned = planned
    for n in m.empty_shards:  # no tar: the table alone holds the shard's (quarantined) inputs
        if n in tables or m.sample_tables:
            quarantined = {q.key: q.stage for q in per_shard.get(n, [])}
            exp = _with_plan(Expect(classes=classes, quarantined=quarantined), planned, n, t.findings)
            exp.table, exp.table_required = join(path, fmt.table_name(n)), m.sample_tables
            _shard_table(n, exp, [], t.findings)
    t.findings += _check_plan(m, per_shard)
    return t


def _incomplete(path: str, plan: PlanHeader, on_disk: dict[str, str]) -> list[Finding]:
    """A directory with plan.json and no manifest: the job stopped before it finished. Name the
    shards it still owes (a shard whose every input was quarantined has stats and no tar)."""
    empty = set()
    for n in list_names(path):
        if n.endswith(fmt.STATS_SUFFIX):
            try:
                data = read_bytes(join(path, n), fmt.MAX_JSON_BYTES)
                st = ShardStats.from_json(load_json(data or b"", n))
                if st.samples == 0:
                    empty.add(st.shard)
            except (OSError, ValueError):
                continue
    due = [fmt.shard_name(plan.prefix, i) for i in range(plan.num_shards)]
    missing = [n for n in due if n not in on_disk and n not in empty]
    out = [
        Finding(
            fmt.MANIFEST,
            None,
            INCOMPLETE,
            f"no {fmt.MANIFEST}: the labeling job did not finish ({len(due) - len(missing)} of {len(due)} planned "
            "shards present); rerun the same `c2f label` command to complete it",
        )
    ]
    return out + [Finding(n, None, MISSING_SHARD, f"planned in {fmt.PLAN}, not on disk") for n in missing]


def _read_quarantine(
    path: str, m: Manifest, findings: list[Finding]
) -> tuple[dict[str, str], dict[str, list[Quarantined]]]:
    """quarantine.jsonl, bounded by the plan's size; every malformed line a finding."""
    cap = (m.plan.num_inputs + m.plan.skipped + 1) * MAX_LINE_BYTES
    keys: dict[str, str] = {}
    per_shard: dict[str, list[Quarantined]] = {}
    try:
        data = read_bytes(join(path, fmt.QUARANTINE), cap) or b""
    except (OSError, ValueError) as e:
        findings.append(Finding(fmt.QUARANTINE, None, MANIFEST, f"unreadable {fmt.QUARANTINE}: {e}"))
        return keys, per_shard
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = Quarantined.from_json(load_json(line, f"line {n}", MAX_LINE_BYTES))
        except ValueError as e:
            findings.append(Finding(fmt.QUARANTINE, None, MANIFEST, f"line {n} is not a quarantine record: {e}"))
            continue
        per_shard.setdefault(q.shard, []).append(q)
        if q.shard:
            keys[q.key] = q.shard
    return keys, per_shard


def _planned_keys(path: str, m: Manifest, per_shard: dict[str, list[Quarantined]], findings: list[Finding]):
    """shard -> {key: (source, class)} of the inputs it must hold (its plan minus its quarantine),
    from plan.inputs.jsonl, as a `.get(name)`; {} when the directory has no listing (older or
    foreign datasets). A file as `c2f label` writes it is read through once to check it and index
    its shards (`_Planned`: an offset per shard); any other (damaged, edited by hand) is read
    whole as before, so that its findings are the same."""
    plan = m.plan
    cap = (plan.num_inputs + 1) * MAX_LINE_BYTES
    try:
        starts = _index_plan_inputs(path, plan, cap)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        starts = None
    if starts is not None:
        return _Planned(path, plan, starts, per_shard)
    try:
        data = read_bytes(join(path, fmt.PLAN_INPUTS), cap)
        if data is None:
            return {}
        rows = read_plan_inputs(data)
    except (OSError, ValueError) as e:
        findings.append(Finding(fmt.PLAN_INPUTS, None, PLAN, f"unreadable {fmt.PLAN_INPUTS}: {e}"))
        return {}
    if len(rows) != plan.num_inputs:
        findings.append(
            Finding(fmt.PLAN_INPUTS, None, PLAN, f"{len(rows)} inputs listed, the plan has {plan.num_inputs}")
        )
        return {}
    out = {}
    n = plan.samples_per_shard
    for i in range(plan.num_shards):
        name = fmt.shard_name(plan.prefix, i)
        gone = {q.key for q in per_shard.get(name, [])}
        out[name] = {r.key: (r.source, r.class_index) for r in rows[i * n : (i + 1) * n] if r.key not in gone}
    return out


def _index_plan_inputs(path: str, plan: PlanHeader, cap: int) -> list[int] | None:
    """Where each shard's lines begin in plan.inputs.jsonl, checking every line on the way (one
    shard's lines in memory at a time); None (or ValueError) when the file is not exactly as
    `c2f label` writes it (a line that does not parse, a blank or unterminated line, a CR, more than
    `cap` bytes, another count of inputs)."""
    starts, count = [], 0
    for offset, lines in scan_plan_inputs(path, plan.samples_per_shard, max_bytes=cap):
        if not lines:  # the end: `offset` is the file's size
            break
        if any(not line.endswith(b"\n") or b"\r" in line or not line.strip() for line in lines):
            return None
        starts.append(offset)
        parse_plan_inputs(lines, count + 1)
        count += len(lines)
    if count != plan.num_inputs or len(starts) != plan.num_shards:
        return None
    return [*starts, offset]


class _Planned:
    """Each shard's planned inputs, read from plan.inputs.jsonl when the shard is checked (one
    ranged read), less its quarantined inputs: a validator never holds every input's record."""

    def __init__(self, path: str, plan: PlanHeader, starts: list[int], per_shard: dict[str, list[Quarantined]]):
        self.file = PlanInputsFile(Store(path), starts)
        self.index = {fmt.shard_name(plan.prefix, i): i for i in range(plan.num_shards)}
        self.per_shard = per_shard

    def get(self, name: str) -> dict[str, tuple[str, int | None]] | None:
        i = self.index.get(name)
        if i is None:
            return None
        gone = {q.key for q in self.per_shard.get(name, [])}
        return {r.key: (r.source, r.class_index) for r in self.file.rows(i) if r.key not in gone}


def _check_plan(m: Manifest, per_shard: dict[str, list[Quarantined]]) -> list[Finding]:
    """Samples + quarantined per shard must add up to the plan's shard sizes, and the entries
    refused at planning to the plan's count of them."""
    findings = []
    plan = m.plan
    samples = {s.name: s.samples for s in m.shards}
    for i, size in enumerate(plan.shard_sizes):
        name = fmt.shard_name(plan.prefix, i)
        q = len(per_shard.get(name, []))
        got = samples.get(name, 0) + q
        if got != size:
            findings.append(
                Finding(
                    name, None, PLAN, f"plan has {size} inputs, found {samples.get(name, 0)} samples + {q} quarantined"
                )
            )
    refused = len(per_shard.get("", []))
    if refused != plan.skipped:
        findings.append(
            Finding(
                fmt.QUARANTINE,
                None,
                PLAN,
                f"{refused} entries refused at planning in {fmt.QUARANTINE}, the plan counts {plan.skipped}",
            )
        )
    return findings


def validate(
    paths: list[str],
    workers: int = 2,
    sample: int | None = None,
    seed: int = 0,
    progress: bool = True,
    max_pixels: int = fmt.MAX_PIXELS,
) -> Report:
    """Check every shard of `paths` (a few at a time per worker: what each shard must hold is read
    from the plan as it is sent), then across shards: a key in two shards, or in a shard and in
    quarantine. Memory grows with the number of shards and a few bytes per sample, not with the
    samples' records."""
    targets: list[tuple[str, Expect, Any]] = []
    findings: list[Finding] = []
    quarantined: dict[str, str] = {}
    manifest_checked = False
    for path in paths:
        t = plan_targets(path, max_pixels)
        targets += [(url, exp, t.planned) for url, exp in t.shards]
        findings += t.findings
        quarantined.update(t.quarantined)
        manifest_checked |= t.manifest is not None
    reports: list[ShardReport] = []
    keys: list[str | list[str]] = []  # each report's keys, joined by NUL (none holds one) or as they came
    from tqdm import tqdm

    def received(rep: ShardReport) -> None:
        reports.append(rep)
        keys.append(rep.keys if any("\0" in k for k in rep.keys) else "\0".join(rep.keys))
        rep.keys = []
        bar.update()

    bar = tqdm(total=len(targets), unit="shard", desc="validate", disable=not progress)
    jobs = _jobs(targets, findings)
    if workers <= 1 or len(targets) <= 1:
        for url, exp in jobs:
            received(check_shard(url, exp, sample, seed))
    else:
        with ProcessPoolExecutor(workers) as pool:
            running: dict[Any, str] = {}
            for url, exp in jobs:
                running[pool.submit(check_shard, url, exp, sample, seed)] = url
                while len(running) >= 4 * workers:  # a few per worker: their plans are not all in memory at once
                    _collect(running, received, FIRST_COMPLETED)
            while running:
                _collect(running, received, FIRST_COMPLETED)
    bar.close()
    order = sorted(range(len(reports)), key=lambda i: reports[i].shard)
    reports = [reports[i] for i in order]
    keys = [keys[i] for i in order]
    findings += _across_shards(reports, keys, quarantined)
    return Report(reports, findings, manifest_checked)


def _jobs(targets: list[tuple[str, Expect, Any]], findings: list[Finding]) -> Iterator[tuple[str, Expect]]:
    """The shards to check with what they must hold, looked up as each is sent."""
    for url, exp, planned in targets:
        if planned is not None:
            exp = _with_plan(exp, planned, url.rstrip("/").rsplit("/", 1)[-1], findings)
        yield url, exp


def _with_plan(exp: Expect, planned: Any, name: str, findings: list[Finding]) -> Expect:
    """`exp` with shard `name`'s planned inputs (`planned.get`); unchanged, and a finding, when
    plan.inputs.jsonl changed or vanished since it was checked."""
    try:
        return dataclasses.replace(exp, planned=planned.get(name))
    except (OSError, ValueError) as e:
        findings.append(Finding(fmt.PLAN_INPUTS, None, PLAN, f"unreadable {fmt.PLAN_INPUTS}: {e}"))
        return exp


def _collect(running: dict[Any, str], received, when) -> None:
    done, _ = wait(running, return_when=when)
    for fut in done:
        url = running.pop(fut)
        try:
            received(fut.result())
        except Exception as e:  # noqa: BLE001 - a worker killed (out of memory) or lost
            name = url.rstrip("/").rsplit("/", 1)[-1]
            received(ShardReport(name, findings=[Finding(name, None, CHECK_FAILED, first_line(e, 200, typed=True))]))


def _keys_of(joined: str | list[str]) -> list[str]:
    if isinstance(joined, list):
        return joined
    return joined.split("\0") if joined else []


_key_hash = hash  # 64 bits per key (a test makes keys collide)


def _across_shards(
    reports: list[ShardReport], keys: list[str | list[str]], quarantined: dict[str, str]
) -> list[Finding]:
    """Each report's findings, then, key by key in shard order: a key already seen in a shard of
    another name (`DUPLICATE_KEY`, "key also in …"), else a key that quarantine.jsonl lists.

    The first shard holding each key is found with an array of 64-bit hashes (8 bytes per
    sample, sorted), not a dictionary of every key; a key flagged that way is compared with the
    one it was found equal to, and if two different keys ever shared a hash the dictionary is
    used after all."""
    counts = [len(_keys_of(k)) for k in keys]
    starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    hashes = np.empty(int(starts[-1]), np.int64)
    for j, joined in enumerate(keys):
        hashes[starts[j] : starts[j + 1]] = [_key_hash(k) for k in _keys_of(joined)]
    names: dict[str, int] = {}
    name_of = np.repeat(np.array([names.setdefault(r.shard, len(names)) for r in reports], np.int64), counts)
    by_hash = np.argsort(hashes, kind="stable")  # equal hashes stay in shard order
    sorted_hashes = hashes[by_hash]
    del hashes
    new_group = np.concatenate(([True], sorted_hashes[1:] != sorted_hashes[:-1]))
    del sorted_hashes
    first = by_hash[np.maximum.accumulate(np.where(new_group, np.arange(len(by_hash)), 0))]
    other = name_of[by_hash] != name_of[first]  # first seen in a shard of another name
    seen_in = dict(zip(by_hash[other].tolist(), first[other].tolist(), strict=True))  # position -> first position
    del by_hash, first, other, name_of, new_group

    @functools.lru_cache(maxsize=64)
    def keys_at(j: int) -> list[str]:
        return _keys_of(keys[j])

    findings: list[Finding] = []
    for j, r in enumerate(reports):
        findings += r.findings
        for i, k in enumerate(keys_at(j)):
            q = seen_in.get(int(starts[j]) + i)
            if q is not None:
                owner = int(np.searchsorted(starts, q, side="right")) - 1
                if keys_at(owner)[q - int(starts[owner])] != k:
                    return _across_shards_by_dict(reports, keys, quarantined)  # two keys, one 64-bit hash
                findings.append(Finding(r.shard, k, DUPLICATE_KEY, f"key also in {reports[owner].shard}"))
            elif k in quarantined:
                findings.append(Finding(r.shard, k, DUPLICATE_KEY, f"key also in {fmt.QUARANTINE} ({quarantined[k]})"))
    return findings


def _across_shards_by_dict(
    reports: list[ShardReport], keys: list[str | list[str]], quarantined: dict[str, str]
) -> list[Finding]:
    findings: list[Finding] = []
    owner: dict[str, str] = {}
    for r, joined in zip(reports, keys, strict=True):
        findings += r.findings
        for k in _keys_of(joined):
            if k in owner and owner[k] != r.shard:
                findings.append(Finding(r.shard, k, DUPLICATE_KEY, f"key also in {owner[k]}"))
            elif k in quarantined:
                findings.append(Finding(r.shard, k, DUPLICATE_KEY, f"key also in {fmt.QUARANTINE} ({quarantined[k]})"))
            owner.setdefault(k, r.shard)
    return findings


def format_table(report: Report, seconds: float) -> str:
    if not report.shards and len(report.findings) == 1:  # nothing to check: one line says why
        return f"FAILED: {fmt.display(report.findings[0].message)}"
    lines = []
    if report.findings:
        w = max(len(f.shard) for f in report.findings)
        lines.append(f"{'SHARD':<{w}}  {'KEY':<24}  {'PROBLEM':<20}  DETAIL")
        for f in report.findings:
            key, msg = fmt.display(f.key or "-"), fmt.display(f.message)
            lines.append(f"{fmt.display(f.shard):<{w}}  {key:<24}  {f.code:<20}  {msg}")
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
