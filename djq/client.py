"""``Producer`` and ``Consumer``: the two roles, over anything shaped like a queue.

They depend only on the one client API (``api.BaseQueue``, also named ``QueueLike``),
which the direct ``Queue`` and the broker's client implement; this module imports
neither. Imports from djq: ``api``, ``errors``, ``model``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from .api import BaseQueue
from .errors import LeaseLost
from .model import JSON, Task

__all__ = ["Consumer", "Producer", "QueueLike"]

logger = logging.getLogger(__name__)


#: What producers and consumers need: the one client API (``Queue``, ``BrokerClient``, ...).
QueueLike = BaseQueue


class Producer:
    """Puts tasks on a queue.

    Example:
        >>> import djq, tempfile, pathlib
        >>> q = djq.Queue(pathlib.Path(tempfile.mkdtemp()) / "Queue.json")
        >>> djq.Producer(q).send({"n": 1})
        '1'
    """

    def __init__(self, queue: QueueLike, *, priority: int = 0) -> None:
        """Send to ``queue`` with ``priority`` unless a call says otherwise."""
        self.queue = queue
        self.priority = priority
        self.sent = 0  #: tasks this producer has put

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

    def _priority(self, priority: int | None) -> int:
        return self.priority if priority is None else priority


class Consumer:
    """Takes tasks from a queue, one lease at a time.

    Iterating blocks for the next task (``for task in Consumer(q)``) and leaves acking to
    you; ``run(handler)`` acks when the handler returns and nacks when it raises.
    """

    def __init__(self, queue: QueueLike, *, lease: float | None = None, owner: str | None = None) -> None:
        """Consume from ``queue`` with leases of ``lease`` seconds (None: the queue's)."""
        self.queue = queue
        self.lease = lease
        self.owner = owner
        self.acked = 0  #: tasks acked by ``run``
        self.nacked = 0  #: tasks nacked by ``run`` because the handler raised
        self.lost = 0  #: leases lost before ``run`` could ack or nack

    def get(self, *, timeout: float | None = None) -> Task | None:
        """Lease the next task, waiting up to ``timeout`` seconds (None: for ever)."""
        return self.queue.get(lease=self.lease, timeout=timeout, owner=self.owner)

    def __iter__(self) -> Iterator[Task]:
        """Yield leased tasks for ever, blocking for each."""
        while True:
            task = self.get(timeout=None)
            if task is not None:
                yield task

    def run(
        self,
        handler: Callable[[Task], object],
        *,
        max_tasks: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Handle tasks until ``max_tasks`` were handled or none came within ``timeout`` s.

        The task is acked when ``handler`` returns and nacked when it raises (the error is
        logged, and the task comes back or goes to the dead letters). A lease lost before
        the ack is logged and counted in ``lost``. Returns how many tasks were handled.
        """
        handled = 0
        while max_tasks is None or handled < max_tasks:
            task = self.get(timeout=timeout)
            if task is None:
                break
            handled += 1
            try:
                handler(task)
            except Exception:  # the handler's failure is the task's outcome, not ours
                logger.exception("handler failed on task %s; nacking it", task.id)
                self._settle(task, ok=False)
            else:
                self._settle(task, ok=True)
        return handled

    def _settle(self, task: Task, *, ok: bool) -> None:
        try:
            if ok:
                self.queue.ack(task)
                self.acked += 1
            else:
                self.queue.nack(task)
                self.nacked += 1
        except LeaseLost:
            logger.warning("lease on task %s was lost before it could be settled", task.id)
            self.lost += 1
