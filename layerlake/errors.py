"""The one exception hierarchy: every error a user can cause derives from ``LayerlakeError``.

A message names the thing that is wrong, what was expected, and how to fix it. The CLI prints it
(without a traceback) to stderr and exits with status 2.
"""

from __future__ import annotations


class LayerlakeError(Exception):
    """Base of every error a user can cause (bad input, config, data); never a bug."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\n  fix: {fix}")


class ConfigError(LayerlakeError):
    """A config key, value or command-line argument is wrong."""
