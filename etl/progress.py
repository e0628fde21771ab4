"""Rich progress for extraction: one bar overall, one per model, ETA, and a line per finished task."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from layerlake.etl.executors import Outcome


def format_timings(timings: Mapping[str, float]) -> str:
    """``0.47s (load 0.04 forward 0.10 backward 0.16 svd 0.14)``"""
    order = ("load", "forward", "backward", "reduce", "svd")
    parts = " ".join(f"{k} {timings[k]:.2f}" for k in order if timings.get(k))
    return f"{timings.get('total', 0.0):.2f}s ({parts})"


class ExtractProgress:
    """Context manager; ``advance(outcome)`` after each finished task."""

    def __init__(self, per_model: Mapping[str, int], enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.overall = self.progress.add_task("all checkpoints", total=sum(per_model.values()))
        self.models = {m: self.progress.add_task(m, total=n) for m, n in per_model.items()}

    def __enter__(self) -> ExtractProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, outcome: Outcome) -> None:
        ref = outcome.task.ref
        self.progress.advance(self.overall)
        self.progress.advance(self.models[ref.model])
        if not self.enabled:
            return
        if outcome.result is not None:
            self.progress.console.print(
                f"[green]ok[/] {ref.model} {ref.revision}  {format_timings(outcome.result.timings)}",
                highlight=False,
            )
        else:
            self.progress.console.print(
                f"[red]failed[/] {ref.model} {ref.revision}: {escape(outcome.error or '')}"
            )
