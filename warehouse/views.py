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
SQL. Paths are absolute, so views do not depend on the working directory. ``hive_types`` pins the
partition columns to VARCHAR (a model named ``070`` stays text).
"""

from __future__ import annotations

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
    FileEntry,
    entry_problems,
    is_archived,
    latest,
    manifest_path,
    read_entries,
)


class Shard(NamedTuple):
    """One readable file: where it is and which commit listed it."""

    table: str
    path: Path  # absolute
    root: Path  # the warehouse root (or shared folder) it belongs to
    entry: CommitEntry | None  # None for a shared folder's file
    listed: FileEntry | None = None  # the entry's listing of this file


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


def committed_shards(root: Path) -> tuple[list[Shard], list[CommitEntry]]:
    """The files of a warehouse root that readers may see, and its standing failures.

    A task is shown only if every file its latest ok entry lists is a regular file inside the root with
    the listed size (``manifest.file_problem``): never half a task, never a path that leaves the root.
    """
    committed, failed = latest(read_entries(manifest_path(root)))
    old = [e for e in committed.values() if e.schema_version < schema.SCHEMA_VERSION]
    if old:
        raise WarehouseError(
            f"the warehouse at {root} was written by an older layerlake (schema version "
            f"{min(e.schema_version for e in old)}; this one reads {schema.SCHEMA_VERSION})",
            fix=f"run `layerlake migrate --root {root}` once: it rewrites the files and keeps every row",
        )
    shards, seen, paths = [], {}, {}  # paths: one Path per file, however many tasks share it (compacted)
    for entry in committed.values():
        if is_archived(entry):
            continue  # an archived run (`layerlake runs archive`): kept, not shown
        if not entry_problems(root, entry, seen=seen):
            for f in entry.files:
                if f.table in schema.TABLES:
                    path = paths.get(f.path) or paths.setdefault(f.path, root / f.path)
                    shards.append(Shard(f.table, path, root, entry, f))
    return shards, list(failed.values())


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
    exist: attaching needs no local warehouse. A root that exists but is no warehouse is still refused."""
    if list(attach):
        path = default_root() if root is None else Path(root).expanduser().resolve()
        if not path.exists() or (root is None and not is_warehouse(path)):
            return None
    return _resolve(root)


def gather(root: Path | None, attach: Iterable[Any]) -> tuple[list[Shard], list[CommitEntry]]:
    """Shards of ``root`` (None: no local warehouse) and of every attached folder; a (table, task) seen
    twice is kept once (first wins), and a file listed twice is read once."""
    shards, failures = committed_shards(root) if root is not None else ([], [])
    for other in attach:
        folder = Path(other).expanduser().resolve()
        if is_warehouse(folder):
            more, more_failed = committed_shards(folder)
            failures += more_failed
        else:
            more = shared_shards(folder)
        shards += more
    seen, paths, unique = set(), set(), []
    for shard in shards:
        key = (shard.table, shard.entry.task_id if shard.entry else shard.path)
        if key not in seen and shard.path not in paths:
            seen.add(key)
            paths.add(shard.path)
            unique.append(shard)
    return unique, failures


def view_sql(table: schema.Table, has_files: bool) -> str:
    """The SELECT of a table's view: the file columns cast to their types (SQL text from the contract only).

    Every file of this schema version carries exactly the contract's columns (the writer and the importer
    check), so no ``union_by_name`` is needed: it would read every file's footer when the view is
    created and cost about a fifth of a full scan (measured on the study-sized benchmark warehouse).
    A list stored as bytes (``sketches.gram``) shows twice: as the bytes (``gram_bytes``) and decoded to
    the list (``gram``, by ``_ll_gram_values``, which DuckDB only runs when a query selects it).
    """
    if not has_files:
        columns = [f"CAST(NULL AS {duck_type(f.type)}) AS {f.name}" for f in table.view_schema()]
        return f"SELECT {', '.join(columns)} WHERE false"
    columns = []
    for c in table.all_columns:
        if c.stored_as_bytes:
            columns.append(f"_ll_gram_values(CAST({c.name} AS BLOB)) AS {c.name}")
            columns.append(f"CAST({c.name} AS BLOB) AS {c.bytes_name}")
        else:
            columns.append(f"CAST({c.name} AS {duck_type(c.type)}) AS {c.name}")
    return f"SELECT {', '.join(columns)} FROM read_parquet(getvariable('ll_files_{table.name}'))"


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
    out["step"] = meta.get("step") if isinstance(meta.get("step"), int) else None
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
FAILURES_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in ("task_id", "suite", "model", "run_id", "error")]
    + _META_FIELDS
    + [pa.field("committed_at", pa.string()), pa.field("meta_json", pa.string())]
)


def connect(
    root: Any = None, read_only: bool = True, attach: Iterable[Any] = ()
) -> duckdb.DuckDBPyConnection:
    """A DuckDB in-memory connection over the warehouse at ``root`` (default: ``default_root()``).

    One typed view per contract table over the committed shards of ``root`` and of every folder in
    ``attach`` (other warehouse roots, or shared dataset folders with a ``manifest.json``), plus the
    ``manifest`` and ``failures`` views, the SQL macros and the staging views (``warehouse.macros``).

    ``read_only=True`` turns DuckDB's external access off except for the listed shard files: the
    connection can read the warehouse and nothing else, and can write no file. ``read_only=False``
    leaves file access on (e.g. to ``COPY`` results out or join your own files); the warehouse is still
    only read through views. A ``root`` that is not a warehouse is an error naming the nearest one
    (``warehouse.locate``); with ``attach`` given, the attached folders are served alone when the
    root (given, or the default) does not exist.
    """
    attach = list(attach)
    shards, failures = gather(source_root(root, attach), attach)
    return open_views(shards, failures, read_only)


def open_views(
    shards: list[Shard], failures: list[CommitEntry], read_only: bool = True
) -> duckdb.DuckDBPyConnection:
    """A connection whose views show exactly ``shards`` (what ``connect`` gathered, or a warehouse's
    shards plus a shared folder's new ones, which an import audits before it commits them)."""
    con = memory_connection()
    try:
        macros.install_functions(con)  # first: the sketches view decodes its Grams with one of them
        for table in schema.TABLES.values():
            files = sorted({str(s.path) for s in shards if s.table == table.name})  # a shared file once
            if files:
                con.execute(f"SET VARIABLE ll_files_{table.name} = ?", [files])
            try:
                con.execute(f"CREATE VIEW {table.name} AS {view_sql(table, bool(files))}")
            except duckdb.Error as error:  # a view reads its first file's footer when it is created
                raise WarehouseError(
                    f"cannot read the {table.name} files: {str(error).splitlines()[0]}",
                    fix="run `layerlake check --verify-files` to find damaged files, then extract their tasks again "
                    "(or import them again from a shared copy)",
                ) from error
        manifest_rows, failure_rows = manifest_tables(shards, failures)
        con.register("_ll_manifest", manifest_rows)
        con.register("_ll_failures", failure_rows)
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
