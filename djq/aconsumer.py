"""``AsyncProducer`` and ``AsyncConsumer``: the two roles over an async queue (``djq.aio``).

The twins of ``djq.client``'s ``Producer`` and ``Consumer``: the same names, counters, log
lines and rules, as coroutines. ``AsyncConsumer.run`` keeps up to ``concurrency`` handlers in
flight on one queue handle, each under its own lease and heartbeat. Cancelling ``run`` leaves
nothing leased: a handler it cancels has its task given back uncounted (``release``), and a
get it cancels leases nothing (``AsyncBaseQueue``'s cancellation rule). Imports from djq:
``aio``, ``client``, ``errors``, ``model``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .aio import AsyncBaseQueue
from .client import HEARTBEAT_FRACTION, _Sending, _Taking
from .errors import ConfigError, DjqError, LeaseLost
from .model import JSON, Task

__all__ = ["AsyncConsumer", "AsyncDelivery", "AsyncProducer"]

logger = logging.getLogger(__name__)

MAX_CONCURRENCY = 10_000  #: handlers one ``run`` may keep in flight

AsyncHandler = Callable[[Task], Awaitable[object]]
_DELIVERY: ContextVar[AsyncDelivery] = ContextVar("djq_async_delivery")  # each worker's own, set by run
_FINISHING: set[asyncio.Task[None]] = set()  # settles carried on past a second cancel (kept from collection)


class AsyncProducer(_Sending[AsyncBaseQueue]):
    """Puts tasks on an async queue (``Producer``'s twin)."""

    async def send(self, payload: JSON, *, priority: int | None = None, delay: float = 0.0) -> str:
        """Put one task; return its id."""
        task_id = await self.queue.put(payload, priority=self._priority(priority), delay=delay)
        self.sent += 1
        return task_id

    async def send_many(
        self, payloads: Iterable[JSON], *, priority: int | None = None, delay: float = 0.0
    ) -> list[str]:
        """Put several tasks in one operation; return their ids."""
        ids = await self.queue.put_many(payloads, priority=self._priority(priority), delay=delay)
        self.sent += len(ids)
        return ids


class AsyncDelivery:
    """One leased task in a handler's hands: what ``AsyncConsumer.delivery()`` returns inside ``run``.

    ``Delivery``'s twin. ``lost`` is set once the lease is known to be lost (a heartbeat's
    or ``extend``'s ``LeaseLost``): another consumer may hold the task now, so the handler
    should stop. Its ack would raise ``LeaseLost`` anyway and be counted in ``lost``.
    """

    def __init__(self, queue: AsyncBaseQueue, task: Task, *, lease: float | None) -> None:
        """Hold ``task``, leased from ``queue``; ``lease`` is the consumer's (None: the queue's)."""
        self.task = task  #: the task as leased, then as last renewed (its token never changes)
        self.lost = asyncio.Event()  #: set when the lease was lost; ``await lost.wait()`` to stop early
        self._queue = queue
        self._lease = lease

    async def extend(self, *, lease: float | None = None) -> Task:
        """Renew the lease now for ``lease`` s (None: the consumer's); return the renewed task.

        Raises:
            LeaseLost: the token no longer holds the task (``lost`` is set too).
        """
        try:
            self.task = await self._queue.extend(self.task, lease=self._lease if lease is None else lease)
        except LeaseLost:
            self.lost.set()
            raise
        return self.task


@dataclass
class _Plan:
    """One ``run``: what its workers share (one event loop: no lock needed)."""

    handler: AsyncHandler
    max_tasks: int | None
    timeout: float | None
    heartbeat: bool
    taken: int = 0  #: tasks leased, or being leased, by the workers
    handled: int = 0  #: tasks whose handler ended and whose outcome was settled
    drained: bool = False  #: a get found nothing within ``timeout``: lease no more

    def take(self) -> bool:
        """Claim one more lease; False when the run should lease no more."""
        if self.drained or (self.max_tasks is not None and self.taken >= self.max_tasks):
            return False
        self.taken += 1
        return True


class AsyncConsumer(_Taking[AsyncBaseQueue]):
    """Takes tasks from an async queue (``Consumer``'s twin).

    ``async for task in AsyncConsumer(q)`` waits for each next task and leaves acking (and
    extending) to you; ``await run(handler, concurrency=N)`` keeps N handlers in flight,
    acks when a handler returns and nacks when it raises, and keeps each lease alive while
    its handler works.

    Example:
        >>> import asyncio, djq, tempfile, pathlib
        >>> from djq.aconsumer import AsyncConsumer, AsyncProducer
        >>> async def main(path):
        ...     async with djq.AsyncQueue(path) as q:
        ...         await AsyncProducer(q).send_many([1, 2, 3])
        ...         seen = []
        ...         async def handle(task):
        ...             seen.append(task.payload)
        ...         consumer = AsyncConsumer(q)
        ...         await consumer.run(handle, concurrency=2, timeout=0)
        ...         return sorted(seen), consumer.acked
        >>> asyncio.run(main(pathlib.Path(tempfile.mkdtemp()) / "Queue.json"))
        ([1, 2, 3], 3)
    """

    async def get(self, *, timeout: float | None = None) -> Task | None:
        """Lease the next task, waiting up to ``timeout`` seconds (None: for ever)."""
        return await self.queue.get(lease=self.lease, timeout=timeout, owner=self.owner)

    async def __aiter__(self) -> AsyncIterator[Task]:
        """Yield leased tasks for ever, waiting for each (no heartbeat: extend them yourself)."""
        while True:
            task = await self.get(timeout=None)
            if task is not None:
                yield task

    def delivery(self) -> AsyncDelivery:
        """The delivery the calling handler works on: its task, ``lost`` and ``extend()``.

        Call it from the handler ``run`` awaits (or a task it starts, which inherits it).

        Raises:
            ConfigError: not called from a handler of ``run``.
        """
        try:
            return _DELIVERY.get()
        except LookupError:
            raise ConfigError("delivery() is for the handler that run() awaits", field="delivery") from None

    async def run(
        self,
        handler: AsyncHandler,
        *,
        concurrency: int = 1,
        max_tasks: int | None = None,
        timeout: float | None = None,
        heartbeat: bool = True,
    ) -> int:
        """Handle tasks until ``max_tasks`` were handled or none came within ``timeout`` s.

        ``concurrency`` workers share the queue handle; each leases a task, awaits
        ``handler(task)``, acks it when the handler returns and nacks it when it raises (the
        error is logged); a lease lost before the ack is logged and counted in ``lost``. At
        most ``max_tasks`` tasks are leased in all. Once a get finds nothing within
        ``timeout``, the workers lease no more, and ``run`` returns when the handlers in
        flight have ended. Returns how many tasks were handled. An error of the queue
        (not of a handler) stops every worker and is raised.

        ``handler`` must be an async function: blocking work belongs in
        ``await asyncio.to_thread(...)`` inside it, where you see that a cancelled handler
        leaves its thread running. (A thread cannot be cancelled, so ``run`` could not
        promise to stop with nothing leased if it ran sync handlers in threads itself.)

        Cancelling ``run`` cancels the handlers in flight and gives their tasks back
        uncounted (``release``); it raises ``CancelledError`` once nothing it leased is
        still leased. ``heartbeat`` is ``Consumer.run``'s (on by default for the same
        reasons): a task beside each handler extends its lease each half lease, stops when
        the handler ends, and on ``LeaseLost`` stops and sets ``delivery().lost``.

        Raises:
            ConfigError: ``handler`` is not an async function, or ``concurrency`` is not an
                integer from 1 to ``MAX_CONCURRENCY``.
        """
        _check_handler(handler)
        _check_concurrency(concurrency)
        plan = _Plan(handler, max_tasks, timeout, heartbeat)
        loop = asyncio.get_running_loop()
        workers = [loop.create_task(self._work(plan), name=f"djq-consumer-{n}") for n in range(concurrency)]
        try:
            await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            error = await _stop(workers)  # a cancel of run, or a worker's error: the others stop
        if error is not None:
            raise error
        return plan.handled

    async def _work(self, plan: _Plan) -> None:
        """One worker: lease, handle, settle, until the plan says stop."""
        while plan.take():
            task = await self.get(timeout=plan.timeout)
            if task is None:
                plan.taken -= 1
                plan.drained = True
                return
            await self._handle(plan, task)
            plan.handled += 1
            if _cancelling():  # the handler swallowed run's cancel: stop all the same
                raise asyncio.CancelledError

    async def _handle(self, plan: _Plan, task: Task) -> None:
        """Await the handler on ``task`` with a heartbeat beside it; settle its outcome whole."""
        delivery = AsyncDelivery(self.queue, task, lease=self.lease)
        reset = _DELIVERY.set(delivery)  # this worker's context: its handler's alone
        name = f"djq-heartbeat-{task.id}"
        beat = (
            asyncio.get_running_loop().create_task(self._beat(delivery), name=name)
            if plan.heartbeat
            else None
        )
        try:
            await plan.handler(task)
        except asyncio.CancelledError:  # run is being cancelled: the task goes back as if never delivered
            await _whole(self._give_back(beat, task))
            raise
        except Exception:  # the handler's failure is the task's outcome, not ours
            logger.exception("handler failed on task %s; nacking it", task.id)
            ok = False
        else:
            ok = True
        finally:
            _DELIVERY.reset(reset)
        await _whole(self._settle(beat, task, ok=ok))  # a cancel now waits for the ack or nack

    async def _beat(self, delivery: AsyncDelivery) -> None:
        """Extend ``delivery``'s lease each half lease until cancelled or the lease is lost."""
        every = HEARTBEAT_FRACTION * (self.queue.config.lease if self.lease is None else self.lease)
        while True:
            await asyncio.sleep(every)
            try:
                await delivery.extend()
            except LeaseLost:
                logger.warning(
                    "lease on task %s was lost while its handler ran; heartbeat stopped", delivery.task.id
                )
                return
            except DjqError as exc:  # the queue failed this once (a lock timeout, a lost server): beat on
                logger.warning("heartbeat could not extend the lease on task %s: %s", delivery.task.id, exc)

    async def _settle(self, beat: asyncio.Task[None] | None, task: Task, *, ok: bool) -> None:
        await _end(beat)
        try:
            if ok:
                await self.queue.ack(task)
                self.acked += 1
            else:
                await self.queue.nack(task)
                self.nacked += 1
        except LeaseLost:
            logger.warning("lease on task %s was lost before it could be settled", task.id)
            self.lost += 1

    async def _give_back(self, beat: asyncio.Task[None] | None, task: Task) -> None:
        await _end(beat)
        try:
            await self.queue.release(task)
        except DjqError as exc:  # lost meanwhile, or the queue is gone: the lease expires by itself
            logger.warning("could not give back task %s: %s", task.id, exc)


def _check_handler(handler: object) -> None:
    call = type(handler).__call__  # an object whose __call__ is async counts
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise ConfigError(
            "handler must be an async function (run blocking work in asyncio.to_thread inside it), "
            f"not {handler!r:.80}",
            field="handler",
        )


def _check_concurrency(concurrency: object) -> None:
    if type(concurrency) is not int or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(
            f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, not {concurrency!r:.80}",
            field="concurrency",
        )


def _cancelling() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def _end(beat: asyncio.Task[None] | None) -> None:
    """Stop a heartbeat; return once it has ended (an extend under way ends first, by ``_unbroken``)."""
    if beat is not None:
        beat.cancel()
        await asyncio.wait([beat])


async def _whole(step: Coroutine[Any, Any, None]) -> None:
    """Await ``step`` to its end even if cancelled meanwhile; then raise the cancel."""
    job = asyncio.ensure_future(step)
    _FINISHING.add(job)
    job.add_done_callback(_FINISHING.discard)
    try:
        await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])  # a second cancel ends this wait; the step goes on
        raise


async def _stop(workers: list[asyncio.Task[None]]) -> BaseException | None:
    """Cancel the workers still running (once each), wait for all; return the first error."""
    for worker in workers:
        if not worker.done():
            worker.cancel()
    await asyncio.wait(workers)
    errors = [w.exception() for w in workers if not w.cancelled()]  # retrieves every error
    return next((e for e in errors if e is not None), None)
