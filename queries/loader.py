"""Loads SQL recipes: one ``.sql`` file per recipe in ``queries/``, in the one header grammar
(``layerlake.core.sqlfile``)::

    -- name: stabilisation                          (must equal the file name)
    -- description: one paragraph of what it finds
    -- param: $threshold double in [0, 1] = 0.9 | what it means   (its own parameters; see core.params)
    -- uses: layer_stabilisation                    (staging models of warehouse/sql/staging/)
    -- grain: one row per (suite, model, source, site, layer, head)
    -- plot: bars x=layer value=...                 (a spec for queries.figures; `none` for no plot)
    -- title: When each layer's CKA stays >= {threshold}   (the figure's title in words; required with a plot)

A recipe reads the staging models it ``uses`` as the views ``warehouse.connect()`` installs, and
inherits their parameters, declared there once: ``run_recipe`` sets those as the session variables the
views read (``warehouse.macros.staging_values``) and binds the recipe's own as ``$name``. On load, the loader
refuses a recipe whose declared parameters and the ``$names`` its SQL uses differ, and anything but a
single read-only ``SELECT``. Each recipe's parameters and defaults are also its Hydra config
(``+recipe=<name>``, registered by ``register_recipe_configs``): they are declared in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from layerlake.core.choices import did_you_mean
from layerlake.core.duck import STORED_FILE_FIX, read_only_statement, reads_a_damaged_file
from layerlake.core.errors import ParameterError, SqlError
from layerlake.core.params import Param
from layerlake.core.sqlfile import SqlFolder
from layerlake.queries.errors import RecipeError
from layerlake.queries.stored_values import check_stored_values
from layerlake.warehouse.macros import STAGING, all_staging_params, staging_params, staging_values

RECIPES_DIR = Path(__file__).resolve().parent
# Parameters the `query` command fills from the composed config (suite=..., models=[...]) unless given:
# they are not part of a recipe's Hydra config.
CONTEXT_PARAMS = ("suite", "models")


def recipe_folder(directory: Path = RECIPES_DIR) -> SqlFolder:
    return SqlFolder(
        directory, "recipe", required=("description",), allowed=("param", "uses", "plot", "title", "grain")
    )


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    params: tuple[Param, ...]  # the recipe's own, then inherited from its staging models
    own: frozenset[str]  # the parameters its SQL uses, bound as $name (staging parameters are also set as
    # the session variables the staging views read)
    grain: str
    plot: str
    title: str  # the figure's title in words; {name} is filled by a parameter's or the result's value
    sql: str
    path: Path

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


def recipe_names(directory: Path = RECIPES_DIR) -> list[str]:
    """The names of the recipes in ``directory`` (its ``*.sql`` files), sorted."""
    return recipe_folder(directory).names()


def list_recipes(directory: Path = RECIPES_DIR) -> list[Recipe]:
    """Every recipe, loaded and checked."""
    return [load_recipe(name, directory) for name in recipe_names(directory)]


def load_recipe(name: str, directory: Path = RECIPES_DIR) -> Recipe:
    """The recipe called ``name``, composed with its staging models and checked (params, read-only)."""
    try:
        return _load(name, Path(directory).resolve())
    except RecipeError:
        raise
    except SqlError as error:
        raise RecipeError(error.message, fix=error.fix) from error


@cache
def _load(name: str, directory: Path) -> Recipe:
    recipe = recipe_folder(directory).get(name)
    unknown = [u for u in recipe.uses if u not in STAGING.names()]
    if unknown:
        raise RecipeError(
            f"{recipe.path}: uses unknown staging model(s) {unknown}{did_you_mean(unknown[0], STAGING.names())}",
            fix=f"use staging models of warehouse/sql/staging/: {', '.join(STAGING.names())}",
        )
    merged: dict[str, Param] = {p.name: p for p in recipe.params}
    for model in recipe.uses:
        for param in staging_params(model):
            merged.setdefault(param.name, param)
    own = _check_sql(
        name, recipe.body, frozenset(p.name for p in recipe.params), frozenset(merged), recipe.path
    )
    plot = recipe.plot or "none"
    if plot != "none" and not recipe.title:
        raise RecipeError(
            f"{recipe.path}: recipe {name!r} draws a figure ({plot}) but has no title",
            fix="add a `-- title:` line saying in words what the figure shows",
        )
    return Recipe(
        name, recipe.description, tuple(merged.values()), own, recipe.grain, plot, recipe.title, recipe.body,
        recipe.path,
    )  # fmt: skip


def _check_sql(
    name: str, sql: str, declared: frozenset[str], known: frozenset[str], path: Path
) -> frozenset[str]:
    """One read-only SELECT that uses every parameter it declares and only parameters it declares or
    inherits from its staging models; returns the ones it uses (bound as ``$name`` when it runs)."""
    try:
        statement = read_only_statement(sql, "it")
    except SqlError as error:
        raise RecipeError(
            f"recipe {name!r} ({path}) is not a single read-only query: {error.message}",
            fix="a recipe is one SELECT / WITH query; it never writes",
        ) from error
    used = frozenset(statement.named_parameters)
    if not declared <= used or not used <= known:
        raise RecipeError(
            f"recipe {name!r} ({path}): declared parameters {sorted(declared)} but the SQL uses {sorted(used)}",
            fix="declare every $name the SQL uses (`-- param:` lines) and use every declared one",
        )
    return used


def bind_params(recipe: Recipe, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, each value validated against its declared type."""
    unknown = sorted(set(given) - {p.name for p in recipe.params})
    if unknown:
        names = ", ".join(f"{p.name} ({p.describe_type()})" for p in recipe.params) or "(none)"
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)} for recipe {recipe.name!r}"
            f"{did_you_mean(unknown[0], [p.name for p in recipe.params])}",
            fix=f"its parameters are: {names}",
        )
    return {p.name: p.validate(given.get(p.name, p.default)) for p in recipe.params}


def run_recipe(
    con: Any, name: str, params: dict[str, Any] | None = None, directory: Path = RECIPES_DIR
) -> pa.Table:
    """Run recipe ``name`` on ``con`` (from ``warehouse.connect``) with bound ``params``; an Arrow table.
    A parameter naming a model, run, step, layer, site, source or scalar the warehouse does not hold
    raises ``ParameterError`` (``queries.stored_values``)."""
    recipe = load_recipe(name, directory)
    bound = bind_params(recipe, dict(params or {}))
    check_stored_values(con, bound)  # a model, step, site ... the warehouse does not hold is an error
    own = {k: v for k, v in bound.items() if k in recipe.own}
    try:
        with staging_values(con, {k: v for k, v in bound.items() if k in all_staging_params()}):
            return con.sql(recipe.sql, params=own).to_arrow_table()
    except duckdb.Error as error:
        raise RecipeError(
            f"recipe {name!r} failed: {str(error).splitlines()[0]}",
            fix=STORED_FILE_FIX
            if reads_a_damaged_file(error)
            else "check that the warehouse holds the tables it reads (`layerlake check`) and the parameters",
        ) from error


def register_recipe_configs(directory: Path = RECIPES_DIR) -> None:
    """Register every recipe's parameters and defaults as the Hydra config ``recipe/<name>``."""
    from layerlake.conf.schema import register_recipe

    for recipe in list_recipes(directory):
        register_recipe(recipe.name, {k: v for k, v in recipe.defaults.items() if k not in CONTEXT_PARAMS})


_TABLE_REF = re.compile(r"\b(?:from|join)\s+([A-Za-z_]\w*)", re.IGNORECASE)


def read_tables(recipe: Any) -> frozenset[str]:
    """The warehouse tables a recipe reads: those named after FROM or JOIN in its SQL and in the staging
    views it uses, theirs included (the UI offers only values these tables hold: the checkpoint x
    checkpoint page, reading sketches, offers only models that have sketches)."""
    from layerlake.warehouse import schema

    uses = [u for u in recipe_folder().get(recipe.name).uses if u in STAGING.names()]
    bodies = [recipe.sql, *(f.body for f in STAGING.closure(uses, recipe.name))]
    return frozenset(t for body in bodies for t in _TABLE_REF.findall(body) if t in schema.TABLES)
