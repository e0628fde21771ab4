"""PyTorch Lightning: a ``Callback`` that makes each ``fit`` a tracked run.

    trainer = lightning.Trainer(callbacks=[LayerlakeCallback(probe=ids, suite="mine")])

At ``setup`` the callback starts the run (on every rank of a distributed strategy; they agree on one run),
with the LightningModule's ``hparams`` as its config. It snapshots the model before the first update,
at each step of the cadence (``trainer.global_step``: optimizer steps), and after the last; it logs the
numbers of ``trainer.callback_metrics`` (what ``self.log`` recorded) at Lightning's
``log_every_n_steps`` and at each epoch's end, once, as the run's (Lightning has reduced those logged with
``sync_dist``; the others are rank 0's, as Lightning's own loggers record them). The run ends with
``fit``: finished, or failed with the exception.

The model snapshotted is ``module`` (an attribute path inside the LightningModule, e.g. ``"model"``), or
the LightningModule itself when it is a model layerlake knows, or else its one child that is.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from layerlake.core.errors import ConfigError


class LayerlakeCallback(pl.Callback):
    def __init__(self, *, module: str | None = None, **track_kwargs: Any) -> None:
        """``track_kwargs`` are ``layerlake.track``'s (probe, suite, model_name, run_id, cadence, ...)."""
        self.module = module
        self.track_kwargs = track_kwargs
        self.run: Any = None  # the layerlake.etl.track.TrackedRun of the fit under way
        self.model: Any = None  # what its snapshots read
        self.step: int | None = None  # trainer.global_step at the last snapshot check

    # -- the run's life --------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.run is not None:
            return
        from layerlake.etl.track import track

        kwargs = dict(self.track_kwargs)
        kwargs.setdefault("config", dict(pl_module.hparams) or None)
        self.model = self.tracked_model(pl_module) if kwargs.get("probe") is not None else pl_module
        self.run = track(self.model, **kwargs).__enter__()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step = trainer.global_step
        self.run.snapshot(trainer.global_step, self.model, force=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % max(1, trainer.log_every_n_steps) == 0:
            self._log(trainer)
        if step != self.step:  # an optimizer step was taken (not a batch accumulating gradients)
            self.step = step
            self.run.snapshot(step, self.model)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None and not trainer.sanity_checking:
            self._log(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step not in self.run.snapshots:
            self.run.snapshot(trainer.global_step, self.model, force=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.run is not None:
            run, self.run = self.run, None
            run.__exit__(None, None, None)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.__exit__(type(exception), exception, exception.__traceback__)

    # -- helpers -----------------------------------------------------------------------------------------

    def _log(self, trainer: pl.Trainer) -> None:
        self.run.log_values(trainer.global_step, trainer.callback_metrics, reduce="writer")

    def tracked_model(self, pl_module: pl.LightningModule) -> Any:
        """The model inside ``pl_module`` that snapshots read (see the module's docstring)."""
        if self.module is not None:
            return pl_module.get_submodule(self.module)
        if _known(pl_module):
            return pl_module
        found = [child for child in pl_module.children() if _known(child)]
        if len(found) != 1:
            names = [name for name, child in pl_module.named_children() if _known(child)]
            raise ConfigError(
                f"{type(pl_module).__name__} holds {len(found)} models layerlake can snapshot ({names}), not one",
                fix="name the model to track: LayerlakeCallback(module='model', ...) (an attribute path)",
            )
        return found[0]


def _known(module: Any) -> bool:
    return getattr(getattr(module, "config", None), "model_type", None) is not None


__all__ = ["LayerlakeCallback"]
