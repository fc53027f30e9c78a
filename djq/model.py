"""The plain data of djq: tasks, leases, kinds, config, statistics and named defaults.

Stdlib only; imports nothing from djq but ``errors``. Every record is a frozen,
keyword-only dataclass; every kind is a ``StrEnum`` whose values are what ``Queue.json``
stores.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from .errors import ConfigError

__all__ = [
    "CLAIMS",
    "CONFIG_FIELDS",
    "DEFAULT_COMPACT_BYTES",
    "DEFAULT_FSYNC",
    "DEFAULT_LEASE_DURATION",
    "DEFAULT_LOCK",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_QUEUE_PATH",
    "DEFAULT_STORAGE",
    "JSON",
    "MAX_DELAY",
    "MAX_LEASE_DURATION",
    "MAX_TIMEOUT",
    "MIN_LEASE_DURATION",
    "SERVER_FIELDS",
    "STORAGE_MODES",
    "Lease",
    "LockKind",
    "QueueConfig",
    "QueueStats",
    "StorageKind",
    "Task",
    "TaskState",
    "WaitKind",
    "check_priority",
    "check_seconds",
    "refuse_file_options",
]

#: Any value orjson can write and read back unchanged: dict with str keys, list, str,
#: int (64-bit), finite float, bool, None. ``Any`` appears in djq only behind this alias.
JSON: TypeAlias = Any

DEFAULT_QUEUE_PATH: Final = Path("data/Queue.json")  #: relative to the working folder
DEFAULT_LEASE_DURATION: Final = 30.0  #: seconds; the SQS visibility-timeout default
MIN_LEASE_DURATION: Final = 0.001  #: seconds; shorter leases only make sense in tests
MAX_LEASE_DURATION: Final = 12 * 3600.0  #: seconds; the SQS maximum
MAX_DELAY: Final = 100 * 365.25 * 86400.0  #: seconds; a century: any longer is a mistake (or infinity)
MAX_TIMEOUT: Final = 365.25 * 86400.0  #: seconds; a year: the longest finite wait (None waits for ever)
DEFAULT_MAX_ATTEMPTS: Final = 5  #: deliveries before dead letters; never 1 (see SQS)
DEFAULT_LOCK_TIMEOUT: Final = None  #: wait for the lock as long as it takes
DEFAULT_FSYNC: Final = True  #: a put is on disk when it returns
DEFAULT_MAX_PAYLOAD_BYTES: Final = 1 << 20  #: 1 MiB encoded, the SQS maximum message size
DEFAULT_MAX_FILE_BYTES: Final = 1 << 30  #: 1 GiB; a larger Queue.json is refused unread
DEFAULT_COMPACT_BYTES: Final = 1 << 20  #: a journal is folded past this size (and past the snapshot's)


class TaskState(enum.StrEnum):
    """Who owns a task: the queue (ready), a consumer's lease, nobody (dead), or done."""

    READY = "ready"  #: waiting in the queue (maybe delayed until ``available_at``)
    LEASED = "leased"  #: held by a consumer until ``lease_expires_at``
    DEAD = "dead"  #: delivered ``max_attempts`` times without an ack; kept for inspection
    DONE = "done"  #: acked; the task has left the file and only the counter remains


class LockKind(enum.StrEnum):
    """The lock that guards ``Queue.json``; an experimental variable."""

    FLOCK = "flock"  #: fcntl.flock, blocking in the kernel; the next waiter wakes at release
    FILELOCK = "filelock"  #: filelock.FileLock: non-blocking tries with a poll interval
    SOFT = "soft"  #: filelock.SoftFileLock: a marker file that exists while held


class StorageKind(enum.StrEnum):
    """How changes reach the disk; an experimental variable."""

    REWRITE = "rewrite"  #: every change rewrites all of Queue.json: O(tasks) per call
    JOURNAL = "journal"  #: every change appends a line to Queue.json.journal; folded now and then


class WaitKind(enum.StrEnum):
    """How a direct-mode ``get`` with a timeout waits for work."""

    NOTIFY = "notify"  #: one waiter at a time sleeps on inotify; the others sleep too; no lock
    POLL = "poll"  #: every waiter takes the lock, then polls the file's metadata (djq 0.1)


STORAGE_MODES: Final = tuple(k.value for k in StorageKind)
DEFAULT_STORAGE: Final = StorageKind.JOURNAL  #: see the README's benchmark: O(1) per call

DEFAULT_LOCK: Final = LockKind.FLOCK  #: no polling; ~16x cheaper than filelock uncontended here


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """A snapshot of one task, as a call returned it.

    A leased task carries ``token`` and ``lease_expires_at``; pass it back to
    ``ack``, ``nack`` or ``extend``. Times are wall-clock epoch seconds.
    """

    id: str
    payload: JSON
    priority: int = 0
    state: TaskState = TaskState.READY
    attempts: int = 0  #: deliveries so far (raised by every lease)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    enqueued_at: float = 0.0
    available_at: float = 0.0
    owner: str | None = None
    token: str | None = None
    lease_expires_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A reference to one lease: enough to ack, nack or extend without the whole task."""

    id: str
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """Counts of one queue at one moment (``Queue.stats()``)."""

    ready: int  #: can be leased now
    delayed: int  #: ready, but not before their ``available_at``
    leased: int  #: under a lease that has not expired
    expired: int  #: under a lease that has expired; reclaimed by the next lease
    dead: int  #: in the dead letters
    put_total: int  #: tasks ever put
    acked_total: int  #: tasks ever acked
    dead_total: int  #: times a task went to the dead letters
    file_bytes: int  #: size of Queue.json and its journal's lines (not the zeros after them); 0: none yet

    @property
    def total(self) -> int:
        """Tasks in the file, in any state."""
        return self.ready + self.delayed + self.leased + self.expired + self.dead


def check_seconds(name: str, value: float | None, *, low: float, high: float, forever: bool = False) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``value`` is None or seconds in [low, high].

    Every duration is finite and at most ``MAX_DELAY`` (a century) whatever ``high`` says:
    "for ever" is None, never infinity. With ``forever`` the message says so (a wait
    that None makes endless). Booleans, NaN, strings and other types are refused.
    """
    if value is None or (type(value) is float and low <= value <= high and value <= MAX_DELAY):
        return  # the common case, first
    high = min(high, MAX_DELAY)
    hint = " (pass None to wait for ever)" if forever else ""
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:  # NaN
        raise ConfigError(f"{name} must be a number of seconds{hint}, not {value!r:.80}", field=name)
    if value in (math.inf, -math.inf):
        raise ConfigError(f"{name} must be a finite number of seconds{hint}, not {value!r}", field=name)
    if not low <= value <= high:
        shown = f"{value!r:.80}"
        raise ConfigError(f"{name} must be between {low:g} and {high:g} s{hint}, not {shown}", field=name)


def check_priority(priority: int) -> None:
    """Raise ``ConfigError`` unless ``priority`` is a 64-bit integer (not a bool): what the files store."""
    if type(priority) is not int or not -(1 << 63) <= priority < 1 << 63:
        raise ConfigError(f"priority must be a 64-bit integer, not {priority!r:.80}", field="priority")


_MAX_INT: Final = (1 << 63) - 1  #: the largest integer the files (and orjson) store
_MAX_NAME_BYTES: Final = 200  #: of the queue file's name: room for ".journal", ".wait", temp suffixes


def _check_int(name: str, value: object, *, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, not {value!r:.80}", field=name)


def _check_path(value: object) -> Path:
    """The queue file's path as a ``Path``; ``ConfigError`` (field ``path``) unless the OS can name it."""
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"path must be a file path, not {value!r:.80}", field="path")
    try:
        path = Path(value)
        name = os.fsencode(path.name)
        whole = os.fsencode(path)
    except (TypeError, ValueError) as exc:  # a bytes PathLike; a lone surrogate (UnicodeEncodeError)
        raise ConfigError(f"path cannot name a file: {value!r:.80} ({exc})", field="path") from None
    if path.name in ("", ".", "..") or b"\0" in whole:
        raise ConfigError(f"path must name a file, not {value!r:.80}", field="path")
    if len(name) > _MAX_NAME_BYTES or len(whole) > 4000:
        raise ConfigError(
            f"path is too long: its name may have {_MAX_NAME_BYTES} bytes, all of it 4000", field="path"
        )
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """How a queue is opened. Validated on creation; raises ``ConfigError`` naming the field.

    Variants for sweeps are ``dataclasses.replace(config, fsync=False)``.
    """

    path: Path = DEFAULT_QUEUE_PATH
    lock: LockKind = DEFAULT_LOCK
    storage: StorageKind = DEFAULT_STORAGE
    wait: WaitKind = WaitKind.NOTIFY
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT  #: seconds; None waits for ever
    poll_interval: float | None = None  #: seconds between tries ("filelock"/"soft"); None: theirs
    fsync: bool = DEFAULT_FSYNC
    lease: float = DEFAULT_LEASE_DURATION  #: seconds
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    compact_bytes: int = DEFAULT_COMPACT_BYTES  #: journal storage: fold the journal past this size
    file_mode: int = 0o600

    def __post_init__(self) -> None:
        """Check every field; raise ``ConfigError`` naming the first bad one."""
        object.__setattr__(self, "path", _check_path(self.path))
        try:
            object.__setattr__(self, "lock", LockKind(self.lock))
        except ValueError:
            kinds = ", ".join(repr(k.value) for k in LockKind)
            raise ConfigError(f"lock must be one of {kinds}, not {self.lock!r}", field="lock") from None
        try:
            object.__setattr__(self, "storage", StorageKind(self.storage))
        except ValueError:
            kinds = ", ".join(repr(k) for k in STORAGE_MODES)
            raise ConfigError(
                f"storage must be one of {kinds}, not {self.storage!r}", field="storage"
            ) from None
        try:
            object.__setattr__(self, "wait", WaitKind(self.wait))
        except ValueError:
            raise ConfigError(f"wait must be 'notify' or 'poll', not {self.wait!r}", field="wait") from None
        check_seconds("lock_timeout", self.lock_timeout, low=0.0, high=MAX_TIMEOUT, forever=True)
        check_seconds("poll_interval", self.poll_interval, low=1e-6, high=60.0)
        if self.lease is None:
            raise ConfigError("lease must be a number of seconds, not None", field="lease")
        check_seconds("lease", self.lease, low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)
        _check_int("max_attempts", self.max_attempts, low=1, high=1 << 31)  # what an operation takes
        for name in ("max_payload_bytes", "max_file_bytes", "compact_bytes"):
            _check_int(name, getattr(self, name), low=1, high=_MAX_INT)
        if type(self.file_mode) is not int or not 0 <= self.file_mode <= 0o777:
            raise ConfigError(
                f"file_mode must be permission bits from 0o000 to 0o777, not {self.file_mode!r:.80}",
                field="file_mode",
            )
        if not isinstance(self.fsync, bool):
            raise ConfigError(f"fsync must be True or False, not {self.fsync!r:.80}", field="fsync")

    def to_json(self) -> dict[str, JSON]:
        """Return every field as a JSON object (the path as a string): the config, whole.

        ``QueueConfig.from_json(config.to_json()) == config``; this is how a config
        travels to a broker process and back in its ``ping``.
        """
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, fields: object) -> QueueConfig:
        """Build a config from ``to_json``'s object; an unknown or bad field is a ``ConfigError``."""
        if not isinstance(fields, dict):
            raise ConfigError(f"a queue config must be a JSON object, not {fields!r:.80}", field="config")
        return cls.from_options(**fields)

    @classmethod
    def from_options(cls, **options: object) -> QueueConfig:
        """Build a config from keyword options, naming an unknown one in a ``ConfigError``."""
        unknown = sorted(set(options) - set(CONFIG_FIELDS))
        if unknown:
            known = ", ".join(CONFIG_FIELDS)
            raise ConfigError(
                f"unknown queue option {unknown[0]!r}; the options are: {known}", field=unknown[0]
            )
        return cls(**options)  # type: ignore[arg-type]


def _plain(value: object) -> JSON:
    return str(value) if isinstance(value, Path) else value


#: The names of ``QueueConfig``'s fields, in order: derive flags and controls from these.
CONFIG_FIELDS: Final = tuple(f.name for f in dataclasses.fields(QueueConfig))
#: The fields a server queue (PostgreSQL, Redis) takes; the others are the file queue's.
SERVER_FIELDS: Final = ("lease", "max_attempts", "max_payload_bytes", "fsync")
CLAIMS: Final = ("skip_locked", "for_update")  #: how a PostgreSQL queue claims its rows


def refuse_file_options(options: Mapping[str, object], server: str) -> None:
    """Raise ``ConfigError`` naming the first file-queue option in ``options`` (``server``: who refuses)."""
    for name in CONFIG_FIELDS:
        if name in options and name not in SERVER_FIELDS:
            raise ConfigError(f"{name} is an option of the file queue, not of {server}", field=name)
