"""The UI's answers: a status, a content type, a body (what ``UiApp.respond`` returns for every request)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from layerlake.core.errors import LayerlakeError
from layerlake.core.render import json_safe, timestamp_text


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as JSON that every browser parses: a NaN or an infinity (a diverged run's last loss) is
    null, as in the tables (``core.render.json_safe``); the check costs nothing when there is none."""
    try:
        text = json.dumps(data, default=_json_default, allow_nan=False)
    except ValueError:
        text = json.dumps(json_safe(data), default=_json_default, allow_nan=False)
    return Response(status, "application/json", text.encode())


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
