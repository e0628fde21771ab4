"""Executors on a real local Ray cluster: crashed workers are retried, a worker that keeps crashing fails
only its own task, and results stream back as they finish."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layerlake.conf.schema import ExecutorConfig
from layerlake.etl.executors import LocalExecutor, RayExecutor
from layerlake.etl.task import CheckpointRef, ExtractOptions, ExtractTask, ProbeBatch

PROBE = ProbeBatch("p", "test", ((1, 2, 3),), ((0, 2),), "last")


def task(name: str, location: str) -> ExtractTask:
    ref = CheckpointRef("suite", name, 0, "step0", 0, "local", location)
    return ExtractTask(ref, PROBE, ExtractOptions())


def crash_once(task: ExtractTask) -> tuple:
    """Kills its worker process the first time it sees a task (a marker file remembers), then succeeds."""
    marker = Path(task.ref.location) / f"{task.ref.model}.seen"
    if not marker.exists():
        marker.touch()
        os._exit(1)
    return f"done {task.ref.model}", None, None


def crash_always(task: ExtractTask) -> tuple:
    if task.ref.model == "doomed":
        os._exit(1)
    return f"done {task.ref.model}", None, None


@pytest.fixture(scope="module")
def ray_cluster():
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_a_crashed_worker_is_retried(ray_cluster, tmp_path):
    config = ExecutorConfig(kind="ray", max_retries=2)
    outcomes = list(
        RayExecutor(config, task_function=crash_once).run(
            [task("a", str(tmp_path)), task("b", str(tmp_path))]
        )
    )
    assert sorted(o.result for o in outcomes) == ["done a", "done b"]
    assert all(o.error is None for o in outcomes)


@pytest.mark.ray
def test_a_worker_that_keeps_crashing_fails_only_its_task(ray_cluster, tmp_path):
    config = ExecutorConfig(kind="ray", max_retries=1)
    outcomes = {o.task.ref.model: o for o in RayExecutor(config, task_function=crash_always).run(
        [task("fine", str(tmp_path)), task("doomed", str(tmp_path))]
    )}  # fmt: skip
    assert outcomes["fine"].result == "done fine"
    assert outcomes["doomed"].result is None and "died" in outcomes["doomed"].error.lower()


def test_local_executor_reports_a_failing_task_as_data_and_goes_on(tmp_path):
    missing = tmp_path / "no-such-step"
    tasks = [task("gone", str(missing)), task("also-gone", str(missing))]
    outcomes = list(LocalExecutor(ExecutorConfig()).run(tasks))
    assert [o.result for o in outcomes] == [None, None]
    assert all(str(missing) in o.error and o.detail for o in outcomes)
