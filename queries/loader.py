"""Loads SQL recipes: one ``.sql`` file per recipe in ``queries/``, its header parsed into metadata.

A recipe file starts with a header of ``-- key: value`` comment lines (an indented ``--    text`` line
continues the previous key)::

    -- name: stabilisation                          (must equal the file name)
    -- description: one paragraph of what it finds
    -- param: $threshold double = 0.9 | what it means       (one line per parameter; see params.py)
    -- grain: one row per (suite, model, source, site, layer, head)
    -- plot: heatmap x=stabilisation_step ...       (a spec for queries.plots; `none` for no plot)
    -- staging: cka_curves                          (staging CTEs from queries/staging/, optional)

Staging files (``queries/staging/<name>.sql``) hold a shared CTE body with the same header keys
(``staging:`` lists what they build on). The loader prepends them, dependencies first, as
``WITH <name> AS (<body>), ...`` to the recipe's own ``with`` pipeline; a recipe inherits the
parameters its staging declares. On load, the loader refuses a recipe whose declared parameters and
the ``$names`` its SQL uses differ, and anything but a single read-only ``SELECT``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from queries.errors import ParameterError, RecipeError
from queries.params import Param, parse_param

RECIPES_DIR = Path(__file__).resolve().parent
STAGING_DIR = RECIPES_DIR / "staging"
HEADER_KEYS = ("name", "description", "param", "grain", "plot", "staging")
_KEY = re.compile(r"^--\s(?P<key>[a-z]+):\s*(?P<value>.*)$")
_CONTINUATION = re.compile(r"^--\s{2,}(?P<text>\S.*)$")
_DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


@dataclass(frozen=True)
class SqlFile:
    """One parsed ``.sql`` file: its header fields and its SQL body (header stripped)."""

    path: Path
    name: str
    description: str
    params: tuple[Param, ...]
    grain: str
    plot: str
    staging: tuple[str, ...]
    body: str


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    params: tuple[Param, ...]  # the recipe's own, then inherited from its staging
    grain: str
    plot: str
    sql: str  # the composed, runnable SQL
    path: Path

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


def parse_sql_file(path: Path) -> SqlFile:
    """Split ``path`` into its header fields and body; a clear error for an unknown header key."""
    fields: dict[str, list[str]] = {key: [] for key in HEADER_KEYS}
    lines = path.read_text().splitlines()
    last: str | None = None
    for number, line in enumerate(lines):
        if not line.startswith("--"):
            if line.strip():
                break
            continue
        key_match, more = _KEY.match(line), _CONTINUATION.match(line)
        if key_match and key_match["key"] in HEADER_KEYS:
            last = key_match["key"]
            fields[last].append(key_match["value"].strip())
        elif key_match:
            raise RecipeError(
                f"{path}:{number + 1}: unknown header key {key_match['key']!r}",
                fix=f"use one of: {', '.join(HEADER_KEYS)}",
            )
        elif more and last is not None and fields[last]:
            fields[last][-1] += " " + more["text"].strip()
    body = "\n".join(lines[number:]).strip().rstrip(";").strip()
    staging = tuple(s.strip() for line in fields["staging"] for s in line.split(",") if s.strip())
    return SqlFile(
        path=path,
        name=" ".join(fields["name"]),
        description=" ".join(fields["description"]),
        params=tuple(parse_param(text, str(path)) for text in fields["param"]),
        grain=" ".join(fields["grain"]),
        plot=" ".join(fields["plot"]) or "none",
        staging=staging,
        body=body,
    )


def recipe_names(directory: Path = RECIPES_DIR) -> list[str]:
    """The names of the recipes in ``directory`` (its ``*.sql`` files), sorted."""
    return sorted(p.stem for p in directory.glob("*.sql"))


def list_recipes(directory: Path = RECIPES_DIR) -> list[Recipe]:
    """Every recipe, loaded and checked."""
    return [load_recipe(name, directory) for name in recipe_names(directory)]


def load_recipe(name: str, directory: Path = RECIPES_DIR) -> Recipe:
    """The recipe called ``name``, composed with its staging and checked (params, read-only)."""
    return _load(name, Path(directory).resolve())


@cache
def _load(name: str, directory: Path) -> Recipe:
    path = directory / f"{name}.sql"
    if not re.fullmatch(r"[A-Za-z_]\w*", name) or not path.is_file():
        known = ", ".join(recipe_names(directory)) or "(none)"
        raise RecipeError(f"unknown recipe {name!r}", fix=f"use one of: {known} (`layerlake recipes`)")
    recipe = parse_sql_file(path)
    if recipe.name != name:
        raise RecipeError(f"{path}: header says name {recipe.name!r}", fix=f"write `-- name: {name}`")
    staging = _staging_closure(recipe.staging, directory / "staging", str(path))
    params = _merge_params([recipe, *staging])
    sql = _compose(recipe.body, staging)
    _check_sql(name, sql, params, path)
    return Recipe(name, recipe.description, params, recipe.grain, recipe.plot, sql, path)


def _staging_closure(names: tuple[str, ...], directory: Path, where: str) -> list[SqlFile]:
    """The staging files ``names`` build on, dependencies first, each once."""
    ordered: dict[str, SqlFile] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in chain:
            raise RecipeError(f"{where}: staging cycle {' -> '.join((*chain, name))}", fix="break the cycle")
        path = directory / f"{name}.sql"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in directory.glob("*.sql"))) or "(none)"
            raise RecipeError(f"{where}: unknown staging {name!r}", fix=f"use one of: {known}")
        parsed = parse_sql_file(path)
        for dependency in parsed.staging:
            visit(dependency, (*chain, name))
        ordered[name] = parsed

    for name in names:
        visit(name, ())
    return list(ordered.values())


def _merge_params(files: list[SqlFile]) -> tuple[Param, ...]:
    """Parameters of the recipe first; a staging parameter the recipe redeclares takes its declaration."""
    merged: dict[str, Param] = {}
    for sql_file in files:
        for param in sql_file.params:
            merged.setdefault(param.name, param)
    return tuple(merged.values())


def _compose(body: str, staging: list[SqlFile]) -> str:
    if not staging:
        return body
    ctes = ",\n".join(f"{s.path.stem} as (\n{s.body}\n)" for s in staging)
    lead = re.match(r"(?is)^\s*with\s+", body)
    # the recipe's own `with a as (...), b as (...)` continues the staging CTE list
    rest = body[lead.end() :] if lead else f"final_ as (\n{body}\n)\nselect * from final_"
    return f"with {ctes},\n{rest}"


def _check_sql(name: str, sql: str, params: tuple[Param, ...], path: Path) -> None:
    """One read-only SELECT whose ``$parameters`` are exactly the declared ones."""
    con = duckdb.connect(config=_DUCKDB_CONFIG)
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise RecipeError(f"recipe {name!r} ({path}) does not parse: {error}", fix="fix its SQL") from error
    finally:
        con.close()
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(s.type.name for s in statements)
        raise RecipeError(
            f"recipe {name!r} ({path}) is not a single read-only query (statements: {kinds})",
            fix="a recipe is one SELECT / WITH query; it never writes",
        )
    used, declared = set(statements[0].named_parameters), {p.name for p in params}
    if used != declared:
        raise RecipeError(
            f"recipe {name!r} ({path}): declared parameters {sorted(declared)} but the SQL uses {sorted(used)}",
            fix="declare every $name the SQL uses (`-- param:` lines) and use every declared one",
        )


def bind_params(recipe: Recipe, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, each value validated against its declared type."""
    unknown = sorted(set(given) - {p.name for p in recipe.params})
    if unknown:
        names = ", ".join(f"{p.name} ({p.describe_type()})" for p in recipe.params) or "(none)"
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)} for recipe {recipe.name!r}",
            fix=f"its parameters are: {names}",
        )
    return {p.name: p.validate(given.get(p.name, p.default)) for p in recipe.params}


def run_recipe(
    con: Any, name: str, params: dict[str, Any] | None = None, directory: Path = RECIPES_DIR
) -> pa.Table:
    """Run recipe ``name`` on ``con`` (views + macros installed) with bound ``params``; an Arrow table."""
    recipe = load_recipe(name, directory)
    bound = bind_params(recipe, dict(params or {}))
    try:
        return con.sql(recipe.sql, params=bound).to_arrow_table()
    except duckdb.Error as error:
        raise RecipeError(
            f"recipe {name!r} failed: {str(error).splitlines()[0]}",
            fix="check that the warehouse holds the tables it reads (`layerlake check`) and the parameters",
        ) from error
