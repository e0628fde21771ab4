"""DuckDB as layerlake opens it: connection settings, and the one check that a statement only reads.

Extensions other than the built-in ones would be downloaded at runtime, which fails offline, so
every connection is opened with auto-install and auto-load off.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb

from layerlake.core.errors import SqlError

DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
READ_ONLY_STATEMENTS = ("SELECT",)  # EXPLAIN is allowed when what it explains is allowed
_LEADING_COMMENTS = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)*", re.DOTALL)
_EXPLAIN = re.compile(r"explain\b(\s*analyze\b)?\s*(\([^()]*\))?", re.IGNORECASE)


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
    kind = statement_kind(statement)
    if kind == "EXPLAIN":
        _check(con, explained(statement.query), what)
        return statement
    if kind not in READ_ONLY_STATEMENTS:
        shown = kind if kind != "UNKNOWN" else f"non-SELECT ({' '.join(statement.query.split()[:3])})"
        raise SqlError(
            f"{what} is read-only: a {shown} statement is refused",
            fix="write a SELECT (or WITH ... SELECT); to change data, use the layerlake command that writes it",
        )
    return statement


def statement_kind(statement: duckdb.Statement) -> str:
    """The statement's type as DuckDB's parser names it; one the Python enum does not know (DuckDB's
    parser has more kinds than ``duckdb.StatementType``, e.g. ``UPDATE EXTENSIONS``) is ``UNKNOWN``."""
    try:
        return statement.type.name
    except ValueError:
        return "UNKNOWN"


def explained(sql: str) -> str:
    """What an ``EXPLAIN [ANALYZE] [(options)]`` statement explains: the text after the keywords, with
    leading comments skipped (``/* explain */ explain select 1`` explains ``select 1``)."""
    rest = _LEADING_COMMENTS.sub("", sql, count=1)
    match = _EXPLAIN.match(rest)
    if match is None:  # the parser said EXPLAIN; text we cannot follow is refused, never guessed
        raise SqlError(
            "cannot tell what the EXPLAIN statement explains",
            fix="write it as EXPLAIN SELECT ... (no comments between the keywords)",
        )
    return rest[match.end() :]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- limits on a user's query ---------------------------------------------------------------------------
# A query typed by a user (``layerlake sql``, a console) may be a cross join that never ends or a result
# larger than memory. It runs under a wall-clock limit (a timer interrupts the connection) and a DuckDB
# memory limit; either one stops it with a ``SqlError`` that names the limit and the option raising it.
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_LIMIT = "4GB"


@dataclass(frozen=True)
class QueryLimits:
    timeout_s: float = DEFAULT_TIMEOUT_S  # 0 = no limit
    memory_limit: str = DEFAULT_MEMORY_LIMIT  # a DuckDB size: 512MB, 4GB ...

    def describe(self) -> str:
        time_part = f"{self.timeout_s:g} s" if self.timeout_s else "no time limit"
        return f"{time_part}, {self.memory_limit} of memory"


@contextmanager
def limited(con: duckdb.DuckDBPyConnection, limits: QueryLimits) -> Iterator[None]:
    """Run the body's queries on ``con`` under ``limits``: past ``timeout_s`` the connection is
    interrupted; past ``memory_limit`` DuckDB stops the query. Either becomes a ``SqlError``."""
    if not math.isfinite(limits.timeout_s) or limits.timeout_s < 0:
        raise SqlError(
            f"a timeout of {limits.timeout_s:g} s", fix="give --timeout SECONDS >= 0 (0 = no limit)"
        )
    try:
        con.execute("SET memory_limit = ?", [limits.memory_limit])
    except duckdb.Error as error:
        raise SqlError(
            f"memory limit {limits.memory_limit!r} is not a size: {_first_line(error)}",
            fix="give --memory-limit as a size such as 512MB or 4GB",
        ) from error
    timer = threading.Timer(limits.timeout_s, con.interrupt) if limits.timeout_s else None
    if timer is not None:
        timer.start()
    try:
        yield
    except duckdb.InterruptException as error:
        raise SqlError(
            f"the query ran longer than {limits.timeout_s:g} s and was stopped",
            fix="narrow it (a WHERE, a LIMIT, fewer joins), or allow more time with --timeout SECONDS (0 = no limit)",
        ) from error
    except duckdb.OutOfMemoryException as error:
        raise SqlError(
            f"the query needed more than its memory limit of {limits.memory_limit} and was stopped",
            fix="narrow it (a WHERE, fewer columns, an aggregate), or raise the limit with --memory-limit (e.g. 16GB)",
        ) from error
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()  # ended before the body's caller goes on (or the interpreter exits)
