"""Executors on a real local Ray cluster: crashed workers are retried, a worker that keeps crashing fails
only its own task, and results stream back as they finish."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layerlake.conf.schema import ExecutorConfig
from layerlake.etl.executors import LocalExecutor, RayExecutor, make_lanes
from layerlake.etl.task import CheckpointRef, ExtractOptions, ExtractTask, ProbeBatch

PROBE = ProbeBatch("p", "test", ((1, 2, 3),), ((0, 2),), "last")


def task(name: str, location: str, step: int = 0) -> ExtractTask:
    ref = CheckpointRef("suite", name, step, f"step{step}", 0, "local", location)
    return ExtractTask(ref, PROBE, ExtractOptions())


def crash_at_step_2(task: ExtractTask) -> tuple:
    if task.ref.step == 2:
        os._exit(1)
    return f"done {task.ref.step}", None, None


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


def test_lanes_are_consecutive_checkpoints_of_one_model_about_two_per_slot():
    tasks = [task("a", "/x", step) for step in range(7)] + [task("b", "/x", step) for step in range(2)]
    lanes = make_lanes(tasks, slots=2)  # 9 tasks, 4 lanes wanted: 3 tasks a lane at most, longest first
    assert [[(t.ref.model, t.ref.step) for t in lane] for lane in lanes] == [
        [("a", 0), ("a", 1), ("a", 2)], [("a", 3), ("a", 4), ("a", 5)], [("b", 0), ("b", 1)], [("a", 6)],
    ]  # fmt: skip
    assert [len(lane) for lane in make_lanes(tasks, slots=8)] == [1] * 9


@pytest.mark.ray
def test_a_crash_in_a_lane_fails_only_the_task_that_crashed(ray_cluster, tmp_path):
    tasks = [task("m", str(tmp_path), step) for step in range(8)]  # lanes of two: step 2 heads one
    config = ExecutorConfig(kind="ray", max_retries=1)
    outcomes = {o.task.ref.step: o for o in RayExecutor(config, task_function=crash_at_step_2).run(tasks)}
    assert sorted(outcomes) == list(range(8))
    assert outcomes[2].result is None and "died" in outcomes[2].error.lower()
    assert {step: o.result for step, o in outcomes.items() if step != 2} == {
        step: f"done {step}" for step in range(8) if step != 2
    }


@pytest.mark.ray
def test_a_ray_lane_loads_the_next_checkpoint_while_one_computes(ray_cluster, tiny_suite, tmp_path):

    from test_prefetch import tiny_tasks

    tasks = tiny_tasks(tiny_suite, tmp_path)  # 8 checkpoints on 2 CPUs: 4 lanes of 2
    outcomes = {o.task.task_id: o for o in RayExecutor(ExecutorConfig(kind="ray")).run(tasks)}
    assert [o.error for o in outcomes.values()] == [None] * len(tasks)
    for first, second in make_lanes(tasks, slots=2):
        before, after = outcomes[first.task_id].result, outcomes[second.task_id].result
        assert after.placement["pid"] == before.placement["pid"]  # one worker runs the lane
        _, loaded_1 = before.placement["load_span"]
        compute_1, computed_1 = before.placement["compute_span"]
        load_2, loaded_2 = after.placement["load_span"]
        assert loaded_1 <= compute_1  # the first computes once loaded
        assert loaded_1 <= load_2  # one load at a time: never two ahead
        assert load_2 < computed_1  # the second was loading while the first computed
        assert loaded_2 <= after.placement["compute_span"][0]
        assert after.timings["load_wait"] < after.timings["load"]  # so part of its load was hidden
