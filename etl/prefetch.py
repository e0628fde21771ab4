"""Overlapped loading: while one checkpoint computes, the next one loads in a background thread.

``run_tasks(tasks)`` is what a worker runs for a sequence of tasks (all of the local executor's, or
one Ray lane's). With ``prefetch`` on, one background thread loads task k+1 (``worker.load_task``)
while the calling thread computes task k (``worker.compute_task``). A load starts only once the
compute thread has taken the load before it, so at most two checkpoints are in memory: the one
computing and the one loaded ahead (on the CPU: only the computing one is ever on the device).

Every task yields one ``(result, error, detail)`` in task order, the shape every executor handles: a
task whose load or pass raises yields its error (a failed load ahead is its own task's failure) and
the others go on. Each result's ``timings["load_wait"]`` says how long the compute waited for that
task's load; ``timings["load"]`` is the load's own time, so ``load - load_wait`` was hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

from layerlake.etl.errors import describe_error
from layerlake.etl.task import ExtractTask, TaskResult
from layerlake.etl.worker import LoadedTask, compute_task, load_task

TaskOutput = tuple  # (TaskResult | None, one-line error | None, traceback | None)
LoadFunction = Callable[[ExtractTask], LoadedTask]
ComputeFunction = Callable[[LoadedTask, float], TaskResult]


def run_tasks(
    tasks: Sequence[ExtractTask],
    prefetch: bool = True,
    load: LoadFunction = load_task,
    compute: ComputeFunction = compute_task,
) -> Iterator[TaskOutput]:
    """``(result, error, detail)`` for each task, in order; with ``prefetch``, task k+1 loads in a
    background thread while task k computes (never more than one ahead), else each loads just before
    it computes. ``load`` and ``compute`` are the two halves of a task (the worker's by default)."""
    if not prefetch:
        for task in tasks:
            start = time.perf_counter()
            loading = _load_now(load, task)
            output = _compute(loading, time.perf_counter() - start, compute)
            del loading  # the checkpoint is not kept while the consumer handles the output
            yield output
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="layerlake-load") as loader:
        pending = loader.submit(load, tasks[0]) if tasks else None
        for index in range(len(tasks)):
            loading, waited = _wait(pending)
            pending = loader.submit(load, tasks[index + 1]) if index + 1 < len(tasks) else None
            output = _compute(loading, waited, compute)
            del loading  # only the checkpoint loading ahead stays in memory while the consumer commits
            yield output


def _load_now(load: LoadFunction, task: ExtractTask) -> Future:
    """The load of ``task`` run in this thread, as a finished future (its result or its error)."""
    future: Future = Future()
    try:
        future.set_result(load(task))
    except Exception as error:  # noqa: BLE001 - reported as the task's failure by _compute
        future.set_exception(error)
    return future


def _wait(future: Future) -> tuple[Future, float]:
    """``future`` once it has finished, and the seconds this thread waited for it."""
    start = time.perf_counter()
    wait([future])
    return future, time.perf_counter() - start


def _compute(loading: Future, load_wait: float, compute: ComputeFunction) -> TaskOutput:
    """The compute half on a finished load: its result, or the load's or the pass's error as text."""
    try:
        return compute(loading.result(), load_wait), None, None
    except Exception as error:  # noqa: BLE001 - every task failure is reported, none stops the others
        summary, detail = describe_error(error)
        return None, summary, detail
