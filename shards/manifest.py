"""Dataset-level files and their typed contracts: per-shard stats (the done-markers), the plan
header, the manifest with the labeler's description and label space, quarantine records and the
wids index.

A shard is done when `{shard}.stats.json` exists; it is written after the tar is renamed into
place, so listing the stats files is how a rerun resumes (img2dataset's rule). The manifest,
`quarantine.jsonl` and the wids index are derived from the stats files and can always be rebuilt.

Each file is one dataclass here with `to_json` / `from_json`; every writer and reader of these
files goes through them. `from_json` checks types, so a tampered file is a `ValueError` with the
field's path, never a `KeyError` deep inside a consumer. `read_manifest` is the one reader of
`manifest.json` (local or any URL, size-bounded); its `ManifestError` names the file and the field.

The contracts that new labelers will extend (`LabelSpace`, `LabelerInfo`, `ModelInfo`) are
`OpenContract`s: keys that this version does not name are kept and written back out, and an unset
optional field is absent from the JSON, so a new field is one typed line here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from . import format as fmt
from .errors import UsageError
from .location import join, read_bytes
from .store import Store

T = TypeVar("T")


def load_json(data: bytes | str, what: str = "JSON", max_bytes: int = fmt.MAX_JSON_BYTES) -> Any:
    """Parse JSON that someone else may have written: at most `max_bytes`, finite numbers only
    (`1e999`, `NaN` and `Infinity` are refused), and nesting too deep for the parser is a
    ValueError like any other malformed input, never a RecursionError."""
    if len(data) > max_bytes:
        raise ValueError(f"{what} of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"{what} nests too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an int of 5000 digits
        raise ValueError(f"{what} does not parse: {str(e)[:200]}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text[:20]}")
    return value


@functools.cache
def _checker(tp: Any) -> Callable[[Any, str], Any]:
    """A function that checks a parsed JSON value against type `tp` (JSON types, lists, dicts,
    optionals, nested contracts) and returns it as that type, or raises ValueError with the path.
    Built once per type: the validator runs it on every sample's JSON."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        alternatives = [a for a in args if a is not type(None)]
        checks = [_checker(a) for a in alternatives]
        optional = type(None) in args
        if len(checks) == 1:
            return lambda v, where: None if v is None and optional else checks[0](v, where)
        expected = " or ".join(getattr(a, "__name__", str(a)) for a in alternatives)

        def check_union(v, where):  # the first alternative that fits (`"class-agnostic"` or an object)
            if v is None and optional:
                return None
            for check in checks:
                try:
                    return check(v, where)
                except ValueError:
                    continue
            raise ValueError(f"{where}: expected {expected}, got {type(v).__name__}")

        return check_union
    if dataclasses.is_dataclass(tp):
        return lambda v, where: from_json(tp, v, where)
    if tp is Any:
        return lambda v, where: v
    if origin is list:
        item = _checker(args[0])

        def check_list(v, where):
            if not isinstance(v, list):
                raise ValueError(f"{where}: expected a list, got {type(v).__name__}")
            return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]

        return check_list
    if origin is dict:
        val = _checker(args[1])

        def check_dict(v, where):
            if not isinstance(v, dict):
                raise ValueError(f"{where}: expected an object, got {type(v).__name__}")
            return {k: val(x, f"{where}.{k}") for k, x in v.items()}

        return check_dict
    if tp is float:

        def check_float(v, where):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: expected a finite number, got {v!r:.40}")
            return float(v)

        return check_float
    if tp is int:

        def check_int(v, where):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}: expected an integer, got {v!r:.40}")
            return v

        return check_int

    def check_plain(v, where):
        if not isinstance(v, tp):
            raise ValueError(f"{where}: expected {tp.__name__}, got {type(v).__name__}")
        return v

    return check_plain


class _Field(typing.NamedTuple):
    name: str  # the attribute
    key: str  # the JSON name: `metadata["json"]` renames a field whose name is a Python keyword (`class`)
    check: Callable[[Any, str], Any]
    required: bool
    unset: Any  # the default when it is None or False (an optional field, a flag), else _SET
    omit: bool  # left out of the JSON while unset (every field of an OpenContract; `metadata["omit_unset"]`)


_SET = object()
_EXTRA = "extra"  # metadata key of an OpenContract's field for the keys it does not name
OMIT_UNSET = {"omit_unset": True}  # a Contract field's metadata: absent from the JSON while unset


@functools.cache
def _fields(cls: type) -> list[_Field]:
    hints = typing.get_type_hints(cls)
    return [
        _Field(
            f.name,
            f.metadata.get("json", f.name),
            _checker(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,  # type: ignore[misc]
            f.default if f.default is None or f.default is False else _SET,
            issubclass(cls, OpenContract) or f.metadata.get("omit_unset", False),
        )
        for f in dataclasses.fields(cls)
        if not f.metadata.get(_EXTRA)
    ]


def from_json(cls: type[T], d: Any, where: str | None = None) -> T:
    """Build contract `cls` from parsed JSON, checking every field's type. Unknown keys are ignored
    (newer writers may add fields), or kept in `extra` by an `OpenContract`; missing required ones
    are an error."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    kwargs = {}
    for f in _fields(cls):
        if f.key in d:
            kwargs[f.name] = f.check(d[f.key], f"{where}.{f.key}")
        elif f.required:
            raise ValueError(f"{where}: missing {f.key!r}")
    if issubclass(cls, OpenContract):
        known = {f.key for f in _fields(cls)}
        kwargs[_EXTRA] = {k: v for k, v in d.items() if k not in known}
    return cls(**kwargs)


def _plain(v: Any) -> Any:
    """A contract's value as JSON values (nested contracts through their own `to_json`)."""
    if isinstance(v, Contract):
        return v.to_json()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Contract:
    """`to_json` / `from_json` for the dataclasses below."""

    def to_json(self) -> dict[str, Any]:
        d = {}
        for f in _fields(type(self)):
            v = getattr(self, f.name)
            if not (f.omit and v is f.unset):
                d[f.key] = _plain(v)
        return d

    @classmethod
    def from_json(cls: type[T], d: Any) -> T:
        return from_json(cls, d)


class OpenContract(Contract):
    """A contract that newer versions extend. Keys this version does not name are kept in `extra`
    and written back out, so reading and rewriting a newer file loses nothing; an optional field
    (default None) or a flag (default False) that is unset is left out of the JSON, so a file says
    what is set and older files keep their bytes. Subclasses end with `extra: … = extra_field()`."""

    extra: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, **super().to_json()}


def extra_field() -> Any:
    """An `OpenContract`'s `extra`: the keys of its JSON that this version does not name."""
    return field(default_factory=dict, repr=False, metadata={_EXTRA: True})


@dataclass
class Quarantined(Contract):
    """One line of `quarantine.jsonl`: an input that is in no shard, and why."""

    shard: str  # "" for an entry refused at planning (stage `plan`): it is in no shard's plan
    key: str
    source: str  # path relative to the input root
    stage: str  # plan | read | decode | label | pack
    reason: str


@dataclass
class ShardStats(Contract):
    """`{shard}.stats.json`, the done-marker of one shard, written after its tar."""

    index: int
    shard: str
    planned: int  # inputs the plan gave this shard
    samples: int  # samples in the tar (planned = samples + len(quarantined))
    bytes: int  # tar size; 0 when every input was quarantined (then there is no tar)
    sha256: str
    quarantined: list[Quarantined] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds spent per stage (read, decode, …)
    # key -> [size, mtime_ns] of each planned input as the task read it: a rerun redoes the shard
    # when an input changed since (pipelines.plan.Plan.changes)
    inputs: dict[str, list[int]] = field(default_factory=dict)
    # bytes of `{shard}.parquet` (shards.samples), written before this marker; None: a shard made
    # before tables existed. A rerun redoes a shard whose table is missing or of another size.
    table_bytes: int | None = None
    # text-prompted labelers: images whose prompt found / did not find; absent for the labelers
    # without prompts, so their stats keep their bytes
    grounded: GroundedCount | None = field(default=None, metadata=OMIT_UNSET)


@dataclass
class GroundedCount(Contract):
    """Images of a shard labeled from a text prompt: `found` have at least one grounded instance;
    `not_found` kept an empty instance map and a background semantic map (never an error)."""

    found: int = 0
    not_found: int = 0

    def add(self, found: bool) -> None:
        if found:
            self.found += 1
        else:
            self.not_found += 1


@dataclass
class PlanHeader(Contract):
    """What `plan.json` and the manifest record of the plan (not the item list: the shards hold it)."""

    root: str
    imagenet: bool  # ImageNet layout: `<root>/<wnid>/<file>`, class index = sorted synset order
    classes: list[str]  # synsets in class-index order; empty when the input has no classes
    samples_per_shard: int
    prefix: str
    num_inputs: int
    num_shards: int
    listing_sha256: str
    shard_sizes: list[int]
    order_seed: int | None = None  # shards take inputs in a seeded hash order (None: key order, older plans)
    skipped: int = 0  # entries refused at planning (in quarantine.jsonl with stage `plan`)


@dataclass
class ShardEntry(Contract):
    name: str
    index: int
    samples: int
    bytes: int
    sha256: str


@dataclass
class Totals(Contract):
    samples: int
    quarantined: int  # lines of quarantine.jsonl: inputs of the shards + entries refused at planning
    bytes: int
    shards: int


CLASS_AGNOSTIC = "class-agnostic"  # LabelSpace.instance of labelers whose instances have no category (SAM)
GROUNDED = "grounded"  # LabelSpace.kind of the text-prompted presets (docs/FORMAT.md, "Label spaces")


@dataclass
class LabelSpace(OpenContract):
    """What the values of the label maps mean: the manifest's `label_space`, as the labeler's
    `label_space()` gives it. Ids are JSON object keys: decimal strings.

    Other kinds of label space add their facts as optional typed fields, absent from the files of
    labelers that have none. The text-prompted presets (`kind == GROUNDED`) write one fixed space:
    ImageNet-1K's classes at their standard indices, a background class, ADE20K's stuff classes, then
    the classes of a `--prompts` file (docs/FORMAT.md); each class it can ground has its prompt."""

    semantic: dict[str, str]  # semantic map value -> class name; the ignore value (fmt.semantic_ignore) is not listed
    # instance category id -> name (the classes that have instances: "things"), or CLASS_AGNOSTIC
    instance: dict[str, str] | str = CLASS_AGNOSTIC
    kind: str | None = None  # None: a model's own classes; GROUNDED: the text-prompted presets' space
    background: int | None = None  # grounded: the id of pixels that no instance and no stuff class claims
    synsets: dict[str, str] | None = None  # grounded: class id -> WordNet synset (the ImageNet-1K classes)
    prompts: dict[str, str] | None = None  # grounded: class id -> the text prompt its images are labeled with
    thresholds: dict[str, float] | None = None  # grounded: what admitted an instance (box, text, mask scores)
    extra: dict[str, Any] = extra_field()

    def __post_init__(self) -> None:
        for what, ids in (("semantic", self.semantic), ("instance", self.instance)):
            bad = [k for k in ids if not k.isdigit()] if isinstance(ids, dict) else []
            if bad:
                raise ValueError(f"LabelSpace.{what}: {bad[0]!r} is not a class id")

    @property
    def num_classes(self) -> int:
        return len(self.semantic)

    @property
    def ignore(self) -> int:
        """The semantic map's ignore value."""
        return fmt.semantic_ignore(self.num_classes)

    @property
    def semantic_names(self) -> dict[int, str]:
        """Class id -> name, in id order."""
        return {int(k): v for k, v in sorted(self.semantic.items(), key=lambda kv: int(kv[0]))}

    @property
    def thing_ids(self) -> frozenset[int] | None:
        """The semantic classes that have instances, or None when the label space does not name them
        (class-agnostic instances)."""
        return frozenset(int(k) for k in self.instance) if isinstance(self.instance, dict) and self.instance else None

    @property
    def grounded(self) -> bool:
        return self.kind == GROUNDED

    def class_of_synset(self) -> dict[str, int]:
        """Synset -> class id (grounded spaces: an image's own class in the semantic map); empty otherwise."""
        return {syn: int(k) for k, syn in (self.synsets or {}).items()}


@dataclass
class ModelInfo(OpenContract):
    """One model of a labeler, as the manifest names it."""

    role: str  # what it labels: semantic | instance | panoptic
    id: str  # what it was loaded from: a Hugging Face id, a local directory, a checkpoint, `tiny-random:<name>`
    type: str  # its architecture: the Hugging Face config's model_type (segformer, mask2former, eomt…) or sam_<size>
    things: str | None = None  # panoptic models: where the thing classes came from (a flag, the config, a known space)
    extra: dict[str, Any] = extra_field()


@dataclass
class LabelerInfo(OpenContract):
    """What labeled a dataset: the manifest's `labeler`, as the labeler's `describe()` gives it.
    A preset's own facts are optional fields (None, or False for a flag, when it has none)."""

    preset: str  # the preset's name (labeler/registry.py), or what else made the files (`synthetic`)
    models: list[ModelInfo] = field(default_factory=list)  # empty for presets without a model
    settings: dict[str, Any] | None = None  # what it ran with: labeler.config.Settings, or the preset's parameters
    random_labels: bool = False  # the labels carry no meaning: tiny random models or synthetic labels (tests, demo)
    empty_labels: bool = False  # every pixel ignore and no instances (`empty`): no labels were computed
    weight_free: bool = False  # no learned weights made them (`classical`): they describe image structure
    note: str | None = None  # one sentence for people (c2f label, inspect and report show it)
    seconds_per_image: float | None = None  # `fixed-cost`: the time it spends on each image
    scikit_image: str | None = None  # `classical`: the scikit-image version whose segmentation made the labels
    # text-prompted presets: where each image's prompt came from (ImageNet lemmas, or a --prompts file and its sha256)
    prompt_source: str | None = None
    extra: dict[str, Any] = extra_field()

    @property
    def untrained(self) -> bool:
        """The labels are not a trained model's (random or empty)."""
        return self.random_labels or self.empty_labels

    def brief(self) -> dict[str, Any]:
        """The description without its settings, for a report: preset, models, the flags set, the note."""
        d: dict[str, Any] = {"preset": self.preset, "models": [m.to_json() for m in self.models]}
        flags = {"weight_free": self.weight_free, "random_labels": self.random_labels}
        d |= {k: True for k, on in (flags | {"empty_labels": self.empty_labels}).items() if on}
        return d | ({"note": self.note} if self.note is not None else {})


@dataclass
class LabelerRecord(Contract):
    """`labeler.json`: what the labeler of an output directory says of itself, written when the
    labeling pool starts; the manifest copies it."""

    label_space: LabelSpace
    labeler: LabelerInfo


@dataclass
class Manifest(Contract):
    """`manifest.json`: what the dataset is (docs/FORMAT.md)."""

    label_space: LabelSpace  # what the maps' values mean
    labeler: LabelerInfo  # what made them: preset, models, settings
    plan: PlanHeader
    shards: list[ShardEntry]
    empty_shards: list[str]  # shards whose every input was quarantined: no tar
    totals: Totals
    config: dict[str, Any] = field(default_factory=dict)  # the job's settings
    format_version: int = fmt.FORMAT_VERSION
    # every shard (listed and empty) has its `{shard}.parquet` table: `c2f validate` requires them
    # (False: an output made before tables existed, or resumed from one; present tables are still checked)
    sample_tables: bool = False


@dataclass
class InstanceRecord(Contract):
    id: int
    category: int | None
    score: float
    area: int
    bbox: list[int]  # [x, y, w, h]
    phrase: str | None = None  # text-prompted presets: the phrase of the prompt this instance matched
    box_score: float | None = None  # grounded: the detector's box score
    mask_score: float | None = None  # grounded: the mask model's predicted IoU for the box's mask


@dataclass
class ClassRef(Contract):
    index: int
    synset: str | None


@dataclass
class SampleMeta(Contract):
    """A sample's `.json` member (docs/FORMAT.md); `shards.pack` writes it, readers check it here."""

    key: str
    source: str
    width: int
    height: int
    class_: ClassRef | None = field(metadata={"json": "class"})
    instances: list[InstanceRecord]
    reencoded: bool = False
    reencode_reason: str | None = None
    exif_orientation: int | None = None
    prompt: str | None = None  # text-prompted presets: the prompt this image was labeled with (absent otherwise)


@dataclass
class PlanInput:
    """One line of `plan.inputs.jsonl`: `[key, source, class index or null, size, mtime_ns]`."""

    key: str
    source: str
    class_index: int | None
    size: int
    mtime_ns: int


def _plan_input(row: Any, line: int) -> PlanInput:
    if (
        type(row) is not list
        or len(row) != 5
        or type(row[0]) is not str
        or type(row[1]) is not str
        or not (row[2] is None or type(row[2]) is int)
        or type(row[3]) is not int
        or type(row[4]) is not int
    ):
        raise ValueError(f"{fmt.PLAN_INPUTS} line {line}: expected [key, source, class, size, mtime_ns]")
    return PlanInput(*row)


def parse_plan_inputs(lines: list[bytes], first_line: int = 1) -> list[PlanInput]:
    """Lines of `plan.inputs.jsonl` (none blank), parsed as one JSON array (1.28M lines in
    seconds); a malformed line is a ValueError naming it (`first_line`: the number of the first)."""
    size = sum(len(line) for line in lines) + len(lines) + 2
    rows = load_json(b"[" + b",".join(lines) + b"]", fmt.PLAN_INPUTS, size)
    if not isinstance(rows, list) or len(rows) != len(lines):  # a line holding two values
        raise ValueError(f"{fmt.PLAN_INPUTS}: expected one [key, source, class, size, mtime_ns] per line")
    return [_plan_input(row, n) for n, row in enumerate(rows, start=first_line)]


def read_plan_inputs(data: bytes) -> list[PlanInput]:
    """Parse a whole `plan.inputs.jsonl` (blank lines skipped); a malformed line is a ValueError
    naming it."""
    return parse_plan_inputs([line for line in data.splitlines() if line.strip()])


def plan_input_line(key: str, source: str, class_index: int | None, size: int, mtime_ns: int) -> bytes:
    """One line of `plan.inputs.jsonl`: the one place it is formatted. `json.dumps` of the row; a
    row whose strings JSON leaves as they are (printable ASCII without quotes or backslashes: every
    ImageNet row) is laid out directly, in the same bytes, at a fifth of the cost."""
    if _plain_json(key) and _plain_json(source):
        ci = "null" if class_index is None else int(class_index)
        return f'["{key}", "{source}", {ci}, {int(size)}, {int(mtime_ns)}]\n'.encode()
    return (json.dumps([key, source, class_index, size, mtime_ns]) + "\n").encode()


def _plain_json(text: str) -> bool:
    """`json.dumps` writes `text` between quotes as it is."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def as_store(out: Store | str | os.PathLike) -> Store:
    return out if isinstance(out, Store) else Store(out)


class PlanInputsFile:
    """`plan.inputs.jsonl` read one shard at a time: the byte offset where each shard's lines begin
    (one integer per shard, whatever the number of inputs), and one ranged read per shard."""

    def __init__(self, out: Store | str | os.PathLike, starts: Sequence[int]):
        self.store = as_store(out)
        self.starts = array("q", starts)  # shard i is bytes [starts[i], starts[i + 1]); the last is the end

    @property
    def num_shards(self) -> int:
        return len(self.starts) - 1

    def rows(self, i: int) -> list[PlanInput]:
        """Shard `i`'s inputs, in the order of the file (key order within the shard)."""
        data = self.store.read_range(fmt.PLAN_INPUTS, self.starts[i], self.starts[i + 1])
        if len(data) != self.starts[i + 1] - self.starts[i]:
            raise ValueError(f"{self.store.url(fmt.PLAN_INPUTS)} changed during the job (shard {i} cut short)")
        return parse_plan_inputs(data.splitlines())


def scan_plan_inputs(
    out: Store | str | os.PathLike, per_shard: int, max_bytes: int | None = None
) -> Iterator[tuple[int, list[bytes]]]:
    """`plan.inputs.jsonl` read from start to end, `per_shard` lines at a time: (byte offset of
    the piece, its raw lines, for `parse_plan_inputs`), then a last (file size, []).
    FileNotFoundError when there is none; ValueError past `max_bytes` (no line read is longer)."""
    offset, lines, start = 0, [], 0
    with as_store(out).reader(fmt.PLAN_INPUTS) as f:
        while line := f.readline(-1 if max_bytes is None else max_bytes + 1 - offset):
            if max_bytes is not None and offset + len(line) > max_bytes:
                raise ValueError(f"{fmt.PLAN_INPUTS} exceeds {max_bytes} bytes")
            if not lines:
                start = offset
            offset += len(line)
            lines.append(line)
            if len(lines) == per_shard:
                yield start, lines
                lines = []
    if lines:
        yield start, lines
    yield offset, []


def write_plan_inputs(
    out: Store | str | os.PathLike,
    rows: Iterable[tuple[str, str, int | None, int, int]],
    per_shard: int = 1 << 62,
) -> PlanInputsFile:
    """The plan's inputs in shard order, one JSON array per line (shard i = lines i*n .. (i+1)*n-1),
    written as they come; returns the file, indexed by shards of `per_shard` lines."""
    starts, offset, n = array("q"), 0, 0
    with as_store(out).writer(fmt.PLAN_INPUTS) as f:
        for row in rows:
            if n % per_shard == 0:
                starts.append(offset)
            line = plan_input_line(*row)
            f.write(line)
            offset += len(line)
            n += 1
    starts.append(offset)
    return PlanInputsFile(out, starts)


def write_stats(out: Store | str | os.PathLike, stats: ShardStats) -> None:
    as_store(out).write_json(fmt.stats_name(stats.shard), stats.to_json())


def _stats_order(name: str) -> tuple:
    """Stats files in shard order (`c2f-1000000.tar` after `c2f-999999.tar`), others by name."""
    parsed = fmt.parse_shard_name(name.removesuffix(fmt.STATS_SUFFIX))
    return (0, parsed[0], parsed[1], name) if parsed else (1, "", 0, name)


def iter_done(out: Store | str | os.PathLike) -> Iterator[ShardStats]:
    """Stats of every finished shard, one at a time in shard order, from one listing of the
    output: a driver never holds every shard's per-input lists at once. A stats file that does not
    parse, or whose tar is missing or differs in size (someone deleted or replaced it), is not
    "done": that shard is redone."""
    store = as_store(out)
    files = store.list()
    for name in sorted((n for n in files if n.endswith(fmt.STATS_SUFFIX)), key=_stats_order):
        try:
            stats = ShardStats.from_json(load_json(store.read_bytes(name) or b"", name))
        except (OSError, ValueError):
            continue
        if stats.samples > 0 and files.get(stats.shard) != stats.bytes:
            continue
        if stats.table_bytes is not None and files.get(fmt.table_name(stats.shard)) != stats.table_bytes:
            continue
        yield stats


def read_done(out: Store | str | os.PathLike) -> dict[int, ShardStats]:
    """Stats of every finished shard, by shard index (`iter_done`), all in memory: for small outputs."""
    return {stats.index: stats for stats in iter_done(out)}


class DoneShards:
    """The finished shards of a job as the driver keeps them: their indices in an array, nothing
    per input (a shard's inputs and quarantine records stay in its stats file)."""

    def __init__(self, indices: Iterable[int] = ()):
        self._indices = array("q", indices)
        self._sorted: np.ndarray | None = None

    def add(self, index: int) -> None:
        self._indices.append(index)
        self._sorted = None

    def track(self, stats: Iterable[ShardStats]) -> Iterator[ShardStats]:
        """`stats`, passed through and their shards added; a second stats file of a shard already
        seen (a copy under another name) is passed over."""
        seen = set(self._indices)
        for s in stats:
            if s.index not in seen:
                seen.add(s.index)
                self.add(s.index)
                yield s

    def _index(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.unique(np.frombuffer(self._indices, np.int64))
        return self._sorted

    def __contains__(self, index: int) -> bool:
        found = self._index()
        k = int(np.searchsorted(found, index))
        return k < len(found) and int(found[k]) == index

    def __len__(self) -> int:
        return len(self._index())

    def missing(self, num_shards: int) -> list[int]:
        """The shards of `range(num_shards)` not done."""
        return np.setdiff1d(np.arange(num_shards), self._index(), assume_unique=True).tolist()


class ManifestError(UsageError):
    """`manifest.json` cannot be used: unreadable, too large, not JSON, or not a c2f manifest; the
    message names the file and, for a contract violation, the field."""


class ManifestMissing(ManifestError):
    """There is no `manifest.json`: not an output of `c2f label`, or its job has not finished."""


def read_manifest(out: Store | str | os.PathLike) -> Manifest:
    """The manifest of the output directory `out` (a local path, `file://` or any fsspec URL), read
    within `fmt.MAX_MANIFEST_BYTES`: every tool that reads a manifest reads it here."""
    url = join(str(out), fmt.MANIFEST)
    try:
        data = read_bytes(url, fmt.MAX_MANIFEST_BYTES)
    except (OSError, ValueError) as e:
        raise ManifestError(f"cannot read {url}: {e}") from None
    if data is None:
        raise ManifestMissing(f"no {fmt.MANIFEST} in {out}")
    try:
        return Manifest.from_json(load_json(data, url, fmt.MAX_MANIFEST_BYTES))
    except ValueError as e:
        raise ManifestError(f"{url} is not a c2f manifest: {e}") from None


def read_labeler_record(out: Store | str | os.PathLike) -> LabelerRecord | None:
    """`labeler.json` of an output directory, or None when there is none; ValueError when it is not one."""
    data = as_store(out).read_bytes(fmt.LABELER)
    return None if data is None else LabelerRecord.from_json(load_json(data, fmt.LABELER))


def write_labeler_record(out: Store | str | os.PathLike, record: LabelerRecord) -> None:
    as_store(out).write_json(fmt.LABELER, record.to_json())


def write_dataset_files(
    out: Store | str | os.PathLike,
    label_space: LabelSpace,
    labeler: LabelerInfo,
    plan: PlanHeader,
    stats: Iterable[ShardStats],
    config: dict[str, Any] | None = None,
    unplanned: Iterable[Quarantined] = (),
) -> Manifest:
    """Write `manifest.json`, `quarantine.jsonl` and the wids index from the finished shards.

    `stats` is read once: a list (sorted here), or an iterator in shard order (`iter_done`), so
    the quarantine records are streamed into `quarantine.jsonl` a shard at a time and only a few
    numbers per shard are kept. Shards that ended with zero samples (every image quarantined) have
    no tar and are listed in the manifest's `empty_shards`, so that the plan's arithmetic still adds
    up. `unplanned`: the entries refused at planning (stage `plan`), listed first in `quarantine.jsonl`.
    """
    store = as_store(out)
    if isinstance(stats, list):
        stats = sorted(stats, key=lambda s: s.index)
    shards: list[ShardEntry] = []
    empty: list[str] = []
    samples = nbytes = quarantined = 0
    tables = None  # every shard has its samples table (None: no shards)
    with store.writer(fmt.QUARANTINE) as f:
        for q in unplanned:
            f.write(_quarantine_line(q))
            quarantined += 1
        for s in stats:
            if s.samples > 0:
                shards.append(ShardEntry(s.shard, s.index, s.samples, s.bytes, s.sha256))
            else:
                empty.append(s.shard)
            samples, nbytes = samples + s.samples, nbytes + s.bytes
            tables = (tables is not False) and s.table_bytes is not None
            for q in s.quarantined:
                f.write(_quarantine_line(q))
            quarantined += len(s.quarantined)
    manifest = Manifest(
        label_space=label_space,
        labeler=labeler,
        plan=plan,
        shards=shards,
        empty_shards=empty,
        totals=Totals(samples=samples, quarantined=quarantined, bytes=nbytes, shards=len(shards)),
        config=config or {},
        sample_tables=bool(tables),
    )
    store.write_json(
        fmt.wids_index_name(plan.prefix),
        {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": plan.prefix,
            "shardlist": [{"url": s.name, "nsamples": s.samples, "filesize": s.bytes} for s in shards],
        },
    )
    store.write_json(fmt.MANIFEST, manifest.to_json())
    return manifest


def _quarantine_line(q: Quarantined) -> bytes:
    return (json.dumps(q.to_json(), sort_keys=True) + "\n").encode()
