"""DuckDB as layerlake opens it: connection settings, and the one check that a statement only reads.

Extensions other than the built-in ones would be downloaded at runtime, which fails offline, so
every connection is opened with auto-install and auto-load off.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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


@contextmanager
def parser() -> Iterator[duckdb.DuckDBPyConnection]:
    """This process's connection for parsing and settings only (no table, one thread), held while the
    block runs. Opening a DuckDB database takes ~80 ms; a statement's check takes ~0.1 ms on an open one.
    A forked child does not use its parent's (``os.register_at_fork``)."""
    with _PARSER["lock"]:
        if _PARSER["con"] is None:
            _PARSER["con"] = duckdb.connect(":memory:", config={**DUCKDB_CONFIG, "threads": 1})
        yield _PARSER["con"]


_PARSER: dict = {"lock": threading.Lock(), "con": None}


def _forget_parser() -> None:  # in a forked child: a new lock, and a new connection when one is needed
    _PARSER["orphan"] = _PARSER["con"]  # kept, never used nor closed: its state is the parent's
    _PARSER["con"], _PARSER["lock"] = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parser)


def read_only_statement(
    sql: str, what: str = "the query", con: duckdb.DuckDBPyConnection | None = None
) -> duckdb.Statement:
    """The one statement of ``sql`` if it only reads (a SELECT, or EXPLAIN of one); ``SqlError`` otherwise.

    Decided by DuckDB's own parser (the statement type), never by matching text; on ``con`` when given
    (parsing runs nothing), else on this process's ``parser()``.
    """
    if con is not None:
        return _check(con, sql, what)
    with parser() as own:
        return _check(own, sql, what)


def _check(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> duckdb.Statement:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise SqlError(
            f"cannot parse {what}: {_first_line(error)}", fix="see the views with `layerlake sql --schema`"
        ) from error
    if not statements:
        raise SqlError(
            f"{what} got an empty statement (only whitespace or comments)",
            fix='write one SELECT, e.g. "select * from checkpoints limit 5"',
        )
    if len(statements) != 1:
        raise SqlError(f"{what} takes one statement, got {len(statements)}", fix="run one SELECT at a time")
    statement = statements[0]
    kind = statement_kind(statement)
    if kind == "EXPLAIN":
        _check(con, explained(statement.query), what)
        return statement
    if kind not in READ_ONLY_STATEMENTS:
        raise SqlError(
            f"{what} is read-only: {refused_kind(statement, kind)} statement is refused",
            fix="write a SELECT (or WITH ... SELECT); to change data, use the layerlake command that writes it",
        )
    return statement


def refused_kind(statement: duckdb.Statement, kind: str) -> str:
    """``a DELETE``, ``an INSERT``, ``a CHECKPOINT``: the refused statement as its user wrote it. DuckDB's
    parser files several kinds under one type (CHECKPOINT is a CALL, INSTALL a LOAD), so its first word
    names it, unless that is WITH (whose type says what it does) or a kind the enum does not know."""
    words = _LEADING_COMMENTS.sub("", statement.query, count=1).split()
    first = words[0].upper() if words else kind
    if kind == "UNKNOWN":
        shown = f"non-SELECT ({' '.join(words[:3])})"
    else:
        shown = kind if first in ("WITH", "(") or not first.isalpha() else first
    return f"{'an' if shown[:1] in 'AEIOU' else 'a'} {shown}"


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
# A query typed by a user (``layerlake sql``, the UI's console) may be a cross join that never ends or a
# result larger than memory. ``QueryLimits`` says how long and how much; ``layerlake.warehouse.sandbox``
# holds them for every statement (a worker process killed at the time limit, its memory bounded by the
# kernel); ``limited`` below is DuckDB's own, softer form for queries run in this process (recipes).
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_LIMIT = "4GB"
MIN_MEMORY_BYTES = 16 << 20  # below this not even a small query runs
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z%]*)\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 10**3,
    "kilobyte": 10**3,
    "kilobytes": 10**3,
    "mb": 10**6,
    "megabyte": 10**6,
    "megabytes": 10**6,
    "gb": 10**9,
    "gigabyte": 10**9,
    "gigabytes": 10**9,
    "tb": 10**12,
    "terabyte": 10**12,
    "terabytes": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "pib": 1 << 50,
}  # fmt: skip  (DuckDB's memory units: KB = 1000 bytes, KiB = 1024)
_TIME_FIX = "give --timeout SECONDS >= 0 (0 = no limit)"
_MEMORY_FIX = "give --memory-limit as a size such as 512MB or 4GB"


@dataclass(frozen=True)
class QueryLimits:
    timeout_s: float = DEFAULT_TIMEOUT_S  # 0 = no limit
    memory_limit: str = DEFAULT_MEMORY_LIMIT  # a DuckDB size: 512MB, 4GB, 80% (of this machine's memory)

    def describe(self) -> str:
        time_part = f"{self.timeout_s:g} s" if self.timeout_s else "no time limit"
        return f"{time_part}, {self.memory_limit} of memory"

    def check(self) -> None:
        """``SqlError`` naming the option when a limit is not one (a negative or NaN time, a size DuckDB
        does not read, or one too small to run anything)."""
        if (
            not isinstance(self.timeout_s, (int, float))
            or not math.isfinite(self.timeout_s)
            or self.timeout_s < 0
        ):
            raise SqlError(f"a timeout of {self.timeout_s!r} s", fix=_TIME_FIX)
        self.memory_bytes()

    def memory_bytes(self) -> int:
        """The memory limit in bytes, as DuckDB reads the size (``4GB`` = 4 * 10^9, ``4GiB`` = 4 * 2^30,
        ``80%`` of this machine's memory). A size below ``MIN_MEMORY_BYTES`` is refused before DuckDB
        holds it: under ~16 KB DuckDB cannot even read its own setting back (or reset it)."""
        text = str(self.memory_limit)
        size = _size_bytes(text)
        if size is None or size >= MIN_MEMORY_BYTES:
            shown = _duckdb_size(text)
            size = size or _size_bytes(shown.replace(" ", ""))  # '80%' reads back as '18.8 GiB'
        if size is None or size < MIN_MEMORY_BYTES:
            raise SqlError(
                f"memory limit {text!r} is too small to run a query (at least {MIN_MEMORY_BYTES >> 20}MiB)",
                fix=_MEMORY_FIX,
            )
        return size


def _duckdb_size(text: str) -> str:
    """The memory limit ``text`` as DuckDB shows it once set (``SqlError`` when it is not a size; '0
    bytes' when it is too small to read back). A size we cannot read ourselves ('0.001%') is tried on a
    connection of its own, so that a tiny one leaves this process's ``parser()`` as it was."""
    own = _size_bytes(text) is None
    with nullcontext(memory_connection()) if own else parser() as con:
        try:
            con.execute("SET memory_limit = ?", [text])  # DuckDB decides what is a size
            return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        except duckdb.OutOfMemoryException:
            return "0 bytes"
        except duckdb.Error as error:
            raise SqlError(
                f"memory limit {text!r} is not a size: {_first_line(error)}", fix=_MEMORY_FIX
            ) from error
        finally:
            if own:
                con.close()
            else:
                con.execute("RESET memory_limit")


def _size_bytes(text: str) -> int | None:
    match = _SIZE.match(text)
    if match is None or match[2].lower() not in _UNITS:
        return None
    return int(float(match[1]) * _UNITS[match[2].lower()])


def set_memory_limit(con: duckdb.DuckDBPyConnection, limits: QueryLimits) -> None:
    """DuckDB's own memory limit on ``con`` (its buffer manager: sorts, joins and aggregates spill or
    stop at it with an ``OutOfMemoryException``)."""
    try:
        con.execute("SET memory_limit = ?", [limits.memory_limit])
    except duckdb.Error as error:
        raise SqlError(
            f"memory limit {limits.memory_limit!r} is not a size: {_first_line(error)}", fix=_MEMORY_FIX
        ) from error


def time_error(limits: QueryLimits) -> SqlError:
    """The error of a query stopped at the time limit."""
    return SqlError(
        f"the query ran longer than {limits.timeout_s:g} s and was stopped",
        fix="narrow it (a WHERE, a LIMIT, fewer joins), or allow more time with --timeout SECONDS (0 = no limit)",
    )


def memory_error(limits: QueryLimits, detail: str = "") -> SqlError:
    """The error of a query stopped at the memory limit."""
    return SqlError(
        f"the query needed more than its memory limit of {limits.memory_limit} and was stopped"
        + (f" ({detail})" if detail else ""),
        fix="narrow it (a WHERE, fewer columns, an aggregate), or raise the limit with --memory-limit (e.g. 16GB)",
    )


@contextmanager
def limited(con: duckdb.DuckDBPyConnection, limits: QueryLimits) -> Iterator[None]:
    """Run the body's queries on ``con`` under DuckDB's own limits: past ``timeout_s`` the connection is
    interrupted; past ``memory_limit`` DuckDB stops the query. Either becomes a ``SqlError``. Softer than
    the sandbox: DuckDB checks its interrupt between chunks of work, so one long function call runs on,
    and its memory limit does not cover Python functions or Arrow results."""
    limits.check()
    set_memory_limit(con, limits)
    timer = threading.Timer(limits.timeout_s, con.interrupt) if limits.timeout_s else None
    if timer is not None:
        timer.start()
    try:
        yield
    except duckdb.InterruptException as error:
        raise time_error(limits) from error
    except duckdb.OutOfMemoryException as error:
        raise memory_error(limits) from error
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()  # ended before the body's caller goes on (or the interpreter exits)


STORED_FILE_FIX = (
    "a stored file may be damaged: `layerlake check --verify-files` names it and says how to repair it; "
    "then run the query again"
)


def reads_a_damaged_file(error: BaseException) -> bool:
    """Whether a DuckDB error comes from reading a Parquet file that is not whole: a file whose size
    still matches the manifest but whose bytes were changed (DuckDB's Thrift decoder raises a bare
    ``duckdb.Error`` such as "don't know what type:"), or a read error that names a Parquet file."""
    if type(error) is duckdb.Error:
        return True
    reading = isinstance(error, (duckdb.IOException, duckdb.InvalidInputException))
    return reading and "parquet" in str(error).lower()
