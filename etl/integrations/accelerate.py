"""Hugging Face Accelerate: a ``GeneralTracker``, so ``Accelerator(log_with=LayerlakeTracker(...))`` records
the run and ``accelerator.log({...}, step=...)`` its numbers.

    tracker = LayerlakeTracker("run-name", model=model, probe=ids, suite="mine", cadence=128)
    accelerator = Accelerator(log_with=tracker)
    accelerator.init_trackers("mine", config={"lr": 3e-3})   # the run starts, with this config
    ...
    accelerator.log({"loss": loss.item()}, step=step)         # logs, and snapshots at the cadence
    accelerator.end_training()                                # the run ends

Accelerate calls a tracker on its main process only, so this process alone tracks the run
(``track(distributed=False)``): its numbers are the run's (Accelerate's own trackers record the main
process's values too) and the snapshots read the main process's replica (under DDP, the model's
``.module``). A sharded (FSDP) model needs every rank in a snapshot: call ``run.snapshot`` on every rank
with a run of its own ``layerlake.track`` instead.
"""

from __future__ import annotations

from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process


class LayerlakeTracker(GeneralTracker):
    name = "layerlake"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_name: str | None = None, *, model: Any = None, **track_kwargs: Any) -> None:
        """``run_name`` becomes the run id (None: a new one); ``model`` is snapshotted at the run's cadence
        when ``log`` is called at a due step; ``track_kwargs`` are ``layerlake.track``'s."""
        super().__init__()
        self.run_name = run_name
        self.model = model
        self.track_kwargs = track_kwargs
        self.run: Any = None  # the layerlake.etl.track.TrackedRun, from the first call on

    @property
    def tracker(self) -> Any:
        return self.run

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        self._start(values)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Numbers of ``values`` (others, such as bools, strings, dicts or tensors of several elements, are
        left out, said once per name: ``TrackedRun.log_values``), then a snapshot when ``step`` is due
        (once per step). Without a step, one past the last logged."""
        run = self._start(None)
        step = step if step is not None else self._next_step
        self._next_step = step + 1
        run.log_values(step, values)
        if self.model is not None:
            run.snapshot(step, self.model)

    @on_main_process
    def finish(self) -> None:
        if self.run is not None:
            if self.model is not None and self._next_step and self._next_step - 1 not in self.run.snapshots:
                self.run.snapshot(self._next_step - 1, self.model, force=True)  # the final model
            run, self.run = self.run, None
            run.__exit__(None, None, None)

    _next_step = 0

    def _start(self, config: dict | None) -> Any:
        if self.run is None:
            from layerlake.etl.track import track

            kwargs = {"run_id": self.run_name, "config": config, **self.track_kwargs}
            self.run = track(self.model, distributed=False, **kwargs).__enter__()
        return self.run


__all__ = ["LayerlakeTracker"]
