"""Hydra: a ``hydra.experimental.callback.Callback`` that records every job (of a run or a multirun) as a
tracked run, with no code in the task function. In the application's config:

    hydra:
      callbacks:
        layerlake:
          _target_: layerlake.etl.integrations.hydra.LayerlakeCallback
          suite: sweep
          model_name: mlp

Each job's run holds its composed config, overrides, sweep folder and job number, ends finished or failed
(with the job's exception), and records the number(s) the task function returns (a number as
``return_value``, a dict's numbers by their keys) at the last step the job logged. Inside the job,
``layerlake.run`` is this run: ``layerlake.log`` and ``layerlake.watch`` write into it.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class LayerlakeCallback(Callback):
    def __init__(self, **track_kwargs: Any) -> None:
        """``track_kwargs`` are ``layerlake.track``'s (suite, model_name, warehouse, cadence ...)."""
        self.track_kwargs = track_kwargs
        self.run: Any = None

    def on_job_start(self, config: Any, *, task_function: Any = None, **kwargs: Any) -> None:
        from layerlake.etl import session

        self.run = session.init(**self.track_kwargs)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from layerlake.etl import session

        run, self.run = self.run, None
        if run is None:
            return
        if job_return.status == JobStatus.COMPLETED:
            value = job_return.return_value
            if value is not None:
                run.log_values(run.last_step, value if isinstance(value, dict) else {"return_value": value})
            session.finish()
        else:
            error = job_return._return_value  # the job's exception (JobReturn keeps it there)
            session.finish(error=f"{type(error).__name__}: {error}")


__all__ = ["LayerlakeCallback"]
