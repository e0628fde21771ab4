"""SIGTERM unwound as Ctrl-C is, where a command must clean up after itself.

Python's default SIGTERM ends the process at once: no ``finally`` runs, so whatever a command keeps
beside the warehouse while it works (an import's download folder) stays. ``terminate_as_interrupt``
makes SIGTERM raise ``Terminated`` (a ``KeyboardInterrupt``) in the main thread for the length of a
block, so it unwinds exactly as Ctrl-C does: cleanups run, and the CLI says ``terminated`` and exits
143 (128 + SIGTERM). What a SIGKILL leaves is found by its owner's released lock
(``warehouse.writer.download_folder``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TERMINATED_EXIT = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (a scheduler, ``timeout``, ``kill``) inside ``terminate_as_interrupt``."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("terminated (SIGTERM)")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread; before and after, SIGTERM
    does what it did. Nothing changes outside the main thread (only it may set handlers) or where SIGTERM
    is ignored (a parent that ignores it wants it ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
