"""``layerlake share attach``: query a shared dataset in place, read-only, beside the local warehouse.

The shared folder is checked first (``verify_folder``: layout, sizes, footers, rows, columns, unlisted
files; sha256 only with ``checksums=True``, since hashing gigabytes on every attach is slow), then
``warehouse.connect(root, attach=[folder])`` serves both through the same views and macros. A task the
local warehouse already has (same task id) is shown once, from the local copy. Without a local
warehouse, the shared folder is served alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from layerlake.warehouse.locate import is_warehouse
from layerlake.warehouse.share.remote import RemoteSource, is_url, verify_remote
from layerlake.warehouse.share.verify import verify_folder
from layerlake.warehouse.views import connect


def attach(
    folder: Any, root: str | Path | None = None, checksums: bool = False, read_only: bool = True
) -> duckdb.DuckDBPyConnection:
    """A ``warehouse.connect`` connection over the warehouse at ``root`` plus the shared ``folder``.

    ``root=None`` means ``warehouse.default_root()``, or the shared folder alone if there is no
    warehouse there; a ``root`` given that is not a warehouse is an error (``warehouse.locate``).
    ``folder`` may also be another warehouse root (it has a ``_manifest``), or a shared dataset's URL
    (``http(s)://``, ``hf://datasets/ORG/NAME[@revision]``, or a ``RemoteSource``), read in place.
    """
    folder = checked_folder(folder, checksums)
    return connect(root, read_only=read_only, attach=[folder])  # root None, no default: the folder alone


def checked_folder(folder: Any, checksums: bool = False) -> Path | RemoteSource:
    """``folder``, absolute, once a shared dataset folder has passed ``verify_folder`` (a warehouse root
    is read through its manifest, as any warehouse); a URL (or ``RemoteSource``) once its manifest
    verified (``warehouse.share.remote.verify_remote``)."""
    if is_url(folder):
        return verify_remote(folder, checksums)
    folder = Path(folder).expanduser().resolve()
    if not is_warehouse(folder):
        verify_folder(folder, checksums=checksums)
    return folder
