"""The errors a user can cause, shared by every package so the CLI can answer each in one line.

`UsageError` (exit 2): the command cannot run as asked (a flag, a path, a model id, a plan that
does not match the output directory). `DataError` (exit 1): the command ran and the data is not
what it should be (no shards, a corrupt checkpoint). Anything else is a bug and keeps its traceback
under `c2f --debug`.
"""

from __future__ import annotations


class C2FError(Exception):
    """Base of user-facing errors; `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(C2FError):
    exit_code = 2


class DataError(C2FError):
    exit_code = 1


def first_line(e: BaseException, limit: int | None = None, *, typed: bool = False) -> str:
    """The first line of an exception's message (many libraries' messages are paragraphs of advice),
    cut to `limit` characters; the exception's type name when the message is empty. `typed`: as
    `Type: first line`, for messages that stand without their context (a quarantine reason)."""
    text = str(e).strip()
    line = text.splitlines()[0][:limit] if text else ""
    if not line:
        return type(e).__name__
    return f"{type(e).__name__}: {line}" if typed else line
