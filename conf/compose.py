"""Compose the project's config: the one home of Hydra composition (CLI pre-check, tests, notebooks)::

    from layerlake.conf.compose import compose
    settings = compose(["suite=pythia", "steps=paper"])

Every way a composition can fail (an unknown key or group option, a value of the wrong type, a choice
outside its closed set) becomes a ``ConfigError`` that names the key, what it takes, and the nearest
valid name: never a traceback, never Hydra's hint to append the key with ``+``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from layerlake.conf.overrides import lift_long_lists, linear_list_parsing, set_lifted
from layerlake.conf.schema import CONF_DIR, GROUPS, Config, register_schemas, to_settings
from layerlake.core.choices import did_you_mean
from layerlake.core.errors import ConfigError, LayerlakeError

_CFG_FIX = "see every key and its current value with `layerlake <command> --cfg job`"


def compose(overrides: Sequence[str] = ()) -> Config:
    """The composed, validated config as plain dataclasses; a ``ConfigError`` names what is wrong."""
    register_schemas()
    linear_list_parsing()
    overrides, lifted = lift_long_lists(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        return set_lifted(to_settings(cfg), lifted)
    except LayerlakeError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as error:
        raise explain(error) from error


def run_folder(overrides: Sequence[str], multirun: bool = False) -> str:
    """The folder Hydra makes for a job's outputs (``hydra.run.dir``, or ``hydra.sweep.dir`` for a
    multirun: under ``paths.runs`` unless overridden), as these overrides compose it now."""
    from omegaconf import OmegaConf

    register_schemas()
    linear_list_parsing()
    overrides = lift_long_lists(first_of_sweeps(overrides))[0]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        node = cfg.hydra.sweep if multirun else cfg.hydra.run
        return str(OmegaConf.select(node, "dir", throw_on_missing=True))
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as error:
        raise explain(error) from error


def check_overrides(overrides: Sequence[str]) -> Config:
    """Compose once with the first value of every sweep (``a=1,2`` -> ``a=1``), then once more for each
    other value of each sweep (the rest at their first): a wrong key, type or choice in any job of a
    multirun fails here, before a job runs or anything is written. ``hydra.*`` overrides are checked too.
    Returns the first composition (the first job's config)."""
    overrides, lifted = lift_long_lists(overrides)  # a long plain list is composed with its first element,
    base = first_of_sweeps(overrides)
    first = set_lifted(compose(base), lifted)  # then checked whole (a value listed twice, a negative step)
    for index, values in _sweeps(overrides):
        for value in values[1:]:
            compose([*base[:index], value, *base[index + 1 :]])
    return first


def first_of_sweeps(overrides: Sequence[str]) -> list[str]:
    """The overrides with each sweep replaced by its first value."""
    sweeps = dict(_sweeps(overrides))
    return [sweeps[i][0] if i in sweeps else text for i, text in enumerate(overrides)]


def _sweeps(overrides: Sequence[str]) -> list[tuple[int, list[str]]]:
    """``(position, ["key=v1", "key=v2", ...])`` for each sweep override (``key=v1,v2``, ``range(...)``)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(f"cannot parse the overrides: {_first_line(error)}", fix=_CFG_FIX) from error
    out = []
    for index, override in enumerate(parsed):
        if override.is_sweep_override():
            key = override.get_key_element()
            try:
                values = [f"{key}={v}" for v in override.sweep_string_iterator()]
            except HydraException:  # a sweep without a finite list of values (interval): Hydra's to expand
                continue
            out.append((index, values))
    return out


def explain(error: BaseException) -> ConfigError:
    """A composition failure as a ``ConfigError`` naming the key and the fix."""
    cause = error.__cause__ or error.__context__ or error  # Hydra chains the OmegaConf error either way
    key = getattr(cause, "full_key", None) or ""
    text = _first_line(cause) if cause is not error else _first_line(error)
    source = re.match(r"In '([\w/.-]+)'", str(error))  # the YAML file being merged, when Hydra names it
    where = f" (set in {source.group(1)}.yaml)" if source else ""
    missing_group = re.search(r"Could not find '([\w/]+)/([^']+)'", str(error))
    if missing_group:
        group, option = missing_group.groups()
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return ConfigError(
            f"{group}={option} is not a config of group {group!r}{did_you_mean(option, options)}",
            fix=f"use one of: {', '.join(options)}",
        )
    if "not in" in text and key:
        parent, _, leaf = key.rpartition(".")
        known = _keys_of(parent)
        full = [f"{parent}.{k}" if parent else k for k in known]
        return ConfigError(
            f"unknown config key {key!r}{where}{did_you_mean(key, full)}",
            fix=f"{parent or 'the top level'} takes: {', '.join(known)}; {_cfg_fix(key)}",
        )
    choices = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", text)
    if choices and key:
        value, options = choices.group(1), [o.strip() for o in choices.group(2).split(",")]
        return ConfigError(
            f"{key} {value!r} is not one of: {', '.join(options)}{did_you_mean(value, options)}",
            fix=f"set {key} to one of: {', '.join(options)}",
        )
    if "Config group override must be" in text:
        return ConfigError(
            "a config group was set to null", fix=f"give each group one of its configs ({', '.join(GROUPS)})"
        )
    if key:
        return ConfigError(f"config key {key!r}{where}: {text}", fix=_cfg_fix(key))
    return ConfigError(f"the config does not compose: {_cause_text(error)}", fix=_CFG_FIX)


def _cfg_fix(key: str) -> str:
    return _CFG_FIX.replace("--cfg job", "--cfg hydra") if key.split(".")[0] == "hydra" else _CFG_FIX


def _cause_text(error: BaseException) -> str:
    """Every line of Hydra's message with its innermost cause's first line (Hydra often says only
    'In <file>: ValidationError raised while composing config:', the cause holding the reason)."""
    text = _first_line(error)
    inner = error
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if inner is not error:
        reason = _first_line(inner)
        full_key = getattr(inner, "full_key", None)
        text += f" {reason}" + (f" (key {full_key})" if full_key else "")
    return text


def _keys_of(path: str) -> list[str]:
    """The keys of the schema node at dotted ``path`` ('' = the top level)."""
    from hydra.conf import HydraConf

    node: Any = Config
    for part in [p for p in path.split(".") if p]:
        if node is Config:
            node = HydraConf if part == "hydra" else GROUPS.get(part)
        else:
            node = _field_type(node, part)
        if node is None:
            return []
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def _field_type(node: Any, name: str) -> Any:
    import typing

    hints = typing.get_type_hints(node) if is_dataclass(node) else {}
    kind = hints.get(name)
    return kind if is_dataclass(kind) else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
