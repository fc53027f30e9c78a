"""``Producer`` and ``Consumer``: the two roles, over anything shaped like a queue.

They depend only on the one client API (``api.BaseQueue``, also named ``QueueLike``),
which the direct ``Queue`` and the broker's client implement; this module imports
neither. ``djq.aconsumer`` holds their async twins. Imports from djq: ``api``, ``errors``,
``model``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Generic, TypeVar

from .api import BaseQueue
from .errors import ConfigError, DjqError, LeaseLost
from .model import JSON, Task

__all__ = ["Consumer", "Delivery", "Producer", "QueueLike"]

logger = logging.getLogger(__name__)

HEARTBEAT_FRACTION = 0.5  #: a heartbeat extends the lease after this fraction of it has passed

#: What producers and consumers need: the one client API (``Queue``, ``BrokerClient``, ...).
QueueLike = BaseQueue

Q = TypeVar("Q")  #: the queue a role works on: a ``QueueLike``, or an ``aio.AsyncBaseQueue``
_DELIVERY: ContextVar[Delivery] = ContextVar("djq_delivery")  # the handler's, set by Consumer.run


class _Sending(Generic[Q]):
    """What a producer holds, sync or async (``Producer``, ``aconsumer.AsyncProducer``)."""

    def __init__(self, queue: Q, *, priority: int = 0) -> None:
        """Send to ``queue`` with ``priority`` unless a call says otherwise."""
        self.queue = queue
        self.priority = priority
        self.sent = 0  #: tasks this producer has put

    def _priority(self, priority: int | None) -> int:
        return self.priority if priority is None else priority


class _Taking(Generic[Q]):
    """What a consumer holds, sync or async (``Consumer``, ``aconsumer.AsyncConsumer``)."""

    def __init__(self, queue: Q, *, lease: float | None = None, owner: str | None = None) -> None:
        """Consume from ``queue`` with leases of ``lease`` seconds (None: the queue's)."""
        self.queue = queue
        self.lease = lease
        self.owner = owner
        self.acked = 0  #: tasks acked by ``run``
        self.nacked = 0  #: tasks nacked by ``run`` because the handler raised
        self.lost = 0  #: leases lost before ``run`` could ack or nack


class Producer(_Sending[QueueLike]):
    """Puts tasks on a queue.

    Example:
        >>> import djq, tempfile, pathlib
        >>> q = djq.Queue(pathlib.Path(tempfile.mkdtemp()) / "Queue.json")
        >>> djq.Producer(q).send({"n": 1})
        '1'
    """

    def send(self, payload: JSON, *, priority: int | None = None, delay: float = 0.0) -> str:
        """Put one task; return its id."""
        task_id = self.queue.put(payload, priority=self._priority(priority), delay=delay)
        self.sent += 1
        return task_id

    def send_many(
        self, payloads: Iterable[JSON], *, priority: int | None = None, delay: float = 0.0
    ) -> list[str]:
        """Put several tasks at once (one lock, one write); return their ids."""
        ids = self.queue.put_many(payloads, priority=self._priority(priority), delay=delay)
        self.sent += len(ids)
        return ids


class Delivery:
    """One leased task in a handler's hands: what ``Consumer.delivery()`` returns inside ``run``.

    ``lost`` is set once the lease is known to be lost (a heartbeat's or ``extend``'s
    ``LeaseLost``): another consumer may hold the task now, so the handler should stop
    (its ack would raise ``LeaseLost`` anyway and be counted in ``Consumer.lost``).
    """

    def __init__(self, queue: QueueLike, task: Task, *, lease: float | None) -> None:
        """Hold ``task``, leased from ``queue``; ``lease`` is the consumer's (None: the queue's)."""
        self.task = task  #: the task as leased, then as last renewed (its token never changes)
        self.lost = threading.Event()  #: set when the lease was lost; wait on it to stop early
        self._queue = queue
        self._lease = lease

    def extend(self, *, lease: float | None = None) -> Task:
        """Renew the lease now for ``lease`` s (None: the consumer's); return the renewed task.

        Raises:
            LeaseLost: the token no longer holds the task (``lost`` is set too).
        """
        try:
            self.task = self._queue.extend(self.task, lease=self._lease if lease is None else lease)
        except LeaseLost:
            self.lost.set()
            raise
        return self.task


class Consumer(_Taking[QueueLike]):
    """Takes tasks from a queue, one lease at a time.

    Iterating blocks for the next task (``for task in Consumer(q)``) and leaves acking (and
    extending) to you; ``run(handler)`` acks when the handler returns and nacks when it
    raises, and keeps the lease alive while the handler works.

    Example:
        >>> import djq, tempfile, pathlib
        >>> q = djq.Queue(pathlib.Path(tempfile.mkdtemp()) / "Queue.json")
        >>> _ = q.put_many(["a", "b"])
        >>> consumer = djq.Consumer(q)
        >>> def handle(task):
        ...     if consumer.delivery().lost.is_set():  # the heartbeat lost the lease: stop early
        ...         return
        ...     print(task.payload)
        >>> consumer.run(handle, timeout=0)
        a
        b
        2
    """

    def get(self, *, timeout: float | None = None) -> Task | None:
        """Lease the next task, waiting up to ``timeout`` seconds (None: for ever)."""
        return self.queue.get(lease=self.lease, timeout=timeout, owner=self.owner)

    def __iter__(self) -> Iterator[Task]:
        """Yield leased tasks for ever, blocking for each (no heartbeat: extend them yourself)."""
        while True:
            task = self.get(timeout=None)
            if task is not None:
                yield task

    def delivery(self) -> Delivery:
        """The delivery the calling handler works on: its task, ``lost`` and ``extend()``.

        Call it from the handler ``run`` called (in its thread: a thread the handler starts
        must be handed the object).

        Raises:
            ConfigError: not called from a handler of ``run``.
        """
        try:
            return _DELIVERY.get()
        except LookupError:
            raise ConfigError("delivery() is for the handler that run() calls", field="delivery") from None

    def run(
        self,
        handler: Callable[[Task], object],
        *,
        max_tasks: int | None = None,
        timeout: float | None = None,
        heartbeat: bool = True,
    ) -> int:
        """Handle tasks until ``max_tasks`` were handled or none came within ``timeout`` s.

        The task is acked when ``handler`` returns, together with the next task's lease (one
        ``ack_and_get``: one lock and one write per task on a file queue), and nacked when it
        raises (the error is logged, and the task comes back or goes to the dead letters). A
        lease lost before the ack is logged and counted in ``lost``. A handler interrupted by
        a ``BaseException`` (Ctrl-C, ``SystemExit``) is not the task's failure: the task is
        given back uncounted (``release``) and the exception goes on. Returns how many tasks
        were handled.

        With ``heartbeat`` a thread extends the lease (``queue.extend``) each half lease
        while the handler runs, and stops when it ends, so a handler may run longer than its
        lease and still be the only one with the task. A lost lease stops the heartbeat and
        sets ``delivery().lost``. It is on by default because a lease is meant to detect a
        crashed consumer, not to bound a handler: without it a handler slower than its lease
        has its task delivered again while it still works. The price: one thread per task,
        one extend per half lease of handler time (none for a handler quicker than that),
        and a handler that hangs holds its task until its process dies (bound its time
        yourself).
        """
        handled = 0
        task = self.get(timeout=timeout) if max_tasks is None or max_tasks > 0 else None
        while task is not None:
            handled += 1
            ok = self._handle(handler, task, heartbeat=heartbeat)
            if max_tasks is not None and handled >= max_tasks:
                self._settle(task, ok=ok)
                break
            task = self._settle_and_get(task, ok=ok, timeout=timeout)
        return handled

    def _handle(self, handler: Callable[[Task], object], task: Task, *, heartbeat: bool) -> bool:
        """Run ``handler`` on ``task``; True when it returned, False when it raised."""
        try:
            with self._holding(task, heartbeat=heartbeat):
                handler(task)
        except Exception:  # the handler's failure is the task's outcome, not ours
            logger.exception("handler failed on task %s; nacking it", task.id)
            return False
        except BaseException:  # interrupted, not failed: the task goes back as if never delivered
            self._release(task)
            raise
        return True

    @contextlib.contextmanager
    def _holding(self, task: Task, *, heartbeat: bool) -> Iterator[Delivery]:
        """The handler's delivery, in its context, with a heartbeat beside it until the block ends."""
        delivery = Delivery(self.queue, task, lease=self.lease)
        beat = _Heartbeat(delivery, every=HEARTBEAT_FRACTION * self._lease()) if heartbeat else None
        reset = _DELIVERY.set(delivery)
        try:
            yield delivery
        finally:
            if beat is not None:
                beat.stop()  # returns once no extend is under way: none comes after the ack
            _DELIVERY.reset(reset)

    def _lease(self) -> float:
        """Seconds each lease lasts: the consumer's, or the queue's ``config.lease``."""
        return self.queue.config.lease if self.lease is None else self.lease

    def _settle(self, task: Task, *, ok: bool) -> None:
        try:
            if ok:
                self.queue.ack(task)
                self.acked += 1
            else:
                self.queue.nack(task)
                self.nacked += 1
        except LeaseLost:
            self._lost(task)

    def _settle_and_get(self, task: Task, *, ok: bool, timeout: float | None) -> Task | None:
        """Settle ``task``, then lease the next: an ack and that lease are one ``ack_and_get``.

        One operation, so on a file queue one lock and one write per task, not two. A nack,
        or an ack whose lease was lost, is followed by a plain get.
        """
        if ok:
            try:
                found = self.queue.ack_and_get(task, lease=self.lease, timeout=timeout, owner=self.owner)
            except LeaseLost:
                self._lost(task)
            else:
                self.acked += 1
                return found
        else:
            self._settle(task, ok=False)
        return self.get(timeout=timeout)

    def _lost(self, task: Task) -> None:
        logger.warning("lease on task %s was lost before it could be settled", task.id)
        self.lost += 1

    def _release(self, task: Task) -> None:
        try:
            self.queue.release(task)
        except DjqError as exc:  # lost meanwhile, or the queue is gone: the lease expires by itself
            logger.warning("could not give back task %s: %s", task.id, exc)


class _Heartbeat:
    """A thread that extends a delivery's lease every ``every`` s until ``stop`` or a lost lease."""

    def __init__(self, delivery: Delivery, *, every: float) -> None:
        self._stopped = threading.Event()
        name = f"djq-heartbeat-{delivery.task.id}"
        self._thread = threading.Thread(target=self._beat, args=(delivery, every), name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating; return once the thread has ended."""
        self._stopped.set()
        self._thread.join()

    def _beat(self, delivery: Delivery, every: float) -> None:
        while not self._stopped.wait(every):
            try:
                delivery.extend()
            except LeaseLost:
                logger.warning(
                    "lease on task %s was lost while its handler ran; heartbeat stopped", delivery.task.id
                )
                return
            except DjqError as exc:  # the queue failed this once (a lock timeout, a lost server): beat on
                logger.warning("heartbeat could not extend the lease on task %s: %s", delivery.task.id, exc)
