"""The project's own errors: the CLI prints their message, never a traceback."""

from __future__ import annotations


class IotwatchError(Exception):
    """Base class for every error iotwatch reports to a user."""


class ConfigError(IotwatchError):
    """A configuration value or file is missing or wrong."""


class InputError(IotwatchError):
    """An input file (capture, inventory, table) cannot be used; the message names it."""
