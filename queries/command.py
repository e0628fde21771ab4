"""The recipe commands: ``layerlake query <recipe> k=v ...``, ``layerlake recipes``, ``layerlake import-metrics``.

``query`` is a Hydra command: ``rewrite_args`` turns ``threshold=0.9`` into the override
``++recipe.params.threshold=0.9`` (top-level keys such as ``suite=`` or ``models=[...]`` stay Hydra's),
so ``layerlake query -m stabilisation threshold=0.8,0.9,0.95`` is a Hydra multirun over the parameter.
Two parameters come from the composed config unless given: ``suite`` (the configured suite's name) and
``models`` (``models=[...]``, null = all). Each job writes into its Hydra run folder::

    result.parquet  result.csv  <recipe>.png (if the recipe draws a figure; plot.format=svg or pdf on
    request, plot.format=none for no figure; plot.measure=erank where the figure offers a choice)
    job.json (params, status, error)

and a multirun's ``queries.sweep.SweepAggregator`` callback joins the jobs into ``aggregate.parquet``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import traceback
from pathlib import Path
from typing import Any

import duckdb
from rich.console import RenderableType
from rich.text import Text

from layerlake.core.choices import did_you_mean
from layerlake.core.duck import STORED_FILE_FIX, reads_a_damaged_file
from layerlake.core.errors import ConfigError, LayerlakeError
from layerlake.queries.errors import RecipeError
from layerlake.queries.figures import check_measure
from layerlake.queries.loader import (
    CONTEXT_PARAMS,
    Recipe,
    bind_params,
    load_recipe,
    recipe_names,
    register_recipe_configs,
)
from layerlake.queries.loader import list_recipes as load_all

JOB_FILE = "job.json"
log = logging.getLogger(__name__)


def top_level_keys() -> set[str]:
    from layerlake.conf.schema import Config

    return {f.name for f in dataclasses.fields(Config)} | {"hydra"}


def rewrite_args(args: list[str]) -> list[str]:
    """Hydra overrides from ``query`` arguments: ``recipe=x`` (or a bare ``x``) -> ``+recipe=x`` (the
    group has no default in ``conf/config.yaml``),
    ``key=v`` for a recipe parameter -> ``++recipe.params.key=v``; flags and config keys pass unchanged.

    An argument that is neither a config key nor a parameter of the chosen recipe(s) is an error
    naming the recipe's parameters.
    """
    register_recipe_configs()  # `+recipe=<name>` composes each recipe's declared parameters and defaults
    args, shown = table_flags(args)
    # `query -m stabilisation ...`: the CLI only lifts a leading bare word, so lift one after flags here
    args = [f"recipe={a}" if not a.startswith("-") and "=" not in a else a for a in args]
    recipes = _chosen_recipes(args)
    declared = {p.name: r for r in recipes for p in r.params}
    top, out = top_level_keys(), []
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == "suite" and "suite" in declared and value not in suite_configs():
            out.append(f"++recipe.params.suite={hydra_value(value)}")  # a suite only runs made (tracking)
        elif arg.startswith("-") or not sep or key[:1] in "+~" or key == "recipe" or key.split(".")[0] in top:
            out.append(f"+{arg}" if key == "recipe" else arg)
        elif key in declared:
            out.append(f"++recipe.params.{key}={hydra_value(value)}")
        else:
            names = sorted({p.name for r in recipes for p in r.params} - set(CONTEXT_PARAMS))
            where = ", ".join(r.name for r in recipes)
            near = did_you_mean(key, [*names, *sorted(top - {"hydra"})])
            raise ConfigError(
                f"{key!r} is neither a parameter of recipe {where} nor a config key{near}",
                fix=f"use one of its parameters: {', '.join(names)} (`layerlake recipes`)",
            )
    return out + shown


MAX_ROWS, ALL = TABLE_FLAGS = ("--max-rows", "--all")  # query's own options beside Hydra's flags


def table_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """``(rest, overrides)``: ``--max-rows N`` (or ``--max-rows=N``) and ``--all`` lifted out of ``args``
    as ``++recipe.max_rows=N`` / ``++recipe.max_rows=null``, how many rows the terminal table shows."""
    rest, out, i = [], [], 0
    while i < len(args):
        arg = args[i]
        option, eq, value = arg.partition("=")
        if arg == ALL:
            out.append("++recipe.max_rows=null")
        elif option == MAX_ROWS:
            if not eq:
                if i + 1 == len(args):
                    raise ConfigError(
                        "--max-rows needs a number", fix="write --max-rows 50, or --all for every row"
                    )
                value, i = args[i + 1], i + 1
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(
                    f"--max-rows {value!r} is not a number of rows",
                    fix="write --max-rows 50, or --all for every row",
                )
            out.append(f"++recipe.max_rows={int(value)}")
        else:
            rest.append(arg)
        i += 1
    return rest, out


def suite_configs() -> set[str]:
    """The suites ``conf/suite/`` configures (``suite=<name>`` selects one); any other name given to
    ``query`` is a suite that only tracked runs made, passed to the recipe as its ``suite``."""
    from layerlake.conf.schema import CONF_DIR

    return {p.stem for p in (Path(CONF_DIR) / "suite").glob("*.yaml")}


def hydra_value(value: str) -> str:
    """``value`` unchanged if Hydra's override grammar takes it (numbers, lists, sweeps ``a,b``), else
    quoted as one string, so text such as ``0.9; drop table x`` reaches the type check (and is refused
    there, naming the parameter) instead of failing in Hydra's lexer."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from layerlake.conf.overrides import plain_list

    if plain_list(value) is not None:  # a list of plain words or integers: no need to parse (it can be long)
        return value
    try:
        OverridesParser.create().parse_override(f"key={value}")
        return value
    except HydraException:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _chosen_recipes(args: list[str]) -> list[Recipe]:
    chosen = [a.partition("=")[2] for a in args if a.startswith(("recipe=", "+recipe="))]
    if not chosen:
        raise ConfigError(
            "no recipe given",
            fix=f"run `layerlake query <recipe> <param>=<value> ...` with one of: {', '.join(recipe_names())}",
        )
    return [load_recipe(name.strip()) for name in chosen[-1].split(",")]


def context_params(
    recipe: Recipe, settings: Any, given: dict[str, Any], suite: str | None = None
) -> dict[str, Any]:
    """``given`` plus ``suite`` / ``models`` from the composed config where the recipe declares them;
    ``suite``: the suite to read when none was named (``default_suite``), else the configured one."""
    params = dict(given)
    context = {
        "suite": settings.suite.name if suite is None else (suite or None),  # EVERY_SUITE: null, every suite
        "models": None if settings.models is None else list(settings.models),
    }
    for name in CONTEXT_PARAMS:
        if recipe.param(name) is not None and name not in params:
            params[name] = context[name]
    return params


def query(settings: Any) -> int:
    """Run the configured recipe on the warehouse; print, save and plot the result in the run folder."""
    from hydra.core.hydra_config import HydraConfig

    if settings.recipe is None:
        raise ConfigError(
            "no recipe chosen", fix=f"run `layerlake query <recipe>`; recipes: {', '.join(recipe_names())}"
        )
    hydra = HydraConfig.get()
    folder = Path(hydra.runtime.output_dir)
    name, given = settings.recipe.name, dict(settings.recipe.params)
    job: dict[str, Any] = {
        "recipe": name, "given": _plain(given), "status": "failed",
        "job": hydra.job.get("num"), "overrides": list(hydra.overrides.task),
    }  # fmt: skip
    try:
        written = run_configured(settings, name, given, folder, job)
        job.update(status="ok", **written)
        log.info(
            "%d rows; wrote %s",
            written["rows"],
            ", ".join(str(v) for k, v in written.items() if k != "rows" and v),
        )
    except LayerlakeError as error:  # every failure is recorded in the job folder, then reported by name
        job["error"] = error.message
        log.info("failed: %s", error.message)
        raise
    except Exception as error:
        job.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        damaged = isinstance(error, duckdb.Error) and reads_a_damaged_file(error)
        fix = STORED_FILE_FIX if damaged else f"see {folder / JOB_FILE}"
        raise RecipeError(f"recipe {name!r} failed: {error}", fix=fix) from error
    finally:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / JOB_FILE).write_text(json.dumps(_plain(job), indent=2, default=str) + "\n")
    return 0


EVERY_SUITE = ""  # default_suite's answer when the configured suite is not stored: read every suite


def default_suite(configured: str, root: str) -> str:
    """The suite a recipe reads when the command line names none: the configured suite (``embedded``)
    when the warehouse holds it; else every suite the warehouse holds (a warehouse of tracked runs only,
    ``suite="mine"``, answers ``layerlake query stabilisation`` without ``suite=mine``), said on stderr."""
    from rich.console import Console

    from layerlake import warehouse
    from layerlake.queries.stored_values import NAMED, stored_values, table_columns

    con = warehouse.connect(root)
    try:
        held = stored_values(con, NAMED["suite"], {}, table_columns(con))
    finally:
        con.close()
    if configured in held or not held:
        return configured
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text(
            f"note: the configured suite {configured!r} has no rows here; reading every suite the warehouse "
            f"holds ({', '.join(sorted(map(str, held)))}); name one with suite=NAME"
        )
    )
    return EVERY_SUITE


def run_configured(
    settings: Any, name: str, given: dict[str, Any], folder: Path, job: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``query`` does for one recipe once the config is composed: bind its parameters (with the
    configured suite and models), run it on the configured warehouse, print it and save it (and its
    figure) into ``folder``; returns what was written. ``job`` learns the bound parameters."""
    recipe = load_recipe(name)
    bind_params(recipe, context_params(recipe, settings, given))  # a bad value fails before any read
    check_measure(recipe, settings.plot.measure)
    _require_warehouse(settings.paths.warehouse)
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    named = "suite" in given or any(o.lstrip("+~").partition("=")[0] == "suite" for o in overrides)
    suite = None if named else default_suite(settings.suite.name, settings.paths.warehouse)
    bound = bind_params(recipe, context_params(recipe, settings, given, suite))
    if job is not None:
        job["params"] = bound
    log.info("recipe %s with %s", name, json.dumps(_plain(bound), default=str))
    max_rows = settings.recipe.max_rows if settings.recipe is not None else 20  # RecipeConfig's default
    return _run_and_save(recipe, bound, settings.paths.warehouse, folder, settings.plot, max_rows)


def _require_warehouse(root: str) -> None:
    """The query's warehouse must be one (``warehouse.locate``); the fix names the config key."""
    from layerlake.warehouse.locate import HYDRA_OPTION, warehouse_root

    warehouse_root(root, option=HYDRA_OPTION)


def _run_and_save(
    recipe: Recipe,
    bound: dict[str, Any],
    warehouse_root: str,
    folder: Path,
    plot: Any,
    max_rows: int | None = 20,
) -> dict[str, Any]:
    from rich.console import Console

    from layerlake import warehouse
    from layerlake.core import render
    from layerlake.queries import figures
    from layerlake.queries.loader import run_recipe
    from layerlake.warehouse.views import hidden_note

    con = warehouse.connect(warehouse_root)
    try:
        table = run_recipe(con, recipe.name, bound)
        note = hidden_note(con)
    finally:
        con.close()
    parquet, csv = render.save(table, folder)
    figure = None
    if plot.format != "none":
        spec = figures.recipe_figure(recipe, bound, table, measure=plot.measure)
        if spec is not None:
            figure = figures.save_figure(
                spec, folder / f"{recipe.name}.{plot.format}", str(plot.format), plot.ppi
            )
    console = Console()
    shown = ", ".join(f"{k}={v}" for k, v in bound.items() if v != recipe.param(k).default)
    max_rows = table.num_rows if max_rows is None else max_rows
    render.print_table(
        table, f"{recipe.name}" + (f" ({shown})" if shown else ""), console, max_rows=max(max_rows, 1),
        more_rows=f"--max-rows N or --all to show more; every row is in {csv.name}",
    )  # fmt: skip
    for path in (parquet, csv, figure):
        if path is not None:
            console.print(f"wrote {path}", highlight=False, soft_wrap=True, markup=False)
    if note:  # tasks the views leave out: the answer may lack rows the user expects
        console.file.flush()
        Console(stderr=True, highlight=False, soft_wrap=True).print(Text(note))
    return {
        "rows": table.num_rows,
        "result": str(parquet),
        "csv": str(csv),
        "plot": None if figure is None else str(figure),
    }


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples as plain JSON-able values."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
    ):
        return [_plain(v) for v in value]
    return value


def list_recipes(argv: list[str]) -> int:
    """``layerlake recipes``: one block per recipe (name, description, parameters, grain, plot), readable
    in an 80-column terminal."""
    recipes_parser().parse_args(argv)
    from rich.console import Console

    console = Console(highlight=False)
    console.print(
        Text("recipes: layerlake query <recipe> key=value ...  (--help after a recipe: its parameters)")
    )
    for recipe in load_all():
        console.print()
        console.print(recipe_block(recipe))
    return 0


def recipes_parser() -> argparse.ArgumentParser:
    """The arguments of ``layerlake recipes`` (none)."""
    return argparse.ArgumentParser(
        prog="layerlake recipes", description="List the SQL recipes and their parameters."
    )


def recipe_block(recipe: Recipe) -> RenderableType:
    """A recipe as a block of text: its name, description, parameters (type, default, doc), grain and
    plot. Every piece is plain text (never markup); long lines wrap at the terminal's width."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.table import Table

    params = Table.grid(padding=(0, 2))
    params.add_column(no_wrap=True)
    params.add_column(overflow="fold")
    params.add_column(overflow="fold", ratio=1)
    for p in recipe.params:
        default = "required" if p.required else f"= {json.dumps(p.default)}"
        doc = "from the config (suite=... / models=[...])" if p.name in CONTEXT_PARAMS else p.doc
        params.add_row(Text(p.name, style="bold"), Text(f"{p.type} {default}"), Text(doc))
    parts: list[RenderableType] = [
        Text.assemble((recipe.name, "bold cyan"), ": ", recipe.description),
        Text("parameters:"),
        Padding(params, (0, 0, 0, 2)),
        Text(f"grain: {recipe.grain}"),
        Text(f"plot: {recipe.plot}"),
    ]
    return Group(*parts)


def print_help(args: list[str]) -> None:
    """``layerlake query --help`` (usage and the recipes) and ``layerlake query <recipe> --help`` (the
    recipe's parameters, their types, defaults and docs, from its SQL header)."""
    from rich.console import Console

    console = Console(highlight=False)
    names = [a.partition("=")[2] if a.startswith(("recipe=", "+recipe=")) else a for a in args]
    chosen = [n for n in names if "=" not in n and not n.startswith("-")]
    usage = Text(
        "usage: layerlake query <recipe> [param=value ...] [config overrides] [--max-rows N | --all] [-m] [--cfg job]\n\n"
        "Runs a SQL recipe over the warehouse, prints the result (its first and last rows: --max-rows N "
        "or --all for more) and writes result.parquet, result.csv and a plot into the run folder. -m with comma-separated values (threshold=0.8,0.9) sweeps a "
        "parameter; --cfg job prints the composed config; config overrides (suite=pythia, "
        "paths.data=DIR) work as in every Hydra command; --hydra-help shows Hydra's own options."
    )
    console.print(usage)
    if not chosen:
        console.print()
        console.print(Text("recipes (layerlake query <recipe> --help for its parameters):"))
        grid = _recipe_grid()
        console.print(grid)
        return
    for name in chosen[-1].split(","):
        console.print()
        console.print(recipe_block(load_recipe(name.strip())))


def _recipe_grid() -> RenderableType:
    from rich.padding import Padding
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold", ratio=1)
    for recipe in load_all():
        first = recipe.description.split(". ")[0].rstrip(".")
        grid.add_row(Text(recipe.name, style="bold"), Text(first))
    return Padding(grid, (0, 0, 0, 2))


def import_metrics(argv: list[str]) -> int:
    """``layerlake import-metrics FILE --source NAME``: load per-layer metrics computed elsewhere."""
    from layerlake.queries.imports import main

    return main(argv)
