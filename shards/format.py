"""Shard format v1: names, member extensions and the label-map conventions.

Everything that names a file or a key lives here, so that the writer, the reader,
the validator and the pipeline can never disagree. See docs/FORMAT.md.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

FORMAT_VERSION = 1

# Member extensions of one sample, in the order they are written into the tar.
JPG = "jpg"
SEM = "sem.png"
INST = "inst.png"
CLS = "cls"
META = "json"
REQUIRED_MEMBERS = (JPG, SEM, INST, META)  # `.cls` only where the input has classes
ALL_MEMBERS = (CLS, INST, JPG, META, SEM)  # sorted: members within a sample go in this order

# Every tar member gets this mtime, so the same input gives byte-identical shards.
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
STATS_SUFFIX = ".stats.json"
TABLE_SUFFIX = ".parquet"  # the per-sample table beside each tar (shards.samples)
PLAN = "plan.json"  # the plan header, written before the first shard
PLAN_INPUTS = "plan.inputs.jsonl"  # the plan's inputs in plan order: shard i = lines [i*n, (i+1)*n)
LABELER = "labeler.json"  # what the labeler of an output directory says of itself (shards.manifest.LabelerRecord)
LABELER_SETTINGS = "labeler_settings.json"  # the labeler settings an output directory is pinned to
# The output lease (shards/lease.py): who writes into this output now. Hidden: it is the job's, not
# the dataset's, and it is removed when the job ends.
LEASE = ".c2f-label.lease"

# Size limits of the format: what every writer stays within and every reader refuses beyond, so a
# file that claims more (a header declaring 60000x60000, a member declaring gigabytes) costs nothing.
# MAX_PIXELS: width x height of one image and its maps. ImageNet-1K was collected from the web
# before 2010, when the largest DSLRs made 25 MP; 50 MP leaves twice that. It is also what a
# labeling actor must hold (docs/LABELERS.md, "Memory"), and `c2f label --max-pixels` lowers it.
MAX_PIXELS = 50_000_000
MAX_MEMBER_BYTES = 64 << 20  # one tar member, and one input file (ImageNet's largest JPEG is ~15 MB)
MAX_JSON_BYTES = 16 << 20  # one `.json` member, plan.json, a stats file: far above any real one
MAX_MANIFEST_BYTES = 256 << 20  # manifest.json and plan.json (a 1.28M-shard manifest is ~200 MB)
MAX_TABLE_BYTES = 64 << 20  # one shard's Parquet table (~60 bytes a row: 1000 rows are ~60 KB)
MAX_TABLE_ROWS = 1_000_000  # rows of one shard's table: a shard of a million inputs is beyond any plan
MAX_TABLE_UNPACKED_BYTES = 256 << 20  # the text of one table once decompressed (1000 real rows: ~100 KB)

_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{6})\.tar$")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-]")
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def shard_name(prefix: str, index: int) -> str:
    """`{prefix}-{index:06d}.tar`: the one place shard file names are made."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{prefix}-{index:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """Inverse of `shard_name`; None when `name` is not a shard name."""
    m = _SHARD_RE.match(PurePosixPath(name).name)
    return (m["prefix"], int(m["index"])) if m else None


def stats_name(shard: str) -> str:
    """The per-shard done-marker, written only after the tar is in place."""
    return shard + STATS_SUFFIX


def table_name(shard: str) -> str:
    """`{prefix}-NNNNNN.parquet`, the per-sample table of shard `{prefix}-NNNNNN.tar` (shards.samples):
    beside it, so `*.parquet` in an output directory is every shard's table and nothing else."""
    return shard.removesuffix(".tar") + TABLE_SUFFIX


def parse_table_name(name: str) -> str | None:
    """The shard a table name belongs to (`c2f-000003.parquet` -> `c2f-000003.tar`), or None."""
    if not name.endswith(TABLE_SUFFIX):
        return None
    shard = name.removesuffix(TABLE_SUFFIX) + ".tar"
    return shard if parse_shard_name(shard) else None


TEMP_MARK = ".tmp-"


def temp_name(name: str, pid: int | str) -> str:
    """`.{name}.tmp-{pid}`: where a file is written before it is renamed to `name` (hidden, so no
    listing mistakes it for the real file; the pid keeps two writers apart; where writers on several
    machines may meet, as at the lease, `pid` carries a random suffix too)."""
    return f".{name}{TEMP_MARK}{pid}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def wids_index_name(prefix: str) -> str:
    return f"{prefix}.wids.json"


def sample_key(relpath: str, imagenet: bool) -> str:
    """The sample key for an input file, given its path relative to the input root.

    ImageNet keys are the file stem (`n01440764_10026`), which the dataset already makes
    unique. Elsewhere the key is the relative path without its suffix, with `/` turned into
    `__` so that `a/x.jpg` and `b/x.jpg` stay distinct. Dots and any other character that
    WebDataset or a shell would trip over become `_` (a dot would split the key).
    """
    parts = relpath.split("/")
    if all(part and part != "." for part in parts):  # as PurePosixPath would parse it (1.28M times: 5x faster)
        name = parts[-1]
        dot = name.rfind(".")
        stem = name[:dot] if 0 < dot < len(name) - 1 else name
        if not imagenet:
            stem = "__".join([*parts[:-1], stem])
    else:
        p = PurePosixPath(relpath)
        stem = p.stem if imagenet else str(p.with_suffix("")).replace("/", "__")
    key = _KEY_BAD_CHARS.sub("_", stem)
    if not key:
        raise ValueError(f"cannot make a sample key from {relpath!r}")
    return key


def bad_key(key: str) -> str | None:
    """Why `key` breaks the key rules (characters `[A-Za-z0-9_-]`, at least one), or None."""
    if _KEY_RE.match(key):
        return None
    if "/" in key:
        return "key holds a '/' (c2f keys name no directories)"
    return "key holds characters outside [A-Za-z0-9_-]" if key else "empty key"


def display(text: str) -> str:
    """`text` safe to print: a file name that is not valid UTF-8 (PEP 383 surrogates) shows as
    backslash escapes instead of failing the print."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def split_member(name: str) -> tuple[str, str]:
    """`dir/n01_1.sem.png` -> (`dir/n01_1`, `sem.png`): the key is everything before the first
    dot of the base name, as webdataset groups members."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext if dot else ""


def unsafe_member_name(name: str) -> str | None:
    """Why a tar member name is unsafe to extract (absolute, `..`), or None when it is fine.
    (Called for every member the readers see: the common case costs two string tests.)"""
    if name.startswith("/") or (name[1:2] == ":" and re.match(r"^[A-Za-z]:[\\/]", name)):
        return "absolute path"
    if ".." in name and ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path contains '..'"
    return None


def semantic_dtype(num_classes: int) -> str:
    """uint8 while class ids and the ignore value fit in a byte, else uint16."""
    return "uint8" if num_classes <= 255 else "uint16"


def semantic_ignore(num_classes: int) -> int:
    """The ignore value of the semantic map: the dtype's largest value (255 or 65535)."""
    return 255 if num_classes <= 255 else 65535
