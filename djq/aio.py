"""The one client API as coroutines: ``AsyncBaseQueue``, over the async form of the seam.

Every method of ``api.BaseQueue`` is here as a coroutine with the same arguments, the
same checks (the very functions ``api`` builds its operations with: nothing is checked
twice or differently) and the same result. A transport implements::

    async _submit(op, wait=0.0) -> the operation's result

and ``config`` and ``close``; ``djq.aqueue`` (the file queue), ``djq.aremote`` (the
broker), ``djq.apostgres`` and ``djq.aredisq`` do. ``djq.open(target, asynchronous=True)``
picks one by the target's form.

Cancellation is safe. A transport runs each attempt at an operation (one statement, one
script, one transaction under the file lock: the part that may change the queue) through
``_unbroken``: a cancel that arrives while an attempt is under way lets it end, gives back
what a lease got (``release``: ready again, the attempt uncounted) and only then raises
``CancelledError``. So when a cancelled call raises, it either changed nothing or did all it
was asked, and the queue's state says which (a cancelled get leaves nothing leased). A
cancel while a get only waits for work ends the wait at once. Imports from djq: ``api``,
``errors``, ``model``, ``ops``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from . import ops
from .api import (
    _ack_lease,
    _ack_many,
    _extend,
    _id,
    _lease_many,
    _lease_next,
    _purge,
    _put_many,
    _then_lease,
    _timeout,
    _token,
)
from .errors import DjqError
from .model import JSON, Lease, QueueConfig, QueueStats, Task, TaskState

__all__ = ["AsyncBaseQueue"]

logger = logging.getLogger(__name__)
R = TypeVar("R")
_CLEANUPS: set[asyncio.Task[None]] = set()  #: give-backs under way after a cancel (kept from collection)
_LEASES = (ops.LeaseNext, ops.LeaseMany, ops.AckLease)  #: the operations that hand out a lease


class AsyncBaseQueue(abc.ABC):
    """The queue's methods as coroutines; a subclass supplies the transport.

    The semantics are ``djq.BaseQueue``'s (each method's documentation is there): at-least-
    once delivery, leases with tokens, ``max_attempts`` deliveries then the dead letters.
    A handle may be shared by any number of coroutines of one event loop. Use it as
    ``async with``, or ``await q.close()``.
    """

    @property
    @abc.abstractmethod
    def config(self) -> QueueConfig:
        """The queue's configuration (lease, max_attempts, payload limit, ...)."""

    @property
    def path(self) -> Path:
        """The queue file (a server queue's is its name)."""
        return self.config.path

    @abc.abstractmethod
    async def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run one operation; return its result (the async seam every transport implements)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what this handle holds open (a get waiting in it returns None); the queue carries on."""

    async def __aenter__(self: Any) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def put(self, payload: JSON, *, priority: int = 0, delay: float = 0.0) -> str:
        """Add a task; return its id once it is stored (``BaseQueue.put``)."""
        return (await self.put_many([payload], priority=priority, delay=delay))[0]

    async def put_many(self, payloads: Iterable[JSON], *, priority: int = 0, delay: float = 0.0) -> list[str]:
        """Add several tasks in one operation; return their ids in order (``BaseQueue.put_many``)."""
        op = _put_many(await self._settings(), payloads, priority, delay)
        return [] if op is None else await self._submit(op)

    async def get(
        self, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> Task | None:
        """Lease the next task, waiting up to ``timeout`` s (None: until one comes) (``BaseQueue.get``)."""
        op = _lease_next(await self._settings(), lease, owner)
        return await self._submit(op, wait=_timeout(timeout))

    async def pop(self, *, timeout: float | None = 0.0) -> Task | None:
        """Take the next task for good, at most once (``BaseQueue.pop``)."""
        return await self._submit(ops.Pop(), wait=_timeout(timeout))

    async def ack_and_get(
        self,
        task: Task | Lease,
        *,
        lease: float | None = None,
        timeout: float | None = 0.0,
        owner: str | None = None,
    ) -> Task | None:
        """Ack ``task`` and lease the next task in one operation (``BaseQueue.ack_and_get``)."""
        op = _ack_lease(await self._settings(), task, lease, owner)
        wait = _timeout(timeout)  # checked before anything is submitted
        found = await self._submit(op)
        return found if found is not None or wait == 0 else await self._submit(_then_lease(op), wait=wait)

    async def get_many(
        self, n: int, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> list[Task]:
        """Lease up to ``n`` tasks at once; [] when none came in time (``BaseQueue.get_many``)."""
        op = _lease_many(await self._settings(), n, lease, owner)
        return await self._submit(op, wait=_timeout(timeout))

    async def ack(self, task: Task | Lease) -> None:
        """Finish a leased task; ``LeaseLost`` if its lease was lost (``BaseQueue.ack``)."""
        await self._submit(ops.Ack(id=_id(task), token=_token(task)))

    async def ack_many(self, tasks: Iterable[Task | Lease]) -> list[str]:
        """Ack several leased tasks; return the ids whose lease was lost (``BaseQueue.ack_many``)."""
        op = _ack_many(tasks)
        return [] if op is None else await self._submit(op)

    async def nack(self, task: Task | Lease, *, delay: float = 0.0) -> TaskState:
        """Give a leased task back; return ``READY`` or ``DEAD`` (``BaseQueue.nack``)."""
        return await self._submit(ops.Nack(id=_id(task), token=_token(task), delay=delay))

    async def release(self, task: Task | Lease) -> None:
        """Give a leased task back uncounted, ready at once (``BaseQueue.release``)."""
        await self._submit(ops.Release(id=_id(task), token=_token(task)))

    async def extend(self, task: Task | Lease, *, lease: float | None = None) -> Task:
        """Renew a lease for ``lease`` seconds from now; return the task (``BaseQueue.extend``)."""
        return await self._submit(_extend(await self._settings(), task, lease))

    async def requeue(self, task_id: str) -> Task:
        """Move a dead task back to ready (``BaseQueue.requeue``)."""
        return await self._submit(ops.Requeue(id=task_id))

    async def purge(self, *, dead_only: bool = False) -> int:
        """Remove every task (or the dead letters); return how many (``BaseQueue.purge``)."""
        return await self._submit(_purge(dead_only))

    async def stats(self) -> QueueStats:
        """Count the tasks in each state (``BaseQueue.stats``)."""
        return await self._submit(ops.Stats())

    async def peek(self, limit: int = 10) -> list[Task]:
        """Return up to ``limit`` ready tasks in delivery order (``BaseQueue.peek``)."""
        return await self._submit(ops.Peek(limit=limit))

    async def dead(self) -> list[Task]:
        """Return the dead letters (``BaseQueue.dead``)."""
        return await self._submit(ops.Dead())

    async def check(self, *, fix: bool = False) -> list[str]:
        """Validate the stored queue; return the problems (``BaseQueue.check``)."""
        return await self._submit(ops.Check(fix=fix))

    async def _settings(self) -> QueueConfig:
        """The configuration operations are built with: ``config`` (a broker's client asks its broker)."""
        return self.config

    async def _unbroken(self, op: ops.Op[R], attempt: Awaitable[R]) -> R:
        """Await one attempt at ``op`` whole: a cancel lets it end, gives back its leases, then raises."""
        work = asyncio.ensure_future(attempt)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cleanup = asyncio.ensure_future(self._after_cancel(op, work))
            _CLEANUPS.add(cleanup)
            cleanup.add_done_callback(_CLEANUPS.discard)
            await asyncio.wait([cleanup])  # a second cancel ends this wait; the give-back goes on
            raise

    async def _after_cancel(self, op: ops.Op[Any], work: asyncio.Future[Any]) -> None:
        """Wait for the cancelled attempt to end; give back every task it leased (a popped one is gone).

        Only a lease hands out a task: an extend's renewed task is the caller's already (a
        heartbeat cancelled mid-extend must not give back the task its handler still holds).
        """
        try:
            result = await work
        except BaseException:  # it failed, or never ran: nothing was leased by it
            return
        if not isinstance(op, _LEASES):
            return
        for task in result if isinstance(result, list) else [result]:
            if not isinstance(task, Task) or task.state is not TaskState.LEASED:
                continue
            try:
                await self.release(task)
            except DjqError as exc:  # lost meanwhile, or the backend is gone: the lease expires by itself
                logger.warning("could not give back task %s after a cancelled call: %s", task.id, exc)
