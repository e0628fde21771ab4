"""Compaction: many small shards of committed tasks merged into a few larger files, and the manifest
rewritten to its current state, so ``connect()`` and a full scan stay fast however many small commits
a tracked run made.

``compact(root)`` (``layerlake compact``; a tracked run does it for its own files when it finishes)
runs as one maintenance step of the writer (``Warehouse.maintenance``: the writer lock held throughout,
journaled) and:

1. groups the small files (under ``small_bytes``, each listed by one task) by table, suite and model,
   and concatenates each group, in order, into files of about ``target_bytes``; every task keeps owning
   its rows, now a slice of a shared file (``FileEntry.first_row`` and ``rows``);
2. writes the merged files to staging, fsyncs them, and moves them into place;
3. rewrites ``_manifest/commits.jsonl`` as one line per task's latest entry (the merged files in the
   compacted tasks' entries), into a new file that replaces the old one with one rename: the switch.

Readers that listed the old files before the switch keep reading them (``gc`` removes unlisted files
only after a grace period), so every view's content is the same before, during and after. A SIGKILL at
any point leaves the old manifest and files, or the new ones; the next command that opens the
warehouse removes what the killed step left (``warehouse.journal``). A full disk is an error saying
nothing was changed. Replacing one task of a merged file later rewrites that file without the task's
rows (``Warehouse.publish``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from layerlake.warehouse.manifest import (
    CommitEntry,
    FileCheckPass,
    FileEntry,
    entry_problems,
    is_archived,
    latest,
)
from layerlake.warehouse.writer import Staged, Warehouse, discard, now_utc

SMALL_BYTES = 4 << 20  # files below this are merged
TARGET_BYTES = 64 << 20  # into files of about this size


@dataclass
class CompactReport:
    files_before: int = 0
    files_after: int = 0
    tasks: int = 0
    manifest_lines_before: int = 0
    manifest_lines_after: int = 0


def compact(
    root: str | Path,
    run_ids: list[str] | None = None,
    small_bytes: int = SMALL_BYTES,
    target_bytes: int = TARGET_BYTES,
) -> CompactReport:
    """Merge the small files of committed tasks (of ``run_ids`` only, when given), then rewrite the
    manifest to its current state. Idempotent: a compacted warehouse compacts to itself."""
    store = Warehouse(root)
    store.check_version()
    report = CompactReport()
    staged: list[Staged] = []
    try:
        with store.maintenance("compact"):
            entries = store.entries()
            committed, failed = latest(entries)
            report.manifest_lines_before = (
                len(store.manifest.read_bytes().splitlines()) if store.manifest.exists() else 0
            )
            listing: dict[str, int] = defaultdict(int)
            for entry in committed.values():
                for f in entry.files:
                    listing[f.path] += 1
            report.files_before = len(listing)
            groups = small_files(store, committed, listing, run_ids, small_bytes)
            updates: dict[str, dict[str, FileEntry]] = defaultdict(dict)  # task -> old path -> new file
            for (table, suite, model), members in sorted(groups.items()):
                for chunk in chunks(members, target_bytes):
                    if len(chunk) < 2:
                        continue
                    merged, where = store.stage_slices(
                        table, suite, model, [((e.task_id, f.path), store.root, f) for e, f in chunk]
                    )
                    staged.append(merged)
                    for (task, old_path), listed in where.items():
                        updates[task][old_path] = listed
            touched = {task: replace(committed[task], files=tuple(files.get(f.path, f) for f in committed[task].files),
                                     committed_at=now_utc()) for task, files in updates.items()}  # fmt: skip
            store.place(staged)
            state = [touched.get(task, entry) for task, entry in committed.items()] + list(failed.values())
            store.replace_manifest(state)
    finally:
        discard(staged)
    report.tasks = len(updates)
    report.files_after = len({f.path for e in state if e.status == "ok" for f in e.files})
    report.manifest_lines_after = len(state)
    return report


def small_files(
    store: Warehouse,
    committed: dict[str, CommitEntry],
    listing: dict[str, int],
    run_ids: list[str] | None,
    small_bytes: int,
) -> dict[tuple[str, str, str], list[tuple[CommitEntry, FileEntry]]]:
    """The files to merge, per (table, suite, model), in manifest order: small, listed by one task."""
    groups: dict[tuple[str, str, str], list[tuple[CommitEntry, FileEntry]]] = defaultdict(list)
    checks = FileCheckPass()
    for entry in committed.values():
        if run_ids is not None and entry.run_id not in run_ids:
            continue
        if entry_problems(store.root, entry, checks=checks):
            continue  # a damaged task is left for check to name, not folded into a merged file
        if is_archived(entry):
            continue  # hidden rows must not share a file with shown ones (a view reads a file whole)
        for f in entry.files:
            if listing[f.path] == 1 and not f.shared and f.bytes < small_bytes:
                groups[(f.table, entry.suite, entry.model)].append((entry, f))
    return groups


def chunks(members: list[tuple[CommitEntry, FileEntry]], target_bytes: int) -> list[list]:
    """Consecutive runs of ``members`` whose files add up to about ``target_bytes``."""
    out, current, size = [], [], 0
    for member in members:
        if current and size + member[1].bytes > target_bytes:
            out.append(current)
            current, size = [], 0
        current.append(member)
        size += member[1].bytes
    if current:
        out.append(current)
    return out
