"""The file engine: lock, load, apply operations, save once.

Every change to a file queue takes this one path, for the direct ``Queue`` and for the
broker's batches alike: take this object's mutex and the queue's lock, load the state
(re-read only when the files changed), apply operations with the pure rules of
``state`` inside a ``Transaction``, and, if anything changed, hand the storage the state
and the operations that changed it (journal storage appends exactly those), then
release. Reads (stats, peek, dead) take no lock: the files are only ever replaced whole
or appended to, so a read sees one complete version. No queue rule lives here.

The lock kind (RELIABILITY row 28): locks of different kinds may not exclude each other
("soft" and "flock" do not), so the kind a queue is first written with is recorded in
``Queue.json.lockkind``, created once (``files.create_once``: of two processes creating
it at once, whatever their locks, exactly one does) and never rewritten. An engine whose
``config.lock`` cannot exclude the recorded kind refuses every call with ``ConfigError``
naming both, before it takes its lock or writes anything. A queue without the file (one
written by djq 0.1, or before this) accepts any kind and records the kind of its next
writer. It is a file of its own, not a field of ``Queue.json`` or of the journal's
header, so those stay byte for byte what djq 0.1 wrote (tests/test_golden.py), and so
the kind is known before the queue's own files are read. A custom ``Lock`` object is
the caller's responsibility: nothing is checked or recorded for it.
Imports from djq: ``errors``, ``model``, ``ops``, ``process``, ``state``, ``storage``, ``journal``,
``files``, ``locks``, ``metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

from . import files, locks, ops, process, state
from .errors import ConfigError, CorruptQueueError, LeaseError, StorageError
from .journal import JournalFile
from .locks import Lock
from .metrics import LockRecorder
from .model import LockKind, QueueConfig, StorageKind
from .storage import Problem, QueueFile, Storage

__all__ = ["Clock", "Engine", "Transaction", "lock_kind_path", "open_storage"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")

LOCK_KIND_FORMAT: Final = "djq.lockkind"
#: Kinds that exclude each other share a protocol: "filelock" takes an flock on the same file.
_PROTOCOL: Final = {LockKind.FLOCK: "flock", LockKind.FILELOCK: "flock", LockKind.SOFT: "soft"}


def lock_kind_path(path: Path) -> Path:
    """Return the file that records the lock kind of the queue at ``path``: ``Queue.json.lockkind``."""
    return path.with_name(path.name + ".lockkind")


def _encode_lock_kind(kind: LockKind) -> bytes:
    doc = {"format": LOCK_KIND_FORMAT, "version": 1, "lock": kind.value}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"  # a few bytes: no orjson here


def _decode_lock_kind(data: bytes, path: Path) -> LockKind:
    try:
        doc = json.loads(data)
        if doc["format"] == LOCK_KIND_FORMAT and type(doc["version"]) is int and doc["version"] == 1:
            return LockKind(doc["lock"])
    except (ValueError, TypeError, KeyError):
        pass
    raise CorruptQueueError(path=str(path), reason="not a djq lock kind record")


def open_storage(config: QueueConfig) -> Storage:
    """Return the storage ``config.storage`` names, for ``config.path``; nothing is touched yet."""
    if config.storage is StorageKind.JOURNAL:
        return JournalFile(
            config.path, fsync=config.fsync, mode=config.file_mode,
            max_file_bytes=config.max_file_bytes, compact_bytes=config.compact_bytes,
        )  # fmt: skip
    return QueueFile(
        config.path, fsync=config.fsync, mode=config.file_mode, max_file_bytes=config.max_file_bytes
    )


class Transaction:
    """The state under the lock, the moment of the transaction, and what changed it."""

    __slots__ = ("applied", "now", "state")

    def __init__(self, current: state.QueueState, now: float) -> None:
        self.state = current
        self.now = now
        self.applied: list[tuple[ops.Op[Any], float]] = []  #: the operations that changed something

    def apply(self, op: ops.Op[T]) -> T:
        """Apply one operation by its rule; remember it if it changed the state."""
        before = self.state.revision
        result: T = state.apply(self.state, op, now=self.now)
        if self.state.revision != before:
            self.applied.append((_as_recorded(op, result), self.now))
        return result


def _as_recorded(op: ops.Op[Any], result: Any) -> ops.Op[Any]:
    """The operation as the journal records it: a lease of many keeps only the tokens it used.

    A ``LeaseMany`` that leased k tasks is recorded with its first max(k, 1) tokens.
    Replaying that gives the same state: the rule reclaims expired leases, then leases
    one ready task per token in order and stops at the first token that finds none. In
    the same state at the same ``now`` the first k tokens lease the same k tasks; the
    original went on to try token k+1, found no ready task and changed nothing more
    (nothing expires between two tries at one ``now``), which is what running out of
    tokens does. With k = 0 the one token finds nothing too, after the same reclaim (the
    only change such a lease makes). So a get_many(5000) that leased one task writes one
    token, not 5,000.
    """
    if isinstance(op, ops.LeaseMany) and len(op.tokens) > max(len(result), 1):
        return dataclasses.replace(op, tokens=op.tokens[: max(len(result), 1)])
    return op


class Engine:
    """One file queue's storage and lock, used by one process (reopened in a forked child).

    Safe to share between threads: calls are serialized by a mutex.

    Args:
        config: the queue's configuration.
        lock: a lock object to use instead of the one ``config.lock`` names.
        clock: wall-clock time source; tests pass a fake one.
        recorder: receives every lock acquisition.
    """

    def __init__(
        self,
        config: QueueConfig,
        *,
        lock: Lock | None = None,
        clock: Clock = time.time,
        recorder: LockRecorder | None = None,
    ) -> None:
        """Describe the engine; nothing on disk is touched until the first call."""
        self.config = config
        self.clock = clock
        self._custom_lock = lock
        self._recorder = recorder
        self.mutex = threading.Lock()
        self._open()

    def _open(self) -> None:
        config = self.config
        self.storage = open_storage(config)
        if self._custom_lock is not None:
            self.lock: Lock = self._custom_lock
        else:
            self.lock = locks.make(
                config.lock, config.path, poll_interval=config.poll_interval, recorder=self._recorder
            )
        self._pid = process.pid()
        self._prepared = False
        self._kind_checked = self._custom_lock is not None  # a custom lock: the caller's business
        self._kind_recorded = self._custom_lock is not None

    def check_process(self) -> None:
        """Reopen in a forked child: it must never share the parent's lock or file."""
        if self._pid != process.pid():
            self.mutex = threading.Lock()
            self._open()

    @property
    def path(self) -> Path:
        """The queue file."""
        return self.config.path

    def close(self) -> None:
        """Close the files and the lock this engine keeps open."""
        with self.mutex:
            self.storage.close()
            self.lock.close()

    @contextmanager
    def holding(self, name: str) -> Iterator[None]:
        """Hold the mutex and the queue's lock; on first use, tidy the folder."""
        self._enter(name)
        try:
            yield
        finally:
            self._leave()

    def _enter(self, name: str, *, settle: bool = True) -> None:
        """Take the mutex, then the queue's lock (``holding`` without a generator: the hot path).

        With ``settle``, the lines earlier puts deferred are applied first, with the lock
        free, so the call that loads the state under the lock holds it for none of them.
        """
        self.check_process()
        self.mutex.acquire()
        try:
            self._check_lock_kind()  # before the lock: a soft lock's marker is a write too
            if settle:
                self.storage.settle(everything=True)
            if not self._prepared:
                self.storage.make_folder()  # the lock file lives there too
            self.lock.acquire(timeout=self.config.lock_timeout, op=name)
        except BaseException:
            self.mutex.release()
            raise
        try:
            if not self._prepared:
                self.storage.remove_temp_files()  # under the lock: no live writer has one
                self._prepared = True
            if not self._kind_recorded:
                self._record_lock_kind()
        except BaseException:
            self._leave()
            raise

    def _leave(self, *, settle: bool = False) -> None:
        """Release the queue's lock, fdatasync the change, ``settle`` a put's lines, free the mutex.

        The fdatasync runs with the lock free (``Storage.sync``), so other processes append
        while the disk flushes: a call still returns only once its change is durable.
        """
        try:
            try:
                self.lock.release()
            finally:
                error = self.storage.sync()
            if error is not None:
                self._sync_failed(error)
            if settle:
                self.storage.settle()
        finally:
            self.mutex.release()

    def _sync_failed(self, error: OSError) -> None:
        """Take the lock again to undo or keep a change whose fdatasync failed (``Storage.sync_failed``).

        Raises:
            StorageError: the change is undone.
            LockTimeout: the lock did not come in time: the change stands, of unknown
                durability, and this process's next write folds the queue into a fresh snapshot.
        """
        self.lock.acquire(timeout=self.config.lock_timeout, op="sync")
        try:
            self.storage.sync_failed(error)
        finally:
            self.lock.release()

    def _check_lock_kind(self) -> None:
        """Refuse a queue recorded with a lock kind ours does not exclude (once per engine).

        Raises:
            ConfigError: ``config.lock`` and the recorded kind do not exclude each other.
            CorruptQueueError: the record is not one djq writes.
        """
        if self._kind_checked:
            return
        where = lock_kind_path(self.path)
        data = files.read_small(where)
        if data is None:
            return  # no record (a djq 0.1 queue, or a new one): the next write records ours
        self._compare(_decode_lock_kind(data, where))
        self._kind_checked = self._kind_recorded = True

    def _compare(self, recorded: LockKind) -> None:
        kind = self.config.lock
        if _PROTOCOL[recorded] != _PROTOCOL[kind]:
            raise ConfigError(
                f"{self.path} is used with lock={recorded.value!r}, which lock={kind.value!r} does not "
                f"exclude (two processes could write at once): open it with lock={recorded.value!r}",
                field="lock",
            )

    def _record_lock_kind(self) -> None:
        """Record ``config.lock`` if no kind is recorded (under the lock, before the first write)."""
        where = lock_kind_path(self.path)
        data = _encode_lock_kind(self.config.lock)
        try:
            if not files.create_once(where, data, mode=self.config.file_mode, fsync=self.config.fsync):
                found = files.read_small(where)  # created meanwhile, by a process of any kind
                if found is not None:
                    self._compare(_decode_lock_kind(found, where))
        except StorageError as exc:  # CorruptQueueError included: what the queue's own files decide
            # Not recorded, and tried again at the next write. The write itself goes on: its
            # own files say whether it can be stored (a full disk fails it, naming Queue.json).
            logger.warning("%s: the lock kind is not recorded: %s", where, exc)
            return
        self._kind_checked = self._kind_recorded = True

    def transact(self, name: str, change: Callable[[Transaction], T]) -> T:
        """Run ``change`` on a ``Transaction`` of the current state under the lock; return its result.

        The storage is written once, after ``change`` returns, if it changed anything.
        ``change`` changes the state only through ``Transaction.apply``. If it raises, the
        files stay as they were; the cached state is dropped unless nothing changed.
        """
        self._enter(name)
        try:
            return self._transact(change)
        finally:
            self._leave()

    def _transact(self, change: Callable[[Transaction], T]) -> T:
        """``transact``'s work, under the lock."""
        current = self.storage.load()
        before = current.revision
        tx = Transaction(current, self.clock())
        try:
            result = change(tx)
        except BaseException as exc:
            if current.revision != before or not isinstance(exc, LeaseError):
                self.storage.invalidate()
            raise
        if current.revision != before:
            try:
                self.storage.save(current, tx.applied)
            except BaseException:
                self.storage.invalidate()  # the cache holds a change the files do not: drop it
                raise
        return result

    def put(self, op: ops.PutMany) -> list[str]:
        """Store a put under the lock, and apply it once the lock is free (``Storage.put_deferred``).

        A put needs only a count of the tasks before it; the lines it passed over and its
        own are applied with the lock free, when this process next looks at the state
        (``Storage.settle``), so other processes wait on none of that work.
        """
        self._enter("put", settle=False)
        ids = None
        try:
            ids = self.storage.put_deferred(op, self.clock())
            return self._transact(lambda tx: tx.apply(op)) if ids is None else ids
        finally:
            self._leave(settle=ids is not None)

    def run(self, op: ops.Op[T]) -> T:
        """Apply one operation: a write under the lock, a read without it, a check."""
        if type(op) is ops.PutMany:
            return self.put(op)  # type: ignore[return-value]
        if op.writes:
            label = op.name.removesuffix("_many")  # the lock's rows say "put", "lease", "ack"
            return self.transact(label, lambda tx: tx.apply(op))
        if isinstance(op, ops.Check):
            result: Any = self.check(fix=op.fix)
            return result  # type: ignore[no-any-return]
        return self.look(lambda current, now: self._read(current, op, now))

    def _read(self, current: state.QueueState, op: ops.Op[T], now: float) -> T:
        result = state.apply(current, op, now=now)
        if isinstance(op, ops.Stats):
            result = dataclasses.replace(result, file_bytes=self.storage.file_bytes())
        return result  # type: ignore[no-any-return]

    def look(self, see: Callable[[state.QueueState, float], T]) -> T:
        """Return ``see(state, now)`` on the current state, without the queue's lock (reads only)."""
        self.check_process()
        with self.mutex:
            self._check_lock_kind()
            return see(self.storage.load(), self.clock())

    def work_in_cache(self) -> bool:
        """Whether the state as this process last saw it has work for a lease now (no file is read).

        A hint, never an answer: the files may have changed since. A lease that trusts it
        takes the lock and finds out; one that finds nothing here looks at the files.
        """
        with self.mutex:
            current = self.storage.cached()
            return current is not None and state.has_work(current, now=self.clock())

    def has_changed(self) -> bool:
        """Whether the files changed since this process last read or wrote them."""
        with self.mutex:
            return self.storage.has_changed()

    def compact(self) -> bool:
        """Fold the stored queue into one fresh file now; False when there is nothing to fold."""
        with self.holding("compact"):
            return self.storage.compact(self.storage.load())

    def check(self, *, fix: bool = False) -> list[str]:
        """Validate the stored queue; return the problems as lines (empty when healthy).

        Never repairs anything unless ``fix``; then it repairs only what the storage marks
        fixable (a torn last journal line), and only when every problem is, and removes temp
        files left by crashed writers (under the lock). Corruption is reported, never rewritten.
        """
        self.check_process()
        with self.mutex:
            problems = self.storage.check()
            try:
                self._check_lock_kind()
            except CorruptQueueError as exc:
                problems.append(Problem("corrupt", f"corrupt: {exc.reason}"))
        if fix and problems and all(p.fixable for p in problems):
            with self.holding("check"):
                self.storage.load()
                self.storage.repair(problems)
            problems = []
        leftovers = files.temp_files(self.path)
        if leftovers and fix:
            with self.holding("check"):
                self.storage.remove_temp_files()
        elif leftovers:
            names = ", ".join(p.name for p in leftovers)
            message = f"temp files left by crashed writers (check --fix removes them): {names}"
            problems.append(Problem("temp", message, fixable=True))
        return [p.message for p in problems]
