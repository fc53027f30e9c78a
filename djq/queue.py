"""``Queue``: the direct client. The one client API over the file engine, and waiting for work.

A ``Queue`` is ``api.BaseQueue`` whose ``_submit`` runs each operation in an
``engine.Engine`` (lock, load, apply, save once). What it adds is how a ``get`` with a
timeout waits: without the queue's lock, looking at the files' metadata (or sleeping on
inotify) until they change or a delayed task or lease comes due; and what it keeps open
(the engine's files, the waiting turn, the inotify watch), closed by ``close()``, by the
garbage collector, or after the last waiting get leaves a closed queue. No queue rule
lives here. Imports from djq: ``api``, ``engine``, ``locks``, ``metrics``, ``model``,
``ops``, ``state``, ``storage``, ``watch``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Final, TypeVar

from . import ops, state
from .api import BaseQueue
from .engine import Clock, Engine
from .errors import ConfigError
from .locks import Lock
from .metrics import LockRecorder
from .model import DEFAULT_LOCK, DEFAULT_QUEUE_PATH, LockKind, QueueConfig, WaitKind
from .storage import Storage
from .watch import Watcher, watcher

__all__ = ["Clock", "Queue"]

logger = logging.getLogger(__name__)
R = TypeVar("R")
_IDLE_POLL_MIN: Final = 0.001  #: seconds; first pause of a waiting get
_IDLE_POLL_MAX: Final = 0.05  #: seconds; longest pause between looks at the file
_WATCH_SAFETY: Final = 1.0  #: seconds; a leader with inotify looks anyway after this long
_FOLLOWER_POLL: Final = 0.05  #: seconds; a follower tries for the turn at least this often


class Queue(BaseQueue):
    """A producer/consumer queue in one JSON file, shared by any number of processes.

    ``put`` returns once the task is in the file (and on disk, with ``fsync``). A
    ``Queue`` object is safe to share between threads (calls are serialized) and is
    reopened in a forked child; it is POSIX-only.

    Args:
        path: the queue file; created (with its folder) at the first write.
        lock: a lock kind (``"flock"``, ``"filelock"``, ``"soft"``) or a ``locks.Lock``.
        clock: wall-clock time source (``time.time``); tests pass a fake one.
        recorder: receives every lock acquisition (``metrics.LockRecorder``).
        options: any other ``QueueConfig`` field: ``storage``, ``wait``, ``lease``,
            ``max_attempts``, ``fsync``, ``lock_timeout``, ``poll_interval``,
            ``max_payload_bytes``, ``max_file_bytes``, ``compact_bytes``, ``file_mode``.

    Example:
        >>> import djq, tempfile, pathlib
        >>> q = djq.Queue(pathlib.Path(tempfile.mkdtemp()) / "Queue.json")
        >>> _ = q.put({"n": 1})
        >>> task = q.get()
        >>> task.payload
        {'n': 1}
        >>> q.ack(task)
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH,
        *,
        lock: LockKind | str | Lock = DEFAULT_LOCK,
        clock: Clock = time.time,
        recorder: LockRecorder | None = None,
        **options: Any,
    ) -> None:
        """Describe the queue; nothing on disk is touched until the first call."""
        _check_clock_and_recorder(clock, recorder)  # before any I/O: a bad one would fail mid-call
        custom = lock if isinstance(lock, Lock) else None
        kind = DEFAULT_LOCK if custom is not None else lock
        config = QueueConfig.from_options(path=path, lock=kind, **options)  # checks the path
        self._engine = Engine(config, lock=custom, clock=clock, recorder=recorder)
        turn = config.path.with_name(config.path.name + ".wait")
        self._resources = _Resources(self._engine, turn, config.file_mode, own_lock=custom is None)
        # closes the files when this object is collected; holds no reference to it
        weakref.finalize(self, self._resources.collect).atexit = False

    @classmethod
    def from_config(cls, config: QueueConfig, **options: Any) -> Queue:
        """Open the queue a ``QueueConfig`` describes (``options``: ``clock``, ``recorder``, ``lock``)."""
        fields = {**config.to_json(), **options}
        return cls(fields.pop("path"), **fields)

    @property
    def config(self) -> QueueConfig:
        """The validated configuration of this queue."""
        return self._engine.config

    @property
    def lock(self) -> Lock:
        """The lock guarding the file (``queue.lock.stats()`` has its running totals)."""
        return self._engine.lock

    @property
    def file(self) -> Storage:
        """The storage object (``reads`` and ``writes`` count what it did)."""
        return self._engine.storage

    @property
    def engine(self) -> Engine:
        """The file engine this queue runs its operations in."""
        return self._engine

    def close(self) -> None:
        """Close the files this object keeps open. The queue itself stays on disk.

        A ``get`` waiting in another thread returns None (``get_many``: []) at once, and
        the files it uses are closed when it has left. A later call opens what it needs
        again. A ``Queue`` that is dropped without ``close()`` is closed when collected.
        """
        self._resources.close()

    def __repr__(self) -> str:
        return f"Queue({str(self.path)!r}, lock={self.lock!r})"

    def compact(self) -> bool:
        """Fold the journal into a fresh ``Queue.json`` now; False for rewrite storage (nothing to do)."""
        return self._engine.compact()

    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` in the engine; a lease waits up to ``wait`` seconds for work (None: for ever)."""
        if not op.waits:
            return self._engine.run(op)
        poll = self.config.wait is WaitKind.POLL
        if wait == 0:
            return self._engine.run(op) if poll or self._work_ready() else ops.nothing(op)
        if not poll and self._work_ready():  # work is there: lease it as a get without a wait would
            result = self._engine.run(op)
            if result:
                return result
        deadline = None if wait is None else time.monotonic() + wait
        waits = self._resources.enter()
        try:
            if poll:
                return self._poll_for_work(op, waits, deadline)
            return self._wait_for_work(op, waits, deadline)
        finally:
            self._resources.leave(waits)  # never raises: a leased task always reaches the caller

    def _poll_for_work(self, op: ops.Op[R], waits: _Waits, deadline: float | None) -> R:
        """Djq 0.1's way: take the lock for every look, then poll the file's metadata."""
        while True:
            result = self._engine.run(op)
            if result or not self._sleep_until_change(waits, deadline, leader=True, notify=False):
                return result

    def _wait_for_work(self, op: ops.Op[R], waits: _Waits, deadline: float | None) -> R:
        """Wait without the queue's lock; only the holder of the waiting turn looks for work.

        The turn is an flock on ``Queue.json.wait``, tried without blocking, and held by at
        most one thread of this process (``_Turn``): of all the consumers waiting on one
        queue, one sleeps until the file changes (or something comes due) and then takes
        the lock; the others sleep until the file changes and only try for the turn. So a
        put wakes one lock acquisition, not one per waiter. Where the turn file cannot be
        opened or locked at all, every waiter looks for itself (correct, only costlier).
        """
        turn = looking = False
        try:
            while True:
                if not self._sleep_until_change(waits, deadline, leader=looking):
                    return ops.nothing(op)
                if not turn:
                    got = waits.turn.take()
                    turn = got is _TAKEN
                    looking = got is not _BUSY
                if looking and self._work_ready():
                    result = self._engine.run(op)
                    if result:
                        return result
        finally:
            if turn:
                waits.turn.give_back()

    def _work_ready(self) -> bool:
        """Would a lease get a task now? The cache says yes, or a look at the files without the lock does.

        Trusting the cache's yes saves the look (a stat of each file and a read) on a busy
        queue; if another process took the work meanwhile, the lease finds that out under
        the lock and leases nothing, as it would have anyway.
        """
        engine = self._engine
        return engine.work_in_cache() or engine.look(lambda current, now: state.has_work(current, now=now))

    def _sleep_until_change(
        self, waits: _Waits, deadline: float | None, *, leader: bool, notify: bool = True
    ) -> bool:
        """Sleep until the file changes (or, for the leader, something comes due); False at the deadline.

        With ``notify`` the sleep is on inotify where it works; otherwise the file's metadata
        is polled, the pause doubling from 1 ms to 50 ms. A follower returns after each
        pause anyway, to try for the turn (the leader may have left without a change).
        False too, at once, when the queue is closed.
        """
        # what we look at now (for the leader: when it next changes by itself); a later change wakes us
        due = self._engine.look(
            lambda current, now: state.next_deadline(current, now=now) if leader else None
        )
        watch = self._resources.watch(waits) if notify else None
        if self._engine.has_changed():  # changed since we last looked: no event will come for it
            return not waits.closed
        pause = _IDLE_POLL_MIN if leader else _FOLLOWER_POLL
        clock = self._engine.clock
        while True:
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0 or waits.closed:
                return False
            until_due = math.inf if due is None else due - clock()
            if until_due <= 0:
                return True
            if watch is None:
                waits.wakeup.wait(min(pause, left, until_due))
                pause = min(pause * 2, _IDLE_POLL_MAX)
            elif watch.wait(min(_WATCH_SAFETY if leader else _FOLLOWER_POLL, left, until_due)):
                return not waits.closed
            if waits.closed:
                return False
            if not leader or self._engine.has_changed():
                return True  # a follower tries for the turn now and then: the leader may have left


_TAKEN: Final = "taken"  #: ``_Turn.take``: this thread holds the turn now
_BUSY: Final = "busy"  #: another thread or process holds it
_UNAVAILABLE: Final = "unavailable"  #: the turn file cannot be opened or locked: look anyway


class _Turn:
    """The waiting turn: an flock on ``Queue.json.wait``, held by at most one thread here.

    flock belongs to the open file, not the thread: two threads of one ``Queue`` locking
    one descriptor would both "hold" it. So a thread first takes ``owner`` (without
    waiting), then tries the flock; only the owner ever unlocks.
    """

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        self.owner = threading.Lock()
        self.fd: int | None = None

    def take(self) -> str:
        """Try for the turn without waiting: ``_TAKEN``, ``_BUSY`` or ``_UNAVAILABLE``."""
        if not self.owner.acquire(blocking=False):
            return _BUSY
        try:
            if self.fd is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                self.fd = os.open(self.path, flags, self.mode)
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.owner.release()
            return _BUSY
        except OSError:  # missing folder, a directory or symlink in its place, no locks here
            self.owner.release()
            return _UNAVAILABLE
        return _TAKEN

    def give_back(self) -> None:
        """Release the turn (only its owner calls this); never raises."""
        try:
            if self.fd is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError:
            self.close()  # closing the file releases the flock too
        finally:
            self.owner.release()

    def close(self) -> None:
        """Close the turn file (called when no thread uses it)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Waits:
    """What the waiting gets of one ``Queue`` share until it is closed: the turn and the watch."""

    def __init__(self, turn: Path, mode: int) -> None:
        self.turn = _Turn(turn, mode)
        self.watcher: Watcher | None = None
        self.users = 0  #: gets waiting with this now
        self.closed = False
        self.wakeup = threading.Event()  #: set on close: wakes a waiter polling without inotify

    def close_files(self) -> None:
        """Close the turn and the watch (no thread uses them any more)."""
        self.turn.close()
        if self.watcher is not None:
            with contextlib.suppress(OSError):
                self.watcher.close()
            self.watcher = None


class _Resources:
    """Everything a ``Queue`` keeps open, and who is using it; closed by ``close`` or at collection.

    It holds no reference to its ``Queue``, so a ``weakref.finalize`` of the queue can call
    ``collect``. Waiting gets ``enter`` and ``leave``: a ``close`` while some wait retires
    their ``_Waits`` (it wakes them, and its files are closed by the last to leave), and
    the next get starts a fresh one. No descriptor is ever closed while a thread uses it.
    """

    def __init__(self, engine: Engine, turn: Path, mode: int, *, own_lock: bool) -> None:
        self.engine = engine
        self.own_lock = own_lock
        self.turn = turn
        self.mode = mode
        self.guard = threading.Lock()
        self.current: _Waits | None = None
        _ALL_RESOURCES.add(self)

    def enter(self) -> _Waits:
        """Start a waiting get: return the shared ``_Waits``, counted as in use."""
        with self.guard:
            if self.current is None:
                self.current = _Waits(self.turn, self.mode)
            self.current.users += 1
            return self.current

    def watch(self, waits: _Waits) -> Watcher | None:
        """The inotify watch of ``waits`` (made on first use), drained; None without inotify."""
        with self.guard:
            if waits.watcher is None and not waits.closed:
                path = self.engine.path
                waits.watcher = watcher(path.parent, {path.name, f"{path.name}.journal"})
            found = waits.watcher
        if found is not None:
            found.drain()
        return found

    def leave(self, waits: _Waits) -> None:
        """End a waiting get; the last to leave a closed ``_Waits`` closes its files. Never raises."""
        try:
            with self.guard:
                waits.users -= 1
                last = waits.closed and waits.users == 0
                if last:
                    waits.close_files()
            if last:
                self.engine.close()  # a waiter may have opened a file again after close()
        except Exception:  # closing must never lose what the get leased
            logger.warning("closing %s after a waiting get failed", self.engine.path, exc_info=True)

    def close(self) -> None:
        """Close every file; waiting gets are woken and the last of them closes what they use."""
        self._retire()
        self.engine.close()

    def _retire(self) -> None:
        """End the current ``_Waits``: wake its waiters; close its files now if none is left."""
        with self.guard:
            waits, self.current = self.current, None
            if waits is not None:
                waits.closed = True
                waits.wakeup.set()
                if waits.watcher is not None:
                    waits.watcher.interrupt()
                if waits.users == 0:
                    waits.close_files()

    def collect(self) -> None:
        """Close everything when the ``Queue`` was collected (no thread can be waiting in it).

        A lock object the caller passed in may guard other queues too: it is left open.
        """
        self._retire()
        engine = self.engine
        if not engine.mutex.acquire(blocking=False):  # in use through queue.engine: never deadlock
            return
        try:
            engine.storage.close()
        finally:
            engine.mutex.release()
        if self.own_lock:
            engine.lock.close()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's threads, turn and watch (closing our copies)."""
        self.guard = threading.Lock()
        waits, self.current = self.current, None
        if waits is not None:
            waits.close_files()  # the parent's flock and inotify live on in its own descriptors


_ALL_RESOURCES: weakref.WeakSet[_Resources] = weakref.WeakSet()


def _after_fork() -> None:
    for resources in list(_ALL_RESOURCES):
        resources.after_fork()


os.register_at_fork(after_in_child=_after_fork)


def _check_clock_and_recorder(clock: object, recorder: object) -> None:
    """Raise ``ConfigError`` unless ``clock`` is callable and ``recorder`` None or a ``LockRecorder``-like."""
    if not callable(clock):
        raise ConfigError(
            f"clock must be a callable returning epoch seconds, not {clock!r:.80}", field="clock"
        )
    if recorder is not None and not all(
        callable(getattr(recorder, name, None)) for name in ("record", "rows", "clear")
    ):
        raise ConfigError(
            f"recorder must be None or a metrics.LockRecorder, not {recorder!r:.80}", field="recorder"
        )
