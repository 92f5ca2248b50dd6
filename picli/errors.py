"""Errors the user can fix.

Every failure a user can act on is a `PicliError` with a one-line message and a hint that
names the next thing to try. The CLI (`picli/cli.py`) is the only place that catches them;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PicliError(Exception):
    """A problem with the user's input or environment, not a bug in picli."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ModelNotFound(PicliError):
    """MODEL names nothing picli can open: no such path, alias or cached Hub repo."""


class NotACheckpoint(PicliError):
    """MODEL exists but is not a checkpoint picli can read (no/malformed config, corrupt header)."""


class CannotExtend(PicliError):
    """The checkpoint cannot take Position Interpolation (no RoPE, no scaling hook, ...)."""


class OutputError(PicliError):
    """The output location is unusable: exists, inside the source, not writable."""


class SelfCheckFailed(PicliError):
    """The written checkpoint does not do what was intended when read back."""
