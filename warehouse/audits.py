"""Data-quality audits: the queries of ``audits.sql`` (each returns offending rows) plus file checks.

``audits.sql`` holds one query per audit after a ``-- name: <audit>`` line and a ``-- doc:`` line;
zero rows means the audit passes. File checks (listed files exist with the listed size, and with
``verify_files`` the listed sha256) run in Python over the manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warehouse.errors import QueryError
from warehouse.manifest import latest, manifest_path, read_entries
from warehouse.writer import sha256_file

AUDITS_SQL = Path(__file__).with_name("audits.sql")
_HEADER = re.compile(r"^-- name:\s*(?P<name>\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Audit:
    name: str
    doc: str
    sql: str


def load_audits(path: Path = AUDITS_SQL) -> list[Audit]:
    """The audits of ``path``, in file order."""
    text = path.read_text()
    heads = list(_HEADER.finditer(text))
    audits = []
    for head, following in zip(heads, heads[1:] + [None], strict=True):
        body = text[head.end() : following.start() if following else len(text)]
        doc = " ".join(m.group(1).strip() for m in re.finditer(r"^-- doc:(.*)$", body, re.MULTILINE))
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--")).strip()
        audits.append(Audit(head.group("name"), doc, sql))
    return audits


def run_audit(con: Any, audit: Audit) -> pa.Table:
    """The offending rows of ``audit`` on connection ``con``."""
    try:
        return con.sql(audit.sql).to_arrow_table()
    except duckdb.Error as error:
        raise QueryError(
            f"audit {audit.name!r} failed: {error}", fix="check warehouse/audits.sql against the views"
        ) from error


def file_problems(root: Path, verify_files: bool) -> pa.Table:
    """One row per committed file that is missing, of the wrong size or (``verify_files``) wrong sha256."""
    rows = []
    committed, _ = latest(read_entries(manifest_path(root)))
    for entry in committed.values():
        for f in entry.files:
            path = root / f.path
            problem = None
            if not path.is_file():
                problem = "missing"
            elif path.stat().st_size != f.bytes:
                problem = f"size {path.stat().st_size} != manifest {f.bytes}"
            elif verify_files and sha256_file(path) != f.sha256:
                problem = "sha256 differs from the manifest"
            if problem:
                rows.append(
                    {"task_id": entry.task_id, "table_name": f.table, "path": f.path, "problem": problem}
                )
    names = ("task_id", "table_name", "path", "problem")
    return pa.Table.from_pylist(rows, schema=pa.schema([pa.field(n, pa.string()) for n in names]))
