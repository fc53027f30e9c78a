"""``Queue.json``: its codec and its file (read only when changed, replaced atomically).

``encode`` and ``decode`` are pure. ``SnapshotFile`` reads the file only when it changed
since this process last read it and replaces it with ``files.write_atomic``, so a crash
leaves the old file or the new one, never half of one; a failed fsync never leads to a
replace. A corrupt, foreign or newer file raises ``CorruptQueueError`` and is never
overwritten. Both storages (``storage.QueueFile``, ``journal.JournalFile``) keep their
state in one. Imports from djq: ``errors``, ``files``, ``model``, ``state``.

The format (version 1), one JSON object::

    {"format": "djq.queue", "version": 1, "revision": 7, "next_seq": 4,
     "put_total": 3, "acked_total": 1, "dead_total": 0, "storage": "journal", "generation": 2,
     "tasks": [{"id": "2", "seq": 2, "state": "leased", "priority": 0, "attempts": 1,
                "max_attempts": 5, "enqueued_at": 1764300000.1, "available_at": 1764300000.1,
                "lease": {"owner": "pid-41", "token": "9f2c", "expires_at": 1764300030.2},
                "payload": {"n": 2}}, ...]}

Example:
    >>> from djq.state import QueueState, put
    >>> s = QueueState()
    >>> _ = put(s, {"n": 1}, now=0.0)
    >>> decode(encode(s), "Queue.json").state.tasks["1"].payload
    {'n': 1}
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from . import files
from .errors import CorruptQueueError, StorageError, UnsupportedVersion
from .model import DEFAULT_MAX_FILE_BYTES, TaskState
from .state import QueueState, Record

__all__ = ["FORMAT", "VERSION", "Snapshot", "SnapshotFile", "decode", "encode"]

logger = logging.getLogger(__name__)

FORMAT: Final = "djq.queue"  #: the value of "format" in every djq queue file
VERSION: Final = 1  #: the format version this djq writes and reads
_STATES: Final = {s.value: s for s in (TaskState.READY, TaskState.LEASED, TaskState.DEAD)}
_STORAGES: Final = ("rewrite", "journal")
_COUNTERS: Final = ("revision", "next_seq", "put_total", "acked_total", "dead_total")


@dataclass(slots=True)
class Snapshot:
    """A decoded ``Queue.json``: the queue's state, and which storage wrote it at what generation."""

    state: QueueState
    storage: str = "rewrite"  #: "rewrite" or "journal"
    generation: int = 0  #: snapshots written by journal storage (0 in rewrite storage)


def encode(state: QueueState, *, storage: str = "rewrite", generation: int = 0) -> bytes:
    """Return the bytes of ``Queue.json`` for ``state``, written by ``storage`` at ``generation``."""
    tasks = [
        {
            "id": r.id,
            "seq": r.seq,
            "state": r.state,  # orjson writes a StrEnum as its value
            "priority": r.priority,
            "attempts": r.attempts,
            "max_attempts": r.max_attempts,
            "enqueued_at": r.enqueued_at,
            "available_at": r.available_at,
            "lease": None
            if r.token is None
            else {"owner": r.owner, "token": r.token, "expires_at": r.lease_expires_at},
            "payload": r.payload,
        }
        for r in state.tasks.values()
    ]
    doc = {"format": FORMAT, "version": VERSION, **{k: getattr(state, k) for k in _COUNTERS}}
    doc["storage"] = storage
    doc["generation"] = generation
    doc["tasks"] = tasks
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def decode(data: bytes, path: str | os.PathLike[str]) -> Snapshot:
    """Parse and validate the bytes of a queue file: its state, and the storage that wrote it.

    Raises:
        CorruptQueueError: not JSON, not a djq queue, or a field is missing or wrong; the
            message names the path and the field.
        UnsupportedVersion: written in a newer format version.
    """
    where = os.fspath(path)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = "the file is empty" if not data else f"not valid JSON ({exc})"
        raise CorruptQueueError(path=where, reason=reason) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptQueueError(path=where, reason=f'not a djq queue (no "format": "{FORMAT}")')
    version = doc.get("version")
    if type(version) is not int:
        raise CorruptQueueError(path=where, reason='"version" is missing or not an integer')
    if version > VERSION:
        raise UnsupportedVersion(
            path=where, reason=f"format version {version} is newer than this djq reads ({VERSION})"
        )
    if version < 1:
        raise CorruptQueueError(path=where, reason=f"unknown format version {version}")
    state = QueueState()
    for key in _COUNTERS:
        value = doc.get(key)
        if type(value) is not int or value < 0:
            raise CorruptQueueError(path=where, reason=f'"{key}" must be a non-negative integer')
        setattr(state, key, value)
    storage, generation = doc.get("storage", "rewrite"), doc.get("generation", 0)
    if storage not in _STORAGES or type(generation) is not int or generation < 0:
        raise CorruptQueueError(path=where, reason='"storage" or "generation" is not one djq writes')
    tasks = doc.get("tasks")
    if not isinstance(tasks, list):
        raise CorruptQueueError(path=where, reason='"tasks" must be a list')
    for index, item in enumerate(tasks):
        record = _record(item, index, where)
        if record.id in state.tasks:
            raise CorruptQueueError(path=where, reason=f"tasks[{index}]: duplicate id {record.id!r}")
        if record.seq >= state.next_seq:
            reason = f'tasks[{index}]: seq {record.seq} of task {record.id!r} is not below "next_seq"'
            raise CorruptQueueError(path=where, reason=reason)
        if record.id != str(record.seq):  # djq names a task by its seq: a put would reuse any other id
            reason = f'tasks[{index}]: id {record.id!r} is not its "seq" ({record.seq}) as djq writes it'
            raise CorruptQueueError(path=where, reason=reason)
        state.tasks[record.id] = record
    return Snapshot(state, storage, generation)


def _record(item: Any, index: int, where: str) -> Record:
    """Build one ``Record``: a fast path for good input, a diagnosis for bad."""
    try:
        lease = item["lease"]
        state = _STATES[item["state"]]
        record = Record(
            id=item["id"],
            seq=item["seq"],
            payload=item["payload"],
            priority=item["priority"],
            state=state,
            attempts=item["attempts"],
            max_attempts=item["max_attempts"],
            enqueued_at=item["enqueued_at"],
            available_at=item["available_at"],
            owner=None if lease is None else lease["owner"],
            token=None if lease is None else lease["token"],
            lease_expires_at=None if lease is None else lease["expires_at"],
        )
    except (KeyError, TypeError):
        raise _diagnose(item, index, where) from None
    # orjson never yields NaN or infinities, so a number's type is enough here.
    if (
        type(record.id) is str
        and record.id
        and type(record.seq) is int
        and record.seq >= 1
        and type(record.priority) is int
        and type(record.attempts) is int
        and record.attempts >= 0
        and type(record.max_attempts) is int
        and record.max_attempts >= 1
        and type(record.enqueued_at) in _NUMBERS
        and type(record.available_at) in _NUMBERS
        and (lease is None) == (state is not TaskState.LEASED)
        and (
            lease is None
            or (
                type(record.owner) is str
                and type(record.token) is str
                and type(record.lease_expires_at) in _NUMBERS
            )
        )
    ):
        return record
    raise _diagnose(item, index, where)


def _diagnose(item: Any, index: int, where: str) -> CorruptQueueError:
    """Name the first wrong field of a task that failed the fast path."""

    def bad(reason: str) -> CorruptQueueError:
        return CorruptQueueError(path=where, reason=f"tasks[{index}]: {reason}")

    if not isinstance(item, dict):
        return bad("not an object")
    missing = _FIELDS.keys() - item.keys()
    if missing:
        return bad(f"missing {', '.join(sorted(missing))}")
    for name, check in _FIELDS.items():
        if not check(item[name]):
            return bad(f'"{name}" has a wrong value: {item[name]!r}')
    lease = item["lease"]
    if (item["state"] == TaskState.LEASED) != (lease is not None):
        return bad('"lease" must be an object exactly when "state" is "leased"')
    return bad('"lease" needs "owner" and "token" strings and an "expires_at" number')


_NUMBERS: Final = (int, float)


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _is_time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


_FIELDS: Final[dict[str, Callable[[Any], bool]]] = {
    "id": lambda v: type(v) is str and v != "",
    "seq": lambda v: _is_int(v, 1),
    "state": lambda v: type(v) is str and v in _STATES,
    "priority": lambda v: type(v) is int,
    "attempts": _is_int,
    "max_attempts": lambda v: _is_int(v, 1),
    "enqueued_at": _is_time,
    "available_at": _is_time,
    "lease": lambda v: True,
    "payload": lambda v: True,
}


class SnapshotFile:
    """One ``Queue.json``: read only when changed, replaced atomically.

    Not safe across ``fork()``: a child process opens its own. ``load`` is safe without
    the lock because the file is only ever replaced, never rewritten in place.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        mode: int = 0o600,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        """Describe the file; touches nothing on disk."""
        self.path = Path(path)
        self._name = os.fspath(self.path)  # a str: os.stat of a Path calls Python code first
        self.fsync = fsync
        self.mode = mode
        self.max_file_bytes = max_file_bytes
        self.reads = 0  #: times the file was actually read and decoded
        self.writes = 0  #: times the file was replaced
        self._snapshot: Snapshot | None = None
        self._key: tuple[int, ...] | None = None
        self._fd: int | None = None  # holds the inode we last saw, so its number can't be reused

    def close(self) -> None:
        """Forget the cached state and close the held file."""
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the cached state: the next ``load`` reads the file."""
        self._snapshot = None
        self._key = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def has_changed(self) -> bool:
        """Return whether the file differs from what this process last read or wrote."""
        return self._snapshot is None or self._stat_key() != self._key

    def file_bytes(self) -> int:
        """Return the size of the file as last read or written (0 when it did not exist)."""
        return 0 if self._key is None else self._key[2]

    def _stat_key(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self._name, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise files.error("cannot stat", self.path, exc) from exc
        if stat.S_ISLNK(st.st_mode):
            raise StorageError(
                f"{self.path} is a symbolic link; djq refuses to follow it",
                path=str(self.path),
                errno=errno.ELOOP,
            )
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> Snapshot:
        """Return the snapshot in the file, reading it only if it changed.

        The returned object is this file's cache: mutate its state only under the lock,
        then ``save`` it, or ``invalidate`` on failure.
        """
        key = self._stat_key()
        if self._snapshot is not None and key == self._key:
            return self._snapshot
        if key is None:
            self.invalidate()
            self._snapshot = Snapshot(QueueState())
            return self._snapshot
        return self._read()

    def _read(self) -> Snapshot:
        self.invalidate()
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            self._snapshot = Snapshot(QueueState())
            return self._snapshot
        except OSError as exc:
            raise files.error("cannot open", self.path, exc) from exc
        try:
            st, snapshot = self._decode_open(fd)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise files.error("cannot read", self.path, exc) from exc
            raise
        self.reads += 1
        self._fd, self._snapshot = fd, snapshot
        self._key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return snapshot

    def _decode_open(self, fd: int) -> tuple[os.stat_result, Snapshot]:
        """Check what ``fd`` is before reading it (no FIFO, no huge file), then decode it."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptQueueError(path=str(self.path), reason="not a regular file")
        if st.st_size > self.max_file_bytes:
            raise CorruptQueueError(
                path=str(self.path), reason=f"{st.st_size} bytes is over the limit of {self.max_file_bytes}"
            )
        return st, decode(files.read_all(fd, st.st_size), self.path)

    def save(self, snapshot: Snapshot) -> None:
        """Replace the file with ``snapshot``, atomically; durable on return when ``fsync``.

        On any error the old file is intact, the temp file is removed, and the cache is
        dropped (the caller's state no longer matches the file).

        Raises:
            StorageError: the folder is not writable, the disk is full, an fsync failed...
        """
        data = encode(snapshot.state, storage=snapshot.storage, generation=snapshot.generation)
        try:
            if len(data) > self.max_file_bytes:
                raise StorageError(
                    f"{self.path} would grow to {len(data)} bytes, over max_file_bytes="
                    f"{self.max_file_bytes}; ack or purge tasks, or open the queue with a larger limit",
                    path=str(self.path),
                    errno=errno.EFBIG,
                )
            self._stat_key()  # refuses a symlink at the path: os.replace would silently swap it
            fd = files.write_atomic(self.path, data, mode=self.mode, fsync=self.fsync, keep_open=True)
        except BaseException:
            self.invalidate()
            raise
        self.writes += 1  # committed: the new file is in place; nothing below may raise
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            self.invalidate()  # the next load reads the file we wrote
            return
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._snapshot = fd, snapshot
        self._key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def make_folder(self) -> None:
        """Create the queue's folder and any missing parents, each 0700 (owner only)."""
        files.make_folder(self.path)

    def remove_temp_files(self) -> list[Path]:
        """Remove temp files left by crashed writers; call only while holding the lock."""
        removed = [tmp for tmp in files.temp_files(self.path) if files.unlink_quietly(tmp)]
        if removed:
            logger.info("removed %d temp file(s) left by crashed writers of %s", len(removed), self.path)
        return removed
