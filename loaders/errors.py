"""Typed errors. Library code raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class WdistError(Exception):
    """Base of every error wdist reports to the user (CLI exit code 2)."""

    def __init__(self, path: str | None, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple:  # survive the trip back from worker processes
        return (self.__class__, (self.path, self.reason))


class UnsupportedFormatError(WdistError):
    """The file is not a checkpoint format wdist reads."""


class CorruptCheckpointError(WdistError):
    """The file claims a supported format but its structure is broken or inconsistent."""


class UnsafeContentError(WdistError):
    """The file holds only objects that cannot be recovered without executing code."""


class MissingDependencyError(WdistError):
    """An optional package needed for this feature is not installed."""


class UsageError(WdistError):
    """Bad options, rules or configuration given by the user."""
