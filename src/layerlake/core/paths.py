"""Where data lives by default: ``$LAYERLAKE_DATA``, else ``data/`` under the project checkout (or the
working directory when layerlake is installed from a wheel). Hydra's ``paths`` group reads the same rule."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LAYERLAKE_DATA"
_CHECKOUT = Path(__file__).resolve().parents[3]  # src/layerlake/core/paths.py -> the source checkout


def project_root() -> Path:
    """The source checkout when layerlake runs from one (editable install); else the working directory."""
    return _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else Path.cwd()


def default_data_dir() -> Path:
    """``$LAYERLAKE_DATA`` if set, else ``data/`` under the project root."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else project_root() / "data"


def default_warehouse_root() -> Path:
    return default_data_dir() / "warehouse"
