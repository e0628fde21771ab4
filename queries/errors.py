"""Errors of the recipe side: each names the recipe, parameter or file, what was expected, and the fix."""

from __future__ import annotations

from layerlake.errors import LayerlakeError


class RecipeError(LayerlakeError):
    """A recipe is unknown, malformed (header and SQL disagree), not read-only, or failed to run."""


class ParameterError(RecipeError):
    """A recipe parameter is missing, unknown, or not of its declared type; nothing was run."""


class MetricsImportError(LayerlakeError):
    """A metrics file to import is unreadable or invalid; nothing was written."""
