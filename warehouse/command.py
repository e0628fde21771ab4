"""The ``layerlake sql`` and ``layerlake check`` commands (plain argparse; no torch, no Hydra).

``sql`` runs one read-only statement (SELECT, or EXPLAIN of one) over the warehouse views and prints
it as a rich table or writes CSV / JSON / Parquet. Writes are refused by statement type, as DuckDB's
parser reports it, not by pattern matching; the connection also has file access off (see
``warehouse.connect``), so a statement that slipped through still could not touch a file.

``check`` runs the audits of ``warehouse/audits.sql`` and the manifest file checks, prints the
offending rows and exits 1 when any audit that is not ``--allow``-ed returns rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from layerlake.core.choices import OutputFormat
from layerlake.core.duck import read_only_statement
from layerlake.core.errors import SqlError
from layerlake.core.render import print_table, write_table
from layerlake.warehouse import schema
from layerlake.warehouse.audits import file_problems, load_audits, run_audit
from layerlake.warehouse.errors import QueryError
from layerlake.warehouse.views import _resolve, connect

FORMATS = OutputFormat.values()


def run_query(con: Any, sql: str) -> pa.Table:
    """The result of the read-only statement ``sql`` as Arrow."""
    try:
        read_only_statement(sql, "`layerlake sql`")
    except SqlError as error:
        raise QueryError(error.message, fix=error.fix) from error
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as error:
        raise QueryError(
            f"query failed: {error}", fix="see the views and columns with `layerlake sql --schema`"
        ) from error


def render(table: pa.Table, title: str | None = None, max_rows: int = 50) -> None:
    """Print ``table`` on the terminal (first and last rows; a caption says how many there are)."""
    print_table(table, title or "", max_rows=max_rows, hoist_constants=False, digits=6)


def write_result(table: pa.Table, fmt: str, output: str | None) -> None:
    """Write ``table`` as csv / json / parquet to ``output`` (a path) or to stdout."""
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise QueryError(
            "refusing to write Parquet to a terminal", fix="pass --output FILE or redirect stdout"
        )
    if output is None:
        write_table(table, fmt, sys.stdout.buffer)
        return
    with open(output, "wb") as sink:
        write_table(table, fmt, sink)


def describe_views(con: Any) -> pa.Table:
    """One row per (view, column): DuckDB's type and the contract's doc."""
    rows = []
    names = list(schema.TABLES) + ["manifest", "failures"]
    for view in names:
        docs = {c.name: c.doc for c in schema.TABLES[view].columns} if view in schema.TABLES else {}
        docs.update(
            {p: "hive partition: " + p for p in schema.PARTITION_COLUMNS} if view in schema.TABLES else {}
        )
        for name, type_, *_ in con.sql(f"DESCRIBE {view}").fetchall():
            rows.append({"view": view, "column": name, "type": type_, "doc": docs.get(name, "")})
    return pa.Table.from_pylist(rows)


def sql(argv: list[str]) -> int:
    """``layerlake sql "<query>" [--format F] [--output FILE] [--schema] [--root DIR]``."""
    parser = argparse.ArgumentParser(
        prog="layerlake sql", description="Run a read-only SQL query over the warehouse views."
    )
    parser.add_argument("query", nargs="?", help="one SELECT (or EXPLAIN SELECT) statement")
    parser.add_argument(
        "--root", help="warehouse folder (default: $LAYERLAKE_DATA/warehouse or data/warehouse)"
    )
    parser.add_argument(
        "--attach", action="append", default=[], help="another warehouse root or shared folder"
    )
    parser.add_argument(
        "--format", choices=FORMATS, help="output format (default: table, or from --output's suffix)"
    )
    parser.add_argument("--output", help="write the result to this file instead of stdout")
    parser.add_argument("--schema", action="store_true", help="describe the views: columns, types, docs")
    parser.add_argument("--max-rows", type=int, default=50, help="rows shown by --format table")
    args = parser.parse_args(argv)
    con = connect(args.root, read_only=True, attach=args.attach)
    if args.schema:
        render(describe_views(con), title="warehouse views", max_rows=10_000)
        return 0
    if not args.query:
        raise QueryError(
            "no query given", fix='pass one, e.g. layerlake sql "select * from checkpoints limit 5"'
        )
    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "table")
    if fmt not in FORMATS:
        raise QueryError(
            f"unknown output format {fmt!r}", fix=f"use --format with one of {', '.join(FORMATS)}"
        )
    result = run_query(con, args.query)
    if fmt == "table":
        render(result, max_rows=args.max_rows)
    else:
        write_result(result, fmt, args.output)
    return 0


def check(argv: list[str]) -> int:
    """``layerlake check [--root DIR] [--verify-files] [--allow AUDIT ...]``; exit 1 when an audit fails."""
    audits = load_audits()
    parser = argparse.ArgumentParser(
        prog="layerlake check", description="Audit the warehouse; list offending rows."
    )
    parser.add_argument(
        "--root", help="warehouse folder (default: $LAYERLAKE_DATA/warehouse or data/warehouse)"
    )
    parser.add_argument(
        "--verify-files", action="store_true", help="also verify every committed file's sha256"
    )
    parser.add_argument(
        "--allow", action="append", default=[], choices=[a.name for a in audits],
        help="show this audit's rows but do not fail on them (e.g. duplicate_weights for Pythia)",
    )  # fmt: skip
    parser.add_argument("--max-rows", type=int, default=20, help="offending rows shown per audit")
    args = parser.parse_args(argv)
    root = _resolve(args.root)
    con = connect(root, read_only=True)
    results = [
        (
            "manifest_files",
            "committed files missing or not matching the manifest",
            file_problems(root, args.verify_files),
        )
    ]
    results += [(a.name, a.description, run_audit(con, a)) for a in audits]
    return report(results, set(args.allow), args.max_rows)


def report(results: list[tuple[str, str, pa.Table]], allowed: set[str], max_rows: int) -> int:
    """Print each audit's verdict (and offending rows); 1 if any audit not in ``allowed`` has rows."""
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    failed = False
    for name, doc, rows in results:
        if rows.num_rows == 0:
            console.print(Text.assemble(("PASS", "green"), f" {name}: {doc}"))
            continue
        verdict = ("WARN", "yellow") if name in allowed else ("FAIL", "red")
        failed = failed or name not in allowed
        console.print(Text.assemble(verdict, f" {name}: {doc} ({rows.num_rows} rows)"))
        render(rows, title=name, max_rows=max_rows)
    return 1 if failed else 0
