"""Listing: an input tree, a file list or a URL -> the regular image files in it, with their sizes
and modification times, and the entries refused with a reason.

Listing trusts nothing in the tree (docs/RUNNING.md, "What is refused"):
- only regular files are planned; a FIFO, a device, a socket or a broken symlink with an image
  suffix is refused at planning and recorded in `quarantine.jsonl` (stage `plan`) with the reason;
- symlinks are followed (a class folder may be a link), a link back to an ancestor (a loop) is
  refused, and a folder reached twice is listed once;
- hidden entries (`.ipynb_checkpoints`, `.DS_Store`, `._*`) are ignored, and counted;
- file names that are not valid UTF-8 are kept (Python's PEP 383 escapes: `os.fsencode(source)`
  gives the bytes back);
- size and mtime of every input are recorded, so a rerun redoes the shards whose inputs changed
  and names them (pipelines/plan.py `Plan.changes`); a shard task checks them again when it
  reads the input (`file_kind`, `remote_mtime_ns`).
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shards.errors import UsageError

from .compact import Strings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class ListingError(UsageError):
    """An input that cannot be listed (not a directory, a URL or a file list)."""


@dataclass(frozen=True)
class Skipped:
    """An entry under the root that looked like an input and is not planned, and why."""

    source: str
    reason: str


class Files:
    """Listed files as (relative path, size, mtime_ns) rows, held as columns: the paths in one
    buffer (`compact.Strings`), sizes and times in arrays. ImageNet-1K's 1.28M files take ~55 bytes
    each (as tuples of str and ints they took ~230)."""

    def __init__(self, rows: Iterable[tuple[str, int, int]] = ()):
        self.paths = Strings()
        self.sizes = array("q")
        self.mtimes = array("q")
        for row in rows:
            self.append(row)

    def append(self, row: tuple[str, int, int]) -> None:
        rel, size, mtime = row
        self.paths.append(rel)
        self.sizes.append(size)
        self.mtimes.append(mtime)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> tuple[str, int, int]:
        return self.paths[i], self.sizes[i], self.mtimes[i]

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        return zip(self.paths, self.sizes, self.mtimes, strict=True)


@dataclass
class Listing:
    root: str
    files: Files  # (relative path, size, mtime_ns) of regular image files; a list of such rows is taken too
    skipped: list[Skipped] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # what was passed over on purpose, counted

    def __post_init__(self) -> None:
        if not isinstance(self.files, Files):
            self.files = Files(self.files)


def add_listed(out, rel: str, st: os.stat_result) -> None:
    """A listed input: planned when it is a regular file (with size and mtime), else skipped with its kind."""
    if stat.S_ISREG(st.st_mode):
        out.files.append((rel, st.st_size, st.st_mtime_ns))
    else:
        out.skipped.append(Skipped(rel, f"not a regular file ({file_kind(st.st_mode)})"))


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def remote_mtime_ns(info: dict) -> int:
    """Modification time in ns from an fsspec info dict (keys differ by backend); -1 if none."""
    for k in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        v = info.get(k)
        try:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return int(v * 1e9)
            if isinstance(v, datetime):
                return int(v.timestamp() * 1e9)
            if isinstance(v, str):
                return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1e9)
        except (ValueError, OverflowError, OSError):
            continue
    return -1


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def scan_dir(root: Path) -> Listing:
    """Every regular image file under `root` with its size and mtime, depth first in name order
    (deterministic whatever the filesystem's order). Symlinks are followed; a directory that leads
    back to one of its ancestors is a loop and refused; one reached a second time is listed once."""
    out = Listing(str(root), Files())
    st = os.stat(root)
    first_path = {(st.st_dev, st.st_ino): ""}
    stack: list[tuple[str, tuple]] = [("", ((st.st_dev, st.st_ino),))]
    while stack:
        rel, ancestors = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.skipped.append(Skipped(rel, f"cannot list directory: {e.strerror or e}"))
            continue
        subdirs = []
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if e.name.startswith("."):
                out.ignored["hidden entries"] += 1
                continue
            try:
                is_dir = e.is_dir()  # follows a symlink
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    dst = e.stat()
                except OSError as ex:
                    out.skipped.append(Skipped(r, f"cannot read directory: {ex.strerror or ex}"))
                    continue
                ident = (dst.st_dev, dst.st_ino)
                if ident in ancestors:
                    back = first_path.get(ident, "")
                    out.skipped.append(Skipped(r, f"symlink loop: leads back to {back or 'the input root'!r}"))
                elif ident in first_path:
                    out.ignored["folders reached twice through symlinks (listed once)"] += 1
                else:
                    first_path[ident] = r
                    subdirs.append((r, (*ancestors, ident)))
                continue
            if not is_image_name(e.name):
                out.ignored["files without an image suffix"] += 1
                continue
            try:
                fst = e.stat()  # follows a symlink
            except OSError as ex:
                if ex.errno == errno.ELOOP:
                    out.skipped.append(Skipped(r, "symlink loop"))
                elif e.is_symlink():
                    out.skipped.append(Skipped(r, "broken symlink"))
                else:
                    out.skipped.append(Skipped(r, f"cannot stat: {ex.strerror or ex}"))
                continue
            add_listed(out, r, fst)
        stack.extend(reversed(subdirs))  # popped in name order
    return out


def scan_url(root: str) -> Listing:
    """The same for an fsspec URL (s3://bucket/train, gs://…, file://…): one recursive listing."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    path = path.rstrip("/")
    out = Listing(root.rstrip("/"), Files())
    for p, info in sorted(fs.find(path, detail=True).items()):
        rel = p[len(path) + 1 :]
        if any(part.startswith(".") for part in rel.split("/")):
            out.ignored["hidden entries"] += 1
        elif not is_image_name(rel):
            out.ignored["files without an image suffix"] += 1
        elif info.get("type", "file") != "file":
            out.skipped.append(Skipped(rel, f"not a regular file ({info.get('type')})"))
        else:
            size = info.get("size")
            out.files.append((rel, -1 if size is None else int(size), remote_mtime_ns(info)))
    return out


def read_list(list_file: Path) -> Listing:
    """A file list: one path per line (absolute, or relative to the list's folder); '#' comments.
    The root is the paths' common folder. Every listed path is checked like a scanned one. Read
    twice, a line at a time (the common folder, then the files): 1.28M paths are never a list."""
    base = list_file.parent.resolve()
    root = None
    for path in _listed_paths(list_file, base):
        folder = os.path.dirname(path)
        root = folder if root is None else os.path.commonpath([root, folder])
    if root is None:
        return Listing(str(base), Files())
    out = Listing(root, Files())
    for p in _listed_paths(list_file, base):
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        try:
            st = os.stat(p)
        except OSError as e:
            out.skipped.append(Skipped(rel, f"listed but cannot stat: {e.strerror or e}"))
            continue
        add_listed(out, rel, st)
    return out


def _listed_paths(list_file: Path, base: Path) -> Iterator[str]:
    with open(list_file, errors="surrogateescape") as f:
        for text in f:
            for line in text.splitlines():  # what str.splitlines splits, as when the list was read whole
                line = line.strip()
                if line and not line.startswith("#"):
                    yield os.path.normpath(line if os.path.isabs(line) else base / line)


def list_inputs(source: str) -> Listing:
    """The listing of a directory, an fsspec URL, or a `.txt` file list."""
    if "://" in source:
        return scan_url(source)
    p = Path(source)
    if p.is_dir():
        return scan_dir(p.resolve())
    if p.is_file() and p.suffix in (".txt", ".lst"):
        return read_list(p)
    raise ListingError(f"input {source!r} is not a directory, a URL, or a .txt file list")
