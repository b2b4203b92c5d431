"""The error types for user errors: the CLI prints the message as one line and exits 1 (2 for a
wrong option or combination of options, as for the usage errors the parser itself finds)."""

from __future__ import annotations

from pathlib import Path


class MilesDeepError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    Bugs are any other exception: they keep their traceback (set MILESDEEP_DEBUG=1 to see
    the traceback of a MilesDeepError too).
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class UsageError(MilesDeepError):
    """A value no option takes, options that exclude each other, or one that is missing."""
