"""``Queue``: the direct client. Lock, read the file if it changed, apply a rule, write.

Every call follows one path: take the lock, load the state (only re-read when the file
changed), apply one pure transition from ``state``, replace the file atomically if
something changed, release. Reads (``stats``, ``peek``, ``dead``) take no lock: the file
is only ever replaced whole, so any read sees one complete version. No queue rule lives
here. Imports from djq: ``errors``, ``model``, ``state``, ``storage``, ``locks``,
``metrics``.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

from . import locks, state
from .errors import ConfigError, CorruptQueueError, LeaseError, LockTimeout, StorageError
from .journal import JournalFile
from .locks import Lock
from .metrics import LockRecorder
from .model import (
    DEFAULT_COMPACT_BYTES,
    DEFAULT_FSYNC,
    DEFAULT_LEASE_DURATION,
    DEFAULT_LOCK,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_QUEUE_PATH,
    DEFAULT_STORAGE,
    JSON,
    MAX_LEASE_DURATION,
    MIN_LEASE_DURATION,
    Lease,
    LockKind,
    QueueConfig,
    QueueStats,
    StorageKind,
    Task,
    TaskState,
    WaitKind,
    check_priority,
    check_seconds,
)
from .storage import QueueFile, check_payload, temp_files
from .watch import Watcher, watcher

__all__ = ["Clock", "Queue"]

Clock = Callable[[], float]
_T = TypeVar("_T")
_IDLE_POLL_MIN: Final = 0.001  #: seconds; first pause of a waiting get
_IDLE_POLL_MAX: Final = 0.05  #: seconds; longest pause between looks at the file
_WATCH_SAFETY: Final = 1.0  #: seconds; a leader with inotify looks anyway after this long
_FOLLOWER_POLL: Final = 0.05  #: seconds; a follower tries for the turn at least this often


class Queue:
    """A producer/consumer queue in one JSON file, shared by any number of processes.

    Delivery is at-least-once: a leased task that is not acked before its lease expires
    is delivered again, its ``attempts`` raised; after ``max_attempts`` deliveries it goes
    to the dead letters. ``put`` returns once the task is in the file (and on disk, with
    ``fsync``). A ``Queue`` object is safe to share between threads (calls are serialized)
    and is reopened in a forked child; it is POSIX-only.

    Args:
        path: the queue file; created (with its folder) at the first write.
        lock: a lock kind (``"flock"``, ``"filelock"``, ``"soft"``) or a ``locks.Lock``.
        lease: default lease length of ``get``, in seconds.
        max_attempts: deliveries before a task goes to the dead letters.
        fsync: make every change durable before the call returns.
        lock_timeout: seconds to wait for the lock; None waits for ever.
        poll_interval: seconds between tries of a polling lock (``"filelock"``, ``"soft"``).
        max_payload_bytes: largest encoded payload ``put`` accepts.
        max_file_bytes: largest queue file djq reads.
        compact_bytes: journal storage folds the journal into Queue.json past this size
            (or past the size of Queue.json, whichever is larger).
        clock: wall-clock time source (``time.time``); tests pass a fake one.
        recorder: receives every lock acquisition (``metrics.LockRecorder``).

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
        storage: StorageKind | str = DEFAULT_STORAGE,
        wait: WaitKind | str = WaitKind.NOTIFY,
        lease: float = DEFAULT_LEASE_DURATION,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        fsync: bool = DEFAULT_FSYNC,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        poll_interval: float | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        compact_bytes: int = DEFAULT_COMPACT_BYTES,
        clock: Clock = time.time,
        recorder: LockRecorder | None = None,
    ) -> None:
        """Describe the queue; nothing on disk is touched until the first call."""
        custom = lock if isinstance(lock, Lock) else None
        self._config = QueueConfig(
            path=Path(path),
            lock=DEFAULT_LOCK if custom is not None else lock,  # type: ignore[arg-type]
            storage=storage,  # type: ignore[arg-type]
            wait=wait,  # type: ignore[arg-type]
            lock_timeout=lock_timeout,
            poll_interval=poll_interval,
            fsync=fsync,
            lease=lease,
            max_attempts=max_attempts,
            max_payload_bytes=max_payload_bytes,
            max_file_bytes=max_file_bytes,
            compact_bytes=compact_bytes,
        )
        self._custom_lock = custom
        self._clock = clock
        self._recorder = recorder
        self._mutex = threading.Lock()
        self._pid = -1
        self._open()

    @classmethod
    def from_config(cls, config: QueueConfig, **options: object) -> Queue:
        """Open the queue a ``QueueConfig`` describes (``options``: ``clock``, ``recorder``)."""
        return cls(
            config.path,
            lock=config.lock,
            storage=config.storage,
            wait=config.wait,
            lease=config.lease,
            max_attempts=config.max_attempts,
            fsync=config.fsync,
            lock_timeout=config.lock_timeout,
            poll_interval=config.poll_interval,
            max_payload_bytes=config.max_payload_bytes,
            max_file_bytes=config.max_file_bytes,
            compact_bytes=config.compact_bytes,
            **options,  # type: ignore[arg-type]
        )

    def _open(self) -> None:
        config = self._config
        self._file: QueueFile | JournalFile
        if config.storage is StorageKind.JOURNAL:
            self._file = JournalFile(
                config.path, fsync=config.fsync, mode=config.file_mode,
                max_file_bytes=config.max_file_bytes, compact_bytes=config.compact_bytes,
            )  # fmt: skip
        else:
            self._file = QueueFile(
                config.path, fsync=config.fsync, mode=config.file_mode, max_file_bytes=config.max_file_bytes
            )
        if self._custom_lock is not None:
            self._lock: Lock = self._custom_lock
        else:
            self._lock = locks.make(
                config.lock, config.path, poll_interval=config.poll_interval, recorder=self._recorder
            )
        self._turn = locks.FlockLock(config.path.with_name(config.path.name + ".wait"), mode=config.file_mode)
        self._watcher: Watcher | None = None
        self._pid = os.getpid()
        self._prepared = False

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: never share the parent's lock or file
            self._mutex = threading.Lock()
            self._open()

    @property
    def config(self) -> QueueConfig:
        """The validated configuration of this queue."""
        return self._config

    @property
    def path(self) -> Path:
        """The queue file."""
        return self._config.path

    @property
    def lock(self) -> Lock:
        """The lock guarding the file (``queue.lock.stats()`` has its running totals)."""
        return self._lock

    @property
    def file(self) -> QueueFile | JournalFile:
        """The storage object (``reads`` and ``writes`` count what it did)."""
        return self._file

    def close(self) -> None:
        """Close the files this object keeps open. The queue itself stays on disk."""
        with self._mutex:
            self._file.close()
            self._lock.close()
            self._turn.close()
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Queue({str(self.path)!r}, lock={self._lock!r})"

    @contextmanager
    def _holding(self, op: str) -> Iterator[None]:
        """Hold this object's mutex and the queue's lock; on first use, tidy the folder."""
        self._check_process()
        with self._mutex:
            if not self._prepared:
                self._file.make_folder()  # the lock file lives there too
            self._lock.acquire(timeout=self._config.lock_timeout, op=op)
            try:
                if not self._prepared:
                    self._file.remove_temp_files()  # under the lock: no live writer has one
                    self._prepared = True
                yield
            finally:
                self._lock.release()

    def transact(self, op: str, change: Callable[[state.QueueState, float], _T]) -> _T:
        """Run ``change(state, now)`` on the current state under the lock; return its result.

        The file is written once, after ``change`` returns, if it changed anything (its
        ``revision``). This is the one path every mutating call takes; the broker uses it
        to apply a whole batch of events with one write. ``change`` must change the state
        only through ``djq.state``; if it raises anything but a ``LeaseError`` (which
        changes nothing), the cached state is dropped and the file stays as it was.
        """
        with self._holding(op):
            current = self._file.load()
            before = current.revision
            try:
                result = change(current, self._clock())
            except LeaseError:
                raise  # the state machine changed nothing
            except BaseException:
                self._file.invalidate()
                raise
            if current.revision != before:
                self._file.save(current)
            return result

    def _apply(self, op: str, event: state.Event) -> Any:
        """Apply one event of the state machine under the lock (and log it, for the journal)."""
        return self.transact(op, lambda s, now: state.apply(s, event, now=now))

    def put(self, payload: JSON, *, priority: int = 0, delay: float = 0.0) -> str:
        """Add a task; return its id once it is in the file.

        Args:
            payload: any JSON value that survives an orjson round trip unchanged.
            priority: higher is delivered first; FIFO within a priority.
            delay: seconds before the task can be leased.

        Raises:
            PayloadError: the payload is not storable; nothing was touched.
            StorageError: the file could not be read or written; it is unchanged.
        """
        return self.put_many([payload], priority=priority, delay=delay)[0]

    def put_many(self, payloads: Iterable[JSON], *, priority: int = 0, delay: float = 0.0) -> list[str]:
        """Add several tasks under one lock and one write; return their ids in order."""
        check_priority(priority)
        check_seconds("delay", delay, low=0.0, high=math.inf)
        limit = self._config.max_payload_bytes
        copies = tuple(check_payload(p, max_bytes=limit) for p in payloads)
        if not copies:
            return []
        event = state.PutMany(
            payloads=copies, priority=priority, delay=delay, max_attempts=self._config.max_attempts
        )
        tasks: list[Task] = self._apply("put", event)
        return [t.id for t in tasks]

    def get(
        self, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> Task | None:
        """Lease the next task; return it, or None when none came in time.

        Args:
            lease: seconds the lease lasts; None uses the queue's default.
            timeout: 0 does not wait; None waits until a task comes; a number waits up to
                that many seconds. Waiting looks at the file's metadata, not the lock,
                until the file changes or a delayed task or lease comes due.
            owner: who holds the lease, stored in the file (default ``pid-<pid>``).
        """
        tasks = self.get_many(1, lease=lease, timeout=timeout, owner=owner)
        return tasks[0] if tasks else None

    def get_many(
        self, n: int, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> list[Task]:
        """Lease up to ``n`` tasks under one lock, each with its own lease; [] when none came in time.

        Waits (``timeout`` as for ``get``) only until at least one task can be leased.
        """
        if type(n) is not int or n < 1:
            raise ConfigError(f"n must be a positive integer, not {n!r}", field="n")
        duration = self._config.lease if lease is None else lease
        check_seconds("lease", duration, low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)
        if timeout is not None:
            check_seconds("timeout", timeout, low=0.0, high=math.inf)
        holder = owner or f"pid-{os.getpid()}"
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._config.wait is WaitKind.POLL:
            while True:
                tasks = self._lease(n, holder, duration)
                if tasks or timeout == 0:
                    return tasks
                if not self._sleep_until_change(deadline, leader=True, notify=False):
                    return []
        tasks = self._lease(n, holder, duration) if self._work_ready() else []
        if tasks or timeout == 0:
            return tasks
        return self._wait_for_work(n, holder, duration, deadline)

    def _wait_for_work(self, n: int, owner: str, duration: float, deadline: float | None) -> list[Task]:
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
                    return []
                turn = turn or self._try_turn()
                if turn and self._work_ready():
                    tasks = self._lease(n, owner, duration)
                    if tasks:
                        return tasks
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
        self._check_process()
        with self._mutex:
            return state.has_work(self._file.load(), now=self._clock())

    def _sleep_until_change(self, deadline: float | None, *, leader: bool, notify: bool = True) -> bool:
        """Sleep until the file changes (or, for the leader, something comes due); False at the deadline.

        With ``notify`` the sleep is on inotify where it works; otherwise the file's metadata
        is polled, the pause doubling from 1 ms to 50 ms. A follower returns after each
        pause anyway, to try for the turn (the leader may have left without a change).
        """
        with self._mutex:
            current = self._file.load()  # what we look at now; a change after this wakes us
            due = state.next_deadline(current, now=self._clock()) if leader else None
            if notify and self._watcher is None:
                self._watcher = watcher(self.path.parent, {self.path.name, f"{self.path.name}.journal"})
            watch = self._watcher if notify else None
            if watch is not None:
                watch.drain()
            if self._file.has_changed():  # changed since we last looked: no event will come for it
                return True
        pause = _IDLE_POLL_MIN if leader else _FOLLOWER_POLL
        while True:
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            until_due = math.inf if due is None else due - self._clock()
            if until_due <= 0:
                return True
            if watch is None:
                time.sleep(min(pause, left, until_due))
                pause = min(pause * 2, _IDLE_POLL_MAX)
            elif watch.wait(min(_WATCH_SAFETY if leader else _FOLLOWER_POLL, left, until_due)):
                return True
            if not leader:
                return True  # a follower tries for the turn now and then: the leader may have left
            with self._mutex:
                if self._file.has_changed():
                    return True

    def _lease(self, n: int, owner: str, duration: float) -> list[Task]:
        if n == 1:
            task: Task | None = self._apply(
                "lease", state.LeaseNext(token=secrets.token_hex(8), owner=owner, duration=duration)
            )
            return [] if task is None else [task]
        tokens = tuple(secrets.token_hex(8) for _ in range(n))
        tasks: list[Task] = self._apply(
            "lease", state.LeaseMany(tokens=tokens, owner=owner, duration=duration)
        )
        return tasks

    def ack(self, task: Task | Lease) -> None:
        """Finish a leased task: it is never delivered again.

        Raises:
            LeaseLost: the lease expired and the task was leased again (or acked, nacked,
                requeued, purged). Nothing changed.
        """
        task_id, token = _held(task)
        self._apply("ack", state.Ack(id=task_id, token=token))

    def ack_many(self, tasks: Iterable[Task | Lease]) -> list[str]:
        """Ack several leased tasks under one lock; return the ids whose lease was lost (not acked)."""
        leases = tuple(_held(t) for t in tasks)
        if not leases:
            return []
        lost: list[str] = self._apply("ack", state.AckMany(leases=leases))
        return lost

    def nack(self, task: Task | Lease, *, delay: float = 0.0) -> TaskState:
        """Give a leased task back; return ``READY``, or ``DEAD`` if its attempts are used up.

        Args:
            task: the leased task.
            delay: seconds before it can be leased again.

        Raises:
            LeaseLost: the token no longer holds the task.
        """
        task_id, token = _held(task)
        check_seconds("delay", delay, low=0.0, high=math.inf)
        new: TaskState = self._apply("nack", state.Nack(id=task_id, token=token, delay=delay))
        return new

    def extend(self, task: Task | Lease, *, lease: float | None = None) -> Task:
        """Renew a lease for ``lease`` seconds from now; return the renewed task.

        Raises:
            LeaseLost: the token no longer holds the task.
        """
        task_id, token = _held(task)
        duration = self._config.lease if lease is None else lease
        check_seconds("lease", duration, low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)
        renewed: Task = self._apply("extend", state.Extend(id=task_id, token=token, duration=duration))
        return renewed

    def requeue(self, task_id: str) -> Task:
        """Move a dead task back to ready with its attempts reset; return it.

        Raises:
            UnknownTask: no dead task has this id.
        """
        task: Task = self._apply("requeue", state.Requeue(id=task_id))
        return task

    def purge(self, *, dead_only: bool = False) -> int:
        """Remove every task (or only the dead letters); return how many were removed."""
        states = frozenset({TaskState.DEAD}) if dead_only else None
        removed: int = self._apply("purge", state.Purge(states=states))
        return removed

    def stats(self) -> QueueStats:
        """Count the tasks in each state (reads the file, takes no lock)."""
        self._check_process()
        with self._mutex:
            current = self._file.load()
            return state.stats(current, now=self._clock(), file_bytes=self._file.file_bytes())

    def peek(self, limit: int = 10) -> list[Task]:
        """Return up to ``limit`` ready tasks in delivery order, without leasing them."""
        self._check_process()
        with self._mutex:
            return state.peek(self._file.load(), limit, now=self._clock())

    def dead(self) -> list[Task]:
        """Return the dead letters."""
        self._check_process()
        with self._mutex:
            return state.dead(self._file.load())

    def compact(self) -> bool:
        """Fold the journal into a fresh ``Queue.json`` now; False for rewrite storage (nothing to do)."""
        if not isinstance(self._file, JournalFile):
            return False
        with self._holding("compact"):
            file = self._file
            file.compact(file.load())
        return True

    def check(self, *, fix: bool = False) -> list[str]:
        """Validate the queue's files (snapshot and journal); return the problems (empty when healthy).

        Never repairs anything unless ``fix``; then it only removes temp files left by
        crashed writers and cuts a torn last journal line (under the lock). A corrupt
        ``Queue.json`` or journal is reported, never rewritten.
        """
        problems = []
        self._check_process()
        with self._mutex:
            try:
                self._file.invalidate()
                self._file.load()
            except CorruptQueueError as exc:
                problems.append(f"corrupt: {exc.reason}")
            except StorageError as exc:
                problems.append(str(exc))
            if isinstance(self._file, JournalFile) and not problems:
                problems += self._file.check()
            mode = _mode(self.path)
            if mode is not None and mode & 0o077:
                problems.append(f"{self.path} is mode {mode:o}; djq creates it 600 (owner only)")
        leftovers = temp_files(self.path)
        torn_only = all("torn last line" in p for p in problems)  # anything else is never repaired
        if fix and isinstance(self._file, JournalFile) and problems and torn_only:
            with self._holding("check"):
                self._file.load()
                self._file.cut_torn()
            problems = [p for p in problems if "torn last line" not in p]
        if leftovers and fix:
            with self._holding("check"):
                self._file.remove_temp_files()
        elif leftovers:
            names = ", ".join(p.name for p in leftovers)
            problems.append(f"temp files left by crashed writers (check --fix removes them): {names}")
        return problems


def _held(task: Task | Lease) -> tuple[str, str]:
    if task.token is None:
        raise ConfigError(f"task {task.id} is not leased: pass the task get() returned", field="task")
    return task.id, task.token


def _mode(path: Path) -> int | None:
    try:
        return path.lstat().st_mode & 0o777
    except OSError:
        return None
