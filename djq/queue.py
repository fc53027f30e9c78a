"""``Queue``: the direct client. The one client API over the file engine, and waiting for work.

A ``Queue`` is ``api.BaseQueue`` whose ``_submit`` runs each operation in an
``engine.Engine`` (lock, load, apply, save once). What it adds is how a ``get`` with a
timeout waits: without the queue's lock, looking at the files' metadata (or sleeping on
inotify) until they change or a delayed task or lease comes due. No queue rule lives
here. Imports from djq: ``api``, ``engine``, ``errors``, ``locks``, ``metrics``,
``model``, ``ops``, ``state``, ``storage``, ``watch``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Final, TypeVar

from . import locks, ops, state
from .api import BaseQueue
from .engine import Clock, Engine
from .errors import LockTimeout, StorageError
from .locks import Lock
from .metrics import LockRecorder
from .model import DEFAULT_LOCK, DEFAULT_QUEUE_PATH, LockKind, QueueConfig, WaitKind
from .storage import Storage
from .watch import Watcher, watcher

__all__ = ["Clock", "Queue"]

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
        custom = lock if isinstance(lock, Lock) else None
        kind = DEFAULT_LOCK if custom is not None else lock
        config = QueueConfig.from_options(path=Path(path), lock=kind, **options)
        self._engine = Engine(config, lock=custom, clock=clock, recorder=recorder)
        self._turn = locks.FlockLock(config.path.with_name(config.path.name + ".wait"), mode=config.file_mode)
        self._watcher: Watcher | None = None

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
        """Close the files this object keeps open. The queue itself stays on disk."""
        self._engine.close()
        self._turn.close()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def __repr__(self) -> str:
        return f"Queue({str(self.path)!r}, lock={self.lock!r})"

    def compact(self) -> bool:
        """Fold the journal into a fresh ``Queue.json`` now; False for rewrite storage (nothing to do)."""
        return self._engine.compact()

    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` in the engine; a lease waits up to ``wait`` seconds for work (None: for ever)."""
        if not op.waits:
            return self._engine.run(op)
        deadline = None if wait is None else time.monotonic() + wait
        if self.config.wait is WaitKind.POLL:
            return self._poll_for_work(op, deadline, wait == 0)
        result = self._engine.run(op) if self._work_ready() else _nothing(op)
        if result or wait == 0:
            return result
        return self._wait_for_work(op, deadline)

    def _poll_for_work(self, op: ops.Op[R], deadline: float | None, once: bool) -> R:
        """Djq 0.1's way: take the lock for every look, then poll the file's metadata."""
        while True:
            result = self._engine.run(op)
            if result or once or not self._sleep_until_change(deadline, leader=True, notify=False):
                return result

    def _wait_for_work(self, op: ops.Op[R], deadline: float | None) -> R:
        """Wait without the queue's lock; only the holder of the waiting turn looks for work.

        The turn is an flock on ``Queue.json.wait``, tried without blocking: of all the
        consumers waiting on one queue, one sleeps until the file changes (or something
        comes due) and then takes the lock; the others sleep until the file changes and
        only try for the turn. So a put wakes one lock acquisition, not one per waiter.
        """
        turn = False
        try:
            while True:
                if not self._sleep_until_change(deadline, leader=turn):
                    return _nothing(op)
                turn = turn or self._try_turn()
                if turn and self._work_ready():
                    result = self._engine.run(op)
                    if result:
                        return result
        finally:
            if turn:
                self._turn.release()

    def _try_turn(self) -> bool:
        try:
            self._turn.acquire(timeout=0.0, op="wait")
        except (LockTimeout, StorageError):
            return False
        return True

    def _work_ready(self) -> bool:
        """Look at the file without the lock: would a lease get a task now?"""
        return self._engine.look(lambda current, now: state.has_work(current, now=now))

    def _sleep_until_change(self, deadline: float | None, *, leader: bool, notify: bool = True) -> bool:
        """Sleep until the file changes (or, for the leader, something comes due); False at the deadline.

        With ``notify`` the sleep is on inotify where it works; otherwise the file's metadata
        is polled, the pause doubling from 1 ms to 50 ms. A follower returns after each
        pause anyway, to try for the turn (the leader may have left without a change).
        """
        # what we look at now (for the leader: when it next changes by itself); a later change wakes us
        due = self._engine.look(
            lambda current, now: state.next_deadline(current, now=now) if leader else None
        )
        watch = self._watch() if notify else None
        if self._engine.has_changed():  # changed since we last looked: no event will come for it
            return True
        pause = _IDLE_POLL_MIN if leader else _FOLLOWER_POLL
        clock = self._engine.clock
        while True:
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            until_due = math.inf if due is None else due - clock()
            if until_due <= 0:
                return True
            if watch is None:
                time.sleep(min(pause, left, until_due))
                pause = min(pause * 2, _IDLE_POLL_MAX)
            elif watch.wait(min(_WATCH_SAFETY if leader else _FOLLOWER_POLL, left, until_due)):
                return True
            if not leader or self._engine.has_changed():
                return True  # a follower tries for the turn now and then: the leader may have left

    def _watch(self) -> Watcher | None:
        """The inotify watch on the queue's files (made on first use), drained; None without inotify."""
        with self._engine.mutex:
            if self._watcher is None:
                self._watcher = watcher(self.path.parent, {self.path.name, f"{self.path.name}.journal"})
            if self._watcher is not None:
                self._watcher.drain()
            return self._watcher


def _nothing(op: ops.Op[R]) -> R:
    """What a lease returns when no task came: None for one, [] for many."""
    result: Any = [] if isinstance(op, ops.LeaseMany) else None
    return result  # type: ignore[no-any-return]
