"""Reading and hashing tar shards: the one bounded path that validate, inspect and the reader share.

    open stream -> HashingReader (sha256 + size of every byte read) -> tar_members -> group_samples

`tar_members` parses the tar headers itself (POSIX ustar, pax and GNU long names: every tar that
Python's `tarfile`, GNU tar, bsdtar and webdataset write). It never trusts a size it has not
checked: a member is read only if it is a regular, non-sparse file of at most `max_member` bytes,
anything else is read past in 1 MiB steps (so it is still hashed) and reported, and metadata
(pax records, GNU long names) is read only up to `MAX_HEADER_BYTES`. Memory is therefore bounded
by `max_member` whatever a header claims. It also costs about a fifth of `tarfile` per member,
which matters: validation is meant to be bound by JPEG decoding (docs/BENCHMARKS.md).

Problems with one member go to a callback and the member is skipped; a file that is not a tar, or
ends early, raises `TarError`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator

from . import format as fmt

MAX_MEMBER_BYTES = fmt.MAX_MEMBER_BYTES  # the largest member any reader accepts
MAX_HEADER_BYTES = 1 << 20  # a pax header or GNU long name (c2f writes neither; real ones are < 1 KB)
BLOCK = 512

# Problem codes (the validator's finding codes for them; docs/FORMAT.md lists every code).
NOT_A_TAR = "not-a-tar"
TRUNCATED = "truncated"
UNSAFE_NAME = "unsafe-member-name"
BAD_MEMBER = "bad-member"
DUPLICATE_KEY = "duplicate-key"
BAD_KEY = "bad-key"
UNEXPECTED_MEMBER = "unexpected-member"

Report = Callable[[str | None, str, str], None]  # (key or None, code, message)

_REGULAR = (b"0", b"\0", b"7")
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symlink",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
}


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


def _number(field: bytes) -> int:
    """A numeric header field: octal ASCII (NUL/space padded) or GNU base-256 (first byte 0x80/0xff)."""
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * (len(field) - 1))) if field[:1] == b"\xff" else n
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(hdr: bytes) -> bool:
    try:
        want = _number(hdr[148:156])
    except ValueError:
        return False
    unsigned = sum(hdr[:148]) + sum(hdr[156:]) + 8 * 32  # the checksum field counts as 8 spaces
    if want == unsigned:
        return True
    high = sum(1 for b in hdr[:148] + hdr[156:] if b > 127)
    return want == unsigned - 256 * high  # some old tars summed signed chars


def _pax_records(data: bytes) -> dict[str, str]:
    """`%d %s=%s\\n` records; a malformed one raises ValueError."""
    out, pos = {}, 0
    while pos < len(data):
        if data[pos] == 0:  # padding
            break
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        rec = data[sp + 1 : pos + length]
        if length <= sp - pos or not rec.endswith(b"\n") or b"=" not in rec:
            raise ValueError("malformed pax record")
        k, _, v = rec[:-1].partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _name(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _Stream:
    """Exact reads from a buffered stream; the offset says where a problem was found."""

    def __init__(self, f):
        self.f, self.offset = f, 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.offset += len(data)
        return data

    def skip(self, n: int) -> int:
        """Read past `n` bytes in 1 MiB steps; returns how many there were."""
        done = 0
        while done < n:
            got = len(self.f.read(min(n - done, 1 << 20)))
            if not got:
                break
            done += got
        self.offset += done
        return done


def tar_members(stream, max_member: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, data, problem) for every member, in tar order; `data` is None when the member is not
    read (not a regular file, sparse, over `max_member`) and `problem` says why. Raises `TarError`
    for a file that is not a tar, ends inside a member, or lacks the end-of-archive marker (a copy
    cut off exactly at a member boundary). `stream` should be buffered (io.BufferedReader)."""
    s = _Stream(stream)
    pax: dict[str, str] = {}
    long_name: str | None = None
    first = True
    while True:
        at = s.offset
        hdr = s.read(BLOCK)
        if not hdr:
            if first:
                raise TarError(NOT_A_TAR, "not a tar archive (empty file)")
            raise TarError(TRUNCATED, f"truncated tar: no end-of-archive marker after byte {at}")
        if len(hdr) < BLOCK:
            code = NOT_A_TAR if first else TRUNCATED
            raise TarError(code, f"{'not a tar archive' if first else 'truncated tar'}: {len(hdr)}-byte block at {at}")
        if not hdr.strip(b"\0"):
            second = s.read(BLOCK)
            if len(second) != BLOCK or second.strip(b"\0"):
                raise TarError(TRUNCATED, f"truncated tar: incomplete end-of-archive marker at byte {at}")
            return
        if not _checksum_ok(hdr):
            if first:
                raise TarError(NOT_A_TAR, "not a tar archive (bad header checksum)")
            raise TarError(TRUNCATED, f"corrupt tar: bad header checksum at byte {at}")
        first = False
        kind = hdr[156:157]
        try:
            size = _number(hdr[124:136])
        except ValueError:
            raise TarError(TRUNCATED, f"corrupt tar: unreadable size field at byte {at}") from None
        if kind in (b"x", b"g", b"L", b"K"):  # metadata for the next member (or all members: 'g')
            if size > MAX_HEADER_BYTES:
                raise TarError(TRUNCATED, f"corrupt tar: a {size}-byte extended header at byte {at}")
            data = s.read(size)
            s.skip(-size % BLOCK)
            if len(data) != size:
                raise TarError(TRUNCATED, f"truncated tar: extended header at byte {at} ends early")
            if kind == b"x":
                try:
                    pax.update(_pax_records(data))
                except ValueError:
                    raise TarError(TRUNCATED, f"corrupt tar: malformed pax header at byte {at}") from None
            elif kind == b"L":
                long_name = _name(data)
            continue  # 'g' (global) and 'K' (long link name) change nothing we read
        name = pax.get("GNU.sparse.name") or pax.get("path") or long_name or _name(hdr[0:100])
        if hdr[257:263] == b"ustar\0" and hdr[345] and not pax.get("path") and long_name is None:
            name = _name(hdr[345:500]) + "/" + name  # POSIX ustar prefix field
        if kind == b"5":
            name = name.rstrip("/") or name  # as tarfile names directories
        sparse = kind == b"S" or any(k.startswith("GNU.sparse.") for k in pax)
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise TarError(TRUNCATED, f"corrupt tar: pax size {pax['size']!r} at byte {at}") from None
        pax, long_name = {}, None
        if size < 0:
            raise TarError(TRUNCATED, f"corrupt tar: negative size at byte {at}")
        if kind == b"S" and hdr[482]:  # old GNU sparse: more sparse maps follow the header
            while True:
                ext = s.read(BLOCK)
                if len(ext) != BLOCK:
                    raise TarError(TRUNCATED, f"truncated tar: sparse map of {name!r} ends early")
                if not ext[504]:
                    break
        padded = size + (-size % BLOCK)
        problem = None
        if sparse:
            problem = "sparse member (c2f never writes one; its real size is unbounded)"
        elif kind not in _REGULAR:
            problem = f"member is not a regular file ({_TYPE_NAMES.get(kind, f'type {kind!r}')})"
        elif size > max_member:
            problem = f"member of {size} bytes exceeds the {max_member}-byte limit"
        if problem:
            if s.skip(padded) != padded:
                raise TarError(TRUNCATED, f"truncated tar: {name} ends early")
            yield name, None, problem
            continue
        data = s.read(size)
        if len(data) != size:
            raise TarError(TRUNCATED, f"truncated tar: {name} has {len(data)} of {size} bytes")
        if s.skip(padded - size) != padded - size:
            raise TarError(TRUNCATED, f"truncated tar: {name} ends early")
        yield name, data, None


def group_samples(
    members: Iterator[tuple[str, bytes | None, str | None]], report: Report
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive members by key. Reported and skipped: unsafe names, unread members, keys
    that break the key rules, extensions that are not members of the format (`KEY.__key__` would
    rename a sample in webdataset), and repeated keys or members."""
    seen: set[str] = set()
    bad_keys: set[str] = set()
    key: str | None = None
    sample: dict[str, bytes] = {}
    for name, data, problem in members:
        unsafe = fmt.unsafe_member_name(name)
        if unsafe:
            report(None, UNSAFE_NAME, f"member {name!r}: {unsafe}")
            continue
        k, ext = fmt.split_member(name)
        if problem or data is None:
            report(k, BAD_MEMBER, f"{name!r}: {problem}")
            continue
        why = fmt.bad_key(k)
        if why:
            if k not in bad_keys:
                report(k, BAD_KEY, f"member {name!r}: {why}")
                bad_keys.add(k)
            continue
        if ext not in fmt.ALL_MEMBERS:
            report(k, UNEXPECTED_MEMBER, f"member {name!r}: .{ext} is not a member of the format")
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
