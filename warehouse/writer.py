"""The commit protocol: immutable, content-named Parquet shards, then one manifest line as the switch.

A commit of task ``t`` (tables ``{name: pa.Table}`` of one suite, model and run) does:

1. validate every table against ``warehouse.schema`` (exact columns, castable types, no NULL where the
   contract forbids it), cast it, and add the identity columns ``suite``, ``model``, ``run_id``;
2. write each non-empty table as a zstd Parquet file into ``<root>/_staging/`` (outside every path a
   reader looks at) under a name that says which process writes it, and fsync it. This happens
   outside the lock, so concurrent writers (training jobs of a sweep) overlap their slow part;
3. holding ``<root>/_manifest/.lock``: remove stale staging files of dead writers, ``os.replace`` each
   new file to ``<table>/<suite>/<model>/<t>-<sha256[:16]>.parquet`` (``warehouse.layout``), fsync the
   folders, and append one JSON line to ``_manifest/commits.jsonl`` (fsynced): the switch.

A shard's name carries its content hash, so a commit never writes over a file an entry lists:
replacing a task's rows adds new files, and readers (``warehouse.connect``, which shows only the files
of each task's latest entry) see exactly the old state until the line is appended, and exactly the new
one after. A failure or SIGKILL at any point leaves at most files that no entry lists (orphans) or
staging leftovers; ``Warehouse.gc`` removes them (staging leftovers also at the next commit).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq

from layerlake.core.hashing import sha256_bytes
from layerlake.warehouse import schema
from layerlake.warehouse.errors import ManifestError, WarehouseError
from layerlake.warehouse.gram import bytes_column, values_column
from layerlake.warehouse.layout import MANIFEST_DIR, STAGING_DIR, check_name, parse_shard_path, shard_path
from layerlake.warehouse.manifest import (
    CommitEntry,
    FileEntry,
    ManifestFollower,
    append_batch,
    append_entry,
    entry_problems,
    manifest_path,
    read_task_rows,
)

LOCK_FILE = ".lock"
HOST = socket.gethostname()
STALE_AFTER_S = 24 * 3600  # a staging file of another host (or a reused pid) is stale after this long
ORPHAN_GRACE_S = 15 * 60  # an unlisted shard is removed only this long after it was last listed or written
# Float arrays (Grams, spectra) gain nothing from dictionary encoding; everything else is small.
_NO_DICTIONARY_TYPES = (pa.list_(pa.float32()), pa.list_(pa.float64()))
_DISK_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def conform(name: str, table: pa.Table, suite: str, model: str, run_id: str) -> pa.Table:
    """``table`` cast to the contract of warehouse table ``name``, with the identity columns first.

    Identity columns (suite, model, run_id) may be present if they hold exactly the commit's values.
    """
    try:
        spec = schema.table(name)
    except KeyError as error:
        raise WarehouseError(str(error.args[0]), fix="commit only tables of warehouse/schema.py") from None
    for column, expected in zip(schema.IDENTITY_COLUMNS, (suite, model, run_id), strict=True):
        if column in table.column_names:
            values = set(table.column(column).to_pylist())
            if values - {expected}:
                raise WarehouseError(
                    f"table {name!r} has {column} values {sorted(map(str, values))} but is committed as {expected!r}",
                    fix=f"drop the {column} column (the commit sets it) or commit each {column} apart",
                )
            table = table.drop_columns([column])
    wanted, given = spec.column_names, table.column_names
    missing = [c for c in wanted if c not in given]
    extra = [c for c in given if c not in wanted]
    if missing or extra:
        raise WarehouseError(
            f"table {name!r} does not match the contract: missing columns {missing}, unknown columns {extra}",
            fix="build the table with layerlake.warehouse.schema.table(name).arrow_schema() (docs/schema.md)",
        )
    table = table.select(list(wanted))
    for column in spec.columns:
        if not column.nullable and table.column(column.name).null_count:
            raise WarehouseError(
                f"table {name!r} column {column.name!r} holds NULLs but the contract forbids them",
                fix=f"fill {column.name} for every row (docs/schema.md says what it means)",
            )
    for column in spec.columns:  # rows read back from a stored file hold bytes: the list again, to check
        if column.stored_as_bytes and pa.types.is_binary(table.column(column.name).type):
            index = table.column_names.index(column.name)
            table = table.set_column(index, column.name, values_column(table.column(column.name)))
    try:
        table = table.cast(spec.arrow_schema())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as error:
        types = ", ".join(f"{f.name}: {f.type}" for f in table.schema)
        raise WarehouseError(
            f"table {name!r} has types that do not cast to the contract ({error}); given {types}",
            fix="cast the columns to the types in docs/schema.md",
        ) from error
    n = table.num_rows
    identity = [pa.array([value] * n, pa.string()) for value in (suite, model, run_id)]
    own = [
        bytes_column(table.column(c.name)) if c.stored_as_bytes else table.column(c.name)
        for c in spec.columns
    ]
    return pa.Table.from_arrays([*identity, *own], schema=spec.file_schema())


def reading_order(name: str, table: pa.Table) -> pa.Table:
    """One task's rows in the order a reader skips by: whole-layer rows (``head`` NULL) before per-head
    rows, each sorted by the table's key (step, layer, site ...). With ``parquet_bytes``' row groups, a
    query of whole layers (every recipe's default) skips the per-head Grams by their statistics."""
    keys = [(c, "ascending") for c in schema.table(name).key if c in table.column_names]
    if not keys or table.num_rows < 2:
        return table
    if "head" not in table.column_names:
        return table.sort_by(keys)
    flagged = table.append_column("_ll_per_head", pa.compute.is_valid(table.column("head")))
    return flagged.sort_by([("_ll_per_head", "ascending"), *keys]).drop_columns(["_ll_per_head"])


def row_group_bounds(table: pa.Table) -> list[int]:
    """Where a file's row groups start: a new one wherever ``head`` turns from NULL to set or back, so
    that no row group mixes whole-layer and per-head rows (their statistics then tell them apart)."""
    if "head" not in table.column_names or table.num_rows == 0:
        return [0]
    per_head = pa.compute.is_valid(table.column("head")).to_numpy(zero_copy_only=False)
    changes = (per_head[1:] != per_head[:-1]).nonzero()[0] + 1
    return [0, *changes.tolist()]


def parquet_bytes(name: str, table: pa.Table, task_id: str) -> bytes:
    """The Parquet file of one shard, in memory (zstd, contract metadata in the footer)."""
    metadata = {
        b"layerlake.schema_version": str(schema.SCHEMA_VERSION).encode(),
        b"layerlake.task_id": task_id.encode(),
        b"layerlake.table": name.encode(),
    }
    table = table.replace_schema_metadata(metadata)
    as_bytes = {c.name for c in schema.table(name).columns if c.stored_as_bytes}
    dictionary = [
        f.name for f in table.schema if f.type not in _NO_DICTIONARY_TYPES and f.name not in as_bytes
    ]
    # Stored Grams are float noise to zstd (7 % smaller) and cost DuckDB's scan 3-4x its time to inflate
    # (warehouse.gram): written plain.
    compression = {f.name: "none" if f.name in as_bytes else "zstd" for f in table.schema}
    sink = pa.BufferOutputStream()
    bounds = row_group_bounds(table)
    with pq.ParquetWriter(
        sink, table.schema, compression=compression, use_dictionary=dictionary, write_statistics=dictionary
    ) as writer:
        for start, end in zip(bounds, [*bounds[1:], table.num_rows], strict=True):
            writer.write_table(table.slice(start, end - start))
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


def staging_name(what: str) -> str:
    """A staging file name that says which process writes it: ``<host>.<pid>.<random>.<what>.tmp``."""
    return f"{HOST}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{what}.tmp"


def is_stale_staging(path: Path, now: float | None = None) -> bool:
    """Whether a staging file's writer is gone: its process is dead (same host), or it is old."""
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    host, _, rest = path.name.partition(".")
    pid_text = rest.partition(".")[0]
    if host == HOST and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    return age > STALE_AFTER_S


@dataclass(frozen=True)
class Staged:
    """A file written to staging, and where it goes once committed."""

    tmp: Path
    target: Path
    entry: FileEntry


def disk_error(error: OSError, what: str) -> WarehouseError:
    """A write that failed for lack of room (full disk, file size limit, quota) as a clear error."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    return WarehouseError(
        f"could not write {what}: {reason}; nothing was committed, the warehouse is as it was",
        fix="free disk space (or raise the file size limit / quota), then run the command again",
    )


class Warehouse:
    """The writing side of a warehouse root. Many processes may commit to one root: each writes its
    files on its own, then holds a file lock only to publish them and append its manifest line."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        """``create=False``: only read an existing warehouse (``check``, ``runs``): a folder that is not
        one is refused by ``warehouse.locate`` and nothing is created."""
        self.root = Path(root).expanduser().resolve()
        self.staging = self.root / STAGING_DIR
        self.manifest = manifest_path(self.root)
        if not create:
            from layerlake.warehouse.locate import warehouse_root

            warehouse_root(self.root)
        try:
            for folder in (self.root, self.staging, self.root / MANIFEST_DIR) if create else ():
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WarehouseError(
                f"cannot create the warehouse at {self.root}: {error.strerror or error}",
                fix="choose a folder you can write (paths.data=... or --root)",
            ) from error
        self._manifest = ManifestFollower(self.manifest)
        self._lock_depth = 0

    # -- reading the manifest -------------------------------------------------------------------------

    def entries(self) -> list[CommitEntry]:
        """Every complete manifest entry, in order (only lines appended since the last call are parsed)."""
        return list(self._manifest.read().entries)

    def committed(self) -> dict[str, CommitEntry]:
        """task_id -> its latest ok entry."""
        return dict(self._manifest.read().committed)

    def failed(self) -> dict[str, CommitEntry]:
        """task_id -> its latest failure that no later ok entry supersedes."""
        return dict(self._manifest.read().failed)

    def is_committed(self, task_id: str) -> bool:
        """True when the task has an ok entry and every file it lists exists with the listed size."""
        entry = self.committed().get(task_id)
        return entry is not None and not self.problems(entry, verify_sha256=False)

    def problems(self, entry: CommitEntry, verify_sha256: bool = False) -> list[str]:
        """What is wrong with the files of ``entry`` (missing, wrong size, wrong sha256); empty if none."""
        return [f"{f.path}: {problem}" for f, problem in entry_problems(self.root, entry, verify_sha256)]

    def outdated(self) -> list[CommitEntry]:
        """Committed entries written by an older schema version (``layerlake migrate`` rewrites them)."""
        return [e for e in self.committed().values() if e.schema_version < schema.SCHEMA_VERSION]

    def check_version(self) -> None:
        """Refuse to write into a warehouse that still holds rows of an older schema version."""
        old = self.outdated()
        if old:
            raise WarehouseError(
                f"the warehouse at {self.root} holds {len(old)} task(s) written by an older layerlake "
                f"(schema version {min(e.schema_version for e in old)}, this one writes {schema.SCHEMA_VERSION})",
                fix=f"run `layerlake migrate --root {self.root}` once (it rewrites them and keeps every row)",
            )

    # -- writing ----------------------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the writer lock (blocks while another process publishes); re-entrant for this object, so
        a caller that plans under the lock can publish under it."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.root / MANIFEST_DIR / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)  # closing releases the flock

    def stage(
        self, task_id: str, suite: str, model: str, run_id: str, tables: dict[str, pa.Table]
    ) -> list[Staged]:
        """Validate ``tables`` and write each non-empty one to staging; returns what to publish."""
        for kind, value in (("task id", task_id), ("suite", suite), ("model", model), ("run id", run_id)):
            check_name(kind, value)
        shards = {
            name: reading_order(name, conform(name, t, suite, model, run_id)) for name, t in tables.items()
        }
        staged: list[Staged] = []
        try:
            for name, table in shards.items():
                if table.num_rows == 0:
                    continue
                data = parquet_bytes(name, table, task_id)
                digest = sha256_bytes(data)
                rel = shard_path(name, suite, model, task_id, digest)
                tmp = self.staging / staging_name(name)
                staged.append(
                    Staged(tmp, self.root / rel, FileEntry(name, rel, digest, table.num_rows, len(data)))
                )
                write_durable(tmp, data)
        except BaseException as error:
            discard(staged)
            if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
                raise disk_error(error, f"the rows of task {task_id}") from error
            raise
        return staged

    def commit(
        self,
        task_id: str,
        suite: str,
        model: str,
        tables: dict[str, pa.Table],
        meta: dict,
        *,
        run_id: str | None = None,
    ) -> CommitEntry:
        """Publish ``tables`` as task ``task_id`` of (suite, model, run); returns the manifest entry.
        ``run_id`` defaults to the suite model's own run, ``<suite>.<model>`` (``default_run_id``).

        Committing a task id again replaces its rows: the new entry lists new files and wins.
        """
        prepared = self.prepare(task_id, suite, model, tables, meta, run_id=run_id)
        self.publish([prepared])
        return prepared[0]

    def prepare(
        self,
        task_id: str,
        suite: str,
        model: str,
        tables: dict[str, pa.Table],
        meta: dict,
        *,
        run_id: str | None = None,
        check: bool = True,
    ) -> tuple[CommitEntry, list[Staged]]:
        """Stage ``tables`` and make their entry, without publishing: several prepared tasks published
        together (``publish``) become visible all at once, in one manifest line. ``check=False`` skips
        the schema-version check (for the migration itself)."""
        if check:
            self.check_version()
        run_id = default_run_id(suite, model) if run_id is None else run_id
        staged = self.stage(task_id, suite, model, run_id, tables)
        try:
            entry = self._entry("ok", task_id, suite, model, tuple(s.entry for s in staged), meta, run_id)
        except BaseException:
            discard(staged)
            raise
        return entry, staged

    def publish(self, commits: list[tuple[CommitEntry | None, list[Staged]]]) -> None:
        """Move staged files into place and append their entries, one line for all (all or nothing).
        An entry of None places files an existing entry already lists (a repair), appending nothing."""
        try:
            with self.lock():
                self.clean_staging()
                commits = [*commits, *self._unshare([e for e, _ in commits if e is not None])]
                for _, staged in commits:
                    self._place(staged)
                entries = [entry for entry, _ in commits if entry is not None]
                if len(entries) == 1:
                    append_entry(self.manifest, entries[0])
                elif entries:
                    append_batch(self.manifest, entries, now_utc())
        except OSError as error:
            if error.errno in _DISK_ERRORS:
                raise disk_error(error, f"the manifest of {self.root}") from error
            raise
        finally:
            discard([s for _, staged in commits for s in staged])

    def _unshare(self, new_entries: list[CommitEntry]) -> list[tuple[CommitEntry, list[Staged]]]:
        """Tasks being replaced whose rows sit in a file shared with other tasks (compacted): that file
        is written again without them, and the other tasks' entries point to the new one (published in
        the same line), so their old rows never show beside their new ones. Holds the lock."""
        committed = self.committed()
        replaced = {e.task_id for e in new_entries}
        paths = {f.path for t in replaced if t in committed for f in committed[t].files if f.shared}
        if not paths:
            return []
        moved: dict[str, dict[str, FileEntry]] = {}
        staged: list[Staged] = []
        for path in sorted(paths):
            keep = [
                (e, f)
                for e in committed.values()
                if e.task_id not in replaced
                for f in e.files
                if f.path == path
            ]
            if not keep:
                continue
            parts = [read_task_rows(self.root, f).replace_schema_metadata(None) for _, f in keep]
            first = keep[0][1]
            name = parse_shard_path(path)
            data = parquet_bytes(first.table, pa.concat_tables(parts), name.task_id if name else "compact")
            digest = sha256_bytes(data)
            rel = shard_path(first.table, name.suite, name.model, name.task_id, digest) if name else path
            tmp = self.staging / staging_name(first.table)
            write_durable(tmp, data)
            staged.append(
                Staged(
                    tmp,
                    self.root / rel,
                    FileEntry(first.table, rel, digest, sum(len(p) for p in parts), len(data)),
                )
            )
            offset = 0
            for (entry, f), part in zip(keep, parts, strict=True):
                moved.setdefault(entry.task_id, {})[f.path] = FileEntry(
                    f.table, rel, digest, len(part), len(data), offset
                )
                offset += len(part)
        out: list[tuple[CommitEntry, list[Staged]]] = []
        for index, (task, files) in enumerate(sorted(moved.items())):
            entry = committed[task]
            new = dataclasses.replace(
                entry, files=tuple(files.get(f.path, f) for f in entry.files), committed_at=now_utc()
            )
            out.append((new, staged if index == 0 else []))
        return out

    def _place(self, staged: list[Staged]) -> None:
        folders = set()
        for s in staged:
            s.target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(s.tmp, s.target)  # a file already there has this very content (its name is its hash)
            folders.add(s.target.parent)
        for folder in folders:
            fsync_dir(folder)

    def record_failure(
        self, task_id: str, suite: str, model: str, error: str, meta: dict, *, run_id: str | None = None
    ) -> CommitEntry:
        """Append a failed entry for ``task_id`` (its earlier ok entry, if any, still stands)."""
        run_id = default_run_id(suite, model) if run_id is None else run_id
        entry = self._entry("failed", task_id, suite, model, (), meta, run_id, error=str(error))
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
        run_id: str,
        error: str | None = None,
    ) -> CommitEntry:
        entry = CommitEntry(
            status, task_id, suite, model, files, dict(meta), schema.SCHEMA_VERSION, now_utc(), error, run_id
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

    def stale_staging(self) -> list[Path]:
        """Staging files whose writer is gone (never a live writer's)."""
        if not self.staging.is_dir():
            return []
        return sorted(p for p in self.staging.iterdir() if p.is_file() and is_stale_staging(p))

    def clean_staging(self) -> list[Path]:
        """Remove stale staging files; returns them. Called with the lock held by every publish."""
        removed = self.stale_staging()
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def orphans(self, grace_s: float = ORPHAN_GRACE_S) -> list[Path]:
        """Shard files no latest ok entry lists, written more than ``grace_s`` seconds ago (a reader that
        listed the files just before a commit may still be about to read one)."""
        listed = {self.root / f.path for e in self.committed().values() for f in e.files}
        now = time.time()
        found = []
        for name in schema.TABLES:
            folder = self.root / name
            if not folder.is_dir():
                continue
            for path in folder.rglob("*.parquet"):
                if path not in listed and now - path.stat().st_mtime >= grace_s:
                    found.append(path)
        return sorted(found)

    def gc(self, dry_run: bool = False, grace_s: float = ORPHAN_GRACE_S) -> list[Path]:
        """Remove stale staging files and orphan shards; returns them. Holds the writer lock."""
        with self.lock():
            candidates = self.stale_staging() + self.orphans(grace_s)
            if not dry_run:
                for path in candidates:
                    path.unlink(missing_ok=True)
        return candidates


def default_run_id(suite: str, model: str) -> str:
    """The run of a suite model whose checkpoints are extracted after the fact: ``<suite>.<model>``."""
    return f"{suite}.{model}"


def discard(staged: list[Staged]) -> None:
    """Remove staging files that were not moved into place."""
    for s in staged:
        s.tmp.unlink(missing_ok=True)
