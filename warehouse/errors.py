"""Errors of the query side; each names the thing and the fix."""

from __future__ import annotations

from layerlake.errors import LayerlakeError


class WarehouseError(LayerlakeError):
    """Base of warehouse-side errors."""


class ManifestError(WarehouseError):
    """The manifest or a file it lists is missing, unreadable or does not verify."""


class QueryError(WarehouseError):
    """A query is refused (it writes) or fails."""


class ShareError(WarehouseError):
    """A shared dataset does not verify; nothing was imported."""
