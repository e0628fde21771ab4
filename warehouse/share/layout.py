"""The shape of a shared dataset folder: file names, the shard path rule, and the manifest's format.

A shared folder (``layerlake share export``) looks like a warehouse without its ``_manifest``::

    DIR/manifest.json                                   format, schema_version, files, tasks, checkpoints
    DIR/README.md                                       dataset card (Hugging Face YAML header)
    DIR/croissant.json                                  MLCommons Croissant metadata
    DIR/<table>/suite=<s>/model=<m>/part-<task>.parquet the warehouse's shard files, byte for byte

Shard paths are the warehouse's own relative paths, so a file keeps its name (and task id) from the
warehouse that made it to every warehouse that imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MANIFEST_JSON = "manifest.json"
CARD = "README.md"
CROISSANT = "croissant.json"
METADATA_FILES = (MANIFEST_JSON, CARD, CROISSANT)
FORMAT = "layerlake-share"
FORMAT_VERSION = 1

# The same name rule as warehouse.writer.check_name: no '/', '=', spaces or leading dot.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
_SHARD = re.compile(
    rf"^(?P<table>[a-z_]+)/suite=(?P<suite>{_NAME})/model=(?P<model>{_NAME})/part-(?P<task>{_NAME})\.parquet$"
)


@dataclass(frozen=True)
class ShardName:
    """What a shard's relative path says about it."""

    table: str
    suite: str
    model: str
    task_id: str


def shard_path(table: str, suite: str, model: str, task_id: str) -> str:
    """``<table>/suite=<s>/model=<m>/part-<task>.parquet`` (posix, relative)."""
    return f"{table}/suite={suite}/model={model}/part-{task_id}.parquet"


def parse_shard_path(path: str) -> ShardName | None:
    """The parts of a shard path, or None if ``path`` does not follow the rule (e.g. ``../x``)."""
    match = _SHARD.match(path)
    if match is None or ".." in path.split("/"):
        return None
    return ShardName(match["table"], match["suite"], match["model"], match["task"])
