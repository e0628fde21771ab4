"""The query side's storage: Parquet shards (one folder per table, suite and model), a commit manifest, and DuckDB views.

- ``warehouse.connect(root=None, read_only=True, attach=())``: a DuckDB connection over the committed
  shards, one typed view per table of ``warehouse/schema.py`` plus ``manifest`` and ``failures``, with
  the SQL macros and staging views of ``warehouse/sql/`` installed (``warehouse.views``, ``warehouse.macros``).
- ``warehouse.writer.Warehouse``: the single-writer commit protocol the extraction driver uses.
- ``layerlake sql`` / ``layerlake check``: ``warehouse.command``.

Never imports torch, transformers or ray: a collaborator who only queries needs duckdb and pyarrow.
"""

from __future__ import annotations

from layerlake.warehouse.views import connect, default_root

__all__ = ["connect", "default_root"]
