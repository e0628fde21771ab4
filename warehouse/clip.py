"""One page of a statement's answer, cut to a size a browser can show: what the UI's SQL console asks a
sandbox worker (``sandbox.Sandbox.query(..., clip=Clip(...))``) to send instead of the whole answer.

The worker cuts, not the server: ``select repeat('x', 300000000)`` made the server hold 1.4 GB when it
received the whole cell and cut it there. Now the worker, which holds the answer anyway (under the
memory limit), counts every row but sends only the page's, each long text or bytes cell cut with a
marker, each long list cut, and no more rows once the page holds ``page_bytes``: the server receives
at most about ``page_bytes`` whatever the statement makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Clip:
    """Rows ``start`` to ``stop`` (0-based, ``stop`` excluded; the others are only counted), each text
    cell cut after ``cell_chars`` characters (bytes after as many bytes, lists after ``cell_items``
    items), and rows only while the page holds at most ``page_bytes`` bytes (Arrow's)."""

    start: int
    stop: int
    cell_chars: int = 1_000
    cell_items: int = 100
    page_bytes: int = 1 << 20


class Clipper:
    """Applies a ``Clip`` batch by batch as an answer streams; ``summary()`` says what it did."""

    def __init__(self, clip: Clip) -> None:
        self.clip = clip
        self.rows = 0  # every row of the answer, sent or not
        self.sent = 0
        self.sent_bytes = 0
        self.cut_cells = 0
        self.full = False  # a row of the page was left out: the page held page_bytes

    def take(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        """The part of ``batch`` to send (None: nothing of it)."""
        first, self.rows = self.rows, self.rows + batch.num_rows
        lo, hi = max(self.clip.start - first, 0), min(self.clip.stop - first, batch.num_rows)
        if lo >= hi or self.full:
            return None
        page = batch.slice(lo, hi - lo)
        columns = [self._cut(column) for column in page.columns]
        return self._within_budget(pa.RecordBatch.from_arrays(columns, schema=page.schema))

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "sent": self.sent, "cut_cells": self.cut_cells, "page_full": self.full,
            "cell_chars": self.clip.cell_chars, "cell_items": self.clip.cell_items,
            "page_bytes": self.clip.page_bytes,
        }  # fmt: skip

    def _cut(self, column: pa.Array) -> pa.Array:
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return self._cut_text(column)
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return self._cut_sized(column, pc.binary_length(column), self.clip.cell_chars, pc.binary_slice)
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return self._cut_sized(column, pc.list_value_length(column), self.clip.cell_items, pc.list_slice)
        if pa.types.is_struct(kind):  # each field cut as a column of its own
            fields = [self._cut(child) for child in column.flatten()]
            return pa.StructArray.from_arrays(fields, fields=list(kind), mask=column.is_null())
        return column  # numbers, times ...: small; a map, or texts in a list, held by the byte budget

    def _cut_text(self, column: pa.Array) -> pa.Array:
        """Texts longer than ``cell_chars``: their start and ``… (N more characters)``."""
        limit = self.clip.cell_chars
        lengths = pc.utf8_length(column)
        long = pc.greater(lengths, limit)
        n = pc.sum(long).as_py() or 0
        if not n:
            return column
        self.cut_cells += n
        marked = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(column, 0, limit),
            pa.scalar(" … ("),
            pc.cast(pc.subtract(lengths, limit), pa.string()),
            pa.scalar(" more characters)"),
            "",
        )
        return pc.if_else(long, pc.cast(marked, column.type), column)

    def _cut_sized(self, column: pa.Array, lengths: pa.Array, limit: int, head: Any) -> pa.Array:
        """Bytes or lists longer than ``limit``: their first ``limit`` (the answer counts them)."""
        n = pc.sum(pc.greater(lengths, limit)).as_py() or 0
        if not n:
            return column
        self.cut_cells += n
        return pc.cast(head(column, 0, limit), column.type)

    def _within_budget(self, page: pa.RecordBatch) -> pa.RecordBatch | None:
        keep = 0
        for i in range(page.num_rows):  # a page is a hundred rows: sized one by one
            size = page.slice(i, 1).nbytes
            if self.sent_bytes + size > self.clip.page_bytes:
                self.full = True
                break
            self.sent_bytes += size
            keep += 1
        self.sent += keep
        return page.slice(0, keep) if keep else None
