"""Progress of long work (extraction, the embedded suite's training): how far it is, its rate and the time
left, shown as rich bars on a terminal and as plain lines anywhere else (a file, a pipe, CI logs).

On a terminal the bars redraw in place, with a line above them per finished checkpoint. Elsewhere bars
cannot redraw, so one plain line is printed per finished checkpoint (extraction) or saved checkpoint and
trained model (training), each saying what finished, how many of how many, the time elapsed and the time
left; lines for work that finishes faster than one per ``LINE_INTERVAL`` seconds are skipped, never the
first, a failure, a model's last or the very last. ``progress=false`` shows neither. Every line also goes
to the command's log file (Hydra's run folder).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from layerlake.conf.schema import ModelSpec
from layerlake.etl.executors import Outcome

log = logging.getLogger(__name__)  # every progress line in the job's log file (Hydra runs)

LINE_INTERVAL = 10.0  # seconds between plain lines at most once per this (failures and ends always)


class Display(enum.Enum):
    bars = "bars"  # a terminal: rich bars redrawn in place
    lines = "lines"  # anything else: one plain line per finished item, rate-limited
    off = "off"  # progress=false


def display_of(console: Console, enabled: bool) -> Display:
    """Bars where ``console`` is a terminal (rich's test: a tty, or ``TTY_COMPATIBLE=1`` / ``FORCE_COLOR``
    set), plain lines elsewhere, nothing when progress is off."""
    if not enabled:
        return Display.off
    return Display.bars if console.is_terminal else Display.lines


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``.

    >>> format_duration(4.4), format_duration(185), format_duration(7620), format_duration(100000)
    ('4 s', '3 min 05 s', '2 h 07 min', '27 h 46 min')
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_timings(timings: Mapping[str, float]) -> str:
    """``0.47s (load 0.04 load_wait 0.01 forward 0.10 backward 0.16 svd 0.14)``: ``load_wait`` is the part
    of the load the task waited for (the rest ran while the task before it computed)."""
    order = ("load", "load_wait", "forward", "backward", "summaries", "sketches", "svd", "matrix_stats")
    parts = " ".join(f"{k} {timings[k]:.2f}" for k in order if timings.get(k))
    return f"{timings.get('total', 0.0):.2f}s ({parts})"


WIDTH_FLOOR = 256  # below this width, per-layer overheads (calls, hooks, small kernels) outweigh the maths


def checkpoint_cost(spec: ModelSpec) -> float:
    """A model's relative cost per extracted checkpoint, until one is measured: layers x width^3 (the
    float64 SVDs of its d x d matrices dominate at Pythia's shapes; ``benchmarks/RESULTS.md``), the
    width taken as at least ``WIDTH_FLOOR`` (tiny models cost about the same per layer).

    >>> checkpoint_cost(ModelSpec("b", n_layers=24, d_model=2048, n_heads=16)) / checkpoint_cost(
    ...     ModelSpec("a", n_layers=24, d_model=1024, n_heads=16))
    8.0
    """
    return float(spec.n_layers * max(spec.d_model, WIDTH_FLOOR) ** 3)


def update_cost(spec: ModelSpec) -> float:
    """A model's relative cost per training update, until one is measured: layers x width^2 (about its
    parameter count: the forward and backward take some 6 x parameters FLOPs per token), the width taken
    as at least ``WIDTH_FLOOR``."""
    return float(spec.n_layers * max(spec.d_model, WIDTH_FLOOR) ** 2)


class Estimate:
    """Elapsed time, rate and time left of a job made of items in groups (a model's checkpoints, a model's
    training updates) whose items cost alike within a group.

    An item's cost is its own seconds (a task's time on its worker) or, for work done in sequence
    (``sequential``), the wall time since the item before. A group's first item in each worker process
    carries a setup (the process importing torch and transformers, a Ray worker starting: on a busy
    machine a minute or more, paid once per process, not per group), so a group's cost per item is the
    mean of its other items; a group with none of those yet is costed by its prior (a relative size) times the seconds
    per prior unit of the groups measured so far (without priors: their mean item). Time left = elapsed
    x (cost of what is left) / (cost measured so far): on a cluster running k items at once the measured
    cost grows k times as fast as the clock, so one formula serves sequence and parallel. Until a second
    item of some group has finished there is no estimate (a first item alone is mostly setup).
    """

    def __init__(
        self,
        totals: Mapping[str, int],
        priors: Mapping[str, float] | None = None,
        sequential: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.totals = dict(totals)
        self.priors = dict(priors or {})
        self.sequential = sequential
        self.clock = clock
        self.started = self.last = clock()
        self.done: Counter[str] = Counter()  # items finished (failed ones too)
        self.first: dict[tuple, float] = {}  # (group, worker) -> its first measured item's cost (setup)
        self.later: Counter[str] = Counter()  # group -> measured items after the first in their worker
        self.later_spent: defaultdict[str, float] = defaultdict(float)  # ... and their seconds

    def restart(self) -> None:
        """Start the clock now (the work begins)."""
        self.started = self.last = self.clock()

    def add(self, group: str, seconds: float | None = None, ok: bool = True, worker: Hashable = None) -> None:
        """One more item of ``group`` finished: ``seconds`` its own time (else, ``sequential``, the time
        since the last item), in ``worker`` (the process it ran in; None: this one); a failed item
        (``ok=False``) counts as finished but is not measured."""
        now = self.clock()
        cost = now - self.last if seconds is None and self.sequential else seconds
        self.last = now
        self.done[group] += 1
        if not ok or cost is None:
            return
        if (group, worker) not in self.first:
            self.first[group, worker] = cost
        else:
            self.later[group] += 1
            self.later_spent[group] += cost

    @property
    def finished(self) -> int:
        return sum(self.done.values())

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def measured(self) -> int:
        """Items measured (succeeded)."""
        return len(self.first) + sum(self.later.values())

    def spent(self) -> float:
        return sum(self.first.values()) + sum(self.later_spent.values())

    def elapsed(self) -> float:
        """Seconds from the start to the last finished item."""
        return self.last - self.started

    def per_hour(self) -> float | None:
        """Measured (succeeded) items per hour of elapsed time."""
        elapsed = self.elapsed()
        return self.measured * 3600 / elapsed if elapsed > 0 and self.measured else None

    def per_item(self, group: str) -> float | None:
        """Seconds per item of ``group`` after its setup (measured, else from the other groups)."""
        if self.later[group]:
            return self.later_spent[group] / self.later[group]
        known = [g for g in self.later if self.later[g]]
        if not known:
            return None
        if group in self.priors and all(self.priors.get(g, 0) > 0 for g in known):
            units = sum(self.later[g] * self.priors[g] for g in known)
            return self.priors[group] * sum(self.later_spent[g] for g in known) / units
        return sum(self.later_spent[g] for g in known) / sum(self.later[g] for g in known)

    def seconds_left(self, left: Mapping[str, int] | None = None) -> float | None:
        """Projected seconds for ``left`` (items per group; default: the totals not yet finished) at
        the rate measured so far; None before there is a measure."""
        left = {g: n - self.done[g] for g, n in self.totals.items()} if left is None else left
        left = {g: n for g, n in left.items() if n > 0}
        if not left:
            return 0.0
        per_item = {g: self.per_item(g) for g in left}
        spent = self.spent()
        if spent <= 0 or any(cost is None for cost in per_item.values()):
            return None
        return self.elapsed() * sum(n * per_item[g] for g, n in left.items()) / spent

    def status(self) -> str:
        """``elapsed 1 min 05 s, about 3 min 10 s left``."""
        elapsed = f"elapsed {format_duration(self.elapsed())}"
        if self.finished >= self.total:
            return f"{elapsed}, done"
        left = self.seconds_left()
        return (
            f"{elapsed}, time left not known yet"
            if left is None
            else f"{elapsed}, about {format_duration(left)} left"
        )


class LineGate:
    """Whether a plain progress line is due: the first, any ``must`` (a failure, an end), and others at
    most once per ``interval`` seconds."""

    def __init__(self, interval: float = LINE_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last: float | None = None

    def due(self, must: bool = False) -> bool:
        now = self.clock()
        if must or self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False


def plain(console: Console, line: str) -> None:
    """A progress line as plain text, never wrapped (a file or a pipe has no width)."""
    console.print(Text(line), soft_wrap=True, highlight=False)


@dataclass(frozen=True)
class Throughput:
    """An extraction's rate and what it leaves, for its report."""

    committed: int  # checkpoints this run committed
    elapsed: float  # seconds from the first task handed out to the last result recorded
    left: int  # planned checkpoints still not committed (failed, or not run)
    seconds_left: float | None  # ``left`` projected at this run's rate; None when nothing was measured

    @property
    def per_hour(self) -> float | None:
        return self.committed * 3600 / self.elapsed if self.committed and self.elapsed > 0 else None


class ExtractProgress:
    """Context manager over an extraction; ``advance(outcome)`` after each finished task. ``per_model``:
    the checkpoints each model has to run; ``priors``: each model's relative cost per checkpoint
    (``checkpoint_cost``), for models not measured yet."""

    def __init__(
        self,
        per_model: Mapping[str, int],
        enabled: bool = True,
        console: Console | None = None,
        priors: Mapping[str, float] | None = None,
        interval: float = LINE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console(stderr=True, markup=False, highlight=False)
        self.display = display_of(self.console, enabled)
        self.estimate = Estimate(per_model, priors, clock=clock)
        self.gate = LineGate(interval, clock)
        self.progress = Progress(
            TextColumn("{task.description:<24}", markup=False),  # model names are data, never markup
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=self.console,
            disable=self.display != Display.bars,
        )
        self.overall = self.progress.add_task("all checkpoints", total=sum(per_model.values()), note="")
        self.models = {m: self.progress.add_task(m, total=n, note="") for m, n in per_model.items()}

    def __enter__(self) -> ExtractProgress:
        self.progress.__enter__()
        self.estimate.restart()
        if self.display == Display.lines:
            plain(
                self.console,
                f"extracting {self.estimate.total} checkpoint(s) of {len(self.models)} model(s): a line per "
                f"finished checkpoint, at most one per {self.gate.interval:.0f} s (failures and each model's last always)",
            )
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, outcome: Outcome) -> None:
        ref, result = outcome.task.ref, outcome.result
        ok, estimate = result is not None, self.estimate
        worker = (result.placement.get("node_id"), result.placement.get("pid")) if ok else None
        estimate.add(ref.model, result.timings.get("total") if ok else None, ok=ok, worker=worker)
        detail = format_timings(result.timings) if ok else outcome.error or ""
        mark = "ok" if ok else "failed"
        line = f"[{estimate.finished}/{estimate.total}] {mark} {ref.model} {ref.revision} ({self.status()}): {detail}"
        log.info("%s", line)
        self.progress.advance(self.overall)
        self.progress.advance(self.models[ref.model])
        self.progress.update(self.overall, note=self.status(short=True))
        if self.display == Display.bars:
            style = "green" if ok else "red"
            self.console.print(
                Text.assemble((mark, style), f" {ref.model} {ref.revision}  {detail}"), highlight=False
            )
        elif self.display == Display.lines:
            model_done = estimate.done[ref.model] >= estimate.totals[ref.model]
            if self.gate.due(must=not ok or model_done):
                plain(self.console, line)

    def status(self, short: bool = False) -> str:
        """``elapsed 12 s, about 45 s left, 900 checkpoints/h`` (``short``: for the bar, without elapsed)."""
        rate = self.estimate.per_hour()
        per_hour = f", {rate:,.0f} checkpoints/h" if rate is not None else ""
        if not short:
            return self.estimate.status() + per_hour
        left = self.estimate.seconds_left()
        if self.estimate.finished >= self.estimate.total:
            eta = "done"
        else:
            eta = f"about {format_duration(left)} left" if left is not None else "time left not known yet"
        return eta + per_hour

    def throughput(self, left: Mapping[str, int]) -> Throughput:
        """This run's rate, and ``left`` (planned checkpoints per model not committed) projected at it."""
        return Throughput(
            committed=self.estimate.measured,
            elapsed=self.estimate.elapsed(),
            left=sum(left.values()),
            seconds_left=self.estimate.seconds_left(left),
        )


@dataclass(frozen=True)
class TrainJob:
    """One model a build trains: its key (folder name), the updates it runs, its relative cost per update."""

    key: str
    updates: int
    cost: float


class TrainProgress:
    """Context manager over the training of a suite's models: ``callback(key)`` gives a model's
    ``on_update(step, note)``; ``finished(key, line)`` prints a model's summary as it ends. Plain lines
    come at checkpoint steps (``steps``) and at each model's end."""

    def __init__(
        self,
        console: Console,
        jobs: Iterable[TrainJob],
        steps: Iterable[int],
        enabled: bool,
        interval: float = LINE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.jobs = {job.key: job for job in jobs}
        self.steps = set(steps)
        self.display = display_of(console, enabled)
        updates = {k: j.updates for k, j in self.jobs.items()}
        self.estimate = Estimate(updates, {k: j.cost for k, j in self.jobs.items()}, True, clock)
        self.gate = LineGate(interval, clock)
        self.bar = Progress(
            TextColumn("{task.description:<16}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}", markup=False), TimeElapsedColumn(), console=console,
            disable=self.display != Display.bars,
        )  # fmt: skip
        self.overall = self.bar.add_task("all models", total=self.estimate.total, note="")
        self.started: list[str] = []  # models in the order they began

    def __enter__(self) -> TrainProgress:
        self.bar.__enter__()
        if self.display == Display.lines:
            plain(
                self.console,
                f"training {len(self.jobs)} model(s), {self.estimate.total} updates: a line per saved checkpoint, "
                f"at most one per {self.gate.interval:.0f} s, and one per trained model",
            )
        self.estimate.started = self.estimate.last = self.estimate.clock()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def callback(self, key: str, max_steps: int) -> Callable[[int, str], None]:
        """``on_update(step, note)`` for one model's training loop (``max_steps``: its last step)."""
        self.started.append(key)
        task = self.bar.add_task(key, total=max_steps, note="")
        where = f"model {len(self.started)}/{len(self.jobs)}"

        def on_update(step: int, note: str) -> None:
            self.estimate.add(key)
            self.bar.update(task, completed=step, note=note)
            self.bar.update(self.overall, completed=self.estimate.finished, note=self._eta())
            if self.display == Display.lines and step in self.steps and self.gate.due():
                plain(
                    self.console,
                    f"[{where}] {key}: checkpoint step{step} saved, update {step}/{max_steps}, {note} "
                    f"({self.estimate.status()})",
                )

        return on_update

    def finished(self, key: str, line: str) -> None:
        """A model is done: its summary, printed now (with the time left, as a plain line)."""
        log.info("%s", line)
        if self.display == Display.lines:
            self.gate.due(must=True)
            where = (
                f"model {self.started.index(key) + 1}/{len(self.jobs)}" if key in self.started else "model"
            )
            plain(self.console, f"[{where} done] {line} ({self.estimate.status()})")
        else:
            plain(self.console, line)

    def _eta(self) -> str:
        left = self.estimate.seconds_left()
        return "" if left is None else f"about {format_duration(left)} left"
