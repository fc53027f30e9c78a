"""Journal storage: ``Queue.json`` is a snapshot, and every change is a line appended beside it.

Rewriting all of ``Queue.json`` for every call costs O(tasks in the queue). In journal
storage a call appends one line per event to ``Queue.json.journal`` instead (one
``write``, and one ``fdatasync`` with ``fsync``), and each process applies only the
lines it has not seen yet, with the same pure transitions (``state.apply``): the events
are deterministic given the state and their ``now``, so every process rebuilds the
same state. A put needs only how many tasks there have been (ids are sequence numbers):
under the lock it counts what the new lines add and appends its own, and leaves applying
them to the next time its process looks at the state, or until they hold more than
``compact_bytes`` (``put_deferred``, ``settle``), with the lock free either way. A
process that only puts mostly never applies them: when the journal is folded its next
call reads the new snapshot instead. When the journal outgrows the
snapshot (and at least ``compact_bytes``), it is folded into a fresh ``Queue.json``
(atomic replace) with the next ``generation``, and the journal is replaced by an empty
one of that generation. The journal's first line names its generation, so a reader
never applies an old journal to a new snapshot: a journal older than the snapshot was
folded already and is ignored; one newer than the snapshot means the snapshot read was
stale, and it is read again.

A line is ``<crc32 of the JSON, 8 hex digits> <JSON>`` and a newline. The journal ends at
its first NUL or the file's end. With ``fsync`` it grows ``GROW`` zero bytes at a time and
lines are written over the zeros, so an ``fdatasync`` flushes data, not the file's size
(a third less time per durable write, ``benchmarks/floors.py`` shows); without, lines go
at the file's end, where a reader finds them with no read. Either reads the other's (and
an older djq's). A writer killed mid-write leaves a last line without its
newline (or with a bad checksum): never applied, and written over by the next writer,
which first cuts off bytes after the end that are not zeros (pages that reached the disk
out of order). A bad line before the last is corruption (``CorruptQueueError``), never
skipped; so is a complete line that does not decode to a valid operation this djq knows
(a newer djq's, say), and a header of a newer journal version. The lines' codec is
``lines``; ``replay`` applies them. Imports from djq: ``errors``, ``files``, ``lines``,
``model``, ``ops``, ``replay``, ``snapshot``, ``state``, ``storage``.

A change is committed when its lines are appended, or, when it is folded, when the new
snapshot is in place. ``save`` raises ``StorageError`` only before that; a compaction
after the append, or starting the new journal after a fold, is housekeeping whose
failure is logged and retried at a later write (tests/test_faults.py fails every I/O
call in turn to hold it to that). With ``fsync`` the append's ``fdatasync`` runs once
the lock is free (``sync``), so other processes append while the disk flushes; each
fdatasyncs before it answers, which flushes the lines before its own too. If the
fdatasync fails, ``sync_failed`` (under the lock again) cuts the change off and raises,
unless another process has appended after it (then it stands, folded into a fresh
snapshot).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import files, ops
from .errors import CorruptQueueError, StorageError
from .lines import JOURNAL_FORMAT, decode_header, decode_line, encode_header, encode_line
from .model import DEFAULT_COMPACT_BYTES, DEFAULT_MAX_FILE_BYTES
from .replay import apply_line, check_journal, count_puts, replay
from .snapshot import Snapshot, SnapshotFile
from .state import QueueState
from .storage import Applied, Problem, check_snapshot

GROW = 64 * 1024  #: zero bytes the journal grows by when a write would reach its end

__all__ = ["GROW", "JOURNAL_FORMAT", "JournalFile", "decode_line", "encode_line", "journal_path"]

logger = logging.getLogger(__name__)


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Return the journal's path for a queue file: ``Queue.json.journal``."""
    p = Path(path)
    return p.with_name(p.name + ".journal")


class JournalFile:
    """Journal storage: ``Queue.json`` plus ``Queue.json.journal``; implements ``storage.Storage``.

    Callers hold the queue's lock around ``load`` + ``save``; ``load`` alone is safe
    without it (a torn or newer-than-read line is never applied).
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
        self._journal = os.fsencode(self.journal)  # bytes: what statx takes, converted once
        self.fsync = fsync
        self.mode = mode
        self.max_file_bytes = max_file_bytes
        self.compact_bytes = compact_bytes
        self.snapshot = SnapshotFile(path, fsync=fsync, mode=mode, max_file_bytes=max_file_bytes)
        self.appends = 0  #: appends to the journal
        self.compactions = 0  #: snapshots written
        self._base: Snapshot | None = None  # the snapshot the journal was applied onto
        self._fd: int | None = None  # the journal we read and append to
        self._ino = -1
        self._offset = 0  # bytes of the journal applied (always at a line's end)
        self._size = 0  # where the journal ended when last looked at (after a torn line, if any)
        self._capacity = 0  # the file's size: the journal and the zeros after it
        self._zeros_to = 0  # the bytes from _size to here were seen to be zeros (-1: some are not)
        self._stale = False  # the journal is older than the snapshot: ignore, reset before appending
        self._last: tuple[int, bytes] | None = None  # where the last line we applied starts, its checksum
        self._last_ours = False  # whether that line is one this process appended (committed, then)
        self._fold_due = False  # an append's durability is unknown: fold at the next save
        # Our last append, written under the lock and fdatasynced once it is free (``sync``):
        # the file it went to (kept open if the journal is closed meanwhile), where it starts, ends.
        self._unsynced: tuple[int, int, int] | None = None
        self._failed_sync: tuple[int, int, int] | None = None  # an append whose fdatasync failed
        # Journal lines past _base.state's, to apply in order (put_deferred): where each starts,
        # and its bytes (others' lines, not decoded yet; op None) or our put and its now.
        self._deferred: list[tuple[int, bytes, ops.Op[Any] | None, float]] = []
        self._ahead = 0  # the tasks the deferred lines add
        # The journal bytes the deferred lines hold: ``settle`` applies them past compact_bytes.
        self._deferred_bytes = 0

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
        stale = self._pending_fds() - {self._fd}  # the journal in use is closed by invalidate
        self._unsynced = self._failed_sync = None
        self.invalidate()
        for fd in stale:
            self._close_stale(fd)

    def invalidate(self) -> None:
        """Forget the cached state: the next ``load`` reads the snapshot and the journal."""
        self.snapshot.invalidate()
        self._base = None
        self._close_journal()

    def _close_journal(self) -> None:
        if self._fd is not None and self._fd not in self._pending_fds():
            os.close(self._fd)
        self._fd, self._ino, self._stale, self._last = None, -1, False, None
        self._offset = self._size = self._capacity = self._zeros_to = self._ahead = self._deferred_bytes = 0
        self._deferred = []

    def cached(self) -> QueueState | None:
        """The state as last read or written, without looking at the files (None: none yet).

        Deferred puts are not in it yet (``put_deferred``): a hint, as the files may have changed too.
        """
        return None if self._base is None else self._base.state

    def has_changed(self) -> bool:
        """Return whether the snapshot or the journal differ from what this process applied."""
        if self._base is None or self.snapshot.has_changed():
            return True
        st = self._stat()
        if st is None or self._fd is None:
            return (st is None) != (self._fd is None)
        if (st.st_ino, st.st_size) != (self._ino, self._capacity) or self._size != self._offset:
            return True  # replaced, grown or cut; or a torn line another writer may have written over
        return self._size < self._capacity and self._pread(1, self._size) != b"\0"

    def file_bytes(self) -> int:
        """Return the bytes of the snapshot and the journal, as last seen."""
        return self.snapshot.file_bytes() + self._size

    def make_folder(self) -> None:
        """Create the queue's folder (0700)."""
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
            snapshot = self.snapshot.load()
            if snapshot is not self._base:  # a snapshot we have not applied the journal to
                self._close_journal()
                self._base = snapshot
            try:
                if self._deferred:
                    self._apply_deferred(snapshot.state)
                caught_up = self._catch_up(snapshot)
            except BaseException:
                self.invalidate()  # lines may be applied to the cached snapshot already: never reuse it
                raise
            if caught_up:
                return snapshot.state
            self.invalidate()  # the journal is newer than the snapshot we read: read both again
        raise CorruptQueueError(path=str(self.journal), reason="its generation is ahead of the snapshot's")

    def _stat(self) -> os.stat_result | None:
        try:
            st = (  # without fsync no fdatasync pays for the times being read: the faster os.stat
                files.stat_untimed(self._journal)
                if self.fsync
                else os.stat(self._journal, follow_symlinks=False)
            )
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise files.error("cannot stat", self.journal, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise CorruptQueueError(path=str(self.journal), reason="not a regular file")
        return st

    def _catch_up(self, snapshot: Snapshot, *, count: bool = False) -> bool:
        """Apply the journal lines this process has not applied; False if the snapshot is stale.

        With ``count`` they are counted and deferred instead (``put_deferred``); then False
        also means a line is not plainly an operation: ``load`` must judge it.
        """
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
        self._capacity = st.st_size
        ours = self._last_ours and st.st_size >= self._offset  # a line we appended is committed: no read
        if self._last is not None and not ours and not self._still_there(st.st_size):
            return False  # lines we applied were cut off (an append that failed): read it all again
        if self._stale or st.st_size <= self._offset:  # nothing after what we applied: no read
            self._size = self._zeros_to = self._offset
            return True
        data = self._read_to_end()
        if not data:
            return True
        start = 0
        if self._offset == 0:
            end = data.find(b"\n")
            if end < 0:
                return True  # a header being written, or torn: nothing to apply
            generation = decode_header(data[:end], self.journal)
            if generation < snapshot.generation:
                self._stale = True  # folded into the snapshot already
                return True
            if generation > snapshot.generation:
                return False
            start = end + 1
        if count:
            return self._defer(data, start)
        self._offset += start + self._replay(snapshot.state, data, start)
        return True

    def _still_there(self, size: int) -> bool:
        """Whether the last line we applied is still in the journal, where we read it.

        A writer whose append fails cuts it off again, after a lock-free reader may have
        applied it; the next appends can then reuse those bytes, even to the same size.
        """
        at, checksum = self._last  # type: ignore[misc]
        return size >= self._offset and self._pread(len(checksum), at) == checksum

    def _read_to_end(self) -> bytes:
        """Read from what we applied to the journal's end (its first NUL); note where it ends."""
        try:
            data, self._zeros_to = files.read_to_zeros(self._fd, self._offset, self._capacity)  # type: ignore[arg-type]
        except OSError as exc:
            raise files.error("cannot read", self.journal, exc) from exc
        self._size = self._offset + len(data)
        return data

    def _pread(self, size: int, at: int) -> bytes:
        try:
            return os.pread(self._fd, size, at)  # type: ignore[arg-type]
        except OSError as exc:
            raise files.error("cannot read", self.journal, exc) from exc

    def _open(self, st: os.stat_result) -> None:
        self._close_journal()
        try:
            fd = os.open(self.journal, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise files.error("cannot open", self.journal, exc) from exc
        self._fd, self._ino = fd, os.fstat(fd).st_ino

    def _defer(self, data: bytes, start: int) -> bool:
        """Count the complete lines of ``data`` from ``start``, defer applying them; False: ``load`` must."""
        counted = count_puts(data, start)
        if counted is None:
            return False
        size, tasks, last = counted
        if size:
            self._deferred.append((self._offset + start, data[start : start + size], None, 0.0))
            self._deferred_bytes += size
            self._ahead += tasks
            self._last, self._last_ours = (self._offset + last, data[last : last + 8]), False
            self._offset += start + size
        return True

    def _apply_deferred(self, current: QueueState) -> None:
        """Apply the deferred lines to ``current``, in journal order."""
        deferred, self._deferred, self._ahead, self._deferred_bytes = self._deferred, [], 0, 0
        for at, data, op, now in deferred:
            if op is None:
                replay(current, data, 0, path=self.journal, at=at)
            else:
                apply_line(current, op, now, path=self.journal, at=at)

    def settle(self, *, everything: bool = False) -> None:
        """Apply the deferred lines, with the lock free, if they hold over ``compact_bytes``; never raises.

        After a put, below that they wait: a process that only puts skips the work when the
        journal is folded first (it reads the new snapshot then, as it would anyway); above
        it, memory stays bounded whatever the snapshot's size lets the journal grow to.
        They are applied too once the journal is due for compaction, so the write that
        folds it holds the lock for almost none of them. With ``everything`` (before a call
        that will load the state under the lock) all of them are applied, so that call
        holds the lock for none of it. A line that does not
        apply (a checksum-valid line no djq writes) drops the cache: the next ``load``
        reads the files afresh and raises ``CorruptQueueError`` naming it.
        """
        if not self._deferred or self._base is None:
            return
        if everything or self._deferred_bytes > self.compact_bytes or self._compaction_due():
            try:
                self._apply_deferred(self._base.state)
            except Exception as exc:
                logger.warning("%s: %s", self.journal, exc)
                self.invalidate()
            except BaseException:  # interrupted halfway: never keep a state with some of the lines
                self.invalidate()
                raise

    def _replay(self, current: QueueState, data: bytes, start: int) -> int:
        """Apply every complete line of ``data`` from ``start``; return the bytes applied."""
        applied, last = replay(current, data, start, path=self.journal, at=self._offset)
        if last >= 0:
            self._last, self._last_ours = (self._offset + last, data[last : last + 8]), False
        return applied

    # Writing

    def put_deferred(self, op: ops.PutMany, now: float) -> list[str] | None:
        """Append a put without applying it, or others' lines before it; return its ids (under the lock).

        A put needs nothing of the state but how many tasks there have been (its ids are
        the next sequence numbers). So under the lock it only counts the tasks that
        others' new lines add (checksum and JSON, about 1 us a line, where applying one
        costs 10 or more) and appends its own line, as ``save`` would; both are kept, in
        order, for the next ``load`` to apply (or ``settle``, once they are many). A
        line that only the rules refuse is found then, after this put is stored. None
        when the put must go the whole way (``load``, apply, ``save``): a snapshot it has
        not read, a fold due, a journal due for compaction (``save`` folds it, and
        ``settle`` applied the deferred lines after the put that made it due, with the
        lock free), a line that is not plainly an operation (a torn one, say), or a
        journal that would outgrow its limit.

        Raises:
            StorageError: the put is not stored; the files are as before, the cache dropped.
        """
        base = self._base
        if base is None or base.storage != "journal" or self._fold_due or self._stale or self._offset == 0:
            return None
        if self._compaction_due():
            return None
        try:
            if self.snapshot.load() is not base or not self._catch_up(base, count=True):
                return None
        except BaseException:
            self.invalidate()
            raise
        first = base.state.next_seq + self._ahead
        data = encode_line(op, now)
        if self._offset + len(data) > self.max_file_bytes:
            return None
        self._append_lines(data, base.generation)
        self._deferred.append((self._offset, b"", op, now))
        self._deferred_bytes += len(data)
        self._ahead += len(op.payloads)
        self._committed(data)
        return [str(first + i) for i in range(len(op.payloads))]

    def _compaction_due(self) -> bool:
        """Whether the journal outgrew the snapshot (and ``compact_bytes``): fold it."""
        threshold = max(min(self.compact_bytes, self.max_file_bytes // 2), self.snapshot.file_bytes())
        return self._offset > threshold

    def save(self, current: QueueState, applied: Applied | None) -> None:
        """Append the operations applied since ``load`` (one write); compact when the journal is big.

        ``applied`` None means the changes cannot be replayed: the state is folded instead.

        The change is committed once durable: the append written (and fdatasynced with
        ``fsync``), or the folded snapshot in place. Only a failure before that raises; the
        housekeeping after it (starting the new journal, a compaction) logs a failure, which
        leaves valid files, and is tried again at a later save: raising then would make a
        retried put duplicate, a failed-looking ack strand its task.

        Raises:
            StorageError: the change is not stored; the files are as before, the cache dropped.
        """
        base = self._base
        if applied is None or base is None or base.storage != "journal" or current is not base.state:
            self._fold(current)  # changes we cannot replay, or a queue not yet in journal storage
            return
        if not applied:
            return
        data = b"".join(encode_line(op, now) for op, now in applied)
        if self._offset + len(data) > self.max_file_bytes or self._fold_due:
            # The journal never grows past what a reader accepts; and after an append of
            # unknown durability, the next change folds all of it.
            self._fold(current)
            return
        self._append_lines(data, base.generation)
        self._committed(data)
        if self._compaction_due():
            try:
                self.compact(current)
            except Exception as exc:  # housekeeping: the change is in the journal already
                logger.warning("%s: compaction failed, tried again at a later write: %s", self.path, exc)

    def _append_lines(self, data: bytes, generation: int) -> None:
        """Append ``data`` with one write (with ``fsync``, ``sync`` fdatasyncs it once the lock is free).

        Raises:
            StorageError: nothing of ``data`` is in the journal; the cache is dropped.
        """
        try:
            if self.fsync:
                files.sync_pending(self.journal)  # a folder fsync that failed after a replace
            self._ready_to_append(generation)
            self._write(data)
        except OSError as exc:
            self._undo()  # never leave half of our own append
            self.invalidate()
            if isinstance(exc, StorageError):
                raise
            raise files.error("cannot append to", self.journal, exc) from exc
        if self.fsync:
            self._forget_unsynced()  # a sync that never ran: this append's fdatasync covers it
            self._unsynced = (self._fd, self._offset, self._offset + len(data))  # type: ignore[assignment]

    def _pending_fds(self) -> set[int]:
        """The journals an append still has to fdatasync (``sync``): kept open until then."""
        return {pending[0] for pending in (self._unsynced, self._failed_sync) if pending is not None}

    def _forget_unsynced(self) -> None:
        """Forget the append to fdatasync (a snapshot fsynced since holds it); close its file if done with."""
        pending, self._unsynced = self._unsynced, None
        if pending is not None:
            self._close_stale(pending[0])

    def sync(self) -> OSError | None:
        """Fdatasync the last append, with the queue's lock free; return the error if that failed.

        While it runs, other processes may append and act on its lines (a lease of a task
        it put, say). Each of them fdatasyncs its own append before it answers, and that
        flushes every line written before it, ours too. So an answered change is durable,
        and so is everything before it in the journal; a crash can lose only changes not
        answered yet, at the journal's end (where the zeros the journal grows by end it).
        On an error, the caller takes the lock again and calls ``sync_failed``. Linux (4.13
        and newer) reports a failed writeback to every open file of the journal at its next
        fdatasync, so a process whose line follows a lost page fails its own flush too
        instead of answering; one that opened the journal after the failure would not.
        """
        if self._failed_sync is not None:  # its sync_failed never ran (no lock): the fold is due
            failed, self._failed_sync = self._failed_sync, None
            self._close_stale(failed[0])
        pending = self._unsynced
        if pending is None:
            return None
        try:
            os.fdatasync(pending[0])
        except OSError as exc:
            self._failed_sync = pending
            self._fold_due = True  # until sync_failed decides: a change of unknown durability
            return exc
        finally:
            self._unsynced = None
        self._close_stale(pending[0])
        return None

    def _close_stale(self, fd: int) -> None:
        """Close ``fd`` if it is neither the journal in use nor one still to flush (never raises)."""
        if fd != self._fd and fd not in self._pending_fds():
            with contextlib.suppress(OSError):  # its data was flushed, or folded: nothing is lost
                os.close(fd)

    def sync_failed(self, error: OSError) -> None:
        """Under the lock again after ``sync`` failed: undo the change if no process acted on it.

        - No line follows ours: ours are cut off, as a failed append's are (a lock-free
          reader that applied them forgets them), and ``StorageError`` is raised.
        - Lines follow ours: their writers acted on ours, so the change stands, and the
          state is folded into a fresh snapshot (fsynced), which makes it durable.
        - The journal was folded since: the snapshot that holds ours is durable already.

        If cutting or folding fails too, the change stands, of unknown durability, and the
        next change this process makes folds everything (logged as an error).

        Raises:
            StorageError: the change is cut off: not stored.
        """
        pending = self._failed_sync
        if pending is None:
            return
        fd, start, end = pending
        try:
            outcome = self._after_failed_sync(fd, start, end)
        except OSError as exc:  # StorageError and CorruptQueueError included
            self._fold_due = True
            outcome = f"the change stands but may not be durable (the next write folds it): {exc}"
        finally:
            self._failed_sync = None
            self._close_stale(fd)
        if outcome is None:
            raise files.error("cannot append to", self.journal, error) from error
        logger.error("%s: an fdatasync failed (%s); %s", self.journal, error, outcome)

    def _after_failed_sync(self, fd: int, start: int, end: int) -> str | None:
        """``sync_failed``'s three cases; None when the change is cut off."""
        st = self._stat()
        if st is None or st.st_ino != os.fstat(fd).st_ino:
            self._fold_due = False
            return "its change was folded into a snapshot since"
        if os.pread(fd, 1, end) in (b"", b"\0"):  # no line after ours
            os.ftruncate(fd, start)
            self._fold_due = False
            self.invalidate()
            return None
        self.compact(self.load())
        return "other processes had acted on its change: it stands, folded into a fresh snapshot"

    def _ready_to_append(self, generation: int) -> None:
        """Start the journal of ``generation`` if it has none to write to (a torn line: ``_write``)."""
        if self._fd is None or self._stale or self._offset == 0:  # 0: no complete header
            self._reset(generation)

    def _write(self, data: bytes) -> None:
        """Write ``data`` where the journal ends, with one ``pwrite``: at the file's end, or over zeros."""
        at = self._offset
        if self.fsync or self._size != at or self._capacity != at:  # else: at the file's end, as an append
            data = self._padded(data)
        written = os.pwrite(self._fd, data, at)  # type: ignore[arg-type]
        if written != len(data):  # a regular file writes all or fails, unless the disk filled
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        self._capacity = max(self._capacity, at + written)
        self._zeros_to = max(self._zeros_to, at + written)

    def _padded(self, data: bytes) -> bytes:
        """``data`` and the zeros to write after it: over a torn line; at the end, ``GROW`` (with fsync).

        Bytes after the end that are not zeros (a dead writer's pages) are cut off first.
        """
        at, end = self._offset, self._offset + len(data)
        window = min(end + 1, self._capacity)  # what this write covers, and the byte after it
        if self._zeros_to < 0 or (
            self._zeros_to < window
            and not files.only_zeros(self._pread(window - self._zeros_to, self._zeros_to))
        ):
            os.ftruncate(self._fd, at)  # type: ignore[arg-type]
            self._size = self._capacity = self._zeros_to = at
        grow = GROW if self.fsync else 0
        through = max(self._size, end if end < self._capacity else min(end + grow, self.max_file_bytes))
        return data + bytes(through - end) if through > end else data

    def _committed(self, data: bytes) -> None:
        """Record that ``data`` is committed: in the journal (and on disk with ``fsync``)."""
        last = data.rfind(b"\n", 0, len(data) - 1) + 1
        self._last, self._last_ours = (self._offset + last, data[last : last + 8]), True
        self._offset += len(data)
        self._size = self._offset
        self.appends += 1

    def _undo(self) -> bool:
        """Cut our own append off again (never leave half of it); False if that failed."""
        if self._fd is None:
            return True
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            return False
        self._size = self._capacity = self._zeros_to = self._offset
        return True

    def _fold(self, current: QueueState) -> None:
        """Store ``current`` as a new snapshot (the commit), then start its journal (housekeeping)."""
        try:
            snapshot = self._write_snapshot(current)
        except BaseException:
            self.invalidate()
            raise
        try:
            self._start_journal(snapshot)
        except Exception as exc:  # the snapshot holds the change; the old journal is stale: ignored
            self.invalidate()
            logger.warning(
                "%s: the new journal was not started, tried again at the next write: %s", self.path, exc
            )

    def compact(self, current: QueueState) -> bool:
        """Fold the state into a fresh snapshot of the next generation and start an empty journal.

        Raises:
            StorageError: either half failed. The files are valid either way: the old
                snapshot and journal, or the new snapshot beside a stale journal (ignored).
        """
        try:
            self._start_journal(self._write_snapshot(current))
        except BaseException:
            self.invalidate()
            raise
        return True

    def _write_snapshot(self, current: QueueState) -> Snapshot:
        generation = (self._base.generation if self._base is not None else 0) + 1
        snapshot = Snapshot(current, "journal", generation)
        self.snapshot.save(snapshot)  # atomic: a crash leaves the old snapshot and journal
        self._fold_due = False
        self._forget_unsynced()  # the snapshot holds the change (fsynced, with fsync)
        self._base = snapshot
        self.compactions += 1
        return snapshot

    def _start_journal(self, snapshot: Snapshot) -> None:
        self._close_journal()  # the journal we had applied is folded: never append to it
        self._reset(snapshot.generation)  # a crash before this leaves a stale journal: ignored

    def _reset(self, generation: int) -> None:
        """Replace the journal atomically with an empty one of ``generation``."""
        header = encode_header(generation)
        files.write_atomic(self.journal, header, mode=self.mode, fsync=self.fsync)
        self._close_journal()
        st = self._stat()
        if st is None:  # pragma: no cover - we just created it under the lock
            raise StorageError(f"{self.journal} vanished", path=str(self.journal), errno=errno.ENOENT)
        self._open(st)
        self._offset = self._size = self._capacity = self._zeros_to = len(header)

    def cut_torn(self) -> bool:
        """Cut off a torn last journal line and all that follows it (after ``load``, under the lock).

        Whatever is after the last complete line goes: a torn line, zeros, and bytes that
        are not zeros past them. Returns whether there was a torn line.
        """
        if self._fd is None or self._stale:
            return False
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError as exc:
            raise files.error("cannot truncate", self.journal, exc) from exc
        torn, self._size = self._size != self._offset, self._offset
        self._capacity = self._zeros_to = self._offset
        return torn

    # Checking

    def check(self) -> list[Problem]:
        """Validate the snapshot and the journal against it; return the problems (empty when healthy)."""
        problems = check_snapshot(self.snapshot)
        if any(p.kind in ("corrupt", "io") for p in problems):
            return problems
        return problems + self._check_journal()

    def _check_journal(self) -> list[Problem]:
        self.invalidate()
        try:
            return check_journal(self.snapshot, self.journal)
        finally:
            self.invalidate()

    def repair(self, problems: Sequence[Problem]) -> None:
        """Cut off a torn last line and what follows it, if a problem is one (after ``load``, locked)."""
        if any(p.kind == "torn" for p in problems):
            self.cut_torn()
