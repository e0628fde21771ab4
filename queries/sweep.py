"""Joins the jobs of a recipe multirun into one table: ``<sweep dir>/aggregate.parquet`` (and ``.csv``).

Registered as a Hydra callback in ``conf/config.yaml`` (``hydra.callbacks``); it acts only on sweeps
whose job folders hold a ``job.json`` written by ``queries.command.query``, so other multiruns
(``layerlake extract -m ...``) are left alone. Each swept key becomes a column in front of the result's
own columns (``recipe.params.threshold`` -> ``threshold``, with the job's validated value; ``recipe`` ->
``recipe``; any other key, e.g. ``models``, -> its override value), plus ``job``, the job number. A
failed job is listed by number, overrides and error (its ``job.json`` keeps the details); the jobs that
succeeded still land in the aggregate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from layerlake.core import render
from layerlake.queries.command import JOB_FILE

AGGREGATE = "aggregate"
PARAM_PREFIX = "recipe.params."


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys of the sweep overrides (``a=1,2`` or ranges), e.g. ``recipe.params.threshold``."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def column_name(key: str) -> str:
    return key.removeprefix(PARAM_PREFIX)


def job_value(job: dict[str, Any], key: str) -> Any:
    """The job's value of swept ``key``: its bound parameter, its recipe, or its override text."""
    name = column_name(key)
    params = job.get("params") or job.get("given") or {}
    if key == "recipe":
        return job.get("recipe")
    if name in params:
        value = params[name]
    else:
        value = next(
            (o.split("=", 1)[1] for o in job.get("overrides", []) if o.lstrip("+~").split("=")[0] == key),
            None,
        )
    return ",".join(map(str, value)) if isinstance(value, list) else value


def read_jobs(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    jobs = []
    for path in sweep_dir.rglob(JOB_FILE):
        jobs.append((path.parent, json.loads(path.read_text())))
    return sorted(jobs, key=lambda item: (item[1].get("job", 0) or 0, str(item[0])))


def aggregate(
    sweep_dir: Path, overrides: list[str]
) -> tuple[pa.Table | None, list[tuple[Path, dict[str, Any]]]]:
    """The joined table of the successful jobs (None if none) and the failed jobs."""
    keys = swept_keys(overrides)
    parts, failed = [], []
    for folder, job in read_jobs(sweep_dir):
        if job.get("status") != "ok":
            failed.append((folder, job))
            continue
        table = pq.read_table(job["result"])
        front = {"job": job.get("job")} | {column_name(k): job_value(job, k) for k in keys}
        for name, value in reversed(front.items()):
            if name not in table.column_names:
                table = table.add_column(0, name, pa.array([value] * table.num_rows))
        parts.append(table)
    if not parts:
        return None, failed
    return pa.concat_tables(parts, promote_options="permissive"), failed


class SweepAggregator(Callback):
    """Hydra callback: after a multirun of ``layerlake query``, write and report the aggregate."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir() or not any(sweep_dir.rglob(JOB_FILE)):
            return
        table, failed = aggregate(sweep_dir, list(config.hydra.overrides.task))
        from rich.console import Console

        console = Console(stderr=True, highlight=False, soft_wrap=True)
        for folder, job in failed:
            console.print(
                f"failed: job {job.get('job')} ({' '.join(job.get('overrides', []))}): "
                f"{job.get('error')} (see {folder / JOB_FILE})",
                markup=False,
            )
        summary = {"failed": [str(folder) for folder, _ in failed], "aggregate": None}
        if table is not None:
            parquet, _ = render.save(table, sweep_dir, AGGREGATE)
            summary["aggregate"] = str(parquet)
            print(f"sweep: {table.num_rows} rows from the successful jobs in {parquet}")
        (sweep_dir / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
