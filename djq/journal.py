"""Journal storage: ``Queue.json`` is a snapshot, and every change is a line appended beside it.

Rewriting all of ``Queue.json`` for every call costs O(tasks in the queue). In journal
storage a call appends one line per event to ``Queue.json.journal`` instead (one
``write``, and one ``fdatasync`` with ``fsync``), and each process applies only the
lines it has not seen yet, with the same pure transitions (``state.apply``): the events
are deterministic given the state and their ``now``, so every process rebuilds the
same state. When the journal outgrows the snapshot (and at least ``compact_bytes``), it
is folded into a fresh ``Queue.json`` (atomic replace) with the next ``generation``, and
the journal is replaced by an empty one of that generation. The journal's first line
names its generation, so a reader never applies an old journal to a new snapshot: a
journal older than the snapshot was folded already and is ignored; one newer than the
snapshot means the snapshot read was stale, and it is read again.

A line is ``<crc32 of the JSON, 8 hex digits> <JSON>`` and a newline. A writer killed mid-append
leaves a last line without its newline (or with a bad checksum): it is never applied,
and the next writer cuts it off before appending. A bad line before the last is
corruption (``CorruptQueueError``), never skipped. Imports from djq: ``errors``,
``model``, ``state``, ``storage``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import stat
import zlib
from pathlib import Path
from typing import Any, Final

import orjson

from . import state
from .errors import CorruptQueueError, LeaseError, StorageError
from .model import DEFAULT_COMPACT_BYTES, DEFAULT_MAX_FILE_BYTES, TaskState
from .state import QueueState
from .storage import QueueFile

__all__ = ["JOURNAL_FORMAT", "JournalFile", "decode_line", "encode_line", "journal_path"]

JOURNAL_FORMAT: Final = "djq.journal"
JOURNAL_VERSION: Final = 1

_EVENTS: Final[dict[str, type[Any]]] = {
    "put": state.Put,
    "put_many": state.PutMany,
    "lease": state.LeaseNext,
    "lease_many": state.LeaseMany,
    "ack": state.Ack,
    "ack_many": state.AckMany,
    "nack": state.Nack,
    "extend": state.Extend,
    "requeue": state.Requeue,
    "purge": state.Purge,
    "reap": state.Reap,
}
_OPS: Final = {cls: op for op, cls in _EVENTS.items()}
_FIELDS: Final = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _EVENTS.values()}


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Return the journal's path for a queue file: ``Queue.json.journal``."""
    p = Path(path)
    return p.with_name(p.name + ".journal")


def encode_line(event: state.Event, now: float) -> bytes:
    """Return one journal line: checksum, space, the event as JSON, newline."""
    doc = orjson.dumps({"op": _OPS[type(event)], "now": now, **_event_doc(event)})
    return b"%08x %s\n" % (zlib.crc32(doc), doc)


def decode_line(line: bytes) -> tuple[state.Event, float]:
    """Parse one journal line (without its newline) back into ``(event, now)``.

    Raises:
        ValueError: the checksum does not match, or the line is not a djq event.
    """
    if len(line) < 10 or line[8:9] != b" ":
        raise ValueError("not a journal line")
    doc = line[9:]
    if int(line[:8], 16) != zlib.crc32(doc):
        raise ValueError("checksum mismatch")
    fields = orjson.loads(doc)
    op, now = fields.pop("op"), fields.pop("now")
    cls = _EVENTS[op]
    if cls is state.PutMany:
        fields["payloads"] = tuple(fields["payloads"])
    elif cls is state.LeaseMany:
        fields["tokens"] = tuple(fields["tokens"])
    elif cls is state.AckMany:
        fields["leases"] = tuple((i, t) for i, t in fields["leases"])
    elif cls is state.Purge and fields["states"] is not None:
        fields["states"] = frozenset(TaskState(s) for s in fields["states"])
    if type(now) not in (int, float):
        raise ValueError("bad time")
    return cls(**fields), float(now)


def _event_doc(event: state.Event) -> dict[str, Any]:
    """The event's fields as JSON-ready values."""
    if isinstance(event, state.Purge):
        return {"states": None if event.states is None else sorted(event.states)}
    fields = {name: getattr(event, name) for name in _FIELDS[type(event)]}
    if isinstance(event, state.PutMany):
        fields["payloads"] = list(event.payloads)
    return fields


class JournalFile:
    """``Queue.json`` plus ``Queue.json.journal``, with ``QueueFile``'s interface.

    Callers hold the queue's lock around ``load`` + ``save``, as for ``QueueFile``;
    ``load`` alone is safe without it (a torn or newer-than-read line is never applied).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        mode: int = 0o600,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        compact_bytes: int = DEFAULT_COMPACT_BYTES,
    ) -> None:
        """Describe the files; touches nothing on disk."""
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.fsync = fsync
        self.mode = mode
        self.max_file_bytes = max_file_bytes
        self.compact_bytes = compact_bytes
        self.snapshot = QueueFile(path, fsync=fsync, mode=mode, max_file_bytes=max_file_bytes, journal=True)
        self.appends = 0  #: appends to the journal
        self.compactions = 0  #: snapshots written
        self._base: QueueState | None = None  # the snapshot state the journal was applied onto
        self._fd: int | None = None  # the journal we read and append to
        self._ino = -1
        self._offset = 0  # bytes of the journal applied (always at a line's end)
        self._size = 0  # the journal's size when last looked at
        self._stale = False  # the journal is older than the snapshot: ignore, reset before appending
        self._last: tuple[int, bytes] | None = None  # where the last line we applied starts, its checksum

    @property
    def reads(self) -> int:
        """Times the snapshot was read and decoded."""
        return self.snapshot.reads

    @property
    def writes(self) -> int:
        """Times something was written: appends and compactions."""
        return self.appends + self.compactions

    def close(self) -> None:
        """Forget the cached state and close the held files."""
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the cached state: the next ``load`` reads the snapshot and the journal."""
        self.snapshot.invalidate()
        self._base = None
        self._close_journal()

    def _close_journal(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._ino, self._offset, self._size, self._stale = None, -1, 0, 0, False
        self._last = None

    def has_changed(self) -> bool:
        """Return whether the snapshot or the journal differ from what this process applied."""
        if self._base is None or self.snapshot.has_changed():
            return True
        st = self._stat()
        return (st is None) != (self._fd is None) or (
            st is not None and (st.st_ino, st.st_size) != (self._ino, self._size)
        )

    def file_bytes(self) -> int:
        """Return the bytes of the snapshot and the journal, as last seen."""
        return self.snapshot.file_bytes() + self._size

    def make_folder(self) -> None:
        """Create the queue's folder (0700), as ``QueueFile.make_folder``."""
        self.snapshot.make_folder()

    def remove_temp_files(self) -> list[Path]:
        """Remove temp files left by crashed writers; call only while holding the lock."""
        return self.snapshot.remove_temp_files()

    # Reading

    def load(self) -> QueueState:
        """Return the state: the snapshot with every complete journal line applied.

        Raises:
            CorruptQueueError: the snapshot or a journal line before the last is corrupt.
        """
        for _ in range(5):
            current = self.snapshot.load()
            if current is not self._base:  # a snapshot we have not applied the journal to
                self._close_journal()
                self._base = current
            try:
                caught_up = self._catch_up(current)
            except BaseException:
                self.invalidate()  # lines may be applied to the cached snapshot already: never reuse it
                raise
            if caught_up:
                current.applied = []
                return current
            self.invalidate()  # the journal is newer than the snapshot we read: read both again
        raise CorruptQueueError(path=str(self.journal), reason="its generation is ahead of the snapshot's")

    def _stat(self) -> os.stat_result | None:
        try:
            st = os.stat(self.journal, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error("cannot stat", self.journal, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise CorruptQueueError(path=str(self.journal), reason="not a regular file")
        return st

    def _catch_up(self, current: QueueState) -> bool:
        """Apply the journal lines this process has not applied; False if the snapshot is stale."""
        st = self._stat()
        if st is None:
            if self._offset:  # the journal we applied was replaced: so was the snapshot
                return False
            self._close_journal()
            return True
        if st.st_ino != self._ino:
            if self._offset:
                return False
            self._open(st)
        if st.st_size > self.max_file_bytes:
            raise CorruptQueueError(path=str(self.journal), reason=f"{st.st_size} bytes is over the limit")
        self._size = st.st_size
        if self._last is not None and not self._still_there(st.st_size):
            return False  # lines we applied were cut off (an append that failed): read it all again
        if self._stale or st.st_size <= self._offset:
            return True
        data = os.pread(self._fd, st.st_size - self._offset, self._offset)  # type: ignore[arg-type]
        start = 0
        if self._offset == 0:
            end = data.find(b"\n")
            if end < 0:
                return True  # a header being written, or torn: nothing to apply
            generation = _header(data[:end], self.journal)
            if generation < current.generation:
                self._stale = True  # folded into the snapshot already
                return True
            if generation > current.generation:
                return False
            start = end + 1
        self._offset += start + self._replay(current, data, start)
        return True

    def _still_there(self, size: int) -> bool:
        """Whether the last line we applied is still in the journal, where we read it.

        A writer whose append fails cuts it off again, after a lock-free reader may have
        applied it; the next appends can then reuse those bytes, even to the same size.
        """
        at, checksum = self._last  # type: ignore[misc]
        return size >= self._offset and os.pread(self._fd, len(checksum), at) == checksum  # type: ignore[arg-type]

    def _open(self, st: os.stat_result) -> None:
        self._close_journal()
        try:
            fd = os.open(self.journal, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise _error("cannot open", self.journal, exc) from exc
        self._fd, self._ino = fd, os.fstat(fd).st_ino

    def _replay(self, current: QueueState, data: bytes, start: int) -> int:
        """Apply every complete line of ``data`` from ``start``; return the bytes applied."""
        pos = start
        current.applied = None
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                return pos - start  # a torn last line (or none): never applied
            try:
                event, now = decode_line(data[pos:end])
            except (ValueError, KeyError, TypeError) as exc:
                if data.find(b"\n", end + 1) < 0:
                    return pos - start  # the last line is damaged: torn, never applied
                raise CorruptQueueError(
                    path=str(self.journal), reason=f"bad line at byte {self._offset + pos}: {exc}"
                ) from None
            try:
                state.apply(current, event, now=now)
            except LeaseError as exc:
                raise CorruptQueueError(
                    path=str(self.journal), reason=f"line at byte {self._offset + pos} does not apply: {exc}"
                ) from None
            self._last = (self._offset + pos, data[pos : pos + 8])
            pos = end + 1

    # Writing

    def save(self, current: QueueState) -> None:
        """Append the events applied since ``load`` (one write); compact when the journal is big.

        Raises:
            StorageError: the journal could not be written; it is as before, the cache dropped.
        """
        events = current.applied
        if events is None or current.storage != "journal" or current is not self._base:
            self.compact(current)  # changes we cannot replay, or a queue not yet in journal storage
            return
        if not events:
            return
        data = b"".join(encode_line(event, now) for event, now in events)
        if self._offset + len(data) > self.max_file_bytes:
            self.compact(current)  # the journal never grows past what a reader accepts
            return
        try:
            if self._fd is None or self._stale or self._offset == 0:  # 0: no complete header
                self._reset(current.generation)
            elif self._size != self._offset:
                os.ftruncate(self._fd, self._offset)  # cut off a torn line left by a dead writer
            _append(self._fd, data)  # type: ignore[arg-type]
            if self.fsync:
                os.fdatasync(self._fd)  # type: ignore[arg-type]
        except OSError as exc:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._offset)  # never leave half of our own append
            self.invalidate()
            raise _error("cannot append to", self.journal, exc) from exc
        last = data.rfind(b"\n", 0, len(data) - 1) + 1
        self._last = (self._offset + last, data[last : last + 8])
        self._offset += len(data)
        self._size = self._offset
        self.appends += 1
        current.applied = []
        if self._offset > max(min(self.compact_bytes, self.max_file_bytes // 2), self.snapshot.file_bytes()):
            self.compact(current)

    def compact(self, current: QueueState) -> None:
        """Fold the state into a fresh snapshot of the next generation and start an empty journal."""
        current.generation += 1
        current.storage = "journal"
        current.applied = None
        try:
            self.snapshot.save(current)  # atomic: a crash leaves the old snapshot and journal
            self._reset(current.generation)  # a crash before this leaves a stale journal: ignored
        except BaseException:
            self.invalidate()
            raise
        self._base = current
        current.applied = []
        self.compactions += 1

    def _reset(self, generation: int) -> None:
        """Replace the journal atomically with an empty one of ``generation``."""
        header = orjson.dumps(
            {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "generation": generation}
        )
        header += b"\n"
        tmp = self.path.parent / f".{self.path.name}.journal.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, self.mode)
        except OSError as exc:
            raise _error("cannot create a temp file beside", self.journal, exc) from exc
        try:
            os.fchmod(fd, self.mode)
            _append(fd, header)
            if self.fsync:
                os.fsync(fd)
            os.replace(tmp, self.journal)
        except BaseException as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise _error("cannot write", self.journal, exc) from exc
            raise
        os.close(fd)
        if self.fsync:
            self.snapshot._fsync_folder()
        self._close_journal()
        st = self._stat()
        if st is None:  # pragma: no cover - we just created it under the lock
            raise StorageError(f"{self.journal} vanished", path=str(self.journal), errno=errno.ENOENT)
        self._open(st)
        self._offset = self._size = len(header)

    def cut_torn(self) -> bool:
        """Cut off a torn last journal line (after ``load``, under the lock); True if there was one."""
        if self._fd is None or self._stale or self._size == self._offset:
            return False
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError as exc:
            raise _error("cannot truncate", self.journal, exc) from exc
        self._size = self._offset
        return True

    # Checking

    def check(self) -> list[str]:
        """Validate the journal against the snapshot; return the problems (empty when healthy)."""
        self.invalidate()
        try:
            snapshot = self.snapshot.load()
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return []
        except (OSError, CorruptQueueError) as exc:
            return [str(exc)]
        end = data.find(b"\n")
        if end < 0:
            return [f"{self.journal}: no complete header line"] if data else []
        try:
            generation = _header(data[:end], self.journal)
        except CorruptQueueError as exc:
            return [str(exc)]
        if generation < snapshot.generation:
            return []  # folded already; the next write replaces it
        if generation > snapshot.generation:
            return [
                f"{self.journal}: generation {generation} is ahead of the snapshot's {snapshot.generation}"
            ]
        problems = []
        try:
            applied = self._replay(snapshot, data, end + 1)
        except CorruptQueueError as exc:
            return [str(exc)]
        finally:
            self.invalidate()
        torn = len(data) - (end + 1) - applied
        if torn:
            problems.append(
                f"{self.journal}: a torn last line of {torn} bytes (never applied; the next write cuts it)"
            )
        return problems


def _header(line: bytes, where: Path) -> int:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        doc = None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != JOURNAL_FORMAT
        or type(doc.get("generation")) is not int
    ):
        raise CorruptQueueError(path=str(where), reason="not a djq journal (bad header line)")
    return int(doc["generation"])


def _append(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written != len(data):  # O_APPEND on a regular file writes all or fails, unless the disk filled
        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")


def _error(what: str, path: Path, exc: OSError) -> StorageError:
    return StorageError(f"{what} {path}: {exc.strerror or exc}", path=str(path), errno=exc.errno)
