"""The W&B-style calls: one current run per process, started by ``init``, fed by ``log``, snapshotting the
models given to ``watch``, ended by ``finish`` (or when the process exits).

    import layerlake as wandb            # the scalars need no other change
    wandb.init(project="mine", name="gpt-s", config={"lr": 3e-3})
    wandb.watch(model, probe=token_ids, cadence=128)     # the one call W&B has no form of: the probe
    for step in range(steps):
        ...
        wandb.log({"loss": loss.item()}, step=step)      # logs, and snapshots the model when step is due
    wandb.finish()

As W&B's ``watch`` hooks into ``log``, a snapshot is taken at a ``log`` call whose step is due. W&B's
arguments that mean nothing here are accepted and left unused (``docs/tracking.md`` has the table), so a
script moves by a change of import. ``layerlake.run`` is the current run (a ``TrackedRun``), or None.
"""

from __future__ import annotations

import atexit
import dataclasses
import sys
from typing import Any

from layerlake.core.errors import ConfigError
from layerlake.etl.track import Cadence, TrackedRun, live_probe, track
from layerlake.warehouse.runs import RunStatus, begin_run

# W&B's init arguments with no meaning in layerlake: accepted, unused (docs/tracking.md says why).
IGNORED_INIT = ("entity", "group", "job_type", "tags", "notes", "mode", "save_code", "settings", "reinit",
                "anonymous", "allow_val_change", "magic", "sync_tensorboard", "monitor_gym", "fork_from")  # fmt: skip


@dataclasses.dataclass
class _Session:
    run: TrackedRun | None = None
    watched: list[Any] = dataclasses.field(default_factory=list)
    step: int = 0  # the step a log() without one gets (W&B's auto-increment)
    skipped: set[str] = dataclasses.field(default_factory=set)  # non-numbers already reported


_session = _Session()
_exit_hook = False


def current() -> TrackedRun | None:
    return _session.run


def init(
    project: str | None = None,
    name: str | None = None,
    config: Any = None,
    *,
    id: str | None = None,  # noqa: A002 - W&B's name for it
    dir: Any = None,  # noqa: A002 - W&B's name for it
    resume: bool | str | None = None,
    **kwargs: Any,
) -> TrackedRun:
    """Start the process's current run (finishing one still open): ``project`` is the suite, ``name`` the
    model name and the start of the run id, ``id`` the run id itself (to resume with ``resume``), ``dir``
    the warehouse. Other keywords are ``layerlake.track``'s, or W&B's that mean nothing here."""
    global _exit_hook
    if _session.run is not None:
        finish()
    track_kwargs = {k: v for k, v in kwargs.items() if k not in IGNORED_INIT}
    config = _plain(config)
    track_kwargs.setdefault("suite", project or "tracked")
    track_kwargs.setdefault("model_name", name)
    for key, value in (("run_id", id), ("warehouse", dir), ("config", config)):
        if value is not None:
            track_kwargs[key] = value
    if resume is not None:
        track_kwargs["resume"] = resume not in (False, "never")
    run = track(**track_kwargs)
    _session.run = run.__enter__()
    _session.watched, _session.step, _session.skipped = [], 0, set()
    if not _exit_hook:
        atexit.register(_finish_at_exit)
        _exit_hook = True
    return run


def log(data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
    """Record the numbers of ``data`` at ``step`` (W&B's: without one, the step after the last call's),
    then snapshot every watched model if the step is due. Values that are not numbers (images, tables,
    histograms) are left out, said once each on stderr."""
    run = _require("log")
    if step is None:
        step = _session.step
    _session.step = step + 1 if commit is not False else step
    numbers = {}
    for key, value in data.items():
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or _one_number(value)):
            if key not in _session.skipped:
                _session.skipped.add(key)
                print(
                    f"layerlake: {key!r} is not a number; scalars holds numbers only (left out)",
                    file=sys.stderr,
                )
            continue
        numbers[key] = value
    if numbers:
        run.log(step, **numbers)
    for model in _session.watched:
        run.snapshot(step, model)


def watch(
    models: Any,
    criterion: Any = None,
    log: str | None = "gradients",
    log_freq: int | None = None,
    idx: int | None = None,
    log_graph: bool = False,
    *,
    probe: Any = None,
    cadence: Any = None,
    probe_rule: str = "last",
) -> None:
    """Snapshot ``models`` (one model) through ``probe`` at the ``log`` calls whose step is due:
    ``cadence`` (``layerlake.track``'s forms), else every ``log_freq`` steps, else the default. ``log``:
    ``"gradients"`` or ``"all"`` take gradient spectra too, ``"parameters"`` or None weights and
    activations only. ``criterion``, ``idx`` and ``log_graph`` mean nothing here."""
    run = _require("watch")
    model = _one_model(models)
    if probe is None:
        raise ConfigError(
            "watch() needs the probe its snapshots read (W&B's watch has none)",
            fix="pass probe=token_ids: a fixed batch of token ids, a list of equal-length lists or a 2-d tensor",
        )
    from layerlake.etl.distributed import unwrap
    from layerlake.etl.extract import check_options

    batch = live_probe(probe, probe_rule)
    if run.probe.probe_id and run.probe.probe_id != batch.probe_id:
        raise ConfigError(
            f"run {run.run_id} snapshots through probe {run.probe.probe_id} already; a run has one probe",
            fix="watch with the same probe, or start another run (layerlake.init) for another probe",
        )
    options = dataclasses.replace(run.options, gradients=log in ("gradients", "all"))
    check_options(options, batch, unwrap(model))
    if run.writes and not run.probe.probe_id:  # the run's row names its probe, whose row joins it
        from layerlake.etl.probes import probe_row

        run.run = begin_run(
            run.warehouse, dataclasses.replace(run.run, probe_id=batch.probe_id), probe_row(batch)
        )
    run.probe, run.options = batch, options
    run.cadence = Cadence.parse(cadence if cadence is not None else log_freq)
    _session.watched = [model]


def finish(exit_code: int | None = None, quiet: bool | None = None, *, error: str | None = None) -> None:
    """End the current run: finished, or failed with ``error`` or a non-zero ``exit_code``."""
    run, _session.run = _session.run, None
    _session.watched = []
    if run is None:
        return
    if quiet:
        run.quiet = True
    if error is None and exit_code:
        error = f"exit code {exit_code}"
    run.finish(RunStatus.failed if error else RunStatus.finished, error)


def _finish_at_exit() -> None:
    """At the process's exit, end a run still open: failed if an exception ended the program."""
    if _session.run is None:
        return
    uncaught = getattr(sys, "last_value", None)
    finish(error=None if uncaught is None else f"{type(uncaught).__name__}: {uncaught}")


def _plain(config: Any) -> Any:
    """A config as plain values: an OmegaConf node resolved, an argparse Namespace as its dict."""
    if config is None or isinstance(config, dict):
        return config
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:
        pass
    return vars(config) if hasattr(config, "__dict__") else config


def _require(call: str) -> TrackedRun:
    if _session.run is None:
        raise ConfigError(
            f"layerlake.{call}() before layerlake.init()", fix="call layerlake.init(project=...) first"
        )
    return _session.run


def _one_number(value: Any) -> bool:
    """A one-element tensor or numpy value (``.item()`` gives a number)."""
    try:
        return isinstance(value.item(), (int, float))
    except (AttributeError, ValueError, TypeError, RuntimeError):
        return False


def _one_model(models: Any) -> Any:
    if isinstance(models, (list, tuple)):
        if len(models) != 1:
            raise ConfigError(
                f"watch() got {len(models)} models; a run snapshots one",
                fix="watch the model whose layers you study, or start a run per model",
            )
        return models[0]
    return models


__all__ = ["current", "finish", "init", "log", "watch"]
