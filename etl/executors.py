"""Executors run the same task halves (``etl.worker.load_task`` and ``compute_task``) in process or on
a Ray cluster, through ``etl.prefetch.run_tasks``: within one worker, the next checkpoint loads while
one computes.

Both yield an ``Outcome`` per task as it finishes, so the driver can commit each result at once;
a task that raises is reported as a failed outcome, never stops the others.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from layerlake.conf.schema import ExecutorConfig
from layerlake.core.choices import ExecutorKind
from layerlake.core.errors import ConfigError
from layerlake.etl.errors import describe_error
from layerlake.etl.task import ExtractTask, TaskResult

LANES_PER_SLOT = 2  # lanes per CPU (or GPU) the cluster offers: the last lanes finish close together


@dataclass
class Outcome:
    task: ExtractTask
    result: TaskResult | None = None
    error: str | None = None  # one-line cause for the summary
    detail: str | None = None  # traceback, kept in the manifest
    resubmitted: int = 0  # times the task was handed to a new worker after its worker or node died


def run_guarded(task: ExtractTask) -> tuple[TaskResult | None, str | None, str | None]:
    """``run_task`` with its failure returned as data (so Ray does not retry a deterministic error)."""
    from layerlake.etl.worker import run_task

    try:
        return run_task(task), None, None
    except Exception as error:  # noqa: BLE001 - every task failure is reported, none stops the run
        summary, detail = describe_error(error)
        return None, summary, detail


TaskFunction = Callable[[ExtractTask], tuple]  # task -> (result | None, error | None, detail | None)
LaneFunction = Callable[[Sequence[ExtractTask]], Iterator[tuple]]  # tasks -> one such tuple per task


class Pipeline:
    """The default lane function: ``etl.prefetch.run_tasks`` (loading ahead when ``prefetch``)."""

    def __init__(self, prefetch: bool) -> None:
        self.prefetch = prefetch

    def __call__(self, tasks: Sequence[ExtractTask]) -> Iterator[tuple]:
        from layerlake.etl.prefetch import run_tasks

        return run_tasks(tasks, prefetch=self.prefetch)


class OneAtATime:
    """A lane function made of a task function: each task in turn, nothing loaded ahead."""

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function

    def __call__(self, tasks: Sequence[ExtractTask]) -> Iterator[tuple]:
        return (self.task_function(task) for task in tasks)


def lane_function_of(config: ExecutorConfig, task_function: TaskFunction | None) -> LaneFunction:
    """What a worker runs over a sequence of tasks: the prefetching pipeline, or ``task_function``
    (tests give one) task by task."""
    return Pipeline(config.prefetch) if task_function is None else OneAtATime(task_function)


class LocalExecutor:
    """An in-process loop (debugging, and GPU machines where Ray is not installed): every task through
    one pipeline, the next checkpoint loading while one computes (``executor.prefetch``)."""

    def __init__(self, config: ExecutorConfig, task_function: TaskFunction | None = None) -> None:
        self.config = config
        self.lane_function = lane_function_of(config, task_function)

    def run(self, tasks: Sequence[ExtractTask]) -> Iterator[Outcome]:
        for task, (result, error, detail) in zip(tasks, self.lane_function(tasks), strict=True):
            yield Outcome(task, result, error, detail)

    def close(self) -> None:
        pass


def make_lanes(tasks: Sequence[ExtractTask], slots: int) -> list[list[ExtractTask]]:
    """The tasks cut into lanes: consecutive tasks of one model (in the given order), about
    ``LANES_PER_SLOT`` lanes per slot (more when there are more models), longest lanes first.

    A lane runs in one worker, loading each checkpoint while the one before computes; more lanes
    than slots keep every slot busy to the end, fewer lanes hide more loads (a lane's first load is
    never hidden).
    """
    by_model: dict[str, list[ExtractTask]] = {}
    for task in tasks:
        by_model.setdefault(task.ref.model, []).append(task)
    size = max(1, math.ceil(len(tasks) / (max(1, slots) * LANES_PER_SLOT)))
    lanes = [group[i : i + size] for group in by_model.values() for i in range(0, len(group), size)]
    return sorted(lanes, key=len, reverse=True)


def run_lane(lane_function: LaneFunction, tasks: Sequence[ExtractTask]) -> Iterator[tuple]:
    """A Ray streaming task: one ``(result, error, detail)`` per task, each sent as it is ready."""
    yield from lane_function(tasks)


class RayExecutor:
    """Ray remote tasks, one per lane (``make_lanes``): one CPU each, or one GPU each when
    ``num_gpus > 0`` (Ray gives every lane its own device through CUDA_VISIBLE_DEVICES). A lane is a
    streaming generator: each result comes back as it is ready, and the driver waits on all lanes
    at once with ``ray.wait``.

    Crashes (a worker process that dies) are handled here, not by Ray's task retries, so that a
    retry runs only the tasks not yet done. A crash in a lane with several tasks left is charged to
    none (it may come from the task computing or from the next one loading): the task computing is
    run again alone and the rest go on as a lane of their own. A crash of a task running alone counts
    against it: it is run again up to ``executor.max_retries`` times, then fails; no other task fails
    with it. A node that dies is a crash of every lane it ran (Ray raises ``NodeDiedError``): their
    tasks not yet reported run again wherever Ray places them (``tests/test_ray_nodes.py``); results
    the node had already sent are kept. ``Outcome.resubmitted`` counts a task's new starts.
    """

    def __init__(self, config: ExecutorConfig, task_function: TaskFunction | None = None) -> None:
        try:
            import ray
        except ImportError as error:
            raise ConfigError(
                "executor=ray needs the ray package", fix="pip install ray, or use executor=local"
            ) from error
        self.ray = ray
        self.config = config
        self.started_here = False
        if not ray.is_initialized():
            if config.address:
                ray.init(address=config.address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                local_cluster_auth()
                ray.init(
                    num_cpus=config.num_cpus,
                    num_gpus=config.num_gpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
            self.started_here = True
        self.lane_function = lane_function_of(config, task_function)
        self.resubmitted: Counter[str] = Counter()  # task id -> times handed to a new lane after a crash
        resources = {"num_gpus": 1, "num_cpus": 0} if config.num_gpus > 0 else {"num_cpus": 1}
        self.remote = ray.remote(num_returns="streaming", max_retries=0, **resources)(run_lane)

    def slots(self) -> int:
        """How many lanes the cluster runs at once: its GPUs when lanes take one, else its CPUs."""
        resources = self.ray.cluster_resources()
        return max(1, int(resources.get("GPU" if self.config.num_gpus > 0 else "CPU", 1)))

    def run(self, tasks: Sequence[ExtractTask]) -> Iterator[Outcome]:
        running: dict = {}  # streaming generator -> the tasks of its lane not yet reported
        crashes: dict[str, int] = {}  # task id -> crashes while it ran alone
        self.resubmitted.clear()
        for lane in make_lanes(tasks, self.slots()):
            self._submit(running, lane)
        while running:
            ready, _ = self.ray.wait(list(running), num_returns=1)
            for generator in ready:
                yield from self._next_outcome(running, generator, crashes)

    def _submit(self, running: dict, lane: list[ExtractTask]) -> None:
        running[self.remote.remote(self.lane_function, lane)] = lane

    def _resubmit(self, running: dict, lane: list[ExtractTask]) -> None:
        self.resubmitted.update(task.task_id for task in lane)
        self._submit(running, lane)

    def _next_outcome(self, running: dict, generator, crashes: dict[str, int]) -> Iterator[Outcome]:
        """The outcome ``generator`` has ready (its lane's first task not yet reported), or what its
        end or its crash means for the lane's remaining tasks."""
        lane = running.pop(generator)
        try:
            result, error, detail = self.ray.get(next(generator))
        except StopIteration:  # the lane's end
            for task in lane:  # a lane function that yielded fewer outputs than tasks
                yield Outcome(task, None, "the worker returned no result for this task")
            return
        except Exception as crash:  # noqa: BLE001 - the worker died (or Ray lost the lane)
            yield from self._after_crash(running, lane, crash, crashes)
            return
        yield Outcome(lane[0], result, error, detail, self.resubmitted[lane[0].task_id])
        running[generator] = lane[1:]  # kept until its end: the lane has then released its worker

    def _after_crash(
        self, running: dict, lane: list[ExtractTask], crash: Exception, crashes: dict[str, int]
    ) -> Iterator[Outcome]:
        head, rest = lane[0], lane[1:]
        if rest:  # charged to none: the head again alone, the rest as a lane of their own
            self._resubmit(running, [head])
            self._resubmit(running, rest)
            return
        crashes[head.task_id] = crashes.get(head.task_id, 0) + 1
        if crashes[head.task_id] > self.config.max_retries:
            error, detail = describe_error(crash)
            yield Outcome(head, None, error, detail, self.resubmitted[head.task_id])
        else:
            self._resubmit(running, [head])

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def local_cluster_auth() -> None:
    """Choose token authentication explicitly for the local cluster this process starts.

    Ray (2.59 and later) turns token authentication on for a new local cluster when ``RAY_AUTH_MODE``
    is unset, and warns that it did so on every start ("Token authentication is enabled for this Ray
    cluster. Set RAY_AUTH_MODE=disabled to opt out"). Setting the mode says it is meant: the same
    protection (Ray generates the token in ``~/.ray/auth_token`` if there is none), without the
    warning; Ray's logging is left as it is. A mode the user set is kept. Ray reads its configuration
    when it is imported, so it is told to read it again, as Ray itself does when it enables the mode.
    ``executor.address=...`` (joining a cluster) leaves all of this to that cluster's settings.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._raylet import Config
    except ImportError:  # a Ray without token authentication: nothing to choose
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")


EXECUTORS = {ExecutorKind.local: LocalExecutor, ExecutorKind.ray: RayExecutor}


def make_executor(config: ExecutorConfig) -> LocalExecutor | RayExecutor:
    """The executor ``config.kind`` names (checked when the config was composed)."""
    return EXECUTORS[ExecutorKind.parse(config.kind, "executor.kind")](config)
