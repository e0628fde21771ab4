"""The one grammar of every ``.sql`` file in layerlake (recipes, staging models, audits, macros), and
the folder catalog that loads them.

A file starts with a header of ``-- key: value`` comment lines; a line of ``--`` followed by two or
more spaces continues the previous key. Then comes the SQL body::

    -- name: stabilisation                    the object's name; equals the file name without .sql
    -- description: what it is or finds      (required)
    -- param: $threshold double in [0, 1] = 0.9 | what it means   one line per parameter (core.params)
    -- uses: layer_stabilisation, erank      staging models or macros it builds on
    -- grain: one row per (suite, model, ...)   what one result row is
    -- plot: bars x=layer value=...          recipes: how the result is drawn (`none`: no plot)
    -- title: When each layer stabilises     recipes: the figure's title in words ({param} fills in)
    -- signature: cka(a, b)                  macros: how it is called

Which keys a file may or must carry depends on its kind (the folder it lives in), which the code that
reads the folder says: ``SqlFolder(directory, kind, required=..., allowed=...)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from layerlake.core.choices import did_you_mean
from layerlake.core.errors import SqlError
from layerlake.core.params import Param, parse_param

HEADER_KEYS = ("name", "description", "param", "uses", "grain", "plot", "title", "signature")
_KEY = re.compile(r"^--\s(?P<key>[a-z]+):\s*(?P<value>.*)$")
_CONTINUATION = re.compile(r"^--\s{2,}(?P<text>\S.*)$")
_NAME = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class SqlFile:
    """One parsed ``.sql`` file: its header and its SQL body (header stripped, no trailing ``;``)."""

    path: Path
    kind: str
    name: str
    description: str
    params: tuple[Param, ...]
    uses: tuple[str, ...]
    grain: str
    plot: str
    title: str
    signature: str
    body: str

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def parse_sql_file(path: Path, kind: str = "sql") -> SqlFile:
    """Split ``path`` into header fields and body; a ``SqlError`` names an unknown key or a wrong name."""
    stamp = path.stat().st_mtime_ns
    return _parse(path, kind, stamp)


@cache
def _parse(path: Path, kind: str, _stamp: int) -> SqlFile:
    fields: dict[str, list[str]] = {key: [] for key in HEADER_KEYS}
    lines = path.read_text(encoding="utf-8").splitlines()
    last: str | None = None
    number = len(lines)
    for number, line in enumerate(lines):  # noqa: B007 (number marks where the body starts)
        if not line.startswith("--"):
            if line.strip():
                break
            continue
        key_match, more = _KEY.match(line), _CONTINUATION.match(line)
        if key_match and key_match["key"] in HEADER_KEYS:
            last = key_match["key"]
            fields[last].append(key_match["value"].strip())
        elif key_match:
            raise SqlError(
                f"{path}:{number + 1}: unknown header key {key_match['key']!r}",
                fix=f"use one of: {', '.join(HEADER_KEYS)}",
            )
        elif more and last is not None and fields[last]:
            fields[last][-1] += " " + more["text"].strip()
    else:
        number = len(lines)
    body = "\n".join(lines[number:]).strip().rstrip(";").strip()
    name = " ".join(fields["name"])
    if name != path.stem:
        raise SqlError(
            f"{path}: header says name {name!r}", fix=f"write `-- name: {path.stem}` as its first line"
        )
    return SqlFile(
        path=path,
        kind=kind,
        name=name,
        description=" ".join(fields["description"]),
        params=tuple(parse_param(text, str(path)) for text in fields["param"]),
        uses=tuple(u.strip() for line in fields["uses"] for u in line.split(",") if u.strip()),
        grain=" ".join(fields["grain"]),
        plot=" ".join(fields["plot"]),
        title=" ".join(fields["title"]),
        signature=" ".join(fields["signature"]),
        body=body,
    )


class SqlFolder:
    """The ``.sql`` files of one folder, all of one kind, checked against that kind's header keys."""

    def __init__(
        self,
        directory: Path,
        kind: str,
        required: tuple[str, ...] = ("description",),
        allowed: tuple[str, ...] = (),
    ) -> None:
        self.directory = Path(directory).resolve()
        self.kind = kind
        self.required = ("name", *required)
        self.allowed = set(self.required) | set(allowed)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.sql"))

    def get(self, name: str) -> SqlFile:
        """The file called ``name``; an unknown name is a ``SqlError`` listing the known ones."""
        path = self.directory / f"{name}.sql"
        if not isinstance(name, str) or not _NAME.match(name) or not path.is_file():
            known = self.names()
            raise SqlError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, known)}",
                fix=f"use one of: {', '.join(known) or '(none)'}",
            )
        parsed = parse_sql_file(path, self.kind)
        self._check_keys(parsed)
        return parsed

    def all(self) -> list[SqlFile]:
        return [self.get(name) for name in self.names()]

    def closure(self, names: tuple[str, ...] | list[str], where: str) -> list[SqlFile]:
        """The files ``names`` and everything they use in this folder, dependencies first, each once."""
        ordered: dict[str, SqlFile] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in ordered:
                return
            if name in chain:
                raise SqlError(
                    f"{where}: {self.kind} cycle {' -> '.join((*chain, name))}", fix="break the cycle"
                )
            item = self.get(name)
            for dependency in item.uses:
                if (self.directory / f"{dependency}.sql").is_file():
                    visit(dependency, (*chain, name))
            ordered[name] = item

        for name in names:
            visit(name, ())
        return list(ordered.values())

    def _check_keys(self, item: SqlFile) -> None:
        present = {key for key in HEADER_KEYS if _has(item, key)}
        missing = [k for k in self.required if k not in present]
        extra = sorted(present - self.allowed)
        if missing or extra:
            raise SqlError(
                f"{item.path}: a {self.kind} file "
                + (f"lacks header key(s) {missing}" if missing else f"may not carry {extra}"),
                fix=f"a {self.kind} header has {', '.join(self.required)}"
                + (
                    f" and may have {', '.join(sorted(self.allowed - set(self.required)))}"
                    if self.allowed - set(self.required)
                    else ""
                ),
            )


def _has(item: SqlFile, key: str) -> bool:
    value = {"param": item.params, "uses": item.uses}.get(key, getattr(item, key, ""))
    return bool(value)
