"""The runs as one table to search, filter and sort: what ``layerlake runs`` prints and the UI's runs page shows.

One row per run shown by the views (archived runs are not), with

- its own columns: ``run_id, status, kind, suite, model, seed, started_at, duration_s, sweep_dir, job_num,
  host, git_commit``, and how many ``snapshots`` (checkpoint steps) and ``notes`` it has;
- ``config.<key>`` for every config value (nested keys joined with ``.``) that differs between the runs
  (the values all runs share are listed apart, in ``RunsTable.shared``);
- ``last.<name>`` for the last logged value of each scalar (at the run's highest step);
- ``tag.<key>`` for each tag (``layerlake runs tag``).

A filter is a comma-separated list of terms ``column op value``, ``op`` one of ``= != > >= < <= ~``
(``~``: contains, ignoring case), e.g. ``lr > 1e-3, status = running``. A column may be named without its
``config.``/``last.``/``tag.`` prefix, or by the last parts of a nested key (``lr`` for ``config.optim.lr``),
when that names one column. Numbers compare as numbers, anything
else as text; a run without the column fails every term on it but ``!=``. The search text matches any
cell (ignoring case). Column names are checked against the table's own: nothing given reaches SQL.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from layerlake.core.choices import did_you_mean
from layerlake.core.errors import ParameterError

RUN_COLUMNS = (
    "run_id", "status", "kind", "suite", "model", "seed", "started_at", "duration_s", "sweep_dir", "job_num",
    "host", "git_commit", "snapshots", "notes",
)  # fmt: skip
DEFAULT_HIDDEN = ("sweep_dir", "host", "git_commit")  # columns a page shows only when asked
PREFIXES = ("config.", "last.", "tag.")
OPERATORS = ("!=", ">=", "<=", "=", ">", "<", "~")
ORDERING = (">=", "<=", ">", "<")
_TIME = re.compile(r"^\d{4}(-\d{2}(-\d{2}([ T]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?([+-]\d{2}:\d{2}|Z)?)?)?)?$")
_TERM = re.compile(r"^\s*(?P<column>[^\s=!<>~]+)\s*(?P<op>!=|>=|<=|=|>|<|~)\s*(?P<value>.*?)\s*$")

RUNS_SQL = (
    "select run_id, status, kind, suite, model, seed, started_at, ended_at, host, git_commit, config_json, "
    "sweep_dir, job_num from runs"
)
LAST_SQL = (
    "select run_id, name, arg_max(value, step) as value from scalars where rank is null "
    "group by run_id, name order by name"
)
COUNT_SQL = {
    "snapshots": "select run_id, count(distinct step) from checkpoints group by run_id",
    "notes": "select run_id, count(*) from run_notes group by run_id",
}
TAGS_SQL = "select run_id, key, value from run_tags order by key"


@dataclass
class RunsTable:
    columns: list[str]  # every column, in order: the run's own, then config., last., tag.
    rows: list[dict[str, Any]]
    shared: dict[str, Any] = field(default_factory=dict)  # config values every run has alike

    def resolve(self, name: str) -> str:
        """The column ``name`` names (``lr`` -> ``config.lr`` when that is the only one); a clear error else."""
        if name in self.columns:
            return name
        found = [c for c in self.columns if c.startswith(PREFIXES) and c.split(".", 1)[1] == name]
        if not found:  # the last part(s) of a nested config key: lr for config.optim.lr
            found = [c for c in self.columns if c.startswith(PREFIXES) and c.endswith(f".{name}")]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ParameterError(
                f"{name!r} names several columns: {', '.join(found)}", fix="write one of them"
            )
        if name in self.shared or f"config.{name}" in self.shared:
            raise ParameterError(
                f"config value {name!r} is the same for every run shown, so it is no column",
                fix="filter on a value that differs between the runs",
            )
        raise ParameterError(
            f"no column {name!r}{did_you_mean(name, self.columns)}",
            fix=f"filter on one of: {', '.join(self.columns[:30])}{' ...' if len(self.columns) > 30 else ''}",
        )

    def select(
        self, search: str = "", filter_text: str = "", sort: str = "", descending: bool = False
    ) -> list[dict]:
        """The rows that match ``search`` and every term of ``filter_text``, sorted by ``sort`` (default:
        latest start first)."""
        terms = [self._term(t) for t in split_terms(filter_text)]
        needle = search.strip().lower()
        rows = [
            r for r in self.rows
            if all(matches(r.get(c), op, v) for c, op, v in terms)
            and (not needle or any(needle in text(v).lower() for v in r.values()))
        ]  # fmt: skip
        if sort:
            column = self.resolve(sort)
            present = [r for r in rows if r.get(column) is not None]
            absent = [r for r in rows if r.get(column) is None]
            present.sort(key=lambda r: sort_key(r[column]), reverse=descending)
            return present + absent  # runs without the value last, either way
        return sorted(rows, key=lambda r: text(r.get("started_at")), reverse=True)

    def _term(self, term: str) -> tuple[str, str, Any]:
        found = _TERM.match(term)
        if found is None:
            raise ParameterError(
                f"filter {term!r} is not `column op value`",
                fix=f"write e.g. `lr > 1e-3` or `status = running`; op is one of {' '.join(OPERATORS)}",
            )
        if not found["value"].strip():  # `status = ` matched nothing, silently: '' asks for empty text
            raise ParameterError(
                f"filter {term!r} has no value after {found['op']}",
                fix=f"write e.g. `{found['column']} {found['op']} running` (or '' for an empty text)",
            )
        column, op, wanted = self.resolve(found["column"]), found["op"], found["value"].strip().strip("'\"")
        if op in ORDERING:
            self._check_ordered(term, column, wanted)
        return column, op, wanted

    def _check_ordered(self, term: str, column: str, wanted: str) -> None:
        """An order (``<``, ``>=`` ...) on a column of numbers needs a number, and on one of times a time
        written from its year on (``2026-12``, ``2026-12-07 18:00``): text compared otherwise matched every
        run or none, silently (``lr < nan``, ``started_at > abc``)."""
        values = [r[column] for r in self.rows if r.get(column) is not None]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if _number(wanted) is None:
                raise ParameterError(
                    f"filter {term!r}: {column} holds numbers, and {wanted!r} is not one",
                    fix=f"compare {column} with a number, e.g. `{column} > 1e-3`",
                )
        elif values and all(isinstance(v, datetime) for v in values) and not _TIME.match(wanted):
            raise ParameterError(
                f"filter {term!r}: {column} holds times, and {wanted!r} is not one",
                fix=f"write the time from its year on, e.g. `{column} > 2026-12-07` or `{column} < 2026-12-07 18:30`",
            )


def split_terms(filter_text: str) -> list[str]:
    return [t for t in (part.strip() for part in filter_text.split(",")) if t]


def matches(value: Any, op: str, wanted: str) -> bool:
    if value is None:
        return op == "!="
    if op == "~":
        return wanted.lower() in text(value).lower()
    left, right = _comparable(value, wanted)
    if left is None:
        return op == "!="
    return {
        "=": left == right, "!=": left != right, ">": left > right, ">=": left >= right, "<": left < right,
        "<=": left <= right,
    }[op]  # fmt: skip


def _comparable(value: Any, wanted: str) -> tuple[Any, Any]:
    """Both as numbers when both read as numbers (a bool as true/false text), else both as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = _number(wanted)
        if number is not None:
            return float(value), number
    shown, given = text(value), wanted
    if isinstance(value, bool):
        given = wanted.lower()
    if isinstance(value, datetime):
        given = wanted.replace(" ", "T", 1)  # `2026-12-07 18:30` as the ISO text it is compared with
    return shown, given


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def sort_key(value: Any) -> tuple:
    """Numbers in order, then NaN (a diverged run's last loss: it compares with no number, so it would
    leave the order undefined among them), then text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "") if not math.isnan(value) else (1, 0.0, "")
    return (2, 0.0, text(value))


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``; a list becomes its JSON text."""
    if not isinstance(config, dict):
        return {prefix.rstrip("."): config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, dict)):
            out[name] = json.dumps(value, sort_keys=True)
        else:
            out[name] = value
    return out


def build(con: Any, now: datetime | None = None) -> RunsTable:
    """The runs table of the warehouse ``con`` reads (a cursor of ``warehouse.connect``)."""
    now = now or datetime.now(timezone.utc)
    runs = con.execute(RUNS_SQL).fetchall()
    configs: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for (
        run_id,
        status,
        kind,
        suite,
        model,
        seed,
        started,
        ended,
        host,
        commit,
        config_json,
        sweep,
        job,
    ) in runs:
        end = ended if ended is not None else (now if status == "running" else None)
        rows[run_id] = {
            "run_id": run_id, "status": status, "kind": kind, "suite": suite, "model": model, "seed": seed,
            "started_at": started, "duration_s": None if end is None else round((end - started).total_seconds(), 1),
            "sweep_dir": sweep, "job_num": job, "host": host, "git_commit": commit, "snapshots": 0, "notes": 0,
        }  # fmt: skip
        try:
            configs[run_id] = flatten(json.loads(config_json or "{}"))
        except ValueError:
            configs[run_id] = {}
    keys = sorted({k for c in configs.values() for k in c})
    shared: dict[str, Any] = {}
    differing = []
    every = list(configs.values())
    for key in keys:
        first = _typed(every[0].get(key, _MISSING))  # flattened values are scalars: compared as they are
        if len(every) > 1 and all(_typed(c.get(key, _MISSING)) == first for c in every[1:]):
            shared[key] = every[0][key]
        else:
            differing.append(key)
    for run_id, config in configs.items():
        rows[run_id].update({f"config.{k}": config[k] for k in differing if k in config})
    for name, sql in COUNT_SQL.items():
        for run_id, n in con.execute(sql).fetchall():
            if run_id in rows:
                rows[run_id][name] = n
    last_names: dict[str, None] = {}
    for run_id, name, value in con.execute(LAST_SQL).fetchall():
        if run_id in rows:
            rows[run_id][f"last.{name}"] = value
            last_names[name] = None
    tag_keys: dict[str, None] = {}
    for run_id, key, value in con.execute(TAGS_SQL).fetchall():
        if run_id in rows:
            rows[run_id][f"tag.{key}"] = value
            tag_keys[key] = None
    columns = [
        *RUN_COLUMNS, *(f"config.{k}" for k in differing), *(f"last.{n}" for n in last_names),
        *(f"tag.{k}" for k in tag_keys),
    ]  # fmt: skip
    return RunsTable(columns, list(rows.values()), shared)


_MISSING = "\x00missing"


def _typed(value: Any) -> tuple[type, Any]:
    """A value with its type, so that 1, 1.0 and True are three values (they are equal in Python)."""
    return type(value), value
