"""Check a shared dataset folder before anything reads it into a warehouse: every fault is named.

Checks, in order (all problems are collected, then reported together):

1. ``manifest.json`` is readable, of format ``layerlake-share``, and its ``schema_version`` is not newer
   than this layerlake's ``warehouse.schema.SCHEMA_VERSION`` (a newer one is refused at once);
2. its ``tasks`` and ``files`` lists are lists whose every field has the type and range a writer writes
   (``CommitEntry.from_json``); if not, that alone is reported (nothing else can be checked against
   them); its task entries are possible: each listed once, committed, with a run and a sane step;
3. every listed file has a shard path (``<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet``) that
   agrees with its table, suite, model, task and hash, a table this layerlake knows, and a task entry;
   a file several tasks share (format 2: a compacted warehouse's merged file) is split into their
   slices exactly: each row belongs to one task;
4. every listed file is a regular file inside the folder (no link on the way) with the listed size and
   sha256 (``manifest.file_problem``; ``checksums=False`` skips the hash);
5. every file is readable Parquet whose footer row count equals the listed rows and whose columns and
   types are exactly the contract's (``warehouse/schema.py``); with ``checksums``, every page decodes
   and no row holds NULL where the contract forbids it, NaN, infinity, or an impossible step or layer;
6. no other file is present (only the metadata files and dot-files such as ``.git`` at the top).

What the rows mean together (duplicate keys, missing layers ...) is audited by the import, joined with
the warehouse's own rows (``warehouse.share.importer``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from layerlake.warehouse import content, schema
from layerlake.warehouse.errors import ShareError
from layerlake.warehouse.gram import values_column
from layerlake.warehouse.manifest import CommitEntry, FileEntry, describe_value, file_problem
from layerlake.warehouse.share.layout import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_JSON,
    METADATA_FILES,
    dataset_id,
    parse_shard_path,
)

_REEXPORT = "ask its author to export it again with `layerlake share export`"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shared folder: which file, what, and how to fix it."""

    path: str
    what: str
    fix: str


@dataclass(frozen=True)
class SharedDataset:
    """A shared folder that verified: its manifest, and its commit entries (paths relative to it)."""

    folder: Path
    manifest: dict[str, Any]
    entries: tuple[CommitEntry, ...]
    source: str = ""  # the URL it was downloaded from (``warehouse.share.remote``); "" for a folder

    @property
    def schema_version(self) -> int:
        return int(self.manifest["schema_version"])

    @property
    def dataset_id(self) -> str:
        return str(self.manifest.get("dataset_id", ""))


def read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of ``folder``; a ``ShareError`` if it is missing or malformed."""
    path = folder / MANIFEST_JSON
    if folder.exists() and not folder.is_dir():
        raise ShareError(
            f"{folder} is a file, not a shared dataset folder", fix="pass the folder `share export` made"
        )
    if not folder.is_dir():
        raise ShareError(
            f"shared dataset folder {folder} does not exist", fix="pass the folder `share export` made"
        )
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ShareError(
            f"{path} is missing: {folder} is not a layerlake shared dataset", fix=_REEXPORT
        ) from None
    except OSError as error:
        raise ShareError(f"{path} is not readable JSON ({error})", fix=_REEXPORT) from error
    return parse_manifest(text, str(path), str(folder))


def parse_manifest(text: str, path: str, folder: str) -> dict[str, Any]:
    """``manifest.json``'s content (read from ``path`` of the dataset at ``folder``, a folder or a URL),
    checked: format, schema version not newer than this layerlake's, format version."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ShareError(f"{path} is not readable JSON ({error})", fix=_REEXPORT) from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ShareError(f"{path} is not a {FORMAT} manifest (format {found!r})", fix=_REEXPORT)
    version = data.get("schema_version")
    if type(version) is not int:  # a bool is no version either
        raise ShareError(f"{path} has no integer schema_version", fix=_REEXPORT)
    if version > schema.SCHEMA_VERSION:
        raise ShareError(
            f"shared dataset {folder} has schema version {version}, newer than this layerlake's "
            f"{schema.SCHEMA_VERSION}; nothing was read",
            fix=f"upgrade layerlake to a release with schema version {version} or later",
        )
    format_version = data.get("format_version", 1)
    if type(format_version) is not int:
        raise ShareError(
            f"{path} has format_version {describe_value(format_version)}, not a whole number", fix=_REEXPORT
        )
    if format_version > FORMAT_VERSION:
        raise ShareError(
            f"{path} has format_version {data.get('format_version')}, newer than {FORMAT_VERSION}",
            fix="upgrade layerlake",
        )
    return data


def verify_folder(folder: str | Path, checksums: bool = True) -> SharedDataset:
    """Verify the shared dataset at ``folder`` (see the module docstring); raises ``ShareError``."""
    folder = Path(folder).expanduser().resolve()
    manifest = read_manifest(folder)
    entries, problems = manifest_entries(manifest, folder)
    files, slice_problems = listed_files(entries)
    problems += slice_problems
    for f in files.values():
        if f.table in schema.TABLES:  # a table this layerlake does not know is named by manifest_entries
            problems += _check_file(folder, f, checksums)
    problems += _unlisted(folder, set(files))
    if checksums and not problems:  # every file reads: what each task's rows hold
        problems += _task_content_problems(folder, entries)
    problems += dataset_id_problems(manifest)  # after the content checks, which run only when all else passes
    if problems:
        raise verify_error(folder, problems)
    return SharedDataset(folder, manifest, tuple(entries))


def _task_content_problems(folder: Path, entries: list[CommitEntry]) -> list[Problem]:
    """Each task's rows held to what a layerlake writer writes (``warehouse.content``): names, enums,
    bounds, lengths, the task's own suite, model and run, and agreement with its meta."""
    tables: dict[str, pa.Table] = {}  # a file several tasks share is read once
    problems = []
    for entry in entries:
        for f in entry.files:
            if f.path not in tables:
                tables[f.path] = pq.read_table(folder / f.path)
            whole = tables[f.path]
            rows = whole if f.first_row is None else whole.slice(f.first_row, f.rows)
            found = content.row_problems(f.table, rows, entry) + content.rows_agree_with_meta(
                entry, f.table, rows
            )
            if found:
                problems.append(Problem(f.path, f"task {entry.task_id}: " + "; ".join(found), _REEXPORT))
    return problems


def manifest_entries(manifest: dict[str, Any], where: Path | str) -> tuple[list[CommitEntry], list[Problem]]:
    """The manifest's task entries, cross-checked with its flat file list and the shard path rule. A
    manifest whose lists cannot be read (``unusable_lists``) is refused at once, naming that alone: what
    it lists cannot be checked against the files."""
    entries, unusable = unusable_lists(manifest)
    if unusable:
        raise verify_error(where, unusable)
    problems: list[Problem] = []
    files: dict[tuple[str, str], dict] = {}
    for listed in manifest["files"]:
        key = (listed["path"], listed["task_id"])
        if key in files:
            problems.append(
                Problem(listed["path"], f"is listed twice under 'files' for task {key[1]}", _REEXPORT)
            )
        files[key] = listed
    by_task: set[tuple[str, str]] = set()
    problems += _meta_problems(entries)
    for entry in entries:
        for f in entry.files:
            by_task.add((f.path, entry.task_id))
            name = parse_shard_path(f.path)
            if name is None:
                problems.append(
                    Problem(
                        f.path,
                        "is not a shard path <table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet",
                        _REEXPORT,
                    )
                )
            elif (name.table, name.suite, name.model, name.digest) != (
                f.table,
                entry.suite,
                entry.model,
                f.sha256[:16],
            ) or (name.task_id != entry.task_id and not f.shared):
                problems.append(
                    Problem(f.path, f"is listed as table {f.table!r} of task {entry.task_id!r}", _REEXPORT)
                )
            elif f.table not in schema.TABLES:
                problems.append(
                    Problem(
                        f.path, f"holds table {f.table!r}, unknown to this layerlake", "upgrade layerlake"
                    )
                )
            elif differs := _listed_differently(files.get((f.path, entry.task_id)), f, entry):
                problems.append(
                    Problem(f.path, f"is listed differently under 'files' and 'tasks' ({differs})", _REEXPORT)
                )
    for path, task in sorted(set(files) - by_task):
        problems.append(Problem(path, f"is listed under 'files' for task {task} but by no task", _REEXPORT))
    return entries, problems


def unusable_lists(manifest: dict[str, Any]) -> tuple[list[CommitEntry], list[Problem]]:
    """The task entries of ``manifest``, and what makes its ``tasks`` and ``files`` lists unreadable: not
    lists, a task entry missing a field or holding one of another type or range
    (``CommitEntry.from_json``: a size that is a float, text or negative, a path or sha256 that is a
    number ...), a flat ``files`` entry that is not an object naming its path and task."""
    tasks, listed = manifest.get("tasks"), manifest.get("files")
    problems, entries = [], []
    for name, value in (("tasks", tasks), ("files", listed)):
        if type(value) is not list:
            problems.append(
                Problem(MANIFEST_JSON, f"'{name}' is {describe_value(value)}, not a list", _REEXPORT)
            )
    for i, task in enumerate(tasks if type(tasks) is list else []):
        try:
            entries.append(CommitEntry.from_json(task))
        except (KeyError, TypeError, ValueError) as error:
            problems.append(Problem(MANIFEST_JSON, f"tasks[{i}]: {error}", _REEXPORT))
    for i, f in enumerate(listed if type(listed) is list else []):
        if type(f) is not dict:
            problems.append(
                Problem(MANIFEST_JSON, f"files[{i}] is {describe_value(f)}, not an object", _REEXPORT)
            )
            continue
        for key in ("path", "task_id"):
            if type(f.get(key)) is not str:
                problems.append(
                    Problem(
                        MANIFEST_JSON,
                        f"files[{i}]: {key} {describe_value(f.get(key))} is not text",
                        _REEXPORT,
                    )
                )
    return entries, problems


def _listed_differently(listed: dict | None, f: FileEntry, entry: CommitEntry) -> str:
    """How the flat ``files`` entry of a task's file differs from the task's own listing ('' if not):
    the flat list is what a reader by URL and the dataset card go by, so it must say the same."""
    if listed is None:
        return "missing from 'files'"
    expected = {**f.to_json(), "suite": entry.suite, "model": entry.model}
    wrong = [k for k, v in expected.items() if listed.get(k) != v or type(listed.get(k)) is not type(v)]
    wrong += [k for k in ("first_row",) if k in listed and k not in expected]
    return ", ".join(f"{k} {str(listed.get(k))[:30]!r} not {str(expected.get(k))[:30]!r}" for k in wrong)


def dataset_id_problems(manifest: dict[str, Any]) -> list[Problem]:
    """``dataset_id`` is the hash of the files' (path, sha256) pairs, as an export computes it."""
    try:
        expected = dataset_id((f["path"], f["sha256"]) for f in manifest["files"])
    except (KeyError, TypeError):
        return []  # named by the check of the lists
    given = manifest.get("dataset_id")
    if given != expected:
        return [
            Problem(
                MANIFEST_JSON, f"dataset_id {str(given)[:40]!r} is not its files' hash {expected}", _REEXPORT
            )
        ]
    return []


def listed_files(entries: list[CommitEntry]) -> tuple[dict[str, FileEntry], list[Problem]]:
    """Each listed file once (with all its rows), and what is wrong with how tasks share files: a file
    of one task listed by another, or slices of a shared file that overlap or leave rows to no task."""
    listings: dict[str, list[tuple[str, FileEntry]]] = {}
    for entry in entries:
        for f in entry.files:
            listings.setdefault(f.path, []).append((entry.task_id, f))
    files, problems = {}, []
    for path, listed in listings.items():
        first = listed[0][1]
        files[path] = first._replace(rows=sum(f.rows for _, f in listed), first_row=None)
        if len(listed) > 1 and not all(f.shared for _, f in listed):
            tasks = ", ".join(t for t, _ in listed)
            problems.append(Problem(path, f"is one task's file but tasks {tasks} list it", _REEXPORT))
            continue
        end = 0
        for task, f in sorted(listed, key=lambda item: item[1].first_row or 0):
            if (f.first_row or 0) != end or f.rows < 0:
                problems.append(
                    Problem(path, f"task {task}'s rows start at {f.first_row}, not after the rows before ({end})",
                            _REEXPORT)
                )  # fmt: skip
                break
            end += f.rows
    return files, problems


MAX_STEP = content.MAX_STEP


def _meta_problems(entries: list[CommitEntry]) -> list[Problem]:
    """What the task entries claim that cannot be true: a task listed twice, a failed or retired task,
    a missing run, an impossible step."""
    problems, seen = [], set()
    for entry in entries:
        where = f"{MANIFEST_JSON} task {entry.task_id}"
        if entry.task_id in seen:
            problems.append(Problem(where, "is listed twice", _REEXPORT))
        seen.add(entry.task_id)
        if entry.status != "ok":
            problems.append(
                Problem(where, f"has status {entry.status!r}; only committed tasks are shared", _REEXPORT)
            )
        if not entry.run_id:
            problems.append(Problem(where, "names no run", _REEXPORT))
        for problem in content.meta_problems(entry):
            problems.append(Problem(where, problem, _REEXPORT))
    return problems


def _content_problems(f: FileEntry, table: pa.Table) -> list[Problem]:
    """Rows the warehouse must never hold: NULL where the contract forbids it, NaN or infinity, an
    impossible step or layer."""
    import pyarrow.compute as pc

    found = []
    for column in schema.table(f.table).all_columns:
        values = table.column(column.name)
        if column.stored_as_bytes:  # a Gram's float32 bytes: their values are checked
            try:
                values = values_column(values)
            except ValueError:
                found.append(f"{column.name} bytes that are not whole float32 values")
                continue
        if not column.nullable and values.null_count:
            found.append(f"{values.null_count} NULL {column.name}")
        kind = column.type.value_type if pa.types.is_list(column.type) else column.type
        if pa.types.is_floating(kind):
            flat = pc.list_flatten(values) if pa.types.is_list(column.type) else values
            bad = len(flat) - flat.null_count - pc.sum(pc.is_finite(flat)).as_py() if len(flat) else 0
            if bad:
                found.append(f"{bad} NaN or infinite {column.name}")
    for name, top in (("step", MAX_STEP), ("layer", 100_000)):
        if name in table.column_names and len(table):
            low, high = pc.min_max(table.column(name)).values()
            if low.as_py() is not None and (low.as_py() < 0 or high.as_py() > top):
                found.append(f"{name} outside 0..{top} ({low.as_py()}..{high.as_py()})")
    return [Problem(f.path, "holds " + "; ".join(found), _REEXPORT)] if found else []


def _check_file(folder: Path, f: FileEntry, checksums: bool) -> list[Problem]:
    """Size, sha256, Parquet footer, rows and columns of one listed file."""
    path = folder / f.path
    if path.is_symlink():  # a link could point anywhere on the importer's machine
        return [
            Problem(f.path, "is a symbolic link, not a file", "copy the folder with links resolved (cp -L)")
        ]
    problem = file_problem(folder, f, verify_sha256=checksums)
    if problem == "missing":
        return [
            Problem(
                f.path,
                "is listed in manifest.json but missing",
                "copy the whole folder again (it is incomplete)",
            )
        ]
    if problem is not None:
        return [
            Problem(
                f.path,
                f"does not match manifest.json: {problem}",
                "copy the folder again (the file is damaged)",
            )
        ]
    try:
        meta = pq.ParquetFile(path).metadata
        file_schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as error:
        return [
            Problem(
                f.path,
                f"is not a readable Parquet file ({error})",
                "copy the folder again (the file is damaged)",
            )
        ]
    problems = []
    if meta.num_rows != f.rows:  # a shared file's rows: the sum of its tasks' slices
        problems.append(
            Problem(f.path, f"holds {meta.num_rows} rows, manifest.json says {f.rows}", _REEXPORT)
        )
    problems += _check_columns(f, file_schema)
    if problems or not checksums:  # a quick check (attach without --verify) stops at the footer
        return problems
    try:  # every page, not only the footer: a damaged page can hide behind a matching sha256 of a lie
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        return [Problem(f.path, f"has a data page that does not decode ({error})", "copy the folder again")]
    return _content_problems(f, table)


def _check_columns(f: FileEntry, file_schema: pa.Schema) -> list[Problem]:
    """The file's columns and types against ``warehouse/schema.py`` (names exact, types equal)."""
    contract = schema.table(f.table).file_schema()
    given = {field.name: field.type for field in file_schema}
    wanted = {field.name: field.type for field in contract}
    missing = [c for c in wanted if c not in given]
    unknown = [c for c in given if c not in wanted]
    wrong = [f"{c} is {given[c]}, expected {t}" for c, t in wanted.items() if c in given and given[c] != t]
    if not (missing or unknown or wrong):
        return []
    what = f"columns do not match table {f.table!r} of schema version {schema.SCHEMA_VERSION}:"
    details = [
        f" missing {missing}" if missing else "",
        f" unknown {unknown}" if unknown else "",
        f" {'; '.join(wrong)}",
    ]
    return [
        Problem(
            f.path,
            what + ",".join(d for d in details if d.strip()),
            _REEXPORT + " from an unmodified warehouse",
        )
    ]


def _unlisted(folder: Path, listed: set[str]) -> list[Problem]:
    """Files no manifest entry lists (a reader's ``**/*.parquet`` glob would see them)."""
    problems = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts[0].startswith(".") or path.is_dir():
            continue  # a clone's .git / .gitattributes; folders hold nothing by themselves
        name = rel.as_posix()
        if name not in listed and name not in METADATA_FILES:
            problems.append(
                Problem(name, "is not listed in manifest.json", f"delete {name}, or export the dataset again")
            )
    return problems


def verify_error(folder: Path | str, problems: list[Problem]) -> ShareError:
    shown = problems[:20]
    lines = [f"  - {p.path}: {p.what}" for p in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    fixes = list(dict.fromkeys(p.fix for p in problems))
    return ShareError(
        f"shared dataset {folder} does not verify ({len(problems)} problem{'s' if len(problems) > 1 else ''}); "
        "the local warehouse was not touched:\n" + "\n".join(lines),
        fix="; ".join(fixes),
    )
