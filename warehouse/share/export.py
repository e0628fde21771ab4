"""``layerlake share export``: copy committed shards into a folder that stands alone, with its metadata.

The export is built in a staging sibling (``.<name>.staging-<id>`` beside ``dest``) and renamed into
place once complete, so ``dest`` either does not exist or holds a whole dataset. Shard files are copied
byte for byte, each once (their sha256 is checked against the warehouse manifest while copying): the
sha256 a collaborator sees is the one the warehouse recorded. A file that several tasks share (merged by
``compact``) is copied once, and the tasks keep their slices of it (``first_row``, ``rows``); when only
some of its tasks are exported (``--models``, ``--steps``), their slices are written into a file of
their own instead, so every row of every exported file belongs to exactly one exported task and a
reader that globs the folder sees each row once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from layerlake.warehouse import schema
from layerlake.warehouse.errors import ShareError
from layerlake.warehouse.manifest import (
    CommitEntry,
    FileEntry,
    entry_problems,
    latest,
    manifest_path,
    read_entries,
)
from layerlake.warehouse.shards import copy_verified, fsync_dir, now_utc, slices_file, write_durable
from layerlake.warehouse.share import card
from layerlake.warehouse.share.http import block_digests
from layerlake.warehouse.share.layout import CARD, CROISSANT, FORMAT, FORMAT_VERSION, MANIFEST_JSON
from layerlake.warehouse.share.layout import dataset_id as layout_dataset_id

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
    old = sorted({e.schema_version for e in entries if e.schema_version < schema.SCHEMA_VERSION})
    if old:
        raise ShareError(
            f"the warehouse at {root} holds tasks of schema version {old[0]}; an export holds the current "
            f"version ({schema.SCHEMA_VERSION}) only; nothing was written",
            fix=f"run `layerlake migrate --root {root}` once, then export again",
        )
    _check_dest(dest, root)
    staging = _make_staging(dest)
    try:
        entries = write_files(root, staging, entries)
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
    files = unique_files(entries)
    return ExportReport(dest, len(entries), len(files), sum(f.rows for f in files), sum(f.bytes for f in files),
                        manifest["dataset_id"])  # fmt: skip


def write_files(root: Path, folder: Path, entries: list[CommitEntry]) -> list[CommitEntry]:
    """Write the files ``entries`` list into ``folder``, each once; returns the entries as the folder
    lists them. A file is copied byte for byte unless it is shared by tasks of which only some are
    exported: then the exported tasks' slices are written into a file of their own."""
    members: dict[str, list[tuple[CommitEntry, FileEntry]]] = defaultdict(list)
    for entry in entries:
        for f in entry.files:
            members[f.path].append((entry, f))
    moved: dict[tuple[str, str], FileEntry] = {}
    for path, chosen in members.items():
        listed = chosen[0][1]
        if not listed.shared or covers(root / path, [f for _, f in chosen]):
            copy_verified(root / path, folder / path, listed)
            continue
        chosen = sorted(chosen, key=lambda m: m[1].first_row)
        entry = chosen[0][0]
        new, data, where = slices_file(
            listed.table, entry.suite, entry.model, [((e.task_id, f.path), root, f) for e, f in chosen]
        )
        if not (folder / new.path).exists():
            (folder / new.path).parent.mkdir(parents=True, exist_ok=True)
            write_durable(folder / new.path, data)
        moved.update(where)
    return [
        _with_files(e, tuple(moved.get((e.task_id, f.path), f) for f in e.files)) if moved else e
        for e in entries
    ]


def covers(path: Path, slices: list[FileEntry]) -> bool:
    """Whether ``slices`` of the file at ``path`` hold every one of its rows, each once."""
    end = 0
    for f in sorted(slices, key=lambda f: f.first_row or 0):
        if (f.first_row or 0) != end:
            return False
        end += f.rows
    return end == pq.ParquetFile(path).metadata.num_rows


def unique_files(entries: list[CommitEntry]) -> list[FileEntry]:
    """Each file the entries list, once (a file shared by several tasks counts once, all its rows)."""
    found: dict[str, FileEntry] = {}
    rows: dict[str, int] = defaultdict(int)
    for e in entries:
        for f in e.files:
            found.setdefault(f.path, f)
            rows[f.path] += f.rows
    return [f._replace(rows=rows[path], first_row=None) for path, f in found.items()]


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
    _check_filters(entries, selection)
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


def _check_filters(entries: list[CommitEntry], selection: Selection) -> None:
    """Every model and step asked for is stored (in the chosen suite): a typo or a step that was never
    extracted (``--steps -5``) is refused, rather than exporting the rest, or only the probe batches
    (tasks without a step pass the step filter)."""
    in_suite = [e for e in entries if selection.suite is None or e.suite == selection.suite]
    models = sorted({e.model for e in in_suite})
    unknown = [m for m in selection.models or () if m not in models]
    if unknown:
        raise ShareError(
            f"--models {', '.join(unknown)}: not stored"
            + (f" in suite {selection.suite}" if selection.suite else ""),
            fix=f"choose among {', '.join(models) or 'nothing (the warehouse holds no task)'}",
        )
    chosen = [e for e in in_suite if selection.models is None or e.model in selection.models]
    steps = sorted({e.meta["step"] for e in chosen if e.meta.get("step") is not None})
    missing = [s for s in selection.steps or () if s not in steps]
    if missing:
        shown = ", ".join(map(str, steps[:20])) + (" ..." if len(steps) > 20 else "")
        raise ShareError(
            f"--steps {', '.join(map(str, missing))}: no checkpoint of that step is stored"
            + (f" for {', '.join(selection.models)}" if selection.models else ""),
            fix=f"choose among the stored steps: {shown or 'none'}",
        )


def _check_dest(dest: Path, root: Path) -> None:
    """``dest`` is a new or empty folder outside the warehouse (whose ``gc`` would delete an export's
    files there, as files no commit lists)."""
    from layerlake.warehouse.locate import enclosing

    if enclosing(dest, [root]) is not None:
        raise ShareError(
            f"export folder {dest} is inside the warehouse {root}: its files would be taken for "
            "leftovers and removed by `layerlake gc`",
            fix="export to a folder outside the warehouse",
        )
    if dest.exists() and not dest.is_dir():
        raise ShareError(f"export folder {dest} is a file", fix="choose a new folder, or an empty one")
    if dest.exists() and any(dest.iterdir()):
        raise ShareError(f"export folder {dest} is not empty", fix="choose a new folder, or empty this one")


def _make_staging(dest: Path) -> Path:
    """The staging sibling the export is built in (``.<name>.staging-<id>`` beside ``dest``), made
    with ``dest``'s parents; a ``ShareError`` naming the folder when it cannot be made."""
    staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:12]}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as error:
        raise ShareError(
            f"cannot make the export folder {dest}: {error.strerror or error} ({error.filename})",
            fix="choose a folder you can write",
        ) from None
    return staging


def build_manifest(
    entries: list[CommitEntry], license: str = DEFAULT_LICENSE, citation: str | None = None
) -> dict[str, Any]:
    """The content of ``manifest.json``: format, schema version, files, task entries and provenance."""
    files = [
        {**f.to_json(), "task_id": e.task_id, "suite": e.suite, "model": e.model}
        for e in entries
        for f in e.files
    ]
    # a checkpoint whose task did not record the code (a snapshot of an older tracked run) takes its run's
    run_code = {e.run_id: e.meta["run"].get("code_version") for e in entries if e.meta.get("kind") == "run"}
    checkpoints = [
        {
            "suite": e.suite,
            "model": e.model,
            "run_id": e.run_id,
            "task_id": e.task_id,
            **({"code_version": run_code[e.run_id]} if run_code.get(e.run_id) else {}),
            **{k: machine_free(e.meta[k]) for k in PROVENANCE_KEYS if e.meta.get(k) is not None},
        }
        for e in entries
        if "revision" in e.meta
    ]
    dataset_id = layout_dataset_id((f["path"], f["sha256"]) for f in files)
    shared = any(f.shared for e in entries for f in e.files)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if shared else 1,  # readers of format 1 know no shared files
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
    """Files, rows and bytes of one table (a file several tasks share counts once, all its rows)."""
    mine = [f for f in files if f["table"] == name]
    sizes = {f["path"]: f["bytes"] for f in mine}
    return {"files": len(sizes), "rows": sum(f["rows"] for f in mine), "bytes": sum(sizes.values())}


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
