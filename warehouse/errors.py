"""Errors of the query side; each names the thing and the fix."""

from __future__ import annotations

from layerlake.core.errors import LayerlakeError, SqlError


class WarehouseError(LayerlakeError):
    """Base of warehouse-side errors."""


class ManifestError(WarehouseError):
    """The manifest or a file it lists is missing, unreadable or does not verify."""


class QueryError(WarehouseError, SqlError):
    """A query is refused (it writes) or fails."""


class ShareError(WarehouseError):
    """A shared dataset does not verify; nothing was imported."""
