"""Executors run the same task function (``etl.worker.run_task``) in process or on a Ray cluster.

Both yield an ``Outcome`` per task as it finishes, so the driver can commit each result at once;
a task that raises is reported as a failed outcome, never stops the others.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from layerlake.conf.schema import ExecutorConfig
from layerlake.core.choices import ExecutorKind
from layerlake.core.errors import ConfigError, LayerlakeError
from layerlake.etl.task import ExtractTask, TaskResult


@dataclass
class Outcome:
    task: ExtractTask
    result: TaskResult | None = None
    error: str | None = None  # one-line cause for the summary
    detail: str | None = None  # traceback, kept in the manifest


def describe_error(error: BaseException) -> tuple[str, str]:
    """A user error's message, or the exception type and text, plus the traceback."""
    summary = str(error) if isinstance(error, LayerlakeError) else f"{type(error).__name__}: {error}"
    detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return summary, detail


def run_guarded(task: ExtractTask) -> tuple[TaskResult | None, str | None, str | None]:
    """``run_task`` with its failure returned as data (so Ray does not retry a deterministic error)."""
    from layerlake.etl.worker import run_task

    try:
        return run_task(task), None, None
    except Exception as error:  # noqa: BLE001 - every task failure is reported, none stops the run
        summary, detail = describe_error(error)
        return None, summary, detail


TaskFunction = Callable[[ExtractTask], tuple]  # task -> (result | None, error | None, detail | None)


class LocalExecutor:
    """An in-process loop: for debugging, and for GPU machines where Ray is not installed."""

    def __init__(self, config: ExecutorConfig, task_function: TaskFunction = run_guarded) -> None:
        self.config = config
        self.task_function = task_function

    def run(self, tasks: Sequence[ExtractTask]) -> Iterator[Outcome]:
        for task in tasks:
            result, error, detail = self.task_function(task)
            yield Outcome(task, result, error, detail)

    def close(self) -> None:
        pass


class RayExecutor:
    """Ray remote tasks: one CPU each, or one GPU each when ``num_gpus > 0`` (Ray gives every task
    its own device through CUDA_VISIBLE_DEVICES). Crashed workers are retried ``max_retries`` times;
    results stream back with ``ray.wait`` in completion order."""

    def __init__(self, config: ExecutorConfig, task_function: TaskFunction = run_guarded) -> None:
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
        resources = {"num_gpus": 1, "num_cpus": 0} if config.num_gpus > 0 else {"num_cpus": 1}
        self.remote = ray.remote(max_retries=config.max_retries, retry_exceptions=False, **resources)(
            task_function
        )

    def run(self, tasks: Sequence[ExtractTask]) -> Iterator[Outcome]:
        ray = self.ray
        pending = {self.remote.remote(task): task for task in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    result, error, detail = ray.get(ref)
                except Exception as crash:  # worker died more than max_retries times
                    error, detail = describe_error(crash)
                    result = None
                yield Outcome(task, result, error, detail)

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
