"""Where things live under a warehouse root (and inside a shared dataset folder): the one path rule.

    <root>/<table>/suite=<suite>/model=<model>/part-<task_id>.parquet    a committed shard
    <root>/_manifest/commits.jsonl                                       the commit log
    <root>/_staging/                                                     shards being written; never read

``suite``, ``model`` and ``task_id`` become path components, so they are restricted to plain names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from layerlake.warehouse.errors import WarehouseError

MANIFEST_DIR = "_manifest"
STAGING_DIR = "_staging"
NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
_NAME = re.compile(rf"^{NAME}$")
_SHARD = re.compile(
    rf"^(?P<table>[a-z_]+)/suite=(?P<suite>{NAME})/model=(?P<model>{NAME})/part-(?P<task>{NAME})\.parquet$"
)


@dataclass(frozen=True)
class ShardName:
    """What a shard's relative path says about it."""

    table: str
    suite: str
    model: str
    task_id: str


def check_name(kind: str, value: str) -> str:
    """``value`` if it is safe as a path component; a ``WarehouseError`` otherwise."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise WarehouseError(
            f"{kind} {value!r} cannot name a warehouse partition or file",
            fix=f"use letters, digits, '.', '_', '+' or '-' for the {kind} (no '/', '=' or spaces)",
        )
    return value


def shard_path(table: str, suite: str, model: str, task_id: str) -> str:
    """``<table>/suite=<s>/model=<m>/part-<task>.parquet`` (posix, relative to the root)."""
    for kind, value in (("suite", suite), ("model", model), ("task id", task_id)):
        check_name(kind, value)
    return f"{table}/suite={suite}/model={model}/part-{task_id}.parquet"


def parse_shard_path(path: str) -> ShardName | None:
    """The parts of a shard path, or None if ``path`` does not follow the rule (e.g. ``../x``)."""
    match = _SHARD.match(path)
    if match is None or ".." in path.split("/"):
        return None
    return ShardName(match["table"], match["suite"], match["model"], match["task"])
