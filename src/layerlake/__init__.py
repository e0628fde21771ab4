"""layerlake: turn a model suite's training checkpoints into a queryable warehouse.

The package root stays light: ``import layerlake`` loads neither torch, transformers nor ray.
For notebooks::

    import layerlake
    con = layerlake.connect()          # DuckDB connection with the warehouse's views and macros
    con.sql("select * from spectra limit 5").df()

    with layerlake.track(model, probe=token_ids) as run:   # while a model trains (needs torch)
        run.log(step, loss=loss); run.snapshot(step, model)
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


__all__ = ["connect", "track", "__version__"]
