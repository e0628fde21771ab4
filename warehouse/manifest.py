"""The commit log: one JSON line per committed (or failed) task in ``<root>/_manifest/commits.jsonl``.

The manifest is the single source of truth for what a reader sees: a shard file exists for readers
only once the line listing it has been appended. Lines are only ever appended; the latest ``ok`` entry
of a task id wins. A process killed mid-append leaves a torn last line (no trailing newline): readers
ignore it, and the next writer truncates it away (``repair``) before appending.

An entry::

    {"status": "ok" | "failed" | "retired", "task_id", "suite", "model", "run_id",
     "files": [{"table", "path" (relative to the root, posix), "sha256", "rows", "bytes"}],
     "meta": {config_hash, code_version, probe_id, weights_sha256, revision, step, source, ...},
     "schema_version", "committed_at" (UTC ISO 8601), "error" (failed entries only)}

``retired`` ends a task: no file of it is shown any more (a migration re-keys tasks this way, and
``layerlake runs delete`` removes a run so). An ok entry whose meta holds ``"archived": true`` (``layerlake
runs archive``) stays committed, its files kept and listed, but the views do not show it. A run is
archived whole or not at all: ``Warehouse.publish`` refuses a line that would leave it partly archived.

A batch line (written by ``layerlake share import``) holds several entries at once: see ``append_batch``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from layerlake.core.hashing import sha256_file
from layerlake.warehouse.errors import ManifestError
from layerlake.warehouse.layout import MANIFEST_DIR, is_schema1_shard_path, parse_shard_path

COMMITS_FILE = "commits.jsonl"
ARCHIVED = "archived"  # the meta key of a task whose run is archived (hidden from the views)


class FileEntry(NamedTuple):
    """One shard file a commit lists (a named tuple: a long manifest makes tens of thousands of them)."""

    table: str
    path: str  # relative to the warehouse root, posix separators
    sha256: str  # of the whole file
    rows: int  # the task's rows in the file
    bytes: int  # of the whole file
    first_row: int | None = None  # set when the file is shared by several tasks (compacted): where the
    # task's rows start; the task owns rows [first_row, first_row + rows)

    @property
    def shared(self) -> bool:
        return self.first_row is not None

    def to_json(self) -> dict[str, Any]:
        out = {
            "table": self.table,
            "path": self.path,
            "sha256": self.sha256,
            "rows": self.rows,
            "bytes": self.bytes,
        }
        if self.first_row is not None:
            out["first_row"] = self.first_row
        return out


@dataclass(frozen=True)
class CommitEntry:
    """One line of the manifest."""

    status: str  # ok | failed | retired
    task_id: str
    suite: str
    model: str
    files: tuple[FileEntry, ...]
    meta: dict[str, Any]
    schema_version: int
    committed_at: str
    error: str | None = None
    run_id: str = ""  # the run every row of the task belongs to ("" only in schema-1 entries)
    line: int = field(default=0, compare=False)  # 1-based line number in the manifest (0: not read from one)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "task_id": self.task_id,
            "suite": self.suite,
            "model": self.model,
            "run_id": self.run_id,
            "files": [f.to_json() for f in self.files],
            "meta": self.meta,
            "schema_version": self.schema_version,
            "committed_at": self.committed_at,
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], line: int = 0) -> CommitEntry:
        """The entry ``data`` (a manifest line, or a task of a shared dataset's ``manifest.json``), every
        field of the type (and range) a writer writes: ``ValueError`` / ``KeyError`` naming the field
        otherwise, so that no value of another type reaches a reader (a float size was read as a
        size, written into the next export, and broke every query of it by URL)."""
        if type(data) is not dict:
            raise ValueError(f"an entry is {describe_value(data)}, not a JSON object")
        try:
            status, task, suite, model, raw_files = (
                data["status"], data["task_id"], data["suite"], data["model"], data["files"]
            )  # fmt: skip
            version, committed_at = data["schema_version"], data["committed_at"]
        except KeyError as missing:
            raise ValueError(f"task {data.get('task_id')}: no {missing.args[0]!r} field") from None
        meta, error, run_id = data.get("meta"), data.get("error"), data.get("run_id") or ""
        if type(task) is not str:
            raise ValueError(f"task_id {describe_value(task)} is not text")
        if type(raw_files) is not list:
            raise ValueError(f"task {task}: files {describe_value(raw_files)} is not a list")
        files = tuple([_file_entry(f, task) for f in raw_files])
        if meta is None:
            meta = {}
        if not (
            type(status) is str and type(suite) is str and type(model) is str and type(committed_at) is str
            and type(meta) is dict and type(version) is int and version >= 1 and type(run_id) is str
            and (error is None or type(error) is str)
        ):  # fmt: skip
            _entry_problem(data)
        fields = {
            "status": status, "task_id": task, "suite": suite, "model": model, "files": files, "meta": meta,
            "schema_version": version, "committed_at": committed_at, "error": error, "run_id": run_id,
            "line": line,
        }  # fmt: skip
        # Filled in one step rather than through the frozen __init__'s eleven setattr calls: connect reads
        # every entry of the manifest, tens of thousands on a long-tracked warehouse.
        entry = object.__new__(cls)
        entry.__dict__.update(fields)
        return entry


MAX_COUNT = (
    1 << 63
) - 1  # the largest size or row number a file entry may list (int64, as Parquet and DuckDB)


def _entry_problem(data: dict[str, Any]) -> None:
    """``ValueError`` naming the field of the entry ``data`` that is not of its type."""
    where = f"task {data['task_id']}"
    for key in ("status", "suite", "model", "committed_at"):
        if type(data[key]) is not str:
            raise ValueError(f"{where}: {key} {describe_value(data[key])} is not text")
    for key, value in (("run_id", data.get("run_id") or ""), ("error", data.get("error") or "")):
        if type(value) is not str:
            raise ValueError(f"{where}: {key} {describe_value(value)} is not text")
    if type(data.get("meta") or {}) is not dict:
        raise ValueError(f"{where}: meta {describe_value(data['meta'])} is not a JSON object")
    raise ValueError(
        f"{where}: schema_version {describe_value(data['schema_version'])} is not a whole number >= 1"
    )


def _file_entry(f: Any, task: str) -> FileEntry:
    """One file of an entry's ``files``, its fields checked: text, and sizes and rows that are whole
    numbers in 0..``MAX_COUNT`` (not floats, not booleans)."""
    if type(f) is not dict:
        raise ValueError(f"task {task}: a file is {describe_value(f)}, not a JSON object")
    try:
        table, path, sha256, rows, size = f["table"], f["path"], f["sha256"], f["rows"], f["bytes"]
    except KeyError as missing:
        raise ValueError(f"task {task}: a file has no {missing.args[0]!r} field") from None
    first_row = f.get("first_row")
    if (
        type(table) is str and type(path) is str and type(sha256) is str and type(rows) is int
        and type(size) is int and 0 <= rows <= MAX_COUNT and 0 <= size <= MAX_COUNT
        and (first_row is None or (type(first_row) is int and 0 <= first_row <= MAX_COUNT))
    ):  # fmt: skip
        return FileEntry(table, path, sha256, rows, size, first_row)
    if type(path) is not str:  # which field is wrong (the common case above costs one test per field)
        raise ValueError(f"task {task}: a file's path {describe_value(path)} is not text")
    where = f"task {task}, file {path}"
    for name, value in (("table", table), ("sha256", sha256)):
        if type(value) is not str:
            raise ValueError(f"{where}: {name} {describe_value(value)} is not text")
    for name, value in (("rows", rows), ("bytes", size), ("first_row", first_row)):
        if value is not None or name != "first_row":
            raise_unless_count(name, value, where)
    raise AssertionError("unreachable")


def raise_unless_count(name: str, value: Any, where: str) -> None:
    """``ValueError`` unless ``value`` is a whole number in 0..``MAX_COUNT`` (a bool or a float is not)."""
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{where}: {name} {describe_value(value)} is not a whole number >= 0")


def describe_value(value: Any) -> str:
    """A value as an error names it: its JSON (cut), and its type (``9502.0 (a float)``)."""
    if value is None:
        return "null"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    kind = {bool: "true or false", float: "a float", str: "text", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )
    return f"{text[:40]}{'...' if len(text) > 40 else ''} ({kind})"


def is_archived(entry: CommitEntry) -> bool:
    """Whether the task belongs to an archived run: kept and listed, but not shown by the views."""
    return entry.meta.get(ARCHIVED) is True


def manifest_path(root: Path) -> Path:
    return root / MANIFEST_DIR / COMMITS_FILE


def file_problem(
    root: Path,
    listed: FileEntry,
    verify_sha256: bool = False,
    schema_version: int | None = None,
    links: dict[tuple[str, str], bool] | None = None,
) -> str | None:
    """What is wrong with the file ``listed`` names under ``root``: a path that breaks the shard rule or
    leaves the root, a symbolic link on the way, missing, wrong size, or (with ``verify_sha256``) wrong
    sha256; None when it matches. The one file check of the warehouse and of shared folders. ``links``
    keeps, for one pass over many files, whether each folder on the way is a link (a few folders hold
    thousands of files: one ``lstat`` per file instead of one per file and folder)."""
    name = parse_shard_path(listed.path)
    legacy = schema_version is not None and schema_version < 2 and is_schema1_shard_path(listed.path)
    if not legacy and (name is None or name.table != listed.table):
        return "is not a shard path of this layout (<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet)"
    base = str(root)
    parts = listed.path.split("/")  # the listed path is relative, in POSIX form (the shard rule)
    if any(_is_link(base, "/".join(parts[:depth]), links) for depth in range(len(parts))):
        return LINK_PROBLEM
    path = os.path.join(base, listed.path)
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if stat.S_ISLNK(status.st_mode):
        return LINK_PROBLEM
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    if status.st_size != listed.bytes:
        return f"{status.st_size} bytes, the manifest lists {listed.bytes}"
    if verify_sha256 and sha256_file(Path(path)) != listed.sha256:
        return "sha256 differs from the manifest"
    return None


LINK_PROBLEM = "is reached through a symbolic link (links are refused: they can point anywhere)"


def _is_link(base: str, folder: str, links: dict[tuple[str, str], bool] | None) -> bool:
    """Whether ``folder`` (relative to ``base``; "" is ``base`` itself) is a symbolic link."""
    key = (base, folder)
    if links is not None and key in links:
        return links[key]
    found = os.path.islink(os.path.join(base, folder) if folder else base)
    if links is not None:
        links[key] = found
    return found


@dataclass
class FileCheckPass:
    """What one pass over many entries has already learnt: the answer per listed file (files that many
    tasks share, a compacted file, are checked once) and whether each folder on the way is a link."""

    files: dict[tuple[str, int, str], str | None] = field(default_factory=dict)
    links: dict[tuple[str, str], bool] = field(default_factory=dict)


def entry_problems(
    root: Path, entry: CommitEntry, verify_sha256: bool = False, checks: FileCheckPass | None = None
) -> list[tuple[FileEntry, str]]:
    """``(file, problem)`` for every file of ``entry`` (under ``root``) that does not match its listing.
    ``checks``, when given, is reused across one pass over many entries."""
    found = []
    for f in entry.files:
        key = (f.path, f.bytes, f.sha256)
        if checks is not None and key in checks.files:
            problem = checks.files[key]
        else:
            links = None if checks is None else checks.links
            problem = file_problem(root, f, verify_sha256, entry.schema_version, links)
            if checks is not None:
                checks.files[key] = problem
        if problem is not None:
            found.append((f, problem))
    return found


def read_task_rows(root: Path, listed: FileEntry, columns: list[str] | None = None) -> Any:
    """The rows a task owns in the file ``listed`` (all of them, unless the file is shared)."""
    import pyarrow.parquet as pq

    table = pq.read_table(root / listed.path, columns=columns)
    return table if listed.first_row is None else table.slice(listed.first_row, listed.rows)


def read_entries(path: Path) -> list[CommitEntry]:
    """Every complete entry of the manifest at ``path``, in order; a torn last line is ignored.

    A missing file is an empty manifest. A complete line that is not a valid entry is corruption
    (not a crash artefact) and raises ``ManifestError``.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse_lines(path, data[: data.rfind(b"\n") + 1])  # bytes after the last newline: a torn append


def parse_lines(path: Path, data: bytes, first_line: int = 1) -> list[CommitEntry]:
    """The entries of the complete lines ``data`` of the manifest at ``path``, numbered from ``first_line``."""
    entries = []
    for number, raw in enumerate(data.split(b"\n")[:-1], start=first_line):
        if not raw.strip():
            continue
        try:
            entries += _entries_of_line(json.loads(raw), number)
        except (ValueError, KeyError, TypeError) as error:
            raise ManifestError(
                f"manifest {path} line {number} is not a valid commit entry ({error})",
                fix="correct the value it names (as a writer writes it), restore the line from a backup, or delete it "
                "to forget that commit (its files become orphans)",
            ) from error
    return entries


class ManifestFollower:
    """The manifest at ``path`` kept read: each ``read()`` parses only the lines appended since the last
    one, so a writer that commits n times reads the manifest once, not n times (n^2 / 2 lines). The
    file is read again from the start whenever it is not the same file grown by appends: another inode
    (a rewrite that replaced it), a smaller size, or changed bytes where the last read ended."""

    SAMPLE = 64  # bytes before the read offset compared on each read

    def __init__(self, path: Path) -> None:
        self.path = path
        self._start()

    def _start(self) -> None:
        self.stamp: tuple[int, int, int] | None = None  # (inode, size, mtime) at the last read
        self.offset = 0  # bytes consumed: complete lines only
        self.lines = 0  # lines consumed
        self.sample = b""  # the SAMPLE bytes before offset
        self.entries: list[CommitEntry] = []
        self.committed: dict[str, CommitEntry] = {}
        self.failed: dict[str, CommitEntry] = {}
        self.archived: dict[str, str] = {}  # task id -> run id of every committed archived task

    def read(self) -> ManifestFollower:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._start()
            return self
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp == self.stamp:
            return self
        if self.stamp is None or stat.st_ino != self.stamp[0] or stat.st_size < self.offset:
            self._start()
        with open(self.path, "rb") as handle:
            handle.seek(self.offset - len(self.sample))
            if handle.read(len(self.sample)) != self.sample:  # rewritten in place
                self._start()
                handle.seek(0)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn append
        added = parse_lines(self.path, data[:end], self.lines + 1)
        self.entries.extend(added)
        apply_latest(self.committed, self.failed, added)
        for entry in added:  # kept as it goes: every commit asks whether its run is archived
            if entry.status == "ok" and is_archived(entry):
                self.archived[entry.task_id] = entry.run_id
            elif entry.status != "failed":
                self.archived.pop(entry.task_id, None)
        self.lines += data.count(b"\n", 0, end)
        self.offset += end
        self.sample = (self.sample + data[:end])[-self.SAMPLE :]
        self.stamp = stamp
        return self


def latest(entries: list[CommitEntry]) -> tuple[dict[str, CommitEntry], dict[str, CommitEntry]]:
    """``(committed, failed)``: per task id the latest ok entry, and the latest failure with no later ok.
    A ``retired`` entry removes the task from both."""
    committed: dict[str, CommitEntry] = {}
    failed: dict[str, CommitEntry] = {}
    apply_latest(committed, failed, entries)
    return committed, failed


def apply_latest(
    committed: dict[str, CommitEntry], failed: dict[str, CommitEntry], entries: list[CommitEntry]
) -> None:
    """Update ``committed`` and ``failed`` (as ``latest`` builds them) with the later ``entries``."""
    for entry in entries:
        if entry.status == "ok":
            committed[entry.task_id] = entry
            failed.pop(entry.task_id, None)
        elif entry.status == "retired":
            committed.pop(entry.task_id, None)
            failed.pop(entry.task_id, None)
        else:
            failed[entry.task_id] = entry


def repair(path: Path) -> int:
    """Truncate a torn last line (bytes after the last newline); returns how many bytes were cut."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        # Read back from the end in blocks until a newline is found: the torn tail is short.
        pos, keep = size, 0
        while pos > 0:
            start = max(0, pos - 65536)
            handle.seek(start)
            block = handle.read(pos - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            pos = start
        if keep == size:
            return 0
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return size - keep


def append_entry(path: Path, entry: CommitEntry) -> None:
    """Append ``entry`` as one line and fsync; the caller holds the writer lock."""
    _append_line(path, entry.to_json())


def _append_line(path: Path, payload: dict[str, Any]) -> None:
    line = (json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n").encode()
    repair(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


# --- batch lines (added for warehouse.share) -----------------------------------------------------------
# An import publishes many tasks at once. Several lines could tear between them and show half an
# import, so the batch is ONE line ``{"status": "batch", "entries": [entry, ...], "committed_at"}``:
# a torn batch line hides the whole import, a complete one shows all of it. Readers expand it in place.
BATCH_STATUS = "batch"


def _entries_of_line(data: dict[str, Any], line: int) -> list[CommitEntry]:
    if type(data) is dict and data.get("status") == BATCH_STATUS:
        return [CommitEntry.from_json(item, line=line) for item in data["entries"]]
    return [CommitEntry.from_json(data, line=line)]


def append_batch(path: Path, entries: list[CommitEntry], committed_at: str) -> None:
    """Append ``entries`` as one batch line and fsync (all visible or none); the caller holds the lock."""
    payload = {
        "status": BATCH_STATUS,
        "entries": [e.to_json() for e in entries],
        "committed_at": committed_at,
    }
    _append_line(path, payload)
