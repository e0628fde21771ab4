"""Imports per-layer metrics computed elsewhere (CSV or Parquet, long form) into ``imported_metrics``.

Input columns, exactly: ``model, step, layer, site`` (or ``module``), ``metric, value``; one row per
(model, step, layer, site, metric). The whole file is validated (columns, types, duplicates, names)
before anything is written; then each model is one commit through ``warehouse.writer.Warehouse``
with the deterministic task id ``import.<source>.<model>``: importing the same rows again is a no-op
(the manifest entry records their sha256), importing changed rows replaces that model's shard cleanly.

Module names map to layerlake's sites (``SITE_MAP``, extendable with ``--site-map FROM=TO``), so the
curve recipes read imported CKA as they read computed CKA. The map for the Pythia paper's modules:

    attention.dense            -> ov              their "OV" activation: W_O applied to their V slice
    mlp.dense_4h_to_h          -> mlp_out         the MLP block's output
    attention.query_key_value  -> qkv_last_third  columns 2d..3d of the fused QKV output, which they took
                                                  as V: a site of its own. GPT-NeoX interleaves [q|k|v] per
                                                  head, so with H heads these are the d_head pieces
                                                  2H..3H-1 of [q0 k0 v0 q1 ...]: q, k, v of the last third
                                                  of the heads only when 3 divides H, else starting inside
                                                  a head ([v2 q3 k3 v3] for 4 heads, [k5 v5 q6 k6 v6 q7 k7
                                                  v7] for 8; layerlake.etl.sites.paper_slice_pieces)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from layerlake.core.hashing import sha256_file
from layerlake.queries.errors import MetricsImportError
from layerlake.queries.stored_values import COMPUTED

SITE_MAP = {
    "attention.dense": "ov",
    "mlp.dense_4h_to_h": "mlp_out",
    "attention.query_key_value": "qkv_last_third",
}
KEY = ("model", "step", "layer", "site", "metric")
COLUMNS = ("model", "step", "layer", "site", "metric", "value")
SHOWN = 5  # offending rows quoted in an error
# The largest value each integer column takes: a step is a count of optimizer updates (Pythia's last is
# 143,000; a trillion is far beyond any training run) and a layer an index into a model's blocks. Both
# fit int64 with room to spare, so no value overflows on its way into Arrow, Parquet or DuckDB.
MAX_VALUE = {"step": 10**12, "layer": 10**5}


@dataclass(frozen=True)
class Outcome:
    model: str
    task_id: str
    rows: int
    status: str  # committed | unchanged


def read_file(path: Path) -> pa.Table:
    """The file as an Arrow table: Parquet by suffix ``.parquet`` / ``.pq``, else CSV (all text)."""
    if not path.is_file():
        raise MetricsImportError(f"no metrics file at {path}", fix="pass the path of a CSV or Parquet file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
            handle.read()  # the whole file must be UTF-8 text; a bad byte is named here, not deep in Arrow
        types = {name: pa.string() for name in header}  # read as text: _integers/_floats say which row is bad
        return pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)
        )
    except UnicodeDecodeError as error:
        raise MetricsImportError(
            f"{path} is not UTF-8 text: byte {error.object[error.start]:#04x} at offset {error.start} "
            f"({error.reason})",
            fix="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass a Parquet file",
        ) from None
    except (pa.ArrowInvalid, OSError) as error:
        raise MetricsImportError(
            f"cannot read {path}: {_first_line(error)}", fix="pass a well-formed CSV or Parquet file"
        ) from error


def validate(table: pa.Table, site_map: dict[str, str], where: str) -> pa.Table:
    """The rows as (model, step, layer, site, metric, value) with contract types and mapped sites."""
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MetricsImportError(
            f"{where} has more than one column named {', '.join(map(repr, twice))}",
            fix="give each column once: model, step, layer, site (or module), metric, value",
        )
    if table.num_rows == 0:
        raise MetricsImportError(f"{where} holds no rows (a header only)", fix="pass a file with rows")
    if "module" in names and "site" in names:
        raise MetricsImportError(f"{where} has both `site` and `module` columns", fix="keep one of them")
    if "module" in names:
        table = table.rename_columns(["site" if n == "module" else n for n in names])
    missing = [c for c in COLUMNS if c not in table.column_names]
    unknown = [c for c in table.column_names if c not in COLUMNS]
    if missing or unknown:
        raise MetricsImportError(
            f"{where}: missing columns {missing}, unknown columns {unknown}",
            fix="give exactly: model, step, layer, site (or module), metric, value",
        )
    columns = {
        "model": _text(table, "model", where),
        "step": _integers(table, "step", where),
        "layer": _integers(table, "layer", where),
        "site": _mapped(_text(table, "site", where), site_map),
        "metric": _text(table, "metric", where),
        "value": _floats(table, "value", where),
    }
    result = pa.table(columns)
    _check_duplicates(result, where)
    return result


def _bad(where: str, column: str, rows: list[int], values: list, expected: str) -> MetricsImportError:
    quoted = ", ".join(f"row {r + 2}: {v!r}" for r, v in zip(rows[:SHOWN], values[:SHOWN], strict=False))
    return MetricsImportError(
        f"{where}: column {column!r} must hold {expected}; {len(rows)} bad value(s) ({quoted})",
        fix=f"fix those rows of {column} (row numbers count the header as row 1)",
    )


def _text(table: pa.Table, column: str, where: str) -> pa.Array:
    values = table.column(column).combine_chunks()
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        raw = values.to_pylist()
        bad = [i for i, v in enumerate(raw) if v is not None and not _is_utf8(v)]
        if bad:
            raise _bad(where, column, bad, [raw[i] for i in bad], "UTF-8 text")
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    bad = [i for i, v in enumerate(values.to_pylist()) if v is None or not v.strip()]
    if bad:
        raise _bad(where, column, bad, [values[i].as_py() for i in bad], "non-empty text")
    return pc.utf8_trim_whitespace(values).cast(pa.string())


def _integers(table: pa.Table, column: str, where: str) -> pa.Array:
    values = table.column(column).combine_chunks()
    parsed = [_int(v) for v in values.to_pylist()]
    top = MAX_VALUE[column]
    bad = [i for i, v in enumerate(parsed) if v is None or not 0 <= v <= top]
    if bad:
        raise _bad(
            where, column, bad, [values[i].as_py() for i in bad], f"non-negative integers up to {top:,}"
        )
    return pa.array(parsed, pa.int64())


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None  # NaN and inf are not integers
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _floats(table: pa.Table, column: str, where: str) -> pa.Array:
    """Finite numbers; an empty cell is NULL (a missing value); text that is not a number, NaN and
    infinity are errors (the warehouse never stores them: its ``non_finite`` audit would fail)."""
    values = table.column(column).combine_chunks()
    if pa.types.is_floating(values.type) or pa.types.is_integer(values.type):
        parsed = values.cast(pa.float64()).to_pylist()
        bad = [i for i, v in enumerate(parsed) if v is not None and not math.isfinite(v)]
    else:
        parsed, bad = [], []
        for i, v in enumerate(values.to_pylist()):
            text = "" if v is None else str(v).strip()
            try:
                number = float(text) if text else None
            except ValueError:
                number = None
                bad.append(i)
            else:
                if number is not None and not math.isfinite(number):
                    bad.append(i)
            parsed.append(number)
    if bad:
        raise _bad(
            where, column, bad, [values[i].as_py() for i in bad], "finite numbers (or empty for missing)"
        )
    return pa.array(parsed, pa.float64())


def _mapped(sites: pa.Array, site_map: dict[str, str]) -> pa.Array:
    return pa.array([site_map.get(s, s) for s in sites.to_pylist()], pa.string())


def _check_duplicates(table: pa.Table, where: str) -> None:
    counts = table.group_by(list(KEY)).aggregate([([], "count_all")])
    dupes = counts.filter(pc.greater(counts["count_all"], 1))
    if dupes.num_rows:
        shown = "; ".join(
            ", ".join(f"{k}={row[k]}" for k in KEY) for row in dupes.slice(0, SHOWN).to_pylist()
        )
        raise MetricsImportError(
            f"{where}: {dupes.num_rows} (model, step, layer, site, metric) key(s) appear more than once ({shown})",
            fix="keep one row per key (after module names are mapped to sites: check --site-map)",
        )


def content_sha256(table: pa.Table) -> str:
    """sha256 of a model's rows in key order: equal rows give equal hashes whatever the file order."""
    ordered = table.sort_by([(k, "ascending") for k in KEY if k in table.column_names])
    sink = pa.BufferOutputStream()
    pacsv.write_csv(ordered, sink)  # text, not raw buffers: padding bytes would make the hash unstable
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


# Source names the recipes give rows that were not imported: an import under one of them would mix its
# values into those rows (cka_curves' source = 'computed': the curves from the stored sketches)
RESERVED_SOURCES = {COMPUTED: "the CKA the recipes compute from stored sketches"}


def check_source(source: str) -> None:
    """``source`` is not a name the recipes reserve (``RESERVED_SOURCES``)."""
    if source in RESERVED_SOURCES:
        raise MetricsImportError(
            f"--source {source!r} is reserved: it names {RESERVED_SOURCES[source]}, which imported rows "
            "would be mixed into",
            fix="name the rows' origin, e.g. --source pythia-paper",
        )


def import_table(rows: pa.Table, root: Path, suite: str, source: str, meta: dict) -> list[Outcome]:
    """Commit validated ``rows`` (from ``validate``) model by model; returns what happened per model."""
    from layerlake.warehouse.layout import check_name
    from layerlake.warehouse.runs import (
        RunKind,
        RunStatus,
        import_run_id,
        new_run,
        prepare_run,
        refuse_archived,
    )
    from layerlake.warehouse.writer import Warehouse, discard

    check_name("source", source)
    check_source(source)
    check_name("suite", suite)
    models = sorted(set(rows.column("model").to_pylist()))
    for model in models:
        check_name("model", model)
        check_name("run id", import_run_id(source, model))
    store = Warehouse(root)
    store.check_version()
    outcomes, prepared = [], []
    try:
        for model in models:
            part = rows.filter(pc.equal(rows["model"], model)).drop_columns(["model"])
            part = part.sort_by([(k, "ascending") for k in ("step", "layer", "site", "metric")])
            part = part.append_column("source", pa.array([source] * part.num_rows, pa.string()))
            task_id, digest = f"import.{source}.{model}", content_sha256(part)
            if (
                store.is_committed(task_id)
                and store.committed()[task_id].meta.get("content_sha256") == digest
            ):
                outcomes.append(Outcome(model, task_id, part.num_rows, "unchanged"))
                continue
            entry_meta = {**meta, "source": source, "content_sha256": digest, "kind": "import-metrics"}
            run_id = import_run_id(source, model)
            prepared.append(
                store.prepare(task_id, suite, model, {"imported_metrics": part}, entry_meta, run_id=run_id)
            )
            run = new_run(run_id, suite, model, RunKind.imported, {"source": source, **meta})
            prepared.append(prepare_run(store, run.ended(RunStatus.finished)))
            outcomes.append(Outcome(model, task_id, part.num_rows, "committed"))
    except BaseException:
        discard([s for _, staged in prepared for s in staged])
        raise
    if prepared:
        try:  # a write into an archived run is refused (its new rows would show, the rest stay hidden)
            refuse_archived(
                store, {e.run_id for e, _ in prepared}, "import into it", "or import under another --source"
            )
        except BaseException:
            discard([s for _, staged in prepared for s in staged])
            raise
        store.publish(prepared)  # every model at once: one manifest line, all of them or none
    return outcomes


def parse_site_map(pairs: list[str], defaults: bool) -> dict[str, str]:
    """The built-in map (unless ``defaults`` is False) updated with ``FROM=TO`` pairs."""
    mapping = dict(SITE_MAP) if defaults else {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise MetricsImportError(
                f"--site-map {pair!r} is not FROM=TO", fix="write e.g. --site-map attention.dense=ov"
            )
        mapping[source.strip()] = target.strip()
    return mapping


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="layerlake import-metrics",
        description="Import per-layer metrics (model, step, layer, site|module, metric, value) into the warehouse.",
    )
    p.add_argument("file", type=Path, help="CSV or Parquet file in long form")
    p.add_argument("--source", required=True, help="name recorded with every row, e.g. pythia-paper")
    p.add_argument("--suite", help="suite the models belong to (default: the configured suite)")
    p.add_argument(
        "--site-map",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="map a module name to a site (repeatable; extends the built-in paper map)",
    )
    p.add_argument("--no-default-site-map", action="store_true", help="do not apply the built-in paper map")
    p.add_argument("--root", type=Path, help="warehouse root (default: the configured paths.warehouse)")
    p.add_argument("--license", help="the rows' license (SPDX id, e.g. MIT): kept with them when shared")
    p.add_argument(
        "--citation", help="how to cite the rows' source (e.g. BibTeX): kept with them when shared"
    )
    return p


def configured_defaults() -> tuple[str, Path]:
    """The composed config's suite name and warehouse root (what ``layerlake query`` would use)."""
    from layerlake.conf.compose import compose

    settings = compose()
    return settings.suite.name, Path(settings.paths.warehouse)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console

    site_map = parse_site_map(args.site_map, not args.no_default_site_map)
    rows = validate(read_file(args.file), site_map, str(args.file))
    suite, root = _fill(args.suite, args.root)
    meta = {"file": Path(args.file).name, "file_sha256": sha256_file(Path(args.file)), "site_map": site_map}
    if args.license:
        meta["license"] = args.license
    if args.citation:
        meta["citation"] = args.citation
    outcomes = import_table(rows, root.expanduser().resolve(), suite, args.source, meta)
    console = Console(highlight=False, soft_wrap=True, markup=False)  # site and model names are data
    for o in outcomes:
        console.print(f"{o.status:>9}  {o.model}: {o.rows} rows (task {o.task_id})")
    sites = ", ".join(sorted(set(rows.column("site").to_pylist())))
    console.print(f"imported into {root} as suite={suite} source={args.source}; sites: {sites}")
    return 0


def _fill(suite: str | None, root: Path | None) -> tuple[str, Path]:
    """``--suite`` and ``--root``, each the configured one when not given (an empty ``--suite ""`` is
    given, and refused by name: it once silently became the configured suite)."""
    if suite is not None and root is not None:
        return suite, root
    default_suite, default_root = configured_defaults()
    return default_suite if suite is None else suite, default_root if root is None else root
