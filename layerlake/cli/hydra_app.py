"""Runs a Hydra command: composes ``conf/config.yaml`` with the user's overrides, validates it
against ``conf.schema``, and hands the command plain dataclasses.

Hydra owns argv here, so ``-m``, ``--cfg job``, ``--help`` and tab-completion work as documented
by Hydra. A ``LayerlakeError`` raised inside a job is printed without a traceback and exits 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from layerlake.cli.commands import Command, resolve
from layerlake.conf.compose import check_overrides
from layerlake.conf.schema import CONF_DIR, register_schemas, to_settings
from layerlake.core.errors import LayerlakeError
from layerlake.core.render import print_error


def rewrite_positional(command: Command, args: list[str]) -> list[str]:
    """``layerlake query stabilisation x=1`` -> ``recipe=stabilisation x=1``."""
    if command.positional and args and not args[0].startswith("-") and "=" not in args[0]:
        return [f"{command.positional}={args[0]}", *args[1:]]
    return args


def precheck(args: list[str]) -> None:
    """Compose once before Hydra runs anything, so a wrong key, type or choice is a ``ConfigError`` (exit
    2, the key named, a fix given) and no job starts; help and info requests go straight to Hydra."""
    from hydra._internal.utils import get_args_parser

    parsed, _ = get_args_parser().parse_known_args(args)
    if parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return
    check_overrides(parsed.overrides)


def run_hydra_command(name: str, command: Command, args: list[str]) -> int:
    register_schemas()
    target = command.load()
    args = rewrite_positional(command, args)
    if command.rewrite:
        args = resolve(command.rewrite)(args)
    outcome: dict[str, int] = {"code": 0}

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def job(cfg: DictConfig) -> None:
        try:
            code = target(to_settings(cfg))
        except LayerlakeError as error:
            print_error(error)
            code = error.exit_code
        outcome["code"] = max(outcome["code"], int(code or 0))

    # argparse cannot take positionals on both sides of a flag: hoist -m so `a=1 -m b=1,2` works.
    flags = [a for a in args if a in ("-m", "--multirun")]
    rest = [a for a in args if a not in ("-m", "--multirun")]
    precheck([*flags, *rest])
    saved = sys.argv
    sys.argv = [f"layerlake {name}", *flags, *rest]
    try:
        job()
    finally:
        sys.argv = saved
    return outcome["code"]
