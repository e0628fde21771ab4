"""The single-writer commit protocol: immutable Parquet shards, atomic rename, then one manifest line.

A commit of task ``t`` (tables ``{name: pa.Table}``) does, holding ``<root>/_manifest/.lock``:

1. validate every table against ``warehouse.schema`` (exact columns, castable types, no NULL where the
   contract forbids it) and cast it to the contract's Arrow schema;
2. write each non-empty table as one zstd Parquet file into ``<root>/_staging/`` (outside every glob a
   reader uses), with ``layerlake.schema_version``, ``layerlake.task_id`` and ``layerlake.table`` in the
   file's key-value metadata, and fsync it;
3. ``os.replace`` each into ``<root>/<table>/suite=<s>/model=<m>/part-<t>.parquet`` and fsync the folder;
4. append one JSON line to ``<root>/_manifest/commits.jsonl`` and fsync it (``warehouse.manifest``).

Readers (``warehouse.connect``) list files from the manifest only, so a SIGKILL at any point leaves no
half-written file visible: before step 4 the new files are orphans no entry lists (or, for a re-commit,
complete files of the same task whose sizes no longer match the listed ones: readers then hide that
task until it is committed again). ``Warehouse.gc()`` removes staging leftovers and orphans.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from layerlake.core.hashing import sha256_bytes
from layerlake.warehouse import schema
from layerlake.warehouse.errors import ManifestError, WarehouseError
from layerlake.warehouse.layout import MANIFEST_DIR, STAGING_DIR, check_name, shard_path
from layerlake.warehouse.manifest import (
    CommitEntry,
    FileEntry,
    append_entry,
    entry_problems,
    latest,
    manifest_path,
    read_entries,
)

LOCK_FILE = ".lock"
# Float arrays (Grams, spectra) gain nothing from dictionary encoding; everything else is small.
_NO_DICTIONARY_TYPES = (pa.list_(pa.float32()), pa.list_(pa.float64()))


def conform(name: str, table: pa.Table, suite: str, model: str) -> pa.Table:
    """``table`` cast to the contract of warehouse table ``name``, columns in contract order.

    Partition columns (suite, model) may be present if they hold exactly the commit's suite and
    model; they are dropped (the path carries them).
    """
    try:
        spec = schema.table(name)
    except KeyError as error:
        raise WarehouseError(str(error.args[0]), fix="commit only tables of warehouse/schema.py") from None
    for column, expected in zip(schema.PARTITION_COLUMNS, (suite, model), strict=True):
        if column in table.column_names:
            values = set(table.column(column).to_pylist())
            if values - {expected}:
                raise WarehouseError(
                    f"table {name!r} has {column} values {sorted(map(str, values))} but is committed as {expected!r}",
                    fix=f"drop the {column} column (the partition path carries it) or commit each {column} apart",
                )
            table = table.drop_columns([column])
    wanted, given = spec.column_names, table.column_names
    missing = [c for c in wanted if c not in given]
    extra = [c for c in given if c not in wanted]
    if missing or extra:
        raise WarehouseError(
            f"table {name!r} does not match the contract: missing columns {missing}, unknown columns {extra}",
            fix="build the table with warehouse.schema.table(name).arrow_schema() (see docs/schema.md)",
        )
    table = table.select(list(wanted))
    for column in spec.columns:
        if not column.nullable and table.column(column.name).null_count:
            raise WarehouseError(
                f"table {name!r} column {column.name!r} holds NULLs but the contract forbids them",
                fix=f"fill {column.name} for every row (docs/schema.md says what it means)",
            )
    try:
        table = table.cast(spec.arrow_schema())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as error:
        types = ", ".join(f"{f.name}: {f.type}" for f in table.schema)
        raise WarehouseError(
            f"table {name!r} has types that do not cast to the contract ({error}); given {types}",
            fix="cast the columns to the types in docs/schema.md",
        ) from error
    return table


def parquet_bytes(name: str, table: pa.Table, task_id: str) -> bytes:
    """The Parquet file of one shard, in memory (zstd, contract metadata in the footer)."""
    metadata = {
        b"layerlake.schema_version": str(schema.SCHEMA_VERSION).encode(),
        b"layerlake.task_id": task_id.encode(),
        b"layerlake.table": name.encode(),
    }
    table = table.replace_schema_metadata(metadata)
    dictionary = [f.name for f in table.schema if f.type not in _NO_DICTIONARY_TYPES]
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=dictionary, write_statistics=dictionary)
    return sink.getvalue().to_pybytes()


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` and fsync it."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Warehouse:
    """The writing side of a warehouse root; one process at a time writes (a file lock enforces it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.staging = self.root / STAGING_DIR
        self.manifest = manifest_path(self.root)
        for folder in (self.root, self.staging, self.root / MANIFEST_DIR):
            folder.mkdir(parents=True, exist_ok=True)
        self._cache: tuple[tuple[int, int], list[CommitEntry]] | None = None

    # -- reading the manifest -------------------------------------------------------------------------

    def entries(self) -> list[CommitEntry]:
        """Every complete manifest entry, in order (re-read only when the file changed)."""
        try:
            stat = self.manifest.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            return []
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, read_entries(self.manifest))
        return self._cache[1]

    def committed(self) -> dict[str, CommitEntry]:
        """task_id -> its latest ok entry."""
        return latest(self.entries())[0]

    def failed(self) -> dict[str, CommitEntry]:
        """task_id -> its latest failure that no later ok entry supersedes."""
        return latest(self.entries())[1]

    def is_committed(self, task_id: str) -> bool:
        """True when the task has an ok entry and every file it lists exists with the listed size."""
        entry = self.committed().get(task_id)
        return entry is not None and not self.problems(entry, verify_sha256=False)

    def problems(self, entry: CommitEntry, verify_sha256: bool = False) -> list[str]:
        """What is wrong with the files of ``entry`` (missing, wrong size, wrong sha256); empty if none."""
        return [f"{f.path}: {problem}" for f, problem in entry_problems(self.root, entry, verify_sha256)]

    # -- writing ----------------------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the writer lock (blocks while another process commits)."""
        fd = os.open(self.root / MANIFEST_DIR / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def commit(
        self, task_id: str, suite: str, model: str, tables: dict[str, pa.Table], meta: dict
    ) -> CommitEntry:
        """Publish ``tables`` as task ``task_id`` of (suite, model); returns the manifest entry.

        Re-committing a task id replaces its files (rename over) and appends a new entry that wins.
        """
        for kind, value in (("task id", task_id), ("suite", suite), ("model", model)):
            check_name(kind, value)
        shards = {name: conform(name, t, suite, model) for name, t in tables.items()}
        with self.lock():
            staged, files = [], []
            try:
                for name, table in shards.items():
                    if table.num_rows == 0:
                        continue
                    data = parquet_bytes(name, table, task_id)
                    tmp = self.staging / f"{name}.{task_id}.{uuid.uuid4().hex}.parquet.tmp"
                    write_durable(tmp, data)
                    target = self.root / shard_path(name, suite, model, task_id)
                    staged.append((tmp, target))
                    files.append(
                        FileEntry(
                            name,
                            target.relative_to(self.root).as_posix(),
                            sha256_bytes(data),
                            table.num_rows,
                            len(data),
                        )
                    )
                for tmp, target in staged:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, target)
                    fsync_dir(target.parent)
            except BaseException:
                for tmp, _ in staged:
                    tmp.unlink(missing_ok=True)
                raise
            entry = self._entry("ok", task_id, suite, model, tuple(files), meta)
            append_entry(self.manifest, entry)
        return entry

    def record_failure(self, task_id: str, suite: str, model: str, error: str, meta: dict) -> CommitEntry:
        """Append a failed entry for ``task_id`` (its earlier ok entry, if any, still stands)."""
        entry = self._entry("failed", task_id, suite, model, (), meta, error=str(error))
        with self.lock():
            append_entry(self.manifest, entry)
        return entry

    def _entry(
        self,
        status: str,
        task_id: str,
        suite: str,
        model: str,
        files: tuple,
        meta: dict,
        error: str | None = None,
    ) -> CommitEntry:
        entry = CommitEntry(
            status, task_id, suite, model, files, dict(meta), schema.SCHEMA_VERSION, now_utc(), error
        )
        try:
            json.dumps(entry.to_json())
        except (TypeError, ValueError) as exc:
            raise ManifestError(
                f"meta of task {task_id!r} is not JSON-serialisable ({exc})",
                fix="pass plain str/int/float/bool/list/dict values in meta",
            ) from exc
        return entry

    # -- housekeeping -----------------------------------------------------------------------------------

    def gc(self, dry_run: bool = False) -> list[Path]:
        """Remove staging leftovers and orphan shards (files no latest ok entry lists); returns them.

        Orphans come from a writer killed between rename and manifest append, or from a re-commit that
        no longer has a table. Takes the writer lock, so it never races a commit.
        """
        removed: list[Path] = []
        with self.lock():
            listed = {self.root / f.path for e in self.committed().values() for f in e.files}
            candidates = [p for p in self.staging.iterdir() if p.is_file()]
            for name in schema.TABLES:
                if (self.root / name).is_dir():
                    candidates += [p for p in (self.root / name).rglob("*.parquet") if p not in listed]
            for path in candidates:
                if not dry_run:
                    path.unlink(missing_ok=True)
                removed.append(path)
        return removed
