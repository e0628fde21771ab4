"""The extraction driver: plans tasks, skips committed ones, runs the rest, commits each as it arrives.

The driver is the warehouse's only writer. Workers return Arrow tables; the driver writes each
task's shards and appends its manifest entry, or records the task's failure and goes on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from layerlake.conf.schema import Config
from layerlake.core.hashing import stable_hash
from layerlake.etl.executors import Outcome, make_executor
from layerlake.etl.plan import Plan, make_plan
from layerlake.etl.progress import ExtractProgress
from layerlake.etl.task import ExtractTask, ProbeBatch
from layerlake.warehouse.schema import PROBES
from layerlake.warehouse.writer import Warehouse


@dataclass
class ExtractReport:
    planned: int = 0
    skipped: int = 0
    replaced: int = 0  # committed before with other extraction options: extracted again, rows replaced
    committed: list[str] = field(default_factory=list)  # "model step"
    failed: list[tuple[str, str]] = field(default_factory=list)  # ("model step", error)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)  # (model, step, same-as step)

    @property
    def ok(self) -> bool:
        return not self.failed


def task_label(task: ExtractTask) -> str:
    return f"{task.ref.model} {task.ref.revision}"


def task_meta(task: ExtractTask) -> dict:
    ref = task.ref
    return {
        "kind": "extract",
        "revision": ref.revision,
        "step": ref.step,
        "tokens_seen": ref.tokens_seen,
        "source": ref.source,
        "location": ref.location,
        "probe_id": task.probe.probe_id,
        "config_hash": task.options.config_hash(),
        "code_version": task.code_version,
    }


def commit_probes(warehouse: Warehouse, plan: Plan, committed: dict) -> None:
    """One ``probes`` row per (model, probe): the batch every checkpoint of the model saw."""
    from layerlake.etl.probes import probe_row

    for model in plan.models:
        task_id = (
            "probe-" + stable_hash({"suite": plan.suite, "model": model, "probe": plan.probe.probe_id})[:14]
        )
        if task_id in committed and not warehouse.problems(committed[task_id]):
            continue
        table = pa.Table.from_pylist([probe_row(plan.probe)], schema=PROBES.arrow_schema())
        warehouse.commit(task_id, plan.suite, model, {"probes": table}, probe_meta(plan.probe))


def probe_meta(probe: ProbeBatch) -> dict:
    return {"kind": "probe", "probe_id": probe.probe_id, "source": probe.source, "rule": probe.rule}


def record(warehouse: Warehouse, outcome: Outcome, report: ExtractReport) -> None:
    task = outcome.task
    meta = task_meta(task)
    if outcome.result is None:
        meta["traceback"] = outcome.detail
        warehouse.record_failure(task.task_id, task.ref.suite, task.ref.model, outcome.error or "", meta)
        report.failed.append((task_label(task), outcome.error or "unknown error"))
        return
    result = outcome.result
    meta |= {
        "weights_sha256": result.weights_sha256,
        "timings": result.timings,
        "placement": result.placement,
    }
    warehouse.commit(task.task_id, task.ref.suite, task.ref.model, result.tables, meta)
    report.committed.append(task_label(task))


def find_weight_duplicates(warehouse: Warehouse, plan: Plan) -> list[tuple[str, int, int]]:
    """``(model, step, first step)`` for each step of a planned model whose weights equal an earlier
    step's (mislabelled revisions), from the warehouse's ``duplicate_weights`` audit (its one home)."""
    from layerlake.warehouse import connect
    from layerlake.warehouse.audits import AUDITS, run_audit

    con = connect(warehouse.root)
    try:
        rows = run_audit(con, AUDITS.get("duplicate_weights")).to_pylist()
    finally:
        con.close()
    return [
        (row["model"], step, row["steps"][0])
        for row in rows
        if row["suite"] == plan.suite and row["model"] in plan.models
        for step in row["steps"][1:]
    ]


def tasks_to_run(warehouse: Warehouse, plan: Plan, committed: dict) -> tuple[list[ExtractTask], int]:
    """Tasks not yet committed, or committed with other extraction options (their rows get replaced),
    or whose files no longer verify; and how many of them are replacements."""
    todo, replaced = [], 0
    for task in plan.tasks:
        entry = committed.get(task.task_id)
        if entry is None or warehouse.problems(entry):
            todo.append(task)
        elif entry.meta.get("config_hash") != task.options.config_hash():
            todo.append(task)
            replaced += 1
    return todo, replaced


def run_extract(settings: Config) -> ExtractReport:
    plan = make_plan(settings)
    warehouse = Warehouse(settings.paths.warehouse)
    report = ExtractReport(planned=len(plan.tasks))
    committed = warehouse.committed()  # the manifest, read once for the whole plan
    todo, report.replaced = tasks_to_run(warehouse, plan, committed)
    report.skipped = report.planned - len(todo)
    executor = make_executor(settings.executor) if todo else None  # fails (e.g. no ray) before any write
    try:
        commit_probes(warehouse, plan, committed)
        if executor is not None:
            per_model = Counter(t.ref.model for t in todo)
            with ExtractProgress(per_model, enabled=settings.progress) as progress:
                for outcome in executor.run(todo):
                    record(warehouse, outcome, report)
                    progress.advance(outcome)
    finally:
        if executor is not None:
            executor.close()
    report.duplicates = find_weight_duplicates(warehouse, plan)
    return report
