"""Columns for millions of inputs that cost bytes per input, not Python objects per input.

A listing of ImageNet-1K held as 1.28M tuples of (str, int, int) costs ~230 bytes per input,
and a plan of `Item` dataclasses several hundred more; `Strings` keeps many short strings in one
buffer with one 8-byte end offset each (a path of ImageNet costs 30 + 8 bytes), and the numbers
go in arrays. Strings are stored as UTF-8 with `surrogatepass`, which gives back any Python
string exactly (file names that are not valid UTF-8 carry PEP 383 surrogates) and whose byte
order is the strings' code point order, so sorting the bytes sorts the strings as Python does.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

import numpy as np

ENCODING, ERRORS = "utf-8", "surrogatepass"
_TAKE = 8192  # strings gathered per numpy step (their bytes and an index of 8 bytes per byte)


class Strings:
    """An append-only column of strings: one byte buffer and the end offset of each string."""

    def __init__(self, values: Iterable[str] = ()):
        self.buf = bytearray()
        self.ends = array("q")
        for v in values:
            self.append(v)

    def append(self, value: str) -> None:
        self.buf += value.encode(ENCODING, ERRORS)
        self.ends.append(len(self.buf))

    def __len__(self) -> int:
        return len(self.ends)

    def raw(self, i: int) -> bytes:
        """String `i` as stored (UTF-8, surrogates kept)."""
        start = self.ends[i - 1] if i > 0 else 0
        return bytes(self.buf[start : self.ends[i]])

    def __getitem__(self, i: int) -> str:
        start = self.ends[i - 1] if i > 0 else 0
        return self.buf[start : self.ends[i]].decode(ENCODING, ERRORS)

    def __iter__(self) -> Iterator[str]:
        start = 0
        for end in self.ends:
            yield self.buf[start:end].decode(ENCODING, ERRORS)
            start = end

    def extend(self, values: list[str]) -> None:
        encoded = [v.encode(ENCODING, ERRORS) for v in values]
        base = len(self.buf)
        self.buf += b"".join(encoded)
        self.ends.extend(base + int(e) for e in np.cumsum([len(b) for b in encoded], dtype=np.int64))

    def take(self, rows: np.ndarray | list[int]) -> list[str]:
        """Strings `rows`, decoded: their bytes gathered by numpy and, when ASCII (ImageNet's
        names), decoded at once and cut, not one decode per string."""
        rows = np.asarray(rows, np.int64)
        out: list[str] = []
        for lo in range(0, len(rows), _TAKE):
            out += self._take(rows[lo : lo + _TAKE])
        return out

    def _take(self, rows: np.ndarray) -> list[str]:
        ends = np.frombuffer(self.ends, np.int64)
        length = _lengths(ends, rows)
        start = ends[rows] - length
        del ends  # the view would pin the buffer's size
        bounds = np.cumsum(length)
        gather = np.arange(int(bounds[-1]) if len(bounds) else 0, dtype=np.int64)
        gather += np.repeat(start - (bounds - length), length)
        buf = np.frombuffer(self.buf, np.uint8)
        blob = buf[gather].tobytes()
        del buf
        cuts = [0, *bounds.tolist()]
        if blob.isascii():
            text = blob.decode("ascii")
            return [text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        return [blob[a:b].decode(ENCODING, ERRORS) for a, b in zip(cuts, cuts[1:], strict=False)]


def sort_strings(col: Strings, rows: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """`rows` of `col` in the strings' order (stable: equal strings keep the order of `rows`), and
    the first pair of adjacent equal strings in that order (or None).

    Sorting 1.28M Python strings needs 1.28M objects; this sorts their first up to 32 bytes as
    big-endian 64-bit words (numpy's stable lexsort: at most 32 bytes per string, briefly), then
    the runs that share those bytes and hold longer strings by their next 32 bytes, and so on."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return rows, None
    ends = np.frombuffer(col.ends, np.int64)
    buf = np.frombuffer(col.buf, np.uint8)
    try:
        order, same = _sort_from(col, buf, ends, rows, 0)
    finally:
        del buf, ends  # views pin the column's buffers: it could not grow while they live
    for p in np.flatnonzero(same):  # shares its first bytes with the next: equal when all of it is equal
        a, b = int(order[p]), int(order[p + 1])
        if col.raw(a) == col.raw(b):
            return order, (a, b)
    return order, None


_WIDTH = 32  # bytes compared per pass
_SMALL_RUN = 64  # runs this short that share a pass's bytes are ordered in Python
_FILL = 1 << 15  # rows whose bytes are gathered per numpy step


def _lengths(ends: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return ends[rows] - np.where(rows > 0, ends[np.maximum(rows - 1, 0)], 0)


def _sort_from(
    col: Strings, buf: np.ndarray, ends: np.ndarray, rows: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` sorted by their bytes from `offset` on (stable), and for each adjacent pair whether
    they share the pass's bytes (and are no longer than them, or have equal lengths)."""
    longest = max(int(_lengths(ends, rows[lo : lo + _FILL]).max()) for lo in range(0, len(rows), _FILL))
    width = min(_WIDTH, max(8, -(-(longest - offset) // 8) * 8))
    words = np.empty((width // 8, len(rows)), np.uint64)  # big-endian words, NUL-padded (NUL sorts first)
    longer = np.empty(len(rows), bool)  # bytes beyond this pass's
    cols = np.arange(width)
    for lo in range(0, len(rows), _FILL):  # a block at a time: the gathers cost width x 8 bytes per row
        part = rows[lo : lo + _FILL]
        length = _lengths(ends, part)
        start = ends[part] - length + offset
        length -= offset
        longer[lo : lo + len(part)] = length > width
        inside = cols < length[:, None]
        if len(buf):
            block = np.where(inside, buf[np.where(inside, start[:, None] + cols, 0)], 0).astype(np.uint8)
        else:  # only empty strings
            block = np.zeros(inside.shape, np.uint8)
        words[:, lo : lo + len(part)] = block.view(">u8").astype(np.uint64).T
        del block, inside
    order = np.lexsort(words[::-1])  # the last key is the primary one
    same = np.ones(len(rows) - 1, bool)
    for w in words:
        w = w[order]
        same &= w[1:] == w[:-1]
    del words
    out, longer = rows[order], longer[order]
    del order
    tied = np.flatnonzero(same & (longer[1:] | longer[:-1]))  # pairs whose order needs more bytes
    if len(tied):
        run = np.concatenate(([0], np.cumsum(~same)))
        for r in np.unique(run[tied + 1]):
            lo, hi = int(np.searchsorted(run, r)), int(np.searchsorted(run, r, side="right"))
            if hi - lo <= _SMALL_RUN:
                out[lo:hi] = sorted(out[lo:hi].tolist(), key=lambda k: col.raw(k)[offset + width :])
            else:
                out[lo:hi] = _sort_from(col, buf, ends, out[lo:hi], offset + width)[0]
    return out, same


def return_freed_memory() -> None:
    """Hand the memory freed by a large phase (planning millions of inputs) back to the system.
    glibc keeps freed blocks of its heap for reuse, so a driver's RSS would stay at its planning
    peak for a multi-day job; `malloc_trim` returns them. A no-op where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
