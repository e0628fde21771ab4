"""layerlake: turn a model suite's training checkpoints into a queryable warehouse.

The package root stays light: ``import layerlake`` loads neither torch, transformers nor ray.
For notebooks::

    import layerlake
    con = layerlake.connect()          # DuckDB connection with the warehouse's views and macros
    con.sql("select * from spectra limit 5").df()
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def connect(root: Any = None, read_only: bool = True, **kwargs: Any) -> Any:
    """A DuckDB connection over the warehouse at ``root`` (see ``warehouse.connect``)."""
    from layerlake.warehouse import connect as _connect

    return _connect(root=root, read_only=read_only, **kwargs)


__all__ = ["connect", "__version__"]
