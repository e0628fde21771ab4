"""Declared recipe parameters: parse a header's ``-- param:`` line, and validate a value before binding.

A declaration reads ``-- param: $name type = default | description`` where ``type`` is one of

    boolean | integer | double | varchar | name | enum(a|b|c)      a scalar
    estimator | kernel | tensor | matrix                          a scalar from a closed set
                                                                  (``layerlake.core.choices``)
    integer[] | double[] | varchar[] | name[] | matrix[] ...      a list (binds as a DuckDB LIST)

with a trailing ``?`` when NULL is allowed (``name[]?``). ``name`` is a varchar restricted to the
characters of model, site and matrix names (letters, digits, ``_ . - : / +``), so a typo or pasted SQL
fails with a clear message instead of silently matching nothing. The default is YAML (``null``,
``0.9``, ``[a, b]``). A non-optional parameter without a default (or with ``null``) is required:
``-- param: $model name | the model``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from layerlake.core.choices import PARAM_CHOICES, did_you_mean
from layerlake.core.errors import ParameterError, SqlError

SCALARS = ("boolean", "integer", "double", "varchar", "name")
_NAME = re.compile(r"^[A-Za-z0-9_.:/+\-]+$")
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")  # ASCII digits only
_INTEGER = re.compile(r"^[+-]?[0-9]+$")  # not \d: int("٣") is 3, and a form field is typed, not a script
BIGINT = (-(2**63), 2**63 - 1)  # an integer parameter binds as DuckDB's BIGINT
_LINE = re.compile(
    r"^\$(?P<name>[A-Za-z_]\w*)\s+(?P<type>\S+)(\s*=\s*(?P<default>[^|]*?))?\s*\|\s*(?P<doc>.*)$"
)
_ENUM = re.compile(r"^enum\((?P<choices>[^()]+)\)$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # as declared, e.g. "double", "name[]?", "enum(biased|debiased)"
    default: Any
    doc: str

    @property
    def optional(self) -> bool:
        return self.type.endswith("?")

    @property
    def base(self) -> str:
        """The type without ``?`` and ``[]``."""
        return self.type.rstrip("?").removesuffix("[]")

    @property
    def is_list(self) -> bool:
        return self.type.rstrip("?").endswith("[]")

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional

    @property
    def choices(self) -> tuple[str, ...] | None:
        if self.base in PARAM_CHOICES:
            return PARAM_CHOICES[self.base].values()
        match = _ENUM.match(self.base)
        return tuple(c.strip() for c in match["choices"].split("|")) if match else None

    @property
    def sql_type(self) -> str:
        """The DuckDB type a value of this parameter binds as (``VARCHAR[]`` for ``name[]?``)."""
        scalar = {"boolean": "BOOLEAN", "integer": "BIGINT", "double": "DOUBLE"}.get(self.base, "VARCHAR")
        return scalar + "[]" if self.is_list else scalar

    def validate(self, value: Any) -> Any:
        """``value`` converted to what DuckDB binds for this type; a ``ParameterError`` otherwise."""
        if value is None:
            if self.optional:
                return None
            raise self._error(value, "is required")
        if self.is_list:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise self._error(value, "is not a list")
            return [self._scalar(item) for item in value]
        return self._scalar(value)

    def _scalar(self, value: Any) -> Any:
        base = self.base
        if base == "boolean":
            if isinstance(value, bool):
                return value
        elif base == "integer":
            number = value if isinstance(value, int) and not isinstance(value, bool) else None
            if isinstance(value, str) and _INTEGER.match(value.strip()) and len(value.strip()) <= 20:
                number = int(value)
            if number is not None and BIGINT[0] <= number <= BIGINT[1]:
                return number
        elif base == "double":
            number = _finite(value)
            if number is not None:
                return number
        elif base == "varchar":
            if isinstance(value, str):
                return value
        elif base == "name":
            if isinstance(value, str) and _NAME.match(value):
                return value
        elif self.choices is not None and value in self.choices:
            return str(value)
        return self._fail(value)

    def _fail(self, value: Any) -> Any:
        hint = (
            did_you_mean(value, self.choices) if self.choices is not None and isinstance(value, str) else ""
        )
        raise self._error(value, "is not a valid value" + hint)

    def _error(self, value: Any, what: str) -> ParameterError:
        shown = "missing" if value is None else repr(value)
        shown = shown if len(shown) <= 80 else shown[:60] + f"... ({len(shown)} characters)"
        return ParameterError(
            f"parameter ${self.name} {what} ({shown}): expected {self.describe_type()}",
            fix=f"pass {self.name}=<{self.describe_type()}> ({self.doc})",
        )

    def describe_type(self) -> str:
        """The type in words, e.g. ``a list of names, or null``."""
        if self.choices is not None:
            scalar = "one of " + ", ".join(self.choices)
        elif self.base == "name":
            scalar = "a name (letters, digits, _ . - : / +)"
        else:
            scalar = {
                "boolean": "true or false",
                "integer": "an integer (64-bit)",
                "double": "a finite number",
                "varchar": "a string",
            }[self.base]
        text = f"a list of [{scalar}]" if self.is_list else scalar
        return f"{text}, or null" if self.optional else text


def _finite(value: Any) -> float | None:
    """``value`` (a number, or ASCII number text) as a finite float; None if it is none."""
    if isinstance(value, str):
        value = value.strip() if _NUMBER.match(value.strip()) else None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        value = None
    try:
        number = None if value is None else float(value)
    except OverflowError:  # an integer beyond a float's range
        return None
    return number if number is not None and math.isfinite(number) else None


def parse_param(text: str, where: str) -> Param:
    """``$name type = default | doc`` (the text after ``-- param:``) as a ``Param``."""
    match = _LINE.match(text.strip())
    if match is None:
        raise SqlError(
            f"{where}: malformed parameter declaration {text.strip()!r}",
            fix="write `-- param: $name type = default | description`",
        )
    type_ = match["type"]
    base = type_.rstrip("?").removesuffix("[]")
    if base not in SCALARS and base not in PARAM_CHOICES and not _ENUM.match(base):
        raise SqlError(
            f"{where}: parameter ${match['name']} has unknown type {type_!r}",
            fix=f"use one of {', '.join((*SCALARS, *PARAM_CHOICES))}, enum(a|b), a list `type[]`, optional with `?`",
        )
    default = yaml.safe_load(match["default"]) if match["default"] else None
    param = Param(match["name"], type_, default, match["doc"].strip())
    if default is not None:
        param.validate(default)  # a wrong default is the recipe author's bug: fail on load
    return param
