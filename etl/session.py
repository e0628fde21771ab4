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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerlake.core.errors import ConfigError
from layerlake.core.paths import default_warehouse_root
from layerlake.etl.errors import RunFinishedError
from layerlake.etl.track import Cadence, TrackedRun, exit_status, live_probe, track
from layerlake.warehouse.layout import MANIFEST_DIR, MAX_RUN_ID, safe_name
from layerlake.warehouse.run_admin import MAX_TEXT, tag
from layerlake.warehouse.runs import RunStatus, begin_run, committed_run
from layerlake.warehouse.writer import Warehouse

NAME_ROOM = MAX_RUN_ID - 32  # a model name's length that leaves room for the run id's -<time>-<random>

# W&B's init arguments with no meaning in layerlake: accepted, unused (docs/tracking.md says why).
IGNORED_INIT = ("entity", "group", "job_type", "tags", "notes", "mode", "save_code", "settings", "reinit",
                "anonymous", "allow_val_change", "magic", "sync_tensorboard", "monitor_gym", "fork_from")  # fmt: skip


@dataclasses.dataclass
class _Session:
    run: TrackedRun | None = None
    watched: list[Any] = dataclasses.field(default_factory=list)
    step: int = 0  # the step a log() without one gets (W&B's auto-increment)
    ended: str | None = None  # the run id of the run finish() ended last (for log() after it)
    exit: SystemExit | None = None  # what the last sys.exit() raised (the exit status atexit records)


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
    the warehouse. Other keywords are ``layerlake.track``'s, or W&B's that mean nothing here.

    ``project`` and ``name`` may be any text (W&B's display names such as ``"lr=3e-3 bs=8"``): made safe
    as folder names (``warehouse.layout.safe_name``), the name given is kept as the run's tag ``name``.
    ``id`` is an identity and must be a safe name already. ``resume="must"`` refuses an ``id`` that does
    not exist, as W&B does."""
    global _exit_hook
    if _session.run is not None:
        finish()
    track_kwargs = {k: v for k, v in kwargs.items() if k not in IGNORED_INIT}
    config = _plain(config)
    track_kwargs.setdefault("suite", safe_name(project, "tracked") if project else "tracked")
    track_kwargs.setdefault("model_name", safe_name(name, "model")[:NAME_ROOM] if name else None)
    for key, value in (("run_id", id), ("warehouse", dir), ("config", config)):
        if value is not None:
            track_kwargs[key] = value
    if resume == "must":
        _check_exists(id, dir)
    stored = _stored_run(id, dir) if id is not None and resume not in (None, False, "never") else None
    if stored is not None:  # resumed by its id, as W&B does: its own suite and model unless named
        track_kwargs["suite"] = stored.suite if project is None else track_kwargs["suite"]
        track_kwargs["model_name"] = stored.model if name is None else track_kwargs["model_name"]
    if resume is not None:
        track_kwargs["resume"] = resume not in (False, "never")
    run = track(**track_kwargs)
    if name and name != run.run.model and run.writes:
        tag(run.warehouse, run.run_id, {"name": str(name)[:MAX_TEXT]})  # the display name, as given
    _session.run = run.__enter__()
    _session.watched, _session.step, _session.ended, _session.exit = [], 0, None, None
    if not _exit_hook:
        atexit.register(_finish_at_exit)
        sys.exit = _recording_exit(sys.exit)
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
    run.log_values(step, data)
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
    known = run.probe.probe_id or run.run.probe_id  # a resumed run's probe is in its stored row
    if known and known != batch.probe_id:
        raise ConfigError(
            f"run {run.run_id} snapshots through probe {known} already, not {batch.probe_id}; a run has "
            "one probe",
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
    if run.writes and not run.quiet:  # init's line said "scalars only": say what changed
        print(
            f"layerlake: run {run.run_id} now snapshots {type(unwrap(model)).__name__} at {run.cadence} "
            f"through probe {batch.probe_id}",
            file=sys.stderr,
        )


def finish(exit_code: int | None = None, quiet: bool | None = None, *, error: str | None = None) -> None:
    """End the current run: finished, or failed with ``error`` or a non-zero ``exit_code``."""
    run, _session.run = _session.run, None
    _session.watched = []
    if run is None:
        return
    _session.ended = run.run_id
    if quiet:
        run.quiet = True
    if error is None and exit_code:
        error = f"exit code {exit_code}"
    run.finish(RunStatus.failed if error else RunStatus.finished, error)


def _finish_at_exit() -> None:
    """At the process's exit, end a run still open: failed if an exception ended the program, or
    ``sys.exit`` with a code other than 0 or None; finished otherwise."""
    if _session.run is None:
        return
    _, error = exit_status(getattr(sys, "last_value", None) or _session.exit)
    finish(error=error)


def _recording_exit(exit: Callable[..., Any]) -> Callable[..., Any]:
    """``sys.exit`` that keeps what it raises, so the run ends with the script's exit status (an atexit
    handler cannot see it otherwise; W&B hooks ``sys.exit`` alike). A ``raise SystemExit(1)`` written out
    is not seen: the run ends finished."""

    def recording_exit(status: Any = None) -> None:
        _session.exit = SystemExit(status)
        exit(status)

    return recording_exit


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


def _stored_run(run_id: str, warehouse: Any) -> Any:
    """The committed run ``run_id`` of the warehouse (``dir``, else the default), or None."""
    root = Path(warehouse) if warehouse is not None else default_warehouse_root()
    return committed_run(Warehouse(root), run_id) if (root / MANIFEST_DIR).is_dir() else None


def _check_exists(run_id: str | None, warehouse: Any) -> None:
    """``resume="must"``: the run to resume exists (W&B raises otherwise)."""
    root = Path(warehouse) if warehouse is not None else default_warehouse_root()
    if run_id is None or committed_run(Warehouse(root), run_id) is None:
        what = f"run {run_id!r} does not exist in {root}" if run_id else "no id was given"
        raise ConfigError(
            f"init(resume='must'): {what}, so there is nothing to resume",
            fix="pass the id of a run that exists (`layerlake runs` lists them), or resume='allow' to start "
            "it when it does not",
        )


def _require(call: str) -> TrackedRun:
    if _session.run is None and _session.ended is not None:
        raise RunFinishedError(
            f"layerlake.{call}() after layerlake.finish(): run {_session.ended} has finished; nothing after "
            "a run's end is stored",
            fix=f"call layerlake.{call}() before layerlake.finish(), or start another run with layerlake.init()",
        )
    if _session.run is None:
        raise ConfigError(
            f"layerlake.{call}() before layerlake.init()", fix="call layerlake.init(project=...) first"
        )
    return _session.run


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
