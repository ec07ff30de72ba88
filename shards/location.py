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
