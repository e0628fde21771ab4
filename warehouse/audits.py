"""Data-quality audits: the queries of ``warehouse/sql/audits/`` (each returns offending rows; zero rows
means it passes) plus the file check of every committed shard against the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from layerlake.core.sqlfile import SqlFile, SqlFolder
from layerlake.warehouse.errors import QueryError
from layerlake.warehouse.macros import SQL_DIR
from layerlake.warehouse.manifest import entry_problems, latest, manifest_path, read_entries

AUDITS = SqlFolder(SQL_DIR / "audits", "audit", required=("description", "grain"))


def load_audits() -> list[SqlFile]:
    """Every audit, in name order."""
    return AUDITS.all()


def run_audit(con: Any, audit: SqlFile) -> pa.Table:
    """The offending rows of ``audit`` on connection ``con``."""
    try:
        return con.sql(audit.body).to_arrow_table()
    except duckdb.Error as error:
        raise QueryError(
            f"audit {audit.name!r} failed: {error}", fix=f"check {audit.path} against the views"
        ) from error


def file_problems(root: Path, verify_files: bool) -> pa.Table:
    """One row per committed file that is missing, of the wrong size or (``verify_files``) wrong sha256."""
    committed, _ = latest(read_entries(manifest_path(root)))
    rows = [
        {"task_id": entry.task_id, "table_name": f.table, "path": f.path, "problem": problem}
        for entry in committed.values()
        for f, problem in entry_problems(root, entry, verify_files)
    ]
    names = ("task_id", "table_name", "path", "problem")
    return pa.Table.from_pylist(rows, schema=pa.schema([pa.field(n, pa.string()) for n in names]))
