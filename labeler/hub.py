"""Loading a Hugging Face model from a local directory or a hub id, with one-line errors: the one rule
of every Hugging Face model a labeler loads (`labeler/hf.py: load_segmenter`; Grounding DINO, SAM,
SAM-HQ, SAM 3).

A local directory loads directly. A hub id loads from the local cache first; if absent, one download
is tried with short timeouts (none with `HF_HUB_OFFLINE=1`), and a failure is a `LabelerLoadError`
that says how to pass a local directory instead. A path that does not exist is said to be one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TypeVar

from shards.errors import first_line

from .base import LabelerLoadError

T = TypeVar("T")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_local(source: str) -> bool:
    return os.path.isdir(source)


def check_source(source: str, what: str) -> None:
    """Refuse at once what cannot be a model: empty, a file, or a path that does not exist (anything
    that is not a directory and not shaped like a hub id `org/name`)."""
    if not source:
        raise LabelerLoadError(f"{what}: no model given")
    if os.path.isdir(source):
        return
    if os.path.exists(source):
        raise LabelerLoadError(f"{what} {source!r} is a file; pass the model's directory (config.json + weights)")
    if not _HUB_ID.match(source) or source.startswith((".", "~")):
        raise LabelerLoadError(f"{what} {source!r}: no such directory (nor a Hugging Face id like org/name)")


def from_pretrained(source: str, what: str, load: Callable[[bool], T]) -> T:
    """`load(local_files_only)` for `source`, with the cache-first, one-try download rule above."""
    from transformers.utils import logging as hf_logging

    check_source(source, what)
    hf_logging.disable_progress_bar()  # one bar per weight file and per worker is noise in job logs
    local = is_local(source)
    try:
        try:
            return load(True)
        except OSError:
            if local or os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
            os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
            return load(False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        where = (
            ""
            if local
            else (
                f"; pass a local directory (`huggingface-cli download {source} --local-dir DIR` where there is "
                "network, or `save_pretrained`), or pre-fill the Hugging Face cache (HF_HOME) on every worker"
            )
        )
        raise LabelerLoadError(f"cannot load {what} {source!r}: {first_line(e, 300)}{where}") from None


def model_type(source: str, what: str) -> str:
    """The `model_type` of the config at `source` (loaded by the rule above)."""
    from transformers import AutoConfig

    config = from_pretrained(source, what, lambda local: AutoConfig.from_pretrained(source, local_files_only=local))
    return config.model_type


def require_type(source: str, what: str, model_type: str, expected) -> None:
    """LabelerLoadError unless `model_type` (of the model at `source`, given as `what`) is one of
    `expected`."""
    if model_type not in expected:
        raise LabelerLoadError(f"{what} {source!r} is a {model_type} model; expected {' or '.join(sorted(expected))}")
