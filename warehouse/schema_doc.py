"""Render ``docs/schema.md`` from ``warehouse/schema.py`` (a drift test keeps the file in step).

Regenerate with ``.venv/bin/python -m layerlake.warehouse.schema_doc > docs/schema.md``.
"""

from __future__ import annotations

from layerlake.warehouse import schema
from layerlake.warehouse.views import FAILURES_SCHEMA, MANIFEST_SCHEMA, duck_type


def render() -> str:
    """The Markdown page describing every table and column of the warehouse contract."""
    lines = [
        "# Warehouse schema",
        "",
        "Generated from `warehouse/schema.py` by `layerlake.warehouse.schema_doc.render()`; do not edit by hand",
        "(`.venv/bin/python -m layerlake.warehouse.schema_doc > docs/schema.md`). A test fails when the two disagree.",
        "",
        f"Schema version: **{schema.SCHEMA_VERSION}** (written into every Parquet file's key-value metadata as",
        "`layerlake.schema_version`, beside `layerlake.task_id` and `layerlake.table`, and into every manifest entry).",
        "",
        "Every view also has the hive partition columns "
        + ", ".join(f"`{p}` (VARCHAR)" for p in schema.PARTITION_COLUMNS)
        + ", recovered from the path `<root>/<table>/suite=<suite>/model=<model>/part-<task_id>.parquet`.",
        "Types are DuckDB's (Arrow's in parentheses). Gram matrices are stored whole (n*n values, row-major).",
        "",
    ]
    for table in schema.TABLES.values():
        lines += [
            f"## `{table.name}`",
            "",
            table.doc,
            "",
            "Key: " + ", ".join(f"`{k}`" for k in table.key),
            "",
        ]
        lines += ["| column | type | null | meaning |", "| --- | --- | --- | --- |"]
        for c in table.columns:
            null = "yes" if c.nullable else "no"
            doc = c.doc.replace("|", "\\|")  # a bare | would split the Markdown cell
            lines.append(f"| `{c.name}` | {duck_type(c.type)} ({c.type}) | {null} | {doc} |")
        lines.append("")
    lines += [
        "## `manifest` and `failures` (views, not files)",
        "",
        "`manifest`: one row per committed file a view reads: "
        + ", ".join(f"`{n}`" for n in MANIFEST_SCHEMA.names)
        + ".",
        "`failures`: one row per task whose latest entry failed: "
        + ", ".join(f"`{n}`" for n in FAILURES_SCHEMA.names)
        + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
