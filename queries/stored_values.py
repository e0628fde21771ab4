"""A recipe parameter that names something stored (a suite, model, run, step, layer, site, source,
logged scalar, or the estimator, kernel, tensor or matrix the stored rows were made with; a key of the
runs' config to group by) must name something the warehouse holds: otherwise the recipe would return no rows and
exit 0, and a misspelt model would look like a finding. ``check_stored_values`` runs before a recipe
and raises a ``ParameterError`` naming the value and the nearest stored ones.

Each parameter maps to the column and base tables that hold its values (``NAMED``); the values are
looked up within what the other parameters already chose (a step among the chosen model's steps). The
SQL is built only from the names in ``NAMED``; the user's values are bound parameters.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layerlake.core.choices import did_you_mean
from layerlake.core.errors import ParameterError


@dataclass(frozen=True)
class Named:
    """Where a parameter's values are stored: ``column`` of each of ``tables``; ``also`` are values
    that are valid without being stored."""

    column: str
    tables: tuple[str, ...]
    also: tuple[Any, ...] = ()
    optional: bool = False  # when nothing of this kind is stored at all, the recipe shows the rest: no error


# The source the staging view cka_curves gives the CKA computed from stored sketches (beside each imported
# source's name): an import may not take it (``queries.imports.RESERVED_SOURCES``)
COMPUTED = "computed"
# Every base table a recipe may read, so that a value held by any of them is found.
_ROWS = ("runs", "checkpoints", "sketches", "spectra", "activation_stats", "imported_metrics", "scalars")
_MODELS = Named("model", _ROWS)
_RUNS = Named("run_id", _ROWS)
# A step parameter names a checkpoint (the Grams compared, the reference): the steps of stored rows of
# checkpoints, not those of logged scalars (a tracked run logs every step; a step that is no checkpoint's
# gave no rows)
_STEPS = Named("step", tuple(t for t in _ROWS if t != "scalars"))
_SITES = Named("site", ("sketches", "activation_stats", "imported_metrics"))
# In checking order: a parameter earlier in the list narrows where the later ones are looked up.
NAMED: dict[str, Named] = {
    "suite": Named("suite", _ROWS),
    "model": _MODELS,
    "models": _MODELS,
    "run_a": _RUNS,
    "run_b": _RUNS,
    "step": _STEPS,
    "reference_step": _STEPS,
    "layer": Named("layer", ("sketches", "spectra", "activation_stats", "imported_metrics")),
    "site": _SITES,
    "sites": _SITES,
    "source": Named("source", ("imported_metrics",), also=(COMPUTED,)),
    "scalar": Named("name", ("scalars",), optional=True),
    # how the stored Grams and spectra were made: a kind never extracted would give no rows
    "estimator": Named("estimator", ("sketches",), optional=True),
    "kernel": Named("kernel", ("sketches",), optional=True),
    "tensor": Named("tensor", ("spectra",), optional=True),
    "matrices": Named("matrix", ("spectra",), optional=True),  # checkpoints alone have no logged scalars
}
NARROWS = {"suite": "suite", "model": "model", "models": "model"}  # parameter -> column it narrows by
SHOWN = 12  # stored values listed in a fix
# Every shard file lives under <table>/<suite>/<model>/ and holds only that suite and model (the writer's
# path rule), so the ``manifest`` view (one row per file) knows their values without reading a file: a
# dataset attached by URL is not scanned to check a model name.
PATH_COLUMNS = ("suite", "model")


def within(named: Named, tables: frozenset[str]) -> Named:
    """``named`` looked up only in ``tables`` (all of its own when it shares none with them)."""
    kept = tuple(t for t in named.tables if t in tables)
    return Named(named.column, kept or named.tables, named.also, named.optional)


def check_stored_values(con: Any, params: dict[str, Any]) -> None:
    """Raise ``ParameterError`` for the first value of ``params`` (bound recipe parameters) that names
    something the warehouse on ``con`` does not hold, or for an empty list (which names nothing, and
    would give no rows); None values (meaning "all") are not checked."""
    scope: dict[str, list[Any]] = {}
    columns = table_columns(con)  # read once: which table has which column
    for name, named in NAMED.items():
        value = params.get(name)
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ParameterError(
                f"{name}=[] names no {named.column}: the recipe would return no rows",
                fix=f"list at least one, or leave {name} out (or {name}=null) for all of them",
            )
        stored = stored_values(con, named, scope, columns)
        missing = [v for v in values if v not in stored and v not in named.also]
        if missing and (stored or not named.optional):
            known = [*named.also, *sorted(stored, key=lambda v: (str(type(v)), v))] if stored else []
            raise ParameterError(not_stored(name, missing[0], known, scope), fix=_fix(named, stored))
        if name in NARROWS:
            scope[NARROWS[name]] = values
    if params.get("group_by") is not None:
        check_config_key(con, params["group_by"], scope, columns)


def check_config_key(con: Any, key: str, scope: dict[str, list[Any]], columns: dict[str, set[str]]) -> None:
    """``key`` (``lr``, ``optim.lr``) must name a value in the config of at least one run within ``scope``
    (``runs.config_json``, nested keys joined by dots); a ``ParameterError`` lists the keys they have."""
    keys = config_keys(con, scope, columns)
    if key in keys:
        return
    where = _scope_text(scope)
    if not keys:
        raise ParameterError(
            f"group_by {key!r}: no run{where} recorded a config to group by",
            fix="pass `layerlake.track(..., config={...})` (a Hydra job records its own), or leave group_by out",
        )
    shown = sorted(keys)
    raise ParameterError(
        f"group_by {key!r} is not a key of the runs' config{where}{did_you_mean(key, shown)}",
        fix="use one of: " + ", ".join(shown[:SHOWN]) + (" ..." if len(shown) > SHOWN else ""),
    )


def config_keys(con: Any, scope: dict[str, list[Any]], columns: dict[str, set[str]]) -> set[str]:
    """The keys of every run's config within ``scope`` that hold a value (not a section), nested keys
    joined by dots (``{"optim": {"lr": 0.1}}`` -> ``optim.lr``)."""
    import json

    where, params = ["config_json is not null"], {}
    for column, values in scope.items():
        if column in columns.get("runs", ()):
            params[f"scope_{column}"] = list(values)
            where.append(f"list_contains($scope_{column}, {column})")
    keys: set[str] = set()
    for (text,) in con.execute(
        f"select distinct config_json from runs where {' and '.join(where)}", params
    ).fetchall():
        try:
            keys |= _leaf_keys(json.loads(text))
        except ValueError:
            continue
    return keys


def _leaf_keys(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {k for name, item in value.items() for k in _leaf_keys(item, f"{prefix}{name}.")}
    return {prefix[:-1]} if prefix else set()


def stored_values(
    con: Any, named: Named, scope: dict[str, list[Any]], columns: dict[str, set[str]]
) -> set[Any]:
    """The distinct non-null values of ``named.column`` in its tables (``columns``: table -> its
    columns), within ``scope`` (column -> values)."""
    if named.column in PATH_COLUMNS and "manifest" in columns:
        return _from_manifest(con, named, scope)
    selects, params = [], {}
    for table in named.tables:
        if named.column not in columns.get(table, ()):
            continue
        where = [f"{named.column} is not null"]
        for column, values in scope.items():
            if column in columns[table]:
                params[f"scope_{column}"] = list(values)
                where.append(f"list_contains($scope_{column}, {column})")
        selects.append(f"select distinct {named.column} as value from {table} where {' and '.join(where)}")
    if not selects:
        return set()
    sql = " union ".join(selects)
    used = {k: v for k, v in params.items() if f"${k}" in sql}
    return {row[0] for row in con.execute(sql, used).fetchall()}


def table_columns(con: Any) -> dict[str, set[str]]:
    rows = con.execute(
        "select table_name, column_name from information_schema.columns where table_schema = 'main'"
    ).fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def not_stored(name: str, value: Any, stored: Sequence[Any], scope: dict[str, list[Any]]) -> str:
    where = _scope_text(scope)
    if not stored:
        return f"{name} {value!r}: the warehouse holds no {name} values{where}"
    return f"{name} {value!r} is not in the warehouse{where}{_nearest(value, stored)}"


def _nearest(value: Any, stored: Sequence[Any]) -> str:
    """`` (did you mean ...?)``: the closest names by spelling, the closest numbers by distance."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        numbers = [s for s in stored if isinstance(s, (int, float))]
        close = sorted(numbers, key=lambda s: (abs(s - value), s))[:2]
        return " (nearest: " + ", ".join(str(c) for c in close) + ")" if close else ""
    names = [str(s) for s in stored]
    spelt = did_you_mean(value, names)
    if spelt:
        return spelt
    close = difflib.get_close_matches(str(value), names, n=2, cutoff=0)
    return " (nearest: " + ", ".join(repr(c) for c in close) + ")" if close else ""


def _scope_text(scope: dict[str, list[Any]]) -> str:
    parts = [
        f"{column} {', '.join(map(str, values[:3]))}{' ...' if len(values) > 3 else ''}"
        for column, values in scope.items()
    ]
    return f" (for {'; '.join(parts)})" if parts else ""


def _fix(named: Named, stored: set[Any]) -> str:
    if not stored:
        return (
            "extract or import data first (`layerlake extract`, `layerlake demo`, `layerlake share import`), "
            "or choose another suite or model; `layerlake runs` lists what is stored"
        )
    values = sorted(stored, key=lambda v: (str(type(v)), v))
    shown = ", ".join(map(str, [*named.also, *values][:SHOWN])) + (" ..." if len(values) > SHOWN else "")
    return f"use one of the stored values: {shown}"


def _from_manifest(con: Any, named: Named, scope: dict[str, list[Any]]) -> set[Any]:
    """``stored_values`` of a path column (suite, model), from the ``manifest`` view's files."""
    where = [f"{named.column} is not null", "list_contains($tables, table_name)"]
    params: dict[str, Any] = {"tables": list(named.tables)}
    for column, values in scope.items():
        if column in PATH_COLUMNS:
            params[f"scope_{column}"] = list(values)
            where.append(f"list_contains($scope_{column}, {column})")
    sql = f"select distinct {named.column} from manifest where {' and '.join(where)}"
    return {row[0] for row in con.execute(sql, params).fetchall()}
