"""Open the warehouse for reading: a DuckDB in-memory connection with typed views over committed shards.

Views (one per table of ``warehouse/schema.py``, plus ``manifest`` and ``failures``) read only the
files listed by the latest ok manifest entry of each task, so a stray ``.parquet`` in the tree, an
orphan left by a killed writer, or a task whose files no longer match their listed sizes is invisible.
A table without files is an empty view with the contract's columns and types.

Results come back the usual DuckDB ways::

    con = warehouse.connect("data/warehouse")
    rel = con.sql("select model, step, erank(sv) from spectra")   # a lazy DuckDB relation
    rel.df()        # pandas        rel.pl()       # polars (if installed)
    rel.arrow()     # pyarrow       rel.fetchall() # Python tuples

Design notes. A view cannot hold bound parameters, so each view reads its file list from a DuckDB
variable (``getvariable('ll_files_<table>')``) set with a bound parameter: no path is ever formatted into
SQL. Paths are absolute, so views do not depend on the working directory. Every file holds its
``suite`` and ``model`` columns (typed text: a model named ``070`` stays text); no folder name is read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa

from layerlake.core.duck import memory_connection
from layerlake.core.paths import default_warehouse_root
from layerlake.warehouse import macros, schema
from layerlake.warehouse.errors import ManifestError, WarehouseError
from layerlake.warehouse.locate import SHARED_MANIFEST, is_warehouse, warehouse_root
from layerlake.warehouse.manifest import (
    CommitEntry,
    FileCheckPass,
    FileEntry,
    entry_problems,
    is_archived,
    latest,
    manifest_path,
    read_entries,
)
from layerlake.warehouse.writer import recover_interrupted


class Shard(NamedTuple):
    """One readable file: where it is and which commit listed it."""

    table: str
    path: Path | str  # absolute; a URL (str) for a shared dataset attached by URL
    root: Path | str  # the warehouse root (or shared folder, or its URL) it belongs to
    entry: CommitEntry | None  # None for a shared folder's file
    listed: FileEntry | None = None  # the entry's listing of this file
    partial: bool = False  # True: only this task's slice of the (shared) file is read, not the whole file:
    # another task of the file is shown from another copy (``gather``)


def default_root() -> Path:
    """``$LAYERLAKE_DATA/warehouse`` if set, else ``data/warehouse`` under the project root."""
    return default_warehouse_root()


def duck_type(type_: pa.DataType) -> str:
    """The DuckDB SQL type of an Arrow type used in the contract."""
    if pa.types.is_list(type_):
        return duck_type(type_.value_type) + "[]"
    names = {pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
             pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN", pa.binary(): "BLOB",
             schema.TIMESTAMP: "TIMESTAMP WITH TIME ZONE"}  # fmt: skip
    if type_ not in names:
        raise WarehouseError(
            f"contract type {type_} has no DuckDB mapping", fix="add it to warehouse.connect.duck_type"
        )
    return names[type_]


def committed_shards(root: Path, archived: bool = False) -> tuple[list[Shard], list[CommitEntry]]:
    """The files of a warehouse root that readers may see, and its standing failures.

    A task is shown only if every file its latest ok entry lists is a regular file inside the root with
    the listed size (``manifest.file_problem``): never half a task, never a path that leaves the root.
    A task left out for that counts among the failures (``hidden``), so that a reader can say so.
    ``archived``: the archived runs' files come too, unchecked (``gather`` needs to know their tasks,
    whose copies elsewhere stay hidden with them).
    """
    committed, failed = latest(read_entries(manifest_path(root)))
    old = [e for e in committed.values() if e.schema_version < schema.SCHEMA_VERSION]
    if old:
        raise WarehouseError(
            f"the warehouse at {root} was written by an older layerlake (schema version "
            f"{min(e.schema_version for e in old)}; this one reads {schema.SCHEMA_VERSION})",
            fix=f"run `layerlake migrate --root {root}` once: it rewrites the files and keeps every row",
        )
    shards, hidden, checks = [], [], FileCheckPass()
    paths: dict[str, Path] = {}  # one Path per file, however many tasks share it (compacted)
    for entry in committed.values():
        if is_archived(entry):  # an archived run (`layerlake runs archive`): kept, not shown
            if archived:
                shards += [Shard(f.table, root / f.path, root, entry, f) for f in entry.files]
            continue
        problems = entry_problems(root, entry, checks=checks)
        if problems:
            hidden.append(hidden_entry(entry, problems))
            continue
        for f in entry.files:
            if f.table in schema.TABLES:
                path = paths.get(f.path) or paths.setdefault(f.path, root / f.path)
                shards.append(Shard(f.table, path, root, entry, f))
    return shards, list(failed.values()) + hidden


HIDDEN = "not shown: "  # how a hidden task's error starts in the failures view


def hidden_entry(entry: CommitEntry, problems: list[tuple[FileEntry, str]]) -> CommitEntry:
    """``entry`` as the failures view lists a task left out of the views: its files do not match."""
    first, problem = problems[0]
    return dataclasses.replace(
        entry,
        status="hidden",
        error=f"{HIDDEN}{len(problems)} of its files do not match the manifest (first: {first.path}: "
        f"{problem}); `layerlake check` names them and says how to repair",
    )


def hidden_note(con: duckdb.DuckDBPyConnection) -> str | None:
    """One line saying how many stored tasks the views leave out (files that do not match the
    manifest: damaged, or changed by hand), or None when none is."""
    count, task = con.execute(
        "SELECT count(*), min(task_id) FROM failures WHERE starts_with(error, ?)", [HIDDEN]
    ).fetchall()[0]
    if not count:
        return None
    return (
        f"note: {count} stored task(s) are left out of every view, their files do not match the manifest "
        f"(first: {task}); `layerlake check` names them, `select * from failures` lists them"
    )


def shared_shards(folder: Path) -> list[Shard]:
    """The files of a shared dataset folder (``layerlake share export``), each checked like a
    warehouse's own: a path that leaves the folder, a link, a missing or resized file is refused."""
    try:
        shared = json.loads((folder / SHARED_MANIFEST).read_text())
        version = int(shared.get("schema_version", 0))
        entries = [CommitEntry.from_json(t) for t in shared["tasks"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ManifestError(
            f"shared dataset {folder} has no readable {SHARED_MANIFEST} ({error})",
            fix="attach a folder made by `layerlake share export`, or a warehouse root",
        ) from error
    if version != schema.SCHEMA_VERSION:
        raise ManifestError(
            f"shared dataset {folder} has schema version {version}; this layerlake reads {schema.SCHEMA_VERSION}",
            fix="ask its author to export it again with a current layerlake"
            if version < schema.SCHEMA_VERSION
            else "upgrade layerlake",
        )
    problems = [f"{f.path}: {problem}" for e in entries for f, problem in entry_problems(folder, e)]
    if problems:
        raise ManifestError(
            f"shared dataset {folder} does not match its {SHARED_MANIFEST}: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
            fix="copy the folder again, whole; `layerlake share import` verifies every file in detail",
        )
    return [
        Shard(f.table, folder / f.path, folder, e, f)
        for e in entries
        for f in e.files
        if f.table in schema.TABLES
    ]


def _resolve(root: Any) -> Path:
    """The warehouse ``root`` names (None: the default), refused unless it is one (``warehouse.locate``)."""
    return warehouse_root(root)


def source_root(root: Any, attach: Iterable[Any] = ()) -> Path | None:
    """The warehouse a connection serves: ``root`` (None: the default), refused unless it is a warehouse;
    None (no local warehouse) when folders are attached and the root (given or the default) does not
    exist: attaching needs no local warehouse. A root that exists but is no warehouse is still refused.
    What a killed ``compact`` or ``migrate`` left in the root is finished or rolled back here, first, when
    no writer holds the lock (``warehouse.writer.recover_interrupted``): every reader comes through here
    (``connect``, ``layerlake sql``, ``share attach --sql``), so none sees a half-done step."""
    if list(attach):
        path = default_root() if root is None else Path(root).expanduser().resolve()
        if not path.exists() or (root is None and not is_warehouse(path)):
            return None
    path = _resolve(root)
    recover_interrupted(path)
    return path


def gather(root: Path | None, attach: Iterable[Any]) -> tuple[list[Shard], list[CommitEntry]]:
    """Shards of ``root`` (None: no local warehouse) and of every attached folder, one per (table, task):
    a task seen twice is kept once (first wins), and shown unless that first copy is archived: a run
    archived here stays hidden whatever copy of it is attached, and one archived in a shared dataset
    stays hidden when it is attached, as when it is imported. A merged file (``compact``) some of whose
    tasks are shown from another copy is read by its kept tasks' slices only (``Shard.partial``), so each
    task's rows show once whether either side is compacted or not."""
    from layerlake.warehouse.share.remote import is_url, remote_files

    shards, failures = committed_shards(root, archived=True) if root is not None else ([], [])
    for other in attach:
        if is_url(other):  # http(s):// or hf://: read in place, by ranges (warehouse.share.remote)
            shards += [Shard(*listed) for listed in remote_files(other)]
            continue
        folder = Path(other).expanduser().resolve()
        if is_warehouse(folder):
            more, more_failed = committed_shards(folder, archived=True)
            failures += more_failed
        else:
            more = shared_shards(folder)
        shards += more
    seen, kept, dropped = set(), [], set()
    for shard in shards:
        key = (shard.table, shard.entry.task_id if shard.entry else shard.path)
        if key in seen:
            dropped.add(shard.path)
            continue
        seen.add(key)
        kept.append(shard)
    kept = [s for s in kept if not (s.entry and is_archived(s.entry))]  # an archive file holds its run alone
    shown = {s.entry.task_id for s in kept if s.entry}  # a task hidden here but shown from an attached copy
    failures = [f for f in failures if not (f.status == "hidden" and f.task_id in shown)]  # is not left out
    return [s._replace(partial=True) if s.path in dropped else s for s in kept], failures


def view_sql(table: schema.Table, has_files: bool, has_slices: bool = False, dead_runs: bool = False) -> str:
    """The SELECT of a table's view: the file columns cast to their types (SQL text from the contract only).

    Every file of this schema version carries exactly the contract's columns (the writer and the importer
    check), so no ``union_by_name`` is needed: it would read every file's footer when the view is
    created and cost about a fifth of a full scan (measured on the study-sized benchmark warehouse).
    A list stored as bytes (``sketches.gram``) shows twice: as the bytes (``gram_bytes``) and decoded to
    the list (``gram``, by ``_ll_gram_values``, which DuckDB only runs when a query selects it).
    ``dead_runs`` (the ``runs`` table only): the runs of ``getvariable('ll_dead_runs')``, committed as
    running by a process that is gone, show as ``killed`` (``warehouse.runs.is_stale``).
    """
    if not (has_files or has_slices):
        columns = [f"CAST(NULL AS {duck_type(f.type)}) AS {f.name}" for f in table.view_schema()]
        return f"SELECT {', '.join(columns)} WHERE false"
    columns = []
    for c in table.all_columns:
        if c.stored_as_bytes:
            columns.append(f"_ll_gram_values(CAST({c.name} AS BLOB)) AS {c.name}")
            columns.append(f"CAST({c.name} AS BLOB) AS {c.bytes_name}")
        elif dead_runs and c.name in DEAD_RUN_COLUMNS:
            columns.append(DEAD_RUN_COLUMNS[c.name])
        else:
            columns.append(f"CAST({c.name} AS {duck_type(c.type)}) AS {c.name}")
    parts = []
    if has_files:
        parts.append(f"SELECT {', '.join(columns)} FROM read_parquet(getvariable('ll_files_{table.name}'))")
    if has_slices:  # files read by the slices of their kept tasks only (Shard.partial)
        parts.append(
            f"SELECT {', '.join(columns)} FROM read_parquet(getvariable('ll_parts_{table.name}'), "
            "filename = true, file_row_number = true) AS p WHERE EXISTS (SELECT 1 FROM _ll_slices AS s "
            f"WHERE s.path = p.filename AND p.file_row_number >= s.first_row AND p.file_row_number < s.end_row)"
        )
    return " UNION ALL ".join(parts)


# A run whose process is gone, as every reader shows it (nothing is written: `layerlake runs --mark-killed`
# or the next `track()` on its host records it).
_DEAD = "list_contains(getvariable('ll_dead_runs'), run_id)"
DEAD_RUN_COLUMNS = {
    "status": f"CASE WHEN {_DEAD} THEN 'killed' ELSE CAST(status AS VARCHAR) END AS status",
    "error": f"CASE WHEN {_DEAD} THEN coalesce(CAST(error AS VARCHAR), 'its process is gone: killed "
    "(not yet recorded; `layerlake runs --mark-killed` records it)') ELSE CAST(error AS VARCHAR) END AS error",
}


def dead_runs(shards: list[Shard]) -> list[str]:
    """The runs of ``shards`` committed as running whose process on this host is gone."""
    from layerlake.warehouse.runs import is_stale

    return sorted(
        {s.entry.run_id for s in shards if s.table == "runs" and s.entry and is_stale(s.entry.meta)}
    )


def manifest_tables(shards: list[Shard], failures: list[CommitEntry]) -> tuple[pa.Table, pa.Table]:
    """Arrow tables behind the ``manifest`` (one row per visible file) and ``failures`` views."""
    rows = []
    for s in shards:
        entry, meta = s.entry, (s.entry.meta if s.entry else {})
        listed = s.listed
        rows.append({
            "task_id": entry.task_id if entry else None, "table_name": s.table, "path": str(s.path),
            "root": str(s.root), "suite": entry.suite if entry else None, "model": entry.model if entry else None,
            "run_id": entry.run_id if entry else None,
            "rows": listed.rows if listed else None, "bytes": listed.bytes if listed else None,
            "sha256": listed.sha256 if listed else None, **_meta_columns(meta),
            "schema_version": entry.schema_version if entry else None,
            "committed_at": entry.committed_at if entry else None, "meta_json": json.dumps(meta, sort_keys=True),
        })  # fmt: skip
    fails = [
        {"task_id": e.task_id, "suite": e.suite, "model": e.model, "run_id": e.run_id, "error": e.error,
         **_meta_columns(e.meta),
         "committed_at": e.committed_at, "meta_json": json.dumps(e.meta, sort_keys=True)}
        for e in failures
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), pa.Table.from_pylist(
        fails, schema=FAILURES_SCHEMA
    )


_META = ("config_hash", "code_version", "probe_id", "weights_sha256", "revision", "step", "source")


def _meta_columns(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: (None if meta.get(k) is None else str(meta[k])) for k in _META}
    step = meta.get("step")  # a step no int64 holds (a hand-edited or crafted meta) shows as NULL
    out["step"] = (
        step if isinstance(step, int) and not isinstance(step, bool) and -(2**63) <= step < 2**63 else None
    )
    return out


_META_FIELDS = [pa.field(k, pa.int64() if k == "step" else pa.string()) for k in _META]
MANIFEST_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in ("task_id", "table_name", "path", "root", "suite", "model", "run_id")]
    + [pa.field("rows", pa.int64()), pa.field("bytes", pa.int64()), pa.field("sha256", pa.string())]
    + _META_FIELDS
    + [
        pa.field("schema_version", pa.int32()),
        pa.field("committed_at", pa.string()),
        pa.field("meta_json", pa.string()),
    ]
)
SLICES_SCHEMA = pa.schema(
    [pa.field("path", pa.string()), pa.field("first_row", pa.int64()), pa.field("end_row", pa.int64())]
)
FAILURES_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in ("task_id", "suite", "model", "run_id", "error")]
    + _META_FIELDS
    + [pa.field("committed_at", pa.string()), pa.field("meta_json", pa.string())]
)


def connect(
    root: Any = None, read_only: bool = True, attach: Iterable[Any] | str | Path = ()
) -> duckdb.DuckDBPyConnection:
    """A DuckDB in-memory connection over the warehouse at ``root`` (default: ``default_root()``).

    One typed view per contract table over the committed shards of ``root`` and of every folder in
    ``attach`` (other warehouse roots, or shared dataset folders with a ``manifest.json``), plus the
    ``manifest`` and ``failures`` views, the SQL macros and the staging views (``warehouse.macros``).
    ``attach`` may be one folder or URL, or several; a URL (``http(s)://``, ``hf://datasets/ORG/NAME``)
    is read in place by ranges (``warehouse.share.remote``).

    ``read_only=True`` turns DuckDB's external access off except for the listed shard files: the
    connection can read the warehouse and nothing else, and can write no file. ``read_only=False``
    leaves file access on (e.g. to ``COPY`` results out or join your own files); the warehouse is still
    only read through views. A ``root`` that is not a warehouse is an error naming the nearest one
    (``warehouse.locate``); with ``attach`` given, the attached folders are served alone when the
    root (given, or the default) does not exist. What a killed ``compact`` or ``migrate`` left in the
    root is finished or rolled back first (``source_root``).
    """
    attach = (
        [attach] if isinstance(attach, (str, Path)) or hasattr(attach, "url") else list(attach)
    )  # one, or many
    shards, failures = gather(source_root(root, attach), attach)
    return open_views(shards, failures, read_only)


def stored_table(con: duckdb.DuckDBPyConnection, name: str, rows: pa.Table) -> None:
    """``rows`` as table ``name`` of the connection's database, which its cursors (the UI's threads, a
    sandbox worker's) see too: an Arrow table registered on a connection is visible to that connection
    alone."""
    con.register("_ll_arrow", rows)
    try:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM _ll_arrow")
    finally:
        con.unregister("_ll_arrow")


def open_views(
    shards: list[Shard], failures: list[CommitEntry], read_only: bool = True
) -> duckdb.DuckDBPyConnection:
    """A connection whose views show exactly ``shards`` (what ``connect`` gathered, or a warehouse's
    shards plus a shared folder's new ones, which an import audits before it commits them)."""
    con = memory_connection()
    try:
        if any(isinstance(s.path, str) for s in shards):  # attached by URL: DuckDB reads them through this
            from layerlake.warehouse.share.http import BLOCK_BYTES
            from layerlake.warehouse.share.remote import filesystem

            con.register_filesystem(filesystem())
            # DuckDB's cache of remote reads fetches whole files up to 2 MB by default (every small shard,
            # whatever the query needs); in blocks of the manifest's size it reads what the query needs
            con.execute("SET external_file_cache_remote_max_block_size = ?", [BLOCK_BYTES])
        macros.install_functions(con)  # first: the sketches view decodes its Grams with one of them
        dead = dead_runs(shards)
        if dead:
            con.execute("SET VARIABLE ll_dead_runs = ?", [dead])
        slices = [
            {"path": str(s.path), "first_row": s.listed.first_row or 0,
             "end_row": (s.listed.first_row or 0) + s.listed.rows}
            for s in shards if s.partial and s.listed is not None
        ]  # fmt: skip
        stored_table(con, "_ll_slices", pa.Table.from_pylist(slices, schema=SLICES_SCHEMA))
        for table in schema.TABLES.values():
            mine = [s for s in shards if s.table == table.name]
            files = sorted({str(s.path) for s in mine if not s.partial})  # a shared file once
            parts = sorted({str(s.path) for s in mine if s.partial})
            if files:
                con.execute(f"SET VARIABLE ll_files_{table.name} = ?", [files])
            if parts:
                con.execute(f"SET VARIABLE ll_parts_{table.name} = ?", [parts])
            try:
                sql = view_sql(table, bool(files), bool(parts), dead_runs=bool(dead) and table.name == "runs")
                con.execute(f"CREATE VIEW {table.name} AS {sql}")
            except duckdb.Error as error:  # a view reads its first file's footer when it is created
                from layerlake.warehouse.share.http import from_duckdb

                remote = from_duckdb(error)  # a file attached by URL: its server failed, or it changed
                if remote is not None:
                    raise remote from error
                raise WarehouseError(
                    f"cannot read the {table.name} files: {str(error).splitlines()[0]}",
                    fix="run `layerlake check --verify-files` to find damaged files, then extract their tasks again "
                    "(or import them again from a shared copy)",
                ) from error
        manifest_rows, failure_rows = manifest_tables(shards, failures)
        stored_table(con, "_ll_manifest", manifest_rows)
        stored_table(con, "_ll_failures", failure_rows)
        con.execute("CREATE VIEW manifest AS SELECT * FROM _ll_manifest")
        con.execute("CREATE VIEW failures AS SELECT * FROM _ll_failures")
        macros.install_staging(con)  # after the table views: the staging views read them
        if read_only:
            con.execute("SET allowed_paths = ?", [sorted({str(s.path) for s in shards})])
            con.execute("SET enable_external_access = false")
    except BaseException:
        con.close()
        raise
    return con
