"""The worker's own exceptions, apart from the modules that raise them, so that every module can name them
without importing another's code."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot be used; the message starts with the variable's name."""


class PayloadTooLarge(ValueError):
    """The job cannot be stored (HTTP 413): its record would exceed what the backend holds."""
