"""``layerlake share import``: merge a verified shared dataset into a local warehouse, all or nothing.

Order of work, so that a refused import leaves the warehouse byte for byte as it was:

1. ``verify_folder`` (checksums, schema version, columns ...) reads only the shared folder;
2. ``plan_import`` reads only the local warehouse: each shared file is *present* (the same file, or the
   same rows under the same keys), *new*, or a *conflict* (a row key of ``warehouse/schema.py`` that
   the warehouse already holds with other values): any conflict refuses the whole import;
3. under the writer lock the plan is made again (a commit may have landed meanwhile), the new files
   are copied into ``_staging`` (sha256 checked while copying), renamed into place, and ONE manifest
   line (``warehouse.manifest.append_batch``) lists every imported task: a crash before that line
   leaves only orphan files no reader sees (``Warehouse.gc`` removes them).

Imported tasks keep their task ids (so ``layerlake extract`` skips checkpoints already imported) and
their meta, plus where they came from: ``imported_from``, ``import_dataset_id``, ``imported_at``,
``original_task_id``, ``original_committed_at``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from layerlake.core.signals import terminate_as_interrupt
from layerlake.warehouse import schema
from layerlake.warehouse.errors import ManifestError, ShareError
from layerlake.warehouse.manifest import (
    CommitEntry,
    FileEntry,
    entry_problems,
    is_archived,
    latest,
    manifest_path,
    read_entries,
)
from layerlake.warehouse.shards import now_utc, slices_file, write_durable
from layerlake.warehouse.share.remote import as_source, download, is_url
from layerlake.warehouse.share.verify import SharedDataset, verify_folder
from layerlake.warehouse.views import default_root
from layerlake.warehouse.writer import Warehouse, discard, download_folder

_SHOWN = 8  # conflicting rows named in an error; the rest are counted


@dataclass
class ImportReport:
    folder: Path
    root: Path
    dataset_id: str
    imported: list[str] = field(default_factory=list)  # task ids committed by this import
    present: list[str] = field(default_factory=list)  # task ids the warehouse already had
    files: int = 0  # files copied
    rows: int = 0
    bytes: int = 0
    repaired: list[str] = field(default_factory=list)  # local files restored from the shared copy


@dataclass
class Plan:
    """What an import would do: entries to commit with the files to copy, and tasks already present."""

    new: list[tuple[CommitEntry, tuple[FileEntry, ...]]] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    repair: list[FileEntry] = field(default_factory=list)  # local files of present tasks, missing or damaged


def import_dataset(folder: Any, root: str | Path | None = None, dry_run: bool = False) -> ImportReport:
    """Verify the shared dataset at ``folder`` and merge it into the warehouse at ``root``. ``folder`` may be
    a URL (``warehouse.share.remote``): the files the warehouse lacks are downloaded (checked) into a
    temporary folder beside it, which is then imported as any folder, and removed."""
    root = default_root() if root is None else Path(root).expanduser().resolve()
    if is_url(folder):
        return import_url(folder, root, dry_run)
    return import_verified(verify_folder(folder, checksums=True), root, dry_run)


def import_verified(dataset: SharedDataset, root: Path, dry_run: bool = False) -> ImportReport:
    """Plan, audit and publish a verified shared dataset into the warehouse at ``root`` (all or nothing)."""
    with tempfile.TemporaryDirectory(prefix="layerlake-import-") as scratch:
        plan = plan_import(dataset, root)  # refuses conflicts before anything is created
        if plan.new:  # the rows, joined with the warehouse's own, pass every audit
            audit_combined(dataset, root, resolve(dataset, plan, Path(scratch)))
        if not dry_run and (plan.new or plan.repair):
            warehouse = Warehouse(root)
            warehouse.check_version()
            with warehouse.lock():
                plan = plan_import(dataset, root)
                if plan.new or plan.repair:
                    publish(warehouse, dataset, plan, resolve(dataset, plan, Path(scratch)))
    copied = unique_files([(e, files) for e, files in plan.new])
    return ImportReport(dataset.folder, root, dataset.dataset_id, [e.task_id for e, _ in plan.new], plan.present,
                        len(copied), sum(f.rows for f in copied), sum(f.bytes for f in copied),
                        [f.path for f in plan.repair])  # fmt: skip


def unique_files(new: list[tuple[CommitEntry, tuple[FileEntry, ...]]]) -> list[FileEntry]:
    """The files ``new`` lists, each once (a file shared by several tasks with the rows of all)."""
    found: dict[str, FileEntry] = {}
    for _, files in new:
        for f in files:
            had = found.get(f.path)
            found[f.path] = f._replace(rows=f.rows + (had.rows if had else 0), first_row=None)
    return list(found.values())


@dataclass
class Resolved:
    """Where the rows of each task an import adds come from: per new entry (as it will be committed),
    its new files as ``(source file, listing)``."""

    new: list[tuple[CommitEntry, list[tuple[Path, FileEntry]]]]


def resolve(dataset: SharedDataset, plan: Plan, scratch: Path) -> Resolved:
    """Where each new file of ``plan`` comes from. A shared file (format 2) whose every slice is new is
    taken whole; one of which only some slices are new (its other tasks are present already) gets the
    new slices written into a file of their own in ``scratch``: the warehouse must never list a file
    holding rows of a task it does not list (readers read whole files)."""
    totals: dict[str, int] = {}
    for entry in dataset.entries:
        for f in entry.files:
            totals[f.path] = totals.get(f.path, 0) + f.rows
    wanted: dict[str, list[tuple[CommitEntry, FileEntry]]] = {}
    for entry, files in plan.new:
        for f in files:
            wanted.setdefault(f.path, []).append((entry, f))
    source: dict[tuple[str, str], tuple[Path, FileEntry]] = {}
    for path, members in wanted.items():
        if not members[0][1].shared or sum(f.rows for _, f in members) == totals[path]:
            source.update({(e.task_id, path): (dataset.folder / path, f) for e, f in members})
            continue
        members = sorted(members, key=lambda m: m[1].first_row or 0)
        first = members[0][0]
        listed, data, where = slices_file(
            members[0][1].table,
            first.suite,
            first.model,
            [((e.task_id, f.path), dataset.folder, f) for e, f in members],
        )
        if not (scratch / listed.path).exists():
            (scratch / listed.path).parent.mkdir(parents=True, exist_ok=True)
            write_durable(scratch / listed.path, data)
        source.update({key: (scratch / listed.path, f) for key, f in where.items()})
    out = []
    for entry, files in plan.new:
        news = {f.path for f in files}
        sources = [source[(entry.task_id, f.path)] for f in files]
        renamed = {f.path: listed for f, (_, listed) in zip(files, sources, strict=True)}
        entry = dataclasses.replace(
            entry, files=tuple(renamed.get(f.path, f) if f.path in news else f for f in entry.files)
        )
        out.append((entry, sources))
    return Resolved(out)


# Audits whose rows are findings about the data, not faults of it (Pythia serves duplicated revisions).
WARNING_AUDITS = ("duplicate_weights",)


def audit_combined(dataset: SharedDataset, root: Path, resolved: Resolved) -> None:
    """Run ``layerlake check``'s audits over the warehouse's rows plus the rows the import would add;
    any offending row refuses the import, naming it. Nothing is written."""
    from layerlake.warehouse.audits import load_audits, run_audit
    from layerlake.warehouse.views import Shard, committed_shards, open_views

    shards, failures = committed_shards(root) if manifest_path(root).is_file() else ([], [])
    new = [Shard(f.table, path, path.parent, entry, f) for entry, files in resolved.new for path, f in files]
    con = open_views(shards + new, failures)
    try:
        found = []
        for audit in load_audits():
            if audit.name in WARNING_AUDITS:
                continue
            rows = run_audit(con, audit)
            if rows.num_rows:
                shown = "; ".join(
                    ", ".join(f"{k}={v}" for k, v in r.items()) for r in rows.slice(0, 3).to_pylist()
                )
                found.append(f"{audit.name} ({rows.num_rows} rows): {shown}")
    finally:
        con.close()
    if found:
        raise ShareError(
            f"shared dataset {dataset.folder} would leave the warehouse at {root} failing its audits; nothing was "
            "imported:\n" + "\n".join(f"  - {line}" for line in found),
            fix="compare both with `layerlake share attach` and `layerlake check`; ask its author to export it again",
        )


def plan_import(dataset: SharedDataset, root: Path) -> Plan:
    """Classify every shared task against the warehouse at ``root`` (read only); raise on conflicts."""
    committed = latest(read_entries(manifest_path(root)))[0] if root.is_dir() else {}
    index = LocalRows(root, committed)
    repeated = repeated_keys(dataset)
    if repeated:
        raise _conflict_error(dataset, root, repeated, "repeats keys within itself (duplicate_keys)")
    plan, conflicts = Plan(), []
    for entry in dataset.entries:
        local = committed.get(entry.task_id)
        verdicts = {f.path: classify(dataset.folder, entry, f, local, index) for f in entry.files}
        problems = [line for v in verdicts.values() if isinstance(v, list) for line in v]
        new = tuple(f for f in entry.files if verdicts[f.path] == "new")
        if not problems and new and local is None and len(new) < len(entry.files):
            problems.append(f"task {entry.task_id}: some of its rows are already present under another task")
        if problems:
            conflicts += problems
        elif not new:
            plan.present.append(entry.task_id)
            if local is not None:  # the export holds these very files: it can restore damaged local copies
                shared = {x.sha256 for x in entry.files}
                plan.repair += [f for f, _ in entry_problems(root, local) if f.sha256 in shared]
        else:
            plan.new.append((imported_entry(dataset, entry, local, new), new))
    if conflicts:
        raise _conflict_error(dataset, root, conflicts)
    refuse_archived_runs(dataset, root, committed, plan)
    return plan


def refuse_archived_runs(
    dataset: SharedDataset, root: Path, committed: dict[str, CommitEntry], plan: Plan
) -> None:
    """Refuse the whole import where it would write into a run archived here (``warehouse.runs.
    refuse_archived``, the rule of every writer: new tasks of it would show, and a task it has gaining
    files would list a merged file whole, with other runs' rows), or add hidden tasks to a run shown here
    (archived in the dataset). Tasks the warehouse has already (present) are no write: they pass."""
    here = {e.run_id for e in committed.values() if is_archived(e)}
    shown = {e.run_id for e in committed.values() if not is_archived(e)}
    into = sorted({e.run_id for e, _ in plan.new if e.run_id in here})
    if into:
        names = " ".join(into)
        raise ShareError(
            f"shared dataset {dataset.folder} holds new rows of run(s) {', '.join(into)}, archived in the "
            f"warehouse at {root}: a write into an archived run is refused (its new rows would show while the "
            "rest of it stays hidden); nothing was imported",
            fix=f"restore it first (layerlake runs restore {names} --root {root}), import again, then archive "
            f"it again if it should stay hidden (layerlake runs archive {names}); or import an export without "
            "its rows",
        )
    hiding = sorted({e.run_id for e, _ in plan.new if is_archived(e) and e.run_id in shown})
    if hiding:
        raise ShareError(
            f"shared dataset {dataset.folder} holds run(s) {', '.join(hiding)} archived, which the warehouse "
            f"at {root} shows: importing their new tasks hidden would leave them partly archived; nothing was "
            "imported",
            fix="import an export made after `layerlake runs restore` in its warehouse, or one without their rows",
        )


def classify(
    folder: Path, entry: CommitEntry, f: FileEntry, local: CommitEntry | None, index: LocalRows
) -> Any:
    """``"present"``, ``"new"``, or a list of lines naming the conflicting rows."""
    same_path = next((x for x in local.files if x.path == f.path), None) if local else None
    if same_path is not None and same_path.sha256 == f.sha256:
        return "present"
    same, differ = index.compare(entry.suite, entry.model, folder, f)
    if differ:
        return differ
    if same_path is not None and len(same) != f.rows:
        return [f"{f.path}: the warehouse has this file with other rows (task {entry.task_id} differs)"]
    if len(same) == f.rows:
        return "present"
    if same:
        shown = "; ".join(same[:3])
        return [
            f"{f.path}: {len(same)} of its {f.rows} rows are already present ({shown}); importing would repeat them"
        ]
    return "new"


class LocalRows:
    """The keys (``warehouse/schema.py``) of the warehouse's committed rows, per table, across every
    suite and model: a key names one row in the whole warehouse, whatever folder holds it."""

    def __init__(self, root: Path, committed: dict[str, CommitEntry]) -> None:
        self.root, self.committed = root, committed
        self._keys: dict[str, dict[tuple, tuple[Path, int, str]]] = {}

    def keys(self, table: str) -> dict[tuple, tuple[Path, int, str]]:
        """key values -> (file, row index in it, task id) for every committed row of ``table``."""
        if table not in self._keys:
            found: dict[tuple, tuple[Path, int, str]] = {}
            files: dict[Path, list[tuple]] = {}  # a file several tasks share is read once
            for entry in self.committed.values():
                for f in entry.files:
                    if f.table == table:
                        path = self.root / f.path
                        if path not in files:
                            files[path] = read_keys(table, path)
                        for i, key in owned(files[path], f):
                            found[key] = (path, i, entry.task_id)
            self._keys[table] = found
        return self._keys[table]

    def compare(self, suite: str, model: str, folder: Path, f: FileEntry) -> tuple[list[str], list[str]]:
        """(rows of the shared file ``f`` under ``folder`` the warehouse holds identically, lines naming
        rows it holds differently: other values, or the same key under another suite or model)."""
        table, path = f.table, folder / f.path
        local = self.keys(table)
        overlap = [(i, key, local[key]) for i, key in owned(read_keys(table, path), f) if key in local]
        if not overlap:
            return [], []
        theirs = pq.read_table(path).take([i for i, _, _ in overlap]).to_pylist()
        files: dict[Path, Any] = {}  # each local file read once, whole, only when rows overlap
        same, differ = [], []
        for row, (_, key, (local_path, j, task)) in zip(theirs, overlap, strict=True):
            if local_path not in files:
                files[local_path] = pq.read_table(local_path)
            mine = files[local_path].slice(j, 1).to_pylist()[0]
            columns = [c for c in row if _canonical(row[c]) != _canonical(mine.get(c))]
            label = describe_key(table, suite, model, key)
            if columns:
                differ.append(f"{label}: differs in {', '.join(columns)} (local task {task})")
            else:
                same.append(f"{label} (local task {task})")
        return same, differ


def repeated_keys(dataset: SharedDataset) -> list[str]:
    """Lines naming every key (``warehouse/schema.py``) that the shared dataset itself holds more than
    once: in one file, or in two tasks' files (of any suite and model)."""
    seen: dict[tuple[str, tuple], str] = {}
    found = []
    keys: dict[str, list[tuple]] = {}  # a file several tasks share is read once
    for entry in dataset.entries:
        for f in entry.files:
            if f.path not in keys:
                keys[f.path] = read_keys(f.table, dataset.folder / f.path)
            for _, key in owned(keys[f.path], f):
                where = f"{f.path} (task {entry.task_id})"
                if (f.table, key) in seen:
                    label = describe_key(f.table, entry.suite, entry.model, key)
                    found.append(f"{label}: held twice, in {seen[f.table, key]} and {where}")
                else:
                    seen[f.table, key] = where
    return found


def owned(keys: list[tuple], listed: FileEntry) -> list[tuple[int, tuple]]:
    """``(row index in the file, key)`` of the rows the listing owns (a slice of a shared file)."""
    start = listed.first_row or 0
    end = start + listed.rows if listed.shared else len(keys)
    return [(i, keys[i]) for i in range(start, end)]


def read_keys(table: str, path: Path) -> list[tuple]:
    """The key tuples (key columns of ``warehouse/schema.py`` minus suite and model) of one shard."""
    columns = key_columns(table)
    data = pq.read_table(path, columns=list(columns)).to_pydict()
    return list(zip(*(data[c] for c in columns), strict=True))


def key_columns(table: str) -> tuple[str, ...]:
    return tuple(c for c in schema.table(table).key if c not in ("suite", "model"))


def describe_key(table: str, suite: str, model: str, key: tuple) -> str:
    """``sketches suite=s model=m step=10 ... head=NULL``: a row named by its key."""
    parts = [f"{c}={_short(v)}" for c, v in zip(key_columns(table), key, strict=True)]
    return " ".join([table, f"suite={suite}", f"model={model}", *parts])


def _short(value: Any) -> str:
    if value is None:
        return "NULL"
    text = str(value)
    return text[:12] if len(text) == 64 else text  # a sha256 is recognisable by its first 12 hex digits


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)  # NaN == NaN here, unlike Python floats


def imported_entry(
    dataset: SharedDataset, entry: CommitEntry, local: CommitEntry | None, new: tuple[FileEntry, ...]
) -> CommitEntry:
    """The manifest entry an imported task gets (a task the warehouse has gains the new files only)."""
    provenance = {
        "imported_from": dataset.source or dataset.folder.name,  # a URL, or the folder's name only: no path
        # of this machine is stored
        "import_dataset_id": dataset.dataset_id,
        "imported_at": now_utc(),
        "original_task_id": entry.task_id,
        "original_committed_at": entry.meta.get("original_committed_at", entry.committed_at),
    }
    if local is None:
        return CommitEntry("ok", entry.task_id, entry.suite, entry.model, entry.files, {**entry.meta, **provenance},
                           entry.schema_version, now_utc(), run_id=entry.run_id)  # fmt: skip
    merged = {**local.meta, "merged_import": {**provenance, "tables": sorted(f.table for f in new)}}
    return CommitEntry("ok", local.task_id, local.suite, local.model, local.files + new, merged,
                       local.schema_version, now_utc(), run_id=local.run_id)  # fmt: skip


def publish(warehouse: Warehouse, dataset: SharedDataset, plan: Plan, resolved: Resolved) -> None:
    """Copy the new files to staging, each once (each checked against its listed sha256 while copying),
    then move them into place and append one batch line listing every new entry (``Warehouse.publish``)."""
    commits: list = []
    seen: set[str] = set()
    try:
        for entry, files in resolved.new:
            staged = []
            for source, f in files:
                if f.path not in seen:
                    seen.add(f.path)
                    staged.append(warehouse.stage_copy(source, f))
            commits.append((entry, staged))
        repairs = [warehouse.stage_copy(dataset.folder / f.path, f) for f in plan.repair]
        if repairs:  # their entries already list them: only the files come back, under the lock
            commits.append((None, repairs))
    except ManifestError as error:
        discard([s for _, staged in commits for s in staged])
        raise ShareError(
            f"a file of {dataset.folder} changed while it was imported ({error.message}); nothing was imported",
            fix="wait until the folder is completely copied, then import again",
        ) from error
    except BaseException:
        discard([s for _, staged in commits for s in staged])
        raise
    warehouse.publish(commits)


def _conflict_error(dataset: SharedDataset, root: Path, conflicts: list[str], what: str = "") -> ShareError:
    lines = [f"  - {c}" for c in conflicts[:_SHOWN]]
    if len(conflicts) > _SHOWN:
        lines.append(f"  ... and {len(conflicts) - _SHOWN} more")
    what = what or (
        f"conflicts with the warehouse at {root}: rows with the same key hold other values, or sit under "
        "another suite or model (or would be repeated)"
    )
    return ShareError(
        f"shared dataset {dataset.folder} {what}; nothing was imported:\n" + "\n".join(lines),
        fix="compare the two `manifest` views' provenance (code_version, config_hash, weights_sha256); query both "
        "side by side with `layerlake share attach`, or import into a separate warehouse with --root",
    )


def import_url(source: Any, root: Path, dry_run: bool = False) -> Any:
    """``share import URL``: ``download`` into a temporary folder beside the warehouse (so files it holds
    already are linked, not copied), verify that folder as any shared folder, import it, remove it. A
    failure anywhere leaves the warehouse as it was; errors name the URL, not the temporary folder.
    SIGTERM unwinds as Ctrl-C does (``core.signals``), so the folder goes then too; one a SIGKILL left
    is removed by the next import and by ``gc`` (``warehouse.writer.download_folder``)."""
    source = as_source(source)
    with terminate_as_interrupt(), download_folder(root) as folder:
        download(source, root if root.is_dir() else None, folder)
        try:
            dataset = verify_folder(folder, checksums=True)
            return import_verified(replace(dataset, source=source.url), root, dry_run)
        except ShareError as error:
            raise type(error)(error.message.replace(str(folder), source.url), fix=error.fix) from error
