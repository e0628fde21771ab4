"""Every ``fix=`` names options that exist: each ``--option`` a fix mentions belongs to the command the fix
is about, each ``key=`` is a config key (or a recipe or staging parameter where those apply).

The fixes are read from the source (``ast``: string constants, f-strings with their fields blanked), so a
fix that no test triggers is checked too. A fix is about the command it names in backticks
(`` `layerlake sql --schema` ``); otherwise about the commands that can reach it: those whose function
calls it within its module (through the module's own functions), else every command.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import typing
from functools import cache
from pathlib import Path

import pytest

from layerlake.cli.commands import COMMANDS, resolve
from layerlake.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for d in ("src/layerlake", "conf", "etl", "warehouse", "queries")
    for p in sorted((REPO / d).rglob("*.py"))
]
BLANK = "\x00"  # stands for an f-string field or any value not known statically
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
KEY = re.compile(r"(?<![\w.$<\-/=\[{'])(\+{0,2}[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)=(?!=)")
MENTION = re.compile(r"`layerlake ([a-z][a-z -]*)")
CALL = re.compile(r"`layerlake\.([a-z_][a-z0-9_]*)\(")  # `layerlake.track(config={...})`: the Python API


def text_of(node: ast.AST) -> str:
    """The statically known text of a ``fix=`` value (fields and unknown values as ``BLANK``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(text_of(v) if isinstance(v, ast.Constant) else BLANK for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return text_of(node.left) + text_of(node.right)
    if isinstance(node, ast.IfExp):
        return text_of(node.body) + " | " + text_of(node.orelse)
    return BLANK


@dataclasses.dataclass(frozen=True)
class Fix:
    path: Path
    line: int
    function: str  # the enclosing top-level function ("" at module level)
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.text!r}"


def fixes() -> list[Fix]:
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for top in tree.body:
            name = top.name if isinstance(top, (ast.FunctionDef, ast.ClassDef)) else ""
            for node in ast.walk(top):
                if isinstance(node, ast.keyword) and node.arg == "fix":
                    found.append(Fix(path, node.value.lineno, name, text_of(node.value)))
    return found


# -- what exists -----------------------------------------------------------------------------------------


def parser_options(parser: argparse.ArgumentParser, prefix: str) -> dict[str, set[str]]:
    """``{"share export": {"--root", ...}, ...}``: the options of a parser and of its sub-commands."""
    out = {prefix: set(parser._option_string_actions)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                out.update(parser_options(sub, f"{prefix} {word}"))
    return out


@cache
def options() -> dict[str, set[str]]:
    """Every command's options; Hydra commands take Hydra's flags."""
    from hydra._internal.utils import get_args_parser

    hydra_flags = set(get_args_parser()._option_string_actions)
    out: dict[str, set[str]] = {}
    for name, command in COMMANDS.items():
        if command.hydra:  # Hydra's flags, and the options its rewrite lifts out (query --max-rows)
            out[name] = hydra_flags | set(resolve(command.flags) if command.flags else ())
        else:
            out.update(parser_options(resolve(command.parser)(), name))
    return out


def config_key(path: str) -> bool:
    """Whether the dotted ``path`` names a key of the composed config (a group, a field, or below)."""
    from hydra.conf import HydraConf

    from layerlake.conf.schema import Config

    node: typing.Any = Config
    for part in path.lstrip("+").split("."):
        if node is Config and part == "hydra":
            node = HydraConf
            continue
        if not dataclasses.is_dataclass(node):
            return node is dict  # below a dict-typed key any name is a key
        hints = typing.get_type_hints(node)
        if part not in hints:
            return False
        node = _inner(hints[part])
    return True


def _inner(hint: typing.Any) -> typing.Any:
    """``Optional[X]`` -> X, ``list[X]`` -> X, ``dict[...]`` -> dict."""
    origin = typing.get_origin(hint)
    if origin is dict:
        return dict
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _inner(args[0]) if args and origin is not None else hint


@cache
def recipe_params() -> set[str]:
    from layerlake.queries.loader import list_recipes

    return {p.name for r in list_recipes() for p in r.params}


@cache
def staging_params() -> set[str]:
    from layerlake.warehouse.macros import all_staging_params

    return set(all_staging_params())


# -- which command a fix is about ------------------------------------------------------------------------


@cache
def reaching_commands(path: Path) -> dict[str, set[str]]:
    """``{function: {command, ...}}`` for the module's top-level functions that a command target defined in
    the module calls (directly or through the module's own functions)."""
    tree = ast.parse(path.read_text())
    calls = {
        top.name: {n.id for n in ast.walk(top) if isinstance(n, ast.Name)}
        for top in tree.body
        if isinstance(top, ast.FunctionDef)
    }
    module = _module_name(path)
    out: dict[str, set[str]] = {}
    for name, command in COMMANDS.items():
        for target in (command.target, command.rewrite, command.describe, command.parser):
            if target and target.split(":")[0] == module:
                todo, seen = [target.split(":")[1]], set()
                while todo:
                    function = todo.pop()
                    if function in seen or function not in calls:
                        continue
                    seen.add(function)
                    out.setdefault(function, set()).add(name)
                    todo.extend(calls[function])
    return out


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts if parts[0] == "layerlake" else ("layerlake", *parts))


def commands_of(fix: Fix) -> set[str]:
    reached = reaching_commands(fix.path).get(fix.function)
    return reached or set(options())


@cache
def free_keys() -> set[str]:
    """The commands whose arguments include free ``key=value`` items (``runs tag RUN key=value``): any
    name is a key there, the command checks it itself."""
    out = set()
    for name, command in COMMANDS.items():
        if command.parser:
            for action in resolve(command.parser)()._actions:
                if not action.option_strings and "=" in str(action.metavar or ""):
                    out.add(name)
    return out


def api_params(function: str) -> set[str] | None:
    """The keyword arguments of ``layerlake.<function>`` (``track``'s are ``etl.track.track``'s), or None
    if the package has no such function."""
    import inspect

    import layerlake

    if function == "track":
        return track_params()
    found = getattr(layerlake, function, None)
    return set(inspect.signature(found).parameters) if callable(found) else None


def command_in(mention: str) -> str | None:
    """The longest command (with sub-command) at the start of ``layerlake <mention>``."""
    words = mention.split()
    for n in range(len(words), 0, -1):
        if " ".join(words[:n]) in options():
            return " ".join(words[:n])
    return None


def problems(fix: Fix, about: set[str] | None = None) -> list[str]:
    """What is wrong with ``fix``: options and keys it names that ``about`` (default: the commands that
    can reach it) does not take."""
    found = []
    segments = fix.text.split("`")
    for index, segment in enumerate(segments):
        mention = MENTION.match("`" + segment) if index % 2 else None
        named = command_in(mention.group(1)) if mention else None
        if mention and named is None:
            found.append(f"`layerlake {mention.group(1).strip()}` is not a command")
        call = CALL.match("`" + segment) if index % 2 else None
        api = api_params(call.group(1)) if call else None
        if call and api is None:
            found.append(f"layerlake.{call.group(1)} is not a function of the package")
        commands = {named} if named else (about or commands_of(fix))
        for option in OPTION.findall(segment):
            if not any(option in options()[c] for c in commands):
                found.append(f"{option} is not an option of {' / '.join(sorted(commands))}")
        for match in KEY.finditer(segment):
            key, before = match.group(1), segment[: match.start()].rstrip()
            if before.endswith("--param"):
                ok = key in staging_params()
            elif before.endswith("--site-map"):
                ok = True  # FROM=TO: a module name of the user's file
            elif call:  # `layerlake.track(resume=True)`
                ok = key in (api or set())
            elif named in free_keys():  # `layerlake runs tag RUN key=value`
                ok = True
            elif fix.path.name == "track.py":  # the Python API: the keyword arguments of layerlake.track
                ok = key in track_params()
            elif fix.path.name in PYTHON_API or fix.path.parent.name == "integrations":
                ok = key in track_params() | keyword_params(fix.path)  # its own calls, or track's
            else:
                hydra = any(COMMANDS[c].hydra for c in commands if c in COMMANDS)
                query = "query" in commands or fix.path.parent.name == "queries"
                ok = (hydra and config_key(key)) or (query and key in recipe_params())
            if not ok:
                found.append(f"{key}= is not a config key or parameter of {' / '.join(sorted(commands))}")
    return found


PYTHON_API = ("distributed.py", "session.py", "sharded.py")  # etl modules whose fixes name Python keywords


def keyword_params(path: Path) -> set[str]:
    """Every parameter name of the functions (and methods) defined in ``path``."""
    return {
        a.arg
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        for a in (*node.args.args, *node.args.kwonlyargs)
    }


def track_params() -> set[str]:
    import inspect

    from layerlake.etl.track import track

    return set(inspect.signature(track).parameters)


def test_the_source_has_fixes_to_check():
    texts = [f.text for f in fixes()]
    assert len(texts) > 100
    assert any("--root" in t for t in texts) and any("steps.only=" in t for t in texts)


def test_every_fix_names_options_and_keys_that_exist():
    bad = [f"{fix}: {', '.join(p)}" for fix in fixes() if (p := problems(fix))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("use `layerlake check --format csv`", "--format is not an option of check"),
        ("use `layerlake sql --formats csv`", "--formats is not an option of sql"),
        ("set probe.n_sequencez=4", "probe.n_sequencez= is not a config key"),
        ("use `layerlake query convergence treshold=0.8`", "treshold= is not a config key"),
        ("pass --param estimatr=debiased", "estimatr= is not a config key"),
        ("run `layerlake suite rebuild`", "`layerlake suite rebuild` is not a command"),
        ("use `layerlake query convergence --max-row 5`", "--max-row is not an option of query"),
        ("pass `layerlake.track(resum=True)`", "resum= is not a config key"),
        ("pass `layerlake.trak(resume=True)`", "layerlake.trak is not a function"),
        ("write `layerlake runs note RUN key=value`", "key= is not a config key"),
        ("write key=value (`layerlake runs tag RUN key=value`)", "key= is not a config key"),
    ],
)
def test_the_checker_catches_a_wrong_fix(text, expected):
    fix = Fix(REPO / "etl" / "plan.py", 1, "", text)
    assert any(expected in p for p in problems(fix)), problems(fix)


@pytest.mark.parametrize(
    "text",
    [
        "use `layerlake sql --format csv`",
        "set steps.only=[0, 4] or suite.train.max_steps=32",
        "use `layerlake query stabilisation threshold=0.8`",
        "pass --param estimator=debiased",
        "write e.g. --site-map attention.dense=ov",
        "`layerlake share export DIR --tables checkpoints`",
        "use `layerlake query convergence --max-rows 50` or --all",
        "pass `layerlake.track(config={...}, resume=True)`",
        "write `layerlake runs tag RUN verdict=good`",
    ],
)
def test_the_checker_accepts_a_right_fix(text):
    assert problems(Fix(REPO / "etl" / "plan.py", 1, "", text)) == []


# -- the fixes a missing warehouse gives, per command --------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["sql", "select 1"],
        ["check"],
        ["share", "export", "OUT"],
        ["share", "attach", "OUT"],
        ["query", "convergence"],
        ["extract", "--cfg", "job", "suite=nosuch"],
    ],
)
def test_a_missing_warehouse_fix_names_what_the_command_takes(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAYERLAKE_DATA", str(tmp_path / "nothing"))
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    text = err.split("fix:", 1)[1]
    fix = Fix(REPO / "src" / "layerlake" / "cli" / "main.py", 1, "", text)
    wrong = problems(fix, about={command_in(" ".join(argv))})
    assert wrong == [], (err, wrong)
