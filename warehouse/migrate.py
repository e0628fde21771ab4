"""``layerlake migrate``: rewrite a warehouse written by an older layerlake into the current schema,
once, keeping every row.

From schema 1 to 2 each committed file gains the identity columns (``suite``, ``model``, ``run_id``) and
a content-named path; task ids are recomputed from content (they hashed the checkpoint's folder path,
so a moved data folder had stored every checkpoint twice: such duplicates collapse into one task,
the most recently committed); stored locations lose the machine's paths; every run gets its row in
``runs``. It all lands in ONE manifest line (new tasks, run rows, and ``retired`` entries for the old
ids), written as one maintenance step of the writer (``Warehouse.maintenance``): a failure at any
point leaves the warehouse exactly as it was, a SIGKILL too once the next command has rolled back what
the killed step left (``warehouse.journal``), and the old files become orphans that ``gc`` removes.

From schema 2 to 3 each task keeps its id and run; its files are written again with every Gram
(``sketches.gram``) as little-endian float32 bytes instead of a list (``warehouse.gram``). A compacted
warehouse comes out with one file per task: run ``layerlake compact`` after.

From schema 3 to 4 (one step) three tables gain a column and their files are written again, each task
keeping its id and run: ``scalars`` gains ``rank`` (NULL: each old value is its run's), ``activation_stats``
and ``spectra`` gain ``eps``, the precision each spectrum was computed in (the rank tolerance's). Older
layerlakes stored no trace of it, so old rows get what the default options computed in (``OLD_EPS``):
activations and gradients a float32 pass (2^-23), weights a float64 SVD (2^-52). A run extracted before
with ``executor.dtype=bfloat16`` or ``extract.spectra_precision=float32`` computed in coarser arithmetic
than that: extract it again. A task with none of these tables (a probe's) keeps its files; only its
manifest entry moves to the new version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from layerlake.warehouse import schema
from layerlake.warehouse.layout import checkpoint_task_id, probe_task_id
from layerlake.warehouse.manifest import CommitEntry, FileEntry, read_task_rows
from layerlake.warehouse.runs import RunKind, RunStatus, import_run_id, new_run, prepare_run
from layerlake.warehouse.writer import Staged, Warehouse, default_run_id, discard, now_utc

# Tables whose stored files changed after schema 3 (4: scalars.rank, activation_stats.eps, spectra.eps); other
# schema-3 files are kept as they are.
REWRITTEN_SINCE_3 = frozenset({"scalars", "activation_stats", "spectra"})


@dataclass
class MigrationReport:
    root: Path
    tasks: int = 0  # tasks rewritten
    collapsed: int = 0  # old tasks that were the same checkpoint as another (a moved data folder)
    runs: int = 0
    rows: int = 0
    old_files: list[str] = field(default_factory=list)


def migrate(root: str | Path) -> MigrationReport:
    """Rewrite every task of an older schema version; nothing to do returns an empty report."""
    store = Warehouse(root)
    report = MigrationReport(store.root)
    with store.lock():
        store.recover()  # a migration killed before: rolled back here, then done again
        if not store.outdated():
            return report
    with store.maintenance("migrate"):
        old = sorted(store.outdated(), key=lambda e: e.line)
        prepared: dict[str, tuple[CommitEntry, list[Staged]]] = {}
        retired: list[CommitEntry] = []
        runs: dict[str, tuple[str, str, RunKind]] = {}
        try:
            for entry in old:  # later lines win: a re-keyed duplicate replaces the one before it
                if entry.schema_version >= 3 and not REWRITTEN_SINCE_3.intersection(
                    f.table for f in entry.files
                ):
                    # its files are as this schema writes them: the entry alone moves to the new version
                    kept = dataclasses.replace(entry, meta=clean_meta(entry), schema_version=schema.SCHEMA_VERSION,
                                               committed_at=now_utc())  # fmt: skip
                    prepared[entry.task_id] = (kept, [])
                    continue
                if entry.schema_version >= 2:  # same task, same run: only the files' contents change
                    tables = {f.table: rewrite(store.root, f, entry) for f in entry.files}
                    staged = store.stage(entry.task_id, entry.suite, entry.model, entry.run_id, tables)
                    new = dataclasses.replace(entry, files=tuple(s.entry for s in staged), meta=clean_meta(entry),
                                              schema_version=schema.SCHEMA_VERSION, committed_at=now_utc())  # fmt: skip
                    prepared[entry.task_id] = (new, staged)
                    report.old_files += [f.path for f in entry.files]
                    continue
                run_id, kind = run_of(entry)
                task_id = new_task_id(entry, run_id)
                tables = {f.table: rewrite(store.root, f, entry) for f in entry.files}
                staged = store.stage(task_id, entry.suite, entry.model, run_id, tables)
                meta = clean_meta(entry)
                new = CommitEntry("ok", task_id, entry.suite, entry.model, tuple(s.entry for s in staged), meta,
                                  schema.SCHEMA_VERSION, now_utc(), None, run_id)  # fmt: skip
                if task_id in prepared:
                    report.collapsed += 1
                    discard(prepared[task_id][1])
                prepared[task_id] = (new, staged)
                if task_id != entry.task_id:
                    retired.append(CommitEntry("retired", entry.task_id, entry.suite, entry.model, (), {},
                                               schema.SCHEMA_VERSION, now_utc(), None, entry.run_id))  # fmt: skip
                runs[run_id] = (entry.suite, entry.model, kind)
                report.old_files += [f.path for f in entry.files]
            run_rows = [
                prepare_run(
                    store,
                    new_run(run_id, suite, model, kind, {"migrated_from_schema": 1}).ended(
                        RunStatus.finished
                    ),
                    check=False,
                )
                for run_id, (suite, model, kind) in sorted(runs.items())
            ]
        except BaseException:
            discard([s for _, staged in prepared.values() for s in staged])
            raise
        commits = [*prepared.values(), *run_rows, *[(e, []) for e in retired]]
        store.publish(commits)
    report.tasks = len(prepared)
    report.runs = len(run_rows)
    report.rows = sum(f.rows for entry, _ in prepared.values() for f in entry.files)
    return report


def run_of(entry: CommitEntry) -> tuple[str, RunKind]:
    """The run an old task's rows belong to."""
    if entry.meta.get("kind") == "import-metrics":
        return import_run_id(str(entry.meta.get("source")), entry.model), RunKind.imported
    return default_run_id(entry.suite, entry.model), RunKind.extract


def new_task_id(entry: CommitEntry, run_id: str) -> str:
    """The task id the current schema gives the old task (content only)."""
    meta = entry.meta
    if meta.get("kind") == "extract" and meta.get("revision") and meta.get("probe_id"):
        return checkpoint_task_id(
            entry.suite, entry.model, run_id, str(meta["revision"]), str(meta["probe_id"])
        )
    if meta.get("kind") == "probe" and meta.get("probe_id"):
        return probe_task_id(run_id, str(meta["probe_id"]))
    return entry.task_id


def stored_location(suite: str, model: str, revision: str, source: str, location: str) -> str:
    """A schema-1 location without the machine's path (``<suite>/<model>/<revision>`` for a local folder)."""
    return f"{suite}/{model}/{revision}" if source == "local" else location


OLD_EPS = {  # rows written before schema 4: the machine epsilon of what the default options computed in
    "activation_stats": {None: 2.0**-23},  # a float32 forward
    "spectra": {"weight": 2.0**-52, "grad": 2.0**-23},  # a float64 SVD; of a float32 backward's gradients
}


def rewrite(root: Path, listed: FileEntry, entry: CommitEntry) -> pa.Table:
    """An old task's rows as the current contract wants them (identity columns are added by the writer,
    which also encodes a Gram list as its bytes)."""
    data = read_task_rows(root, listed)
    data = data.drop_columns([c for c in schema.IDENTITY_COLUMNS if c in data.column_names])
    if listed.table in OLD_EPS and "eps" not in data.column_names:
        data = with_old_eps(listed.table, data)
    for column in schema.table(listed.table).columns:  # a column added since (scalars.rank): NULL in old rows
        if column.name not in data.column_names and column.nullable:
            data = data.append_column(column.name, pa.nulls(data.num_rows, column.type))
    if listed.table == "checkpoints" and entry.schema_version < 2 and "location" in data.column_names:
        rows = data.to_pylist()
        locations = [
            stored_location(entry.suite, entry.model, r["revision"], r["source"], r["location"]) for r in rows
        ]
        data = data.set_column(
            data.column_names.index("location"), "location", pa.array(locations, pa.string())
        )
        data = data.set_column(
            data.column_names.index("task_id"), "task_id",
            pa.array([new_task_id(entry, run_of(entry)[0])] * len(rows), pa.string()),
        )  # fmt: skip
    return data


def with_old_eps(table: str, data: pa.Table) -> pa.Table:
    """``data`` with its ``eps`` column, in the contract's column order, from ``OLD_EPS``."""
    by_tensor = OLD_EPS[table]
    tensors = data.column("tensor").to_pylist() if "tensor" in data.column_names else [None] * data.num_rows
    eps = pa.array([by_tensor.get(t, 2.0**-23) for t in tensors], pa.float64())
    names = schema.TABLES[table].column_names
    columns = {name: data.column(name) for name in data.column_names}
    columns["eps"] = eps
    return pa.table(
        [columns[name] for name in names if name in columns], names=[n for n in names if n in columns]
    )


def clean_meta(entry: CommitEntry) -> dict:
    """The old entry's meta with its location freed of the machine's path, and where it came from."""
    meta = dict(entry.meta)
    if "location" in meta and "revision" in meta:
        meta["location"] = stored_location(entry.suite, entry.model, str(meta["revision"]), str(meta.get("source")),
                                           str(meta["location"]))  # fmt: skip
    meta["migrated"] = {"from_schema": entry.schema_version, "old_task_id": entry.task_id}
    return meta
