"""Runs in the warehouse, and the bookkeeping every writer shares: every row of every table belongs to
a run (its ``run_id`` column), and every run that reads a probe batch has that batch's row in ``probes``.

A run is a training run tracked while it trained (``kind = train``), the checkpoints of one suite model
extracted after the fact (``kind = extract``), or metrics imported from elsewhere (``kind = import``).
Its row in ``runs`` is the task ``run.<run_id>``, committed again whenever its status changes
(running -> finished, failed or killed): the latest commit wins, like any task's. Extraction
(``etl.driver``) and tracking (``etl.track``) both start a run with ``begin_run`` (its row and its
probe batch's row in one manifest line), end it with ``end_run``, and write a probe batch's row with
``commit_probe``: one home, so the two cannot record runs differently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from layerlake.core.choices import RunKind, RunStatus
from layerlake.core.errors import ConfigError
from layerlake.core.provenance import git_state, host, layerlake_version, pid, process_alive
from layerlake.warehouse import schema
from layerlake.warehouse.content import meta_problems
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.layout import probe_task_id
from layerlake.warehouse.manifest import CommitEntry, is_archived
from layerlake.warehouse.writer import Warehouse


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
    config_json = json.dumps(
        json_config(config if config is not None else {}), sort_keys=True, allow_nan=False
    )
    return Run(
        run_id, suite, model, kind, git_commit=commit, git_dirty=dirty, config_json=config_json, **fields
    )


NON_FINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # JSON has no such numbers


def json_config(value: Any) -> Any:
    """``value`` as plain JSON values, so every reader parses ``config_json`` and compares its numbers as
    numbers: a numpy number or a one-element tensor or array as its Python number (``.item()``), a tuple or
    set as a list, NaN and infinities as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, keys as
    text; an array or a tensor of several values as a list; anything else (a dtype, a path) as its text."""
    if isinstance(value, dict):
        return {str(k): json_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_config(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE_JSON[str(value)]
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return value
    for plain in ("item", "tolist"):  # numpy and torch: one number, else a (nested) list
        with suppress(AttributeError, TypeError, ValueError, RuntimeError):
            return json_config(getattr(value, plain)())
    return str(value)


def import_run_id(source: str, model: str) -> str:
    """The run that metrics of one model imported from one source belong to: ``<source>.<model>``."""
    return f"{source}.{model}"


def commit_run(warehouse: Warehouse, run: Run) -> None:
    """Write (or rewrite) the run's row."""
    warehouse.publish([prepare_run(warehouse, run)])


def begin_run(
    warehouse: Warehouse, run: Run, probe: dict[str, Any] | None = None, resume: bool | None = None
) -> Run:
    """Commit ``run`` as it starts (or starts again: its earlier row's ``started_at`` is kept), with
    the row of the probe batch it reads (``probe``, a row of ``probes``; unless committed already, whole)
    in one manifest line.

    Decided under the writer lock, so two processes starting one run id at once cannot both begin it:
    an archived run is refused whatever ``resume`` says (``refuse_archived``); ``resume=False`` refuses a
    run id that exists; ``resume=True`` refuses a run still ``running`` in a live process of this host
    (naming host and pid), and a run of another suite or model; None (an extraction's run, started again
    by every ``extract``) refuses only another suite or model."""
    with warehouse.lock():
        doing = {False: "start a new run under its id", True: "resume it"}.get(resume, "start it again")
        refuse_archived(warehouse, [run.run_id], doing, "or start another run_id")
        before = committed_run(warehouse, run.run_id)
        if before is not None:
            check_restart(warehouse, before, run, resume)
            run = replace(run, started_at=before.started_at, probe_id=run.probe_id or before.probe_id)
        commits = [prepare_run(warehouse, run)]
        if probe is not None and not warehouse.is_committed(
            probe_task_id(run.run_id, str(probe["probe_id"]))
        ):
            commits.append(prepare_probe(warehouse, run.run_id, run.suite, run.model, probe))
        warehouse.publish(commits)
    return run


def refuse_archived(warehouse: Warehouse, run_ids: Iterable[str], doing: str, other_fix: str = "") -> None:
    """The one rule of every write into a run (tracking, ``extract``, ``import-metrics``, ``share
    import``): an archived run is written into only once restored. Its new rows would show while the rest
    of it stays hidden (``Warehouse.publish`` refuses such a commit too; this says so before any work).
    ``doing``: what was asked ("continue it"); ``other_fix``: the caller's other way out."""
    archived = sorted(set(run_ids) & warehouse.archived_runs())
    if not archived:
        return
    names = ", ".join(archived)
    raise WarehouseError(
        f"run{'s' if len(archived) > 1 else ''} {names} {'are' if len(archived) > 1 else 'is'} archived in "
        f"{warehouse.root}: a write into an archived run is refused (its new rows would show while the rest "
        f"stays hidden); cannot {doing}; nothing was written",
        fix=f"restore it first: layerlake runs restore {' '.join(archived)} --root {warehouse.root}"
        + (f"; {other_fix}" if other_fix else ""),
    )


def standing(warehouse: Warehouse, run: Run) -> str | None:
    """Why a run being written (a tracked run, from its process) may no longer be written into: its row
    was deleted, archived, or belongs to another start of that run id; None while it stands. Asked under
    the writer lock right before each commit, so ``runs delete`` or ``runs archive`` (which hold that lock)
    cannot slip in between."""
    entry = warehouse.entry(run.task_id)
    if entry is None:
        return "deleted (`layerlake runs delete`)"
    if is_archived(entry):
        return f"archived (`layerlake runs archive`; `layerlake runs restore {run.run_id}` shows it again)"
    stored = run_of(entry)
    if stored is not None and stored.started_at != run.started_at:
        return f"deleted, and started again by another process (started {stored.started_at:%Y-%m-%d %H:%M})"
    return None


def check_restart(warehouse: Warehouse, before: Run, run: Run, resume: bool | None) -> None:
    """Refuse to start ``run`` again over ``before`` (its committed row) where that would mix two runs."""
    where = f"in {warehouse.root}"
    if resume is False:  # the caller's choice of run id: a ConfigError, as any option that cannot work
        raise ConfigError(
            f"run {run.run_id!r} exists already {where} ({before.status}, started "
            f"{before.started_at:%Y-%m-%d %H:%M}, {before.suite}/{before.model})",
            fix="pass `layerlake.track(..., resume=True)` to continue it, or another run_id",
        )
    if (before.suite, before.model) != (run.suite, run.model):
        raise WarehouseError(
            f"run {run.run_id!r} {where} is a run of {before.suite}/{before.model}, not of {run.suite}/{run.model}",
            fix=f"resume it as suite={before.suite!r}, model {before.model!r}, or start another run_id",
        )
    if resume and before.probe_id and run.probe_id and before.probe_id != run.probe_id:
        raise ConfigError(
            f"run {run.run_id!r} {where} snapshots through probe {before.probe_id}, not probe {run.probe_id}: "
            "a run's snapshots are compared through one probe",
            fix="resume it with the probe it started with (the same token ids and rule), or start another "
            "run_id for this probe",
        )
    alive = process_alive(before.host, before.pid)
    if resume and before.status == RunStatus.running and alive and before.pid != pid():
        raise WarehouseError(
            f"run {run.run_id!r} {where} is still running: process {before.pid} on {before.host} is alive",
            fix=f"wait until it ends (or stop process {before.pid} on {before.host}), then resume it; or start "
            "another run_id",
        )


def end_run(warehouse: Warehouse, run: Run, status: RunStatus, error: str | None = None) -> Run:
    """Commit the run's end (finished, failed or killed, with the error); returns the ended run."""
    ended = run.ended(status, error[:2000] if error else None)
    commit_run(warehouse, ended)
    return ended


def probe_meta(row: dict[str, Any]) -> dict[str, Any]:
    """What a probe batch's manifest entry records."""
    return {
        "kind": "probe",
        "probe_id": row["probe_id"],
        "source": row["source"],
        "rule": str(row["positions"]),
    }


def prepare_probe(warehouse: Warehouse, run_id: str, suite: str, model: str, probe: dict[str, Any]) -> tuple:
    """The probe batch's row (``probe``, a row of ``probes``) of run ``run_id``, staged as the task
    ``probe_task_id(run_id, probe_id)``, to publish with other tasks."""
    table = pa.Table.from_pylist([probe], schema=schema.PROBES.arrow_schema())
    task_id = probe_task_id(run_id, str(probe["probe_id"]))
    return warehouse.prepare(task_id, suite, model, {"probes": table}, probe_meta(probe), run_id=run_id)


def commit_probe(warehouse: Warehouse, run_id: str, suite: str, model: str, probe: dict[str, Any]) -> None:
    """Write the probe batch's row of run ``run_id`` unless it is committed already, whole."""
    if not warehouse.is_committed(probe_task_id(run_id, str(probe["probe_id"]))):
        warehouse.publish([prepare_probe(warehouse, run_id, suite, model, probe)])


def prepare_run(warehouse: Warehouse, run: Run, check: bool = True) -> tuple:
    """The run's row staged, to publish together with other tasks (``Warehouse.publish``)."""
    tables = {"runs": run.table()}
    return warehouse.prepare(
        run.task_id, run.suite, run.model, tables, run.meta(), run_id=run.run_id, check=check
    )


def committed_run(warehouse: Warehouse, run_id: str) -> Run | None:
    """The run as last committed, from its manifest entry (no file read); None if there is none. A
    malformed run task (``warehouse.content``) is an error naming it, never a ``KeyError``."""
    entry = warehouse.committed().get(f"run.{run_id}")
    if entry is None:
        return None
    run = run_of(entry)
    if run is None:
        problems = "; ".join(meta_problems(entry)) or "its meta is not a run's"
        raise WarehouseError(
            f"the task of run {run_id!r} in {warehouse.root} is malformed ({problems})",
            fix="run `layerlake check` (it names every malformed task); use another run_id, or import the run "
            "again from a good copy",
        )
    return run


def run_of(entry: CommitEntry) -> Run | None:
    """The run a run task's manifest entry records; None when the entry is malformed (``warehouse.content``)."""
    if entry.meta.get("kind") != "run" or meta_problems(entry):
        return None
    try:
        return Run.from_meta(entry.meta)
    except (KeyError, TypeError, ValueError):
        return None


def is_stale(meta: dict[str, Any]) -> bool:
    """Whether a manifest entry's ``meta`` is a run committed as ``running`` whose process on this host is
    gone (killed, or ended without saying so). Readers show such a run as killed without writing
    (``warehouse.views``); ``mark_killed`` records it."""
    run = meta.get("run") if meta.get("kind") == "run" else None
    return (
        isinstance(run, dict)
        and run.get("status") == str(RunStatus.running)
        and isinstance(run.get("pid"), int)
        and process_alive(str(run.get("host")), run.get("pid")) is False
    )


def stale_runs(warehouse: Warehouse) -> list[Run]:
    """Runs still ``running`` whose process on this host is gone (``is_stale``). A malformed run task is
    skipped here (``check`` names it)."""
    found = []
    for entry in list(warehouse.committed().values()):
        if is_archived(entry):
            continue  # an archived run stays as it was archived
        run = run_of(entry) if is_stale(entry.meta) else None
        if run is not None:
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
