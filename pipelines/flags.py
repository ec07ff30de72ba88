"""CLI flags generated from config dataclasses, so each setting is declared exactly once.

A field becomes `--field-name` with its type, default and `help` from `field(metadata=...)`;
`metadata["positional"]` makes it positional; a bool defaulting to True becomes `--no-field-name`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def opt(default: Any = dataclasses.MISSING, help: str = "", positional: bool = False, **kw: Any) -> Any:
    """`field()` with the metadata `add_flags` reads."""
    meta = {"help": help, "positional": positional, **kw}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """`int | None` -> (int, True)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def add_flags(parser: argparse.ArgumentParser, cls: type, group: str | None = None) -> None:
    """One flag per field of `cls`; with `group`, listed under that heading in --help."""
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(group) if group else parser
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap(hints[f.name])
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"help": meta.get("help", "")}
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        if meta.get("positional"):
            if typing.get_origin(tp) is list:
                target.add_argument(f.name, nargs="+", type=typing.get_args(tp)[0], **kw)
            else:
                target.add_argument(f.name, type=tp, **kw)
        elif tp is bool:
            if default:
                target.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", **kw)
            else:
                target.add_argument(flag, dest=f.name, action="store_true", **kw)
        else:
            if default not in (None, ""):
                kw["help"] = f"{kw['help']} (default: {default})"
            metavar = None if "choices" in kw else tp.__name__.upper()
            target.add_argument(flag, dest=f.name, type=tp, default=default, metavar=metavar, **kw)


def from_args(cls: type[T], ns: argparse.Namespace) -> T:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
