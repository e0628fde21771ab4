"""The table of ``layerlake`` commands: what each runs, and how it takes its arguments.

Targets are ``"module:function"`` strings, imported only when the command runs, so ``layerlake sql``
never loads torch. A command that needs the ``extract`` extra says so, and the dispatcher checks for
it before importing anything heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    help: str
    hydra: bool  # takes Hydra overrides and receives layerlake.conf.schema.Config
    positional: str | None = None  # hydra commands: a leading bare word becomes this override key
    rewrite: str | None = None  # hydra commands: "module:function" mapping args to Hydra overrides
    extra: str | None = None  # optional extra the command needs ("extract"), checked before it runs
    describe: str | None = None  # hydra commands: "module:function" printing `--help` from the arguments
    parser: str | None = None  # plain commands: "module:function" returning its argparse parser
    flags: str | None = None  # hydra commands: "module:NAME", the options its rewrite takes beside
    # Hydra's own flags (query's --max-rows N and --all)
    reads_warehouse: bool = False  # hydra commands: paths.warehouse must be a warehouse before the job
    # runs (Hydra makes the job's run folder under paths.runs, which a wrong folder must not get)

    def load(self) -> Callable:
        return resolve(self.target)


def resolve(target: str) -> Callable:
    """``"module:function"`` -> the function (imported only now)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "layerlake.cli.demo:run",
        "build the embedded suite, extract it, print the findings",
        True,
        extra="extract",
    ),
    "suite build": Command(
        "layerlake.etl.suite.command:build",
        "build (or reuse) the configured embedded suite",
        True,
        extra="extract",
    ),
    "suite show": Command("layerlake.etl.suite.command:show", "print a table of the configured suite", True),
    "extract": Command(
        "layerlake.etl.command:extract",
        "extract the configured suite's checkpoints into the warehouse",
        True,
        extra="extract",
    ),
    "query": Command(
        "layerlake.queries.command:query",
        "run a recipe: layerlake query <recipe> key=value ...",
        True,
        positional="recipe",
        rewrite="layerlake.queries.command:rewrite_args",
        describe="layerlake.queries.command:print_help",
        flags="layerlake.queries.command:TABLE_FLAGS",
        reads_warehouse=True,
    ),
    "recipes": Command(
        "layerlake.queries.command:list_recipes",
        "list the recipes with their parameters",
        False,
        parser="layerlake.queries.command:recipes_parser",
    ),
    "import-metrics": Command(
        "layerlake.queries.command:import_metrics",
        "import per-layer metrics computed elsewhere",
        False,
        parser="layerlake.queries.imports:parser",
    ),
    "sql": Command(
        "layerlake.warehouse.command:sql",
        "run a read-only SQL query over the warehouse views",
        False,
        parser="layerlake.warehouse.command:sql_parser",
    ),
    "ui": Command(
        "layerlake.ui.server:ui",
        "serve the warehouse read-only in a browser (overview, recipes, SQL console)",
        False,
        parser="layerlake.ui.server:ui_parser",
    ),
    "check": Command(
        "layerlake.warehouse.command:check",
        "audit the warehouse; exit non-zero listing bad rows",
        False,
        parser="layerlake.warehouse.command:check_parser",
    ),
    "runs": Command(
        "layerlake.warehouse.runs_command:runs",
        "list and filter the runs: status, kind, seed, config, last values, tags",
        False,
        parser="layerlake.warehouse.runs_command:runs_parser",
    ),
    **{
        f"runs {name}": Command(
            f"layerlake.warehouse.runs_command:{name}",
            what,
            False,
            parser=f"layerlake.warehouse.runs_command:{name}_parser",
        )
        for name, what in (
            ("tag", "set tags on a run: layerlake runs tag RUN key=value ..."),
            ("note", 'add a note to a run: layerlake runs note RUN "text"'),
            ("archive", "hide runs and all their rows, all or nothing (--dry-run says what)"),
            ("restore", "show archived runs again"),
            ("delete", "remove runs and all their rows, all or nothing (--dry-run says what)"),
        )
    },
    "compact": Command(
        "layerlake.warehouse.command:compact",
        "merge small files (tracked runs make many) and rewrite the manifest to its current state",
        False,
        parser="layerlake.warehouse.command:compact_parser",
    ),
    "migrate": Command(
        "layerlake.warehouse.command:migrate",
        "rewrite a warehouse of an older layerlake into the current schema (once, keeps every row)",
        False,
        parser="layerlake.warehouse.command:migrate_parser",
    ),
    "gc": Command(
        "layerlake.warehouse.command:gc",
        "remove files no commit lists (replaced rows, leftovers of killed writers)",
        False,
        parser="layerlake.warehouse.command:gc_parser",
    ),
    "share": Command(
        "layerlake.warehouse.share.command:share",
        "export, import or attach a shared dataset",
        False,
        parser="layerlake.warehouse.share.command:parser",
    ),
}
