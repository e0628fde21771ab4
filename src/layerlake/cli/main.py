"""The ``layerlake`` command: a thin dispatcher to each package's commands (``layerlake.cli.commands``).

Two kinds of command:
- Hydra commands take ``key=value`` overrides, ``-m`` for a multirun and ``--cfg job`` to print
  the composed config; they receive the composed config as plain dataclasses (``conf.schema.Config``).
- Plain commands (``sql``, ``check``, ``share`` ...) parse their own arguments with argparse.
"""

from __future__ import annotations

import os
import sys

from layerlake.cli.commands import COMMANDS
from layerlake.core.errors import EXTRA_MODULES, LayerlakeError, require_extra
from layerlake.core.render import print_error
from layerlake.core.signals import TERMINATED_EXIT, Terminated


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
        "`layerlake <command> --help` describes one command; `layerlake --version` says where data goes.",
    ]
    return "\n".join(lines)


def version_line() -> str:
    """``layerlake 0.1.0 (data: /path/data, from the working directory)``: the version and where data goes."""
    from layerlake import __version__
    from layerlake.core.paths import data_dir_and_source

    folder, source = data_dir_and_source()
    return f"layerlake {__version__} (data: {folder}, from {source})"


def group_usage(group: str) -> str:
    """``layerlake suite --help``: the commands of a group of commands."""
    names = {name: cmd for name, cmd in COMMANDS.items() if name.startswith(f"{group} ")}
    width = max(len(name) for name in names)
    lines = [f"usage: layerlake {group} <command> [key=value overrides]", "", "commands:"]
    lines += [f"  layerlake {name:<{width}}  {cmd.help}" for name, cmd in names.items()]
    lines += ["", f"`layerlake {group} <command> --help` describes one (its config groups and keys)."]
    return "\n".join(lines)


def find_command(argv: list[str]) -> tuple[str, list[str]]:
    """Split argv into the longest known command name and its arguments."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    if argv and argv[0] == "suite":
        raise LayerlakeError(
            f"unknown suite command {' '.join(argv[:2])!r}"
            if len(argv) > 1
            else "`layerlake suite` needs a command",
            fix="use `layerlake suite build` or `layerlake suite show`",
        )
    known = ", ".join(COMMANDS)
    raise LayerlakeError(f"unknown command {argv[0]!r}", fix=f"use one of: {known} (see `layerlake --help`)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    if argv[0] == "suite" and argv[1:2] in (["-h"], ["--help"]):
        print(group_usage("suite"))
        return 0
    try:
        name, args = find_command(argv)
        command = COMMANDS[name]
        if command.extra:
            require_extra(command.extra, EXTRA_MODULES[command.extra], f"`layerlake {name}`")
        if command.hydra:
            from layerlake.cli.hydra_app import run_hydra_command

            code = run_hydra_command(name, command, args)
        else:
            code = command.load()(args)
    except LayerlakeError as error:
        print_error(error)
        return error.exit_code
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM where a command cleans up (``core.signals``)
        if isinstance(stop, Terminated):
            print("terminated", file=sys.stderr)
            return TERMINATED_EXIT
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `layerlake ... | head`: the reader left; say nothing more, exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(code or 0)


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
