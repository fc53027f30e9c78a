"""The async broker client: the loop never waits on the broker, and a cancel leaves nothing leased.

Each test runs its coroutine with ``asyncio.run`` against a broker in a thread (conftest's
``BrokerThread``, stopped at teardown). Nothing sleeps to wait: a test waits for what the
broker says (``ping()["waiting"]``), for a reply, or for a cancel to finish, each under
``asyncio.timeout(BOUND)``, so a hang fails with a clear error. The contract itself runs
against this client in ``tests/test_contract.py`` (kind ``async-broker``).
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Callable, Iterator
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any

import pytest
from conftest import BrokerThread

import djq
from djq import wire
from djq.aremote import AsyncBrokerClient

BOUND = 20.0  #: seconds a test's steps may take together (generous: "not stuck", never a speed)
CLIENT_TIMEOUT = 10.0  #: seconds a test's client waits for a reply before BrokerUnavailable
TICKS = 50  #: heartbeats the loop must give while a get waits in the broker


@pytest.fixture
def broker(queue_path: Path) -> Iterator[BrokerThread]:
    """A broker for ``queue_path`` in a thread (real clock, no fsync), stopped at teardown."""
    thread = BrokerThread(queue_path)
    try:
        yield thread
    finally:
        thread.stop()


def _client(queue_path: Path) -> AsyncBrokerClient:
    return AsyncBrokerClient(queue_path, timeout=CLIENT_TIMEOUT)


async def _until_waiting(client: AsyncBrokerClient, n: int) -> None:
    """Return once ``n`` gets wait in the broker (asked of the broker, never guessed from time)."""
    while (await client.ping())["waiting"] != n:
        await asyncio.sleep(0)


def _run(main: Callable[[], Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(BOUND):
            return await main()

    return asyncio.run(bounded())


def test_the_loop_keeps_running_while_a_get_waits_in_the_broker(broker: BrokerThread, queue_path: Path):
    """A heartbeat ticks while a get waits; after TICKS ticks another client's put serves that get."""
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        async with _client(queue_path) as a, _client(queue_path) as b:

            async def heartbeat() -> str:
                nonlocal ticks
                while ticks < TICKS or (await a.ping())["waiting"] == 0:  # a's ping beside its own get
                    ticks += 1
                    await asyncio.sleep(0)
                return await b.put({"after": "ticks"})

            got, task_id = await asyncio.gather(a.get(timeout=BOUND), heartbeat())
            assert got is not None, "the get returned empty: the loop was blocked while it waited"
            assert (got.id, got.payload) == (task_id, {"after": "ticks"})
            await a.ack(got)

    _run(main)
    assert ticks >= TICKS


def test_a_cancelled_waiting_get_leases_nothing_and_the_next_put_goes_to_the_next_get(
    broker: BrokerThread, queue_path: Path
):
    """Cancel a get waiting in the broker: it ends at once, the broker drops it, the next get is served.

    ``a``'s timeout is past the test's bound: a cancel that waited for it (instead of
    ending the get's wait in the broker) fails the test.
    """

    async def main() -> None:
        async with AsyncBrokerClient(queue_path, timeout=10 * BOUND) as a, _client(queue_path) as b:
            getter = asyncio.create_task(a.get(timeout=None))
            await _until_waiting(b, 1)
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            assert (await b.ping())["waiting"] == 0  # the broker dropped the get with its connection,
            assert (await b.metrics())["dropped"] == 0  # as a client that said goodbye, not one at fault
            task_id = await b.put("next")
            stats = await b.stats()
            assert (stats.ready, stats.leased) == (1, 0)
            task = await a.get(timeout=CLIENT_TIMEOUT)
            assert task is not None
            assert (task.id, task.attempts) == (task_id, 1)
            await a.ack(task)

    _run(main)


def test_a_get_cancelled_as_its_task_arrives_gives_the_task_back_uncounted(
    broker: BrokerThread, queue_path: Path
):
    """The put serves the waiting get in the broker; the get is cancelled before it reads its reply.

    The put is a blocking call, so the loop does not run between its reply and the cancel:
    the broker has leased the task to the get (same batch as the put), and the cancel finds
    the reply on its way. The task must come back ready, its delivery uncounted.
    """

    async def main() -> None:
        async with _client(queue_path) as a, _client(queue_path) as b:
            getter = asyncio.create_task(a.get(timeout=None))
            await _until_waiting(b, 1)
            with djq.connect(queue_path, timeout=CLIENT_TIMEOUT) as sync:
                task_id = sync.put("raced")  # blocks the loop: the getter cannot read its reply yet
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            stats = await b.stats()
            assert (stats.ready, stats.leased, stats.dead) == (1, 0, 0)
            [task] = await b.peek()
            assert (task.id, task.attempts) == (task_id, 0)
            events = (await b.metrics(rows=True))["events"]
            assert [row[0] for row in events].count("release") == 1, "the served get was not given back"

    _run(main)


def test_close_ends_a_waiting_get_with_none(broker: BrokerThread, queue_path: Path):
    """close() while a get waits in the broker: the get returns None; nothing is leased."""

    async def main() -> None:
        async with _client(queue_path) as b:
            a = _client(queue_path)
            getter = asyncio.create_task(a.get(timeout=None))
            await _until_waiting(b, 1)
            await a.close()
            assert await getter is None
            await _until_waiting(b, 0)
            assert (await b.stats()).leased == 0

    _run(main)


def test_a_cancelled_put_either_happened_or_not_when_the_cancel_is_raised(
    broker: BrokerThread, queue_path: Path
):
    """A put cancelled before it ran never happens; one cancelled under way is stored before it raises."""

    async def main() -> None:
        async with _client(queue_path) as q:
            await q.ping()  # connected, the configuration known: a put starts without waiting
            never = asyncio.create_task(q.put("never"))
            never.cancel()
            under_way = asyncio.create_task(q.put("under way"))
            await asyncio.sleep(0)  # it runs up to its wait for the reply
            under_way.cancel()
            for task in (never, under_way):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert [t.payload for t in await q.peek()] == ["under way"]

    _run(main)


def test_a_lost_broker_raises_broker_unavailable_and_a_new_broker_serves_the_next_call(queue_path: Path):
    """Broker stopped: BrokerUnavailable (lost, then none serves); a new broker serves the next call."""
    brokers = [BrokerThread(queue_path)]

    async def main() -> None:
        async with _client(queue_path) as q:
            task_id = await q.put("kept")
            await asyncio.to_thread(brokers[0].stop)
            with pytest.raises(djq.BrokerUnavailable, match="lost the broker"):
                await q.stats()  # on the connection the old broker closed
            with pytest.raises(djq.BrokerUnavailable, match="no broker serves"):
                await q.stats()
            brokers.append(await asyncio.to_thread(BrokerThread, queue_path))
            assert [t.id for t in await q.peek()] == [task_id]

    try:
        _run(main)
    finally:
        for thread in brokers[1:]:
            thread.stop()


# A fake broker: the handshake of multiprocessing.connection's own server side, then chosen replies


def _frame(data: bytes, *, long: bool = False) -> bytes:
    return (struct.pack("!iQ", -1, len(data)) if long else struct.pack("!i", len(data))) + data


@pytest.fixture
def fake_broker(queue_path: Path) -> Iterator[Callable[[list[bytes]], None]]:
    """Serve one connection at the broker's address: mpc's handshake, a hello, then ``replies`` (framed)."""
    paths = wire.broker_paths(queue_path)
    queue_path.parent.mkdir(parents=True)
    key = os.urandom(32)
    paths.key.write_text(key.hex())
    listener = mpc.Listener(str(paths.socket), family="AF_UNIX", authkey=key)
    threads: list[threading.Thread] = []

    def serve(replies: list[bytes]) -> None:
        with listener.accept() as conn:  # deliver_challenge, then answer_challenge
            wire.check_hello(conn.recv_bytes())
            conn.send_bytes(wire.encode_ok({"protocol": wire.PROTOCOL}))
            for reply in replies:
                conn.recv_bytes()
                os.write(conn.fileno(), reply)

    def start(replies: list[bytes]) -> None:
        threads.append(threading.Thread(target=serve, args=(replies,), daemon=True))
        threads[-1].start()

    try:
        yield start
    finally:
        listener.close()
        for thread in threads:
            thread.join(BOUND)
            assert not thread.is_alive()


def test_the_sync_client_reads_one_reply_per_call_and_refuses_more_or_a_length_over_the_limit(
    fake_broker: Callable[[list[bytes]], None], queue_path: Path
):
    """The sync client frames replies itself: bytes past a reply, or too long a length, lose the broker."""
    fake_broker([_frame(wire.encode_ok(["a"]), long=True), _frame(wire.encode_ok([])) + b"\0\0\0\0"])
    client = djq.BrokerClient(queue_path, timeout=BOUND)
    try:
        assert client.check() == ["a"]
        with pytest.raises(djq.BrokerUnavailable, match="sent 4 bytes past its reply"):
            client.check()
        fake_broker([struct.pack("!i", wire.MAX_MESSAGE_BYTES + 1)])  # the next call connects again
        with pytest.raises(djq.BrokerUnavailable, match="announced a message of"):
            client.check()
    finally:
        client.close()


def test_malformed_replies_raise_broker_protocol_error_and_the_long_length_form_is_read(
    fake_broker: Callable[[list[bytes]], None], queue_path: Path
):
    """Against mpc's server handshake: a reply that is no result, or not JSON, is BrokerProtocolError."""
    fake_broker(
        [
            _frame(wire.encode_ok(42)),
            _frame(b"not json"),
            _frame(wire.encode_ok(["a", "b"]), long=True),
        ]
    )

    async def main() -> None:
        async with _client(queue_path) as q:
            with pytest.raises(djq.BrokerProtocolError, match="malformed reply"):
                await q.stats()
            with pytest.raises(djq.BrokerProtocolError, match="not JSON"):
                await q.check()
            assert await q.check() == ["a", "b"]

    _run(main)
