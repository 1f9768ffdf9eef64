"""Exception types that carry the offending file or config key in their message."""

from __future__ import annotations


class NudiffError(Exception):
    """Base class for errors raised on purpose by nudiff."""


class InputDataError(NudiffError, ValueError):
    """A data file is missing, unreadable or inconsistent; the message names the file."""


class ConfigError(NudiffError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""
