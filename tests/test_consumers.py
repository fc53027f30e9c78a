"""Consumers that hold a lease while they work: the heartbeat (sync and async), and AsyncConsumer.run.

On the file queue under tmp_path, in real time where a lease must run out: a lease of
``LEASE`` s and a handler of three leases. Nothing asserts on a duration; every wait is
bounded (``BOUND``), and a wait for a state polls it with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import djq
from djq.aconsumer import AsyncConsumer, AsyncProducer

pytestmark = pytest.mark.timeout(90)

LEASE = 1.0  #: seconds; the heartbeat extends at half of it
HOLD = 3 * LEASE  #: seconds a long handler works: three leases
BOUND = 30.0  #: seconds any one wait of a test may take before it fails
POLL = 0.05  #: seconds the rival consumer's get waits per try


def _path(tmp_path):
    return tmp_path / "q" / "Queue.json"


def _sync_queue(tmp_path, cls=djq.Queue):
    return cls(_path(tmp_path), lease=LEASE, fsync=False)


def _async_queue(tmp_path, cls=djq.AsyncQueue):
    return cls(_path(tmp_path), lease=LEASE, fsync=False)


def _run(coro):
    """Run one test's coroutine on a fresh loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, BOUND * 2))


def _until(condition, what):
    """Poll ``condition`` until it holds; fail after ``BOUND`` s."""
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {BOUND} s"
        time.sleep(0.01)


async def _async_until(condition, what):
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {BOUND} s"
        await asyncio.sleep(0.01)


def _heartbeats_alive():
    return [t.name for t in threading.enumerate() if t.name.startswith("djq-heartbeat-")]


class SpyQueue(djq.Queue):
    """A file queue that records each extend's outcome ("ok" or "lost")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extends = []

    def extend(self, task, *, lease=None):
        try:
            renewed = super().extend(task, lease=lease)
        except djq.LeaseLost:
            self.extends.append("lost")
            raise
        assert renewed.token == task.token
        self.extends.append("ok")
        return renewed


class AsyncSpyQueue(djq.AsyncQueue):
    """``SpyQueue``'s twin."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extends = []

    async def extend(self, task, *, lease=None):
        try:
            renewed = await super().extend(task, lease=lease)
        except djq.LeaseLost:
            self.extends.append("lost")
            raise
        assert renewed.token == task.token
        self.extends.append("ok")
        return renewed


# --- one long handler, a rival consumer: sync ---------------------------------------------


def _hold_sync(tmp_path, *, heartbeat):
    """One task; a handler of ``HOLD`` s during which a rival consumer keeps trying get()."""
    with _sync_queue(tmp_path, SpyQueue) as queue, _sync_queue(tmp_path) as rival_queue:
        queue.put("long")
        consumer, rival = djq.Consumer(queue), djq.Consumer(rival_queue)
        attempts, stolen = [], []

        def handler(task):
            attempts.append(task.attempts)
            deadline = time.monotonic() + HOLD
            while time.monotonic() < deadline and not stolen:
                got = rival.get(timeout=POLL)
                if got is not None:
                    stolen.append(got)

        assert consumer.run(handler, max_tasks=1, timeout=0, heartbeat=heartbeat) == 1
        return consumer, attempts, stolen, queue.stats(), queue.extends


def test_sync_heartbeat_keeps_a_handler_of_three_leases_the_only_one_with_its_task(tmp_path):
    """heartbeat=True: the rival gets nothing while the handler runs; the ack succeeds, attempts 1."""
    consumer, attempts, stolen, stats, extends = _hold_sync(tmp_path, heartbeat=True)
    assert stolen == []
    assert attempts == [1]
    assert (consumer.acked, consumer.nacked, consumer.lost) == (1, 0, 0)
    assert (stats.total, stats.acked_total) == (0, 1)
    assert extends  # it did beat
    assert set(extends) == {"ok"}
    assert _heartbeats_alive() == []


def test_sync_without_heartbeat_the_same_handler_has_its_task_delivered_twice(tmp_path):
    """heartbeat=False (the control): the lease runs out, the rival gets the task, the ack is lost."""
    consumer, attempts, stolen, stats, extends = _hold_sync(tmp_path, heartbeat=False)
    assert attempts == [1]
    assert [t.attempts for t in stolen] == [2]
    assert (consumer.acked, consumer.lost) == (0, 1)
    assert stats.leased == 1  # the rival holds it now
    assert extends == []


# --- one long handler, a rival consumer: async --------------------------------------------


async def _hold_async(tmp_path, *, heartbeat):
    async with _async_queue(tmp_path, AsyncSpyQueue) as queue, _async_queue(tmp_path) as rival_queue:
        await queue.put("long")
        consumer, rival = AsyncConsumer(queue), AsyncConsumer(rival_queue)
        attempts, stolen = [], []

        async def handler(task):
            attempts.append(task.attempts)
            deadline = time.monotonic() + HOLD
            while time.monotonic() < deadline and not stolen:
                got = await rival.get(timeout=POLL)
                if got is not None:
                    stolen.append(got)

        assert await consumer.run(handler, max_tasks=1, timeout=0, heartbeat=heartbeat) == 1
        return consumer, attempts, stolen, await queue.stats(), queue.extends


def test_async_heartbeat_keeps_a_handler_of_three_leases_the_only_one_with_its_task(tmp_path):
    """The async twin: the rival gets nothing; the ack succeeds with attempts 1."""
    consumer, attempts, stolen, stats, extends = _run(_hold_async(tmp_path, heartbeat=True))
    assert stolen == []
    assert attempts == [1]
    assert (consumer.acked, consumer.nacked, consumer.lost) == (1, 0, 0)
    assert (stats.total, stats.acked_total) == (0, 1)
    assert extends  # it did beat
    assert set(extends) == {"ok"}


def test_async_without_heartbeat_the_same_handler_has_its_task_delivered_twice(tmp_path):
    """The async control: without a heartbeat the rival gets the task (attempts 2); the ack is lost."""
    consumer, attempts, stolen, stats, extends = _run(_hold_async(tmp_path, heartbeat=False))
    assert attempts == [1]
    assert [t.attempts for t in stolen] == [2]
    assert (consumer.acked, consumer.lost) == (0, 1)
    assert stats.leased == 1
    assert extends == []


# --- a heartbeat that hits LeaseLost --------------------------------------------------------


def test_sync_heartbeat_that_loses_the_lease_tells_the_handler_and_stops(tmp_path, caplog):
    """The task acked behind the handler's back: delivery().lost is set, the heartbeat ends."""
    with _sync_queue(tmp_path, SpyQueue) as queue, _sync_queue(tmp_path) as other:
        queue.put("x")
        consumer = djq.Consumer(queue)
        seen = {}

        def handler(task):
            delivery = consumer.delivery()
            other.ack(task)  # someone else finishes it
            seen["lost"] = delivery.lost.wait(BOUND)
            _until(lambda: not _heartbeats_alive(), "the heartbeat's end")  # still inside the handler
            with pytest.raises(djq.LeaseLost):
                delivery.extend()

        assert consumer.run(handler, max_tasks=1, timeout=0) == 1
    assert seen == {"lost": True}
    assert queue.extends.count("lost") == 2  # the heartbeat's, then the handler's own
    assert queue.extends[-2:] == ["lost", "lost"]
    assert (consumer.acked, consumer.lost) == (0, 1)
    assert "heartbeat stopped" in caplog.text


def test_async_heartbeat_that_loses_the_lease_tells_the_handler_and_stops(tmp_path, caplog):
    """The async twin: lost is set (an asyncio.Event), the heartbeat task ends while the handler runs."""

    async def main():
        async with _async_queue(tmp_path, AsyncSpyQueue) as queue, _async_queue(tmp_path) as other:
            await queue.put("x")
            consumer = AsyncConsumer(queue)
            seen = {}

            async def handler(task):
                delivery = consumer.delivery()
                await other.ack(task)
                await asyncio.wait_for(delivery.lost.wait(), BOUND)
                seen["lost"] = delivery.lost.is_set()
                name = f"djq-heartbeat-{task.id}"
                await _async_until(lambda: all(t.get_name() != name for t in asyncio.all_tasks()), "its end")

            assert await consumer.run(handler, max_tasks=1, timeout=0) == 1
            return consumer, seen, queue.extends

    consumer, seen, extends = _run(main())
    assert seen == {"lost": True}
    assert extends.count("lost") == 1
    assert extends[-1] == "lost"
    assert (consumer.acked, consumer.lost) == (0, 1)
    assert "heartbeat stopped" in caplog.text


# --- the sync consumer's other paths --------------------------------------------------------


def test_sync_heartbeat_ends_with_a_quick_handler_and_extends_nothing(tmp_path):
    """A handler quicker than half a lease: no extend; no heartbeat thread outlives run()."""
    with SpyQueue(_path(tmp_path), fsync=False) as queue:  # the default 30 s lease
        queue.put_many([1, 2, 3])
        consumer = djq.Consumer(queue)
        assert consumer.run(lambda task: None, timeout=0) == 3
        assert queue.extends == []
        assert consumer.acked == 3
    assert _heartbeats_alive() == []


def test_sync_interrupted_handler_gives_its_task_back_uncounted(tmp_path):
    """A KeyboardInterrupt in the handler is not the task's failure: released, attempts 0, re-raised."""
    with _sync_queue(tmp_path) as queue:
        queue.put("x")

        def handler(task):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            djq.Consumer(queue).run(handler, timeout=0)
        assert [(t.payload, t.attempts) for t in queue.peek()] == [("x", 0)]
        assert queue.stats().leased == 0


def test_delivery_outside_a_handler_is_refused(tmp_path):
    """delivery() names what is wrong when no handler of run() is calling it."""
    with _sync_queue(tmp_path) as queue, pytest.raises(djq.ConfigError) as info:
        djq.Consumer(queue).delivery()
    assert info.value.field == "delivery"
    with pytest.raises(djq.ConfigError):
        AsyncConsumer(None).delivery()  # no queue is touched


# --- AsyncConsumer.run ----------------------------------------------------------------------


def test_async_run_keeps_n_handlers_in_flight_at_once(tmp_path):
    """concurrency=N: N handlers meet at a barrier (none finished before all N arrived), twice over."""
    n = 4

    async def main():
        async with _async_queue(tmp_path) as queue:
            await queue.put_many(list(range(2 * n)))
            barrier = asyncio.Barrier(n)
            flight = {"now": 0, "peak": 0}

            async def handler(task):
                flight["now"] += 1
                flight["peak"] = max(flight["peak"], flight["now"])
                await barrier.wait()  # passes only when n handlers are here together
                flight["now"] -= 1

            consumer = AsyncConsumer(queue)
            handled = await consumer.run(handler, concurrency=n, timeout=0)
            return handled, consumer, flight, await queue.stats()

    handled, consumer, flight, stats = _run(main())
    assert handled == 2 * n
    assert flight["peak"] == n
    assert (consumer.acked, consumer.nacked, consumer.lost) == (2 * n, 0, 0)
    assert stats.total == 0


def test_async_run_nacks_when_the_handler_raises_and_logs_it(tmp_path, caplog):
    """A raising handler: the task is nacked (ready again, attempts 1), the error logged; max_tasks holds."""

    async def main():
        async with _async_queue(tmp_path) as queue:
            await AsyncProducer(queue).send_many([{"ok": True}, {"ok": False}, {"ok": True}])

            async def handler(task):
                if not task.payload["ok"]:
                    raise RuntimeError("boom")

            consumer = AsyncConsumer(queue)
            handled = await consumer.run(handler, concurrency=2, max_tasks=2, timeout=0)
            return handled, consumer, await queue.peek()

    with caplog.at_level(logging.ERROR, logger="djq.aconsumer"):
        handled, consumer, ready = _run(main())
    assert handled == 2
    assert (consumer.acked, consumer.nacked) == (1, 1)
    assert [(t.payload, t.attempts) for t in ready] == [({"ok": False}, 1), ({"ok": True}, 0)]
    assert "nacking" in caplog.text
    assert "boom" in caplog.text


def test_cancelling_async_run_leaves_nothing_leased(tmp_path):
    """Cancel with two handlers in flight and a third worker waiting in get: all given back uncounted."""

    async def main():
        async with _async_queue(tmp_path) as queue:
            await queue.put_many(["a", "b"])
            started, both = [], asyncio.Event()

            async def handler(task):
                started.append(task.payload)
                if len(started) == 2:
                    both.set()
                await asyncio.Event().wait()  # for ever: only the cancel ends it

            consumer = AsyncConsumer(queue)
            run = asyncio.get_running_loop().create_task(consumer.run(handler, concurrency=3))
            await both.wait()
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            return consumer, await queue.stats(), await queue.peek()

    consumer, stats, ready = _run(main())
    assert stats.leased == 0
    assert sorted((t.payload, t.attempts) for t in ready) == [("a", 0), ("b", 0)]
    assert (consumer.acked, consumer.nacked, consumer.lost) == (0, 0, 0)


def test_async_consumer_iterates_over_leased_tasks(tmp_path):
    """async for yields leased tasks; the caller acks."""

    async def main():
        async with _async_queue(tmp_path) as queue:
            await queue.put_many([1, 2])
            tasks = aiter(AsyncConsumer(queue))
            first, second = await anext(tasks), await anext(tasks)
            await queue.ack_many([first, second])
            await tasks.aclose()
            return [first.payload, second.payload], await queue.stats()

    payloads, stats = _run(main())
    assert payloads == [1, 2]
    assert (stats.total, stats.acked_total) == (0, 2)


def test_async_run_refuses_a_sync_handler_and_a_bad_concurrency(tmp_path):
    """run() takes async handlers only (blocking work goes to asyncio.to_thread inside one)."""

    async def handler(task):
        return None

    async def main():
        async with _async_queue(tmp_path) as queue:
            consumer = AsyncConsumer(queue)
            for bad, field in [
                ({"handler": lambda task: None}, "handler"),
                ({"handler": handler, "concurrency": 0}, "concurrency"),
            ]:
                with pytest.raises(djq.ConfigError) as info:
                    await consumer.run(**bad)
                assert info.value.field == field
            return await queue.stats()

    assert _run(main()).total == 0
