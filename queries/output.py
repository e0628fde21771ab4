"""Shows and saves a recipe's result: a rich table on the terminal, CSV and Parquet in the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

MAX_ROWS = 20  # head + tail shown; the files hold every row
MAX_COLUMNS = 14
MAX_CELL = 40


def cell(value: object) -> str:
    """One value as short text: floats to 4 significant digits, long text cut with an ellipsis."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(cell(v) for v in value[:4]) + (", ..." if len(value) > 4 else "") + "]"
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def rich_table(table: pa.Table, title: str, width: int = 120) -> Table:
    """The first and last rows of ``table`` (``MAX_ROWS`` in all) and the columns that fit ``width``.

    Columns holding one value throughout move to the title; numbers are never cut, text may be.
    """
    constant = constant_columns(table)
    varying = [c for c in table.column_names if c not in constant][:MAX_COLUMNS]
    if constant:
        title += "\n" + ", ".join(f"{c}={cell(v)}" for c, v in constant.items())
    rows = table.select(varying).to_pylist()
    half = MAX_ROWS // 2
    shown = rows if len(rows) <= MAX_ROWS else [*rows[: half + half // 2], None, *rows[-(half // 2) :]]
    texts = {c: [cell(r[c]) for r in shown if r is not None] for c in varying}
    columns, used = [], 1
    for name in varying:
        need = max([len(name)] + [len(t) for t in texts[name]])
        need = need if _numeric(table, name) else min(need, 24)
        if used + need + 3 > width and columns:
            break
        columns.append((name, need))
        used += need + 3
    view = Table(
        title=escape(title), caption=_caption(table, table.num_columns - len(constant) - len(columns))
    )
    for name, need in columns:
        if _numeric(table, name):
            view.add_column(name, justify="right", no_wrap=True, min_width=need)
        else:
            view.add_column(name, no_wrap=True, overflow="ellipsis", max_width=need)
    for row in shown:
        view.add_row(*(["⋮"] * len(columns) if row is None else [cell(row[c]) for c, _ in columns]))
    return view


def _numeric(table: pa.Table, name: str) -> bool:
    type_ = table.schema.field(name).type
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def constant_columns(table: pa.Table) -> dict[str, object]:
    """Columns holding one value in every row (shown once in the title instead of in every row)."""
    if table.num_rows < 2:
        return {}
    found = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_nested(column.type):
            continue
        if column.null_count in (0, table.num_rows) and len(pc.unique(column)) == 1:
            found[name] = column[0].as_py()
    return found


def _caption(table: pa.Table, hidden: int) -> str:
    text = f"{table.num_rows} rows"
    if table.num_rows > MAX_ROWS:
        text += f" (showing {MAX_ROWS})"
    if hidden:
        text += f"; {hidden} more columns in the files"
    return text


def print_table(table: pa.Table, title: str, console: Console | None = None) -> None:
    console = console or Console()
    console.print(rich_table(table, title, console.width))


def csv_ready(table: pa.Table) -> pa.Table:
    """``table`` with list and struct columns as JSON text (CSV holds scalars only)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            texts = [None if v is None else json.dumps(v) for v in table.column(index).to_pylist()]
            table = table.set_column(index, field.name, pa.array(texts, pa.string()))
    return table


def save(table: pa.Table, folder: Path, stem: str = "result") -> tuple[Path, Path]:
    """Write ``<folder>/<stem>.parquet`` and ``<folder>/<stem>.csv``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    parquet, csv = folder / f"{stem}.parquet", folder / f"{stem}.csv"
    pq.write_table(table, parquet)
    pacsv.write_csv(csv_ready(table), csv)
    return parquet, csv


def distinct(table: pa.Table, column: str) -> list:
    """The distinct values of ``column`` in first-seen order (for plot panels and legends)."""
    return pc.unique(table.column(column)).to_pylist()
