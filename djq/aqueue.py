"""``AsyncQueue``: the file queue's client as coroutines; the event loop never waits on the file.

An ``AsyncQueue`` is ``aio.AsyncBaseQueue`` over a ``djq.Queue`` (the engine, its lock,
its files). What may block runs in one worker thread of its own: each attempt at an
operation (take the lock, read what changed, apply, append, release, fdatasync) is one
hop there, so a contended ``flock`` or a slow fsync never holds up the loop, and one hop
costs one thread switch, not one per file call. ``aiofiles`` would put each read and
write in a thread pool separately; it cannot help with ``flock``, and a write under a
lock taken in another thread is no write at all, so djq does not use it.

A get that finds nothing waits on the loop, holding no thread: the queue folder's inotify
descriptor is registered with ``loop.add_reader``, and each change wakes one waiting get
(the one that gets a task wakes the next: more may be ready), which then looks at the file
without the lock and leases only if work is there. Each get also wakes when the next
delayed task or lease comes due, and at its timeout. Without inotify (or with
``wait="poll"``) it polls, the pause doubling from 1 ms to 50 ms. A cancelled wait ends at
once; a cancel during an attempt lets it finish and gives back what it leased
(``aio.AsyncBaseQueue._unbroken``).
Imports from djq: ``aio``, ``model``, ``ops``, ``queue``, ``state``, ``watch``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, TypeVar

from . import ops, state
from .aio import AsyncBaseQueue
from .engine import Transaction
from .errors import LeaseError
from .model import DEFAULT_QUEUE_PATH, QueueConfig, WaitKind
from .queue import Queue
from .watch import Watcher, watcher

__all__ = ["AsyncQueue"]

R = TypeVar("R")
T = TypeVar("T")
_POLL_MIN: Final = 0.001  #: seconds; first pause of a polling get
_POLL_MAX: Final = 0.05  #: seconds; longest pause between looks of a polling get
_SAFETY: Final = 1.0  #: seconds; a get with inotify looks anyway after this long (a missed event)


class AsyncQueue(AsyncBaseQueue):
    """A file queue for asyncio programs: ``djq.Queue``'s arguments and semantics, as coroutines.

    ``AsyncQueue(path, **options)`` takes exactly what ``djq.Queue`` takes; ``djq.open(path,
    asynchronous=True)`` returns one. It shares the file with every other client (sync,
    async, broker, other processes). Use it from one event loop at a time.

    Example:
        >>> import asyncio, djq, tempfile, pathlib
        >>> async def main(path):
        ...     async with djq.AsyncQueue(path) as q:
        ...         await q.put({"n": 1})
        ...         task = await q.get(timeout=1)
        ...         await q.ack(task)
        ...         return task.payload
        >>> asyncio.run(main(pathlib.Path(tempfile.mkdtemp()) / "Queue.json"))
        {'n': 1}
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH, **options: Any) -> None:
        """Describe the queue (as ``djq.Queue`` does); nothing is touched until the first call."""
        self._queue = Queue(path, **options)
        self._worker: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()  #: guards the queued attempts (the loop adds, the worker takes)
        self._queued: list[tuple[ops.Op[Any], Future[Any]]] = []
        self._draining = False  #: the worker is running (or about to run) the queued attempts
        self._changes: _Changes | None = None
        self._closes = 0  #: raised by close(): waiting gets of before it return

    @property
    def config(self) -> QueueConfig:
        """The validated configuration of this queue."""
        return self._queue.config

    @property
    def sync(self) -> Queue:
        """The ``djq.Queue`` underneath (its ``lock``, ``file``, ``engine``, ``compact()``)."""
        return self._queue

    def __repr__(self) -> str:
        return f"AsyncQueue({str(self.path)!r})"

    async def close(self) -> None:
        """Close the files and the worker thread; waiting gets return None (``get_many``: [])."""
        self._closes += 1
        changes, self._changes = self._changes, None
        if changes is not None:
            changes.close()
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, worker.shutdown)  # lets a call end
        self._queue.close()

    async def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` in the worker thread; a lease that finds nothing waits on the loop for ``wait`` s."""
        if not op.waits:
            done: R = await self._unbroken(op, self._attempt(op))
            return done
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        closes = self._closes
        changes = self._watch(loop)
        pause = _POLL_MIN
        while True:
            seen = changes.seen if changes is not None else 0
            result: R = await self._unbroken(op, self._attempt(op))
            if result or wait == 0 or closes != self._closes:
                if result and changes is not None:
                    changes.wake_one()  # more tasks may be ready: the next waiter looks
                return result
            left = math.inf if deadline is None else deadline - loop.time()
            if left <= 0:
                return result
            due = await self._in_worker(self._until_due)
            sleep = min(left, _SAFETY if due is None else max(due, 0.0))
            if changes is None:
                await asyncio.sleep(min(sleep, pause))
                pause = min(pause * 2, _POLL_MAX)
            else:
                await changes.wait(seen, sleep)
            changes = self._watch(loop) if changes is None or changes.closed else changes

    def _attempt(self, op: ops.Op[R]) -> asyncio.Future[R]:
        """Queue one attempt at ``op`` for the worker thread; attempts queued together run together."""
        done: Future[R] = Future()
        with self._guard:
            self._queued.append((op, done))
            start, self._draining = not self._draining, True
        if start:
            self._thread().submit(self._drain)
        return asyncio.wrap_future(done)

    def _drain(self) -> None:
        """In the worker: run the queued attempts until none is left (never raises)."""
        while True:
            with self._guard:
                batch, self._queued = self._queued, []
                if not batch:
                    self._draining = False
                    return
            writes = [(op, done) for op, done in batch if op.writes]
            for op, done in batch:
                if not op.writes:  # a read takes no lock: nothing to share
                    _settle(done, self._queue._submit, op)
            if len(writes) == 1:
                _settle(
                    writes[0][1], self._queue._submit, writes[0][0]
                )  # as the sync client: a lease looks first
            elif writes:
                self._together(writes)

    def _together(self, writes: list[tuple[ops.Op[Any], Future[Any]]]) -> None:
        """Apply several writes in one transaction: one lock, one write (a group commit, in-process).

        Leases that would find no work take no lock. A lost lease fails its own attempt only;
        any other failure runs each attempt again alone, so each gets its own outcome.
        """
        queue = self._queue
        if all(op.waits for op, _ in writes) and not queue._work_ready():
            for op, done in writes:
                done.set_result(ops.nothing(op))
            return
        outcomes: list[tuple[bool, Any]] = []

        def change(tx: Transaction) -> None:
            outcomes.clear()  # a retried transaction starts over
            for op, _ in writes:
                try:
                    outcomes.append((True, tx.apply(op)))
                except LeaseError as exc:  # changes nothing; only this attempt fails
                    outcomes.append((False, exc))

        try:
            queue.engine.transact("batch", change)
        except Exception:  # the files are as they were: each alone meets its own fault
            for op, done in writes:
                _settle(done, queue._submit, op)
            return
        for (_, done), (ok, value) in zip(writes, outcomes, strict=True):
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

    def _until_due(self) -> float | None:
        """In the worker: seconds until a delayed task or a lease comes due; None if none will."""
        engine = self._queue.engine
        due = engine.look(lambda current, now: state.next_deadline(current, now=now))
        return None if due is None else due - engine.clock()

    def _in_worker(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._thread(), function, *args)

    def _thread(self) -> ThreadPoolExecutor:
        """The worker thread (made on first use, and again after ``close``)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="djq-async")
        return self._worker

    def _watch(self, loop: asyncio.AbstractEventLoop) -> _Changes | None:
        """This loop's watch of the queue folder; None where inotify cannot watch it (or ``wait="poll"``)."""
        if self.config.wait is WaitKind.POLL:
            return None
        changes = self._changes
        if changes is not None and not changes.closed and changes.loop is loop:
            return changes
        path = self.path
        found = watcher(path.parent, {path.name, f"{path.name}.journal"})
        if found is None:  # no folder yet, or no inotify: poll (and try again next time)
            return None
        if changes is not None:
            changes.close()
        self._changes = _Changes(loop, found)
        return self._changes


class _Changes:
    """The queue folder's inotify watch on one event loop: each change wakes one waiting get."""

    def __init__(self, loop: asyncio.AbstractEventLoop, found: Watcher) -> None:
        self.loop = loop
        self.seen = 0  #: changes so far: a get that saw a change since its look does not sleep
        self.closed = False
        self._watcher = found
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        loop.add_reader(found.fileno(), self._readable)

    def _readable(self) -> None:
        if self._watcher.drain():
            self.seen += 1
            self.wake_one()

    def wake_one(self) -> None:
        """Wake the longest-waiting get (if any)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def wait(self, seen: int, timeout: float) -> None:
        """Sleep until a change after ``seen``, a wake-up, or ``timeout`` seconds."""
        if self.seen != seen or self.closed:
            return
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        handle = self.loop.call_later(timeout, _settle_later, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.wake_one()  # it was woken for a change it will never look at: pass it on
            raise
        finally:
            handle.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def close(self) -> None:
        """Stop watching; wake every waiting get (each returns: its queue is closed)."""
        if self.closed:
            return
        self.closed = True
        if not self.loop.is_closed():
            self.loop.remove_reader(self._watcher.fileno())
        for waiter in self._waiters:
            _settle_later(waiter)
        self._waiters.clear()
        self._watcher.close()


def _settle_later(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _settle(done: Future[R], function: Callable[[ops.Op[R]], R], op: ops.Op[R]) -> None:
    """Run ``function(op)`` and give ``done`` its result or its error."""
    try:
        done.set_result(function(op))
    except BaseException as exc:  # the caller's future carries it: the worker thread goes on
        done.set_exception(exc)
