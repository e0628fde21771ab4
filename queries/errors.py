"""Errors of the recipe side: each names the recipe, parameter or file, what was expected, and the fix."""

from __future__ import annotations

from layerlake.core.errors import LayerlakeError, ParameterError, SqlError


class RecipeError(SqlError):
    """A recipe is unknown, malformed (header and SQL disagree), not read-only, or failed to run."""


class MetricsImportError(LayerlakeError):
    """A metrics file to import is unreadable or invalid; nothing was written."""


__all__ = ["MetricsImportError", "ParameterError", "RecipeError"]
