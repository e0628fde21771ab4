"""Sharing datasets: export a stand-alone folder, verify and import one, or attach one read-only.

- ``export_dataset(root, dest, ...)``: copy committed shards (never modified) into ``dest`` with a
  ``manifest.json`` (checksums, rows, provenance), a ``README.md`` dataset card and ``croissant.json``.
- ``verify_folder(folder)``: every check a collaborator's folder must pass; raises ``ShareError``.
- ``import_dataset(folder, root)``: verify, then merge into a local warehouse all or nothing.
- ``attach(folder, root)``: a read-only ``warehouse.connect`` over the local warehouse plus the folder.
- ``layerlake share export|import|attach``: ``warehouse.share.command.share``.
- import and attach also take an export's URL (``http(s)://``, ``hf://datasets/ORG/NAME[@revision]``):
  ``warehouse.share.remote`` (manifest, downloads) over ``warehouse.share.http`` (what DuckDB reads by
  ranges, every block checked).

Like the rest of ``warehouse``, never imports torch, transformers or ray. See ``docs/sharing.md``.
"""

from __future__ import annotations

from layerlake.warehouse.share.attach import attach
from layerlake.warehouse.share.export import ExportReport, export_dataset
from layerlake.warehouse.share.importer import ImportReport, import_dataset
from layerlake.warehouse.share.verify import SharedDataset, verify_folder

__all__ = [
    "ExportReport",
    "ImportReport",
    "SharedDataset",
    "attach",
    "export_dataset",
    "import_dataset",
    "verify_folder",
]
