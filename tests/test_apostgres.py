"""The async PostgreSQL client's own behaviour: a free event loop, cancels, a lost server, close.

The contract suite runs on this client too (kind ``async-postgres``); these tests cover what
only the coroutine client has. Each runs its coroutine in ``asyncio.run`` bounded by
``asyncio.timeout``, on the session's scratch server (``conftest.server_url``).
"""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest
from conftest import FakeClock, server_url

import djq
from djq import ops

psycopg = pytest.importorskip("psycopg")
from djq.apostgres import AsyncPostgresQueue  # noqa: E402 (only once psycopg is known to be there)
from djq.postgres import PostgresQueue  # noqa: E402

DEADLINE = 30.0  #: seconds any one test's coroutine may take before it fails
TICKS = 50  #: heartbeats the loop must give while a get waits
_names = itertools.count()


@pytest.fixture
def url() -> str:
    return server_url("postgres")


@pytest.fixture
def name() -> str:
    return f"apg{os.getpid()}-{next(_names)}"


def run(main) -> None:
    """Run the coroutine function ``main`` on a fresh loop, failing clearly at DEADLINE."""

    async def bounded():
        async with asyncio.timeout(DEADLINE):
            await main()

    asyncio.run(bounded())


async def until(condition, what: str):
    """Await ``condition()`` until it returns something true (polling the server); fail naming ``what``."""
    async with asyncio.timeout(DEADLINE / 2):
        while not (found := await condition()):
            await asyncio.sleep(0.01)
    assert found, what
    return found


async def backends(url: str, name: str, where: str = "true") -> list[tuple]:
    """(pid, state, wait_event_type, query) of the server backends of the queue's clients."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        query = "SELECT pid, state, wait_event_type, query FROM pg_stat_activity WHERE application_name = %s"
        cursor = await conn.execute(
            psycopg.sql.SQL(query + " AND {}").format(psycopg.sql.SQL(where)), [f"djq/{name}"]
        )
        return await cursor.fetchall()


LISTENERS = "(query LIKE 'LISTEN%%' OR query LIKE '%%least(%%')"  #: a waiting get's last statements


def listening(url: str, name: str, n: int = 1):
    """A condition: ``n`` clients of the queue sit idle on their listeners (waiting gets).

    A waiting get's own connection LISTENs, then asks the due time (``least(...)``) and sleeps.
    """

    async def found():
        rows = await backends(url, name, f"state = 'idle' AND {LISTENERS}")
        return rows if len(rows) >= n else None

    return found


def test_the_loop_runs_while_a_get_waits_and_a_later_put_wakes_it(url, name):
    """While get(timeout=...) waits, other coroutines run; a put made after TICKS heartbeats wakes it."""

    async def main():
        async with AsyncPostgresQueue(url, name=name) as q, AsyncPostgresQueue(url, name=name) as producer:
            getting = asyncio.create_task(q.get(timeout=DEADLINE * 4))
            await until(listening(url, name), "the get to LISTEN")
            ticks = 0
            while ticks < TICKS:  # a blocked loop gives no ticks: the put never comes, the bound fails
                await asyncio.sleep(0.01)
                ticks += 1
            assert not getting.done()
            task_id = await producer.put("after the ticks")
            task = await getting
            assert (task.id, task.payload, task.attempts) == (task_id, "after the ticks", 1)

    run(main)


def test_a_cancelled_waiting_get_leases_nothing_and_its_listener_is_closed(url, name):
    """Cancelling a get that waits for work ends it at once; nothing is leased; the handle works on."""

    async def main():
        async with AsyncPostgresQueue(url, name=name) as q:
            getting = asyncio.create_task(q.get(timeout=None))
            await until(listening(url, name), "the get to LISTEN")
            getting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getting
            assert (await q.stats()).leased == 0
            assert q._idle == []  # never pooled in an unknown state
            assert await backends(url, name, LISTENERS) == []
            task_id = await q.put("x")
            assert (await q.get()).id == task_id

    run(main)


def test_a_get_cancelled_mid_claim_gives_the_task_back(url, name):
    """A cancel while the claim waits on a row lock: the claim ends, its task is released uncounted."""

    async def main():
        async with AsyncPostgresQueue(url, name=name, claim="for_update") as q:
            task_id = await q.put("held")
            async with await psycopg.AsyncConnection.connect(url) as holder:  # a transaction of the test's
                await holder.execute("SELECT id FROM djq_task WHERE queue = %s FOR UPDATE", [name])
                getting = asyncio.create_task(q.get())
                await until(
                    lambda: backends(url, name, "state = 'active' AND wait_event_type = 'Lock'"),
                    "the claim to wait on the row lock",
                )
                getting.cancel()
                await asyncio.sleep(0)  # the cancel reaches the get while its claim is in flight
                assert not getting.done()
                await holder.rollback()
            with pytest.raises(asyncio.CancelledError):
                await getting
            stats = await q.stats()
            assert (stats.leased, stats.ready) == (0, 1)
            assert [(t.id, t.attempts) for t in await q.peek()] == [(task_id, 0)]
            again = await q.get()
            assert (again.id, again.attempts) == (task_id, 1)

    run(main)


def test_a_lost_connection_is_one_broker_unavailable_and_the_next_call_reconnects(url, name):
    """The statement connection's or a waiting get's backend terminated: one line, then it works again."""

    async def main():
        async with AsyncPostgresQueue(url, name=name) as q:
            await q.put("x")
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
                await admin.execute("SELECT pg_terminate_backend(%s)", [q._conn.info.backend_pid])
                with pytest.raises(djq.BrokerUnavailable) as info:
                    await q.stats()
                assert "\n" not in str(info.value)
                assert "is unavailable" in str(info.value)
                assert (await q.stats()).ready == 1  # a new connection; nothing replayed
                task = await q.get()
                getting = asyncio.create_task(q.get(timeout=DEADLINE * 4))
                (pid, *_), *_ = await until(listening(url, name), "the get to LISTEN")
                await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                with pytest.raises(djq.BrokerUnavailable):
                    await getting
            await q.release(task)
            assert (await q.get(timeout=DEADLINE)).id == task.id

    run(main)


def test_close_wakes_every_waiting_get_and_the_handle_works_again(url, name):
    """``await close()`` returns waiting gets (None, []); a later call reconnects."""

    async def main():
        q = AsyncPostgresQueue(url, name=name)
        await q.stats()
        waiting = [asyncio.create_task(q.get(timeout=None)), asyncio.create_task(q.get_many(3, timeout=None))]
        await until(listening(url, name, 2), "both gets to LISTEN")
        await q.close()
        assert await asyncio.gather(*waiting) == [None, []]
        await q.close()  # idempotent
        assert await q.put("again")
        await q.close()

    run(main)


async def _true(value: bool) -> bool:
    return value


def test_many_coroutines_share_one_handle_each_task_once(url, name):
    """Waiting gets of one handle and a producer's puts: every task leased once, connections pooled."""

    async def main():
        async with AsyncPostgresQueue(url, name=name) as q, AsyncPostgresQueue(url, name=name) as producer:
            gets = [asyncio.create_task(q.get(timeout=DEADLINE * 4)) for _ in range(8)]
            await until(listening(url, name, 8), "the gets to LISTEN")
            ids = await producer.put_many([f"t{n}" for n in range(8)])
            tasks = await asyncio.gather(*gets)
            assert sorted(t.id for t in tasks) == sorted(ids)
            assert await q.ack_many(tasks) == []
            await until(lambda: _true(len(q._idle) == 8), "the listeners to be pooled")
            for _ in range(3):  # later waits reuse the pooled listeners
                getting = asyncio.create_task(q.get(timeout=DEADLINE))
                await until(listening(url, name), "the get to LISTEN")
                await producer.put("more")
                await q.ack(await getting)
            assert len(await backends(url, name)) <= 2 + 8  # two statement connections, the listeners
            assert (await q.stats()).acked_total == 11

    run(main)


@pytest.mark.parametrize(
    "options",
    [
        {"claim": "nowait"},
        {"name": "a b"},
        {"clock": 5},
        {"lock": "flock"},
        {"lease": 0.0},
        {"colour": "red"},
    ],
)
def test_bad_arguments_are_the_same_config_errors_as_the_sync_client(options):
    """Every check is the sync client's: the same field, the same message, before any I/O."""
    options = {"name": "q", **options}
    errors = []
    for cls in (PostgresQueue, AsyncPostgresQueue):
        with pytest.raises(djq.ConfigError) as info:
            cls("postgresql://nobody:sekret@/nowhere?host=/nonexistent", **options)
        errors.append((info.value.field, str(info.value)))
    assert errors[0] == errors[1]


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path, name):
    """No server at the address: BrokerUnavailable naming it, one line, the password masked."""

    async def main():
        async with AsyncPostgresQueue(
            f"postgresql://postgres:sekret@/postgres?host={tmp_path}", name=name
        ) as q:
            with pytest.raises(djq.BrokerUnavailable) as info:
                await q.put("x")
        message = str(info.value)
        assert "\n" not in message
        assert str(tmp_path) in message
        assert "sekret" not in message

    run(main)


def test_the_fake_clock_drives_leases_as_in_the_sync_client(url, name):
    """With a clock, an expired lease comes back on the next get, its attempt counted."""

    async def main():
        clock = FakeClock()
        async with AsyncPostgresQueue(url, name=name, clock=clock) as q:
            task_id = await q.put("x")
            first = await q.get(lease=1.0)
            assert await q.get() is None
            clock.advance(1.0)
            again = await q.get()
            assert (again.id, again.attempts) == (task_id, 2)
            with pytest.raises(djq.LeaseLost):
                await q.release(first)
            await q.release(again)
            assert [(t.id, t.attempts) for t in await q.peek()] == [(task_id, 1)]

    run(main)


def test_pop_takes_for_good_and_a_waiting_pop_is_woken_by_a_put(url, name):
    """Pop through the async seam: priority first, gone and acked; a waiting pop takes the next put."""

    async def main():
        async with AsyncPostgresQueue(url, name=name) as q, AsyncPostgresQueue(url, name=name) as producer:
            low = await q.put("low")
            high = await q.put("high", priority=3)
            assert [(await q._submit(ops.Pop())).id for _ in "ab"] == [high, low]
            assert await q._submit(ops.Pop()) is None
            popping = asyncio.create_task(q._submit(ops.Pop(), wait=DEADLINE))
            await until(listening(url, name), "the pop to LISTEN")
            task_id = await producer.put("later")
            popped = await popping
            assert (popped.id, popped.state, popped.attempts) == (task_id, djq.TaskState.DONE, 1)
            stats = await q.stats()
            assert (stats.acked_total, stats.total) == (3, 0)

    run(main)


def test_ack_lease_acks_and_leases_the_next_or_raises_lease_lost_changing_nothing(url, name):
    """AckLease through the async seam: the next task under next_token; a stale token changes nothing."""

    async def main():
        clock = FakeClock()
        async with AsyncPostgresQueue(url, name=name, clock=clock) as q:
            first, second = await q.put_many(["a", "b"])
            held = await q.get()
            step = ops.AckLease(id=held.id, token=held.token, next_token="n1", owner="w", duration=5.0)
            nxt = await q._submit(step)
            assert (held.id, nxt.id, nxt.token, nxt.owner) == (first, second, "n1", "w")
            with pytest.raises(djq.LeaseLost):
                await q._submit(step)  # its token no longer holds the acked task: nothing leased
            extended = await q.extend(nxt)  # still leased under n1
            assert (extended.id, extended.token) == (second, "n1")
            last = ops.AckLease(id=nxt.id, token="n1", next_token="n2", owner="w", duration=5.0)
            assert await q._submit(last) is None
            stats = await q.stats()
            assert (stats.acked_total, stats.total) == (2, 0)

    run(main)
