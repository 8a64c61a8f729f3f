"""The project's own errors: the CLI prints their message, never a traceback."""

from __future__ import annotations

import os
import re
from pathlib import Path


class IotwatchError(Exception):
    """Base class for every error iotwatch reports to a user."""


class ConfigError(IotwatchError):
    """A configuration value or file is missing or wrong."""


class InputError(IotwatchError):
    """An input file (capture, inventory, table) cannot be used; the message names it."""


class OutputError(IotwatchError):
    """An output file cannot be written (read-only or full disk, a folder in the way, ...).

    One line naming the path the user asked for and the operating system's reason: the
    temporary file the data went to first is an implementation detail, never named.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: cannot write it ({reason})")

    @classmethod
    def from_os(cls, path: str | Path, exc: OSError) -> OutputError:
        """The error for ``exc`` raised while writing ``path`` (or a temporary file for it)."""
        return cls(path, os_reason(exc))


def os_reason(exc: OSError) -> str:
    """The operating system's reason of an ``OSError`` in a few words ("No space left on
    device"), also for pyarrow's errors, whose text wraps it ("... Detail: [errno 28] ...")."""
    if isinstance(exc, NotADirectoryError | FileExistsError) and exc.filename:
        return f"{exc.filename} is a file, not a folder"
    if exc.errno:
        return os.strerror(exc.errno)
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return os.strerror(int(found.group(1))) if found else (exc.strerror or str(exc))
