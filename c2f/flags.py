"""CLI flags generated from config dataclasses, so each setting is declared exactly once.

Configs describe their fields with standard `dataclasses.field(metadata=...)` (the pattern of
Hugging Face's `HfArgumentParser`), so the packages that own them import nothing to do so:

    batch_size: int = field(default=16, metadata={"help": "images per labeler call"})

A field becomes `--field-name` with its type, default, `help` and optional `choices`;
`metadata["positional"]` makes it positional; a bool that defaults to True becomes
`--field-name / --no-field-name`, so the help always reads the right way round.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _unwrap(tp: Any) -> Any:
    """`int | None` -> int."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None))
    return tp


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type, group: str | None = None) -> None:
    """One flag per field of `cls`; with `group`, listed under that heading in --help."""
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(group) if group else parser
    for f in dataclasses.fields(cls):
        tp = _unwrap(hints[f.name])
        meta = f.metadata
        default = _default(f)
        # argparse %-formats help strings: a literal % (e.g. "5% of the steps") must be doubled.
        kw: dict[str, Any] = {"help": meta.get("help", "").replace("%", "%%")}
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        if meta.get("positional"):
            if typing.get_origin(tp) is list:
                target.add_argument(f.name, nargs="+", type=typing.get_args(tp)[0], **kw)
            else:
                target.add_argument(f.name, type=tp, **kw)
        elif tp is bool:
            if default:
                kw["help"] += " (default: on)"
                target.add_argument(
                    flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=True, **kw
                )
            else:
                target.add_argument(flag_name(f.name), dest=f.name, action="store_true", **kw)
        else:
            if default not in (None, ""):
                kw["help"] += f" (default: {str(default).replace('%', '%%')})"
            metavar = None if "choices" in kw else tp.__name__.upper()
            target.add_argument(flag_name(f.name), dest=f.name, type=tp, default=default, metavar=metavar, **kw)


def from_args(cls: type[T], ns: argparse.Namespace) -> T:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
