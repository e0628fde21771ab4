"""What a task may hold: the rows and the manifest meta that layerlake's own writers write, and nothing
else. ``share import`` refuses a task that breaks one of these rules (``warehouse.share.verify``), and
``layerlake check`` names a task on disk whose manifest meta breaks them (a reader then skips what it
cannot read, never failing for everyone).

Rules, beyond the column types of ``warehouse/schema.py``:

- names (suite, model, run_id, task id, probe_id, site, matrix) obey the name rule of the command line
  (``warehouse.layout.check_name``); a row's suite, model and run_id are its task's; a tag's key obeys
  ``TAG_KEY``, a tag's value and a note hold at most ``MAX_TEXT`` characters (a note at least one that
  is not blank);
- enumerated values are members of their enum (run kind and status, site, matrix, tensor, kernel,
  estimator, position rule);
- steps lie in 0..``MAX_STEP``, layers and heads in 0..``MAX_INDEX``, sizes (n, d, rows, cols) in
  1..``MAX_SIZE``; a list or a byte string has the length its sizes say (singular values: at most the
  smaller; a packed Gram: n(n+1)/2; activations: n x d float16);
- the meta of a task agrees with its rows: a run task (``kind: run``) is ``run.<run_id>`` and its meta
  is a whole run equal to its row; a probe task's rows are of its probe; an extraction task's rows are
  all of its step (and revision and probe); a scalars block's steps fall in its block; an annotations
  task (``kind: annotations``, ``warehouse.run_admin``) is ``annotations.<run_id>``, holds only
  ``run_tags`` and ``run_notes`` rows (no other task holds any), as many as its meta counts;
- ``archived``, where a task's meta has it, is ``true`` (``layerlake runs archive``).

Each row's key (``warehouse/schema.py``) is unique across the whole warehouse: ``share import`` and
``check``'s ``duplicate_keys`` audit hold every table to it, these tables included.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from layerlake.core.choices import Estimator, Kernel, Matrix, PositionRule, RunKind, RunStatus, Site, Tensor
from layerlake.core.limits import MAX_STEP, MAX_TOKENS
from layerlake.warehouse import schema
from layerlake.warehouse.layout import MAX_NAME, NAME, annotations_task_id
from layerlake.warehouse.manifest import ARCHIVED, CommitEntry

MAX_INDEX = 100_000  # layers and heads
MAX_SIZE = 1 << 20  # rows, columns and probe positions of one matrix
SCALARS_BLOCK = 1000  # steps per scalars task (etl.track.SCALAR_BLOCK)
RUN_KINDS = RunKind.values()
RUN_STATUSES = RunStatus.values()
RUN_FIELDS = frozenset(c.name for c in schema.RUNS.all_columns)  # a run meta's fields (warehouse.runs.Run)
TAG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")  # a tag's name (layerlake runs tag RUN key=value)
MAX_TEXT = 10_000  # characters of a tag value or a note
ANNOTATIONS = "annotations"  # the meta kind of a run's tags and notes task (warehouse.run_admin)
ANNOTATION_COUNTS = {"run_tags": "tags", "run_notes": "notes"}  # table -> the meta key counting its rows
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
          "tokens_seen": (0, MAX_TOKENS), "n_params": (0, 1 << 50), "n_layers": (1, MAX_INDEX),
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
    found += _annotation_problems(table, rows)
    return found


def _annotation_problems(table: str, rows: pa.Table) -> list[str]:
    """Tags named by ``TAG_KEY``, tag values and notes of at most ``MAX_TEXT`` characters (notes not
    blank): what ``layerlake runs tag`` and ``runs note`` accept."""
    found = []
    if table == "run_tags":
        bad = sorted({k for k in rows.column("key").to_pylist() if k is None or not TAG_KEY.fullmatch(k)})
        if bad:
            found.append(f"tag key {str(bad[0])[:60]!r} that is not a tag name ({TAG_KEY.pattern})")
        if (pc.max(pc.utf8_length(rows.column("value"))).as_py() or 0) > MAX_TEXT:
            found.append(f"a tag value over {MAX_TEXT} characters")
    if table == "run_notes":
        lengths = pc.utf8_length(pc.utf8_trim_whitespace(rows.column("note")))
        least, most = (v.as_py() for v in pc.min_max(lengths).values())
        if least is not None and (least == 0 or most > MAX_TEXT):
            found.append(f"a note that is blank or over {MAX_TEXT} characters")
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


# A task's meta (provenance, a run's config and summary) is a few KB; every command reads every manifest
# line, so a meta larger than this (from a crafted shared dataset) is refused rather than stored.
MAX_META_BYTES = 1 << 20


def meta_problems(entry: CommitEntry) -> list[str]:
    """What is wrong with the manifest entry of a task by itself (no file read)."""
    found = []
    for what, value in (("task id", entry.task_id), ("suite", entry.suite), ("model", entry.model),
                        ("run id", entry.run_id)):  # fmt: skip
        if not is_name(value):
            found.append(f"its {what} {str(value)[:60]!r} breaks the name rule")
    meta = entry.meta
    size = len(json.dumps(meta, separators=(",", ":"), default=str))
    if size > MAX_META_BYTES:  # a shared task's 50 MB string was copied into the local manifest
        found.append(
            f"its meta is {size:,} bytes of JSON, more than the {MAX_META_BYTES:,} a task's meta may take"
        )
    step = meta.get("step")
    if step is not None and (
        not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP
    ):
        found.append(f"has an impossible step {str(step)[:30]} (not in 0..{MAX_STEP})")
    kind = meta.get("kind")
    tables = {f.table for f in entry.files}
    if kind == "run" or "runs" in tables:
        found += _run_meta_problems(entry)
    if kind == ANNOTATIONS or tables & set(ANNOTATION_COUNTS):
        found += _annotations_meta_problems(entry, tables)
    if ARCHIVED in meta and meta[ARCHIVED] is not True:
        found.append(f"its {ARCHIVED} mark is {str(meta[ARCHIVED])[:30]!r}, not true")
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
    unknown = sorted(set(run) - RUN_FIELDS)
    missing = sorted({"run_id", "suite", "model", "kind"} - set(run))
    if unknown or missing:
        found.append(f"its meta run has unknown fields {unknown} / lacks {missing}")
    for field in ("pid", "seed", "job_num"):
        value = run.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            found.append(f"its run's {field} {str(value)[:30]!r} is not an integer")
    return found


def _annotations_meta_problems(entry: CommitEntry, tables: set[str]) -> list[str]:
    meta = entry.meta
    if meta.get("kind") != ANNOTATIONS:
        return [f"it holds {' and '.join(sorted(tables & set(ANNOTATION_COUNTS)))} rows but its meta kind "
                f"is {str(meta.get('kind'))[:30]!r}, not {ANNOTATIONS!r}"]  # fmt: skip
    found = []
    if entry.task_id != annotations_task_id(entry.run_id):
        found.append(
            f"a run's tags and notes task is {annotations_task_id('<run_id>')}, not {entry.task_id!r}"
        )
    other = sorted(tables - set(ANNOTATION_COUNTS))
    if other:
        found.append(f"a run's tags and notes task holds {', '.join(other)} rows")
    for key in ANNOTATION_COUNTS.values():
        count = meta.get(key)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            found.append(f"its {key} count {str(count)[:30]!r} is not a number of rows")
    return found


def rows_agree_with_meta(entry: CommitEntry, table: str, rows: pa.Table) -> list[str]:
    """What the task's rows of ``table`` say that its meta contradicts."""
    meta, found = entry.meta, []
    kind = meta.get("kind")
    count = meta.get(ANNOTATION_COUNTS.get(table, ""))
    if kind == ANNOTATIONS and isinstance(count, int) and rows.num_rows != count:
        found.append(f"{rows.num_rows} {table} rows in a task whose meta counts {count}")
    if not rows.num_rows:
        return found
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
