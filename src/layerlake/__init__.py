"""layerlake: turn a model suite's training checkpoints into a queryable warehouse.

The package root stays light: ``import layerlake`` loads neither torch, transformers nor ray.
For notebooks::

    import layerlake
    con = layerlake.connect()          # DuckDB connection with the warehouse's views and macros
    con.sql("select * from spectra limit 5").df()

    with layerlake.track(model, probe=token_ids) as run:   # while a model trains (needs torch)
        run.log(step, loss=loss); run.snapshot(step, model)

    layerlake.init(project="mine"); layerlake.watch(model, probe=token_ids)   # or W&B's way
    layerlake.log({"loss": loss}, step=step); layerlake.finish()
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def connect(root: Any = None, read_only: bool = True, **kwargs: Any) -> Any:
    """A DuckDB connection over the warehouse at ``root`` (see ``warehouse.connect``)."""
    from layerlake.warehouse import connect as _connect

    return _connect(root=root, read_only=read_only, **kwargs)


def track(model: Any = None, **kwargs: Any) -> Any:
    """Track a training run: ``with layerlake.track(model, probe=ids) as run: ... run.log(step, loss=l);
    run.snapshot(step, model)``. Needs the ``extract`` extra (torch). See ``layerlake.etl.track.track``."""
    from layerlake.core.errors import EXTRACT_EXTRA_MODULES, require_extra

    require_extra("extract", EXTRACT_EXTRA_MODULES[:2], "layerlake.track")
    from layerlake.etl.track import track as _track

    return _track(model, **kwargs)


# --- the W&B-style calls (layerlake.etl.session): one current run per process ----------------------------


def init(project: str | None = None, name: str | None = None, config: Any = None, **kwargs: Any) -> Any:
    """Start this process's current run, as ``wandb.init``: ``project`` is the suite, ``name`` the model
    name and the start of the run id, ``config`` the run's config. See ``layerlake.etl.session.init``."""
    from layerlake.etl import session

    return session.init(project, name, config, **kwargs)


def log(data: dict, step: int | None = None, commit: bool | None = None) -> None:
    """Record numbers in the current run, as ``wandb.log``, and snapshot the watched model at due steps."""
    from layerlake.etl import session

    session.log(data, step, commit)


def watch(models: Any, *args: Any, probe: Any = None, cadence: Any = None, **kwargs: Any) -> None:
    """Snapshot ``models`` through ``probe`` at the ``log`` calls whose step is due, as ``wandb.watch``
    hooks into ``wandb.log``. Needs the ``extract`` extra (torch)."""
    from layerlake.core.errors import EXTRACT_EXTRA_MODULES, require_extra

    require_extra("extract", EXTRACT_EXTRA_MODULES[:2], "layerlake.watch")
    from layerlake.etl import session

    session.watch(models, *args, probe=probe, cadence=cadence, **kwargs)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """End the current run (failed with a non-zero ``exit_code``), as ``wandb.finish``."""
    from layerlake.etl import session

    session.finish(exit_code, quiet)


def __getattr__(name: str) -> Any:
    if name == "run":  # the current run (a TrackedRun) or None, as ``wandb.run``
        from layerlake.etl import session

        return session.current()
    raise AttributeError(f"module 'layerlake' has no attribute {name!r}")


__all__ = ["connect", "finish", "init", "log", "track", "watch", "__version__"]
