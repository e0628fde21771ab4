"""Render ``docs/schema.md`` from ``warehouse/schema.py`` (a drift test keeps the file in step).

Regenerate with ``.venv/bin/python -m layerlake.warehouse.schema_doc > docs/schema.md``.
"""

from __future__ import annotations

from layerlake.warehouse import schema
from layerlake.warehouse.layout import SHARD_PATTERN
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
        "Every table's files and view hold the identity columns "
        + ", ".join(f"`{c.name}`" for c in schema.IDENTITY)
        + " first (the writer fills them), then the table's own. Files live at",
        f"`<root>/{SHARD_PATTERN}`; the folders are plain names, not",
        "`key=value` partitions, so every reader sees exactly the columns in the files.",
        "Types are DuckDB's (Arrow's in parentheses). Gram matrices are stored packed, as little-endian float32",
        "bytes (`warehouse/gram.py`).",
        "",
        "A table's key names one row in the whole warehouse, whatever suite and model folder holds it:",
        "`share import` refuses a row whose key the warehouse (or the import itself) already holds otherwise,",
        "and `check`'s `duplicate_keys` audit fails when any key repeats. What else a row may hold (names,",
        "enums, bounds, lengths) is in `warehouse/content.py`.",
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
        for c in table.all_columns:
            null = "yes" if c.nullable else "no"
            doc = c.doc.replace("|", "\\|")  # a bare | would split the Markdown cell
            stored = f"; files: {duck_type(c.file_type)} ({c.file_type})" if c.stored_as_bytes else ""
            lines.append(f"| `{c.name}` | {duck_type(c.type)} ({c.type}{stored}) | {null} | {doc} |")
            if c.stored_as_bytes:
                lines.append(
                    f"| `{c.bytes_name}` | BLOB (view only) | {null} | `{c.name}` as the files hold it: "
                    "little-endian float32 bytes |"
                )
        lines.append("")
    lines += [
        "## `manifest` and `failures` (views, not files)",
        "",
        "`manifest`: one row per committed file a view reads: "
        + ", ".join(f"`{n}`" for n in MANIFEST_SCHEMA.names)
        + ".",
        "`failures`: one row per task whose latest entry failed, or that the views leave out because its "
        "files do not match the manifest (its `error` starts `not shown:`; `layerlake sql` and `query` "
        "say so on stderr): " + ", ".join(f"`{n}`" for n in FAILURES_SCHEMA.names) + ".",
        "",
        "## SQL macros",
        "",
        "Scalar functions every connection defines (`warehouse/sql/macros/`, one file each); "
        "`layerlake sql --schema` lists them too.",
        "",
        "| macro | what it computes |",
        "| --- | --- |",
    ]
    from layerlake.warehouse.macros import public_macros

    for macro in public_macros():
        doc = macro.description.replace("|", "\\|")
        lines.append(f"| `{macro.signature}` | {doc} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
