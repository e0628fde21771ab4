"""Errors of the extraction side; each names the thing and the fix."""

from __future__ import annotations

from layerlake.core.errors import LayerlakeError


class EtlError(LayerlakeError):
    """Base of extraction-side errors."""


class SuiteError(EtlError):
    """The suite is misconfigured, missing, or was built with another config."""


class CheckpointError(EtlError):
    """A checkpoint is missing, unreadable or corrupt."""


class ProbeError(EtlError):
    """The probe batch cannot be built from the configured source."""


class ExtractionError(EtlError):
    """A site, matrix or option is not available for this model."""
