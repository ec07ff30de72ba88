"""Write stage: samples -> one reproducible, atomically published tar shard.

A shard is written to a temporary name beside its final one, fsynced and renamed, so a crash
at any instant leaves either no `.tar` or a complete one under the final name. Members carry a
fixed mtime, uid/gid 0 and no user names, and samples must come in strictly increasing key order:
the same input gives byte-identical shards and a shard can never hold a key twice.

A full disk (or quota) is an error, not damage: the temp file is removed and `OutputFull` names
the file and the free space where it was being written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import format as fmt
from .errors import UsageError
from .tar import HashingWriter

NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class OutputFull(UsageError):
    """No space (ENOSPC) or no quota (EDQUOT) left where a shard or a dataset file was being
    written. Retrying cannot help until someone frees space, so the job stops (`stops_job`):
    finished shards are kept and a rerun goes on from them."""

    stops_job = True


def free_space(path: str | os.PathLike) -> str:
    """`1.2 GiB free of 50.0 GiB` for the filesystem holding `path` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return "free space unknown"
    return f"{_bytes(usage.free)} free of {_bytes(usage.total)}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def no_space(e: BaseException, path: str | os.PathLike) -> OutputFull | None:
    """`e` as an `OutputFull` naming `path` and the free space there, when it says the disk or the
    quota is full; None for any other error."""
    if not isinstance(e, OSError) or e.errno not in NO_SPACE:
        return None
    what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
    return OutputFull(
        f"{what} writing {path} ({free_space(Path(path).parent)}); free space there and rerun: finished shards are kept"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file + fsync + rename (`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A file written in pieces (a listing of millions of lines is never one string in memory)
    that appears at `path` whole or not at all: a temp file, fsync, rename; on any failure the temp
    file is removed (a full disk is `OutputFull`)."""
    path = Path(path)
    tmp = path.with_name(fmt.temp_name(path.name, os.getpid()))
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if full := no_space(e, path):
            raise full from e
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def member_header(name: str, size: int) -> bytes:
    """The header tarfile writes (PAX format) for a member of a shard: mode 0o444, uid/gid 0, no
    user names, `FIXED_MTIME`. An ASCII name of at most 100 characters (every key c2f makes from
    ImageNet) gets a plain ustar block, laid out here because `TarInfo.tobuf` costs ~50 µs a
    member; any other name gets tarfile's own, with a pax record before it."""
    if len(name) > 100 or not name.isascii() or size >= 8**11:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = size, fmt.FIXED_MTIME, 0o444
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    block = bytearray(tarfile.BLOCKSIZE)  # unset fields (link name, user names, device numbers) are NULs
    block[0 : len(name)] = name.encode("ascii")
    block[100:156] = b"0000444\x000000000\x000000000\x00%011o\x00%011o\x00        " % (size, fmt.FIXED_MTIME)
    block[156:157] = tarfile.REGTYPE
    block[257:265] = tarfile.POSIX_MAGIC
    block[148:155] = b"%06o\x00" % sum(block)  # summed with the checksum field as 8 spaces, as tarfile does
    return bytes(block)


@dataclass
class ShardInfo:
    """What the manifest and the stats JSON record of a finished shard."""

    name: str
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ShardWriter:
    """`with ShardWriter(path) as w: w.write(key, members)`; the tar appears only on a clean exit.

    Zero samples produce no file at all (an empty tar is a finding, not a shard): `close()`
    returns a `ShardInfo` with `samples == 0` and the caller records the shard as empty.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tmp = self.path.with_name(fmt.temp_name(self.path.name, os.getpid()))
        try:
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed by close() or abort()
        except OSError as e:
            if full := no_space(e, self.path):
                raise full from e
            raise
        self._hashing = HashingWriter(self._file)
        self._last_key: str | None = None
        self.samples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key or not key:
            raise ValueError(f"invalid sample key {key!r}: keys have no dots or slashes")
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(f"keys must be strictly increasing: {key!r} after {self._last_key!r}")
        missing = [ext for ext in fmt.REQUIRED_MEMBERS if ext not in members]
        if missing:
            raise ValueError(f"{key}: missing members {missing}")
        parts = []
        for ext in sorted(members):
            data = members[ext]
            # What tarfile.addfile writes (header, data, zero padding to a block), in one write and
            # one hash update per sample instead of a copy through 16 KB reads per member.
            parts += [member_header(f"{key}.{ext}", len(data)), data, bytes(-len(data) % tarfile.BLOCKSIZE)]
        try:
            self._hashing.write(b"".join(parts))
        except OSError as e:
            self._failed(e)
        self._last_key = key
        self.samples += 1

    def close(self) -> ShardInfo:
        try:
            # The end of the archive as tarfile.close writes it: two zero blocks, then zeros up to a
            # whole record.
            end = self._hashing.size + 2 * tarfile.BLOCKSIZE
            self._hashing.write(bytes(2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE))
            self._file.flush()
            os.fsync(self._file.fileno())  # a full disk may only say so here (NFS, delayed allocation)
            self._file.close()
            info = ShardInfo(self.path.name, self.samples, self._hashing.size, self._hashing.sha256.hexdigest())
            if self.samples == 0:
                self._tmp.unlink()
                return ShardInfo(self.path.name, 0, 0, "")
            os.replace(self._tmp, self.path)
        except OSError as e:
            self._failed(e)
        return info

    def _failed(self, e: OSError):
        """A write of the tar failed: remove the temp file; a full disk becomes `OutputFull`."""
        self.abort()
        if full := no_space(e, self.path):
            raise full from e
        raise e

    def abort(self) -> None:
        """Drop the temp file (idempotent). Closing may fail again on a full disk (buffered bytes
        that cannot be flushed): the descriptor is closed all the same."""
        try:
            with contextlib.suppress(OSError):
                self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.info = self.close()
        else:
            self.abort()
