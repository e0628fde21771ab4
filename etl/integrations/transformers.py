"""``transformers.Trainer``: a callback that logs what the Trainer logs and snapshots the model at the
first step, at the run's cadence, and at the last step (so a run's reference checkpoint is its final
model).

    with layerlake.track(model, probe=ids) as run:
        Trainer(model=model, args=args, train_dataset=data, callbacks=[run.trainer_callback()]).train()

The Trainer has reduced its logged numbers over the processes already, so they are stored once as the
run's (``reduce="writer"``); in a distributed job every process passes its own run's callback.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class LayerlakeCallback(TrainerCallback):
    def __init__(self, run: Any) -> None:
        self.run = run  # a layerlake.etl.track.TrackedRun

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.run.snapshot(state.global_step, model, force=True)  # the model before its first update

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.run.log_values(state.global_step, logs or {}, reduce="writer")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.run.snapshot(state.global_step, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step not in self.run.snapshots:
            self.run.snapshot(state.global_step, model, force=True)  # the final model
        self.run.flush()


__all__ = ["LayerlakeCallback"]
