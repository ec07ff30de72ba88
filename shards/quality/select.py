"""`c2f filter OUTPUT --where EXPR --out LIST`: pick samples by their report measures, and the
subset files that the reader and `c2f pretrain --subset` accept. No shard is rewritten.

The condition language is parsed here, by hand, and evaluated on whole columns with numpy; it is
never handed to `eval` (a --where string is data, whoever wrote it):

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)*      chains: 0.2 < coverage <= 0.9
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER | STRING | NAME | "(" expr ")"

NAMEs are samples.csv's columns (the measures, `cls`, `width`, `height`, `index`, `key`,
`shard`); STRINGs ('...' or "...") compare only with `==` / `!=` against `key` and `shard`.
An undefined measure (a mean score without instances) is NaN: every comparison with it is
false, so `not (score >= 0)` selects the images that have no score.

Subset files: `.txt` is one key per line. `.json` is a wids dataset description (`wids_version`,
`shardlist` of the shards that hold a selected sample, with URLs relative to the file) plus a
`c2f_subset` object: the keys by shard, their positions in the shardlist's samples (`indices`,
for `torch.utils.data.Subset(wids.ShardListDataset(path), indices)`), the condition, and the
fingerprint of the labeled data it was made from.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..location import is_local, local_path
from ..writer import atomic_write_bytes, atomic_write_json
from .config import FilterConfig

SUBSET_KIND = "c2f-subset-v1"

# --- the condition language ----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<str>'[^']*'|"[^"]*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\))
    )""",
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not"}
COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}


class ExprError(UsageError):
    """A --where string that does not parse or does not fit the columns; says where."""


@dataclass(frozen=True)
class Tok:
    kind: str  # num | str | name | op | kw | end
    text: str
    pos: int


def tokenize(src: str) -> list[Tok]:
    toks, pos = [], 0
    while True:
        while pos < len(src) and src[pos].isspace():
            pos += 1
        if pos == len(src):
            return [*toks, Tok("end", "", pos)]
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise ExprError(f"--where: unexpected {src[pos]!r} at column {pos + 1}: {src}")
        kind = m.lastgroup or ""
        text, start = m.group(kind), m.start(kind)
        if kind == "name" and text in KEYWORDS:
            kind = "kw"
        toks.append(Tok(kind, text, start))
        pos = m.end()


# AST: ("num", float) | ("str", str) | ("name", str) | ("neg", e) | ("not", e) | ("and", a, b) | ("or", a, b)
#      | ("arith", op, a, b) | ("cmp", [e0, e1, ...], [op1, ...])
Node = tuple


class Parser:
    def __init__(self, src: str):
        self.src, self.toks, self.i = src, tokenize(src), 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def at(self, kind: str, text: str) -> bool:
        t = self.toks[self.i]
        return t.kind == kind and t.text == text

    def take(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def error(self, what: str) -> ExprError:
        t = self.peek()
        found = "the end" if t.kind == "end" else repr(t.text)
        return ExprError(f"--where: expected {what} at column {t.pos + 1}, found {found}: {self.src}")

    def parse(self) -> Node:
        node = self.or_()
        if self.peek().kind != "end":
            raise self.error("'and', 'or' or the end")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.at("kw", "or"):
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.at("kw", "and"):
            self.take()
            node = ("and", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.at("kw", "not"):
            self.take()
            return ("not", self.not_())
        return self.compare()

    def compare(self) -> Node:
        operands, ops = [self.sum_()], []
        while self.peek().kind == "op" and self.peek().text in COMPARISONS:
            ops.append(self.take().text)
            operands.append(self.sum_())
        return ("cmp", operands, ops) if ops else operands[0]

    def sum_(self) -> Node:
        node = self.product()
        while self.peek().kind == "op" and self.peek().text in "+-":
            node = ("arith", self.take().text, node, self.product())
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in "*/":
            node = ("arith", self.take().text, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.at("op", "-"):
            self.take()
            return ("neg", self.unary())
        return self.atom()

    def atom(self) -> Node:
        t = self.peek()
        if t.kind == "num":
            self.take()
            return ("num", float(t.text))
        if t.kind == "str":
            self.take()
            return ("str", t.text[1:-1])
        if t.kind == "name":
            self.take()
            return ("name", t.text)
        if self.at("op", "("):
            self.take()
            node = self.or_()
            if not self.at("op", ")"):
                raise self.error("')'")
            self.take()
            return node
        raise self.error("a number, a measure name or '('")


def parse(src: str) -> Node:
    if not src.strip():
        raise ExprError("--where is empty: give a condition such as 'coverage > 0.5 and instances >= 1'")
    return Parser(src).parse()


def names_in(node: Node) -> set[str]:
    if node[0] == "name":
        return {node[1]}
    out: set[str] = set()
    for part in node[1:]:
        for x in part if isinstance(part, list) else [part]:
            if isinstance(x, tuple):
                out |= names_in(x)
    return out


_CMP = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def evaluate(node: Node, columns: dict[str, np.ndarray], n: int) -> Any:
    """The value of `node` over all rows: a bool array for conditions, a float array (or scalar)
    for arithmetic, a str array (or str) for text."""
    kind = node[0]
    if kind in ("num", "str"):
        return node[1]
    if kind == "name":
        if node[1] not in columns:
            raise ExprError(f"--where: no measure {node[1]!r}; the columns are: {', '.join(columns)}")
        return columns[node[1]]
    if kind in ("and", "or"):
        a, b = (_condition(evaluate(x, columns, n), n) for x in node[1:])
        return a & b if kind == "and" else a | b
    if kind == "not":
        return ~_condition(evaluate(node[1], columns, n), n)
    if kind == "neg":
        return -_number(evaluate(node[1], columns, n), "-")
    if kind == "arith":
        op = node[1]
        a, b = (_number(evaluate(x, columns, n), op) for x in node[2:])
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide}[op](a, b)
    if kind == "cmp":
        values = [evaluate(x, columns, n) for x in node[1]]
        out = np.ones(n, bool)
        for op, a, b in zip(node[2], values, values[1:], strict=False):
            if _is_text(a) != _is_text(b):
                raise ExprError(f"--where: {op!r} compares text with a number")
            if _is_text(a) and op not in ("==", "!="):
                raise ExprError(f"--where: text compares only with == or !=, not {op!r}")
            with np.errstate(invalid="ignore"):
                out &= np.broadcast_to(_CMP[op](a, b), (n,))
        return out
    raise AssertionError(node)


def _is_text(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, np.ndarray) and v.dtype.kind in "US")


def _number(v: Any, op: str) -> Any:
    if _is_text(v) or (isinstance(v, np.ndarray) and v.dtype == bool):
        raise ExprError(f"--where: {op!r} needs numbers")
    return v


def _condition(v: Any, n: int) -> np.ndarray:
    if not (isinstance(v, np.ndarray) and v.dtype == bool):
        raise ExprError("--where: 'and', 'or' and 'not' combine conditions (comparisons), not numbers or text")
    return np.broadcast_to(v, (n,))


def select(where: str, columns: dict[str, np.ndarray]) -> np.ndarray:
    """Bool mask [rows] of the rows that satisfy `where`."""
    n = len(next(iter(columns.values()))) if columns else 0
    result = evaluate(parse(where), columns, n)
    if not (isinstance(result, np.ndarray) and result.dtype == bool):
        raise ExprError(f"--where must be a condition (e.g. 'coverage > 0.5'), not a value: {where}")
    return np.broadcast_to(result, (n,)).copy()


# --- subset files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subset:
    """Samples to keep: their keys, and the shards that hold them (None: unknown, read every shard)."""

    keys: frozenset[str]
    shards: frozenset[str] | None

    def wants(self, sample: dict[str, Any]) -> bool:
        return sample.get("__key__") in self.keys

    def restrict(self, urls: list[str]) -> list[str]:
        """The shard URLs that can hold a selected sample (all of them for a plain key list)."""
        if self.shards is None:
            return urls
        return [u for u in urls if u.rstrip("/").rsplit("/", 1)[-1] in self.shards]


def subset_for_stream(subset: str, urls: list[str], source: str, repeating: bool) -> tuple[list[str], Subset]:
    """The shards a stream over `urls` must read for `subset`, and the subset; refuses a subset that
    selects nothing, and a plain key list for a repeating stream."""
    keep = load_subset(subset)
    urls = keep.restrict(urls)
    if not urls or not keep.keys:
        raise UsageError(f"the subset {subset} selects no sample of {source}")
    if keep.shards is None and repeating:
        # A worker whose shards hold none of the keys would read them forever and never yield.
        raise UsageError(
            f"{subset} is a plain key list: a repeating stream needs the .json subset that `c2f filter` "
            "writes, which also names the shards that hold the keys"
        )
    return urls, keep


def load_subset(path: str | os.PathLike) -> Subset:
    """A subset file written by `c2f filter` (.json) or any list of keys, one per line."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read the subset file {path}: {e.strerror or e}") from None
    if text.lstrip().startswith("{"):
        try:
            d = json.loads(text)
            by_shard = d["c2f_subset"]["keys"]
            if not isinstance(by_shard, dict) or not all(isinstance(v, list) for v in by_shard.values()):
                raise ValueError("c2f_subset.keys is not an object of key lists")
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path} is not a c2f subset file ({e})") from None
        keys = frozenset(str(k) for ks in by_shard.values() for k in ks)
        return Subset(keys, frozenset(by_shard))
    keys = frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return Subset(keys, None)


def write_subset(
    out: Path, output: str, columns: dict[str, np.ndarray], mask: np.ndarray, info: dict[str, Any]
) -> None:
    keys, shards, index = columns["key"][mask], columns["shard"][mask], columns["index"][mask].astype(np.int64)
    if out.suffix == ".txt":
        atomic_write_bytes(out, "".join(f"{k}\n" for k in keys).encode())
        return
    from ..manifest import read_manifest

    if not is_local(output):
        raise UsageError("a .json subset of a URL output is not supported yet: use --out LIST.txt")
    root = Path(local_path(output))
    entries = {s.name: s for s in read_manifest(root).shards}
    by_shard: dict[str, list[str]] = {}
    offsets: dict[str, int] = {}
    shardlist = []
    indices: list[int] = []
    base = 0
    for name in dict.fromkeys(shards.tolist()):  # shards in report order, each once
        e = entries[name]
        offsets[name] = base
        rel = os.path.relpath(root / name, out.resolve().parent)
        shardlist.append({"url": rel, "nsamples": e.samples, "filesize": e.bytes})
        base += e.samples
    for k, s, i in zip(keys.tolist(), shards.tolist(), index.tolist(), strict=True):
        by_shard.setdefault(s, []).append(k)
        indices.append(offsets[s] + i)
    atomic_write_json(
        out,
        {
            "__kind__": SUBSET_KIND,
            "wids_version": 1,
            "name": f"{root.name}-subset",
            "shardlist": shardlist,
            "c2f_subset": {
                **info,
                "selected": int(mask.sum()),
                "of": int(mask.size),
                "indices": indices,
                "keys": by_shard,
            },
        },
    )


def run(cfg: FilterConfig) -> int:
    from .output import open_output
    from .report import default_dir, fingerprint, load_summary
    from .table import read_csv

    out = Path(cfg.out)
    if out.suffix not in (".json", ".txt"):
        raise UsageError(f"--out {cfg.out}: name it .json (wids-compatible subset index) or .txt (key list)")
    report_dir = Path(cfg.report) if cfg.report else default_dir(cfg.output, "")
    summary = load_summary(report_dir)
    output = open_output(cfg.output)
    if summary.get("fingerprint") != fingerprint(output.manifest):
        raise UsageError(
            f"the report in {report_dir} describes other shards than {cfg.output} holds now: run `c2f report` again"
        )
    try:
        columns = read_csv(report_dir / "samples.csv")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {report_dir / 'samples.csv'}: {e}; run `c2f report` again") from None
    mask = select(cfg.where, columns)
    write_subset(
        out,
        cfg.output,
        columns,
        mask,
        {"where": cfg.where, "output": cfg.output, "fingerprint": summary["fingerprint"]},
    )
    n, total = int(mask.sum()), mask.size
    print(f"filter: {n} of {total} samples ({100 * n / max(total, 1):.1f}%) match {cfg.where!r} -> {out}")
    if n:
        print(f"train on them: c2f pretrain {cfg.output} --subset {out}")
    return 0
