"""What a task may hold: the rows and the manifest meta that layerlake's own writers write, and nothing
else. ``share import`` refuses a task that breaks one of these rules (``warehouse.share.verify``), and
``layerlake check`` names a task on disk whose manifest meta breaks them (a reader then skips what it
cannot read, never failing for everyone).

Rules, beyond the column types of ``warehouse/schema.py``:

- names (suite, model, run_id, task id, probe_id, site, matrix) obey the name rule of the command line
  (``warehouse.layout.check_name``); a row's suite, model and run_id are its task's;
- enumerated values are members of their enum (run kind and status, site, matrix, tensor, kernel,
  estimator, position rule);
- steps lie in 0..``MAX_STEP``, layers and heads in 0..``MAX_INDEX``, sizes (n, d, rows, cols) in
  1..``MAX_SIZE``; a list or a byte string has the length its sizes say (singular values: at most the
  smaller; a packed Gram: n(n+1)/2; activations: n x d float16);
- the meta of a task agrees with its rows: a run task (``kind: run``) is ``run.<run_id>`` and its meta
  is a whole run equal to its row; a probe task's rows are of its probe; an extraction task's rows are
  all of its step (and revision and probe); a scalars block's steps fall in its block.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from layerlake.core.choices import Estimator, Kernel, Matrix, PositionRule, Site, Tensor
from layerlake.warehouse.layout import MAX_NAME, NAME
from layerlake.warehouse.manifest import CommitEntry
from layerlake.warehouse.schema import TABLES

MAX_STEP = 10**12  # more than any training run takes; a larger step is a corrupt or lying row
MAX_INDEX = 100_000  # layers and heads
MAX_SIZE = 1 << 20  # rows, columns and probe positions of one matrix
SCALARS_BLOCK = 1000  # steps per scalars task (etl.track.SCALAR_BLOCK)
RUN_KINDS = ("train", "extract", "import")  # warehouse.runs.RunKind
RUN_STATUSES = ("running", "finished", "failed", "killed")  # warehouse.runs.RunStatus
_NAME = re.compile(rf"^{NAME}$")

# column -> the values it may hold, per table (None: every table with that column)
ENUMS: dict[tuple[str | None, str], tuple[str, ...]] = {
    ("runs", "kind"): RUN_KINDS,
    ("runs", "status"): RUN_STATUSES,
    ("activation_stats", "site"): Site.values(),
    ("sketches", "site"): Site.values(),
    ("activations", "site"): Site.values(),
    (None, "matrix"): Matrix.values(),
    (None, "tensor"): Tensor.values(),
    (None, "kernel"): Kernel.values(),
    (None, "estimator"): Estimator.values(),
    ("probes", "positions"): PositionRule.values(),
}
NAMES = ("suite", "model", "run_id", "probe_id")  # columns holding a name (NULL allowed where nullable)
BOUNDS = {"step": (0, MAX_STEP), "layer": (0, MAX_INDEX), "head": (0, MAX_INDEX), "rank": (0, MAX_INDEX),
          "n": (1, MAX_SIZE), "d": (1, MAX_SIZE), "rows": (1, MAX_SIZE), "cols": (1, MAX_SIZE),
          "n_sequences": (1, MAX_SIZE), "seq_len": (1, MAX_SIZE), "pid": (0, 1 << 32), "job_num": (0, 1 << 31),
          "tokens_seen": (0, 1 << 62), "n_params": (0, 1 << 50), "n_layers": (1, MAX_INDEX),
          "d_model": (1, MAX_SIZE), "n_heads": (1, MAX_INDEX), "d_head": (1, MAX_SIZE)}  # fmt: skip


def is_name(value: Any) -> bool:
    """Whether ``value`` obeys the name rule (``warehouse.layout.check_name``)."""
    return isinstance(value, str) and len(value) <= MAX_NAME and _NAME.match(value) is not None


def row_problems(table: str, rows: pa.Table, entry: CommitEntry) -> list[str]:
    """What is wrong with ``rows`` (a task's rows of ``table``, as stored: the file schema) for the task
    ``entry``; empty when a layerlake writer could have written them."""
    found: list[str] = []
    if not rows.num_rows:
        return found
    columns = set(rows.column_names)
    for column, expected in (("suite", entry.suite), ("model", entry.model), ("run_id", entry.run_id)):
        if column in columns:
            other = sorted({str(v) for v in rows.column(column).to_pylist() if v != expected})
            if other:
                found.append(f"{column} {', '.join(other[:3])} in a task of {column} {expected!r}")
    for column in NAMES:
        if column in columns:
            bad = sorted(
                {str(v) for v in rows.column(column).to_pylist() if v is not None and not is_name(v)}
            )
            if bad:
                found.append(f"{column} {bad[0][:60]!r} that breaks the name rule")
    for (where, column), allowed in ENUMS.items():
        if column in columns and where in (None, table):
            bad = sorted(
                {str(v) for v in rows.column(column).to_pylist() if v is not None and v not in allowed}
            )
            if bad:
                found.append(f"{column} {bad[0][:60]!r}, not one of {', '.join(allowed)}")
    for column, (low, high) in BOUNDS.items():
        if column in columns:
            values = rows.column(column)
            if values.null_count == len(values):
                continue
            least, most = (v.as_py() for v in pc.min_max(values).values())
            if least < low or most > high:
                found.append(f"{column} outside {low}..{high} ({least}..{most})")
    if found:  # the lengths below rely on sane sizes
        return found
    found += _length_problems(table, rows)
    return found


def _length_problems(table: str, rows: pa.Table) -> list[str]:
    """Lists and byte strings of the length their sizes say."""
    found = []

    def mismatch(column: str, actual: pa.Array, expected: pa.Array, what: str, at_most: bool = False) -> None:
        compare = pc.greater if at_most else pc.not_equal
        differs = pc.sum(compare(pc.cast(actual, pa.int64()), pc.cast(expected, pa.int64()))).as_py()
        if differs:
            found.append(f"{differs} {column} value(s) whose length is {'over' if at_most else 'not'} {what}")

    if "sv" in rows.column_names:  # at most min(n, d) singular values (the writer stores all of them)
        a, b = ("n", "d") if table == "activation_stats" else ("rows", "cols")
        shortest = pc.min_element_wise(rows.column(a), rows.column(b))
        mismatch("sv", pc.list_value_length(rows.column("sv")), shortest, f"min({a}, {b})", at_most=True)
    if table == "sketches":
        n = pc.cast(rows.column("n"), pa.int64())
        packed = pc.divide(pc.multiply(n, pc.add(n, 1)), 2)
        mismatch("gram", pc.binary_length(rows.column("gram")), pc.multiply(packed, 4), "n(n+1)/2 float32")
    if table == "activations":
        cells = pc.multiply(pc.cast(rows.column("n"), pa.int64()), pc.cast(rows.column("d"), pa.int64()))
        mismatch("x", pc.binary_length(rows.column("x")), pc.multiply(cells, 2), "n x d float16")
    return found


def meta_problems(entry: CommitEntry) -> list[str]:
    """What is wrong with the manifest entry of a task by itself (no file read)."""
    found = []
    for what, value in (("task id", entry.task_id), ("suite", entry.suite), ("model", entry.model),
                        ("run id", entry.run_id)):  # fmt: skip
        if not is_name(value):
            found.append(f"its {what} {str(value)[:60]!r} breaks the name rule")
    meta = entry.meta
    step = meta.get("step")
    if step is not None and (
        not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP
    ):
        found.append(f"has an impossible step {str(step)[:30]} (not in 0..{MAX_STEP})")
    kind = meta.get("kind")
    tables = {f.table for f in entry.files}
    if kind == "run" or "runs" in tables:
        found += _run_meta_problems(entry)
    if kind == "probe" and not is_name(meta.get("probe_id")):
        found.append(f"its probe {str(meta.get('probe_id'))[:60]!r} breaks the name rule")
    if kind == "scalars" and not (isinstance(meta.get("block"), int) and 0 <= meta["block"] <= MAX_STEP):
        found.append(f"its scalars block {str(meta.get('block'))[:30]} is not a block number")
    return found


def _run_meta_problems(entry: CommitEntry) -> list[str]:
    meta = entry.meta
    if meta.get("kind") != "run" or not isinstance(meta.get("run"), dict):
        return ["it holds a runs row but its meta is not a run's (kind: run, run: {...})"]
    run = meta["run"]
    found = []
    for field, expected in (("run_id", entry.run_id), ("suite", entry.suite), ("model", entry.model)):
        if run.get(field) != expected:
            found.append(
                f"its meta run's {field} {str(run.get(field))[:60]!r} is not the task's {expected!r}"
            )
    if entry.task_id != f"run.{entry.run_id}":
        found.append(f"a run's task is run.<run_id>, not {entry.task_id!r}")
    if run.get("kind") not in RUN_KINDS:
        found.append(f"its run kind {str(run.get('kind'))[:30]!r} is not one of {', '.join(RUN_KINDS)}")
    if run.get("status") not in RUN_STATUSES:
        found.append(
            f"its run status {str(run.get('status'))[:30]!r} is not one of {', '.join(RUN_STATUSES)}"
        )
    for field in ("started_at", "ended_at"):
        value = run.get(field)
        if value is None and field == "ended_at":
            continue
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            found.append(f"its run's {field} {str(value)[:40]!r} is not a time")
    known = set(TABLES["runs"].file_schema().names)  # a run's meta is its row (warehouse.runs.Run's fields)
    unknown = sorted(set(run) - known)
    missing = sorted({"run_id", "suite", "model", "kind"} - set(run))
    if unknown or missing:
        found.append(f"its meta run has unknown fields {unknown} / lacks {missing}")
    for field in ("pid", "seed", "job_num"):
        value = run.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            found.append(f"its run's {field} {str(value)[:30]!r} is not an integer")
    return found


def rows_agree_with_meta(entry: CommitEntry, table: str, rows: pa.Table) -> list[str]:
    """What the task's rows of ``table`` say that its meta contradicts."""
    meta, found = entry.meta, []
    if not rows.num_rows:
        return found
    kind = meta.get("kind")
    if kind == "extract" and "step" in rows.column_names and isinstance(meta.get("step"), int):
        other = sorted(set(rows.column("step").to_pylist()) - {meta["step"]})
        if other:
            found.append(f"{table} rows of step {other[0]} in a task of step {meta['step']}")
    if kind == "extract" and table == "checkpoints":
        for column in ("revision", "probe_id"):
            if column in meta and set(rows.column(column).to_pylist()) - {meta[column]}:
                found.append(f"a checkpoints row whose {column} is not the task's {meta[column]!r}")
    if (
        kind == "probe"
        and table == "probes"
        and set(rows.column("probe_id").to_pylist()) - {meta.get("probe_id")}
    ):
        found.append(f"a probes row of another probe than the task's {meta.get('probe_id')!r}")
    if kind == "scalars" and table == "scalars" and isinstance(meta.get("block"), int):
        blocks = set(pc.divide(rows.column("step"), SCALARS_BLOCK).to_pylist()) - {meta["block"]}
        if blocks:
            found.append(f"scalars of block {sorted(blocks)[0]} in the task of block {meta['block']}")
    if kind == "run" and table == "runs" and isinstance(meta.get("run"), dict):
        row = rows.to_pylist()[0]
        for column in ("kind", "status", "host", "pid"):
            if row.get(column) != meta["run"].get(column):
                found.append(f"its runs row's {column} {str(row.get(column))[:40]!r} differs from its meta's")
        if rows.num_rows != 1:
            found.append(f"{rows.num_rows} runs rows in one run's task")
    return found
