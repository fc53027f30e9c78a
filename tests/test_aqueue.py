"""The file queue's async client: the event loop never waits on the lock or for work; cancellation is safe.

A heartbeat coroutine counts ticks on the loop. Another process holds the queue's lock
(or would put a task) and lets go only when told, and the test tells it after the loop
has ticked: a blocked loop would never tick, so the holder would give up by itself after
``HOLD_LIMIT`` seconds and say so, and the test fails on that. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import djq

pytestmark = pytest.mark.timeout(60)

HOLD_LIMIT = 20.0  #: seconds the other process holds the lock at most when never told to let go
TICKS = 5  #: ticks the loop must make while the call is held up

#: Holds the queue's lock until a line comes on stdin (or HOLD_LIMIT passes); says which.
_HOLDER = """
import select, sys, djq
q = djq.Queue(sys.argv[1])
with q.engine.holding("test"):
    print("held", flush=True)
    told = select.select([sys.stdin], [], [], float(sys.argv[2]))[0]
print("released:" + ("told" if told else "gave up"), flush=True)
"""


@asynccontextmanager
async def _lock_held(path: Path) -> AsyncIterator[Callable[[], None]]:
    """Another process holds the lock of the queue at ``path``; yields a function that lets it go."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), str(HOLD_LIMIT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert await asyncio.to_thread(holder.stdout.readline) == "held\n"

        def let_go() -> None:
            holder.stdin.write("go\n")  # type: ignore[union-attr]
            holder.stdin.flush()  # type: ignore[union-attr]

        yield let_go
        out, _ = await asyncio.to_thread(holder.communicate, timeout=HOLD_LIMIT + 10)
        assert out == "released:told\n", "the loop did not tick while the lock was held"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)


async def _after_ticks(action: Callable[[], object], ticks: int = TICKS) -> int:
    """Tick ``ticks`` times on the loop, then run ``action``; return the ticks counted."""
    count = 0
    while count < ticks:
        await asyncio.sleep(0.005)
        count += 1
    action()
    return count


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "Queue.json"


def test_a_put_waits_for_the_lock_off_the_loop(path: Path):
    """While another process holds the lock, the loop ticks; the put completes once it lets go."""

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False) as q, _lock_held(path) as let_go:
            put = asyncio.ensure_future(q.put("x"))
            ticks = await _after_ticks(lambda: None)
            assert not put.done(), "the put went through while another process held the lock"
            let_go()
            assert await put == "1"
            assert ticks == TICKS
            assert (await q.stats()).ready == 1

    asyncio.run(main())


def test_a_waiting_get_sleeps_on_the_loop_until_another_process_puts(path: Path):
    """A get with no task waits without blocking the loop, and is woken by another process's put."""
    djq.Queue(path, fsync=False).purge()  # the folder and files exist: the get watches them

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False) as q:
            get = asyncio.ensure_future(q.get(timeout=30))

            def put_elsewhere() -> None:
                assert not get.done()
                script = "import sys, djq; djq.Queue(sys.argv[1], fsync=False).put('from afar')"
                subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=30)

            await _after_ticks(put_elsewhere)
            task = await get
            assert task is not None
            assert task.payload == "from afar"
            await q.ack(task)

    asyncio.run(main())


def test_many_waiting_gets_on_one_handle_each_get_one_task(path: Path):
    """Eight gets wait on one handle; eight puts wake them all, one task each, none twice."""

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False) as q, djq.AsyncQueue(path, fsync=False) as producer:
            await producer.purge()
            gets = [asyncio.ensure_future(q.get(timeout=30)) for _ in range(8)]
            await _after_ticks(lambda: None)
            for n in range(8):
                await producer.put(n)
            tasks = await asyncio.gather(*gets)
            assert sorted(t.payload for t in tasks if t is not None) == list(range(8))
            assert await q.ack_many([t for t in tasks if t is not None]) == []

    asyncio.run(main())


def test_a_cancelled_waiting_get_leases_nothing(path: Path):
    """Cancel a get while it waits: it raises CancelledError, and a task put after is still ready."""

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False) as q:
            await q.purge()
            get = asyncio.ensure_future(q.get(timeout=30))
            await _after_ticks(get.cancel)
            with pytest.raises(asyncio.CancelledError):
                await get
            await q.put("after")
            stats = await q.stats()
            assert (stats.ready, stats.leased) == (1, 0)

    asyncio.run(main())


def test_a_get_cancelled_during_its_lease_gives_the_task_back_uncounted(path: Path):
    """Cancelled while its lease waits for the lock: once it ends, the task is ready again, attempts 0."""

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False, max_attempts=1) as q:
            await q.put("x")
            async with _lock_held(path) as let_go:
                get = asyncio.ensure_future(q.get(timeout=30))
                await _after_ticks(get.cancel)
                let_go()
                with pytest.raises(asyncio.CancelledError):
                    await get
            stats = await q.stats()
            assert (stats.ready, stats.leased, stats.dead) == (1, 0, 0)
            again = await q.get()
            assert again is not None
            assert again.attempts == 1

    asyncio.run(main())


def test_an_extend_cancelled_during_its_attempt_renews_the_lease_and_gives_nothing_back(path: Path):
    """A heartbeat's extend cancelled while it waits for the lock: the holder keeps the task.

    The extend ends first (the lease renewed), and nothing is released: the holder's ack
    still succeeds. (The give-back after a cancel is for what a lease handed out.)
    """

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False, lease=30) as q:
            await q.put("x")
            task = await q.get()
            assert task is not None
            async with _lock_held(path) as let_go:
                extend = asyncio.ensure_future(q.extend(task, lease=60))
                await _after_ticks(extend.cancel)
                let_go()
                with pytest.raises(asyncio.CancelledError):
                    await extend
            assert (await q.stats()).leased == 1
            await q.ack(task)
            assert (await q.stats()).acked_total == 1

    asyncio.run(main())


def test_a_cancelled_put_has_happened_when_the_cancel_is_raised(path: Path):
    """A put cancelled while it waits for the lock completes first; the queue then holds the task."""

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False) as q:
            async with _lock_held(path) as let_go:
                put = asyncio.ensure_future(q.put("kept"))
                await _after_ticks(put.cancel)
                let_go()
                with pytest.raises(asyncio.CancelledError):
                    await put
            assert [t.payload for t in await q.peek()] == ["kept"]

    asyncio.run(main())


def test_a_get_times_out_and_close_wakes_a_waiting_get(path: Path):
    """A get gives up at its timeout; close() makes a get waiting for ever return None."""

    async def main() -> None:
        q = djq.AsyncQueue(path, fsync=False)
        await q.purge()
        assert await q.get(timeout=0.05) is None
        forever = asyncio.ensure_future(q.get(timeout=None))
        await _after_ticks(lambda: None)
        await q.close()
        assert await asyncio.wait_for(forever, 30) is None

    asyncio.run(main())


def test_poll_wait_and_a_missing_folder_still_deliver(tmp_path: Path):
    """wait="poll" (no inotify) and a folder that does not exist yet: the waiting get still gets the task."""

    async def main(path: Path, **options: object) -> None:
        async with djq.AsyncQueue(path, fsync=False, **options) as q:
            get = asyncio.ensure_future(q.get(timeout=30))
            await _after_ticks(lambda: None)
            async with djq.AsyncQueue(path, fsync=False) as producer:
                await producer.put("late")
            task = await get
            assert task is not None
            assert task.payload == "late"

    asyncio.run(main(tmp_path / "polled" / "Queue.json", wait="poll"))
    asyncio.run(main(tmp_path / "not-yet" / "Queue.json"))


def test_open_asynchronous_gives_the_async_file_queue(path: Path):
    """djq.open(path, asynchronous=True) is an AsyncQueue on that file, with Queue's options."""
    q = djq.open(path, asynchronous=True, lease=7.0)
    assert isinstance(q, djq.AsyncQueue)
    assert q.config.lease == 7.0
    assert q.path == path
    with pytest.raises(djq.ConfigError, match="asynchronous"):
        djq.open(path, asynchronous="yes")  # type: ignore[call-overload]


def test_calls_of_many_coroutines_share_the_lock_and_a_lost_lease_fails_only_its_own_call(path: Path):
    """Fifty puts at once share writes; a stale ack among good ones fails alone."""

    async def main() -> None:
        async with djq.AsyncQueue(path, fsync=False) as q:
            await q.purge()
            writes = q.sync.file.writes
            ids = await asyncio.gather(*(q.put(n) for n in range(50)))
            assert sorted(map(int, ids)) == list(range(1, 51))
            assert q.sync.file.writes - writes < 50, "no two puts shared a write"
            tasks = await asyncio.gather(*(q.get() for _ in range(50)))
            assert sorted(t.payload for t in tasks if t is not None) == list(range(50))
            stale = djq.Lease(id=tasks[0].id, token="not-the-token")
            outcomes = await asyncio.gather(
                q.ack(tasks[0]), q.ack(stale), q.ack(tasks[1]), return_exceptions=True
            )
            assert outcomes[0] is None
            assert isinstance(outcomes[1], djq.LeaseLost)
            assert outcomes[2] is None
            stats = await q.stats()
            assert (stats.acked_total, stats.leased) == (2, 48)

    asyncio.run(main())


def test_the_async_api_has_every_method_of_the_sync_one_with_the_same_parameters():
    """AsyncBaseQueue mirrors BaseQueue: each public method a coroutine, with the same parameters."""

    def public(cls: type) -> dict[str, inspect.Signature]:
        members = inspect.getmembers(cls, inspect.isfunction)
        return {name: inspect.signature(f) for name, f in members if not name.startswith("_")}

    sync, asynchronous = public(djq.BaseQueue), public(djq.AsyncBaseQueue)
    assert set(asynchronous) == set(sync)
    for name, signature in sync.items():
        assert inspect.iscoroutinefunction(getattr(djq.AsyncBaseQueue, name)), name
        assert list(asynchronous[name].parameters.values()) == list(signature.parameters.values()), name
