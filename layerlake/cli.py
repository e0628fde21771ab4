"""The ``layerlake`` command: a thin dispatcher to each package's commands.

Two kinds of command:
- Hydra commands take ``key=value`` overrides, ``-m`` for a multirun and ``--cfg job`` to print
  the composed config; they receive the composed config as plain dataclasses (``conf.schema.Config``).
- Plain commands (``sql``, ``check``, ``share`` ...) parse their own arguments with argparse.

Commands are imported only when run, so ``layerlake sql`` never loads torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from layerlake.errors import LayerlakeError


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    help: str
    hydra: bool  # takes Hydra overrides and receives conf.schema.Config
    positional: str | None = None  # hydra commands: a leading bare word becomes this override key
    rewrite: str | None = None  # hydra commands: "module:function" mapping args to Hydra overrides

    def load(self) -> Callable:
        return resolve(self.target)


def resolve(target: str) -> Callable:
    """``"module:function"`` -> the function (imported only now)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


COMMANDS: dict[str, Command] = {
    "demo": Command("layerlake.demo:run", "build the embedded suite, extract it, print the findings", True),
    "suite build": Command("etl.suite.command:build", "build (or reuse) the configured embedded suite", True),
    "suite show": Command("etl.suite.command:show", "print a table of the configured suite", True),
    "extract": Command(
        "etl.command:extract", "extract the configured suite's checkpoints into the warehouse", True
    ),
    "query": Command(
        "queries.command:query",
        "run a recipe: layerlake query <recipe> key=value ...",
        True,
        positional="recipe",
        rewrite="queries.command:rewrite_args",
    ),
    "recipes": Command("queries.command:list_recipes", "list the recipes with their parameters", False),
    "import-metrics": Command(
        "queries.command:import_metrics", "import per-layer metrics computed elsewhere", False
    ),
    "sql": Command("warehouse.command:sql", "run a read-only SQL query over the warehouse views", False),
    "check": Command("warehouse.command:check", "audit the warehouse; exit non-zero listing bad rows", False),
    "share": Command("warehouse.share.command:share", "export, import or attach a shared dataset", False),
}


def usage() -> str:
    lines = [
        "usage: layerlake <command> [args | key=value overrides]",
        "",
        "Turn a model suite's training checkpoints into a queryable warehouse.",
        "",
        "commands:",
    ]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "Hydra commands (demo, suite, extract, query) take overrides such as `suite=pythia steps=paper`,",
        "`-m` for a multirun sweep and `--cfg job` to print the composed config.",
        "`layerlake <command> --help` describes one command.",
    ]
    return "\n".join(lines)


def find_command(argv: list[str]) -> tuple[str, list[str]]:
    """Split argv into the longest known command name and its arguments."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    if argv and argv[0] == "suite":
        raise LayerlakeError(
            f"unknown suite command {' '.join(argv[:2])!r}",
            fix="use `layerlake suite build` or `layerlake suite show`",
        )
    known = ", ".join(COMMANDS)
    raise LayerlakeError(f"unknown command {argv[0]!r}", fix=f"use one of: {known} (see `layerlake --help`)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    try:
        name, args = find_command(argv)
        command = COMMANDS[name]
        if command.hydra:
            from layerlake.hydra_app import run_hydra_command

            code = run_hydra_command(name, command, args)
        else:
            code = command.load()(args)
    except LayerlakeError as error:
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def report_error(error: LayerlakeError) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(Text.assemble(("error: ", "bold red"), error.message))
    if error.fix:
        console.print(Text.assemble(("fix: ", "bold"), error.fix))


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
