"""DuckDB as layerlake opens it: connection settings, and the one check that a statement only reads.

Extensions other than the built-in ones would be downloaded at runtime, which fails offline, so
every connection is opened with auto-install and auto-load off.
"""

from __future__ import annotations

import re

import duckdb

from layerlake.core.errors import SqlError

DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
READ_ONLY_STATEMENTS = ("SELECT",)  # EXPLAIN is allowed when what it explains is allowed
_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)


def memory_connection() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection with layerlake's settings."""
    return duckdb.connect(":memory:", config=DUCKDB_CONFIG)


def read_only_statement(sql: str, what: str = "the query") -> duckdb.Statement:
    """The one statement of ``sql`` if it only reads (a SELECT, or EXPLAIN of one); ``SqlError`` otherwise.

    Decided by DuckDB's own parser (the statement type), never by matching text.
    """
    con = memory_connection()
    try:
        return _check(con, sql, what)
    finally:
        con.close()


def _check(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> duckdb.Statement:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise SqlError(
            f"cannot parse {what}: {_first_line(error)}", fix="see the views with `layerlake sql --schema`"
        ) from error
    if len(statements) != 1:
        raise SqlError(f"{what} takes one statement, got {len(statements)}", fix="run one SELECT at a time")
    statement = statements[0]
    kind = statement.type.name
    if kind == "EXPLAIN":
        inner = _EXPLAIN.sub("", statement.query, count=1)
        if inner == statement.query:  # EXPLAIN not at the start (e.g. after a comment): parse what follows it
            inner = re.split(r"(?i)\bexplain(\s+analyze)?\b", statement.query, maxsplit=1)[-1]
        _check(con, inner, what)
        return statement
    if kind not in READ_ONLY_STATEMENTS:
        raise SqlError(
            f"{what} is read-only: a {kind} statement is refused",
            fix="write a SELECT (or WITH ... SELECT); to change data, use the layerlake command that writes it",
        )
    return statement


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
