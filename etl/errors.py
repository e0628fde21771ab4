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


class RunFinishedError(EtlError):
    """A call (``log``, ``snapshot``) on a tracked run that has finished: nothing after its end is stored."""


def describe_error(error: BaseException) -> tuple[str, str]:
    """A task's failure as text: a user error's message (or the exception's type and text), and the
    traceback (kept in the manifest)."""
    import traceback

    summary = str(error) if isinstance(error, LayerlakeError) else f"{type(error).__name__}: {error}"
    detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return summary, detail
