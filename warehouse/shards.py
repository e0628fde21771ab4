"""What a shard file holds and how its bytes reach the disk: the contract's columns (``conform``), the
Parquet encoding (``parquet_bytes``), a file of several tasks' slices (``slices_file``), durable
writes and verified copies. Pure functions of data and paths; ``warehouse.writer`` decides where and
when they are used."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from layerlake.core.hashing import sha256_bytes, stable_hash
from layerlake.warehouse import schema
from layerlake.warehouse.errors import ManifestError, WarehouseError
from layerlake.warehouse.gram import bytes_column, values_column
from layerlake.warehouse.layout import shard_path
from layerlake.warehouse.manifest import FileEntry, read_task_rows

# Float arrays (Grams, spectra) gain nothing from dictionary encoding; everything else is small.
_NO_DICTIONARY_TYPES = (pa.list_(pa.float32()), pa.list_(pa.float64()))


def conform(name: str, table: pa.Table, suite: str, model: str, run_id: str) -> pa.Table:
    """``table`` cast to the contract of warehouse table ``name``, with the identity columns first.

    Identity columns (suite, model, run_id) may be present if they hold exactly the commit's values.
    """
    try:
        spec = schema.table(name)
    except KeyError as error:
        raise WarehouseError(str(error.args[0]), fix="commit only tables of warehouse/schema.py") from None
    for column, expected in zip(schema.IDENTITY_COLUMNS, (suite, model, run_id), strict=True):
        if column in table.column_names:
            values = set(table.column(column).to_pylist())
            if values - {expected}:
                raise WarehouseError(
                    f"table {name!r} has {column} values {sorted(map(str, values))} but is committed as {expected!r}",
                    fix=f"drop the {column} column (the commit sets it) or commit each {column} apart",
                )
            table = table.drop_columns([column])
    wanted, given = spec.column_names, table.column_names
    missing = [c for c in wanted if c not in given]
    extra = [c for c in given if c not in wanted]
    if missing or extra:
        raise WarehouseError(
            f"table {name!r} does not match the contract: missing columns {missing}, unknown columns {extra}",
            fix="build the table with layerlake.warehouse.schema.table(name).arrow_schema() (docs/schema.md)",
        )
    table = table.select(list(wanted))
    for column in spec.columns:
        if not column.nullable and table.column(column.name).null_count:
            raise WarehouseError(
                f"table {name!r} column {column.name!r} holds NULLs but the contract forbids them",
                fix=f"fill {column.name} for every row (docs/schema.md says what it means)",
            )
    for column in spec.columns:  # rows read back from a stored file hold bytes: the list again, to check
        if column.stored_as_bytes and pa.types.is_binary(table.column(column.name).type):
            index = table.column_names.index(column.name)
            table = table.set_column(index, column.name, values_column(table.column(column.name)))
    try:
        table = table.cast(spec.arrow_schema())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as error:
        types = ", ".join(f"{f.name}: {f.type}" for f in table.schema)
        raise WarehouseError(
            f"table {name!r} has types that do not cast to the contract ({error}); given {types}",
            fix="cast the columns to the types in docs/schema.md",
        ) from error
    n = table.num_rows
    identity = [pa.array([value] * n, pa.string()) for value in (suite, model, run_id)]
    own = [
        bytes_column(table.column(c.name)) if c.stored_as_bytes else table.column(c.name)
        for c in spec.columns
    ]
    return pa.Table.from_arrays([*identity, *own], schema=spec.file_schema())


def reading_order(name: str, table: pa.Table) -> pa.Table:
    """One task's rows in the order a reader skips by: whole-layer rows (``head`` NULL) before per-head
    rows, each sorted by the table's key (step, layer, site ...). With ``parquet_bytes``' row groups, a
    query of whole layers (every recipe's default) skips the per-head Grams by their statistics."""
    keys = [(c, "ascending") for c in schema.table(name).key if c in table.column_names]
    if not keys or table.num_rows < 2:
        return table
    if "head" not in table.column_names:
        return table.sort_by(keys)
    flagged = table.append_column("_ll_per_head", pc.is_valid(table.column("head")))
    return flagged.sort_by([("_ll_per_head", "ascending"), *keys]).drop_columns(["_ll_per_head"])


def row_group_bounds(table: pa.Table) -> list[int]:
    """Where a file's row groups start: a new one wherever ``head`` turns from NULL to set or back, so
    that no row group mixes whole-layer and per-head rows (their statistics then tell them apart)."""
    if "head" not in table.column_names or table.num_rows == 0:
        return [0]
    per_head = pc.is_valid(table.column("head")).to_numpy(zero_copy_only=False)
    changes = (per_head[1:] != per_head[:-1]).nonzero()[0] + 1
    return [0, *changes.tolist()]


def parquet_bytes(name: str, table: pa.Table, task_id: str) -> bytes:
    """The Parquet file of one shard, in memory (zstd, contract metadata in the footer)."""
    metadata = {
        b"layerlake.schema_version": str(schema.SCHEMA_VERSION).encode(),
        b"layerlake.task_id": task_id.encode(),
        b"layerlake.table": name.encode(),
    }
    table = table.replace_schema_metadata(metadata)
    as_bytes = {c.name for c in schema.table(name).columns if c.stored_as_bytes}
    dictionary = [
        f.name for f in table.schema if f.type not in _NO_DICTIONARY_TYPES and f.name not in as_bytes
    ]
    # Stored Grams are float noise to zstd (7 % smaller) and cost DuckDB's scan 3-4x its time to inflate
    # (warehouse.gram): written plain.
    compression = {f.name: "none" if f.name in as_bytes else "zstd" for f in table.schema}
    sink = pa.BufferOutputStream()
    bounds = row_group_bounds(table)
    with pq.ParquetWriter(
        sink, table.schema, compression=compression, use_dictionary=dictionary, write_statistics=dictionary
    ) as writer:
        for start, end in zip(bounds, [*bounds[1:], table.num_rows], strict=True):
            writer.write_table(table.slice(start, end - start))
    return sink.getvalue().to_pybytes()


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` and fsync it."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def slices_file(
    table: str, suite: str, model: str, members: Sequence[tuple[tuple[str, str], Path, FileEntry]]
) -> tuple[FileEntry, bytes, dict[tuple[str, str], FileEntry]]:
    """One shard file of ``table`` holding the rows each member owns, concatenated in the order given:
    its listing, its bytes, and per member where its rows are in it. A member is ``((task_id, path),
    root, listing)``: a task's listing of a file under a warehouse root or a shared folder. Several
    members make a merged file (``compact.<hash of their task ids>``) of which each owns a slice
    (``first_row``, ``rows``); one member makes a file of its own, named after its task."""
    parts = [read_task_rows(source, f).replace_schema_metadata(None) for _, source, f in members]
    task_ids = [task for (task, _), _, _ in members]
    name = task_ids[0] if len(members) == 1 else "compact." + stable_hash(sorted(task_ids))[:16]
    data = parquet_bytes(table, pa.concat_tables(parts), name)
    digest = sha256_bytes(data)
    rel = shard_path(table, suite, model, name, digest)
    where, offset = {}, 0
    for (key, _, _), part in zip(members, parts, strict=True):
        where[key] = FileEntry(
            table, rel, digest, part.num_rows, len(data), None if len(members) == 1 else offset
        )
        offset += part.num_rows
    return FileEntry(table, rel, digest, offset, len(data)), data, where


def copy_verified(src: Path, dst: Path, listed: FileEntry) -> None:
    """Copy ``src`` to a new file ``dst`` byte for byte (fsynced), checking size and sha256 against
    ``listed``; a ``ManifestError`` when they differ (``dst`` is then removed)."""
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
        if error.filename == str(src):
            raise ManifestError(f"shard {src} listed in the manifest is missing",
                                fix="run `layerlake check`, then re-extract its task") from error  # fmt: skip
        raise
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    if size != listed.bytes or digest.hexdigest() != listed.sha256:
        dst.unlink(missing_ok=True)
        raise ManifestError(
            f"shard {src} does not match its manifest entry ({size} bytes, listed {listed.bytes}; sha256 differs)",
            fix="run `layerlake check`; re-extract the task, or retry if a commit was running",
        )
