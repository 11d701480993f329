"""The exception tree and the exit codes of every queuectl program.

Every error a user can cause is a ``QueueError`` subclass carrying the exit
code that the CLI and the daemons return for it.  Redis client errors are
translated into this tree in ``connection.py`` and nowhere else.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes shared by the CLI and the daemons."""

    OK = 0
    INTERNAL = 1  # a bug: an unexpected exception
    USAGE = 2  # invalid arguments, invalid job spec or input file
    NOT_FOUND = 3  # no job, queue or key by that name
    CONFLICT = 4  # id already in use, or the job is in the wrong state
    REDIS_UNAVAILABLE = 5  # connection refused, timed out, or DNS failed
    CONFIG = 6  # config file missing, unreadable or invalid
    REDIS_ERROR = 7  # Redis returned an error: wrong password, out of memory
    CHECK_FAILED = 8  # `queuectl doctor` found a problem


class QueueError(Exception):
    """Base of every error queuectl raises on purpose."""

    exit_code = ExitCode.INTERNAL


class UsageError(QueueError):
    """Invalid command-line arguments or input data."""

    exit_code = ExitCode.USAGE


class JobSpecError(UsageError):
    """A job spec that fails validation; the message names the field."""

    def __init__(self, field: str, message: str, *, line: int | None = None) -> None:
        self.field = field
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}invalid job spec: {field}: {message}")


class NotFoundError(QueueError):
    """No job, queue or config key by that name."""

    exit_code = ExitCode.NOT_FOUND


class ConflictError(QueueError):
    """The id is in use, or the job is in a state that forbids the request."""

    exit_code = ExitCode.CONFLICT


class ConfigError(QueueError):
    """The config cannot be loaded; the message names the file and the key."""

    exit_code = ExitCode.CONFIG


class RedisFailure(QueueError):
    """Base of the errors Redis causes; daemons wait these out and retry."""

    exit_code = ExitCode.REDIS_ERROR


class RedisUnavailableError(RedisFailure):
    """Redis cannot be reached at the configured address."""

    exit_code = ExitCode.REDIS_UNAVAILABLE


class RedisCommandError(RedisFailure):
    """Redis returned an error (authentication, memory, script)."""

    exit_code = ExitCode.REDIS_ERROR


class LeaseLostError(QueueError):
    """The worker's lease on a job was taken away; its result is discarded."""
