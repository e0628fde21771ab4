"""Tables for people and for files: one renderer for every command that prints or saves a result.

``rich_table`` shows the first and last rows of an Arrow table laid out to fit the terminal (key columns
always visible: ``layout``);
``write_stream`` writes a stream of Arrow batches as CSV (nested values as JSON text), JSON or Parquet; ``print_error`` prints a
``LayerlakeError``. Values from data are always shown as plain text, never interpreted as markup.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console, Group, RenderableType
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
    if isinstance(value, datetime):
        text = timestamp_text(value)
    elif isinstance(value, float):
        text = f"{value:.{digits}g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(cell(v, digits) for v in value[:4]) + (", ..." if len(value) > 4 else "") + "]"
    elif isinstance(value, bytes):
        text = _json_text(value)
    else:
        text = str(value)
    return text if max_cell is None or len(text) <= max_cell else text[: max_cell - 1] + "…"


def timestamp_text(value: datetime) -> str:
    """A time as people read it, to the second: ``2025-01-31 14:05:09 UTC`` (no microseconds)."""
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    offset = value.utcoffset()
    if offset is None:
        return text
    return f"{text} UTC" if not offset else f"{text}{value.strftime('%z')}"


# Columns that say which row this is (``model_a``, ``step_b`` ... count too): kept on screen in every
# panel, never dropped for descriptive text. Number columns are values and are never dropped either.
IDENTITY = frozenset(
    ("suite", "model", "source", "site", "layer", "head", "step", "tensor", "matrix", "estimator", "kernel",
     "metric", "revision", "view", "column", "macro", "audit", "table_name", "task_id", "staging view")
)  # fmt: skip
STATES = frozenset(("status", "kind"))  # text that is never dropped, though no identity (not repeated)
# Where a long name may break onto the next line: after these (``embedded-`` / ``llama-s``), never inside
# a word; a piece longer than its column is the only thing ever cut.
BREAK_AFTER = "-_./:, "
_PIECES = re.compile(rf"[^{re.escape(BREAK_AFTER)}]*[{re.escape(BREAK_AFTER)}]+|[^{re.escape(BREAK_AFTER)}]+")


def rich_table(
    table: pa.Table,
    title: str = "",
    width: int = 120,
    max_rows: int = MAX_ROWS,
    hoist_constants: bool = True,
    digits: int = 4,
    max_cell: int | None = MAX_CELL,
    total_rows: int | None = None,
    more_rows: str = "",
) -> RenderableType:
    """The first and last rows of ``table`` (``max_rows`` in all), laid out to fit ``width``.

    With ``hoist_constants``, columns holding one value throughout move to the title. Key columns (the
    identity columns of ``IDENTITY``, the first column, and every number column) always show: when
    they and the descriptive text columns do not fit, descriptive columns are dropped from the right
    (the caption says how many); when the key columns alone do not fit, the value columns are split
    over several tables that each repeat the identity columns; when not even that fits, each row is
    printed as a block of ``column  value`` lines. Numbers are never cut; text folds. Every header and
    cell is plain text (``[/x]`` in data stays ``[/x]``). ``total_rows``: the row count of a result of
    which ``table`` holds only the first ``max_rows - max_rows // 4`` and the last ``max_rows // 4``.
    ``more_rows``: how to see the rows not shown (the command's option), added to the caption when
    rows are left out. A text column that tells shown rows apart is a key column too: dropping it
    would make two rows look the same. Dropped columns are named in the caption; names fold only
    after ``-``, ``_``, ``.``, ``/`` (``BREAK_AFTER``), never inside a word.
    """
    total = table.num_rows if total_rows is None else total_rows
    constant = constant_columns(table) if hoist_constants else {}
    varying = [c for c in table.column_names if c not in constant][:MAX_COLUMNS]
    if constant:
        title += ("\n" if title else "") + ", ".join(f"{c}={cell(v)}" for c, v in constant.items())
    selected = table.select(varying)
    if total <= max_rows:
        shown = selected.to_pylist()
    else:  # the first rows, a gap marker, the last rows: slices only, never the whole result
        tail = max_rows // 4
        ends = selected.slice(table.num_rows - tail).to_pylist() if tail else []
        shown = [*selected.slice(0, max_rows - tail).to_pylist(), None, *ends]
    texts = {c: [cell(r[c], digits, max_cell) for r in shown if r is not None] for c in varying}
    sizes = {c: _size(table, c, texts[c]) for c in varying}
    panels, dropped = layout(table, varying, sizes, width, telling(table, varying))
    hidden = [c for c in table.column_names if c not in constant and c not in varying]
    if not panels:  # every varying column, one per line
        return _records(
            table, varying, shown, title, _caption(total, hidden, max_rows, more_rows), digits, max_cell
        )
    caption = _caption(total, hidden + dropped, max_rows, more_rows)
    views = []
    for index, panel in enumerate(panels):
        last = index == len(panels) - 1
        part = f" (columns {index + 1} of {len(panels)})" if len(panels) > 1 else ""
        views.append(
            _view(table, panel, shown, (title + part) if title or part else "", caption if last else "",
                  digits, max_cell)
        )  # fmt: skip
    return views[0] if len(views) == 1 else Group(*views)


def _view(
    table: pa.Table,
    columns: list[tuple[str, int]],
    shown: list[dict | None],
    title: str,
    caption: str,
    digits: int,
    max_cell: int | None,
) -> Table:
    view = Table(title=Text(title) if title else None, caption=Text(caption) if caption else None)
    for name, size in columns:
        header = Text(fold_header(name, size))
        if _numeric(table, name):
            view.add_column(header, justify="right", overflow="fold", width=size)
        else:  # text folds onto more lines within its width
            view.add_column(header, overflow="fold", width=size)
    numeric = {c for c, _ in columns if _numeric(table, c)}
    for row in shown:
        view.add_row(
            *(
                [Text("⋮")] * len(columns)
                if row is None
                else [
                    Text(text if c in numeric else fold_text(text, size))
                    for (c, size), text in ((col, cell(row[col[0]], digits, max_cell)) for col in columns)
                ]
            )
        )
    return view


def _records(
    table: pa.Table,
    names: list[str],
    shown: list[dict | None],
    title: str,
    caption: str,
    digits: int,
    max_cell: int | None,
) -> RenderableType:
    """Each row as a block of ``column  value`` lines: for tables too wide for any layout in columns."""
    parts: list[RenderableType] = [Text(title)] if title else []
    label = max(len(n) for n in names)
    for row in shown:
        if row is None:
            parts.append(Text("⋮"))
            continue
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, width=label)
        grid.add_column(overflow="fold")
        for name in names:
            grid.add_row(Text(name), Text(cell(row[name], digits, max_cell)))
        parts += [Text("---", style="dim"), grid]
    parts.append(Text(caption))
    return Group(*parts)


def fold_header(name: str, width: int) -> str:
    """``name`` broken into lines of at most ``width`` characters, after underscores where it can be
    (``numerical_rank`` at 10 -> ``numerical_`` / ``rank``); a longer piece is cut."""
    return _fold(re.findall(r"[^_]*_|[^_]+", name), width)


def fold_text(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters after ``BREAK_AFTER`` characters
    (``embedded-llama-s`` at 10 -> ``embedded-`` / ``llama-s``), each existing line on its own; only a
    piece longer than ``width`` is cut."""
    return "\n".join(_fold(_PIECES.findall(line), width) if len(line) > width else line
                     for line in text.split("\n"))  # fmt: skip


def longest_piece(text: str) -> int:
    """The width below which ``fold_text`` would have to cut inside a word."""
    return max((len(p.rstrip(" ")) for p in _PIECES.findall(text)), default=0)


def _fold(pieces: list[str], width: int) -> str:
    lines, line = [], ""
    for piece in pieces:
        while len(piece) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece.rstrip(" ")) > width:
            lines.append(line.rstrip(" "))
            line = ""
        line += piece
    line = line.rstrip(" ")
    return "\n".join([*lines, line] if line else lines)


def _size(table: pa.Table, name: str, texts: list[str]) -> tuple[int, int, int]:
    """``(least, need, most)``: the narrowest a column may be, the width it asks for, and the width of
    its longest value (what a long text column may use when the table has room). A number column's
    header folds after an underscore (``first_`` / ``loss``), or at ``MIN_HEADER`` characters."""
    values = max([0] + [len(t) for t in texts])
    if _numeric(table, name):  # the values never fold; a long header may
        need = max(values, len(name))
        return max(values, min(len(name), MIN_HEADER)), need, need
    need = max(min(values, MAX_TEXT), min(len(name), MAX_TEXT), 1)
    piece = max([0] + [longest_piece(t) for t in texts])  # narrower would cut inside a word
    least = max(min(need, MIN_TEXT), piece)
    return least, max(need, least), max(need, values)


def _comfortable(table: pa.Table, name: str, size: tuple[int, int, int]) -> tuple[int, int, int]:
    """``size`` with a number column's least width kept to its header's longest underscore piece, so
    ``numerical_rank`` folds as ``numerical_`` / ``rank`` rather than ``numerica`` / ``l_rank``."""
    if not _numeric(table, name):
        return size
    piece = max(len(p) for p in re.findall(r"[^_]*_|[^_]+", name))
    return max(size[0], min(piece, size[1])), size[1], size[2]


def is_key(table: pa.Table, name: str, first: str, telling: frozenset[str] = frozenset()) -> bool:
    """A column always shown: an identity column, the first column, a number column, a run's ``status``
    or ``kind`` (what `layerlake runs` is read for), or one of ``telling`` (text without which two shown
    rows would look the same)."""
    return name == first or _identity(name) or _numeric(table, name) or name in telling or name in STATES


def telling(table: pa.Table, names: list[str]) -> frozenset[str]:
    """The columns of ``names`` that cannot go without two rows of ``table`` that differ in their labels
    looking the same (a run_id when a model has several runs): walking from the right (the order
    descriptive columns are dropped in), a column is kept when the rows differ in it but not in the labels
    still kept without it. Labels are the text and identity columns; a number that is a value (``cka``)
    tells no row apart (two runs' rows with different values must still say which run is which)."""
    labels = [
        n
        for n in names
        if (_identity(n) or not _numeric(table, n)) and not pa.types.is_nested(table.schema.field(n).type)
    ]
    if table.num_rows < 2 or not labels:
        return frozenset()

    values = {n: table.column(n).to_pylist() for n in labels}  # in Python: Arrow's group_by warns on the
    # buffers DuckDB hands over ("An input buffer was poorly aligned"), a line per batch on stderr

    def distinct(columns: list[str]) -> int:
        return len(set(zip(*(values[c] for c in columns), strict=True))) if columns else 1

    everything = distinct(labels)
    kept, needed = list(labels), set()
    for name in reversed(labels):
        trial = [c for c in kept if c != name]
        if distinct(trial) < everything:
            needed.add(name)
        else:
            kept = trial
    return frozenset(needed)


def _identity(name: str) -> bool:
    base = re.sub(r"_(a|b|x|y)$", "", name)
    return base in IDENTITY or base.removeprefix("previous_").removeprefix("reference_") in IDENTITY


def layout(
    table: pa.Table,
    names: list[str],
    sizes: dict[str, tuple[int, int, int]],
    width: int,
    telling: frozenset[str] = frozenset(),
) -> tuple[list[list[tuple[str, int]]], list[str]]:
    """``(panels, dropped)``: the columns of each table to print, with their widths, and the descriptive
    columns left out. One panel when the key columns fit; several (each repeating the identity columns)
    when they do not; none when even the identity columns and one value do not (print records)."""
    if not names:
        return [], []
    first = names[0]
    keys = [n for n in names if is_key(table, n, first, telling)]
    comfortable = {n: _comfortable(table, n, s) for n, s in sizes.items()}
    if _least(names, comfortable) <= width:  # everything fits with headers folded at underscores
        return [_widen(names, comfortable, width)], []
    if _least(keys, comfortable) <= width or _least(keys, sizes) > width:
        sizes = comfortable  # else the key columns fit only with headers folded harder: fold them
    keep = list(names)
    dropped: list[str] = []
    descriptive = [n for n in names if n not in keys]
    while _least(keep, sizes) > width and descriptive:  # drop descriptive text, rightmost first
        gone = descriptive.pop()
        keep.remove(gone)
        dropped.insert(0, gone)
    if _least(keep, sizes) <= width:
        return [_widen(keep, sizes, width)], dropped
    identity = [n for n in keep if n == first or _identity(n) or n in telling]
    values = [n for n in keep if n not in identity]
    panels: list[list[str]] = []
    for name in values:
        if panels and _least([*panels[-1], name], sizes) <= width:
            panels[-1].append(name)
        elif _least([*identity, name], sizes) <= width:
            panels.append([*identity, name])
        else:
            return [], dropped
    ordered = [[n for n in keep if n in panel] for panel in panels] or [identity]
    return [_widen(panel, sizes, width) for panel in ordered], dropped


def _least(names: list[str], sizes: dict[str, tuple[int, int, int]]) -> int:
    """The width of a table of ``names`` at their least widths: a border, then each column's padding and rule."""
    return 1 + sum(sizes[n][0] + 3 for n in names)


def _widen(names: list[str], sizes: dict[str, tuple[int, int, int]], width: int) -> list[tuple[str, int]]:
    """Each column at its least width, then widened towards what it asks for, left to right, then long
    text towards its longest value, while the total stays within ``width``."""
    spare = width - _least(names, sizes)
    widths = {name: sizes[name][0] for name in names}
    for target in (1, 2):
        for name in names:
            extra = min(max(sizes[name][target] - widths[name], 0), max(spare, 0))
            widths[name] += extra
            spare -= extra
    return [(name, widths[name]) for name in names]


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


def _caption(total: int, hidden: list[str], max_rows: int, more_rows: str = "") -> str:
    text = f"{total} rows"
    if total > max_rows:
        text += f" (showing {max_rows}" + (f"; {more_rows}" if more_rows else "") + ")"
    if hidden:
        shown = ", ".join(hidden[:6]) + (", ..." if len(hidden) > 6 else "")
        text += f"; {len(hidden)} more columns not shown ({shown})"
    return text


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique the way DuckDB's ``CREATE TABLE AS`` makes them: a repeated name gets
    the first free ``_1``, ``_2`` ... suffix (``a, a, a_1, a`` -> ``a, a_1, a_1_1, a_2``). A result with
    two columns of one name (``select 1 as a, 2 as a``) is valid SQL; rows keyed by name (JSON, the
    terminal table, Parquet readers) need them apart."""
    used: set[str] = set()
    out = []
    for name in names:
        candidate, i = name, 1
        while candidate in used:
            candidate, i = f"{name}_{i}", i + 1
        used.add(candidate)
        out.append(candidate)
    return out


def with_unique_names(table: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``table`` with its column names made unique (``unique_names``); the same object when they are."""
    names = unique_names(table.column_names)
    return table if names == table.column_names else table.rename_columns(names)


def print_table(
    table: pa.Table,
    title: str = "",
    console: Console | None = None,
    max_rows: int = MAX_ROWS,
    hoist_constants: bool = True,
    digits: int = 4,
    max_cell: int | None = MAX_CELL,
    total_rows: int | None = None,
    more_rows: str = "",
) -> None:
    console = console or Console()
    table = with_unique_names(table)
    console.print(
        rich_table(
            table, title, console.width, max_rows, hoist_constants, digits, max_cell, total_rows, more_rows
        )
    )


def csv_ready(table: pa.Table) -> pa.Table:
    """``table`` with list and struct columns as JSON text and binary columns as ``\\x`` + hex text
    (PostgreSQL's bytea output): CSV holds text, and bytes are not text."""
    for index, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            column = table.column(index).to_pylist()
            texts = [None if v is None else json.dumps(json_safe(v), default=_json_text) for v in column]
            table = table.set_column(index, field.name, pa.array(texts, pa.string()))
        elif is_binary(field.type):
            table = table.set_column(index, field.name, hex_texts(table.column(index)))
    return table


def is_binary(type_: pa.DataType) -> bool:
    return (
        pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_)
    )


def hex_texts(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Bytes as ``\\x0a1b...`` text (None stays None)."""
    return pa.array([None if v is None else "\\x" + v.hex() for v in column.to_pylist()], pa.string())


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None, in lists and dicts too (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def json_rows(table: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """The rows of ``table`` as dicts ready for JSON: NaN and infinities become None column by column in
    Arrow (no per-value Python check: 0.7 s -> 0.03 s over the 31,184 rows of rank trajectories on the
    full-study warehouse); only nested columns go through ``json_safe`` value by value."""
    columns = [
        pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
        if pa.types.is_floating(column.type)
        else column
        for column in table.columns
    ]
    if not columns:
        return [{} for _ in range(table.num_rows)]
    rows = pa.Table.from_arrays(columns, names=unique_names(table.column_names)).to_pylist()
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    for row in rows if nested else ():
        for name in nested:
            row[name] = json_safe(row[name])
    return rows


def _json_text(value: Any) -> str:
    """What JSON has no type for, as text: bytes as ``\\x`` + hex (as in CSV), the rest by ``str``."""
    return "\\x" + value.hex() if isinstance(value, bytes) else str(value)


def write_stream(batches: pa.RecordBatchReader, fmt: str, sink: BinaryIO) -> None:
    """Write the batches of ``batches`` to ``sink`` as ``csv``, ``json`` or ``parquet``, one at a time
    (memory holds one batch)."""
    if fmt == "csv":
        writer = None
        for batch in batches:
            part = csv_ready(pa.Table.from_batches([batch], batches.schema))
            if writer is None:
                writer = pacsv.CSVWriter(sink, part.schema)
            writer.write_table(part)
        if writer is None:  # no rows: the header alone
            pacsv.write_csv(csv_ready(batches.schema.empty_table()), sink)
        else:
            writer.close()
    elif fmt == "json":
        sink.write(b"[")
        first = True
        for batch in batches:
            for row in json_rows(batch):
                sink.write((("\n" if first else ",\n") + json.dumps(row, default=_json_text)).encode())
                first = False
        sink.write(b"\n]\n")
    elif fmt == "parquet":
        with pq.ParquetWriter(sink, batches.schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(batch)
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
