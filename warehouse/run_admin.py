"""Managing runs after the fact: tag, note, archive, restore and delete (``layerlake runs ...``).

Every change is one manifest line, so it happens all or nothing (a torn last line is ignored by every
reader and cut away by the next writer):

- ``tag`` and ``note`` rewrite the run's task ``annotations.<run_id>`` (tables ``run_tags`` and
  ``run_notes``) with the run's tags and notes so far plus the new ones: the latest commit wins, like
  any task's. They are rows of the run, so SQL joins them on ``run_id``.
- ``archive`` commits every task of the run again, listing the same files, with ``archived`` in its
  meta: the views skip such tasks (the run and all its rows are hidden) until ``restore`` commits them
  again without it. Only rows that compaction merged into a file shared with other runs are written
  again, into files of the run's own (a view reads a shared file whole); compaction leaves archived
  tasks alone.
- ``delete`` appends a ``retired`` entry for every task of the run (its failures included): no reader
  sees any of its rows after that line. Rows of the run that compaction merged into a file shared with
  other runs are written again without them, in the same commit (``Warehouse.publish``). The files
  themselves are left for ``layerlake gc`` to remove after its grace period (a reader may still be
  reading one).

Each plans under the writer lock what it would change (``RunPlan``) and, without ``dry_run``, publishes
it under that same lock, so no run's task committed in between is missed. ``archive`` and ``delete``
refuse a run still being written (``check_not_writing``); a run archived is written into by no writer
until restored (``warehouse.runs.refuse_archived``, and ``Warehouse.publish`` refuses a line that would
leave a run partly archived).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from layerlake.core.choices import RunStatus, did_you_mean
from layerlake.core.provenance import host, process_alive
from layerlake.warehouse import schema
from layerlake.warehouse.content import ANNOTATION_COUNTS, ANNOTATIONS, MAX_TEXT, TAG_KEY
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.layout import annotations_task_id
from layerlake.warehouse.manifest import ARCHIVED, CommitEntry, is_archived, read_task_rows
from layerlake.warehouse.runs import run_of
from layerlake.warehouse.writer import Staged, Warehouse, discard, now_utc


@dataclass(frozen=True)
class RunPlan:
    """What a change to a run touches: its tasks (latest ok entries, and standing failures)."""

    run_id: str
    tasks: tuple[CommitEntry, ...]
    failures: tuple[CommitEntry, ...]

    @property
    def rows(self) -> dict[str, int]:
        """table -> the run's rows in it."""
        out: dict[str, int] = {}
        for entry in self.tasks:
            for f in entry.files:
                out[f.table] = out.get(f.table, 0) + f.rows
        return dict(sorted(out.items()))

    @property
    def files(self) -> int:
        return len({f.path for e in self.tasks for f in e.files})

    @property
    def bytes(self) -> int:
        """Bytes of the files that hold only this run's rows (a shared file is counted by its owner)."""
        return sum({f.path: f.bytes for e in self.tasks for f in e.files if not f.shared}.values())

    def describe(self) -> str:
        rows = ", ".join(f"{n} {t}" for t, n in self.rows.items()) or "no rows"
        failed = f", {len(self.failures)} recorded failures" if self.failures else ""
        return f"run {self.run_id}: {len(self.tasks)} tasks ({rows}) in {self.files} files{failed}"


def plan(store: Warehouse, run_id: str, archived: bool | None = False) -> RunPlan:
    """The tasks of ``run_id``; a clear error when there are none. ``archived``: False counts only a
    shown run, True only an archived one, None either."""
    committed = store.committed()
    tasks = tuple(e for e in committed.values() if e.run_id == run_id)
    failures = tuple(e for e in store.failed().values() if e.run_id == run_id)
    if not tasks and not failures:
        known = sorted({e.run_id for e in committed.values() if e.run_id})
        raise WarehouseError(
            f"run {run_id!r} is not in the warehouse at {store.root}{did_you_mean(run_id, known)}",
            fix="`layerlake runs` lists the runs (`layerlake runs --archived` the archived ones)",
        )
    hidden = any(is_archived(e) for e in tasks)
    if archived is False and hidden:
        raise WarehouseError(
            f"run {run_id!r} is archived", fix=f"restore it first: layerlake runs restore {run_id}"
        )
    if archived is True and not hidden:
        raise WarehouseError(f"run {run_id!r} is not archived", fix="`layerlake runs --archived` lists those")
    return RunPlan(run_id, tasks, failures)


def delete(
    store: Warehouse, run_ids: Iterable[str], dry_run: bool = False, force: bool = False
) -> list[RunPlan]:
    """Retire every task of each run, in one manifest line; returns what went (or would go). A run still
    being written is refused (``check_not_writing``)."""
    with store.lock():
        plans = [plan(store, r, archived=None) for r in _unique(run_ids)]
        for p in plans:
            check_not_writing(store, p.run_id, "delete", force)
        if not dry_run:
            retired = [_retired(e) for p in plans for e in (*p.tasks, *p.failures)]
            store.publish([(e, []) for e in retired])
    return plans


def archive(
    store: Warehouse,
    run_ids: Iterable[str],
    dry_run: bool = False,
    restore: bool = False,
    force: bool = False,
) -> list[RunPlan]:
    """Hide each run and all its rows (``restore``: show them again), in one manifest line. A run still
    being written is refused (``check_not_writing``)."""
    with store.lock():
        plans = [plan(store, r, archived=restore) for r in _unique(run_ids)]
        for p in plans if not restore else ():
            check_not_writing(store, p.run_id, "archive", force)
        if not dry_run:
            store.publish([_archived(store, e, not restore) for p in plans for e in p.tasks])
    return plans


def check_not_writing(store: Warehouse, run_id: str, verb: str, force: bool = False) -> None:
    """Refuse to ``verb`` (archive, delete) a run whose row says ``running`` while its process is alive
    (on this host: ``process_alive``, the test ``track(resume=True)`` and the stale-run scan use): that
    process keeps committing, and its later snapshots would bring a deleted run back or show beside an
    archived run's hidden rows. A run whose process is gone (shown as killed) is taken as it is. A run
    recorded by a process of another host (or without a pid) cannot be checked from here: refused unless
    ``force``. Called under the writer lock, which every commit of a tracked run also takes, so the
    run cannot commit between this check and the change."""
    entry = store.committed().get(f"run.{run_id}")
    run = run_of(entry) if entry is not None else None
    if run is None or run.status != RunStatus.running:
        return
    alive = process_alive(run.host, run.pid)
    if alive is False:
        return
    if alive:
        raise WarehouseError(
            f"run {run_id!r} is still running: process {run.pid} on {run.host} is alive and keeps "
            f"committing its rows; {verb} refused, nothing was changed",
            fix=f"wait until it ends, or stop process {run.pid} on {run.host}, then {verb} it (a run whose "
            "process is gone shows as killed, and `layerlake runs --mark-killed` records it so)",
        )
    if not force:
        where = f"process {run.pid} on {run.host}" if run.pid is not None else "a process with no pid"
        raise WarehouseError(
            f"run {run_id!r} is recorded running by {where}, which cannot be checked from {host()}; "
            f"{verb} refused, nothing was changed",
            fix=(
                f"{verb} it on {run.host}, where its process can be checked, or "
                if run.pid is not None
                else ""
            )
            + "pass --force once you know it has ended (a process still tracking it stops storing its rows)",
        )


def archived_runs(store: Warehouse) -> list[CommitEntry]:
    """The run rows' entries (``run.<id>``, meta kind ``run``) of the archived runs."""
    return sorted(
        (e for e in store.committed().values() if is_archived(e) and e.meta.get("kind") == "run"),
        key=lambda e: e.run_id,
    )


def tag(
    store: Warehouse,
    run_id: str,
    tags: dict[str, str],
    remove: Iterable[str] = (),
    at: datetime | None = None,
) -> dict[str, str]:
    """Set ``tags`` (and drop the keys in ``remove``) on the run, as set at ``at`` (UTC; default now);
    returns all its tags now."""
    for key, value in tags.items():
        check_tag(key, value)
    with store.lock():
        run = plan(store, run_id)
        current, notes = _annotations(store, run_id)
        now = at or datetime.now(timezone.utc)
        missing = [k for k in remove if k not in current]
        if missing:
            raise WarehouseError(
                f"run {run_id!r} has no tag {missing[0]!r}{did_you_mean(missing[0], sorted(current))}",
                fix=f"its tags are: {', '.join(sorted(current)) or 'none'}",
            )
        for key in remove:
            current.pop(key)
        current.update({k: (v, now) for k, v in tags.items()})
        _commit_annotations(store, run, current, notes)
    return {k: v for k, (v, _) in sorted(current.items())}


def note(store: Warehouse, run_id: str, text: str, at: datetime | None = None) -> int:
    """Add a note to the run, written at ``at`` (UTC; default now); returns how many it has now. A note's
    time is its key (table ``run_notes``), so a second note at the time of one the run has is refused."""
    text = text.strip()
    if not text or len(text) > MAX_TEXT:
        raise WarehouseError(
            "a note must hold some text" if not text else f"a note of {len(text)} characters is too long",
            fix=f'write 1 to {MAX_TEXT} characters: layerlake runs note RUN "what you saw"',
        )
    with store.lock():
        run = plan(store, run_id)
        tags, notes = _annotations(store, run_id)
        when = at or datetime.now(timezone.utc)
        if any(t == when for _, t in notes):
            raise WarehouseError(
                f"run {run_id!r} has a note written at {when.isoformat()} already",
                fix="write the note at another time (its time is its key in run_notes)",
            )
        notes.append((text, when))
        _commit_annotations(store, run, tags, notes)
    return len(notes)


def check_tag(key: str, value: str) -> None:
    if not TAG_KEY.fullmatch(key):
        raise WarehouseError(
            f"tag name {key!r} is not a name",
            fix="start it with a letter or '_', then up to 63 letters, digits, '_', '.' or '-' "
            "(`layerlake runs tag RUN key=value`)",
        )
    if len(value) > MAX_TEXT:
        raise WarehouseError(
            f"the value of tag {key!r} is too long", fix=f"keep it under {MAX_TEXT} characters"
        )


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """``["group=a", "verdict=good run"]`` -> ``{"group": "a", ...}``; a clear error for an item without ``=``."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise WarehouseError(
                f"tag {item!r} has no value",
                fix="write `layerlake runs tag RUN key=value` (an empty value: `layerlake runs tag RUN key=`)",
            )
        check_tag(key.strip(), value)
        out[key.strip()] = value
    return out


def _annotations(store: Warehouse, run_id: str) -> tuple[dict[str, tuple[str, datetime]], list]:
    """The run's stored tags (key -> (value, when)) and notes ([(text, when)])."""
    entry = store.committed().get(annotations_task_id(run_id))
    tags: dict[str, tuple[str, datetime]] = {}
    notes: list[tuple[str, datetime]] = []
    for listed in entry.files if entry is not None else ():
        rows = read_task_rows(store.root, listed).to_pylist()
        if listed.table == "run_tags":
            tags.update({r["key"]: (r["value"], r["tagged_at"]) for r in rows})
        elif listed.table == "run_notes":
            notes.extend((r["note"], r["noted_at"]) for r in rows)
    return tags, notes


def _commit_annotations(store: Warehouse, run: RunPlan, tags: dict, notes: list) -> None:
    first = run.tasks[0]
    tables = {
        "run_tags": pa.Table.from_pylist(
            [{"key": k, "value": v, "tagged_at": t} for k, (v, t) in sorted(tags.items())],
            schema=schema.RUN_TAGS.arrow_schema(),
        ),
        "run_notes": pa.Table.from_pylist(
            [{"note": n, "noted_at": t} for n, t in notes], schema=schema.RUN_NOTES.arrow_schema()
        ),
    }
    meta = {"kind": ANNOTATIONS, **{count: tables[t].num_rows for t, count in ANNOTATION_COUNTS.items()}}
    store.commit(annotations_task_id(run.run_id), first.suite, first.model, tables, meta, run_id=run.run_id)


def _retired(entry: CommitEntry) -> CommitEntry:
    return dataclasses.replace(
        entry,
        status="retired",
        files=(),
        meta={"deleted_run": entry.run_id},
        error=None,
        committed_at=now_utc(),
    )


def _archived(store: Warehouse, entry: CommitEntry, archived: bool) -> tuple[CommitEntry, list[Staged]]:
    """The task's entry with (or without) the archived mark. Its rows that compaction merged into a
    file shared with other tasks get a file of their own (published with it, while ``publish`` writes
    the shared file again without them): a view reads a shared file whole, so it must hold only rows
    that are shown."""
    meta = {k: v for k, v in entry.meta.items() if k != ARCHIVED}
    if archived:
        meta[ARCHIVED] = True
    files, staged = [], []
    try:
        for listed in entry.files:
            if not listed.shared:
                files.append(listed)
                continue
            rows = read_task_rows(store.root, listed)
            own = store.stage(entry.task_id, entry.suite, entry.model, entry.run_id, {listed.table: rows})
            staged += own
            files += [s.entry for s in own]
    except BaseException:
        discard(staged)
        raise
    return dataclasses.replace(entry, meta=meta, files=tuple(files), committed_at=now_utc()), staged


def _unique(run_ids: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys(run_ids))
    if not out:
        raise WarehouseError("no run given", fix="name at least one run (`layerlake runs` lists them)")
    return out
