"""The async Redis client's own behaviour: the event loop runs on while a get waits, a cancel
leases nothing and leaves the pool usable, a cancel mid-script gives the task back, close ends
waiting gets, fsync=True is checked, a lost server is one line and the next call reconnects.

The contract suite (tests/test_contract.py, kind "async-redis") runs against this client too.
Each test runs one scenario in ``asyncio.run`` under ``asyncio.timeout`` (a hang is a clear
failure); they use the session's scratch server (``conftest.server_url``) and start their own
``scratch.redis()`` only to stop or reconfigure one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import cannot_run, server_url

import djq
from djq import ops, scratch

redis = pytest.importorskip("redis")
import redis.asyncio as aioredis  # noqa: E402 (only once redis is known to be installed)

from djq.aredisq import AsyncRedisQueue  # noqa: E402

BOUND = 20.0  #: seconds any one scenario may take
TICKS = 5  #: heartbeat ticks seen before the put that wakes the waiting get
_names = iter(range(1 << 30))


@pytest.fixture
def url() -> str:
    """The session's Redis server (started once, stopped at the end of the session)."""
    return server_url("redis")


@pytest.fixture
def name() -> str:
    """A fresh queue name on the session's server."""
    return f"a{os.getpid()}-{next(_names)}"


def run(scenario: Callable[[], Coroutine[Any, Any, Any]], bound: float = BOUND) -> Any:
    """Run ``scenario()`` on a fresh event loop, failing with TimeoutError after ``bound`` s."""

    async def bounded() -> Any:
        async with asyncio.timeout(bound):
            return await scenario()

    return asyncio.run(bounded())


async def _blocked(raw: aioredis.Redis) -> bool:
    """Whether some client of the server is blocked in a BLPOP."""
    return any(c.get("cmd") == "blpop" for c in await raw.client_list())


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (bounded by the scenario's timeout)."""
    while not await check():
        await asyncio.sleep(0.01)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text, type(exc).__name__
    assert "\n" not in text, text
    return text


def _own_server(tmp_path: Path, *, fsync: bool) -> scratch.Scratch:
    try:
        return scratch.redis(tmp_path, fsync=fsync).start()
    except djq.ConfigError as exc:
        cannot_run("a private Redis server", str(exc))
        raise


def test_the_loop_runs_on_while_a_get_waits_in_the_server(url, name):
    """While a get waits (up to 10 s) a heartbeat ticks; once it has seen TICKS ticks and the get
    blocked in BLPOP, another handle puts, and the get returns that task. A get that blocked the
    loop would starve the heartbeat, return None after 10 s, and overrun the 5 s bound."""

    async def scenario() -> None:
        consumer, producer = (AsyncRedisQueue(url, name=name, fsync=False) for _ in range(2))
        raw = aioredis.Redis.from_url(url)
        ticks = 0

        async def heartbeat() -> str:
            nonlocal ticks
            while ticks < TICKS or not await _blocked(raw):
                ticks += 1
                await asyncio.sleep(0.01)
            return await producer.put("hello")

        try:
            async with asyncio.timeout(5.0):
                got, put_id = await asyncio.gather(consumer.get(timeout=10.0), heartbeat())
        except TimeoutError:
            pytest.fail(
                f"the event loop was blocked while the get waited ({ticks} ticks seen)", pytrace=False
            )
        finally:
            for handle in (consumer, producer, raw):
                await handle.aclose() if handle is raw else await handle.close()
        assert ticks >= TICKS
        assert (got.id, got.payload) == (put_id, "hello")

    run(scenario)


def test_a_cancelled_waiting_get_leases_nothing_and_the_pool_stays_usable(url, name):
    """Cancel a get blocked in BLPOP: it raises CancelledError at once, its BLPOP ends with it, nothing
    is leased; then many coroutines share the handle's pool, and each reply is its own call's."""

    async def scenario() -> None:
        q = AsyncRedisQueue(url, name=name, fsync=False)
        raw = aioredis.Redis.from_url(url)
        try:
            getter = asyncio.create_task(q.get(timeout=30.0))
            await _until(lambda: _blocked(raw))
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            await _until(lambda: _not(_blocked(raw)))  # its connection was dropped, not left waiting
            seen = await q.stats()
            assert (seen.leased, seen.ready, seen.total) == (0, 0, 0)
            ids = await asyncio.gather(*(q.put(n) for n in range(20)))
            peeked, stats = await asyncio.gather(q.peek(20), q.stats())
            assert sorted(t.id for t in peeked) == sorted(ids)
            assert stats.ready == 20
            got = await asyncio.gather(*(q.get() for _ in range(20)))
            assert sorted(t.payload for t in got) == list(range(20))
            assert {t.attempts for t in got} == {1}
            assert await q.ack_many(got) == []
            assert (await q.stats()).acked_total == 20
        finally:
            await q.close()
            await raw.aclose()

    run(scenario)


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


@pytest.mark.parametrize("n", [1, 3])
def test_a_get_cancelled_while_its_script_runs_gives_the_tasks_back(url, name, n):
    """The claim's reply is held back (after the server leased the tasks) until the get is cancelled:
    the get lets the script end, gives every task back (ready, attempts 0), then raises CancelledError."""

    async def scenario() -> None:
        q = AsyncRedisQueue(url, name=name, fsync=False)
        ids = await q.put_many(list(range(n)))
        replied, go = asyncio.Event(), asyncio.Event()
        script = q._script

        async def held_back(keys: list[str], args: list[Any]) -> Any:
            reply = await script(keys, args)
            if args[0] == "lease":
                replied.set()
                await go.wait()
            return reply

        q._script = held_back
        try:
            getter = asyncio.create_task(q.get() if n == 1 else q.get_many(n))
            await replied.wait()
            assert (await q.stats()).leased == n  # the server leased them; the reply is not read yet
            getter.cancel()
            go.set()
            with pytest.raises(asyncio.CancelledError):
                await getter
            seen = await q.stats()
            assert (seen.leased, seen.ready, seen.dead) == (0, n, 0)
            back = await q.peek(n)
            assert [t.id for t in back] == ids  # each at its place
            assert {(t.attempts, t.token) for t in back} == {(0, None)}
            again = await q.get()
            assert (again.id, again.attempts) == (ids[0], 1)
        finally:
            await q.close()

    run(scenario)


def test_a_put_cancelled_while_its_script_runs_is_stored_and_raises(url, name):
    """A cancel while the put's script runs lets it end: the task is stored, the put raises CancelledError."""

    async def scenario() -> None:
        q = AsyncRedisQueue(url, name=name, fsync=False)
        replied, go = asyncio.Event(), asyncio.Event()
        script = q._script

        async def held_back(keys: list[str], args: list[Any]) -> Any:
            reply = await script(keys, args)
            if args[0] == "put":
                replied.set()
                await go.wait()
            return reply

        q._script = held_back
        try:
            putter = asyncio.create_task(q.put("kept"))
            await replied.wait()
            putter.cancel()
            go.set()
            with pytest.raises(asyncio.CancelledError):
                await putter
            assert [t.payload for t in await q.peek(5)] == ["kept"]
        finally:
            await q.close()

    run(scenario)


def test_close_ends_waiting_gets_and_a_later_call_reconnects(url, name):
    """close() while a get and a get_many wait in the server: they return None and []; close twice is
    fine; the handle's next call connects again."""

    async def scenario() -> None:
        q = AsyncRedisQueue(url, name=name, fsync=False)
        raw = aioredis.Redis.from_url(url)
        try:
            waiting = asyncio.gather(q.get(timeout=30.0), q.get_many(2, timeout=None))
            await _until(lambda: _blocked(raw))
            await q.close()
            await q.close()
            assert await waiting == [None, []]
            await q.put("after")
            assert (await q.get()).payload == "after"
        finally:
            await q.close()
            await raw.aclose()

    run(scenario)


def test_release_gives_the_lease_back_and_wakes_a_waiting_get(url, name):
    """release: the task is ready at once, uncounted, and a get waiting past its own timeout (by the
    lease) is woken for it; the old token then holds nothing."""

    async def scenario() -> None:
        holder, waiter = (AsyncRedisQueue(url, name=name, fsync=False) for _ in range(2))
        raw = aioredis.Redis.from_url(url)
        try:
            await holder.put("x")
            task = await holder.get(lease=120.0)
            getter = asyncio.create_task(waiter.get(timeout=10.0))
            await _until(lambda: _blocked(raw))
            await holder.release(task)
            got = await getter
            assert (got.id, got.attempts) == (task.id, 1)
            with pytest.raises(djq.LeaseLost):
                await holder.release(task)
        finally:
            for q in (holder, waiter):
                await q.close()
            await raw.aclose()

    run(scenario)


def test_fsync_true_is_refused_on_a_server_that_does_not_fsync_every_write(tmp_path, url):
    """fsync=True: accepted where the server fsyncs every write; elsewhere the first call is a
    ConfigError saying how to fix it, and nothing is written."""

    async def accepted() -> None:
        q = AsyncRedisQueue(url, name=f"durable-{os.getpid()}", fsync=True)
        await q.stats()
        await q.close()

    run(accepted)
    lax = _own_server(tmp_path, fsync=False)

    async def refused() -> None:
        q = AsyncRedisQueue(lax.url, name="q", fsync=True)  # no I/O yet
        quick = AsyncRedisQueue(lax.url, name="q", fsync=False)
        try:
            with pytest.raises(djq.ConfigError) as info:
                await q.put("x")
            assert info.value.field == "fsync"
            assert "--appendonly yes --appendfsync always" in _one_line(info.value)
            assert "fsync=False" in str(info.value)
            assert (await quick.stats()).total == 0
            await quick.put("x")
        finally:
            await q.close()
            await quick.close()

    try:
        run(refused)
    finally:
        lax.remove()


def test_the_arguments_are_checked_as_the_sync_clients_are(url):
    """A bad name, clock or URL, or a file queue's option: the sync client's ConfigError, at once."""
    for bad, field in [({"name": "a{b}"}, "name"), ({"clock": 5}, "clock"), ({"lock": None}, "lock")]:
        with pytest.raises(djq.ConfigError) as info:
            AsyncRedisQueue(url, fsync=False, **bad)
        assert info.value.field == field
    with pytest.raises(djq.ConfigError) as info:
        AsyncRedisQueue("redis://localhost:notaport/0", fsync=False)
    assert info.value.field == "url"


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path):
    """No socket, a closed port: the first call raises BrokerUnavailable naming the URL, not its password."""

    async def scenario() -> None:
        for target in (f"unix://{tmp_path}/none.sock", "redis://:secret@127.0.0.1:1/0"):
            q = djq.open(target, fsync=False, asynchronous=True)
            assert isinstance(q, AsyncRedisQueue)
            with pytest.raises(djq.BrokerUnavailable) as info:
                await q.stats()
            text = _one_line(info.value)
            assert "secret" not in text
            assert ("none.sock" in text) or ("127.0.0.1:1" in text)
            await q.close()

    run(scenario)


def test_after_a_server_restart_the_next_call_reconnects_and_answered_puts_hold(tmp_path):
    """Kill the server (appendfsync always): a call fails with BrokerUnavailable (one line), never
    replayed; once the server is back, a later call of the same handle connects and sees every put."""
    server = _own_server(tmp_path, fsync=True)

    async def scenario() -> None:
        q = AsyncRedisQueue(server.url, name="survivor", fsync=True)
        try:
            ids = await q.put_many(list(range(5)))
            await asyncio.to_thread(server.stop, kill=True)
            with pytest.raises(djq.BrokerUnavailable) as info:
                await q.stats()
            assert server.url in _one_line(info.value)
            await asyncio.to_thread(server.start)
            try:
                await q.stats()
            except djq.BrokerUnavailable as exc:  # a pooled connection of the old server
                _one_line(exc)
            assert [t.id for t in await q.peek(10)] == ids
            assert (await q.stats()).put_total == 5
        finally:
            await q.close()

    try:
        run(scenario, bound=60.0)
    finally:
        server.remove()


def test_pop_takes_tasks_in_order_for_good_and_a_waiting_pop_is_woken_by_a_put(url, name):
    """pop: highest priority first, then put order, each done and gone (counted acked); an empty queue
    pops None; a pop with a wait blocks in BLPOP until another handle puts."""

    async def scenario() -> None:
        consumer, producer = (AsyncRedisQueue(url, name=name, fsync=False) for _ in range(2))
        raw = aioredis.Redis.from_url(url)
        try:
            await producer.put("a")
            await producer.put("b", priority=1)
            popped = [await consumer._submit(ops.Pop()) for _ in range(2)]
            assert [(t.payload, t.state, t.attempts, t.token) for t in popped] == [
                ("b", djq.TaskState.DONE, 1, None), ("a", djq.TaskState.DONE, 1, None)
            ]  # fmt: skip
            assert await consumer._submit(ops.Pop()) is None
            waiting = asyncio.create_task(consumer._submit(ops.Pop(), wait=10.0))
            await _until(lambda: _blocked(raw))
            await producer.put("c")
            assert (await waiting).payload == "c"
            stats = await consumer.stats()
            assert (stats.total, stats.acked_total) == (0, 3)
        finally:
            for q in (consumer, producer):
                await q.close()
            await raw.aclose()

    run(scenario)


def test_ack_lease_acks_and_leases_the_next_and_a_stale_one_is_lease_lost(url, name):
    """ack_lease: acked and the next leased under next_token, in one call; then None with nothing next
    (the ack done); a stale token is LeaseLost and leaves the queue as it was."""

    async def scenario() -> None:
        q = AsyncRedisQueue(url, name=name, fsync=False)
        try:
            await q.put_many(["a", "b"])
            task = await q.get()
            step = ops.AckLease(id=task.id, token=task.token, next_token="n1", owner="me", duration=30.0)
            got = await q._submit(step)
            assert (got.payload, got.token, got.owner, got.state) == ("b", "n1", "me", djq.TaskState.LEASED)
            with pytest.raises(djq.LeaseLost):
                await q._submit(step)  # its token held "a", which is gone
            stats = await q.stats()
            assert (stats.leased, stats.acked_total) == (1, 1)
            last = ops.AckLease(id=got.id, token="n1", next_token="n2", owner="me", duration=30.0)
            assert await q._submit(last) is None
            stats = await q.stats()
            assert (stats.total, stats.acked_total) == (0, 2)
        finally:
            await q.close()

    run(scenario)
