"""The `--where` condition language of `c2f filter`: a condition over the columns of a report's
samples.csv -> a bool mask of the rows that satisfy it.

The language is parsed here, by hand, and evaluated on whole columns with numpy; it is never
handed to `eval` (a --where string is data, whoever wrote it):

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
false, so `not (score >= 0)` selects the images that have no score. `select` is the whole
interface: the command (quality/filter.py) needs nothing else of this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.errors import UsageError

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
