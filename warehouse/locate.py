"""Which folder is a warehouse, and finding one: the one rule every reading command applies first.

A warehouse is a folder holding a ``_manifest/`` folder: the first writer (``Warehouse(root)``) makes it
before its first commit, and ``_manifest/commits.jsonl`` appears with that commit, so a warehouse that
has been opened for writing but holds nothing yet reads as empty. Any other folder, empty or not, is not
a warehouse: a reading command (``sql``, ``query``, ``ui``, ``check``, ``runs``, ``share attach``) refuses
it with an error that names the nearest warehouse it can see (below the folder, e.g. ``data/warehouse``
for ``--root data``, or above it), and creates nothing. Only writing commands (extract, suite build,
track, import-metrics, share import) make a new warehouse where they are told to.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerlake.core.paths import DATA_ENV, data_dir_and_source, default_warehouse_root
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.layout import MANIFEST_DIR

SHARED_MANIFEST = "manifest.json"  # a shared dataset folder (``layerlake share export``) holds this
SEARCH_DEPTH = 3  # folders below the given one searched for a warehouse (data/warehouse is depth 1)
SEARCH_FOLDERS = 2_000  # at most this many folders looked into: a wrong --root may be a home folder
HYDRA_OPTION = "paths.warehouse=DIR (or paths.data=DIR, whose warehouse is DIR/warehouse)"  # Hydra commands
MAKE_ONE = (
    "make one with `layerlake extract` (or `make demo` in the project checkout, or `layerlake.track(...)` "
    "while training)"
)


class NotAWarehouseError(WarehouseError):
    """A folder given (or defaulted) as the warehouse is not one."""


def is_warehouse(path: Path) -> bool:
    """True when ``path`` is a warehouse root (it holds a ``_manifest/`` folder)."""
    return (path / MANIFEST_DIR).is_dir()


def is_shared_dataset(path: Path) -> bool:
    """True when ``path`` looks like a shared dataset folder (``layerlake share export``'s manifest.json)."""
    return (path / SHARED_MANIFEST).is_file()


def warehouse_root(root: Any = None, option: str = "--root") -> Path:
    """The warehouse ``root`` names (None: the default, ``$LAYERLAKE_DATA/warehouse`` or
    ``./data/warehouse``), absolute; ``NotAWarehouseError`` naming the nearest warehouse when it is not
    one. Creates nothing."""
    path = default_warehouse_root() if root is None else Path(root).expanduser().resolve()
    if is_warehouse(path):
        return path
    raise not_a_warehouse(path, given=root is not None, option=option)


def not_a_warehouse(path: Path, given: bool = True, option: str = "--root") -> NotAWarehouseError:
    """The error for ``path`` (given by the user, or the default): what it is, the nearest warehouse."""
    data = path.parent
    if data.is_file():  # $LAYERLAKE_DATA (or paths.data) names a file: say so, not "no warehouse under it"
        named = (
            f" (${DATA_ENV} names it)"
            if data == data_dir_and_source()[0] and os.environ.get(DATA_ENV)
            else ""
        )
        what = f"{data} is a file, not a data folder{named}"
    elif not path.exists():
        what = f"no warehouse at {path} (the folder does not exist)"
    elif not path.is_dir():
        what = f"{path} is a file, not a warehouse folder"
    else:
        what = f"{path} is not a warehouse (it has no {MANIFEST_DIR}/ folder)"
    if not given and not data.is_file():
        what += f" [the default: ${DATA_ENV}/warehouse, else ./data/warehouse under the working directory]"
    nearest = nearest_warehouses(path)
    if path.is_dir() and is_shared_dataset(path):
        fix = f"it is a shared dataset: query it with `layerlake share attach {path}` or `--attach {path}`"
    elif nearest:
        listed = ", ".join(str(p) for p in nearest[:3]) + (" ..." if len(nearest) > 3 else "")
        fix = f"the nearest warehouse is {listed}: pass {option} {nearest[0]}"
    else:
        folder = option if "DIR" in option else f"{option} DIR"  # Hydra's option names its DIR already
        fix = f"{MAKE_ONE}, or pass the warehouse folder with {folder} (or set ${DATA_ENV} to a data folder)"
    return NotAWarehouseError(what, fix=fix)


def nearest_warehouses(path: Path) -> list[Path]:
    """Warehouses near ``path``, nearest first: inside it (breadth first, ``SEARCH_DEPTH`` folders deep,
    hidden folders and a warehouse's own insides skipped), then the closest folder above it that is one."""
    found = _below(path) if path.is_dir() else []
    for parent in path.parents:
        if is_warehouse(parent):
            found.append(parent)
            break
    return found


def _below(path: Path) -> list[Path]:
    found, queue, seen = [], deque([(path, 0)]), 0
    while queue and seen < SEARCH_FOLDERS:
        folder, depth = queue.popleft()
        seen += 1
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        except OSError:  # unreadable: look elsewhere
            continue
        for child in children:
            if is_warehouse(child):
                found.append(child)  # its insides are tables, not other warehouses
            elif depth + 1 < SEARCH_DEPTH:
                queue.append((child, depth + 1))
    return found


def enclosing(path: Any, folders: Iterable[Any]) -> Path | None:
    """The first of ``folders`` that ``path`` is, or lies inside, both with symlinks resolved (a link to a
    shard is the shard); None when it lies in none. A writer of the user's files (``sql --output``,
    ``share export``) refuses such a path: a warehouse's files are written by its own writer only."""
    target = Path(path).expanduser().resolve()
    for folder in folders:
        resolved = Path(folder).expanduser().resolve()
        if target == resolved or resolved in target.parents:
            return resolved
    return None
