"""Every error djq raises on purpose, under one root.

This module imports nothing from djq. The tree::

    DjqError                          root of every error djq raises on purpose
    ├── ConfigError(ValueError)       bad option or config value; raised before any I/O
    ├── PayloadError(ValueError)      payload is not JSON that survives a round trip; file untouched
    ├── LeaseError
    │   ├── LeaseLost                 the token no longer holds the task
    │   └── UnknownTask(LookupError)  no task with this id (in the state asked for)
    ├── StorageError(OSError)         Queue.json could not be read or written; old file intact
    │   └── CorruptQueueError(ValueError)  not a djq queue or not parseable; never overwritten
    │       └── UnsupportedVersion    written by a newer djq
    ├── LockTimeout(TimeoutError)     the lock was not acquired in time
    ├── SimulationError(RuntimeError) a simulation's workers could not start
    └── BrokerError
        ├── BrokerUnavailable(ConnectionError)  no broker answers at the address
        └── BrokerProtocolError       malformed, unauthenticated or out-of-order message

Errors carry their data as attributes and build their message from it. They survive
pickling (keyword attributes are rebuilt in ``__reduce__``), because simulation workers
and the broker send them across processes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrokerError",
    "BrokerProtocolError",
    "BrokerUnavailable",
    "ConfigError",
    "CorruptQueueError",
    "DjqError",
    "LeaseError",
    "LeaseLost",
    "LockTimeout",
    "PayloadError",
    "SimulationError",
    "StorageError",
    "UnknownTask",
    "UnsupportedVersion",
]


def _rebuild(cls: type[DjqError], kwargs: dict[str, Any]) -> DjqError:
    return cls(**kwargs)


class DjqError(Exception):
    """Root of every error djq raises on purpose."""

    def __init__(self, message: str = "", **attrs: Any) -> None:
        self._attrs = {"message": message, **attrs}
        for name, value in attrs.items():
            setattr(self, name, value)
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        return type(self).__name__

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._attrs)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class ConfigError(DjqError, ValueError):
    """An option or config value is invalid; raised before any I/O.

    Attributes:
        field: the option that was wrong.
    """

    field: str

    def __init__(self, message: str = "", *, field: str = "") -> None:
        super().__init__(message or f"invalid value for {field!r}", field=field)


class PayloadError(DjqError, ValueError):
    """A payload is not JSON that survives an orjson round trip unchanged, or is too large.

    The queue file is never touched: the payload is checked before any lock is taken.
    """


class LeaseError(DjqError):
    """Root of the errors about leases and task ids."""


class LeaseLost(LeaseError):
    """The lease token no longer holds the task.

    The lease expired and the task was leased again, or it was acked, nacked, requeued
    or purged. Nothing was changed.

    Attributes:
        task_id: the task the caller thought it held.
        token: the stale token.
    """

    task_id: str
    token: str | None

    def __init__(self, message: str = "", *, task_id: str = "", token: str | None = None) -> None:
        super().__init__(
            message
            or f"lease lost on task {task_id} (token {token}): it expired and was "
            "leased again, or the task was already acked, nacked, requeued or purged",
            task_id=task_id,
            token=token,
        )


class UnknownTask(LeaseError, LookupError):
    """No task with this id (in the state the call needs).

    Attributes:
        task_id: the id that was asked for.
    """

    task_id: str

    def __init__(self, message: str = "", *, task_id: str = "") -> None:
        super().__init__(message or f"no task with id {task_id!r}", task_id=task_id)


class StorageError(DjqError, OSError):
    """``Queue.json`` (or its lock or folder) could not be read or written.

    The old file is intact. ``__cause__`` is the original ``OSError``.

    Attributes:
        path: the file or folder involved.
        errno: the ``errno`` of the original error, when there was one.
    """

    path: str

    def __init__(self, message: str = "", *, path: str = "", errno: int | None = None, **attrs: Any) -> None:
        super().__init__(message or f"cannot use {path}", path=path, **attrs)
        self.errno = errno
        self._attrs["errno"] = errno


class CorruptQueueError(StorageError, ValueError):
    """The file is not a djq queue, or cannot be parsed. It is never overwritten.

    Attributes:
        path: the file.
        reason: what was wrong with it.
    """

    reason: str

    def __init__(self, message: str = "", *, path: str = "", reason: str = "", **attrs: Any) -> None:
        super().__init__(
            message or f"{path} is not a valid djq queue file: {reason}",
            path=path,
            reason=reason,
            **attrs,
        )


class UnsupportedVersion(CorruptQueueError):
    """The file was written in a format version newer than this djq understands."""


class LockTimeout(DjqError, TimeoutError):
    """The lock was not acquired in time.

    Attributes:
        path: the lock file.
        timeout: how long the caller was willing to wait, in seconds.
    """

    path: str
    timeout: float

    def __init__(self, message: str = "", *, path: str = "", timeout: float = 0.0) -> None:
        super().__init__(
            message or f"could not acquire the lock {path} within {timeout:g} s",
            path=path,
            timeout=timeout,
        )


class SimulationError(DjqError, RuntimeError):
    """A simulation could not run: its workers did not start, or failed before the start.

    Workers that fail during a run do not raise: the run reports them.
    """


class BrokerError(DjqError):
    """Root of the errors about the broker."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """No broker answers at the address."""


class BrokerProtocolError(BrokerError):
    """A malformed, unauthenticated or out-of-order message."""
