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

    def nbytes(self) -> int:
        return len(self.buf) + self.ends.itemsize * len(self.ends)

    def lengths(self) -> np.ndarray:
        return np.diff(np.frombuffer(self.ends, np.int64), prepend=0)


def sort_strings(col: Strings, rows: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """`rows` of `col` in the strings' order (stable: equal strings keep the order of `rows`), and
    the first pair of adjacent equal strings in that order (or None).

    Sorting 1.28M Python strings needs 1.28M objects; this sorts their first 32 bytes as four
    big-endian integers per string (numpy's stable lexsort; 32 bytes per string, briefly), then
    the runs that share those bytes and hold longer strings by their next 32 bytes, and so on."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return rows, None
    ends = np.frombuffer(col.ends, np.int64)
    lengths = np.diff(ends, prepend=0)
    buf = np.frombuffer(col.buf, np.uint8)
    try:
        order, same = _sort_from(col, buf, ends, lengths, rows, 0)
    finally:
        del buf, ends  # views pin the column's buffers: it could not grow while they live
    first = None
    length = lengths[order]
    for p in np.flatnonzero(same & (length[1:] == length[:-1])):
        a, b = int(order[p]), int(order[p + 1])
        if length[p] <= _WIDTH or col.raw(a) == col.raw(b):
            first = (a, b)
            break
    return order, first


_WIDTH = 32  # bytes compared per pass
_SMALL_RUN = 64  # runs this short that share a pass's bytes are ordered in Python


def _sort_from(
    col: Strings, buf: np.ndarray, ends: np.ndarray, lengths: np.ndarray, rows: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` sorted by their bytes from `offset` on (stable), and for each adjacent pair whether
    they share the pass's `_WIDTH` bytes."""
    length = lengths[rows] - offset
    start = ends[rows] - lengths[rows] + offset
    prefix = np.zeros((len(rows), _WIDTH), np.uint8)  # shorter strings padded with NUL, which sorts first
    for c in range(_WIDTH):
        has = np.flatnonzero(length > c)
        if not len(has):
            break
        prefix[has, c] = buf[start[has] + c]
    words = prefix.view(">u8").astype(np.uint64)
    del prefix, start
    order = np.lexsort(tuple(words[:, k] for k in reversed(range(words.shape[1]))))
    words = words[order]
    same = (words[1:] == words[:-1]).all(axis=1)
    del words
    out = rows[order]
    longer = length[order] > _WIDTH
    run = np.concatenate(([0], np.cumsum(~same)))
    for r in np.unique(run[1:][same & (longer[1:] | longer[:-1])]):
        lo, hi = int(np.searchsorted(run, r)), int(np.searchsorted(run, r, side="right"))
        if hi - lo <= _SMALL_RUN:
            out[lo:hi] = sorted(out[lo:hi].tolist(), key=lambda k: col.raw(k)[offset + _WIDTH :])
        else:
            out[lo:hi] = _sort_from(col, buf, ends, lengths, out[lo:hi], offset + _WIDTH)[0]
    return out, same
