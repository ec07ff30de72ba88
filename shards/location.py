"""Where shards live: local paths, `file://`, or any fsspec URL (`s3://`, `gs://`, `memory://` …).

Local paths use the operating system directly (fsspec's local wrapper would add a Python call
to every small tarfile read); everything else goes through fsspec, imported only when needed.
"""

from __future__ import annotations

import os

from . import format as fmt


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url.removeprefix("file://")


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def open_url(url: str):
    """A binary stream for reading."""
    if is_local(url):
        return open(local_path(url), "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def read_text(url: str) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        with open_url(url) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def read_bytes(url: str, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when it does not exist; ValueError when it holds more than
    `max_bytes` (read no further: a file someone else wrote may be of any size)."""
    parts, n = [], 0
    try:
        with open_url(url) as f:
            while n <= max_bytes:  # in steps: read(max_bytes) would allocate max_bytes at once
                part = f.read(min(1 << 20, max_bytes + 1 - n))
                if not part:
                    break
                parts.append(part)
                n += len(part)
    except (FileNotFoundError, IsADirectoryError):
        return None
    if n > max_bytes:
        raise ValueError(f"{url.rsplit('/', 1)[-1]} exceeds the {max_bytes}-byte limit")
    return b"".join(parts)


def list_names(url: str) -> list[str]:
    """Names of the files directly inside a directory (local or fsspec), sorted; [] if none."""
    if is_local(url):
        path = local_path(url)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.isdir(root) else []


def list_shards(url: str) -> list[str] | None:
    """Shard URLs directly inside a directory, sorted; None when `url` is not a directory."""
    if is_local(url):
        path = local_path(url)
        if not os.path.isdir(path):
            return None
        prefix = "file://" if url.startswith("file://") else ""
        return [prefix + os.path.join(path, n) for n in sorted(os.listdir(path)) if fmt.parse_shard_name(n)]
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root):
        return None
    scheme = url.split("://", 1)[0]
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    return [f"{scheme}://{join(root, n)}" for n in names if fmt.parse_shard_name(n)]
