"""Exceptions raised by memdistill.

Every error the library raises on purpose derives from :class:`MemdistillError`, so
callers (and the command line) can catch one type and show its message, which always
says what was wrong, what is valid and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "MemdistillError",
    "ConfigError",
    "UnknownNameError",
    "DataError",
    "DataNotFoundError",
    "IntegrityError",
    "TaskDataRevokedError",
    "DistributedError",
]


class MemdistillError(Exception):
    """Base class of every error memdistill raises deliberately."""


class ConfigError(MemdistillError, ValueError):
    """An option, argument or configuration value is invalid."""


class UnknownNameError(ConfigError):
    """A name looked up in a registry does not exist; the message lists valid names."""


class DataError(MemdistillError):
    """A dataset could not be read."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Files of a dataset are missing; the message names them and how to supply them."""


class IntegrityError(DataError):
    """A file failed its checksum or could not be parsed (corrupt, truncated, wrong)."""


class TaskDataRevokedError(MemdistillError):
    """The real data of a past continual-learning task was read after its task ended."""


class DistributedError(MemdistillError):
    """A multi-process run lost a rank or timed out waiting for one; the message says
    which rank saw it and how to resume."""
