"""Where things live under a warehouse root (and inside a shared dataset folder): the one path rule.

    <root>/<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet   a committed shard (the first 16 hex
                                                                      digits of the file's sha256)
    <root>/_manifest/commits.jsonl                               the commit log
    <root>/_staging/                                             files being written; never read

A shard's name carries its content hash, so a commit never overwrites a file that a manifest entry
lists: replacing a task's rows writes new files, and the manifest line that lists them is the switch.
``suite``, ``model`` and ``task_id`` become path components, so they are restricted to plain names of
at most ``MAX_NAME`` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from layerlake.core.hashing import stable_hash
from layerlake.warehouse.errors import WarehouseError

# Where a shard lives, relative to a warehouse root or a shared folder; docs quote this (a test checks).
SHARD_PATTERN = "<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet"
MANIFEST_DIR = "_manifest"
STAGING_DIR = "_staging"
MAX_NAME = 128  # a path component of at most this many characters (file systems allow 255 bytes)
# A run id leaves room for the task ids named after it (annotations.<run>, scalars.<run>.<block>.rank<r>)
MAX_RUN_ID = MAX_NAME - 28
NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
_NAME = re.compile(rf"^{NAME}$")
_SHARD = re.compile(
    rf"^(?P<table>[a-z_]+)/(?P<suite>{NAME})/(?P<model>{NAME})/(?P<task>{NAME})-(?P<digest>[0-9a-f]{{16}})\.parquet$"
)


@dataclass(frozen=True)
class ShardName:
    """What a shard's relative path says about it."""

    table: str
    suite: str
    model: str
    task_id: str
    digest: str


def check_name(kind: str, value: str) -> str:
    """``value`` if it is safe as a path component; a ``WarehouseError`` otherwise."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > MAX_NAME:
        shown = value if not isinstance(value, str) or len(value) <= 60 else f"{value[:57]}..."
        raise WarehouseError(
            f"{kind} {shown!r} cannot name a warehouse folder or file",
            fix=f"use at most {MAX_NAME} letters, digits, '.', '_', '+' or '-' for the {kind} "
            "(no '/', '=' or spaces)",
        )
    return value


def safe_name(text: str, default: str) -> str:
    """``text`` as a name ``check_name`` accepts: each run of other characters (spaces, '=', '/') becomes
    '_', leading '.', '_', '+' and '-' are dropped, and it is cut to ``MAX_NAME`` characters (``default``
    when nothing is left). ``"lr=3e-3 bs=8"`` -> ``"lr_3e-3_bs_8"``."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).lstrip("._+-")[:MAX_NAME]
    return name or default


def checkpoint_task_id(suite: str, model: str, run_id: str, revision: str, probe_id: str) -> str:
    """The task of one checkpoint of one run seen through one probe: a hash of content only, never a
    path, so a moved data folder or a checkpoint imported from elsewhere keeps its task."""
    payload = {"suite": suite, "model": model, "run_id": run_id, "revision": revision, "probe_id": probe_id}
    return stable_hash(payload)[:20]


def probe_task_id(run_id: str, probe_id: str) -> str:
    """The task holding a run's probe batch."""
    return "probe-" + stable_hash({"run_id": run_id, "probe": probe_id})[:14]


def annotations_task_id(run_id: str) -> str:
    """The task holding a run's tags and notes (tables ``run_tags`` and ``run_notes``)."""
    return f"annotations.{run_id}"


def shard_path(table: str, suite: str, model: str, task_id: str, sha256: str) -> str:
    """``<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet`` (posix, relative to the root)."""
    for kind, value in (("suite", suite), ("model", model), ("task id", task_id)):
        check_name(kind, value)
    return f"{table}/{suite}/{model}/{task_id}-{sha256[:16]}.parquet"


_SHARD_V1 = re.compile(
    rf"^(?P<table>[a-z_]+)/suite=(?P<suite>{NAME})/model=(?P<model>{NAME})/part-(?P<task>{NAME})\.parquet$"
)


def is_schema1_shard_path(path: str) -> bool:
    """Whether ``path`` follows schema 1's rule, ``<table>/suite=<s>/model=<m>/part-<task>.parquet``
    (read only to migrate such a warehouse)."""
    return _SHARD_V1.match(path) is not None and ".." not in path.split("/")


def parse_shard_path(path: str) -> ShardName | None:
    """The parts of a shard path, or None if ``path`` does not follow the rule (e.g. ``../x``)."""
    match = _SHARD.match(path)
    if match is None or ".." in path.split("/"):
        return None
    return ShardName(match["table"], match["suite"], match["model"], match["task"], match["digest"])
