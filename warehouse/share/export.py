"""``layerlake share export``: copy committed shards into a folder that stands alone, with its metadata.

The export is built in a staging sibling (``.<name>.staging-<id>`` beside ``dest``) and renamed into
place once complete, so ``dest`` either does not exist or holds a whole dataset. Shard files are copied
byte for byte (their sha256 is checked against the warehouse manifest while copying), never rewritten:
the sha256 a collaborator sees is the one the extraction recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerlake.warehouse import schema
from layerlake.warehouse.errors import ManifestError, ShareError
from layerlake.warehouse.manifest import (
    CommitEntry,
    FileEntry,
    entry_problems,
    latest,
    manifest_path,
    read_entries,
)
from layerlake.warehouse.share import card
from layerlake.warehouse.share.http import block_digests
from layerlake.warehouse.share.layout import CARD, CROISSANT, FORMAT, FORMAT_VERSION, MANIFEST_JSON
from layerlake.warehouse.writer import fsync_dir, now_utc

# Meta keys of a commit entry that say where a checkpoint's rows came from (the dataset's provenance).
DEFAULT_LICENSE = "CC-BY-4.0"  # the statistics an export holds, unless its author says otherwise (--license)
PROVENANCE_KEYS = (
    "revision", "step", "tokens_seen", "source", "location", "weights_sha256", "probe_id", "code_version",
    "config_hash",
)  # fmt: skip


@dataclass(frozen=True)
class Selection:
    """What to export; None means everything."""

    suite: str | None = None
    models: tuple[str, ...] | None = None
    steps: tuple[int, ...] | None = None
    tables: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ExportReport:
    dest: Path
    tasks: int
    files: int
    rows: int
    bytes: int
    dataset_id: str


def export_dataset(
    root: str | Path,
    dest: str | Path,
    suite: str | None = None,
    models: Iterable[str] | None = None,
    steps: Iterable[int] | None = None,
    tables: Iterable[str] | None = None,
    croissant: bool = True,
    license: str = DEFAULT_LICENSE,
    citation: str | None = None,
) -> ExportReport:
    """Export the committed tasks of the warehouse at ``root`` that match the filters into ``dest``.

    ``dest`` must not exist or be an empty folder. A task without a ``step`` in its meta (a model's
    probe batch) passes the ``steps`` filter. Raises ``ShareError`` when nothing matches.
    """
    root, dest = Path(root).expanduser().resolve(), Path(dest).expanduser().resolve()
    selection = Selection(
        suite, _tuple(models), None if steps is None else tuple(int(s) for s in steps), _tuple(tables)
    )
    entries = select(_committed(root), selection)
    damaged = [f"{f.path}: {problem}" for e in entries for f, problem in entry_problems(root, e)]
    if damaged:  # a path that leaves the root, a link, a missing or resized file: nothing is written
        raise ShareError(
            f"the warehouse at {root} has files that do not match its manifest: "
            + "; ".join(damaged[:5])
            + (f" (and {len(damaged) - 5} more)" if len(damaged) > 5 else ""),
            fix=f"run `layerlake check --root {root} --verify-files` and extract (or import) those tasks again",
        )
    _check_dest(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        for entry in entries:
            for f in entry.files:
                copy_verified(root / f.path, staging / f.path, f)
        manifest = build_manifest(entries, license, citation)
        for listed in manifest["files"]:  # each block's hash: a reader by URL checks every range it fetches
            listed.update(block_digests(staging / listed["path"]))
        _write_json(staging / MANIFEST_JSON, manifest)
        summary = card.summarize(staging, entries)
        _write_text(staging / CARD, card.render_card(manifest, summary))
        if croissant:
            _write_json(staging / CROISSANT, card.croissant(manifest, summary))
        for folder in sorted({p.parent for p in staging.rglob("*") if p.is_file()}, reverse=True):
            fsync_dir(folder)
        if dest.exists():
            dest.rmdir()  # empty (checked above); rename cannot replace it portably
        os.replace(staging, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [f for e in entries for f in e.files]
    return ExportReport(dest, len(entries), len(files), sum(f.rows for f in files), sum(f.bytes for f in files),
                        manifest["dataset_id"])  # fmt: skip


def _tuple(values: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _committed(root: Path) -> list[CommitEntry]:
    path = manifest_path(root)
    if not path.is_file():
        raise ShareError(f"no warehouse at {root} (no {path.relative_to(root)})",
                         fix="pass the warehouse folder with --root, or run `layerlake extract` first")  # fmt: skip
    committed, _ = latest(read_entries(path))
    return list(committed.values())


def select(entries: list[CommitEntry], selection: Selection) -> list[CommitEntry]:
    """Entries matching ``selection``, their files cut to the chosen tables, sorted; never empty."""
    unknown = sorted(set(selection.tables or ()) - set(schema.TABLES))
    if unknown:
        raise ShareError(
            f"unknown table(s) {unknown}", fix=f"choose --tables among {', '.join(schema.TABLES)}"
        )
    chosen = []
    for entry in entries:
        step = entry.meta.get("step")
        if selection.suite is not None and entry.suite != selection.suite:
            continue
        if selection.models is not None and entry.model not in selection.models:
            continue
        if selection.steps is not None and step is not None and step not in selection.steps:
            continue
        files = tuple(f for f in entry.files if selection.tables is None or f.table in selection.tables)
        if files:
            chosen.append(_with_files(entry, files))
    if not chosen:
        available = sorted({(e.suite, e.model) for e in entries})
        raise ShareError(
            f"nothing to export: no committed task matches {selection}",
            fix=f"relax the filters; the warehouse holds (suite, model): {available or 'nothing'}",
        )
    return sorted(
        chosen,
        key=lambda e: (e.suite, e.model, e.meta.get("step") is not None, e.meta.get("step") or 0, e.task_id),
    )


def _with_files(entry: CommitEntry, files: tuple[FileEntry, ...]) -> CommitEntry:
    return dataclasses.replace(entry, files=files)


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ShareError(f"export folder {dest} is not empty", fix="choose a new folder, or empty this one")


def copy_verified(src: Path, dst: Path, listed: FileEntry) -> None:
    """Copy ``src`` to a new file ``dst`` byte for byte, checking size and sha256 against ``listed``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    try:
        with open(src, "rb") as reader, open(dst, "xb") as writer:
            for block in iter(lambda: reader.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
                writer.write(block)
            writer.flush()
            os.fsync(writer.fileno())
    except FileNotFoundError as error:
        raise ManifestError(f"shard {src} listed in the manifest is missing",
                            fix="run `layerlake check`, then re-extract its task") from error  # fmt: skip
    if size != listed.bytes or digest.hexdigest() != listed.sha256:
        raise ManifestError(
            f"shard {src} does not match its manifest entry ({size} bytes, listed {listed.bytes}; sha256 differs)",
            fix="run `layerlake check`; re-extract the task, or retry if a commit was running",
        )


def build_manifest(
    entries: list[CommitEntry], license: str = DEFAULT_LICENSE, citation: str | None = None
) -> dict[str, Any]:
    """The content of ``manifest.json``: format, schema version, files, task entries and provenance."""
    files = [
        {**f.to_json(), "task_id": e.task_id, "suite": e.suite, "model": e.model}
        for e in entries
        for f in e.files
    ]
    checkpoints = [
        {
            "suite": e.suite,
            "model": e.model,
            "run_id": e.run_id,
            "task_id": e.task_id,
            **{k: machine_free(e.meta[k]) for k in PROVENANCE_KEYS if k in e.meta},
        }
        for e in entries
        if "revision" in e.meta
    ]
    identity = json.dumps(sorted((f["path"], f["sha256"]) for f in files), separators=(",", ":"))
    dataset_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_version": max(e.schema_version for e in entries),
        "dataset_id": dataset_id,
        "created_at": now_utc(),
        "created_by": f"layerlake {_version()}",
        "license": license,
        "citation": citation or default_citation(dataset_id),
        "sources": imported_sources(entries),
        "tables": {
            name: _table_totals(files, name)
            for name in schema.TABLES
            if any(f["table"] == name for f in files)
        },
        "files": files,
        "tasks": [machine_free(e.to_json()) for e in entries],
        "checkpoints": checkpoints,
    }


def machine_free(value: Any) -> Any:
    """``value`` with every absolute path of this machine cut to its last component: what a collaborator
    receives says where things came from, never where they sat on the exporter's disk."""
    if isinstance(value, dict):
        return {k: machine_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [machine_free(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value)):
        return Path(value).name
    return value


def default_citation(dataset_id: str) -> str:
    """A BibTeX entry for the export itself, when its author gives none (``--citation``)."""
    return (f"@misc{{layerlake_{dataset_id},\n  title = {{Per-layer training dynamics statistics, layerlake "
            f"dataset {dataset_id}}},\n  note = {{Exported with layerlake {_version()}}},\n  year = {{{now_utc()[:4]}}}\n}}")  # fmt: skip


def imported_sources(entries: list[CommitEntry]) -> list[dict[str, Any]]:
    """Rows imported from others keep their license and citation: one item per source."""
    found: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.meta.get("kind") == "import-metrics":
            item = found.setdefault(
                str(e.meta.get("source")), {"source": str(e.meta.get("source")), "models": []}
            )
            item["models"].append(e.model)
            for key in ("license", "citation"):
                if e.meta.get(key):
                    item[key] = e.meta[key]
    return [found[k] for k in sorted(found)]


def _table_totals(files: list[dict[str, Any]], name: str) -> dict[str, int]:
    mine = [f for f in files if f["table"] == name]
    return {"files": len(mine), "rows": sum(f["rows"] for f in mine), "bytes": sum(f["bytes"] for f in mine)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("layerlake")
    except PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
