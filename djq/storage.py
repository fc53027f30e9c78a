"""``Queue.json`` as bytes and as a file: the codec, and read-if-changed and atomic write.

Storage knows bytes and files, not rules: it never decides a task's fate. ``encode`` and
``decode`` are pure; ``QueueFile`` reads the file only when it changed since this process
last read it, and replaces it atomically (temp file in the same folder created 0600 with
``O_EXCL|O_NOFOLLOW``, written, fsynced, ``os.replace``d, folder fsynced), so a crash
leaves the old file or the new one, never half of one. A failed fsync never leads to a
replace. A corrupt, foreign or newer file raises ``CorruptQueueError`` and is never
overwritten. Imports from djq: ``errors``, ``model``, ``state``.

The format (version 1), one JSON object::

    {"format": "djq.queue", "version": 1, "revision": 7, "next_seq": 4,
     "put_total": 3, "acked_total": 1, "dead_total": 0,
     "tasks": [{"id": "2", "seq": 2, "state": "leased", "priority": 0, "attempts": 1,
                "max_attempts": 5, "enqueued_at": 1764300000.1, "available_at": 1764300000.1,
                "lease": {"owner": "pid-41", "token": "9f2c", "expires_at": 1764300030.2},
                "payload": {"n": 2}}, ...]}

Example:
    >>> from djq.state import QueueState, put
    >>> s = QueueState()
    >>> _ = put(s, {"n": 1}, now=0.0)
    >>> decode(encode(s), "Queue.json").tasks["1"].payload
    {'n': 1}
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from .errors import ConfigError, CorruptQueueError, PayloadError, StorageError, UnsupportedVersion
from .model import DEFAULT_MAX_FILE_BYTES, JSON, TaskState
from .state import QueueState, Record

__all__ = ["FORMAT", "VERSION", "QueueFile", "check_payload", "decode", "encode", "temp_files"]

logger = logging.getLogger(__name__)

FORMAT: Final = "djq.queue"  #: the value of "format" in every djq queue file
VERSION: Final = 1  #: the format version this djq writes and reads
_STATES: Final = {s.value: s for s in (TaskState.READY, TaskState.LEASED, TaskState.DEAD)}
_STORAGES: Final = ("rewrite", "journal")
_COUNTERS: Final = ("revision", "next_seq", "put_total", "acked_total", "dead_total")


def check_payload(payload: JSON, *, max_bytes: int) -> JSON:
    """Return a private copy of ``payload`` after checking it survives a JSON round trip.

    Raises:
        PayloadError: orjson cannot write it, it reads back different (NaN, infinities,
            tuples, dates, dataclasses, ...), or it encodes to more than ``max_bytes``.
    """
    try:
        data = orjson.dumps(payload)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise PayloadError(f"payload is not JSON that djq can store: {exc}") from exc
    if len(data) > max_bytes:
        raise PayloadError(f"payload is {len(data)} bytes encoded, over the limit of {max_bytes}")
    copy = orjson.loads(data)
    if copy != payload or not _same_types(copy, payload):
        raise PayloadError(
            "payload does not survive a JSON round trip unchanged (NaN or infinity, a tuple, "
            f"a date, a dataclass or another non-JSON type?): {data[:80]!r}"
        )
    return copy


def _same_types(copy: Any, original: Any) -> bool:
    """Check what ``==`` forgives: 1 == 1.0 == True, and -0.0 == 0.0 are different JSON."""
    if type(copy) is not type(original):
        return False
    if isinstance(copy, dict):
        return all(_same_types(copy[k], original[k]) for k in copy)
    if isinstance(copy, list):
        return all(_same_types(a, b) for a, b in zip(copy, original, strict=True))
    return True


def encode(state: QueueState) -> bytes:
    """Return the bytes of ``Queue.json`` for ``state``."""
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
    doc["storage"] = state.storage
    doc["generation"] = state.generation
    doc["tasks"] = tasks
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def decode(data: bytes, path: str | os.PathLike[str]) -> QueueState:
    """Parse and validate the bytes of a queue file.

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
    state.storage = doc.get("storage", "rewrite")
    state.generation = doc.get("generation", 0)
    if state.storage not in _STORAGES or type(state.generation) is not int or state.generation < 0:
        raise CorruptQueueError(path=where, reason='"storage" or "generation" is not one djq writes')
    tasks = doc.get("tasks")
    if not isinstance(tasks, list):
        raise CorruptQueueError(path=where, reason='"tasks" must be a list')
    for index, item in enumerate(tasks):
        record = _record(item, index, where)
        if record.id in state.tasks:
            raise CorruptQueueError(path=where, reason=f"tasks[{index}]: duplicate id {record.id!r}")
        if record.seq >= state.next_seq:
            raise CorruptQueueError(path=where, reason=f'tasks[{index}]: seq is not below "next_seq"')
        state.tasks[record.id] = record
    return state


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


def temp_files(path: Path) -> list[Path]:
    """Return the temp files a djq writer of ``path`` may have left behind (crashed mid-write)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


class QueueFile:
    """One ``Queue.json``: read only when changed, replaced atomically.

    Not safe across ``fork()``: a child process opens its own. Callers hold the queue's
    lock around ``load`` + ``save``; ``load`` alone is safe without it because the file
    is only ever replaced, never rewritten in place.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        mode: int = 0o600,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        journal: bool = False,
    ) -> None:
        """Describe the file; touches nothing on disk (``journal``: used by ``JournalFile``)."""
        self.path = Path(path)
        self.journal = journal
        self.fsync = fsync
        self.mode = mode
        self.max_file_bytes = max_file_bytes
        self.reads = 0  #: times the file was actually read and decoded
        self.writes = 0  #: times the file was replaced
        self._state: QueueState | None = None
        self._key: tuple[int, ...] | None = None
        self._fd: int | None = None  # holds the inode we last saw, so its number can't be reused

    def close(self) -> None:
        """Forget the cached state and close the held file."""
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the cached state: the next ``load`` reads the file."""
        self._state = None
        self._key = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def has_changed(self) -> bool:
        """Return whether the file differs from what this process last read or wrote."""
        return self._state is None or self._stat_key() != self._key

    def file_bytes(self) -> int:
        """Return the size of the file as last read or written (0 when it did not exist)."""
        return 0 if self._key is None else self._key[2]

    def _stat_key(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("cannot stat", exc) from exc
        if stat.S_ISLNK(st.st_mode):
            raise StorageError(
                f"{self.path} is a symbolic link; djq refuses to follow it",
                path=str(self.path),
                errno=errno.ELOOP,
            )
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> QueueState:
        """Return the state in the file, reading it only if it changed.

        The returned object is this ``QueueFile``'s cache: mutate it only under the lock,
        then ``save`` it, or ``invalidate`` on failure.
        """
        key = self._stat_key()
        if self._state is not None and key == self._key:
            return self._state
        if key is None:
            self.invalidate()
            self._state = QueueState()
            return self._state
        return self._read()

    def _read(self) -> QueueState:
        self.invalidate()
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            self._state = QueueState()
            return self._state
        except OSError as exc:
            raise self._error("cannot open", exc) from exc
        try:
            st, state = self._decode_open(fd)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise self._error("cannot read", exc) from exc
            raise
        if state.storage == "journal" and not self.journal:
            os.close(fd)
            raise ConfigError(
                f"{self.path} uses journal storage (changes are in {self.path.name}.journal); "
                "open it with storage='journal'",
                field="storage",
            )
        self.reads += 1
        self._fd, self._state = fd, state
        self._key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return state

    def _decode_open(self, fd: int) -> tuple[os.stat_result, QueueState]:
        """Check what ``fd`` is before reading it (no FIFO, no huge file), then decode it."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptQueueError(path=str(self.path), reason="not a regular file")
        if st.st_size > self.max_file_bytes:
            raise CorruptQueueError(
                path=str(self.path), reason=f"{st.st_size} bytes is over the limit of {self.max_file_bytes}"
            )
        return st, decode(_read_all(fd, st.st_size), self.path)

    def save(self, state: QueueState) -> None:
        """Replace the file with ``state``, atomically; durable on return when ``fsync``.

        On any error the old file is intact, the temp file is removed, and the cache is
        dropped (the caller's ``state`` no longer matches the file).

        Raises:
            StorageError: the folder is not writable, the disk is full, an fsync failed...
        """
        data = encode(state)
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        if len(data) > self.max_file_bytes:
            self.invalidate()
            raise StorageError(
                f"{self.path} would grow to {len(data)} bytes, over max_file_bytes={self.max_file_bytes}; "
                "ack or purge tasks, or open the queue with a larger limit",
                path=str(self.path),
                errno=errno.EFBIG,
            )
        self._stat_key()  # refuses a symlink at the path: os.replace would silently swap it
        try:
            fd = os.open(tmp, flags, self.mode)
        except FileNotFoundError:
            self.make_folder()
            fd = self._open_temp(tmp, flags)
        except OSError as exc:
            self.invalidate()
            raise self._error("cannot create a temp file beside", exc) from exc
        try:
            os.fchmod(fd, self.mode)  # the umask may have removed bits from the mode asked for
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)  # the data is durable before the name points at it
            os.replace(tmp, self.path)
        except BaseException as exc:
            os.close(fd)
            _unlink_quietly(tmp)
            self.invalidate()
            if isinstance(exc, OSError):
                raise self._error("cannot write", exc) from exc
            raise
        self.writes += 1
        self._swap_cache(fd, state)
        if self.fsync:
            self._fsync_folder()

    def _open_temp(self, tmp: Path, flags: int) -> int:
        try:
            return os.open(tmp, flags, self.mode)
        except OSError as exc:
            self.invalidate()
            raise self._error("cannot create a temp file beside", exc) from exc

    def _swap_cache(self, fd: int, state: QueueState) -> None:
        st = os.fstat(fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._state = fd, state
        self._key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def make_folder(self) -> None:
        """Create the queue's folder and any missing parents, each 0700 (owner only).

        ``Path.mkdir(parents=True)`` would give the parents the umask's mode, which may
        leave a world-writable folder on the queue's path.
        """
        missing = []
        folder = self.path.parent.absolute()
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
                os.chmod(folder, 0o700)  # the umask may have removed bits from the mode asked for
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._error("cannot create the folder of", exc) from exc

    def _fsync_folder(self) -> None:
        try:
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)  # the rename itself is durable
            finally:
                os.close(dfd)
        except OSError as exc:
            self.invalidate()
            raise self._error("cannot fsync the folder of", exc) from exc

    def remove_temp_files(self) -> list[Path]:
        """Remove temp files left by crashed writers; call only while holding the lock."""
        removed = []
        for tmp in temp_files(self.path):
            if _unlink_quietly(tmp):
                removed.append(tmp)
        if removed:
            logger.info("removed %d temp file(s) left by crashed writers of %s", len(removed), self.path)
        return removed

    def _error(self, what: str, exc: OSError) -> StorageError:
        reason = exc.strerror or str(exc)
        return StorageError(f"{what} {self.path}: {reason}", path=str(self.path), errno=exc.errno)


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, max(size, 1 << 16))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]  # os.write may write less than asked


def _unlink_quietly(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:
        return False
    return True
