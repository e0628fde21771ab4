"""Rich progress for extraction: one bar overall, one per model, ETA, and a line per finished task."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from layerlake.etl.executors import Outcome

log = logging.getLogger(__name__)  # one line per finished task in the job's log file (Hydra runs)


def format_timings(timings: Mapping[str, float]) -> str:
    """``0.47s (load 0.04 load_wait 0.01 forward 0.10 backward 0.16 svd 0.14)``: ``load_wait`` is the part
    of the load the task waited for (the rest ran while the task before it computed)."""
    order = ("load", "load_wait", "forward", "backward", "summaries", "sketches", "svd", "matrix_stats")
    parts = " ".join(f"{k} {timings[k]:.2f}" for k in order if timings.get(k))
    return f"{timings.get('total', 0.0):.2f}s ({parts})"


class ExtractProgress:
    """Context manager; ``advance(outcome)`` after each finished task."""

    def __init__(self, per_model: Mapping[str, int], enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True, markup=False, highlight=False)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description:<24}", markup=False),  # model names are data, never markup
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
        if outcome.result is not None:
            log.info("ok %s %s %s", ref.model, ref.revision, format_timings(outcome.result.timings))
        else:
            log.info("failed %s %s: %s", ref.model, ref.revision, outcome.error)
        self.progress.advance(self.overall)
        self.progress.advance(self.models[ref.model])
        if not self.enabled:
            return
        if outcome.result is not None:
            line = Text.assemble(
                ("ok", "green"), f" {ref.model} {ref.revision}  {format_timings(outcome.result.timings)}"
            )
        else:
            line = Text.assemble(("failed", "red"), f" {ref.model} {ref.revision}: {outcome.error or ''}")
        self.progress.console.print(line, highlight=False)
