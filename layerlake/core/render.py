"""Tables for people and for files: one renderer for every command that prints or saves a result.

``rich_table`` shows the first and last rows of an Arrow table and the columns that fit the terminal;
``write_table`` writes CSV (nested values as JSON text), JSON or Parquet; ``print_error`` prints a
``LayerlakeError``. Values from data are always shown as plain text, never interpreted as markup.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table
from rich.text import Text

from layerlake.core.errors import LayerlakeError

MAX_ROWS = 20  # head + tail shown; the files hold every row
MAX_COLUMNS = 14
MAX_CELL = 40
MAX_TEXT = 24  # what a text column asks for when deciding which columns fit
MIN_TEXT = 10  # the narrowest a text column folds to
MIN_HEADER = 8  # a number column's header folds down to this width


def cell(value: object, digits: int = 4, max_cell: int | None = MAX_CELL) -> str:
    """One value as short text: floats to ``digits`` significant digits, text longer than ``max_cell``
    cut with an ellipsis (None: never cut)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.{digits}g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(cell(v, digits) for v in value[:4]) + (", ..." if len(value) > 4 else "") + "]"
    else:
        text = str(value)
    return text if max_cell is None or len(text) <= max_cell else text[: max_cell - 1] + "…"


def rich_table(
    table: pa.Table,
    title: str = "",
    width: int = 120,
    max_rows: int = MAX_ROWS,
    hoist_constants: bool = True,
    digits: int = 4,
    max_cell: int | None = MAX_CELL,
) -> Table:
    """The first and last rows of ``table`` (``max_rows`` in all) and the columns that fit ``width``.

    With ``hoist_constants``, columns holding one value throughout move to the title. Numbers are never
    cut, text may be. Every header and cell is plain text (``[/x]`` in data stays ``[/x]``).
    """
    constant = constant_columns(table) if hoist_constants else {}
    varying = [c for c in table.column_names if c not in constant][:MAX_COLUMNS]
    if constant:
        title += ("\n" if title else "") + ", ".join(f"{c}={cell(v)}" for c, v in constant.items())
    selected = table.select(varying)
    if table.num_rows <= max_rows:
        shown = selected.to_pylist()
    else:  # the first rows, a gap marker, the last rows: slices only, never the whole result
        tail = max_rows // 4
        ends = selected.slice(table.num_rows - tail).to_pylist() if tail else []
        shown = [*selected.slice(0, max_rows - tail).to_pylist(), None, *ends]
    texts = {c: [cell(r[c], digits, max_cell) for r in shown if r is not None] for c in varying}
    columns = fit_columns(table, varying, texts, width)
    hidden = table.num_columns - len(constant) - len(columns)
    view = Table(title=Text(title) if title else None, caption=Text(_caption(table, hidden, max_rows)))
    for name, need in columns:
        if _numeric(table, name):
            view.add_column(Text(name), justify="right", overflow="fold", min_width=need)
        else:  # text columns share what numbers leave of the width, folding long values onto more lines
            view.add_column(Text(name), overflow="fold", min_width=min(need, MIN_TEXT))
    for row in shown:
        view.add_row(
            *(
                [Text("⋮")] * len(columns)
                if row is None
                else [Text(cell(row[c], digits, max_cell)) for c, _ in columns]
            )
        )
    return view


def fit_columns(
    table: pa.Table, names: list[str], texts: dict[str, list[str]], width: int
) -> list[tuple[str, int]]:
    """The columns shown, in order, with the width each needs: all of them when text columns can fold
    into what numbers leave (at least ``MIN_TEXT`` characters each); else the leading ones that fit."""
    shown, used = [], 1
    for name in names:
        values = max([0] + [len(t) for t in texts[name]])
        if _numeric(table, name):  # the values never fold; a long header may
            need = least = max(values, min(len(name), MIN_HEADER))
        else:
            need, least = min(max(values, len(name)), MAX_TEXT), min(max(values, len(name)), MIN_TEXT)
        if used + least + 3 > width and shown:
            break
        shown.append((name, need))
        used += least + 3
    return shown


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


def _caption(table: pa.Table, hidden: int, max_rows: int) -> str:
    text = f"{table.num_rows} rows"
    if table.num_rows > max_rows:
        text += f" (showing {max_rows})"
    if hidden:
        text += f"; {hidden} more columns in the files"
    return text


def print_table(
    table: pa.Table,
    title: str = "",
    console: Console | None = None,
    max_rows: int = MAX_ROWS,
    hoist_constants: bool = True,
    digits: int = 4,
    max_cell: int | None = MAX_CELL,
) -> None:
    console = console or Console()
    console.print(rich_table(table, title, console.width, max_rows, hoist_constants, digits, max_cell))


def csv_ready(table: pa.Table) -> pa.Table:
    """``table`` with list and struct columns as JSON text (CSV holds scalars only)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            texts = [
                None if v is None else json.dumps(_json_safe(v)) for v in table.column(index).to_pylist()
            ]
            table = table.set_column(index, field.name, pa.array(texts, pa.string()))
    return table


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def write_table(table: pa.Table, fmt: str, sink: BinaryIO) -> None:
    """Write ``table`` to the binary stream ``sink`` as ``csv``, ``json`` or ``parquet``."""
    if fmt == "csv":
        pacsv.write_csv(csv_ready(table), sink)
    elif fmt == "json":
        text = json.dumps([_json_safe(r) for r in table.to_pylist()], default=str, indent=1)
        sink.write((text + "\n").encode())
    elif fmt == "parquet":
        pq.write_table(table, sink, compression="zstd")
    else:
        raise ValueError(f"unknown format {fmt!r}")
    sink.flush()


def save(table: pa.Table, folder: Path, stem: str = "result") -> tuple[Path, Path]:
    """Write ``<folder>/<stem>.parquet`` and ``<folder>/<stem>.csv``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    parquet, csv = folder / f"{stem}.parquet", folder / f"{stem}.csv"
    pq.write_table(table, parquet)
    pacsv.write_csv(csv_ready(table), csv)
    return parquet, csv


def print_error(error: LayerlakeError) -> None:
    """``error: <message>`` and ``fix: <fix>`` on stderr; text from data is never read as markup."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(Text.assemble(("error: ", "bold red"), error.message))
    if error.fix:
        console.print(Text.assemble(("fix: ", "bold"), error.fix))
