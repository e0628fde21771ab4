"""Where data lives by default, one rule however layerlake was installed (editable, wheel, or run from
another folder): ``$LAYERLAKE_DATA`` if set, else ``./data`` under the working directory. Hydra's
``paths`` group reads the same rule (``paths.data``), and ``layerlake --version`` prints where it points
and why. ``make demo`` and ``make test`` run from the checkout root, so the demo lands in its ``data/``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LAYERLAKE_DATA"
DATA_FOLDER = "data"  # under the working directory when $LAYERLAKE_DATA is not set
WAREHOUSE_FOLDER = "warehouse"  # under the data folder


def default_data_dir() -> Path:
    """``$LAYERLAKE_DATA`` if set (not empty), else ``./data`` under the working directory; absolute."""
    return data_dir_and_source()[0]


def data_dir_and_source() -> tuple[Path, str]:
    """``(the data folder, where the rule took it from)``: ``$LAYERLAKE_DATA`` or the working directory."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve(), f"${DATA_ENV}"
    return Path.cwd().resolve() / DATA_FOLDER, "the working directory"


def default_warehouse_root() -> Path:
    """The warehouse under the default data folder: ``default_data_dir() / "warehouse"``."""
    return default_data_dir() / WAREHOUSE_FOLDER
