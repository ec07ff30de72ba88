"""The `--where` condition of `c2f filter`: an SQL boolean expression over the per-sample table,
evaluated by DuckDB (vectorised: 1.28M rows in tens of milliseconds, docs/BENCHMARKS.md).

A condition is data, whoever wrote it, so it gets an expression and nothing more:
- it is parsed as one expression (`duckdb.SQLExpression`): a second statement (`1=1; DROP …`), a
  closing parenthesis that would open a query of its own (`) UNION SELECT …`) or a `COPY` does
  not parse, and is refused with DuckDB's message;
- its syntax tree (DuckDB's own, `json_serialize_sql`) holds no subquery, the only way an
  expression reaches a table function (`read_csv`, `range`) or another table;
- it runs in a connection with external access disabled and the configuration locked
  (`enable_external_access = false`, `lock_configuration = true`): no file, URL or extension can be
  read, written or loaded, and the condition cannot switch that back on;
- it must be of type BOOLEAN (`instances + 1` is a value, not a condition).
Its result is used only as a filter on rows that were packed (`status = 'packed'`).
"""

from __future__ import annotations

import json
from typing import Any

from shards.errors import UsageError, first_line

EXAMPLE = "cls = 'n01440764' AND instances > 3"
SELECTED = ("key", "shard", "index")  # what a subset file needs of each selected row


class ConditionError(UsageError):
    """A --where condition that does not parse, is refused, or does not fit the table: one line."""


def connect():
    """A DuckDB connection that can read only what it is handed (Arrow tables) and never a file."""
    import duckdb

    return duckdb.connect(
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "lock_configuration": True,
        }
    )


def _has_subquery(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("class") == "SUBQUERY" or any(_has_subquery(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_subquery(v) for v in node)
    return False


def parse(where: str, con=None):
    """`where` as one DuckDB expression, or `ConditionError` saying why not."""
    import duckdb

    if not where.strip():
        raise ConditionError(f'--where is empty: give an SQL condition such as "{EXAMPLE}"')
    try:
        expr = duckdb.SQLExpression(where)
    except duckdb.Error as e:
        raise ConditionError(f"--where: {first_line(e)}") from None
    con = con or connect()
    # The expression as DuckDB prints it back is one expression: `SELECT` + it is one statement.
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", ["SELECT " + str(expr)]).fetchall()[0][0])
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        raise ConditionError(f"--where: not one expression: {tree.get('error_message', where)[:200]}")
    if _has_subquery(tree["statements"][0]["node"]["select_list"]):
        raise ConditionError("--where: a subquery is not allowed: the condition is about one row of the table")
    return expr


def select(where: str, table) -> tuple[Any, int]:
    """The packed rows of `table` (pyarrow, a per-sample table) that satisfy `where`: an Arrow table of
    `SELECTED` columns in the table's order, and the number of packed rows it was chosen from."""
    import duckdb

    con = connect()
    expr = parse(where, con)
    rel = con.from_arrow(table).filter(duckdb.SQLExpression("status = 'packed'"))
    try:
        (kind,) = rel.project(expr).types
        if str(kind) != "BOOLEAN":
            raise ConditionError(f"--where must be a condition (e.g. {EXAMPLE}), not a {kind} value: {where}")
        picked = rel.filter(expr).project(", ".join(SELECTED)).to_arrow_table()
    except duckdb.Error as e:
        more = f"; the columns are: {', '.join(table.column_names)}" if "Referenced column" in str(e) else ""
        raise ConditionError(f"--where: {first_line(e)}{more}") from None
    import pyarrow.compute as pc

    total = pc.sum(pc.equal(table.column("status"), "packed")).as_py() or 0
    return picked, total
