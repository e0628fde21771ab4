"""``layerlake extract``: extract the configured suite's checkpoints into the warehouse."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.table import Table
from rich.text import Text

from layerlake.conf.schema import Config
from layerlake.etl.driver import ExtractReport, run_extract
from layerlake.etl.progress import Throughput, format_duration

log = logging.getLogger(__name__)


def print_report(report: ExtractReport, warehouse: str, console: Console) -> None:
    """The outcome of an extraction; names, paths and errors are printed as plain text, never markup."""
    log.info(
        "extracted %d checkpoint(s), skipped %d, replaced %d, failed %d; warehouse: %s",
        len(report.committed), report.skipped, report.replaced, len(report.failed), warehouse,
    )  # fmt: skip
    for label, error in report.failed:
        log.info("failed %s: %s", label, error)
    console.print(
        Text(
            f"extracted {len(report.committed)} checkpoint(s), skipped {report.skipped} already committed, "
            f"{len(report.failed)} failed; warehouse: {warehouse}"
        ),
        soft_wrap=True,  # a path is never broken over lines, in a file or a pipe either
    )
    if report.replaced:
        options, changed = report.replaced - report.changed, report.changed
        why = [f"{options} with other extraction options"] if options else []
        if changed:
            why.append(f"{changed} from checkpoint files that changed since (weights or config.json)")
        console.print(
            Text(
                f"{report.replaced} checkpoint(s) had been extracted before, {' and '.join(why)}: "
                "extracted again, the rows of each one that committed replaced (one set of rows per checkpoint "
                "and probe), those of a failed one kept"
            )
        )
    if report.throughput is not None:
        for line in throughput_lines(report.throughput, report.planned):
            log.info("%s", line)
            console.print(Text(line), soft_wrap=True)
    if report.interrupted:
        console.print(
            Text("interrupted: what was committed stays; run the same command again to extract the rest"),
            soft_wrap=True,
        )
    if report.resubmitted:
        console.print(
            Text(f"{report.resubmitted} task(s) ran again on another worker after their worker or node died")
        )
    if report.duplicates:
        table = Table(title="checkpoints with identical weights (the step label is not their identity)")
        for column in ("model", "step", "same weights as step"):
            table.add_column(column)
        for model, step, first in report.duplicates:
            table.add_row(Text(model), Text(str(step)), Text(str(first)))
        console.print(table)
    if report.failed:
        table = Table(
            title=f"{len(report.failed)} failed task(s): fix them and re-run; only these are retried"
        )
        table.add_column("checkpoint", style="bold")
        table.add_column("error", style="red")
        for label, error in report.failed:
            table.add_row(Text(label), Text(error))
        console.print(table)


def throughput_lines(throughput: Throughput, planned: int) -> list[str]:
    """``rate: 860 checkpoints/hour (16 in 1 min 07 s)`` and ``left: 3 of 16 planned checkpoint(s), about
    12 s at this run's rate`` (what is left: planned checkpoints not committed, failed or not run)."""
    rate = throughput.per_hour
    lines = [
        f"rate: {rate:,.0f} checkpoints/hour ({throughput.committed} in {format_duration(throughput.elapsed)})"
        if rate is not None
        else f"rate: no checkpoint committed in {format_duration(throughput.elapsed)}"
    ]
    if not throughput.left:
        lines.append(f"left: none of the {planned} planned checkpoint(s)")
    elif throughput.seconds_left is None:
        lines.append(
            f"left: {throughput.left} of {planned} planned checkpoint(s); no time projected (none was measured)"
        )
    else:
        lines.append(
            f"left: {throughput.left} of {planned} planned checkpoint(s), about "
            f"{format_duration(throughput.seconds_left)} at this run's rate"
        )
    return lines


def extract(settings: Config) -> int:
    report = run_extract(settings)
    print_report(report, settings.paths.warehouse, Console(stderr=not report.ok))
    if report.interrupted:
        return 130  # as for any command stopped by Ctrl-C
    return 0 if report.ok else 1
