"""Reading and hashing tar shards: the one bounded path that validate, inspect and the reader share.

    open stream -> HashingReader (sha256 + size of every byte read) -> tar_members -> group_samples

Bounds: a member is read only if it is a regular, non-sparse file no larger than `max_member`
bytes, so a header that claims gigabytes costs nothing; a pax header is bounded by the file's
real size (tarfile reads it from the stream). Problems with one member are reported through a
callback and the member is skipped; a file that is not a tar, or ends early, raises `TarError`.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator

from . import format as fmt

MAX_MEMBER_BYTES = 64 << 20  # the largest member any reader accepts (ImageNet's largest JPEG is ~15 MB)

# Problem codes (the validator's finding codes for them; docs/FORMAT.md lists every code).
NOT_A_TAR = "not-a-tar"
TRUNCATED = "truncated"
UNSAFE_NAME = "unsafe-member-name"
BAD_MEMBER = "bad-member"
DUPLICATE_KEY = "duplicate-key"

Report = Callable[[str | None, str, str], None]  # (key or None, code, message)


class TarError(Exception):
    """The stream is not a readable tar; `code` is NOT_A_TAR or TRUNCATED."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.sha256.update(memoryview(b)[:n])
            self.size += n
        return n or 0

    def drain(self) -> None:
        """Read to the end, so the hash covers the whole file."""
        while self.read(1 << 20):
            pass


class HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it (the shard writer's)."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._f.write(b)
        self.sha256.update(b)
        self.size += len(b)
        return len(b)

    def tell(self) -> int:
        return self.size


def tar_members(stream, max_member: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, data, problem) for every member, in tar order; `data` is None when the member is not
    read (not a regular file, sparse, over `max_member`) and `problem` says why. Raises `TarError`
    for a file that is not a tar, ends inside a member, or lacks the end-of-archive marker (a copy
    cut off exactly at a member boundary)."""
    try:
        tf = tarfile.open(fileobj=stream, mode="r|")
    except (tarfile.ReadError, EOFError) as e:
        raise TarError(NOT_A_TAR, f"not a tar archive ({e})") from None
    try:
        for ti in tf:
            if not ti.isfile():
                yield ti.name, None, f"member is not a regular file (type {ti.type!r})"
            elif ti.issparse():
                yield ti.name, None, "sparse member (c2f never writes one; its real size is unbounded)"
            elif ti.size > max_member:
                yield ti.name, None, f"member of {ti.size} bytes exceeds the {max_member}-byte limit"
            else:
                f = tf.extractfile(ti)
                data = f.read(ti.size) if f else b""
                if len(data) != ti.size:
                    raise TarError(TRUNCATED, f"truncated tar: {ti.name} has {len(data)} of {ti.size} bytes")
                yield ti.name, data, None
        # The iteration stopped on a zero block (the marker's first half: read, so the position is
        # one block past the offset) or on end of file (position == offset); the second half follows.
        saw_zero_block = tf.fileobj.tell() == tf.offset + tarfile.BLOCKSIZE
        second = tf.fileobj.read(tarfile.BLOCKSIZE)
    except (tarfile.ReadError, EOFError, OSError, ValueError, UnicodeError, OverflowError) as e:
        raise TarError(TRUNCATED, f"truncated or corrupt tar ({type(e).__name__}: {e})") from None
    if not saw_zero_block or len(second) != tarfile.BLOCKSIZE or second.strip(b"\0"):
        raise TarError(TRUNCATED, f"truncated tar: no end-of-archive marker after byte {tf.offset}")


def group_samples(
    members: Iterator[tuple[str, bytes | None, str | None]], report: Report
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive members by key; report unsafe names, unread members and split keys."""
    seen: set[str] = set()
    key: str | None = None
    sample: dict[str, bytes] = {}
    for name, data, problem in members:
        unsafe = fmt.unsafe_member_name(name)
        if unsafe:
            report(None, UNSAFE_NAME, f"member {name!r}: {unsafe}")
            continue
        k, ext = fmt.split_member(name)
        if problem or data is None:
            report(k, BAD_MEMBER, f"{name}: {problem}")
            continue
        if k != key:
            if key is not None:
                yield key, sample
            if k in seen:
                report(k, DUPLICATE_KEY, f"key {k!r} appears twice in this shard")
            seen.add(k)
            key, sample = k, {}
        if ext in sample:
            report(k, DUPLICATE_KEY, f"member {name!r} appears twice")
        sample[ext] = data
    if key is not None:
        yield key, sample


def read_samples(path: str, report: Report | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for every sample of a local shard; raises `TarError` if it is not a
    readable tar. Problems with single members go to `report` (default: ignored)."""
    with open(path, "rb") as f:
        members = tar_members(io.BufferedReader(HashingReader(f), 1 << 20))
        yield from group_samples(members, report or (lambda key, code, message: None))
