"""The Redis backend's own behaviour: key layout, atomic claims, the server's clock, waiting in
the server, durability, a killed consumer, a restarted server, unreachable servers.

The contract suite (tests/test_contract.py) runs against this backend too; these tests cover
what only a server backend has. They use the session's scratch server (``conftest.server_url``)
and start their own ``scratch.redis()`` only to stop, restart or reconfigure one.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, FakeClock, cannot_run, server_url

import djq
from djq import ops, redislua, redisq, scratch
from djq.model import CONFIG_FIELDS, SERVER_FIELDS

redis = pytest.importorskip("redis")
from redis.crc import key_slot  # noqa: E402 (only once redis is known to be installed)

_names = iter(range(1 << 30))
CHILD_DEADLINE = 30.0  #: seconds a child process may take to lease its task


@pytest.fixture
def url() -> str:
    """The session's Redis server (started once, stopped at the end of the session)."""
    return server_url("redis")


@pytest.fixture
def name() -> str:
    """A fresh queue name on the session's server."""
    return f"r{os.getpid()}-{next(_names)}"


@pytest.fixture
def opened() -> Iterator[list[djq.api.BaseQueue]]:
    """Clients a test opened, closed at its end."""
    clients: list[djq.api.BaseQueue] = []
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def make(url, name, opened):
    """Open a client of the test's queue on the session server (``fsync`` as the server allows)."""

    def open_one(**options):
        client = djq.open(url, name=options.pop("queue_name", name), **options)
        opened.append(client)
        return client

    return open_one


@pytest.fixture
def raw(url) -> Iterator[redis.Redis]:
    """A plain redis-py client of the session server, to look at the keys."""
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def _own_server(tmp_path: Path, *, fsync: bool) -> scratch.Scratch:
    try:
        return scratch.redis(tmp_path, fsync=fsync).start()
    except djq.ConfigError as exc:
        cannot_run("a private Redis server", str(exc))
        raise


@pytest.fixture
def server(tmp_path: Path) -> Iterator[scratch.Scratch]:
    """A private Redis with ``appendfsync always``, that the test may stop and start; removed after."""
    own = _own_server(tmp_path, fsync=True)
    yield own
    own.remove()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text, type(exc).__name__
    assert "\n" not in text, text
    return text


def test_the_keys_of_a_queue_are_the_documented_ones_under_one_hash_tag(make, raw, name):
    """Every key a queue writes is one of ``KEYS`` under ``djq:{name}:``, all in one cluster slot."""
    q = make(clock=FakeClock())
    q.put_many(["a", "b"])
    q.put("later", delay=60.0)
    q.nack(q.get(), delay=0.0)
    q.get()
    found = {key.decode() for key in raw.keys(f"djq:{{{name}}}:*")}
    assert found <= {f"djq:{{{name}}}:{key}" for key in redislua.KEYS}
    assert {f"djq:{{{name}}}:{key}" for key in ("meta", "tasks", "ready", "delayed", "leases")} <= found
    assert len({key_slot(key.encode()) for key in found}) == 1
    assert q.path == Path(f"djq:{{{name}}}")


def test_two_clients_racing_for_one_task_never_both_get_it(make):
    """One task, eight threads (each its own client, plus one shared): exactly one leases it, every round."""
    clients = [make() for _ in range(4)]
    for round_ in range(20):
        clients[0].put(round_)
        barrier = threading.Barrier(8)
        got: list[object] = []

        def take(client, barrier=barrier, got=got):
            barrier.wait(10)
            got.append(client.get())

        threads = [threading.Thread(target=take, args=(clients[i % 4],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
        leased = [task for task in got if task is not None]
        assert [task.payload for task in leased] == [round_]
        clients[0].ack(leased[0])
    assert clients[0].stats().acked_total == 20


def test_two_names_are_two_independent_queues(make, name):
    """A task put in one queue is not seen by another queue of the same server."""
    first, second = make(queue_name=f"{name}-a"), make(queue_name=f"{name}-b")
    first.put("only here")
    assert second.get() is None
    assert second.stats().total == 0
    assert first.get().payload == "only here"


def test_the_name_can_come_from_the_url(url, opened):
    """``?name=`` in the URL picks the queue, as ``name=`` does."""
    name = f"u{os.getpid()}-{next(_names)}"
    by_url = djq.open(f"{url}?name={name}")
    by_arg = djq.open(url, name=name)
    opened += [by_url, by_arg]
    by_url.put("x")
    assert by_arg.get().payload == "x"


def test_a_stale_ack_nack_or_extend_raises_lease_lost_and_leaves_the_holder_alone(make):
    """After the lease expired and the task was leased again, the old token changes nothing."""
    clock = FakeClock()
    q = make(clock=clock)
    q.put("x")
    stale = q.get(lease=1.0)
    clock.advance(1.0)
    holder = q.get(lease=30.0)
    for call in (q.ack, q.nack, q.extend):
        with pytest.raises(djq.LeaseLost) as info:
            call(stale)
        assert info.value.task_id == stale.id
    seen = q.stats()
    assert (seen.leased, seen.ready, seen.acked_total) == (1, 0, 0)
    assert q.extend(holder, lease=30.0).lease_expires_at == holder.lease_expires_at  # still its lease
    q.ack(holder)


def test_release_gives_a_lease_back_at_its_place_uncounted_and_a_stale_one_is_lease_lost(make):
    """release: ready at once in its place (before a later put), attempts back to what they were,
    no lease fields; never dead, even on the last attempt; its token then holds nothing."""
    clock = FakeClock()
    q = make(clock=clock, max_attempts=1)
    first, second = q.put_many(["a", "b"], delay=5.0)
    clock.advance(5.0)
    task = q.get()
    q.release(task)
    seen = q.stats()
    assert (seen.ready, seen.leased, seen.dead) == (2, 0, 0)
    back = q.peek(2)
    assert [t.id for t in back] == [first, second]
    assert (back[0].attempts, back[0].token, back[0].owner, back[0].lease_expires_at) == (0, None, None, None)
    assert back[0].available_at == back[0].enqueued_at
    with pytest.raises(djq.LeaseLost) as info:
        q.release(task)
    assert info.value.task_id == task.id
    again = q.get()
    assert (again.id, again.attempts) == (first, 1)


def test_a_release_wakes_a_waiting_get(make, raw):
    """A get waiting in the server (for longer than its timeout, by the lease) is woken by a release."""
    holder, waiter = make(), make()
    holder.put("x")
    task = holder.get(lease=120.0)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(waiter.get(timeout=10.0)))
    thread.start()
    try:
        _wait_until_blocked(raw, time.monotonic() + 10.0)
        holder.release(task)
    finally:
        thread.join(30)
    assert (got[0].id, got[0].attempts) == (task.id, 1)


@pytest.mark.parametrize("priority", [-(1 << 63), (1 << 53) + 1, (1 << 63) - 1])
def test_64_bit_priorities_keep_their_order_where_a_double_would_not(make, priority):
    """Priorities a double cannot tell apart (2**53 and 2**53 + 1, the extremes) are ordered exactly."""
    q = make(clock=FakeClock())
    q.put("low", priority=priority - 1 if priority > -(1 << 63) else priority)
    q.put("high", priority=priority if priority > -(1 << 63) else priority + 1)
    assert [q.get().payload, q.get().payload] == ["high", "low"]


def _contents(raw, name: str) -> dict[str, object]:
    """Every key of a queue but ``wake``, read whole: what a change would show."""
    prefix = f"djq:{{{name}}}:"
    return {
        "meta": raw.hgetall(prefix + "meta"),
        "tasks": raw.hgetall(prefix + "tasks"),
        **{
            key: raw.zrange(prefix + key, 0, -1, withscores=True)
            for key in ("ready", "delayed", "leases", "dead")
        },
    }


def _ack_lease(task: djq.Task, next_token: str = "next", duration: float = 30.0) -> ops.AckLease:  # noqa: S107
    return ops.AckLease(id=task.id, token=task.token, next_token=next_token, owner="me", duration=duration)


def test_pop_takes_tasks_by_priority_then_put_order_for_good(make, raw, name):
    """pop: highest priority first, FIFO among equals; each comes back done, attempts raised, no lease
    fields; it is gone from every key and counted acked; an empty queue pops None."""
    q = make(clock=FakeClock())
    ids = [q.put("a"), q.put("b", priority=1), q.put("c")]
    popped = [q._submit(ops.Pop()) for _ in range(3)]
    assert [t.payload for t in popped] == ["b", "a", "c"]
    assert [t.id for t in popped] == [ids[1], ids[0], ids[2]]
    for task in popped:
        assert (task.state, task.attempts, task.token, task.owner, task.lease_expires_at) == (
            djq.TaskState.DONE, 1, None, None, None
        )  # fmt: skip
    assert q._submit(ops.Pop()) is None
    seen = _contents(raw, name)
    assert seen["tasks"] == {}
    assert all(seen[k] == [] for k in ("ready", "delayed", "leases", "dead"))
    stats = q.stats()
    assert (stats.total, stats.put_total, stats.acked_total) == (0, 3, 3)
    assert q.check() == []


def test_pop_reclaims_an_expired_lease_and_moves_due_delayed_tasks_first(make):
    """An expired lease is reclaimed by the pop itself (attempts counted), a used-up one goes dead;
    a delayed task pops once it is due, not before."""
    clock = FakeClock()
    q = make(clock=clock, max_attempts=2)
    q.put("x")
    q.get(lease=1.0)
    clock.advance(1.0)
    again = q._submit(ops.Pop())
    assert (again.payload, again.attempts, again.state) == ("x", 2, djq.TaskState.DONE)
    q.put("y")
    q.get(lease=1.0)
    q.put("later", delay=5.0)
    assert q._submit(ops.Pop()) is None  # y is leased, later is not due
    clock.advance(5.0)
    back = q._submit(ops.Pop())
    assert (back.payload, back.attempts) == ("y", 2)  # reclaimed (attempt 1 of 2), ahead of the later put
    assert q._submit(ops.Pop()).payload == "later"
    stats = q.stats()
    assert (stats.total, stats.acked_total, stats.dead) == (0, 3, 0)


def test_pop_on_a_used_up_expired_lease_sends_it_to_the_dead_letters(make):
    """The lease a pop reclaims on its last attempt goes dead, not out: the pop finds nothing."""
    clock = FakeClock()
    q = make(clock=clock, max_attempts=1)
    q.put("x")
    q.get(lease=1.0)
    clock.advance(1.0)
    assert q._submit(ops.Pop()) is None
    assert (q.stats().dead, q.stats().acked_total) == (1, 0)


@pytest.mark.parametrize("priority", [-(1 << 63), (1 << 53) + 1, (1 << 63) - 1])
def test_pop_keeps_64_bit_priorities_exact(make, priority):
    """Priorities a double cannot tell apart pop in order, and come back exact."""
    q = make(clock=FakeClock())
    low = priority - 1 if priority > -(1 << 63) else priority
    high = priority if priority > -(1 << 63) else priority + 1
    q.put("low", priority=low)
    q.put("high", priority=high)
    popped = [q._submit(ops.Pop()), q._submit(ops.Pop())]
    assert [(t.payload, t.priority) for t in popped] == [("high", high), ("low", low)]


def test_a_waiting_pop_blocks_in_the_server_until_another_client_puts(make, raw):
    """A pop with a wait is one blocking pop in the server, woken by the put, as a waiting get is."""
    consumer, producer = make(), make()
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(consumer._submit(ops.Pop(), wait=10.0)))
    thread.start()
    try:
        _wait_until_blocked(raw, time.monotonic() + 10.0)
        producer.put("hello")
    finally:
        thread.join(30)
    assert (got[0].payload, got[0].state) == ("hello", djq.TaskState.DONE)
    assert producer.stats().total == 0


def test_a_pop_that_leaves_tasks_passes_the_wake_up_on(make, raw, name):
    """A pop that leaves ready tasks pushes a wake-up token (another waiter may take the rest)."""
    q = make(clock=FakeClock())
    q.put_many(["a", "b"])
    wake = f"djq:{{{name}}}:wake"
    raw.delete(wake)
    q._submit(ops.Pop())
    assert raw.llen(wake) == 1
    raw.delete(wake)
    q._submit(ops.Pop())
    assert raw.llen(wake) == 0  # nothing left: nobody to wake


def test_ack_lease_acks_and_leases_the_next_task_in_one_script(make, raw):
    """One script run: the lease is acked (gone, counted), the next task is leased under next_token."""
    clock = FakeClock()
    q = make(clock=clock)
    _, second = q.put_many(["a", "b"])
    task = q.get()
    scripts = _commands(raw, "evalsha", "eval")
    got = q._submit(_ack_lease(task, "next-1", 7.0))
    assert _commands(raw, "evalsha", "eval") - scripts == 1
    assert (got.id, got.state, got.attempts, got.token, got.owner) == (
        second, djq.TaskState.LEASED, 1, "next-1", "me"
    )  # fmt: skip
    assert got.lease_expires_at == clock() + 7.0
    stats = q.stats()
    assert (stats.leased, stats.ready, stats.acked_total, stats.total) == (1, 0, 1, 1)
    q.ack(got)
    assert q.check() == []


def test_a_stale_ack_lease_is_lease_lost_and_changes_nothing(make, raw, name):
    """When the token no longer holds the task: LeaseLost, nothing acked, nothing leased, no key changed."""
    clock = FakeClock()
    q = make(clock=clock)
    q.put_many(["x", "y"])
    stale = q.get(lease=1.0)
    clock.advance(1.0)
    q.get(lease=30.0)  # reclaims x and leases it again
    before = _contents(raw, name)
    with pytest.raises(djq.LeaseLost) as info:
        q._submit(_ack_lease(stale))
    assert (info.value.task_id, info.value.token) == (stale.id, stale.token)
    assert _contents(raw, name) == before
    assert q.peek(1)[0].payload == "y"


def test_ack_lease_with_nothing_next_acks_and_returns_none(make):
    """Nothing ready after the ack: None, and the ack is done (not LeaseLost, not undone)."""
    q = make(clock=FakeClock())
    q.put("x")
    task = q.get()
    assert q._submit(_ack_lease(task)) is None
    stats = q.stats()
    assert (stats.total, stats.acked_total) == (0, 1)
    with pytest.raises(djq.LeaseLost):
        q.ack(task)


def test_an_ack_lease_given_a_wait_never_runs_its_ack_again(make):
    """Submitted with a wait and nothing next, an ack_lease acks once: as a waiting op (``waits``) it then
    waits only to lease, as a get does (its ack run again would be LeaseLost); else it returns None."""
    q = make()
    q.put("x")
    task = q.get()
    q.put("soon", delay=0.2)
    got = q._submit(_ack_lease(task), wait=10.0)
    if ops.AckLease.waits:
        assert (got.payload, got.token, got.state) == ("soon", "next", djq.TaskState.LEASED)
    else:
        assert got is None
    assert q.stats().acked_total == 1


def test_the_servers_clock_decides_when_clock_is_none(make, raw):
    """clock=None: times come from the server's TIME; a client with a fake clock far in the past
    still sees the lease held after it expired on the server's clock, while a clock=None client
    sees it expired and reclaims it."""
    past = make(clock=FakeClock(1_000.0))
    server_clock = make()
    before = _server_now(raw)
    server_clock.put("x")
    task = server_clock.get(lease=0.2)
    assert before <= task.enqueued_at <= _server_now(raw)
    assert task.lease_expires_at == pytest.approx(task.enqueued_at + 0.2, abs=1.0)
    # wait in the server, on its clock, until the lease is over: a task delayed just past it
    timer = make(queue_name=f"timer-{past.name}")
    timer.put("tick", delay=max(task.lease_expires_at - _server_now(raw), 0.0) + 0.01)
    assert timer.get(timeout=10.0) is not None
    fake_view, server_view = past.stats(), server_clock.stats()
    assert (fake_view.leased, fake_view.expired) == (1, 0)  # at 1000 s the lease runs for ages
    assert past.get() is None
    assert (server_view.leased, server_view.expired) == (0, 1)
    again = server_clock.get()
    assert (again.id, again.attempts) == (task.id, 2)
    past.put("old")
    assert past.peek(5)[-1].enqueued_at == 1_000.0


def _server_now(raw) -> float:
    seconds, micros = raw.time()
    return seconds + micros / 1e6


def _commands(raw, *names: str) -> int:
    stats = raw.info("commandstats")
    return sum(stats.get(f"cmdstat_{n}", {}).get("calls", 0) for n in names)


def _wait_until_blocked(raw, deadline: float) -> None:
    """Wait (bounded) until some client of the server is blocked in a BLPOP."""
    while time.monotonic() < deadline:
        if any(c.get("cmd") == "blpop" for c in raw.client_list()):
            return
        threading.Event().wait(0.01)
    raise AssertionError("no client blocked in BLPOP")


def test_a_waiting_get_blocks_in_the_server_until_another_client_puts(make, raw):
    """get(timeout=10) is one blocking pop in the server, woken by the put: no client-side polling."""
    consumer, producer = make(), make()
    consumer.stats()
    scripts, pops = _commands(raw, "evalsha", "eval"), _commands(raw, "blpop")
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(consumer.get(timeout=10.0)))
    thread.start()
    try:
        _wait_until_blocked(raw, time.monotonic() + 10.0)
        producer.put("hello")
    finally:
        thread.join(30)
    assert got[0].payload == "hello"
    assert _commands(raw, "blpop") - pops == 1  # one pop, woken by the put
    assert _commands(raw, "evalsha", "eval") - scripts == 3  # claim, put, claim


def test_a_waiting_get_wakes_for_a_delayed_task_by_itself(make):
    """A waiting get blocks no longer than until the next delayed task is due (server clock)."""
    q = make()
    q.put("soon", delay=0.2)
    assert q.get(timeout=10.0).payload == "soon"


def test_puts_that_wake_no_one_leave_a_bounded_expiring_wake_list(make, raw, name):
    """The wake-up list is trimmed to WAKE_CAP tokens and expires: no garbage grows unbounded."""
    q = make()
    for n in range(50):
        q.put(n)
    wake = f"djq:{{{name}}}:wake"
    assert 0 < raw.llen(wake) <= redislua.WAKE_CAP
    assert 0 < raw.pttl(wake) <= redislua.WAKE_TTL_MS


def test_fsync_true_needs_a_server_that_fsyncs_every_write(tmp_path, url, opened):
    """fsync=True on a server without appendfsync always is a ConfigError saying how to fix it."""
    opened.append(djq.open(url, name="durable", fsync=True))  # the scratch server fsyncs: accepted
    lax = _own_server(tmp_path, fsync=False)
    try:
        with pytest.raises(djq.ConfigError) as info:
            djq.open(lax.url, name="q", fsync=True)
        assert info.value.field == "fsync"
        assert "--appendonly yes --appendfsync always" in _one_line(info.value)
        assert "fsync=False" in str(info.value)
        quick = djq.open(lax.url, name="q", fsync=False)
        quick.put("x")
        quick.close()
    finally:
        lax.remove()


@pytest.mark.parametrize("field", [f for f in CONFIG_FIELDS if f not in SERVER_FIELDS])
def test_file_queue_options_are_refused_naming_the_field(url, field):
    """lock, storage, path, ...: a ConfigError naming the option, saying it is the file queue's."""
    with pytest.raises(djq.ConfigError) as info:
        djq.open(url, name="x", fsync=False, **{field: None})
    assert info.value.field == field
    assert "file queue" in str(info.value)


@pytest.mark.parametrize("bad", ["", "a{b}", "a b", "x" * 101, "é"])
def test_a_bad_name_is_refused(url, bad):
    """The name must be short and of a safe charset (no hash-tag braces)."""
    with pytest.raises(djq.ConfigError) as info:
        redisq.RedisQueue(url, name=bad, fsync=False)
    assert info.value.field == "name"


def test_close_is_idempotent_and_ends_a_waiting_get(make, raw):
    """close() twice is fine; a get waiting in another thread then returns None; a later call reconnects."""
    q = make()
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(q.get(timeout=30.0)))
    thread.start()
    try:
        _wait_until_blocked(raw, time.monotonic() + 10.0)
    finally:
        q.close()
        q.close()
        thread.join(30)
    assert got == [None]
    assert q.stats().total == 0


_HOLDER = """
import sys, time, djq
q = djq.open(sys.argv[1], name=sys.argv[2], fsync=False)
task = q.get(lease=0.5)
print(task.id, flush=True)
time.sleep(600)
"""


def test_a_task_held_by_a_killed_consumer_is_delivered_again_after_its_lease(make, name, url):
    """SIGKILL a consumer process holding a lease: its task comes back (server clock), attempts 2."""
    q = make()
    task_id = q.put("work")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, name], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        line = child.stdout.readline().strip()  # the child prints the id once it holds the lease
        assert line == task_id
        os.kill(child.pid, signal.SIGKILL)
        child.wait(CHILD_DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(CHILD_DEADLINE)
        child.stdout.close()
    deadline = time.monotonic() + CHILD_DEADLINE
    again = None
    while again is None and time.monotonic() < deadline:
        again = q.get(timeout=5.0)
    assert (again.id, again.attempts) == (task_id, 2)


def test_answered_puts_survive_a_server_restart(server):
    """Kill the server (appendfsync always) and start it again: every answered put and ack holds;
    the first call after may raise BrokerUnavailable (one line), the next succeeds."""
    q = djq.open(server.url, name="survivor", fsync=True)
    try:
        ids = [q.put(n) for n in range(20)] + q.put_many(["a", "b"])
        q.ack_many([q.get(), q.get()])  # the first two, acked before the kill
        server.stop(kill=True)
        with pytest.raises(djq.BrokerUnavailable) as info:
            q.stats()
        assert server.url in _one_line(info.value)
        server.start()
        try:
            q.stats()
        except djq.BrokerUnavailable as exc:
            _one_line(exc)
        assert [t.id for t in q.peek(100)] == ids[2:]  # no answered put lost, no acked task back
        assert (q.stats().put_total, q.stats().acked_total) == (22, 2)
    finally:
        q.close()


def test_an_unreachable_server_is_one_line(tmp_path):
    """No socket, a closed port: BrokerUnavailable, one line naming the URL (never its password)."""
    for url in (f"unix://{tmp_path}/none.sock", "redis://:secret@127.0.0.1:1/0"):
        with pytest.raises(djq.BrokerUnavailable) as info:
            djq.open(url, fsync=False)
        text = _one_line(info.value)
        assert "secret" not in text
        assert ("none.sock" in text) or ("127.0.0.1:1" in text)


def test_a_malformed_url_is_a_config_error():
    """A URL redis-py cannot read is a ConfigError naming the URL field."""
    with pytest.raises(djq.ConfigError) as info:
        djq.open("redis://localhost:notaport/0", fsync=False)
    assert info.value.field == "url"
    _one_line(info.value)


def test_a_server_that_never_accepts_fails_within_the_connect_timeout(monkeypatch):
    """A listener whose backlog is full never completes a connect: BrokerUnavailable after the timeout."""
    monkeypatch.setattr(redislua, "CONNECT_TIMEOUT", 0.3)
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # fill the accept queue: later SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        with pytest.raises(djq.BrokerUnavailable) as info:
            djq.open(f"redis://127.0.0.1:{port}/0", fsync=False)
        assert f"127.0.0.1:{port}" in _one_line(info.value)
    finally:
        for s in [*fillers, listener]:
            s.close()


def _same(value):
    """A result with what differs by nature between backends blanked: tokens, file_bytes."""
    if isinstance(value, list):
        return [_same(v) for v in value]
    if isinstance(value, djq.Task):
        return dataclasses.replace(value, token=None)
    if isinstance(value, djq.QueueStats):
        return dataclasses.replace(value, file_bytes=0)
    return value


def _outcome(call):
    try:
        return call()
    except djq.DjqError as exc:
        return type(exc).__name__


def _recent(rng: random.Random, held: list) -> int:
    """One of the last few leases (older ones are mostly stale by now)."""
    return rng.randrange(max(0, len(held) - 4), len(held))


def _step(rng: random.Random, step: int, held: list) -> tuple[str, object]:
    """Draw one operation and its arguments: (kind, arguments), the same for both queues."""
    kind = rng.choice("ppppggGoaaAnlxrsdkcct" if held else "ppppggGorsdkcct")
    args = {
        "p": lambda: (step, rng.choice([0, 0, 1, -1]), rng.choice([0.0, 0.0, 2.5])),
        "g": lambda: rng.choice([1.0, 5.0]),
        "a": lambda: _recent(rng, held),
        "A": lambda: (_recent(rng, held), rng.choice([1.0, 5.0]), f"next-{step}"),
        "n": lambda: (_recent(rng, held), rng.choice([0.0, 1.0])),
        "l": lambda: _recent(rng, held),
        "x": lambda: _recent(rng, held),
        "r": lambda: held[_recent(rng, held)][0].id if held else str(step),
        "c": lambda: rng.choice([0.5, 1.0, 3.0]),
        "t": lambda: rng.random() < 0.9,  # now and then every task
    }.get(kind, lambda: None)()
    return kind, args


def _apply(q, i: int, kind: str, args, held: list):
    """Run one drawn operation on the ``i``-th queue of the pair (its own leased tasks)."""
    calls = {
        "p": lambda: q.put(args[0], priority=args[1], delay=args[2]),
        "g": lambda: q.get(lease=args),
        "G": lambda: q.get_many(2, lease=3.0),
        "o": lambda: q._submit(ops.Pop()),
        "a": lambda: q.ack(held[args][i]),
        "A": lambda: q._submit(_ack_lease(held[args[0]][i], args[2], args[1])),
        "n": lambda: q.nack(held[args[0]][i], delay=args[1]),
        "l": lambda: q.release(held[args][i]),
        "x": lambda: q.extend(held[args][i], lease=2.0),
        "r": lambda: q.requeue(args),
        "s": q.stats,
        "d": q.dead,
        "k": lambda: q.peek(5),
        "t": lambda: q.purge(dead_only=args),
    }
    return _outcome(calls[kind])


@pytest.mark.parametrize("seed", range(3))
def test_random_operations_give_the_file_queues_results(make, tmp_path, seed):
    """A seeded run of puts, gets, pops, acks, ack_leases, nacks, releases, extends, requeues, purges and
    clock steps gives the same results, errors and stats on Redis as on the file queue."""
    rng = random.Random(seed)
    clock = FakeClock()
    pair = (djq.Queue(tmp_path / "Queue.json", clock=clock, fsync=False, max_attempts=2),
            make(clock=clock, max_attempts=2))  # fmt: skip
    held: list[tuple[djq.Task, djq.Task]] = []
    try:
        for step in range(500):
            kind, args = _step(rng, step, held)
            if kind == "c":
                clock.advance(args)
                continue
            results = [_apply(q, i, kind, args, held) for i, q in enumerate(pair)]
            assert _same(results[0]) == _same(results[1]), (step, kind, args)
            if kind in "gGA":
                leased = [r if isinstance(r, list) else [r] for r in results]
                held += [pair for pair in zip(*leased, strict=True) if isinstance(pair[0], djq.Task)]
    finally:
        pair[0].close()
