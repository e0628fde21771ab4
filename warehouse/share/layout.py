"""The shape of a shared dataset folder: its file names and format (shard paths: ``warehouse.layout``).

A shared folder (``layerlake share export``) looks like a warehouse without its ``_manifest``::

    DIR/manifest.json                                             format, schema_version, files, tasks, checkpoints
    DIR/README.md                                                 dataset card (Hugging Face YAML header)
    DIR/croissant.json                                            MLCommons Croissant metadata
    DIR/<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet   the warehouse's shard files, byte for byte

Shard paths are the warehouse's own relative paths, so a file keeps its name (and task id) from the
warehouse that made it to every warehouse that imports it. Format version 2 adds files shared by
several tasks (a compacted warehouse's merged files, ``compact.<hash>-<sha256[:16]>.parquet``): each task
lists its slice (``first_row``, ``rows``), and the slices of a file hold each of its rows once. An
export without such files is written as format 1, which every layerlake reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from layerlake.warehouse.layout import ShardName, parse_shard_path, shard_path

MANIFEST_JSON = "manifest.json"
CARD = "README.md"
CROISSANT = "croissant.json"
METADATA_FILES = (MANIFEST_JSON, CARD, CROISSANT)
FORMAT = "layerlake-share"
FORMAT_VERSION = 2  # the newest format this layerlake writes and reads


def dataset_id(files: Iterable[tuple[str, str]]) -> str:
    """A dataset's id: the first 16 hex digits of the sha256 of its sorted (path, sha256) pairs, so the
    same files are the same dataset wherever they are exported, and an import can recompute it."""
    identity = json.dumps(sorted(set(files)), separators=(",", ":"))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


__all__ = [
    "CARD", "CROISSANT", "FORMAT", "FORMAT_VERSION", "MANIFEST_JSON", "METADATA_FILES", "ShardName",
    "dataset_id", "parse_shard_path", "shard_path",
]  # fmt: skip
