"""The warehouse's SQL functions and staging views, installed on every ``warehouse.connect()``.

Both are ``.sql`` files under ``warehouse/sql/`` in the one header grammar (``layerlake.core.sqlfile``):

- ``sql/macros/<name>.sql``: one ``CREATE MACRO`` each (CKA, effective rank, norms ...), formula in the
  header;
- ``sql/staging/<name>.sql``: one parameterised ``SELECT`` each, the shared first steps of the recipes
  (``sketch_rows``, ``cka_to_reference``, ``cka_curves``, ``layer_stabilisation``, ``spectra_ranks``).

A staging model becomes a view of the same name. Its parameters (``$estimator``, ``$threshold`` ...) are
DuckDB session variables, set to their declared defaults when the connection opens and read by the
view as ``CAST(getvariable('estimator') AS VARCHAR)``: DuckDB folds them at plan time, so a filter on a
parameter still reaches the Parquet scan. ``select * from cka_to_reference`` works in ``layerlake sql``
(``--param estimator=debiased`` changes one), and a recipe sets the values it was given, runs, and puts
the previous ones back (``staging_values``). Why not table macros: a DuckDB macro parameter named like
a column of a view it reads (``suite``, ``estimator``) fails to bind.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from layerlake.core.errors import SqlError
from layerlake.core.params import Param
from layerlake.core.sqlfile import SqlFile, SqlFolder

SQL_DIR = Path(__file__).resolve().parent / "sql"
MACROS = SqlFolder(SQL_DIR / "macros", "macro", required=("description", "signature"), allowed=("uses",))
STAGING = SqlFolder(
    SQL_DIR / "staging", "staging model", required=("description", "grain"), allowed=("param", "uses")
)
_PARAM = re.compile(r"\$([A-Za-z_]\w*)")


def install(con: Any) -> Any:
    """Define every macro, set every staging parameter to its default, create every staging view
    (the views read the warehouse's table views, which must exist already)."""
    install_functions(con)
    return install_staging(con)


def install_staging(con: Any) -> Any:
    """Set every staging parameter to its default and create every staging view (after the functions
    and the table views)."""
    for param in all_staging_params().values():
        con.execute(f"SET VARIABLE {param.name} = CAST(? AS {param.sql_type})", [param.default])
    for statement in staging_statements():
        con.execute(statement)
    return con


def install_functions(con: Any) -> Any:
    """Define the scalar macros only (they need no table): ``cka``, ``erank``, ``per`` ... and the
    Python functions some of them call (``svcca``, ``mean_cca``: ``warehouse.similarity``; ``cka_bytes``
    and the ``sketches`` view's ``gram``: ``warehouse.gram``; ``ww_alpha`` and its family:
    ``warehouse.powerlaw``)."""
    from layerlake.warehouse.gram import install_gram_functions
    from layerlake.warehouse.powerlaw import install_powerlaw
    from layerlake.warehouse.similarity import install_similarity

    install_gram_functions(con)
    install_powerlaw(con)
    install_similarity(con)
    for statement in macro_statements():
        con.execute(statement)
    return con


@cache
def macro_statements() -> tuple[str, ...]:
    """The ``CREATE MACRO`` statements, dependencies first."""
    return tuple(item.body for item in MACROS.closure(MACROS.names(), "macros"))


@cache
def staging_statements() -> tuple[str, ...]:
    """The ``CREATE VIEW`` statements of the staging models, dependencies first."""
    return tuple(view_sql(model) for model in STAGING.closure(STAGING.names(), "staging"))


def public_macros() -> list[SqlFile]:
    """The scalar macros a user calls (internal helpers start with ``_ll_``)."""
    return [m for m in MACROS.all() if not m.name.startswith("_ll_")]


def staging_params(name: str) -> tuple[Param, ...]:
    """A staging model's parameters: its own, then those of the models it reads."""
    merged: dict[str, Param] = {}
    for item in reversed(STAGING.closure([name], f"staging model {name}")):  # the model itself first
        for param in item.params:
            merged.setdefault(param.name, param)
    return tuple(merged.values())


@cache
def all_staging_params() -> dict[str, Param]:
    """Every staging parameter by name; two models declaring one name must declare it alike."""
    found: dict[str, Param] = {}
    for model in STAGING.all():
        for param in model.params:
            seen = found.setdefault(param.name, param)
            if (seen.type, seen.default) != (param.type, param.default):
                raise SqlError(
                    f"{model.path}: ${param.name} is declared as {param.type} = {param.default!r} here "
                    f"but as {seen.type} = {seen.default!r} elsewhere",
                    fix="declare a staging parameter the same way in every staging model",
                )
    return found


def view_sql(model: SqlFile) -> str:
    """``CREATE OR REPLACE VIEW <name> AS <body>`` with each ``$x`` read from the session variable x."""
    params = {p.name: p for p in staging_params(model.name)}
    unknown = sorted(set(_PARAM.findall(model.body)) - set(params))
    if unknown:
        raise SqlError(
            f"{model.path}: uses undeclared parameter(s) {unknown}", fix="declare them with `-- param:`"
        )
    body = _PARAM.sub(lambda m: f"CAST(getvariable('{m[1]}') AS {params[m[1]].sql_type})", model.body)
    return f"CREATE OR REPLACE VIEW {model.name} AS\n{body}"


@contextmanager
def staging_values(con: Any, values: Mapping[str, Any]) -> Iterator[None]:
    """Set staging parameters ``values`` (already validated) on ``con``; the previous values come back after."""
    params = all_staging_params()
    previous = {name: con.execute("SELECT getvariable(?)", [name]).fetchall()[0][0] for name in values}
    try:
        for name, value in values.items():
            con.execute(f"SET VARIABLE {name} = CAST(? AS {params[name].sql_type})", [value])
        yield
    finally:
        for name, value in previous.items():
            con.execute(f"SET VARIABLE {name} = CAST(? AS {params[name].sql_type})", [value])
