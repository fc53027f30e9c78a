"""The file engine: lock, load, apply operations, save once.

Every change to a file queue takes this one path, for the direct ``Queue`` and for the
broker's batches alike: take this object's mutex and the queue's lock, load the state
(re-read only when the files changed), apply operations with the pure rules of
``state`` inside a ``Transaction``, and, if anything changed, hand the storage the state
and the operations that changed it (journal storage appends exactly those), then
release. Reads (stats, peek, dead) take no lock: the files are only ever replaced whole
or appended to, so a read sees one complete version. No queue rule lives here.
Imports from djq: ``errors``, ``model``, ``ops``, ``state``, ``storage``, ``journal``,
``files``, ``locks``, ``metrics``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from . import files, locks, ops, state
from .errors import LeaseError
from .journal import JournalFile
from .locks import Lock
from .metrics import LockRecorder
from .model import QueueConfig, StorageKind
from .storage import Problem, QueueFile, Storage

__all__ = ["Clock", "Engine", "Transaction", "open_storage"]

Clock = Callable[[], float]
T = TypeVar("T")


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
            self.applied.append((op, self.now))
        return result


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
        self._pid = os.getpid()
        self._prepared = False

    def check_process(self) -> None:
        """Reopen in a forked child: it must never share the parent's lock or file."""
        if self._pid != os.getpid():
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
        self.check_process()
        with self.mutex:
            if not self._prepared:
                self.storage.make_folder()  # the lock file lives there too
            self.lock.acquire(timeout=self.config.lock_timeout, op=name)
            try:
                if not self._prepared:
                    self.storage.remove_temp_files()  # under the lock: no live writer has one
                    self._prepared = True
                yield
            finally:
                self.lock.release()

    def transact(self, name: str, change: Callable[[Transaction], T]) -> T:
        """Run ``change`` on a ``Transaction`` of the current state under the lock; return its result.

        The storage is written once, after ``change`` returns, if it changed anything.
        ``change`` changes the state only through ``Transaction.apply``. If it raises, the
        files stay as they were; the cached state is dropped unless nothing changed.
        """
        with self.holding(name):
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

    def run(self, op: ops.Op[T]) -> T:
        """Apply one operation: a write under the lock, a read without it, a check."""
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
            return see(self.storage.load(), self.clock())

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
