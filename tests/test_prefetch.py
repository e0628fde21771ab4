"""Overlapped loading through the real pipeline on tiny checkpoints: the next checkpoint loads in a
background thread while one computes, never more than one ahead; a checkpoint that cannot load fails
only its own task; the rows are the ones loading in turn gives."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import threading
import time
import weakref
from pathlib import Path

import pytest

from layerlake import warehouse
from layerlake.etl.driver import run_extract
from layerlake.etl.plan import make_plan
from layerlake.etl.prefetch import run_tasks
from layerlake.etl.worker import compute_task, load_task


class Recorder:
    """The worker's real load and compute halves, each call recorded: (phase, task index, start, end,
    thread), and how many loaded models are alive when each half starts."""

    def __init__(self, tasks) -> None:
        self.index = {task.task_id: i for i, task in enumerate(tasks)}
        self.events: list[tuple[str, int, float, float, int]] = []
        self.models: list[weakref.ref] = []
        self.alive_at_load: list[int] = []
        self.lock = threading.Lock()

    def alive(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self.models)

    def load(self, task):
        self.alive_at_load.append(self.alive())
        start = time.perf_counter()
        ready = load_task(task)
        self._record("load", task, start)
        with self.lock:
            self.models.append(weakref.ref(ready.loaded.model))
        return ready

    def compute(self, ready, load_wait):
        start = time.perf_counter()
        result = compute_task(ready, load_wait)
        self._record("compute", ready.task, start)
        return result

    def _record(self, phase, task, start) -> None:
        with self.lock:
            self.events.append(
                (phase, self.index[task.task_id], start, time.perf_counter(), threading.get_ident())
            )

    def span(self, phase: str, index: int) -> tuple[float, float, int]:
        (found,) = [(s, e, t) for p, i, s, e, t in self.events if (p, i) == (phase, index)]
        return found


def tiny_tasks(tiny_suite, tmp_path, *overrides):
    settings, _ = tiny_suite
    settings = dataclasses.replace(
        settings,
        paths=dataclasses.replace(settings.paths, warehouse=str(tmp_path / "warehouse")),
        models=["tiny-b"],
        extract=dataclasses.replace(settings.extract, gradients=True),
    )
    return make_plan(settings).tasks


def test_the_next_checkpoint_loads_in_the_background_while_one_computes(tiny_suite, tmp_path):
    tasks = tiny_tasks(tiny_suite, tmp_path)[:5]
    recorder = Recorder(tasks)
    outputs = list(run_tasks(tasks, prefetch=True, load=recorder.load, compute=recorder.compute))
    assert [error for _, error, _ in outputs] == [None] * len(tasks)
    assert [result.task_id for result, _, _ in outputs] == [t.task_id for t in tasks]  # in task order
    for k in range(len(tasks) - 1):
        compute_start, compute_end, compute_thread = recorder.span("compute", k)
        load_start, load_end, load_thread = recorder.span("load", k + 1)
        assert load_thread != compute_thread  # loads run in the background thread
        assert load_start < compute_end  # k+1 was loading while k computed
        assert recorder.span("compute", k + 1)[0] >= load_end  # and k+1 computed once loaded
        if k + 2 < len(tasks):  # never two ahead: k+2 starts loading only after k has computed
            assert recorder.span("load", k + 2)[0] >= compute_end
    hidden = [r.timings["load"] - r.timings["load_wait"] for r, _, _ in outputs[1:]]
    assert all(h > 0 for h in hidden)  # every load after the first was (partly) hidden


def test_without_prefetch_each_checkpoint_loads_after_the_one_before_computed(tiny_suite, tmp_path):
    tasks = tiny_tasks(tiny_suite, tmp_path)[:3]
    recorder = Recorder(tasks)
    outputs = list(run_tasks(tasks, prefetch=False, load=recorder.load, compute=recorder.compute))
    assert [error for _, error, _ in outputs] == [None] * 3
    for k in range(2):
        assert recorder.span("load", k + 1)[0] >= recorder.span("compute", k)[1]
    assert all(r.timings["load_wait"] >= r.timings["load"] for r, _, _ in outputs)  # nothing hidden


def test_at_most_one_checkpoint_is_loaded_ahead(tiny_suite, tmp_path):
    """When a load starts, the only model alive is the one computing: two in memory at most."""
    tasks = tiny_tasks(tiny_suite, tmp_path)[:6]
    recorder = Recorder(tasks)
    for _ in run_tasks(tasks, prefetch=True, load=recorder.load, compute=recorder.compute):
        time.sleep(0.05)  # a slow consumer (the driver committing) lets no extra load start
    assert len(recorder.alive_at_load) == len(tasks)
    assert max(recorder.alive_at_load) == 1 and recorder.alive_at_load[0] == 0
    assert recorder.alive() == 0  # nothing kept once the pipeline has finished


def test_a_checkpoint_that_cannot_load_fails_only_its_task_and_the_rest_commit(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    suites = tmp_path / "suites"
    shutil.copytree(Path(settings.paths.suites) / settings.suite.name, suites / settings.suite.name)
    settings = dataclasses.replace(
        settings,
        paths=dataclasses.replace(settings.paths, suites=str(suites), warehouse=str(tmp_path / "warehouse")),
        models=["tiny-a"],
        steps=dataclasses.replace(settings.steps, only=[0, 4, 8, 16]),
    )
    weights = suites / settings.suite.name / "tiny-a" / "step8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: its load (ahead of step 8's turn) fails
    report = run_extract(settings)
    assert [label for label, _ in report.failed] == ["tiny-a step8"]
    assert "corrupt" in report.failed[0][1]
    assert sorted(report.committed) == ["tiny-a step0", "tiny-a step16", "tiny-a step4"]
    steps = warehouse.connect(settings.paths.warehouse).sql("select step from checkpoints order by step")
    assert [row[0] for row in steps.fetchall()] == [0, 4, 16]


def test_prefetch_gives_the_same_rows_as_loading_in_turn(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    runs = {}
    for prefetch in (False, True):
        data = tmp_path / f"prefetch-{prefetch}"
        runs[prefetch] = dataclasses.replace(
            settings,
            paths=dataclasses.replace(settings.paths, warehouse=str(data / "warehouse")),
            steps=dataclasses.replace(settings.steps, only=[0, 2, 8, 32]),
            executor=dataclasses.replace(settings.executor, prefetch=prefetch),
            extract=dataclasses.replace(settings.extract, gradients=True),
        )
        assert run_extract(runs[prefetch]).ok
    queries = [
        "select model, step, layer, site, head, rms, sv from activation_stats order by all",
        "select model, step, layer, matrix, tensor, sv from spectra order by all",
        "select model, step, weights_sha256 from checkpoints order by all",
    ]
    for query in queries:
        rows = [warehouse.connect(runs[p].paths.warehouse).sql(query).fetchall() for p in (False, True)]
        assert len(rows[0]) > 0 and rows[0] == rows[1], query


def test_the_executor_option_turns_prefetch_off(compose, tmp_path):
    assert compose(tmp_path).executor.prefetch is True
    assert compose(tmp_path, "executor.prefetch=false").executor.prefetch is False


@pytest.mark.parametrize("prefetch", [True, False])
def test_local_executor_reports_load_wait(tiny_suite, tmp_path, prefetch):
    from layerlake.conf.schema import ExecutorConfig
    from layerlake.etl.executors import LocalExecutor

    tasks = tiny_tasks(tiny_suite, tmp_path)[:3]
    outcomes = list(LocalExecutor(ExecutorConfig(prefetch=prefetch)).run(tasks))
    timings = [o.result.timings for o in outcomes]
    assert all({"load", "load_wait", "total"} <= set(t) for t in timings)
    later_hidden = [t["load_wait"] < t["load"] for t in timings[1:]]
    assert all(later_hidden) if prefetch else not any(later_hidden)
