"""The PostgreSQL backend's own behaviour: schema, claims, server clock, waiting, durability, failures.

The contract suite (``test_contract.py``) runs on this backend too; these tests cover what
only a server backend has. They use the session's scratch server (``conftest.server_url``),
and a server of their own when they stop or restart it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, FakeClock, cannot_run, server_url

import djq
from djq import TaskState, ops, scratch

psycopg = pytest.importorskip("psycopg")
from djq.postgres import PostgresQueue  # noqa: E402 (only once psycopg is known to be there)

DEADLINE = 30.0  #: seconds any one wait in these tests may take before it fails
_names = itertools.count()


@pytest.fixture
def url() -> str:
    return server_url("postgres")


@pytest.fixture
def name() -> str:
    return f"pg{os.getpid()}-{next(_names)}"


@pytest.fixture
def opened():
    """A factory of clients, all closed at the end."""
    clients: list = []

    def make(url: str, name: str, **options):
        client = djq.open(url, name=name, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def sql(url):
    """Run one statement on a connection of the test's own (autocommit); return its rows."""
    with psycopg.connect(url, autocommit=True) as conn:

        def run(query: str, *params):
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

        yield run


def until(condition, what: str, timeout: float = DEADLINE):
    """Poll ``condition`` until it returns something true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def in_thread(target):
    """Start ``target`` in a thread; return (thread, box) where box gets its result or error."""
    box: dict = {}

    def run():
        try:
            box["result"] = target()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def backends(sql, name: str):
    """(state, wait_event_type, query, xact_start) of the server backends of the queue's clients."""
    return sql(
        "SELECT state, wait_event_type, query, xact_start FROM pg_stat_activity WHERE application_name = %s",
        f"djq/{name}",
    )


def test_schema_is_created_once_by_racing_clients_and_reused(url, sql, opened, name):
    """Clients racing on an empty schema create the tables once; a later client reuses them."""
    schema = f"s_{name.replace('-', '_')}"
    sql(f'CREATE SCHEMA "{schema}"')
    try:
        where = f"{url}&options=-csearch_path%3D{schema}"  # no space: opener.py turns %20 into +
        clients = [opened(where, name) for _ in range(4)]
        start = threading.Barrier(len(clients))
        runs = [in_thread(lambda c=c: (start.wait(10), c.put("x"))[1]) for c in clients]
        for thread, box in runs:
            thread.join(DEADLINE)
            assert "error" not in box, box.get("error")
        tables = sql("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema)
        assert sorted(t for (t,) in tables) == ["djq_count", "djq_task"]
        later = opened(where, name)
        assert later.stats().put_total == 4
        assert later.check() == []
    finally:
        sql(f'DROP SCHEMA "{schema}" CASCADE')


def test_two_names_are_two_independent_queues(url, opened, name):
    """Tasks, counters and purges of one name never touch another's."""
    first, second = opened(url, f"{name}-a"), opened(url, f"{name}-b")
    first.put_many(["a1", "a2"])
    second.put("b1")
    assert [t.payload for t in second.peek()] == ["b1"]
    assert first.purge() == 2
    assert (first.stats().put_total, second.stats().ready) == (2, 1)
    assert second.get().payload == "b1"


@pytest.mark.parametrize("claim", ["skip_locked", "for_update"])
def test_both_claims_keep_the_basic_contract(url, opened, name, claim):
    """Either claim: priority then FIFO, nack to ready then to the dead letters, requeue, ack."""
    q = opened(url, name, claim=claim, max_attempts=2, clock=FakeClock())
    low = q.put_many(["a", "b"])
    high = q.put("c", priority=5)
    assert [t.id for t in q.get_many(3)] == [high, *low]
    q.purge()
    poison = q.put("poison")
    assert q.nack(q.get()) is TaskState.READY
    assert q.nack(q.get()) is TaskState.DEAD
    assert q.requeue(poison).attempts == 0
    q.ack(q.get())
    assert (q.stats().acked_total, q.stats().dead_total, q.stats().total) == (1, 1, 0)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"claim": "nowait"}, "claim"),
        ({"name": ""}, "name"),
        ({"name": "a b"}, "name"),
        ({"name": "x" * 49}, "name"),
        ({"clock": 5}, "clock"),
        ({"lock": "flock"}, "lock"),
        ({"storage": "journal"}, "storage"),
        ({"poll_interval": 0.1}, "poll_interval"),
        ({"lease": 0.0}, "lease"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_are_config_errors_naming_the_field(options, field):
    """A bad claim, name or clock, a file queue's option or a bad value: ConfigError, before any I/O."""
    options = {"name": "q", **options}
    with pytest.raises(djq.ConfigError) as info:  # directly: djq.open turns name="" into "default"
        PostgresQueue("postgresql://nobody@/nowhere?host=/nonexistent", **options)
    assert info.value.field == field
    if field in ("lock", "storage", "poll_interval"):
        assert "option of the file queue" in str(info.value)


def test_for_update_waits_behind_a_row_lock_while_skip_locked_passes(url, sql, opened, name):
    """A claim FOR UPDATE waits on a row another transaction holds; SKIP LOCKED passes it by."""
    waiting = opened(url, name, claim="for_update")
    passing = opened(url, name, claim="skip_locked")
    task_id = waiting.put("held")
    with psycopg.connect(url) as holder:  # a transaction the test holds open
        holder.execute("SELECT id FROM djq_task WHERE queue = %s FOR UPDATE", [name])
        assert passing.get() is None
        thread, box = in_thread(waiting.get)
        until(
            lambda: [b for b in backends(sql, name) if b[1] == "Lock" and b[0] == "active"],
            "the for_update claim to wait on the row lock",
        )
        blocked = sql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE NOT l.granted AND a.application_name = %s",
            f"djq/{name}",
        )
        assert blocked[0][0] >= 1
        assert thread.is_alive()
        holder.rollback()
    thread.join(DEADLINE)
    assert box["result"].id == task_id
    assert passing.get() is None  # now leased by the waiter


@pytest.mark.parametrize("claim", ["skip_locked", "for_update"])
def test_stale_ack_nack_extend_raise_lease_lost_and_leave_the_holder_alone(url, sql, opened, name, claim):
    """After the lease expired and the task was leased again, the old token changes nothing."""
    clock = FakeClock()
    q = opened(url, name, claim=claim, clock=clock)
    q.put("x")
    stale = q.get(lease=1.0)
    clock.advance(1.0)
    fresh = q.get(lease=10.0)

    def row():
        return sql(
            "SELECT state, token, owner, attempts, lease_expires_at FROM djq_task WHERE queue = %s", name
        )

    before = row()
    for call in (q.ack, q.nack, q.extend):
        with pytest.raises(djq.LeaseLost) as info:
            call(stale)
        assert info.value.task_id == stale.id
        assert row() == before
    assert q.ack_many([stale]) == [stale.id]
    assert before == [("leased", fresh.token, fresh.owner, 2, fresh.lease_expires_at)]
    q.ack(fresh)


def server_now(sql) -> float:
    return float(sql("SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])


def test_the_server_clock_decides_when_clock_is_none(url, sql, opened, name):
    """A clock=None client's leases run on the server's clock; a skewed client's clock changes nothing."""
    server = opened(url, name)  # clock=None
    skewed = opened(url, name, clock=FakeClock(1_000_000.0))  # 1970: far in the past
    task_id = skewed.put("x")
    before = server_now(sql)
    task = server.get(lease=1.0)
    after = server_now(sql)
    assert task.id == task_id  # the skewed put is available: its own "now" is long past
    assert before + 1.0 <= task.lease_expires_at <= after + 1.0
    assert skewed.get() is None  # in 1970 the lease is far from expired: nothing taken, nothing reaped
    assert skewed.stats().leased == 1
    again = server.get(timeout=DEADLINE)  # wakes at the lease's expiry on the server's clock
    assert (again.id, again.attempts) == (task_id, 2)
    assert server_now(sql) >= task.lease_expires_at


def test_a_waiting_get_is_woken_by_notify_and_holds_no_transaction(url, sql, opened, name):
    """get(timeout=10) LISTENs idle (no transaction open) and returns when another client puts."""
    consumer = opened(url, name)
    thread, box = in_thread(lambda: consumer.get(timeout=10.0))

    def sleeping():
        found = backends(sql, name)
        listening = [b for b in found if b[0] == "idle" and b[2].startswith("LISTEN")]
        looked = [b for b in found if b[0] == "idle" and "least(" in b[2]]  # the due-time query
        return found if listening and looked else None

    found = until(sleeping, "the waiting get to LISTEN")
    assert all(state == "idle" and xact is None for state, _, _, xact in found), found
    producer = opened(url, name)
    producer.put("hello")
    thread.join(DEADLINE)
    assert box["result"].payload == "hello"


def test_close_wakes_a_waiting_get(url, opened, name):
    """close() returns a waiting get (None) at once; the client works again afterwards."""
    q = opened(url, name)
    q.stats()
    thread, box = in_thread(lambda: q.get(timeout=DEADLINE * 2))
    until(lambda: q._idle == [] and q._generation == 0 and thread.is_alive() and _listening(url, name),
          "the get to wait")  # fmt: skip
    q.close()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert box == {"result": None}
    q.close()  # idempotent
    assert q.put("again")


def _listening(url: str, name: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
            [f"djq/{name}"],
        ).fetchall()
    return bool(rows)


@pytest.mark.parametrize(("fsync", "setting"), [(True, "on"), (False, "off")])
def test_fsync_sets_synchronous_commit(url, opened, name, fsync, setting):
    """fsync=True commits with synchronous_commit=on, fsync=False with off."""
    q = opened(url, name, fsync=fsync)
    q.stats()
    assert q._conn.execute("SHOW synchronous_commit").fetchone()[0] == setting  # the client's connection


CONSUMER = """
import sys, time, djq
q = djq.open(sys.argv[1], name=sys.argv[2], lease=1.0)
task = q.get(timeout=30)
print(task.id, flush=True)
time.sleep(120)
"""


def test_a_killed_consumers_task_is_delivered_again_after_its_lease(url, opened, name):
    """A consumer SIGKILLed while holding a lease: the task comes back once the lease expires."""
    q = opened(url, name)
    task_id = q.put("work")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, url, name], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], DEADLINE)
        assert ready, "the consumer did not lease the task"
        assert child.stdout.readline().strip() == task_id
        os.kill(child.pid, signal.SIGKILL)
        child.wait(DEADLINE)
        deadline = time.monotonic() + DEADLINE
        again = None
        while again is None and time.monotonic() < deadline:
            again = q.get(timeout=5.0)
        assert (again.id, again.attempts) == (task_id, 2)
        q.ack(again)
    finally:
        child.kill()
        child.wait(DEADLINE)
        child.stdout.close()


@pytest.fixture
def own_server():
    """A scratch server of this test's own, started; stopped by its pid and removed at the end."""
    try:
        server = scratch.postgres().start()
    except djq.DjqError as exc:
        cannot_run("a scratch PostgreSQL server", str(exc))
    yield server
    server.remove()


def _restart(server) -> None:
    """Stop and start ``server`` by its pid: SIGINT first (PostgreSQL's fast shutdown; its SIGTERM
    waits for every client to disconnect), then ``stop`` reaps it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGINT)
    server.stop()
    server.start()


def _outcome(call) -> str | None:
    """None if ``call`` worked, else the message of the BrokerUnavailable it raised."""
    try:
        call()
    except djq.BrokerUnavailable as exc:
        return str(exc)
    return None


def test_every_answered_put_survives_a_server_restart(own_server, opened, name):
    """After a restart: every put and ack that returned holds; the next call fails in one line or works."""
    q = opened(own_server.url, name, fsync=True)
    ids = [q.put({"n": n}) for n in range(20)] + q.put_many(["a", "b"])
    q.ack_many([q.get(), q.get()])  # the first two, acked before the restart
    _restart(own_server)
    outcome = _outcome(q.stats)
    assert outcome is None or ("\n" not in outcome and own_server.url in outcome), outcome
    assert [t.id for t in q.peek(100)] == ids[2:]  # no answered put lost, no acked task back
    assert (q.stats().put_total, q.stats().acked_total) == (22, 2)
    assert q.get(timeout=1.0).id == ids[2]  # the waiting path reconnects too
    _restart(own_server)
    with contextlib.suppress(djq.BrokerUnavailable):
        q.get(timeout=0.5)
    assert q.get(timeout=0.5).id == ids[3]


def test_an_unreachable_server_is_one_broker_unavailable_line(tmp_path, opened, name):
    """No server at the address: one BrokerUnavailable line naming it, without the password."""
    q = opened(f"postgresql://postgres:sekret@/postgres?host={tmp_path}", name)
    with pytest.raises(djq.BrokerUnavailable) as info:
        q.put("x")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message
    assert "sekret" not in message


def test_a_silent_server_fails_within_the_connect_timeout(tmp_path, opened, name):
    """A socket that accepts and never answers: BrokerUnavailable once connect_timeout has passed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(tmp_path / ".s.PGSQL.5432"))
        silent.listen(8)
        q = opened(f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2", name)
        thread, box = in_thread(q.stats)
        thread.join(DEADLINE)
        assert not thread.is_alive(), "the connect timeout did not bound the call"
    assert isinstance(box["error"], djq.BrokerUnavailable)
    assert "\n" not in str(box["error"])


@pytest.mark.parametrize("bad", ["postgresql://localhost/db?nonsense=1", "postgresql://h/db?port=1&="])
def test_a_malformed_url_is_a_config_error(bad):
    """A URL libpq cannot parse: ConfigError naming ``url``, before any connection."""
    with pytest.raises(djq.ConfigError) as info:
        djq.open(bad, name="q")
    assert info.value.field == "url"


def test_config_path_is_a_placeholder_and_the_options_travel(url, opened, name):
    """``config`` holds the options given; its path is the placeholder Path(name)."""
    q = opened(url, name, lease=7.0, max_attempts=3, max_payload_bytes=100, fsync=False)
    config = q.config
    assert (config.lease, config.max_attempts, config.max_payload_bytes, config.fsync) == (7.0, 3, 100, False)
    assert config.path == Path(name)
    with pytest.raises(djq.PayloadError):
        q.put("x" * 200)
    assert q.get() is None


def test_release_readies_the_row_uncounted_clears_the_lease_and_notifies(url, sql, opened, name):
    """release: the row ready at enqueued_at, attempts - 1 (never below 0), lease fields cleared, a NOTIFY."""
    q = opened(url, name)
    task_id = q.put("x")
    task = q.get()
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f'LISTEN "djq_{name}"')
        q.release(task)
        assert [n.channel for n in listener.notifies(timeout=DEADLINE, stop_after=1)] == [f"djq_{name}"]
    row = sql(
        "SELECT state, attempts, available_at = enqueued_at, owner, token, lease_expires_at"
        " FROM djq_task WHERE queue = %s",
        name,
    )
    assert row == [("ready", 0, True, None, None, None)]
    with pytest.raises(djq.LeaseLost):
        q.release(task)  # the token no longer holds it
    again = q.get()
    sql("UPDATE djq_task SET attempts = 0 WHERE queue = %s", name)  # a row no lease of djq's makes
    q.release(again)
    assert sql("SELECT attempts FROM djq_task WHERE queue = %s", name) == [(0,)]
    assert (q.get().id, q.stats().leased) == (task_id, 1)


def _rows(sql, name: str):
    return sql("SELECT id, state, token, attempts FROM djq_task WHERE queue = %s ORDER BY id", name)


@pytest.mark.parametrize("claim", ["skip_locked", "for_update"])
def test_pop_takes_by_priority_then_fifo_deletes_the_row_and_counts_it_acked(url, sql, opened, name, claim):
    """Pop: the next ready task, gone in the same statement (acked_total + 1), as a DONE snapshot."""
    q = opened(url, name, claim=claim, clock=FakeClock())
    assert q._submit(ops.Pop()) is None  # an empty queue
    low = q.put_many(["a", "b"])
    high = q.put("c", priority=5)
    popped = q._submit(ops.Pop())
    assert (popped.id, popped.payload, popped.state, popped.attempts) == (high, "c", TaskState.DONE, 1)
    assert (popped.owner, popped.token, popped.lease_expires_at) == (None, None, None)
    assert [row[0] for row in _rows(sql, name)] == [int(i) for i in low]
    assert [q._submit(ops.Pop()).id for _ in low] == low
    assert q._submit(ops.Pop()) is None
    stats = q.stats()
    assert (stats.acked_total, stats.total, stats.put_total) == (3, 0, 3)


def test_pop_reclaims_expired_leases_first(url, sql, opened, name):
    """An expired lease is reclaimed (the used-up one dead) before the pop takes the next task."""
    clock = FakeClock()
    q = opened(url, name, clock=clock, max_attempts=1)
    used_up = q.put("used up", priority=1)
    q.get(lease=1.0)
    clock.advance(1.0)
    assert q._submit(ops.Pop()) is None  # the one task died of its expired lease
    assert (q.stats().dead_total, q.stats().acked_total) == (1, 0)
    q.requeue(used_up)
    again = opened(url, name, clock=clock, max_attempts=2)  # the row keeps max_attempts 1: requeued
    task_id = again.put("x")
    leased = again.get(lease=1.0)
    assert leased.id == used_up
    clock.advance(1.0)
    popped = again._submit(ops.Pop())  # the expired lease of used_up dies; x is popped
    assert (popped.id, popped.attempts) == (task_id, 1)
    assert _rows(sql, name) == [(int(used_up), "dead", None, 1)]
    assert (again.stats().dead_total, again.stats().acked_total) == (2, 1)


def test_pop_takes_an_expired_lease_with_attempts_left(url, sql, opened, name):
    """An expired lease with attempts left is a candidate as a claim's: popped with its attempts raised."""
    clock = FakeClock()
    q = opened(url, name, clock=clock)
    task_id = q.put("x")
    q.get(lease=1.0)
    clock.advance(1.0)
    popped = q._submit(ops.Pop())
    assert (popped.id, popped.attempts, popped.state, popped.token) == (task_id, 2, TaskState.DONE, None)
    assert popped.available_at == popped.enqueued_at  # reclaimed, as state.pop's reap leaves it
    assert _rows(sql, name) == []


def _ack_lease(task, **fields):
    return ops.AckLease(
        id=task.id,
        token=task.token,
        next_token=fields.pop("next_token", "next-token"),
        owner=fields.pop("owner", "me"),
        duration=fields.pop("duration", 10.0),
    )


@pytest.mark.parametrize("claim", ["skip_locked", "for_update"])
def test_ack_lease_acks_and_leases_the_next_in_one_statement(url, sql, opened, name, claim):
    """AckLease: the held task is deleted and counted, the next leased under next_token; None when none."""
    clock = FakeClock()
    q = opened(url, name, claim=claim, clock=clock)
    first, second = q.put_many(["a", "b"])
    held = q.get()
    assert held.id == first
    nxt = q._submit(_ack_lease(held, owner="w", duration=5.0))
    assert (nxt.id, nxt.state, nxt.token, nxt.owner, nxt.attempts) == (
        second,
        TaskState.LEASED,
        "next-token",
        "w",
        1,
    )
    assert nxt.lease_expires_at == clock.now + 5.0
    assert _rows(sql, name) == [(int(second), "leased", "next-token", 1)]
    assert q._submit(_ack_lease(nxt, next_token="t3"), wait=0) is None  # acked; nothing is next
    assert _rows(sql, name) == []
    assert (q.stats().acked_total, q.stats().total) == (2, 0)


def test_ack_lease_of_a_stale_token_raises_lease_lost_and_changes_nothing(url, sql, opened, name):
    """A token that no longer holds its task: LeaseLost; no ack, no reclaim, no lease."""
    clock = FakeClock()
    q = opened(url, name, clock=clock)
    q.put("x")
    stale = q.get(lease=1.0)
    clock.advance(1.0)
    fresh = q.get(lease=1.0)  # the same task, leased again
    q.put("y")
    clock.advance(1.0)  # fresh's lease expired too: a claim would reclaim it
    before = sql("SELECT * FROM djq_task WHERE queue = %s ORDER BY id", name)
    with pytest.raises(djq.LeaseLost) as info:
        q._submit(_ack_lease(stale))
    assert info.value.task_id == stale.id
    assert sql("SELECT * FROM djq_task WHERE queue = %s ORDER BY id", name) == before
    assert q.stats().acked_total == 0
    q.ack(fresh)  # a lease that expired unreclaimed still acks


def test_ack_lease_of_an_expired_unreclaimed_lease_acks_it_and_leases_another(url, sql, opened, name):
    """The acked row is no claim's, though its lease expired; other expired leases are reclaimed."""
    clock = FakeClock()
    q = opened(url, name, clock=clock, max_attempts=1)
    mine, other, _ = q.put_many(["mine", "other", "next"])
    held, dying = q.get(lease=1.0), q.get(lease=1.0)
    assert (held.id, dying.id) == (mine, other)
    clock.advance(1.0)
    nxt = q._submit(_ack_lease(held))
    assert nxt.payload == "next"
    assert [row[:2] for row in _rows(sql, name)] == [(int(other), "dead"), (int(nxt.id), "leased")]
    assert (q.stats().acked_total, q.stats().dead_total) == (1, 1)


def test_ack_lease_never_waits_its_ack_is_done_once(url, opened, name):
    """AckLease is no waiting op: with wait > 0 and nothing next it returns None at once, acked once."""
    q = opened(url, name)
    q.put("a")
    held = q.get()
    assert q._submit(_ack_lease(held), wait=DEADLINE) is None
    assert (q.stats().acked_total, q.stats().total) == (1, 0)
    with pytest.raises(djq.LeaseLost):
        q._submit(_ack_lease(held), wait=DEADLINE)
    assert q.stats().acked_total == 1


@pytest.mark.parametrize("claim", ["skip_locked", "for_update"])
def test_racing_pops_take_each_task_exactly_once(url, opened, name, claim):
    """Two clients popping at once: every task is taken by exactly one of them, and counted once."""
    ids = opened(url, name).put_many(list(range(40)))
    clients = [opened(url, name, claim=claim) for _ in range(2)]

    def drain(q):
        taken = []
        while q.stats().total:  # for_update may come back short while a row is locked by the other
            popped = q._submit(ops.Pop())
            if popped is not None:
                taken.append(popped.id)
        return taken

    runs = [in_thread(lambda q=q: drain(q)) for q in clients]
    for thread, _ in runs:
        thread.join(DEADLINE)
    taken = [task_id for _, box in runs for task_id in box["result"]]
    assert sorted(taken, key=int) == ids
    assert clients[0].stats().acked_total == len(ids)
