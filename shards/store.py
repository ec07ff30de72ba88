"""Where a labeling job's output lives: a local directory or an fsspec URL (`s3://`, `gs://`, …).

Every file the job writes goes through a `Store`, so the same exactly-once rules hold on both:
- a file appears whole or not at all: locally a temp file + fsync + rename, on object storage one
  PUT (an object is visible only once its upload completed);
- a shard's tar is published before its stats JSON (the done-marker), so listing the markers is how
  a rerun resumes, on a bucket as on a disk.
Shards are written to local staging space first (`staging_dir`) and published with `publish`.

Conditional writes (`create`, `swap`) serve the output lease (shards/lease.py): exact where the
store can do them (a filesystem: hard link, rename aside; S3: `If-None-Match: *` and `If-Match`
on PUT), a read-compare-write elsewhere (`exact_conditional` says which).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from . import format as fmt
from .location import is_local, local_path
from .writer import atomic_write_bytes, atomic_writer, no_space

# Object stores whose PUT takes `If-None-Match: *` and `If-Match: <etag>` (AWS S3 since 2024, MinIO,
# moto's server), through s3fs.
_CONDITIONAL_PROTOCOLS = frozenset({"s3", "s3a"})


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = str(root).rstrip("/")
        self.local = is_local(self.root)
        if self.local:
            self.root = local_path(self.root)
            self._fs = None
        else:
            import fsspec

            self._fs, self._base = fsspec.core.url_to_fs(self.root)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def __str__(self) -> str:
        return self.root

    def url(self, name: str) -> str:
        return os.path.join(self.root, name) if self.local else f"{self.root}/{name}"

    def _key(self, name: str) -> str:
        return f"{self._base.rstrip('/')}/{name}"

    def makedirs(self) -> None:
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            self._fs.makedirs(self._base, exist_ok=True)

    # --- files -------------------------------------------------------------------------------

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomic: the file appears complete or not at all."""
        if self.local:
            atomic_write_bytes(Path(self.root) / name, data)
        else:
            self._fs.pipe_file(self._key(name), data)  # one PUT

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        """A file written in pieces, atomic like `write_bytes`: locally a temp file renamed when
        complete; on object storage a local temp file uploaded when complete."""
        if self.local:
            with atomic_writer(Path(self.root) / name) as f:
                yield f
            return
        with tempfile.TemporaryDirectory(prefix="c2f-upload-") as tmp:
            with open(Path(tmp) / name, "wb") as f:
                yield f
            self._fs.put_file(str(Path(tmp) / name), self._key(name))

    def reader(self, name: str) -> BinaryIO:
        """The file opened for reading in pieces (buffered; seekable, by ranged reads on object
        storage). FileNotFoundError when it does not exist."""
        if self.local:
            return open(Path(self.root) / name, "rb")  # noqa: SIM115 - the caller closes it
        # fsspec's file lacks part of io's API (`readline(limit)`, which bounds a line's memory).
        return io.BufferedReader(self._fs.open(self._key(name), "rb"))  # type: ignore[arg-type]

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file (one ranged read on object storage)."""
        if self.local:
            with open(Path(self.root) / name, "rb") as f:
                f.seek(start)
                return f.read(end - start)
        return self._fs.cat_file(self._key(name), start=start, end=end)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def read_bytes(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            if self.local:
                return (Path(self.root) / name).read_bytes()
            return self._fs.cat_file(self._key(name))
        except FileNotFoundError:
            return None

    def read_json(self, name: str) -> Any | None:
        data = self.read_bytes(name)
        return None if data is None else json.loads(data)

    def size(self, name: str) -> int | None:
        try:
            if self.local:
                return (Path(self.root) / name).stat().st_size
            return int(self._fs.size(self._key(name)))
        except FileNotFoundError:
            return None

    def list(self) -> dict[str, int]:
        """{name: size} of the files directly inside the store (one listing call on a bucket)."""
        if self.local:
            out = {}
            with os.scandir(self.root) as it:
                for e in it:
                    if e.is_file(follow_symlinks=False):
                        out[e.name] = e.stat(follow_symlinks=False).st_size
            return out
        try:
            entries = self._fs.ls(self._base, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e.get("type") == "file"}

    def remove(self, name: str) -> None:
        try:
            if self.local:
                (Path(self.root) / name).unlink()
            else:
                self._fs.rm_file(self._key(name))
        except FileNotFoundError:
            pass

    # --- shards ------------------------------------------------------------------------------

    def staging_dir(self) -> str:
        """Where a shard task writes its tar before `publish`: the output directory itself when it
        is local (the writer's temp name + rename is the publish), else node-local temp space."""
        if self.local:
            return self.root
        try:
            return tempfile.mkdtemp(prefix="c2f-staging-")
        except OSError as e:
            if full := no_space(e, Path(tempfile.gettempdir()) / "c2f-staging-"):
                raise full from e
            raise

    def publish(self, staged: str | os.PathLike, name: str) -> None:
        """Move a finished local file to `name` in the store (upload, then drop the local copy)."""
        staged = Path(staged)
        if self.local:
            if staged != Path(self.root) / name:
                os.replace(staged, Path(self.root) / name)
            return
        self._fs.put_file(str(staged), self._key(name))
        staged.unlink()

    def discard_staging(self, staging: str) -> None:
        if not self.local:
            shutil.rmtree(staging, ignore_errors=True)

    # --- conditional writes (the output lease) ---------------------------------------------------

    @property
    def exact_conditional(self) -> bool:
        """Whether `create` and `swap` are atomic here (a filesystem, S3); elsewhere they read,
        compare and write, and a race between two writers can go unseen."""
        if self.local:
            return True
        protocol = self._fs.protocol
        return bool(({protocol} if isinstance(protocol, str) else set(protocol)) & _CONDITIONAL_PROTOCOLS)

    def read_versioned(self, name: str) -> tuple[bytes, str] | None:
        """The file's bytes and a version that changes whenever it is rewritten (on S3 its ETag,
        elsewhere a hash of the bytes); None when it does not exist."""
        if self.local or not self.exact_conditional:
            data = self.read_bytes(name)
            return None if data is None else (data, hashlib.sha256(data).hexdigest())
        key = self._key(name)
        for _ in range(5):  # the ETag before and after the read agree: the bytes are that version
            try:
                before = self._fs.info(key, refresh=True).get("ETag")
                data = self._fs.cat_file(key)
                after = self._fs.info(key, refresh=True).get("ETag")
            except FileNotFoundError:
                return None
            if before == after and before:
                return data, before
        raise OSError(errno.EAGAIN, f"{self.url(name)} changed during every read")

    def create(self, name: str, data: bytes) -> str | None:
        """Write `name` only if it does not exist; the new version, or None when it existed."""
        if self.local:
            path = Path(self.root) / name
            tmp = path.with_name(fmt.temp_name(name, f"{os.getpid()}-{secrets.token_hex(4)}"))
            atomic_write_bytes(tmp, data)  # complete before it can be seen under `name`
            try:
                os.link(tmp, path)  # fails if `name` exists, on NFS as locally
            except FileExistsError:
                return None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                return self._create_exclusive(path, data)  # a filesystem without hard links
            finally:
                tmp.unlink(missing_ok=True)
            return hashlib.sha256(data).hexdigest()
        key = self._key(name)
        if not self.exact_conditional:
            if self._fs.exists(key):
                return None
            self._fs.pipe_file(key, data)
            return hashlib.sha256(data).hexdigest()
        try:
            out = self._fs.pipe_file(key, data, IfNoneMatch="*")  # one PUT; 412 when the key exists
        except FileExistsError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:  # 412 Precondition Failed, as older s3fs reports it
                return None
            raise
        return self._version_after_put(name, out)

    def _create_exclusive(self, path: Path, data: bytes) -> str | None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return hashlib.sha256(data).hexdigest()

    def swap(self, name: str, data: bytes, version: str) -> str | None:
        """Replace `name` with `data` only if it is still at `version`; the new version, or None when
        it changed or vanished meanwhile. Locally the old file is renamed aside and checked, so for
        a moment `name` does not exist: a `create` then wins, and this swap returns None."""
        if self.local:
            path = Path(self.root) / name
            aside = path.with_name(fmt.temp_name(name, f"{os.getpid()}-{secrets.token_hex(4)}-old"))
            try:
                os.rename(path, aside)  # only one of several swappers gets the file
            except FileNotFoundError:
                return None
            try:
                if hashlib.sha256(aside.read_bytes()).hexdigest() != version:
                    with contextlib.suppress(FileExistsError):
                        os.link(aside, path)  # not the file we judged: put it back (unless replaced)
                    return None
                return self.create(name, data)
            finally:
                aside.unlink(missing_ok=True)
        if not self.exact_conditional:
            current = self.read_versioned(name)
            if current is None or current[1] != version:
                return None
            self.write_bytes(name, data)
            return hashlib.sha256(data).hexdigest()
        try:
            out = self._fs.pipe_file(self._key(name), data, IfMatch=version)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:  # 412 Precondition Failed: another version is there now
                return None
            raise
        return self._version_after_put(name, out)

    def _version_after_put(self, name: str, response: Any) -> str | None:
        etag = response.get("ETag") if isinstance(response, dict) else None
        if etag:
            return etag
        with contextlib.suppress(FileNotFoundError):
            return self._fs.info(self._key(name), refresh=True).get("ETag")
        return None
