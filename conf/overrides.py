"""Hydra's override parser, made linear in the length of a list.

Hydra 1.3 reads a list override (``models=[a,b,...]``) element by element with ``ctx.element(i)``,
and ANTLR finds the i-th element by walking the node's children from the start: n elements cost
n^2 / 2 steps. A list of 2,000 names took 16 s to parse, 20,000 more than a minute (and a command
parses its overrides several times). ``linear_list_parsing()`` replaces that one visitor method with
one that walks the children once, giving the same values in the same order
(``tests/test_overrides.py`` compares both on nested lists, dicts, sweeps and functions).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, is_dataclass
from typing import Any

_installed = False
hydra_list_visitor: Any = None  # Hydra's own method, kept for the test that compares the two


def linear_list_parsing() -> None:
    """Install the linear list visitor into Hydra's override parser (once; idempotent)."""
    global _installed, hydra_list_visitor
    if _installed:
        return
    from hydra.core.override_parser.overrides_visitor import HydraOverrideVisitor
    from hydra.grammar.gen.OverrideParser import OverrideParser

    def visit_list_container(self: Any, ctx: Any) -> list[Any]:
        return [
            self.visitElement(child)
            for child in ctx.getChildren()
            if isinstance(child, OverrideParser.ElementContext)
        ]

    hydra_list_visitor = HydraOverrideVisitor.visitListContainer
    HydraOverrideVisitor.visitListContainer = visit_list_container
    _installed = True


# Long lists of plain words or integers skip the override grammar and OmegaConf altogether: the
# grammar's Python runtime and OmegaConf's node-per-element merge cost about 3 ms per element on every
# composition, so 20,000 model names took a minute. Such a list is composed with its first element only
# (so Hydra still checks the key and the element type), then set whole on the validated settings.
LONG_LIST = 64  # shorter lists go through Hydra unchanged
_KEY = r"(?P<prefix>\+{0,2})(?P<key>[A-Za-z_][\w.]*)"
_WORD = r"[A-Za-z_][\w./:-]*"
_INT = r"-?(?:0|[1-9][0-9]*)"
_KEYWORDS = {"true", "false", "null", "inf", "nan"}  # words the grammar reads as something else
_PLAIN_LIST = re.compile(rf"{_KEY}=\[\s*(?P<items>[^\[\]{{}}'\"$\\()]*?)\s*\]")


@dataclass(frozen=True)
class LiftedList:
    """One long list taken out of the overrides: ``key`` (dotted, without ``+``) and its ``values``."""

    key: str
    values: list[Any]


def plain_list(value: str) -> list[Any] | None:
    """The elements of ``[a,b,...]`` if every one is a plain word (a string) or every one an integer,
    as Hydra's grammar would read them; else None (the grammar must read it)."""
    match = _PLAIN_LIST.fullmatch(f"k={value.strip()}")
    if match is None:
        return None
    items = [item.strip() for item in match.group("items").split(",")]
    if all(re.fullmatch(_INT, item) for item in items):
        return [int(item) for item in items]
    if all(re.fullmatch(_WORD, item) and item.lower() not in _KEYWORDS for item in items):
        return items
    return None


def lift_long_lists(overrides: Sequence[str]) -> tuple[list[str], list[LiftedList]]:
    """``(overrides, lifted)``: each plain list of at least ``LONG_LIST`` elements replaced by a list of
    its first element, and what was taken out (in order). Anything else is left for Hydra."""
    out, lifted = [], []
    for text in overrides:
        match = _PLAIN_LIST.fullmatch(text)
        values = plain_list(text.partition("=")[2]) if match else None
        if match is None or values is None or len(values) < LONG_LIST:
            out.append(text)
            continue
        first = values[0]
        out.append(f"{match.group('prefix')}{match.group('key')}=[{first}]")
        lifted.append(LiftedList(match.group("key"), values))
    return out, lifted


def set_lifted(settings: Any, lifted: Sequence[LiftedList]) -> Any:
    """Put each lifted list back into the composed ``settings`` (dataclasses and dicts), each element
    converted to the type Hydra gave the first one (``[1,2]`` for a ``list[str]`` key -> ``["1","2"]``).
    The checks of each dataclass on the way (``__post_init__``, from the innermost out) run again on the
    whole list: Hydra checked its first element only (``models=[a,...,a]`` named a model twice)."""
    for item in lifted:
        *parents, leaf = item.key.split(".")
        node, path = settings, [settings]
        for name in parents:
            node = node[name] if isinstance(node, dict) else getattr(node, name)
            path.append(node)
        composed = node[leaf] if isinstance(node, dict) else getattr(node, leaf)
        kind = type(composed[0]) if isinstance(composed, list) and composed else None
        values = [kind(v) for v in item.values] if kind in (str, int, float) else list(item.values)
        if isinstance(node, dict):
            node[leaf] = values
        else:
            setattr(node, leaf, values)
        for checked in reversed(path):
            if is_dataclass(checked) and hasattr(checked, "__post_init__"):
                checked.__post_init__()
    return settings
