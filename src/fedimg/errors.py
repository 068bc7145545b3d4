"""The one exception tree of fedimg.

Every error says what went wrong in one line and whether retrying can help (``retryable``): a
consumer requeues a message on a retryable error and drops it otherwise.
"""

from __future__ import annotations


class FedimgError(Exception):
    """Base of every error fedimg raises on purpose."""

    retryable = False


class ConfigError(FedimgError):
    """The configuration is invalid; fix the file named in the message. Not retryable."""


class InputError(FedimgError):
    """The image, compose or message is bad (checksum, format, metadata). Retrying cannot help."""


class ChecksumMismatch(InputError):
    """The image's bytes do not match the checksum it was announced with."""


class ImageTooLarge(InputError):
    """The decompressed image exceeds its declared or configured maximum size."""


class AwsError(FedimgError):
    """An AWS call failed. ``retryable`` tells whether a later attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class TransientError(FedimgError):
    """Infrastructure failed (network, throttling, a deadline passed); try again later."""

    retryable = True


class BootTestFailed(FedimgError):
    """The image booted badly or a check failed: the image is at fault, not the infrastructure."""
