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


class SizeBoundError(ValueError):
    """A SQL function's input is larger than its documented bound (a cubic or quadratic computation per
    row: ``ww_alpha``'s KS scan, ``svcca``'s eigendecomposition ...). Raised inside DuckDB, which reports
    it as the query's error; the message names the function, the size, the bound and why."""

    def __init__(self, function: str, size: int, unit: str, bound: int, why: str) -> None:
        super().__init__(
            f"{function}: {size:,} {unit} is more than the {bound:,} it takes ({why}); "
            "select smaller inputs, e.g. with a WHERE on the size column"
        )
