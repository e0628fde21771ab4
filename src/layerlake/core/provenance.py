"""Where code runs and which code it is: host, process, layerlake's version, the git commit of a checkout."""

from __future__ import annotations

import os
import socket
import subprocess
from functools import cache
from pathlib import Path


def host() -> str:
    return socket.gethostname()


def pid() -> int:
    return os.getpid()


@cache
def layerlake_version() -> str:
    """The installed layerlake's version (``unknown`` when it runs from an uninstalled checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("layerlake")
    except PackageNotFoundError:
        return "unknown"


def git_state(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: the working directory), or
    ``(None, None)`` outside a checkout or without git."""
    where = str(path or Path.cwd())
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit.stdout.strip() or None, (bool(status.stdout.strip()) if status.returncode == 0 else None)


def process_alive(host_name: str, process_id: int | None) -> bool | None:
    """Whether ``process_id`` runs on this host; None when that cannot be told (another host, no pid)."""
    if process_id is None or host_name != host():
        return None
    try:
        os.kill(process_id, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
