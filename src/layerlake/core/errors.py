"""The one exception hierarchy: every error a user can cause derives from ``LayerlakeError``.

A message names the thing that is wrong, what was expected, and how to fix it. The CLI prints it
(without a traceback) to stderr and exits with status 2. Each floor adds its own subclasses
(``layerlake.warehouse.errors``, ``layerlake.etl.errors``, ``layerlake.queries.errors``).
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


class SqlError(LayerlakeError):
    """A SQL statement is refused (it writes, or is several) or a ``.sql`` file is malformed."""


class ParameterError(SqlError):
    """A SQL parameter is missing, unknown, or not of its declared type; nothing was run."""


class MissingExtraError(LayerlakeError):
    """A command needs packages of an optional extra that is not installed."""


EXTRACT_EXTRA_MODULES = ("torch", "transformers", "safetensors", "tokenizers", "huggingface_hub", "ray")
EXTRA_MODULES = {"extract": EXTRACT_EXTRA_MODULES}  # extra -> what it installs


def require_extra(extra: str, modules: tuple[str, ...], purpose: str) -> None:
    """Raise ``MissingExtraError`` naming ``layerlake[extra]`` unless every module is importable."""
    from importlib.util import find_spec

    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{purpose} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            fix=f"pip install 'layerlake[{extra}]' (the query side alone needs none of them)",
        )
