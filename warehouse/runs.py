"""Runs in the warehouse: every row of every table belongs to one (its ``run_id`` column).

A run is a training run tracked while it trained (``kind = train``), the checkpoints of one suite model
extracted after the fact (``kind = extract``), or metrics imported from elsewhere (``kind = import``).
Its row in ``runs`` is the task ``run.<run_id>``, committed again whenever its status changes
(running -> finished, failed or killed): the latest commit wins, like any task's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from layerlake.core.choices import Choice
from layerlake.core.provenance import git_state, host, layerlake_version, pid, process_alive
from layerlake.warehouse import schema
from layerlake.warehouse.writer import Warehouse


class RunKind(Choice):
    train = "train", "a training run tracked live (layerlake.track)"
    extract = "extract", "the checkpoints of one suite model, extracted after the fact"
    imported = "import", "metrics computed elsewhere and imported"


class RunStatus(Choice):
    running = "running", "started, not finished"
    finished = "finished", "ended normally"
    failed = "failed", "ended with an error (see error)"
    killed = "killed", "its process died without ending it (found by the next start or by check)"


@dataclass(frozen=True)
class Run:
    """One row of ``runs``."""

    run_id: str
    suite: str
    model: str
    kind: RunKind
    status: RunStatus = RunStatus.running
    seed: int | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ended_at: datetime | None = None
    host: str = field(default_factory=host)
    pid: int | None = field(default_factory=pid)
    code_version: str = field(default_factory=layerlake_version)
    git_commit: str | None = None
    git_dirty: bool | None = None
    config_json: str = "{}"
    overrides: tuple[str, ...] = ()
    sweep_dir: str | None = None
    job_num: int | None = None
    probe_id: str | None = None
    error: str | None = None

    @property
    def task_id(self) -> str:
        return f"run.{self.run_id}"

    def ended(self, status: RunStatus, error: str | None = None) -> Run:
        return replace(self, status=status, ended_at=datetime.now(timezone.utc), error=error)

    def table(self) -> pa.Table:
        row = {k: v for k, v in asdict(self).items() if k not in schema.IDENTITY_COLUMNS}
        row["kind"], row["status"], row["overrides"] = str(self.kind), str(self.status), list(self.overrides)
        return pa.Table.from_pylist([row], schema=schema.RUNS.arrow_schema())

    def meta(self) -> dict[str, Any]:
        """What the run's manifest entry records (enough to rebuild the row without reading its file)."""
        out = asdict(self)
        out.update(
            kind=str(self.kind),
            status=str(self.status),
            started_at=self.started_at.isoformat(),
            ended_at=None if self.ended_at is None else self.ended_at.isoformat(),
            overrides=list(self.overrides),
        )
        return {"kind": "run", "run": out}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Run:
        data = dict(meta["run"])
        data["kind"], data["status"] = RunKind(data["kind"]), RunStatus(data["status"])
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        data["ended_at"] = None if data.get("ended_at") is None else datetime.fromisoformat(data["ended_at"])
        data["overrides"] = tuple(data.get("overrides") or ())
        return cls(**data)


def new_run(run_id: str, suite: str, model: str, kind: RunKind, config: Any = None, **fields: Any) -> Run:
    """A run starting now, with this process's host, pid, layerlake version and git state."""
    commit, dirty = git_state()
    config_json = json.dumps(config if config is not None else {}, sort_keys=True, default=str)
    return Run(
        run_id, suite, model, kind, git_commit=commit, git_dirty=dirty, config_json=config_json, **fields
    )


def import_run_id(source: str, model: str) -> str:
    """The run that metrics of one model imported from one source belong to: ``<source>.<model>``."""
    return f"{source}.{model}"


def commit_run(warehouse: Warehouse, run: Run) -> None:
    """Write (or rewrite) the run's row."""
    warehouse.publish([prepare_run(warehouse, run)])


def prepare_run(warehouse: Warehouse, run: Run, check: bool = True) -> tuple:
    """The run's row staged, to publish together with other tasks (``Warehouse.publish``)."""
    tables = {"runs": run.table()}
    return warehouse.prepare(
        run.task_id, run.suite, run.model, tables, run.meta(), run_id=run.run_id, check=check
    )


def committed_run(warehouse: Warehouse, run_id: str) -> Run | None:
    """The run as last committed, from its manifest entry (no file read); None if there is none."""
    entry = warehouse.committed().get(f"run.{run_id}")
    if entry is None or "run" not in entry.meta:
        return None
    return Run.from_meta(entry.meta)


def stale_runs(warehouse: Warehouse) -> list[Run]:
    """Runs still ``running`` whose process on this host is gone (killed, or ended without saying so)."""
    found = []
    for entry in list(warehouse.committed().values()):
        if entry.meta.get("kind") != "run" or entry.meta.get("archived") is True:
            continue  # an archived run stays as it was archived
        run = Run.from_meta(entry.meta)
        if run.status == RunStatus.running and process_alive(run.host, run.pid) is False:
            found.append(run)
    return found


def mark_killed(warehouse: Warehouse) -> list[Run]:
    """Commit every stale run (``stale_runs``) as ``killed``; returns them."""
    found = [
        run.ended(RunStatus.killed, "its process ended without finishing the run")
        for run in stale_runs(warehouse)
    ]
    for run in found:
        commit_run(warehouse, run)
    return found
