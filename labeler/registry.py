"""Presets by name -> a labeler builder. Builders import their heavy dependencies themselves."""

from __future__ import annotations

from collections.abc import Callable

from .base import Labeler


def _empty() -> Labeler:
    from .empty import EmptyLabeler

    return EmptyLabeler()


PRESETS: dict[str, Callable[[], Labeler]] = {
    "empty": _empty,
}


def build_labeler(preset: str) -> Labeler:
    try:
        builder = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}") from None
    return builder()
