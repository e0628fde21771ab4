"""The maintenance journal: what an interrupted ``compact`` or ``migrate`` left, so the next command that
opens the warehouse can finish or roll back its step.

A maintenance command holds the writer lock from start to end. Before it stages anything it writes
``<root>/_manifest/maintenance.json`` (which command, host, pid, when); before it moves a file into the
warehouse it adds the file's path there; after its switch (the manifest line or the manifest rewrite)
it removes the journal. Killed at any point, it leaves the old manifest or the new one (readers never
see a mixture) plus at most: staging files, files moved into place that no manifest line lists, a
half-written manifest copy, and this journal. Whoever next holds the writer lock with the journal of
another process on disk (``Warehouse.recover``) removes them: the step is *finished* when the manifest
lists every file it placed (only the journal was left), *rolled back* otherwise. Nothing any reader can
see is touched either way.

The journal is written whole to a temporary name, fsynced and renamed, so a reader finds the old
journal, the new one or none, never a torn one.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from layerlake.core.provenance import host
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.layout import MANIFEST_DIR

JOURNAL_FILE = "maintenance.json"


@dataclass(frozen=True)
class Step:
    """One maintenance command in progress, as its journal records it."""

    command: str  # compact | migrate
    host: str
    pid: int
    started_at: str
    token: str  # tells this step's journal from an older one of the same pid
    targets: tuple[str, ...] = ()  # files (relative to the root) it moves, or may have moved, into place

    def to_json(self) -> dict:
        return {
            "command": self.command, "host": self.host, "pid": self.pid, "started_at": self.started_at,
            "token": self.token, "targets": list(self.targets),
        }  # fmt: skip

    @property
    def who(self) -> str:
        return f"`layerlake {self.command}` (pid {self.pid} on {self.host}, started {self.started_at[:19]})"


@dataclass(frozen=True)
class Recovery:
    """What the next holder of the lock did about an interrupted step."""

    step: Step
    outcome: str  # finished | rolled back | not possible
    removed: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""  # why it was not possible

    @property
    def message(self) -> str:
        """One line: what was interrupted, what was done, which command to run."""
        command = f"layerlake {self.step.command}"
        if self.outcome == "finished":
            return (
                f"{self.step.who} was interrupted after its switch; it is complete (its journal is removed)"
            )
        if self.outcome == "rolled back":
            again = "" if self.step.command == "migrate" else f"; run `{command}` to do it again"
            return (
                f"{self.step.who} was interrupted; rolled back: {len(self.removed)} file(s) no reader saw were "
                f"removed and the warehouse is as it was before it{again}"
            )
        return (
            f"{self.step.who} was interrupted and cannot be rolled back here ({self.reason}); readers see the "
            f"warehouse as it was before it: run `{command}` where the warehouse can be written"
        )


def journal_path(root: Path) -> Path:
    return root / MANIFEST_DIR / JOURNAL_FILE


def read(root: Path) -> Step | None:
    """The journal of ``root``, or None when no maintenance step is in progress or was interrupted."""
    try:
        data = json.loads(journal_path(root).read_text())
        return Step(
            str(data["command"]), str(data["host"]), int(data["pid"]), str(data["started_at"]),
            str(data["token"]), tuple(str(t) for t in data.get("targets") or ()),
        )  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WarehouseError(
            f"the maintenance journal {journal_path(root)} is unreadable ({error})",
            fix="if no `layerlake compact` or `layerlake migrate` is running, delete that file and run "
            "`layerlake gc` (its files are then removed as orphans)",
        ) from error


def begin(root: Path, command: str, started_at: str) -> Step:
    """Journal the start of ``command`` (the caller holds the writer lock)."""
    step = Step(command, host(), os.getpid(), started_at, uuid.uuid4().hex[:12])
    write(root, step)
    return step


def add_targets(root: Path, step: Step, targets: list[str]) -> Step:
    """Journal the files ``step`` is about to move into place (before it moves them)."""
    new = [t for t in targets if t not in step.targets]
    if not new:
        return step
    step = replace(step, targets=(*step.targets, *new))
    write(root, step)
    return step


def end(root: Path) -> None:
    """The step is complete: no journal any more."""
    journal_path(root).unlink(missing_ok=True)


def write(root: Path, step: Step) -> None:
    """Replace the journal with ``step``, durably (a temporary file, fsync, rename, fsync the folder)."""
    path = journal_path(root)
    tmp = path.with_name(f".{JOURNAL_FILE}.{step.pid}.tmp")
    data = json.dumps(step.to_json(), sort_keys=True).encode()
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_tmp(manifest: Path, pid: int) -> Path:
    """Where the process ``pid`` writes the manifest's replacement before renaming it into place."""
    return manifest.with_name(f".{manifest.name}.{pid}.tmp")


def roll_back(root: Path, manifest: Path, step: Step, listed: set[str]) -> Recovery:
    """Undo what ``step`` left (the caller holds the writer lock): remove the files it placed that the
    manifest does not list, and its half-written manifest copy; then the journal."""
    removed = []
    for rel in step.targets:
        if rel not in listed and (root / rel).is_file():
            (root / rel).unlink()
            removed.append(rel)
    manifest_tmp(manifest, step.pid).unlink(missing_ok=True)
    (root / MANIFEST_DIR / f".{JOURNAL_FILE}.{step.pid}.tmp").unlink(missing_ok=True)
    end(root)
    placed_all = all(rel in listed for rel in step.targets)
    outcome = "finished" if step.targets and placed_all and not removed else "rolled back"
    return Recovery(step, outcome, tuple(removed))
