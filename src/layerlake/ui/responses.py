"""The UI's answers: a status, a content type, a body (what ``UiApp.respond`` returns for every request)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from layerlake.core.errors import LayerlakeError
from layerlake.core.render import json_rows, timestamp_text, unique_names


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def with_headers(self, headers: dict[str, str]) -> Response:
        return Response(self.status, self.content_type, self.body, {**self.headers, **headers})


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as JSON that every parser reads: a float that is not finite (a config's ``inf``, a
    diverged run's last loss) is sent as the text ``nan``, ``inf`` or ``-inf`` (``finite``); Python's
    default would write the bare tokens ``NaN`` and ``Infinity``, which are not JSON."""
    try:
        text = json.dumps(data, default=_json_default, allow_nan=False)
    except ValueError:  # rare: only then is every value looked at
        text = json.dumps(finite(data), default=_json_default, allow_nan=False)
    return Response(status, "application/json", text.encode())


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth, replaced by its text (``nan``,
    ``inf``, ``-inf``). A figure's data has them as null already (``core.render.json_rows``: the point is
    not drawn); a table shows the text."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def console_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a SQL console page: ``json_rows``, but a float that is not finite is its text (nan,
    inf, -inf), not null, so that the console tells it from NULL."""
    rows = json_rows(table)
    for name, column in zip(unique_names(table.column_names), table.columns, strict=True):
        if not pa.types.is_floating(column.type):
            continue
        odd = pc.and_(pc.is_valid(column), pc.invert(pc.is_finite(column)))
        for i in pc.indices_nonzero(pc.fill_null(odd, False)).to_pylist():
            rows[i][name] = finite(column[i].as_py())
    return rows


def error_response(error: LayerlakeError, status: int = 400) -> Response:
    return json_response({"error": error.message, "fix": error.fix}, status)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return timestamp_text(value)  # to the second, as the terminal shows it
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def html_response(html: str) -> Response:
    return Response(200, "text/html; charset=utf-8", html.encode())
