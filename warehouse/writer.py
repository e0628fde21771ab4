"""The one home of writing: immutable, content-named Parquet shards, then one manifest line as the switch.

Every writer goes through ``Warehouse``: extraction (``etl.driver``), tracking (``etl.track``),
``import-metrics``, ``share import``, ``compact`` and ``migrate``; run and probe rows through
``warehouse.runs``. Its public operations: ``commit`` (one task), ``prepare`` + ``publish`` (several
tasks in one manifest line), ``record_failure``; ``stage_rows`` / ``stage_copy`` / ``stage_slices``
(files written to staging: new rows, a verified copy of another warehouse's or a shared folder's file,
the slices of several tasks merged into one file), ``place`` and ``replace_manifest`` (for a
maintenance step, which runs under ``maintenance``: journaled, undone on failure, finished or rolled
back by the next writer after a SIGKILL, ``warehouse.journal``). A write that fails for lack of room
(full disk, file size limit, quota) is a ``WarehouseError`` saying nothing was changed.

A commit of task ``t`` (tables ``{name: pa.Table}`` of one suite, model and run) does:

1. validate every table against ``warehouse.schema`` (exact columns, castable types, no NULL where the
   contract forbids it), cast it, and add the identity columns ``suite``, ``model``, ``run_id``;
2. write each non-empty table as a zstd Parquet file into ``<root>/_staging/`` (outside every path a
   reader looks at) under a name that says which process writes it, and fsync it. This happens
   outside the lock, so concurrent writers (training jobs of a sweep) overlap their slow part;
3. holding ``<root>/_manifest/.lock``: remove stale staging files of dead writers, ``os.replace`` each
   new file to ``<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet`` (``warehouse.layout``), fsync the
   folders, and append one JSON line to ``_manifest/commits.jsonl`` (fsynced): the switch.

A shard's name carries its content hash, so a commit never writes over a file an entry lists:
replacing a task's rows adds new files, and readers (``warehouse.connect``, which shows only the files
of each task's latest entry) see exactly the old state until the line is appended, and exactly the new
one after. A failure or SIGKILL at any point leaves at most files that no entry lists (orphans) or
staging leftovers; ``Warehouse.gc`` removes them (staging leftovers also at the next commit).

A file shared by several tasks (merged by ``compact``) holds exactly the rows of the tasks that list
it, each task a slice: replacing one of them writes the file again without it (``_unshare``), so a
reader that reads the whole file sees every row once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from layerlake.core.hashing import sha256_bytes
from layerlake.warehouse import journal, schema
from layerlake.warehouse.errors import ManifestError, WarehouseError
from layerlake.warehouse.layout import MANIFEST_DIR, STAGING_DIR, check_name, shard_path
from layerlake.warehouse.manifest import (
    CommitEntry,
    FileEntry,
    ManifestFollower,
    append_batch,
    append_entry,
    entry_problems,
    is_archived,
    latest,
    manifest_path,
)
from layerlake.warehouse.shards import (
    conform,
    copy_verified,
    fsync_dir,
    now_utc,
    parquet_bytes,
    reading_order,
    slices_file,
    write_durable,
)

LOCK_FILE = ".lock"
HOST = socket.gethostname()
STALE_AFTER_S = 24 * 3600  # a staging file of another host (or a reused pid) is stale after this long
ORPHAN_GRACE_S = 15 * 60  # an unlisted shard is removed only this long after it was last listed or written
_DISK_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


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


DOWNLOAD_PREFIX = ".layerlake-download-"  # beside the warehouse: an import by URL's downloaded files
_PREPARING_PREFIX = ".layerlake-preparing-download-"  # a download folder before its owner holds its lock
DOWNLOAD_OWNER = ".owner"  # in a download folder: locked (flock) by its import for as long as it runs


@contextmanager
def download_folder(root: Path) -> Iterator[Path]:
    """An empty folder beside the warehouse at ``root`` (so that its files can be hard-linked in), for an
    import by URL to download into; removed when the block ends, however it ends. Its import holds a
    lock on ``DOWNLOAD_OWNER`` inside it while it lives, which the kernel releases when the process dies
    (a SIGKILL, a power cut): a folder whose lock is free is a leftover, and ``gc`` and the next import
    remove it (``stale_downloads``). The lock is taken before the folder has its findable name, so no
    folder in use is ever taken for a leftover."""
    near = root.parent if root.parent.is_dir() else Path(tempfile.gettempdir())
    for leftover in stale_downloads(near):
        shutil.rmtree(leftover, ignore_errors=True)
    preparing = Path(tempfile.mkdtemp(prefix=_PREPARING_PREFIX, dir=near))
    folder = near / (DOWNLOAD_PREFIX + preparing.name[len(_PREPARING_PREFIX) :])
    fd = os.open(preparing / DOWNLOAD_OWNER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(preparing, folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(preparing, ignore_errors=True)
        os.close(fd)  # the lock goes last: a folder half removed is never someone else's to remove


def stale_downloads(parent: Path) -> list[Path]:
    """Download folders in ``parent`` whose import is gone: their owner's lock is free (or, made before
    downloads were locked, or by an import killed before it took its lock, older than
    ``STALE_AFTER_S``)."""
    found = []
    for folder in sorted(parent.glob(_PREPARING_PREFIX + "*")):  # killed between two calls: very rare
        with contextlib.suppress(FileNotFoundError):
            if (
                folder.is_dir()
                and not folder.is_symlink()
                and time.time() - folder.stat().st_mtime > STALE_AFTER_S
            ):
                found.append(folder)
    for folder in sorted(parent.glob(DOWNLOAD_PREFIX + "*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            fd = os.open(folder / DOWNLOAD_OWNER, os.O_RDWR)
        except FileNotFoundError:
            try:
                if time.time() - folder.stat().st_mtime > STALE_AFTER_S:
                    found.append(folder)
            except FileNotFoundError:
                pass
            continue
        except OSError:
            continue  # not ours to judge (another user's, unreadable)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            found.append(folder)  # nobody holds it: its import is gone
        except BlockingIOError:
            pass  # an import at work
        finally:
            os.close(fd)
    return found


@dataclass(frozen=True)
class Staged:
    """A file written to staging, and where it goes once committed."""

    tmp: Path
    target: Path
    entry: FileEntry


def disk_error(error: OSError, what: str, outcome: str = "nothing was committed") -> WarehouseError:
    """A write that failed for lack of room (full disk, file size limit, quota) as a clear error."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    return WarehouseError(
        f"could not write {what}: {reason}; {outcome}, the warehouse is as it was",
        fix="free disk space (or raise the file size limit / quota), then run the command again",
    )


@contextmanager
def disk_errors(what: str, outcome: str = "nothing was committed") -> Iterator[None]:
    """Turn a write that failed for lack of room into ``disk_error``; other errors pass unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno in _DISK_ERRORS:
            raise disk_error(error, what, outcome) from error
        raise


class Warehouse:
    """The writing side of a warehouse root, and the only one: extraction, tracking, ``import-metrics``,
    ``share import``, ``compact`` and ``migrate`` all write through it. Many processes may write into
    one root: each stages its files on its own, then holds a file lock only to move them into place and
    append its manifest line (``publish``). Maintenance that rewrites what is stored (``compact``,
    ``migrate``) runs as a journaled step holding the lock throughout (``maintenance``)."""

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
        self._lock_owner: int | None = None  # the thread holding the lock through this object
        self._step: journal.Step | None = None  # the maintenance step this object runs, if any

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

    def listed_paths(self) -> set[str]:
        """Every file (relative path) that a latest ok entry lists: what readers may see."""
        return {f.path for e in self._manifest.read().committed.values() for f in e.files}

    def entry(self, task_id: str) -> CommitEntry | None:
        """The task's latest ok entry, or None (without copying ``committed()``: one lookup)."""
        return self._manifest.read().committed.get(task_id)

    def archived_runs(self) -> set[str]:
        """The run ids that have an archived task (``layerlake runs archive``)."""
        return set(self._manifest.read().archived.values())

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

    # -- the lock ---------------------------------------------------------------------------------------

    @contextmanager
    def lock(self, wait: bool = True) -> Iterator[bool]:
        """Hold the writer lock (blocks while another process, or another thread, holds it); re-entrant
        for the thread holding it through this object, so a caller that plans under the lock can publish
        under it. ``wait=False`` does not block: the block gets False, and no lock, when another holds it.
        Re-entrance is per thread: a tracked run's committing thread and its training thread (which records
        a failed snapshot) share one object, and each must wait for the other's lock."""
        me = threading.get_ident()
        if self._lock_depth and self._lock_owner == me:
            self._lock_depth += 1
            try:
                yield True
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.root / MANIFEST_DIR / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        held = False
        try:
            try:  # a flock belongs to its open file: this fd waits for any other, in this process too
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            held = True
            self._lock_depth, self._lock_owner = 1, me
            yield True
        finally:
            if held:
                self._lock_depth, self._lock_owner = 0, None
            os.close(fd)  # closing releases the flock

    # -- staging: files written outside every path a reader looks at ----------------------------------

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
                if table.num_rows:
                    staged.append(
                        self.stage_rows(name, suite, model, task_id, table, f"the rows of task {task_id}")
                    )
        except BaseException:
            discard(staged)
            raise
        return staged

    def stage_rows(
        self, name: str, suite: str, model: str, file_task: str, rows: pa.Table, what: str = ""
    ) -> Staged:
        """``rows`` (already of the contract's file schema) as one shard file of table ``name`` in
        staging, to be named ``<file_task>-<sha256[:16]>.parquet``."""
        data = parquet_bytes(name, rows, file_task)
        digest = sha256_bytes(data)
        rel = shard_path(name, suite, model, file_task, digest)
        staged = Staged(
            self.staging / staging_name(name),
            self.root / rel,
            FileEntry(name, rel, digest, rows.num_rows, len(data)),
        )
        try:
            with disk_errors(what or f"a {name} file of {suite}/{model}"):
                write_durable(staged.tmp, data)
        except BaseException:
            discard([staged])
            raise
        return staged

    def stage_copy(self, src: Path, listed: FileEntry) -> Staged:
        """A copy of the file ``src`` that another warehouse or a shared folder lists as ``listed``, in
        staging (size and sha256 checked while copying), to go to ``listed.path``."""
        staged = Staged(self.staging / staging_name(listed.table), self.root / listed.path, listed)
        with disk_errors(f"a copy of {listed.path}"):
            copy_verified(src, staged.tmp, listed)
        return staged

    def stage_slices(
        self, table: str, suite: str, model: str, members: Sequence[tuple[tuple[str, str], Path, FileEntry]]
    ) -> tuple[Staged, dict[tuple[str, str], FileEntry]]:
        """``slices_file`` written to staging: the staged file, and per member where its rows now are."""
        listed, data, where = slices_file(table, suite, model, members)
        staged = Staged(self.staging / staging_name(table), self.root / listed.path, listed)
        try:
            with disk_errors(f"a merged {table} file of {suite}/{model}", "nothing was changed"):
                write_durable(staged.tmp, data)
        except BaseException:
            discard([staged])
            raise
        return staged, where

    # -- publishing -------------------------------------------------------------------------------------

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
        An entry of None places files an existing entry already lists (a repair), appending nothing.
        Staged files are removed from staging whatever happens."""
        leftovers = [s for _, staged in commits for s in staged]
        try:
            with self.lock(), disk_errors(f"the manifest of {self.root}"):
                self.recover()
                rewritten: list[Staged] = []
                try:
                    unshared = self._unshare([e for e, _ in commits if e is not None], rewritten)
                finally:
                    leftovers += rewritten
                entries = [entry for entry, _ in commits if entry is not None] + unshared
                self._check_archived_whole(entries)
                self.place(leftovers)
                if len(entries) == 1:
                    append_entry(self.manifest, entries[0])
                elif entries:
                    append_batch(self.manifest, entries, now_utc())
        finally:
            discard(leftovers)

    def _check_archived_whole(self, entries: list[CommitEntry]) -> None:
        """Refuse, under the lock, entries that would leave a run partly archived: a task shown beside
        archived ones (a write into an archived run: its new rows would show while the rest stays
        hidden), or an archived task beside shown ones. ``runs archive`` and ``runs restore`` change every
        task of a run in one line, and every other writer checks its run before it starts; this is the
        check no race between those and a commit can pass. Costs a lookup per entry unless a run
        involved is archived."""
        archived = self.archived_runs()
        involved = {e.run_id for e in entries if e.run_id in archived or is_archived(e)}
        if not involved:
            return
        after = {t: e for t, e in self.committed().items() if e.run_id in involved}
        for entry in entries:
            if entry.status == "ok":
                after[entry.task_id] = entry
            elif entry.status == "retired":
                after.pop(entry.task_id, None)
        for run_id in sorted(involved):
            marks = {is_archived(e) for e in after.values() if e.run_id == run_id}
            if len(marks) > 1:
                was = run_id in archived
                raise WarehouseError(
                    f"run {run_id!r} {'is' if was else 'is not'} archived in {self.root}: this commit would "
                    "leave it partly archived (some of its rows shown, others hidden); nothing was committed",
                    fix=f"restore it first (layerlake runs restore {run_id} --root {self.root}), then write "
                    "into it; archive it again afterwards if it should stay hidden"
                    if was
                    else f"commit its tasks shown, or archive the whole run (layerlake runs archive {run_id})",
                )

    def _unshare(self, new_entries: list[CommitEntry], staged: list[Staged]) -> list[CommitEntry]:
        """Tasks being replaced whose rows sit in a file shared with other tasks (compacted): that file
        is written again without them, and the other tasks' entries point to the new one (published in
        the same line), so their old rows never show beside their new ones. Holds the lock; appends
        what it stages to ``staged``."""
        committed = self.committed()
        replaced = {e.task_id for e in new_entries}
        paths = {f.path for t in replaced if t in committed for f in committed[t].files if f.shared}
        moved: dict[str, dict[str, FileEntry]] = {}
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
            first = keep[0][0]
            members = [((e.task_id, f.path), self.root, f) for e, f in keep]
            new, where = self.stage_slices(keep[0][1].table, first.suite, first.model, members)
            staged.append(new)
            for (task, old_path), listing in where.items():
                moved.setdefault(task, {})[old_path] = listing
        return [
            dataclasses.replace(
                committed[task],
                files=tuple(files.get(f.path, f) for f in committed[task].files),
                committed_at=now_utc(),
            )
            for task, files in sorted(moved.items())
        ]

    def place(self, staged: list[Staged]) -> None:
        """Move staged files to their shard paths (fsyncing the folders); no reader sees them until a
        manifest line lists them. Inside a maintenance step, the paths are journaled first."""
        if self._step is not None:
            with disk_errors("the maintenance journal", "nothing was changed"):
                self._step = journal.add_targets(self.root, self._step, [s.entry.path for s in staged])
        folders = set()
        with disk_errors("a file into place"):
            for s in staged:
                s.target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(
                    s.tmp, s.target
                )  # a file already there has this very content (its name is its hash)
                folders.add(s.target.parent)
            for folder in folders:
                fsync_dir(folder)

    def replace_manifest(self, entries: list[CommitEntry]) -> None:
        """Replace the manifest with one line per entry, with one rename (readers see the old manifest or
        the new one). The caller holds the lock and has placed every file the entries list."""
        tmp = journal.manifest_tmp(self.manifest, os.getpid())
        text = "".join(json.dumps(e.to_json(), sort_keys=True, separators=(",", ":")) + "\n" for e in entries)
        tmp.unlink(missing_ok=True)
        try:
            with disk_errors(f"the manifest of {self.root}", "nothing was changed"):
                write_durable(tmp, text.encode())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        before = self.listed_paths()
        after = {f.path for e in latest(entries)[0].values() for f in e.files}
        record_unlisted(self.root, sorted(before - after), time.time())  # first: a crash keeps them longer
        os.replace(tmp, self.manifest)
        fsync_dir(self.manifest.parent)
        self._manifest = ManifestFollower(self.manifest)

    def record_failure(
        self, task_id: str, suite: str, model: str, error: str, meta: dict, *, run_id: str | None = None
    ) -> CommitEntry:
        """Append a failed entry for ``task_id`` (its earlier ok entry, if any, still stands)."""
        run_id = default_run_id(suite, model) if run_id is None else run_id
        entry = self._entry("failed", task_id, suite, model, (), meta, run_id, error=str(error))
        with self.lock(), disk_errors(f"the manifest of {self.root}", "the failure was not recorded"):
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

    # -- maintenance: steps that rewrite what is stored -------------------------------------------------

    @contextmanager
    def maintenance(self, command: str) -> Iterator[None]:
        """Run ``command`` (compact, migrate) as one journaled step holding the writer lock throughout.
        A failure undoes the step at once; a SIGKILL leaves the journal, and the next holder of the lock
        finishes or rolls the step back (``recover``, ``warehouse.journal``)."""
        with self.lock():
            self.recover()
            with disk_errors("the maintenance journal", "nothing was changed"):
                self._step = journal.begin(self.root, command, now_utc())
            try:
                yield
            except BaseException:
                step, self._step = self._step, None
                journal.roll_back(self.root, self.manifest, step, self.listed_paths())
                raise
            self._step = None
            journal.end(self.root)

    def recover(self, say: bool = True) -> journal.Recovery | None:
        """Holding the lock: remove stale staging files, and finish or roll back the maintenance step of
        another process that its journal says was interrupted (with ``say``, a line on stderr says which)."""
        self.clean_staging()
        if self._step is not None:  # this object's own step is in progress
            return None
        step = journal.read(self.root)
        if step is None:
            return None
        recovery = journal.roll_back(self.root, self.manifest, step, self.listed_paths())
        if say:
            print(f"layerlake: {recovery.message}", file=sys.stderr)
        return recovery

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
        """Shard files no latest ok entry lists, both written and no longer listed more than ``grace_s``
        seconds ago: a reader connected before the commit (or the compaction) that stopped listing a
        file may still read it, so the grace counts from then, however old the file is
        (``unlisted_since``)."""
        listed = {self.root / path for path in self.listed_paths()}
        since = self.unlisted_since()
        now = time.time()
        found = []
        for name in schema.TABLES:
            folder = self.root / name
            if not folder.is_dir():
                continue
            for path in folder.rglob("*.parquet"):
                if path in listed:
                    continue
                try:
                    written = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                rel = path.relative_to(self.root).as_posix()
                if now - max(written, since.get(rel, 0.0)) >= grace_s:
                    found.append(path)
        return sorted(found)

    def unlisted_since(self) -> dict[str, float]:
        """File (relative path) -> when (epoch seconds) it last stopped being listed: from the manifest's
        history (a commit that replaced a task's files, a retirement), and from ``_manifest/unlisted.jsonl``
        for the files a rewrite of the manifest (``compact``, ``migrate``) stopped listing, whose history
        that rewrite removed."""
        since = read_unlisted(self.root)
        files: dict[str, set[str]] = {}
        count: dict[str, int] = {}
        for entry in self.entries():
            if entry.status == "failed":
                continue
            old = files.get(entry.task_id, set())
            new = {f.path for f in entry.files} if entry.status == "ok" else set()
            for path in new - old:
                count[path] = count.get(path, 0) + 1
            for path in old - new:
                count[path] -= 1
                if not count[path]:
                    since[path] = max(since.get(path, 0.0), _epoch(entry.committed_at))
            files[entry.task_id] = new
        return since

    def gc(self, dry_run: bool = False, grace_s: float = ORPHAN_GRACE_S) -> list[Path]:
        """Remove stale staging files, orphan shards, and what an import by URL that was killed left
        beside the warehouse (``stale_downloads``); returns the files. Holds the writer lock."""
        with self.lock():
            downloads = stale_downloads(self.root.parent) if self.root.parent.is_dir() else []
            left = [p for folder in downloads for p in sorted(folder.rglob("*")) if not p.is_dir()]
            candidates = self.stale_staging() + self.orphans(grace_s) + left
            if not dry_run:
                recovery = self.recover()  # an interrupted maintenance step's files go at once, no grace
                for folder in downloads:
                    shutil.rmtree(folder, ignore_errors=True)
                for path in candidates:
                    path.unlink(missing_ok=True)
                forget_unlisted(self.root)
                if recovery is not None:
                    candidates += [self.root / r for r in recovery.removed if self.root / r not in candidates]
        return candidates


def recover_interrupted(root: str | Path, say: bool = True) -> journal.Recovery | None:
    """For any command that opens the warehouse at ``root``: if a maintenance step was interrupted
    there, finish or roll it back now when the writer lock is free (a writer at work does it itself),
    or, where the warehouse cannot be written, say in one line which command to run. Costs one stat
    when nothing was interrupted."""
    root = Path(root).expanduser().resolve()
    step = journal.read(root) if journal.journal_path(root).exists() else None
    if step is None:
        return None
    try:
        store = Warehouse(root)
        with store.lock(wait=False) as held:
            if not held:
                return None  # the step is still running, or the writer holding the lock recovers it
            recovery = store.recover(say=False)
    except (OSError, WarehouseError) as error:
        reason = error.message if isinstance(error, WarehouseError) else (error.strerror or str(error))
        recovery = journal.Recovery(step, "not possible", reason=reason)
    if recovery is not None and say:
        print(f"layerlake: {recovery.message}", file=sys.stderr)
    return recovery


UNLISTED_FILE = "unlisted.jsonl"  # under _manifest/: files a manifest rewrite stopped listing, and when


def record_unlisted(root: Path, paths: list[str], at: float) -> None:
    """Append to ``_manifest/unlisted.jsonl`` that ``paths`` stopped being listed at ``at`` (fsynced)."""
    if not paths:
        return
    text = "".join(json.dumps({"path": p, "at": at}) + "\n" for p in paths)
    with (
        disk_errors(f"the record of unlisted files of {root}", "nothing was changed"),
        open(root / MANIFEST_DIR / UNLISTED_FILE, "a") as handle,
    ):
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_unlisted(root: Path) -> dict[str, float]:
    """``_manifest/unlisted.jsonl`` as path -> the latest time it stopped being listed (a torn or
    damaged line is skipped: the file's own age then counts)."""
    since: dict[str, float] = {}
    try:
        lines = (root / MANIFEST_DIR / UNLISTED_FILE).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return since
    for line in lines:
        try:
            item = json.loads(line)
            since[str(item["path"])] = max(since.get(str(item["path"]), 0.0), float(item["at"]))
        except (ValueError, KeyError, TypeError):
            continue
    return since


def forget_unlisted(root: Path) -> None:
    """Keep only the lines of files still on disk (after gc removed some); the caller holds the lock."""
    path = root / MANIFEST_DIR / UNLISTED_FILE
    if not path.exists():
        return
    keep = {p: at for p, at in read_unlisted(root).items() if (root / p).exists()}
    tmp = path.with_name(f".{UNLISTED_FILE}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    write_durable(tmp, "".join(json.dumps({"path": p, "at": at}) + "\n" for p, at in keep.items()).encode())
    os.replace(tmp, path)


def _epoch(stamp: str) -> float:
    """An entry's ``committed_at`` (ISO 8601) in epoch seconds; 0 when unreadable."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return 0.0


def default_run_id(suite: str, model: str) -> str:
    """The run of a suite model whose checkpoints are extracted after the fact: ``<suite>.<model>``."""
    return f"{suite}.{model}"


def discard(staged: list[Staged]) -> None:
    """Remove staging files that were not moved into place."""
    for s in staged:
        s.tmp.unlink(missing_ok=True)
