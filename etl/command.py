"""``layerlake extract``: extract the configured suite's checkpoints into the warehouse."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from layerlake.conf.schema import Config
from layerlake.etl.driver import ExtractReport, run_extract


def print_report(report: ExtractReport, warehouse: str, console: Console) -> None:
    console.print(
        f"extracted {len(report.committed)} checkpoint(s), skipped {report.skipped} already committed, "
        f"{len(report.failed)} failed; warehouse: {warehouse}"
    )
    if report.replaced:
        console.print(
            f"{report.replaced} checkpoint(s) had been extracted with other extraction options: "
            "extracted again, their rows replaced (one set of rows per checkpoint and probe)"
        )
    if report.duplicates:
        table = Table(title="checkpoints with identical weights (the step label is not their identity)")
        for column in ("model", "step", "same weights as step"):
            table.add_column(column)
        for model, step, first in report.duplicates:
            table.add_row(model, str(step), str(first))
        console.print(table)
    if report.failed:
        table = Table(
            title=f"{len(report.failed)} failed task(s): fix them and re-run; only these are retried"
        )
        table.add_column("checkpoint", style="bold")
        table.add_column("error", style="red")
        for label, error in report.failed:
            table.add_row(label, escape(error))
        console.print(table)


def extract(settings: Config) -> int:
    report = run_extract(settings)
    print_report(report, settings.paths.warehouse, Console(stderr=not report.ok))
    return 0 if report.ok else 1
