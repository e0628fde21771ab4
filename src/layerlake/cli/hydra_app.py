"""Runs a Hydra command: composes ``conf/config.yaml`` with the user's overrides, validates it
against ``conf.schema``, and hands the command plain dataclasses.

Hydra owns argv here, so ``-m``, ``--cfg job``, ``--help`` and tab-completion work as documented
by Hydra, wherever they stand among the overrides (``split_flags`` lifts them out first). The job's
name is the command (``extract``, ``query``, ``suite-build``): it names the run folder's log file,
which receives the command's own log lines (``hydra.job_logging`` in ``conf/config.yaml``). A
``LayerlakeError`` raised inside a job is printed without a traceback and exits 2.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
from omegaconf import DictConfig

from layerlake.cli.commands import Command, resolve
from layerlake.conf.compose import check_overrides, run_folder
from layerlake.conf.overrides import LiftedList, lift_long_lists, linear_list_parsing, set_lifted
from layerlake.conf.schema import CONF_DIR, register_schemas, to_settings
from layerlake.core.errors import ConfigError, LayerlakeError
from layerlake.core.render import print_error

HELP_FLAGS = ("-h", "--help")
# At most one of these per call (Hydra refuses the rest with a ValueError and a traceback).
MODES = {
    "--run": "--run",
    "--multirun": "-m",
    "--cfg": "--cfg",
    "--info": "--info",
    "--shell-completion": "-sc",
}


def job_name(name: str) -> str:
    """Hydra's job name for command ``name``: ``suite build`` -> ``suite-build`` (it names a log file)."""
    return name.replace(" ", "-")


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """``(flags, overrides)``: Hydra's own flags, each with its value joined as ``--flag=value`` so it
    may stand anywhere, and everything else in order. ``a=1 --cfg job b=2`` -> ``(["--cfg=job"],
    ["a=1", "b=2"])``; an unknown ``-x`` stays among the overrides for Hydra to refuse."""
    from hydra._internal.utils import get_args_parser

    actions = get_args_parser()._option_string_actions  # argparse's table of option strings
    flags, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        option, eq, value = arg.partition("=")
        action = actions.get(option) if arg.startswith("-") else None
        if action is None:
            rest.append(arg)
        else:
            long = max(action.option_strings, key=len)
            if action.nargs == 0:
                flags.append(long)
            elif eq:
                flags.append(f"{long}={value}")
            elif action.nargs == "?":  # --info [what]: takes the next word only if it is one of its choices
                taken = i + 1 < len(args) and args[i + 1] in (action.choices or ())
                flags.append(f"{long}={args[i + 1]}" if taken else long)
                i += taken
            elif i + 1 < len(args):
                flags.append(f"{long}={args[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"{arg} needs a value", fix=_flag_fix(action))
        i += 1
    return flags, rest


def _flag_fix(action) -> str:
    choices = f" one of: {', '.join(action.choices)}" if action.choices else " a value"
    return f"give {max(action.option_strings, key=len)}{choices} (e.g. --cfg job)"


def check_flags(flags: list[str]) -> None:
    """Refuse combinations Hydra would answer with a traceback."""
    names = [f.partition("=")[0] for f in flags]
    modes = [MODES[n] for n in dict.fromkeys(names) if n in MODES]
    if len(modes) > 1 and not any(n in HELP_FLAGS for n in names):
        raise ConfigError(
            f"{' and '.join(modes)} cannot be combined: each asks Hydra for a different thing",
            fix="print the config of one job with `--cfg job` (no -m), then run the sweep with -m",
        )
    if "--resolve" in names and "--cfg" not in names and "--help" not in names:
        raise ConfigError("--resolve only applies to --cfg or --help", fix="add --cfg job, or drop --resolve")


def precheck(flags: list[str], overrides: list[str], command: Command | None = None) -> None:
    """Compose once before Hydra runs anything (every value of every sweep, the others at their first),
    so a wrong key, type or choice is a ``ConfigError`` (exit 2, the key named, a fix given) and no
    job starts: for a run, a multirun, ``--cfg``, ``--help`` and ``--info`` alike. Only shell
    completion goes straight to Hydra. A command that reads the warehouse (``query``) and will run a
    job is refused here when ``paths.warehouse`` is not one, before Hydra makes the job's run folder."""
    check_flags(flags)
    if "--shell-completion" in flags:
        return
    settings = check_overrides(overrides)
    runs_a_job = not any(f.partition("=")[0] in NO_JOB_FLAGS for f in flags)
    if command is not None and command.reads_warehouse and runs_a_job:
        from layerlake.warehouse.locate import HYDRA_OPTION, warehouse_root

        warehouse_root(settings.paths.warehouse, option=HYDRA_OPTION)
    if runs_a_job:
        check_run_folder(run_folder(overrides, multirun="--multirun" in flags))


def check_run_folder(folder: str) -> None:
    """Hydra can make the job's run folder: the nearest folder above it that exists is a folder in
    which one can be made (tried with a temporary folder, removed at once), so that a data folder that
    is a file, or a run folder under /proc, is a ``ConfigError`` naming it, not Hydra's traceback."""
    import tempfile

    from layerlake.core.paths import DATA_ENV, data_dir_and_source

    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    fix = "set paths.runs=DIR (or paths.data=DIR, or hydra.run.dir=DIR) to a folder you can write"
    if not existing.is_dir():
        data, source = data_dir_and_source()
        named = f" (${DATA_ENV} names it)" if existing == data and source == f"${DATA_ENV}" else ""
        fix = f"set ${DATA_ENV} to a folder, or {fix}" if named else fix
        raise ConfigError(f"cannot make the run folder {path}: {existing} is a file{named}", fix=fix)
    try:
        Path(tempfile.mkdtemp(dir=existing, prefix=".layerlake-run-check-")).rmdir()
    except OSError as error:
        raise ConfigError(
            f"cannot make the run folder {path}: no folder can be made in {existing} ({error.strerror or error})",
            fix=fix,
        ) from None


NO_JOB_FLAGS = ("--cfg", "--info", "--help", "--hydra-help", "--shell-completion")


def wants_help(flags: list[str]) -> bool:
    return "--help" in flags


def run_hydra_command(name: str, command: Command, args: list[str]) -> int:
    register_schemas()
    linear_list_parsing()  # long list overrides (models=[...20,000 names]) parse in linear time
    target = command.load()
    flags, overrides = split_flags(args)
    if wants_help(flags) and command.describe:
        resolve(command.describe)(overrides)  # the command's own help (e.g. a recipe's parameters)
        return 0
    overrides = rewrite_positional(command, overrides)
    if command.rewrite:
        overrides = resolve(command.rewrite)(overrides)
    overrides = [f"hydra.job.name={job_name(name)}", *overrides]  # a later hydra.job.name=... wins
    given = overrides
    overrides, lifted = lift_long_lists(overrides)  # models=[...20,000 names] skips the grammar
    precheck(flags, given, command)  # a long list is checked whole there, before Hydra makes a run folder
    if wants_help(flags):
        print(f"layerlake {name}: {command.help}\n")
    outcome: dict[str, int] = {"code": 0}

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def job(cfg: DictConfig) -> None:
        try:
            if lifted:
                record_lifted(given, lifted)
            code = target(set_lifted(to_settings(cfg), lifted))
        except LayerlakeError as error:
            print_error(error)
            code = error.exit_code
        outcome["code"] = max(outcome["code"], int(code or 0))

    saved = sys.argv
    sys.argv = [f"layerlake {name}", *flags, *overrides]
    try:
        with logging_kept():
            job()
    except SystemExit as done:  # Hydra exits by itself after --help, --hydra-help and its own errors
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    finally:
        sys.argv = saved
        forget_job()
    return outcome["code"]


@contextmanager
def logging_kept():
    """Put the process's logging back after a Hydra job: Hydra configures it for the job (a console
    handler on the stderr of that moment, a handler on the run folder's log file, layerlake's level), and
    left so, a later command or the caller's own code (a notebook, a test) logged into a stream that may
    be closed and into a finished job's file. The job's own handlers are closed."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    state = {id(lg): (lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers}
    try:
        yield
    finally:
        for logger, handlers, level, propagate, disabled in state.values():
            for handler in [h for h in logger.handlers if h not in handlers]:
                logger.removeHandler(handler)
                handler.close()
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
        for name, logger in list(logging.root.manager.loggerDict.items()):  # made by the job's config
            if (
                isinstance(logger, logging.Logger)
                and id(logger) not in state
                and name.split(".")[0] == "layerlake"
            ):
                logger.setLevel(logging.NOTSET)


def forget_job() -> None:
    """Clear Hydra's record of the job that ended, so that code running later in this process (a
    ``layerlake.track`` run, another command) is not taken for part of that job."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        HydraConfig.instance().cfg = None


def record_lifted(given: list[str], lifted: list[LiftedList]) -> None:
    """Make the job's ``.hydra/overrides.yaml`` and ``config.yaml`` hold the long lists as given, not the
    one-element lists Hydra composed (``conf/overrides.py``), so the run folder records what ran."""
    import yaml
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if not hydra_cfg.output_subdir:
        return
    folder = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
    task = [o for o in given if not o.lstrip("+~").startswith("hydra.")]
    if (folder / "overrides.yaml").exists():
        (folder / "overrides.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    if (folder / "config.yaml").exists():
        config = set_lifted(yaml.safe_load((folder / "config.yaml").read_text()), lifted)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def rewrite_positional(command: Command, args: list[str]) -> list[str]:
    """``layerlake query stabilisation x=1`` -> ``recipe=stabilisation x=1``."""
    if command.positional and args and not args[0].startswith("-") and "=" not in args[0]:
        return [f"{command.positional}={args[0]}", *args[1:]]
    return args
