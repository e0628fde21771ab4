"""The ``layerlake sql`` and ``layerlake check`` commands (plain argparse; no torch, no Hydra).

``sql`` runs one read-only statement (SELECT, or EXPLAIN of one) over the warehouse views and prints
it as a rich table or writes CSV / JSON / Parquet. Writes are refused by statement type, as DuckDB's
parser reports it, not by pattern matching; the connection also has file access off (see
``warehouse.connect``), so a statement that slipped through still could not touch a file.

``check`` runs the audits of ``warehouse/sql/audits/`` and the manifest file checks, prints the
offending rows and exits 1 when any audit that is not ``--allow``-ed returns rows.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)

from layerlake.core.choices import OutputFormat, did_you_mean
from layerlake.core.duck import DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT_S, QueryLimits
from layerlake.core.errors import LayerlakeError
from layerlake.core.render import print_table, write_stream
from layerlake.warehouse import schema
from layerlake.warehouse.audits import file_problems, load_audits, run_audit
from layerlake.warehouse.errors import QueryError
from layerlake.warehouse.macros import (
    STAGING,
    all_staging_params,
    public_macros,
    staging_params,
)
from layerlake.warehouse.sandbox import Result, Sandbox
from layerlake.warehouse.share.remote import add_remote_arguments, as_source, given_sources, is_url
from layerlake.warehouse.views import _resolve, connect, default_root, source_root

FORMATS = OutputFormat.values()


@contextmanager
def statement_result(
    root: Any,
    attach: list[Any],
    sql: str,
    limits: QueryLimits,
    variables: dict[str, Any] | None = None,
    what: str = "`layerlake sql`",
) -> Iterator[Result]:
    """The answer of a user's read-only statement over the warehouse at ``root`` (plus ``attach``),
    streamed from a worker process under ``limits`` (``warehouse.sandbox``): what ``layerlake sql`` and
    ``share attach --sql`` print. The warehouse is checked here first, so a wrong folder fails before any
    process starts."""
    source = source_root(root, attach)
    folders = tuple(as_source(a) if is_url(a) else Path(a).expanduser().resolve() for a in attach)
    # this process has opened no DuckDB database: forking it is safe and ~30 ms
    box = Sandbox(source, folders, limits, start="fork", max_workers=1, progress=sys.stderr.isatty())
    with box, box.query(sql, variables, what) as result:
        yield result
    if result.note:  # tasks the views leave out: the answer may lack rows the user expects
        print(result.note, file=sys.stderr)


def window(batches: pa.RecordBatchReader, max_rows: int) -> tuple[pa.Table, int]:
    """``(rows, total)``: what ``render`` shows of a streamed result (its first rows and its last
    ``max_rows // 4``), and how many rows it has; at most ``max_rows`` rows and one batch are held."""
    tail_rows = max_rows // 4
    head: list[pa.RecordBatch] = []
    tail: deque[pa.RecordBatch] = deque()
    kept_head = kept_tail = total = 0
    for batch in batches:
        total += batch.num_rows
        if kept_head < max_rows:
            part = batch.slice(0, max_rows - kept_head)
            head.append(part)
            kept_head += part.num_rows
        if tail_rows:
            tail.append(batch.slice(max(0, batch.num_rows - tail_rows)))
            kept_tail += tail[-1].num_rows
            while kept_tail - tail[0].num_rows >= tail_rows:
                kept_tail -= tail.popleft().num_rows
    schema = batches.schema
    if total <= max_rows:
        return pa.Table.from_batches(head, schema), total
    ends = pa.Table.from_batches(list(tail), schema)
    ends = ends.slice(ends.num_rows - tail_rows)
    first = pa.Table.from_batches(head, schema).slice(0, max_rows - tail_rows)
    return pa.concat_tables([first, ends]), total


def render(
    table: pa.Table,
    title: str | None = None,
    max_rows: int = 50,
    max_cell: int | None = 40,
    total_rows: int | None = None,
    more_rows: str = "",
) -> None:
    """Print ``table`` on the terminal (first and last rows; a caption says how many there are and
    ``more_rows`` how to see the rest). ``total_rows``: the result's row count when ``table`` holds only
    its ``window``."""
    print_table(
        table, title or "", max_rows=max_rows, hoist_constants=False, digits=6, max_cell=max_cell,
        total_rows=total_rows, more_rows=more_rows,
    )  # fmt: skip


def write_result(batches: pa.RecordBatchReader, fmt: str, output: str | None) -> None:
    """Write the streamed result as csv / json / parquet to ``output`` (a path; written whole or not at
    all, then ``wrote N rows, B bytes (fmt) to PATH`` on stderr) or to stdout."""
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise QueryError(
            "refusing to write Parquet to a terminal", fix="pass --output FILE or redirect stdout"
        )
    if output is None:
        write_stream(batches, fmt, sys.stdout.buffer)
        return
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    counted = [0]

    def counting() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            counted[0] += batch.num_rows
            yield batch

    try:
        with open(partial, "wb") as sink:
            write_stream(pa.RecordBatchReader.from_batches(batches.schema, counting()), fmt, sink)
        partial.replace(target)
    except OSError as error:
        raise QueryError(
            f"cannot write {target}: {error.strerror or error}", fix="choose a folder you can write"
        ) from error
    finally:
        partial.unlink(missing_ok=True)
    size = target.stat().st_size
    print(  # on stderr: stdout stays the result's when there is one
        f"wrote {counted[0]:,} rows, {size:,} bytes ({fmt}) to {target.resolve()}", file=sys.stderr
    )


def describe_views(con: Any) -> pa.Table:
    """One row per (view, column): DuckDB's type and the contract's doc."""
    rows = []
    for view in [*schema.TABLES, "manifest", "failures"]:
        docs = {c.name: c.doc for c in schema.TABLES[view].all_columns} if view in schema.TABLES else {}
        for name, type_, *_ in con.sql(f"DESCRIBE {view}").fetchall():
            rows.append({"view": view, "column": name, "type": type_, "doc": docs.get(name, "")})
    return pa.Table.from_pylist(rows)


def describe_staging() -> pa.Table:
    """One row per staging view: its parameters (session variables, ``--param``) and what it holds."""
    rows = [
        {
            "staging view": model.name,
            "parameters (defaults)": ", ".join(f"{p.name}={p.default}" for p in staging_params(model.name)),
            "doc": _sentence(model.description),
        }
        for model in STAGING.all()
    ]
    return pa.Table.from_pylist(rows)


def describe_macros() -> pa.Table:
    """One row per SQL macro: its signature and the first sentence of its formula."""
    return pa.Table.from_pylist(
        [{"macro": m.signature, "doc": _sentence(m.description)} for m in public_macros()]
    )


def print_schema(con: Any) -> None:
    """The tables and their columns, then the staging views, then the macros."""
    views = describe_views(con)
    for view in dict.fromkeys(views.column("view").to_pylist()):
        part = views.filter(pa.compute.equal(views["view"], view)).drop_columns(["view"])
        render(part, title=f"view {view}", max_rows=10_000, max_cell=None)
    render(
        describe_staging(),
        title="staging views (set a parameter with --param NAME=VALUE)",
        max_rows=10_000,
        max_cell=None,
    )
    render(describe_macros(), title="SQL macros", max_rows=10_000, max_cell=None)


def _sentence(text: str) -> str:
    """The first sentence of ``text`` (up to the first period followed by a space, or a colon)."""
    cut = min((i for i in (text.find(". "), text.find(": ")) if i >= 0), default=len(text))
    return text[:cut].rstrip(".")


def parse_param(text: str) -> tuple[str, Any]:
    """``name=value`` for a staging parameter, the value validated against its declared type."""
    import yaml

    name, sep, raw = text.partition("=")
    params = all_staging_params()
    if not sep or name not in params:
        raise QueryError(
            f"--param {text!r} does not name a staging parameter{did_you_mean(name, list(params))}",
            fix=f"use --param NAME=VALUE with NAME one of: {', '.join(params)}",
        )
    return name, params[name].validate(yaml.safe_load(raw) if raw.strip() else None)


ROOT_HELP = (
    "warehouse folder, one holding _manifest/ (default: $LAYERLAKE_DATA/warehouse, else ./data/warehouse)"
)


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--root DIR``, the warehouse a command reads or writes (every warehouse command takes it)."""
    parser.add_argument("--root", help=ROOT_HELP)


def sql_parser() -> argparse.ArgumentParser:
    """The arguments of ``layerlake sql``."""
    parser = argparse.ArgumentParser(
        prog="layerlake sql", description="Run a read-only SQL query over the warehouse views."
    )
    parser.add_argument("query", nargs="?", help="one SELECT (or EXPLAIN SELECT) statement")
    add_root_argument(parser)
    parser.add_argument(
        "--attach", action="append", default=[],
        help="another warehouse root or shared folder, or a shared dataset's URL (http(s)://..., hf://datasets/ORG/NAME)",
    )  # fmt: skip
    add_remote_arguments(parser)
    parser.add_argument(
        "--format", choices=FORMATS, help="output format (default: table, or from --output's suffix)"
    )
    parser.add_argument("--output", help="write the result to this file instead of stdout")
    parser.add_argument("--schema", action="store_true", help="describe the views: columns, types, docs")
    parser.add_argument("--max-rows", type=int, default=50, help="rows shown by --format table")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a staging view parameter, e.g. --param estimator=debiased --param threshold=0.8",
    )  # fmt: skip
    add_limit_arguments(parser)
    return parser


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """``--timeout`` and ``--memory-limit``: the limits a user's statement runs under (``warehouse.sandbox``)."""
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
        help=f"stop the query after this long (default {DEFAULT_TIMEOUT_S:g}; 0 = no limit)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-limit", default=DEFAULT_MEMORY_LIMIT, metavar="SIZE",
        help=f"stop the query when its process needs this much more memory (default {DEFAULT_MEMORY_LIMIT})",
    )  # fmt: skip


def sql(argv: list[str]) -> int:
    """``layerlake sql "<query>" [--format F] [--output FILE] [--schema] [--root DIR]``."""
    args = sql_parser().parse_args(argv)
    args.attach = given_sources(args.attach, args)
    values = dict(parse_param(p) for p in args.param)
    if args.schema:
        con = connect(args.root, read_only=True, attach=args.attach)
        print_schema(con)
        return 0
    if not args.query:
        raise QueryError(
            "no query given", fix='pass one, e.g. layerlake sql "select * from checkpoints limit 5"'
        )
    if args.output is not None:
        check_output(args.output, args.root, args.attach)
    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "table")
    if fmt not in FORMATS:
        raise QueryError(
            f"unknown output format {fmt!r}", fix=f"use --format with one of {', '.join(FORMATS)}"
        )
    if args.max_rows < 1:
        raise QueryError(f"--max-rows {args.max_rows}", fix="give --max-rows a number of rows >= 1")
    limits = QueryLimits(args.timeout, args.memory_limit)
    with statement_result(args.root, args.attach, args.query, limits, values) as result:
        print_result(result, fmt, args.output, args.max_rows)  # streamed: memory holds a batch
    return 0


def check_output(output: str, root: Any, attach: list[Any]) -> None:
    """Refuse an ``--output`` path that is a folder, or that lies inside the warehouse or a folder the
    statement reads (``--attach``), symlinks resolved: writing it would overwrite a shard or the manifest
    behind the writer's back, and ``check`` would then fail."""
    from layerlake.warehouse.locate import enclosing

    path = Path(output).expanduser()
    if path.is_dir():
        raise QueryError(
            f"--output {output} is a folder, not a file",
            fix=f"give a file path, e.g. --output {path / 'result.parquet'}",
        )
    read = [default_root() if root is None else root, *(a for a in attach if not is_url(a))]
    folder = enclosing(path, read)
    if folder is not None:
        raise QueryError(
            f"--output {output} is inside {folder}, which the statement reads: writing there could "
            "overwrite its files (a shard, the manifest)",
            fix="write the result outside the warehouse and the attached folders, e.g. --output ./result.parquet",
        )


def print_result(
    result: Any,
    fmt: str,
    output: str | None,
    max_rows: int,
    more_rows: str = "--max-rows N to show more; --output FILE writes every row",
) -> None:
    """A streamed result as a terminal table (its first and last rows; the caption says how to see the
    rest, ``more_rows``) or written as ``fmt``."""
    if fmt == "table":
        shown, total = window(result, max_rows)
        render(shown, max_rows=max_rows, total_rows=total, more_rows=more_rows)
    else:
        write_result(result, fmt, output)


# findings beside the audits that a user may knowingly accept: files a dead writer was staging (harmless,
# the next writer removes them), runs killed and kept as they are
ALLOWABLE = ("staging_leftovers", "killed_runs")


def check_parser() -> argparse.ArgumentParser:
    """The arguments of ``layerlake check``."""
    audits = load_audits()
    parser = argparse.ArgumentParser(
        prog="layerlake check", description="Audit the warehouse; list offending rows."
    )
    add_root_argument(parser)
    parser.add_argument(
        "--verify-files", action="store_true", help="also verify every committed file's sha256"
    )
    parser.add_argument(
        "--allow", action="append", default=[], choices=[a.name for a in audits] + list(ALLOWABLE),
        help="show this audit's rows but do not fail on them (e.g. duplicate_weights for Pythia)",
    )  # fmt: skip
    parser.add_argument("--max-rows", type=int, default=20, help="offending rows shown per audit")
    return parser


def check(argv: list[str]) -> int:
    """``layerlake check [--root DIR] [--verify-files] [--allow AUDIT ...]``; exit 1 when an audit fails."""
    from layerlake.warehouse.writer import recover_interrupted

    audits = load_audits()
    args = check_parser().parse_args(argv)
    root = _resolve(args.root)
    allowed = set(args.allow)
    recovery = recover_interrupted(root, say=False)
    results = [interrupted_check(recovery)] + house_checks(root, args.verify_files)
    if recovery is not None and recovery.outcome != "not possible":
        allowed.add("interrupted_maintenance")  # named, and already finished or rolled back
    try:
        con = connect(root, read_only=True)
    except LayerlakeError as error:
        results.append(
            ("views", "the tables can be read", _rows([{"what": str(root), "problem": error.message}]))
        )
        return report(results, allowed, args.max_rows)
    for audit in audits:
        try:
            rows = run_audit(con, audit)
        except QueryError as error:  # a file the footer check passed but whose pages do not decode
            rows = _rows([{"what": audit.name, "problem": error.message}])
        results.append((audit.name, audit.description, rows))
    return report(results, allowed, args.max_rows)


def interrupted_check(recovery: Any) -> tuple[str, str, pa.Table]:
    """A maintenance step (compact, migrate) killed mid-way: what was done about it, or what to run."""
    rows = (
        []
        if recovery is None
        else [{"what": f"layerlake {recovery.step.command}", "problem": recovery.message}]
    )
    return (
        "interrupted_maintenance",
        "compact or migrate killed mid-way (finished or rolled back here)",
        _rows(rows),
    )


def house_checks(root: Path, verify_files: bool) -> list[tuple[str, str, pa.Table]]:
    """What ``check`` finds beside the audits: files against the manifest, stale staging leftovers,
    tasks of an older schema version, runs left running by a process that is gone."""
    from layerlake.warehouse.content import meta_problems
    from layerlake.warehouse.runs import stale_runs
    from layerlake.warehouse.writer import Warehouse

    store = Warehouse(root, create=False)
    staging = [
        {"what": str(p.relative_to(root)), "problem": "left by a writer that is gone"}
        for p in store.stale_staging()
    ]
    outdated = [
        {
            "what": e.task_id,
            "problem": f"schema version {e.schema_version}; run `layerlake migrate --root {root}`",
        }
        for e in store.outdated()
    ]
    old = {row["what"] for row in outdated}
    malformed = [
        {"what": e.task_id[:80], "problem": "; ".join(problems)}
        for e in store.committed().values()
        if e.task_id not in old and (problems := meta_problems(e))
    ]
    killed = [
        {
            "what": run.run_id,
            "problem": f"status running, but its process {run.pid} on {run.host} is gone (killed); "
            f"`layerlake runs --mark-killed --root {root}` records it as killed, "
            f"`layerlake.track(..., run_id={run.run_id!r}, resume=True)` continues it",
        }
        for run in stale_runs(store)
    ]
    return [
        (
            "manifest_files",
            "committed files missing or not matching the manifest",
            file_problems(root, verify_files),
        ),
        (
            "staging_leftovers",
            "files of writers that died while writing (the next commit removes them)",
            _rows(staging),
        ),
        ("schema_version", "tasks written by an older layerlake", _rows(outdated)),
        (
            "malformed_tasks",
            "tasks whose manifest entry no layerlake writer writes (warehouse.content)",
            _rows(malformed),
        ),
        (
            "killed_runs",
            "runs still marked running whose process is gone (a run recorded as killed is a fact, not a "
            "finding)",
            _rows(killed),
        ),
    ]


def _rows(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([("what", pa.string()), ("problem", pa.string())]))


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
        render(rows, title=name, max_rows=max_rows, max_cell=None)
    return 1 if failed else 0


def migrate_parser() -> argparse.ArgumentParser:
    """The arguments of ``layerlake migrate``."""
    parser = argparse.ArgumentParser(
        prog="layerlake migrate",
        description="Rewrite a warehouse written by an older layerlake into the current schema, keeping every row.",
    )
    add_root_argument(parser)
    return parser


def migrate(argv: list[str]) -> int:
    """``layerlake migrate [--root DIR]``: once, after upgrading layerlake."""
    from layerlake.warehouse.migrate import migrate as run_migration

    args = migrate_parser().parse_args(argv)
    report = run_migration(_resolve(args.root))
    if not report.tasks:
        print(f"nothing to migrate: {report.root} is at schema version {schema.SCHEMA_VERSION}")
        return 0
    print(
        f"migrated {report.tasks} tasks ({report.rows} rows) and wrote {report.runs} runs into {report.root}"
        + (f"; {report.collapsed} duplicate tasks of moved checkpoints collapsed" if report.collapsed else "")
        + f". The {len(report.old_files)} old files are no longer read; `layerlake gc --root {report.root}` removes them."
    )
    return 0


def gc_parser() -> argparse.ArgumentParser:
    """The arguments of ``layerlake gc``."""
    parser = argparse.ArgumentParser(
        prog="layerlake gc",
        description="Remove files no commit lists (replaced rows, leftovers of killed writers).",
    )
    add_root_argument(parser)
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument(
        "--grace", type=float, default=900.0, metavar="SECONDS",
        help="keep unlisted files younger than this, which a reader that started before a commit may still read",
    )  # fmt: skip
    return parser


def gc(argv: list[str]) -> int:
    """``layerlake gc [--root DIR] [--dry-run] [--grace SECONDS]``."""
    from layerlake.warehouse.writer import Warehouse

    args = gc_parser().parse_args(argv)
    removed = Warehouse(_resolve(args.root)).gc(dry_run=args.dry_run, grace_s=args.grace)
    size = sum(p.stat().st_size for p in removed if p.exists()) if args.dry_run else None
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} files" + (f" ({size} bytes)" if size is not None else ""))
    return 0


def compact_parser() -> argparse.ArgumentParser:
    """The arguments of ``layerlake compact``."""
    parser = argparse.ArgumentParser(
        prog="layerlake compact",
        description="Merge small files of committed tasks into larger ones and rewrite the manifest to its "
        "current state (a tracked run does this for its own files when it finishes).",
    )
    add_root_argument(parser)
    parser.add_argument("--run", action="append", dest="runs", help="only the files of this run (repeatable)")
    return parser


def compact(argv: list[str]) -> int:
    """``layerlake compact [--root DIR] [--run RUN ...]``."""
    from layerlake.warehouse.compact import compact as run_compaction

    args = compact_parser().parse_args(argv)
    report = run_compaction(_resolve(args.root), run_ids=args.runs)
    print(
        f"{report.files_before} files -> {report.files_after} ({report.tasks} tasks merged); manifest "
        f"{report.manifest_lines_before} lines -> {report.manifest_lines_after}. Replaced small files are "
        "removed by `layerlake gc` after its grace period."
    )
    return 0
