"""Progress of long work: the estimate of the time left (on a clock the test moves), plain lines where the
output is not a terminal and bars where it is, for ``extract``, ``suite build`` and ``demo``, and the
throughput report at the end of an extraction."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES
from rich.console import Console

from layerlake.etl import command, driver
from layerlake.etl.executors import Outcome
from layerlake.etl.progress import (
    LINE_INTERVAL,
    Estimate,
    ExtractProgress,
    LineGate,
    Throughput,
    TrainJob,
    TrainProgress,
)
from layerlake.etl.task import (
    CheckpointRef,
    ExtractOptions,
    ExtractTask,
    ProbeBatch,
    TaskResult,
    extract_run_id,
)
from layerlake.warehouse.runs import RunStatus, committed_run
from layerlake.warehouse.writer import Warehouse

REPO = Path(__file__).resolve().parents[1]
LAYERLAKE = str(REPO / ".venv" / "bin" / "layerlake")
BAR = "━"  # rich's bar character


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_first_item_is_setup_and_unmeasured_groups_scale_by_their_prior():
    clock = Clock()
    estimate = Estimate({"a": 4, "b": 4}, priors={"a": 1.0, "b": 2.0}, sequential=True, clock=clock)
    clock.now = 6.0  # a's first item: 5 s of setup and 1 s of work
    estimate.add("a")
    assert estimate.seconds_left() is None  # one item alone is mostly setup: no estimate yet
    for now in (7.0, 8.0, 9.0):
        clock.now = now
        estimate.add("a")
    # b: 4 items at twice a's 1 s (its prior; a's 5 s setup is the process's, paid once); in sequence,
    # elapsed = spent
    assert estimate.seconds_left() == pytest.approx(4 * 2.0)
    assert estimate.seconds_left({"a": 2}) == pytest.approx(2 * 1.0)
    assert estimate.per_hour() == pytest.approx(4 * 3600 / 9.0)
    assert "about 8 s left" in estimate.status() and "elapsed 9 s" in estimate.status()


def test_items_running_in_parallel_shorten_the_time_left():
    clock = Clock()
    estimate = Estimate({"a": 10}, clock=clock)  # two workers: each 2 s item ends 1 s after the last
    for now in (2.0, 3.0, 4.0, 5.0):
        clock.now = now
        estimate.add("a", seconds=2.0)
    assert estimate.seconds_left() == pytest.approx(6 * 2.0 * 5.0 / 8.0)  # 6 left: 12 s of work, 2 at a time


def test_each_worker_s_first_item_is_its_setup():
    clock = Clock()
    estimate = Estimate({"a": 10}, clock=clock)  # two Ray workers, each importing torch for 30 s first
    for now, seconds, worker in ((31, 31.0, 1), (32, 1.0, 1), (33, 31.0, 2), (34, 1.0, 2), (35, 1.0, 1)):
        clock.now = float(now)
        estimate.add("a", seconds=seconds, worker=worker)
    assert estimate.per_item("a") == pytest.approx(1.0)  # not (1 + 31 + 1 + 1) / 4
    assert estimate.seconds_left() == pytest.approx(5 * 1.0 * 35.0 / 65.0)


def test_a_failed_item_is_finished_but_not_measured():
    clock = Clock()
    estimate = Estimate({"a": 3}, clock=clock)
    for ok in (True, True, False):
        clock.now += 1.0
        estimate.add("a", seconds=1.0 if ok else None, ok=ok)
    assert estimate.finished == 3 and estimate.measured == 2
    assert estimate.status().endswith("done")
    assert estimate.seconds_left({"a": 1}) == pytest.approx(1.0 * 3.0 / 2.0)  # the failure, again


def test_lines_come_at_most_once_per_interval_but_always_when_they_must():
    clock = Clock()
    gate = LineGate(interval=10.0, clock=clock)
    assert gate.due()  # the first
    clock.now = 5.0
    assert not gate.due()
    assert gate.due(must=True)  # a failure, a model's last, the last
    clock.now = 14.0
    assert not gate.due()  # 9 s after the one that had to be printed
    clock.now = 15.0
    assert gate.due()


def outcome(model: str, step: int, ok: bool = True) -> Outcome:
    ref = CheckpointRef("suite", model, step, f"step{step}", 0, "local", "/x")
    task = ExtractTask(ref, ProbeBatch("p", "test", ((1, 2),), ((0, 1),), "last"), ExtractOptions())
    if not ok:
        return Outcome(task, None, f"cannot load {model} step{step}", "traceback")
    timings = {"total": 1.5, "load": 0.5, "forward": 0.25}
    return Outcome(task, TaskResult(task.task_id, ref, "sha", {}, timings))


def show_extraction(console: Console, outcomes: list[Outcome], per_model: dict[str, int]) -> str:
    """What the display prints for ``outcomes``, one a second (well within ``LINE_INTERVAL``)."""
    clock = Clock()
    with ExtractProgress(per_model, enabled=True, console=console, clock=clock) as progress:
        for item in outcomes:
            clock.now += 1.0
            progress.advance(item)
    return console.file.getvalue()


def test_extraction_prints_plain_lines_when_not_on_a_terminal():
    outcomes = [outcome("a", 0), outcome("a", 1), outcome("b", 0, ok=False), outcome("b", 1), outcome("b", 2)]
    out = show_extraction(Console(file=io.StringIO(), width=60), outcomes, {"a": 2, "b": 3})
    lines = out.splitlines()
    assert BAR not in out and "\x1b" not in out  # no bar, no control codes: a file reads as text
    assert lines[0].startswith("extracting 5 checkpoint(s) of 2 model(s)")
    # within LINE_INTERVAL: the first, a's last, the failure and the last (not b step1); never wrapped
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "[1/5] ok a step0", "[2/5] ok a step1", "[3/5] failed b step0", "[5/5] ok b step2",
    ]  # fmt: skip
    assert "cannot load b step0" in lines[3]
    assert "elapsed" in lines[1] and "checkpoints/h" in lines[1] and "load 0.50" in lines[1]
    assert "done" in lines[4]


def test_extraction_draws_bars_with_the_rate_on_a_terminal():
    console = Console(file=io.StringIO(), width=150, force_terminal=True)
    out = show_extraction(console, [outcome("a", step) for step in range(3)], {"a": 4})
    assert BAR in out and "all checkpoints" in out
    assert "checkpoints/h" in out and re.search(r"about \d+ s left", out)  # the overall bar's note
    assert "[1/4]" not in out and "extracting 4 checkpoint(s)" not in out  # no plain lines


def test_progress_off_prints_nothing():
    console = Console(file=io.StringIO(), width=100)
    with ExtractProgress({"a": 1}, enabled=False, console=console) as progress:
        progress.advance(outcome("a", 0))
    assert console.file.getvalue() == ""


def train(console: Console, steps: list[int], interval: float = LINE_INTERVAL) -> str:
    """What the display prints for two models of 4 updates each, one update a second."""
    clock = Clock()
    jobs = [TrainJob("m1", 4, 1.0), TrainJob("m2", 4, 2.0)]
    with TrainProgress(console, jobs, steps, enabled=True, interval=interval, clock=clock) as progress:
        for job in jobs:
            on_update = progress.callback(job.key, 4)
            for step in range(1, 5):
                clock.now += 1.0
                on_update(step, f"loss {5 - step / 4:.3f}")
            progress.finished(job.key, f"{job.key}: trained")
    return console.file.getvalue()


def test_training_prints_a_line_per_saved_checkpoint_and_per_model_when_not_on_a_terminal():
    out = train(Console(file=io.StringIO(), width=60), steps=[0, 2, 4], interval=0.0)
    assert BAR not in out
    assert [line.split(" (")[0] for line in out.splitlines()] == [
        "training 2 model(s), 8 updates: a line per saved checkpoint, at most one per 0 s, and one per trained model",
        "[model 1/2] m1: checkpoint step2 saved, update 2/4, loss 4.500",
        "[model 1/2] m1: checkpoint step4 saved, update 4/4, loss 4.000",
        "[model 1/2 done] m1: trained",
        "[model 2/2] m2: checkpoint step2 saved, update 2/4, loss 4.500",
        "[model 2/2] m2: checkpoint step4 saved, update 4/4, loss 4.000",
        "[model 2/2 done] m2: trained",
    ]  # fmt: skip
    assert "left)" in out.splitlines()[3] and out.splitlines()[-1].endswith("done)")


def test_training_draws_bars_on_a_terminal():
    out = train(Console(file=io.StringIO(), width=120, force_terminal=True), steps=[0, 2, 4])
    assert BAR in out and "all models" in out and "m2: trained" in out
    assert "checkpoint step2 saved" not in out


def test_the_report_gives_the_rate_and_the_time_of_what_is_left():
    assert command.throughput_lines(Throughput(committed=16, elapsed=80.0, left=0, seconds_left=0.0), 16) == [
        "rate: 720 checkpoints/hour (16 in 1 min 20 s)", "left: none of the 16 planned checkpoint(s)",
    ]  # fmt: skip
    assert command.throughput_lines(Throughput(committed=13, elapsed=65.0, left=3, seconds_left=15.2), 16)[
        1
    ] == ("left: 3 of 16 planned checkpoint(s), about 15 s at this run's rate")


# The real commands on the tiny suite: `extract` once as a subprocess writing to a pipe, the rest in this
# process (torch already imported: cheaper), their output captured (not a terminal) or a forced terminal.


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    return subprocess.run(
        [LAYERLAKE, *args], capture_output=True, text=True, cwd=REPO, env=environment | env, timeout=900
    )


@pytest.fixture
def copied_suite(tiny_suite, tmp_path) -> Path:
    """A data folder holding a copy of the built tiny suite."""
    _, suites = tiny_suite
    shutil.copytree(suites, tmp_path / "suites")
    return tmp_path


def test_extract_into_a_pipe_prints_a_line_per_checkpoint_and_the_throughput(
    compose, copied_suite, tiny_overrides, capsys
):
    """The real command, its output to a pipe: a line per checkpoint and the report's rate and time left."""
    weights = copied_suite / "suites" / "embedded" / "tiny-b" / "step32" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])  # a checkpoint that fails: what is left after the run
    args = ["extract", f"paths.data={copied_suite}", *tiny_overrides, "steps.only=[0,32]", "progress=true"]
    done = run(args)
    assert done.returncode == 1, done.stderr
    assert "all checkpoints" not in done.stderr and "\x1b[" not in done.stderr  # no bars
    lines = done.stderr.splitlines()
    assert lines[0].startswith("extracting 4 checkpoint(s) of 2 model(s)")
    assert re.match(r"\[1/4\] ok tiny-a step0 \(elapsed [^,]+, time left not known yet", lines[1])
    # tiny-a's second checkpoint measures it; tiny-b, not run yet, is costed by its size
    assert re.match(r"\[2/4\] ok tiny-a step32 \(elapsed [^,]+, about .+ left", lines[2])
    assert re.search(
        r"^\[4/4\] failed tiny-b step32 \(elapsed [^,]+, done", done.stderr, re.M
    )  # always shown
    assert re.search(r"^rate: [\d,]+ checkpoints/hour \(3 in ", done.stderr, re.M)
    assert re.search(
        r"^left: 1 of 4 planned checkpoint\(s\), about .+ at this run's rate$", done.stderr, re.M
    )

    weights.write_bytes(good)  # the failed one again (in this process: cheaper); none is left after it
    assert command.extract(compose(copied_suite, "steps.only=[0,32]", "progress=true")) == 0
    more = capsys.readouterr()
    assert "extracted 1 checkpoint(s), skipped 3" in more.out and "[1/1] ok tiny-b step32" in more.err
    assert "left: none of the 4 planned checkpoint(s)" in more.out


def test_extract_on_a_terminal_draws_bars_with_the_rate_and_time_left(
    compose, copied_suite, monkeypatch, capsys
):
    """The real command with its output on a terminal (as rich sees one): bars, no plain lines."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "160")
    settings = compose(copied_suite, "steps.only=[0,4,32]", "models=[tiny-a]", "progress=true")
    assert command.extract(settings) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)  # without the control codes
    assert BAR in text and "all checkpoints" in text and "checkpoints/h" in text
    assert "done" in text  # the overall bar's note at the end; its "about N s left" while running is
    # checked in test_extraction_draws_bars_with_the_rate_on_a_terminal: 3 tiny checkpoints can all end
    # between two redraws of the bars (as on a loaded CI machine), so a real run may never show it
    assert "[1/3]" not in text and "ok tiny-a step0" in text  # no plain lines; a line above the bars


def test_suite_build_into_a_pipe_prints_a_line_per_saved_checkpoint_and_per_model(tmp_path, capsys):
    """``suite build`` (in this process, its output not a terminal) trains one model of 8 updates."""
    from layerlake.conf.compose import compose as compose_config
    from layerlake.etl.suite.command import build

    one_model = [
        o for o in TINY_OVERRIDES if not o.startswith(("suite.models=", "suite.steps=", "suite.train.max"))
    ]
    tiny_a = "suite.models=[{name:tiny-a,n_layers:1,d_model:32,n_heads:2,d_mlp:64}]"
    eight = ["suite.steps=[0,2,4,8]", "suite.subsets={paper:[0,8]}", "suite.train.max_steps=8"]
    settings = compose_config([f"paths.data={tmp_path}", *one_model, "progress=true", tiny_a, *eight])
    assert build(settings) == 0
    out = capsys.readouterr().out
    assert "all models" not in out and "\x1b[" not in out  # no bars
    assert "training 1 model(s), 8 updates: a line per saved checkpoint" in out
    assert re.search(
        r"^\[model 1/1\] tiny-a: checkpoint step2 saved, update 2/8, loss [\d.]+ \(elapsed ", out, re.M
    )
    assert re.search(r"^\[model 1/1 done\] tiny-a: loss .* parameters, .*\(elapsed [^,]+, done\)$", out, re.M)


@pytest.mark.slow  # the whole demo: about two minutes on 2 busy cores
def test_demo_into_a_pipe_shows_each_stage_the_extraction_and_the_training(copied_suite, tiny_overrides):
    args = ["demo", f"paths.data={copied_suite}", *tiny_overrides, "steps.only=[0,32]", "progress=true"]
    done = run(args)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "all checkpoints" not in out and "all models" not in out and "\x1b[" not in out  # no bars
    assert re.search(r"2\. extraction \(at \d+", done.stdout)
    assert "[1/4] ok tiny-a step0" in done.stderr and "[4/4] ok tiny-b step32" in done.stderr
    # step 4 trains a second seed of tiny-a: a line per saved checkpoint (rate-limited) and its end
    assert re.search(r"\[model 1/1\] tiny-a@seed\d+: checkpoint step\d+ saved, update \d+/32", done.stdout)
    assert re.search(r"\[model 1/1 done\] tiny-a@seed\d+: loss .*\(elapsed .*, done\)", done.stdout)
    assert re.search(r"^demo done in \d+", done.stdout, re.M)


def test_an_interrupted_extraction_reports_what_is_left(compose, copied_suite, monkeypatch, capsys):
    """Ctrl-C during the run: what was committed stays, the report says what is left, exit 130, and each
    extraction run ends as failed saying how many of its checkpoints did not run (not left `running`)."""
    settings = compose(copied_suite, "steps.only=[0,4,32]", "progress=true")  # 3 checkpoints per model

    class InterruptAfterTwo(driver.ExtractProgress):
        def advance(self, outcome):
            super().advance(outcome)
            if self.estimate.finished == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(driver, "ExtractProgress", InterruptAfterTwo)
    assert command.extract(settings) == 130
    out = capsys.readouterr().err
    assert "extracted 2 checkpoint(s)" in out and "interrupted" in out
    assert re.search(r"left: 4 of 6 planned checkpoint\(s\), about .* at this run's rate", out)
    warehouse = Warehouse(settings.paths.warehouse)
    models = ("tiny-a", "tiny-b")
    runs = {m: committed_run(warehouse, extract_run_id(settings.suite.name, m)) for m in models}
    assert {run.status for run in runs.values()} == {RunStatus.failed}
    assert "interrupted (Ctrl-C) before 1 checkpoint(s) ran" in runs["tiny-a"].error
    assert "interrupted (Ctrl-C) before 3 checkpoint(s) ran" in runs["tiny-b"].error

    monkeypatch.undo()  # no more Ctrl-C: the same command again runs the rest
    again = driver.run_extract(replace(settings, progress=False))
    assert again.skipped == 2 and len(again.committed) == 4 and again.ok
    runs = {m: committed_run(warehouse, extract_run_id(settings.suite.name, m)) for m in models}
    assert {run.status for run in runs.values()} == {RunStatus.finished}
