"""The broker as a real process: shared with direct clients, group commit, crashes, strangers, the CLI.

Every broker here runs under ``BrokerManager`` (its own process, as in production) and
is stopped in a ``finally`` or a fixture's teardown; every child process and thread is
joined before the test ends. Nothing waits on a clock: tests wait for events (a reply,
a condition, a process exit), each with a bound, and assert on counts, never on time.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any

import orjson
import pytest
import workers
from conftest import BrokerThread, run_djq

import djq
from djq import journal, ops, wire
from djq.broker import Broker
from djq.model import QueueConfig

CLIENT_TIMEOUT = 10.0  #: seconds a test's client waits for a reply before BrokerUnavailable


@pytest.fixture
def manager(queue_path: Path) -> Iterator[djq.BrokerManager]:
    """A broker process for ``queue_path`` (no fsync), stopped at teardown whatever happened."""
    m = djq.BrokerManager(queue_path, fsync=False)
    m.start()
    try:
        yield m
    finally:
        m.stop()


def _raw_client(paths: wire.BrokerPaths) -> mpc.Connection:
    """An authenticated connection that sends whatever bytes the test wants."""
    key = bytes.fromhex(paths.key.read_text())
    conn = mpc.Client(str(paths.socket), family="AF_UNIX", authkey=key)
    assert _ask(conn, wire.encode_hello()) == {"protocol": wire.PROTOCOL}
    return conn


def _lease(owner: str) -> ops.LeaseNext:
    return ops.LeaseNext(token="t" + owner, owner=owner, duration=30.0)


def _ask(conn: mpc.Connection, data: bytes) -> Any:
    """Send one request on a raw connection; return its decoded reply (or raise its error)."""
    conn.send_bytes(data)
    assert conn.poll(CLIENT_TIMEOUT), "the broker did not reply"
    return wire.decode_reply(conn.recv_bytes())


def _wait_exited(pid: int) -> None:
    """Block until our child ``pid`` has exited, leaving it for its ``Popen`` to reap."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _still_serves(path: Path) -> str:
    """Put a task through a new client and return its id: the broker is alive and answering."""
    with djq.connect(path, timeout=CLIENT_TIMEOUT) as client:
        return client.put({"still": "serving"})


def _run_threads(targets: list[Callable[[], None]], deadline: float) -> list[BaseException]:
    """Run each target in a thread, join all by ``deadline`` (seconds); return what they raised.

    A thread that raises records it here instead of in pytest's unhandled-exception hook.
    """
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported to the test, which asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(t,), name=f"client-{i}") for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert alive == [], f"threads still running at the deadline: {alive}"
    return errors


# Direct clients and broker clients on one file, in real processes

MIXED_PRODUCERS = ("flock", "broker")  #: one direct producer, one through the broker
MIXED_CONSUMERS = ("flock", "broker")
MIXED_PER_PRODUCER = 1_500
MIXED_TOTAL = MIXED_PER_PRODUCER * len(MIXED_PRODUCERS)
MIXED_HIGH_WATER = 50  #: as in test_processes: keeps the file (rewritten by every write) small
MIXED_DEADLINE = 60.0  #: seconds for all four children; runs take 5 s on two cores, 17 s with two CPU hogs


@pytest.mark.timeout(120)
def test_direct_and_broker_clients_on_one_file_move_every_task_exactly_once(tmp_path: Path):
    """A direct and a broker producer, a direct and a broker consumer: each task acked once, none lost.

    The broker takes the same file lock as the direct clients for every batch, so the two
    kinds of client interleave on one file; the broker's counters match what its own
    clients did.
    """
    path = tmp_path / "q" / "Queue.json"
    ctx = multiprocessing.get_context("spawn")
    processes = [
        ctx.Process(
            target=workers.producer,
            args=(
                str(path),
                kind,
                None,
                i,
                MIXED_PER_PRODUCER,
                MIXED_HIGH_WATER,
                str(tmp_path / f"p{i}.json"),
            ),
            name=f"producer-{i}-{kind}",
        )
        for i, kind in enumerate(MIXED_PRODUCERS)
    ] + [
        ctx.Process(
            target=workers.consumer,
            args=(str(path), kind, None, i, MIXED_TOTAL, str(tmp_path / f"c{i}.json")),
            name=f"consumer-{i}-{kind}",
        )
        for i, kind in enumerate(MIXED_CONSUMERS)
    ]
    manager = djq.BrokerManager(path, fsync=False)  # lock flock, like the direct workers
    started = time.monotonic()
    try:
        manager.start()
        for p in processes:
            p.start()
        problems = workers.join_all(processes, started + MIXED_DEADLINE)
        status = manager.status()
    finally:
        workers.reap(processes)
        manager.stop()
    assert problems == [], problems
    assert status["answers"], status

    produced = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(len(MIXED_PRODUCERS))]
    consumed = [json.loads((tmp_path / f"c{i}.json").read_text()) for i in range(len(MIXED_CONSUMERS))]
    put = {task_id: payload for r in produced for task_id, payload in r["put"]}
    acked = Counter(task_id for r in consumed for task_id, _ in r["acked"])
    print(
        f"mixed: {MIXED_TOTAL} tasks in {time.monotonic() - started:.1f} s; acked per consumer "
        f"{dict(zip(MIXED_CONSUMERS, (len(r['acked']) for r in consumed), strict=True))}; "
        f"broker {status['metrics']}"
    )
    assert sum(len(r["put"]) for r in produced) == len(put) == MIXED_TOTAL, "a task id was handed out twice"
    assert [r["lost"] for r in consumed] == [[], []], "a lease was lost although none can expire here"
    assert [i for i, n in acked.items() if n > 1] == [], "a task was acked twice"
    assert sorted(put.keys() - acked.keys()) == [], "put but never acked"
    assert sorted(acked.keys() - put.keys()) == [], "acked but never put"
    assert {i: p for r in consumed for i, p in r["acked"]} == put, "an acked payload differs from the one put"

    stats = workers.final_stats(path, "flock")
    assert stats.total == 0
    assert stats.put_total == stats.acked_total == MIXED_TOTAL
    assert stats.dead_total == 0
    # The broker applied exactly its own clients' writes: each put of its producer, and for
    # each task its consumer acked, the get that leased it and the ack.
    by_broker = consumed[MIXED_CONSUMERS.index("broker")]["acked"]
    assert status["metrics"]["applied"] == MIXED_PER_PRODUCER + 2 * len(by_broker)


# Group commit


GROUP_CLIENTS = 8
GROUP_PUTS = 100  #: per client


@pytest.mark.timeout(60)
def test_concurrent_puts_share_writes_group_commit(queue_path: Path):
    """Eight clients putting at once: the broker applies many puts per write (one write per batch).

    With fsync on, each write takes long enough for the other clients' requests to pile
    up, and the broker applies all of them in the next batch. Measured on two cores (this
    test's eight threads): 800 puts in 140-220 writes (3.7 to 5.7 puts per write), the
    same with two CPU hogs running; the bound asks for 2.
    """
    manager = djq.BrokerManager(queue_path, fsync=True)
    clients: list[djq.BrokerClient] = []
    try:
        manager.start()
        clients = [djq.connect(queue_path, timeout=CLIENT_TIMEOUT) for _ in range(GROUP_CLIENTS)]
        before = clients[0].metrics()
        go = threading.Barrier(GROUP_CLIENTS, timeout=CLIENT_TIMEOUT)
        ids: list[list[str]] = [[] for _ in clients]

        def producer(i: int) -> Callable[[], None]:
            def run() -> None:
                go.wait()
                for n in range(GROUP_PUTS):
                    ids[i].append(clients[i].put({"c": i, "n": n}))

            return run

        errors = _run_threads([producer(i) for i in range(GROUP_CLIENTS)], deadline=45.0)
        after = clients[0].metrics()
    finally:
        for client in clients:
            client.close()
        manager.stop()
    assert errors == []
    applied = after["applied"] - before["applied"]
    writes = after["writes"] - before["writes"]
    transactions = after["transactions"] - before["transactions"]
    print(f"group commit: {applied} puts applied in {writes} writes ({applied / writes:.1f} per write)")
    assert applied == GROUP_CLIENTS * GROUP_PUTS
    assert writes == transactions, "a batch of puts was written more (or less) than once"
    assert writes <= applied / 2, f"{writes} writes for {applied} puts: no group commit"
    assert 1 < after["largest_batch"] <= GROUP_CLIENTS, "a batch holds at most one request per client"
    every = [task_id for chunk in ids for task_id in chunk]
    assert len(set(every)) == len(every) == applied
    with djq.Queue(queue_path) as q:
        assert {t.id for t in q.peek(100_000)} == set(every), "an answered put is not in the file"


# SIGKILL mid-load

KILL_PRODUCERS = 4
KILL_AFTER = 300  #: answered puts (in all) before the kill


@pytest.mark.timeout(60)
def test_sigkill_mid_load_loses_no_answered_put_and_a_restart_serves_again(queue_path: Path):
    """Kill -9 the broker while producers put: they get BrokerUnavailable, no answered put is lost.

    A put is answered only after the write that holds it, so every id a producer was
    given is in the file. The dead broker leaves its socket behind; restart() clears it
    and starts a broker, and a client that saw the failure just carries on.
    """
    manager = djq.BrokerManager(queue_path, fsync=False)
    clients: list[djq.BrokerClient] = []
    answered: list[list[tuple[str, Any]]] = [[] for _ in range(KILL_PRODUCERS)]
    progress = threading.Condition()
    stop = threading.Event()  # only set if the kill never comes (a failing test)

    def producer(i: int) -> Callable[[], None]:
        def run() -> None:
            n = 0
            while not stop.is_set():
                payload = {"p": i, "n": n}
                task_id = clients[i].put(payload)  # raises BrokerUnavailable once the broker is killed
                with progress:
                    answered[i].append((task_id, payload))
                    progress.notify_all()
                n += 1

        return run

    try:
        manager.start()
        victim = manager.pid
        assert victim is not None
        clients = [djq.connect(queue_path, timeout=CLIENT_TIMEOUT) for _ in range(KILL_PRODUCERS)]
        errors: list[BaseException] = []

        def kill_under_load() -> None:
            with progress:
                loaded = progress.wait_for(lambda: sum(map(len, answered)) >= KILL_AFTER, timeout=30)
            if not loaded:
                stop.set()
                raise AssertionError("the producers never got going")
            os.kill(victim, signal.SIGKILL)

        errors = _run_threads([*(producer(i) for i in range(KILL_PRODUCERS)), kill_under_load], 45.0)
        assert len(errors) == KILL_PRODUCERS, errors
        assert all(isinstance(e, djq.BrokerUnavailable) for e in errors), errors
        _wait_exited(victim)
        assert not manager.is_alive()
        assert manager.paths.socket.exists(), "a killed broker cannot remove its socket"

        with djq.Queue(queue_path, fsync=False) as q:
            in_file = {t.id: t.payload for t in q.peek(100_000)}
        every = [item for chunk in answered for item in chunk]
        missing = [task_id for task_id, payload in every if in_file.get(task_id) != payload]
        assert missing == [], f"answered puts missing from the file: {missing[:10]}"
        assert len(every) >= KILL_AFTER
        assert len(in_file) - len(every) <= KILL_PRODUCERS, "more unanswered writes than requests in flight"

        status = manager.restart()
        assert status["answers"]
        assert status["pid"] != victim
        after = clients[0].put("after the restart")  # the same client reconnects by itself
        assert after not in in_file
        with djq.Queue(queue_path, fsync=False) as q:
            assert {t.id for t in q.peek(100_000)} == {*in_file, after}
    finally:
        stop.set()
        for client in clients:
            client.close()
        manager.stop()


# Strangers and garbage


def test_a_client_with_the_wrong_authkey_is_refused_and_the_broker_carries_on(manager: djq.BrokerManager):
    """The authkey handshake refuses a client without the key, then hangs up; real clients are served."""
    address = str(manager.paths.socket)
    with pytest.raises(multiprocessing.AuthenticationError):
        mpc.Client(address, family="AF_UNIX", authkey=b"wrong")
    with mpc.Client(address, family="AF_UNIX") as conn:  # no handshake yet: the test does it
        with pytest.raises(multiprocessing.AuthenticationError):
            mpc.answer_challenge(conn, b"wrong")
        with pytest.raises(EOFError):  # the broker logs the refusal, then closes
            conn.recv_bytes()
    assert "refused a client: AuthenticationError" in manager.paths.log.read_text()
    assert _still_serves(manager.paths.queue) == "1"


def _garbage(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        b"",  # connect, then leave
        rng.randbytes(4096),
        struct.pack("!i", 0x7FFF_FFFF),  # a 2 GiB message is announced
        struct.pack("!i", -1) + struct.pack("!Q", 2**63),  # the long form of the length
        struct.pack("!i", 100) + b"short",  # less than announced, then EOF
        b"#CHALLENGE#" * 50,
    ]


def test_garbage_on_the_socket_is_refused_and_the_broker_carries_on(manager: djq.BrokerManager):
    """Random bytes, absurd length prefixes and early hang-ups before the handshake crash nothing."""
    pid = manager.pid
    sent = _garbage(seed=20240917)
    for data in sent:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CLIENT_TIMEOUT)
            sock.connect(str(manager.paths.socket))
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # the challenge, maybe a failure message, then EOF
                    pass
            except ConnectionResetError:  # the broker closed with our bytes unread: also a refusal
                pass
    assert manager.pid == pid
    assert _still_serves(manager.paths.queue) == "1"
    assert manager.paths.log.read_text().count("refused a client") == len(sent)


@pytest.mark.parametrize(
    ("request_bytes", "error", "field"),
    [
        pytest.param(b"not json", djq.BrokerProtocolError, None, id="not-json"),
        pytest.param(b"[1, 2, 3]", djq.BrokerProtocolError, None, id="not-an-object"),
        pytest.param(orjson.dumps({"op": "drop_tables"}), djq.BrokerProtocolError, None, id="unknown-op"),
        pytest.param(orjson.dumps({"op": "stats", "extra": 1}), djq.ConfigError, "op", id="extra-arg"),
        pytest.param(
            orjson.dumps({"op": "ping", "extra": 1}), djq.BrokerProtocolError, None, id="extra-arg-ping"
        ),
        pytest.param(
            orjson.dumps({"op": "put_many", "payloads": "x"}), djq.ConfigError, "payloads", id="bad-payloads"
        ),
        pytest.param(
            orjson.dumps({"op": "put_many", "payloads": [1], "priority": 0.5}),
            djq.ConfigError,
            "priority",
            id="bad-priority",
        ),
        pytest.param(
            orjson.dumps({"op": "lease", "token": "t", "owner": "o", "duration": -1}),
            djq.ConfigError,
            "lease",
            id="bad-lease",
        ),
        pytest.param(orjson.dumps({"op": "lease", "token": "t"}), djq.ConfigError, "op", id="missing-field"),
        pytest.param(orjson.dumps({"op": "ack", "id": 1, "token": "t"}), djq.ConfigError, "id", id="bad-id"),
        pytest.param(
            orjson.dumps({"op": "put_many", "payloads": ["x" * (2 << 20)]}),
            djq.PayloadError,
            None,
            id="payload-too-big",
        ),
        pytest.param(
            orjson.dumps({"op": "ack", "id": "404", "token": "t"}), djq.LeaseLost, None, id="no-such-task"
        ),
    ],
)
def test_malformed_requests_get_error_replies_and_the_connection_keeps_working(
    manager: djq.BrokerManager, request_bytes: bytes, error: type[Exception], field: str | None
):
    """An authenticated client's bad request is answered with the error; its connection carries on."""
    with _raw_client(manager.paths) as conn:
        with pytest.raises(error) as info:
            _ask(conn, request_bytes)
        if field is not None:
            assert info.value.field == field  # type: ignore[attr-defined]
        assert _ask(conn, wire.encode_request(ops.PutMany(payloads=("ok",)))) == ["1"]
    with djq.Queue(manager.paths.queue, fsync=False) as q:
        assert [t.payload for t in q.peek()] == ["ok"], "a refused request changed the file"


def test_an_oversized_message_closes_only_that_connection(manager: djq.BrokerManager):
    """A length prefix past MAX_MESSAGE_BYTES drops the sender; nothing is read, others are served."""
    with _raw_client(manager.paths) as conn:
        os.write(conn.fileno(), struct.pack("!i", wire.MAX_MESSAGE_BYTES + 1))
        assert conn.poll(CLIENT_TIMEOUT)
        with pytest.raises(EOFError):
            conn.recv_bytes()
    assert _still_serves(manager.paths.queue) == "1"


def test_a_waiting_get_whose_client_left_takes_no_task(manager: djq.BrokerManager):
    """A get waiting in the broker is dropped with its connection; the next task stays ready."""
    with _raw_client(manager.paths) as conn:
        conn.send_bytes(wire.encode_request(_lease("ghost"), None))
        info = _ask(conn, wire.encode_control("ping"))  # answered while the get waits
        assert info["waiting"] == 1
    task_id = _still_serves(manager.paths.queue)
    with djq.Queue(manager.paths.queue, fsync=False) as q:
        assert [t.id for t in q.peek()] == [task_id]
        assert q.stats().leased == 0


def test_a_get_waiting_in_the_broker_is_served_a_task_a_direct_client_puts(manager: djq.BrokerManager):
    """The broker notices a direct client's write while gets wait, and serves them from it."""
    with _raw_client(manager.paths) as conn:
        conn.send_bytes(wire.encode_request(_lease("w"), CLIENT_TIMEOUT))
        assert _ask(conn, wire.encode_control("ping"))["waiting"] == 1
        with djq.Queue(manager.paths.queue, fsync=False) as direct:
            task_id = direct.put({"from": "direct"})
        assert conn.poll(CLIENT_TIMEOUT * 2)
        task = wire.decode_result(_lease("w"), wire.decode_reply(conn.recv_bytes()))
    assert (task.id, task.payload, task.owner) == (task_id, {"from": "direct"}, "w")


# BrokerManager


def test_a_second_start_for_the_same_file_is_refused(manager: djq.BrokerManager, queue_path: Path):
    """Only one broker owns a file: a second start, from any manager or a Broker itself, raises."""
    pid = manager.pid
    with pytest.raises(djq.BrokerError, match="already serves"):
        manager.start()
    with pytest.raises(djq.BrokerError, match="already serves"):
        djq.BrokerManager(queue_path).start()
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(djq.BrokerError, match="already serves"):
        Broker(queue_path, config=QueueConfig(fsync=False)).serve()
    assert len(os.listdir("/proc/self/fd")) == fds, "a refused broker left files open"
    assert manager.pid == pid
    assert _still_serves(queue_path) == "1"


@pytest.mark.parametrize("spin", [0.0, 0.01], ids=["sleeps-at-once", "spins-10ms"])
def test_a_broker_serves_every_call_whether_it_spins_before_sleeping_or_not(queue_path: Path, spin: float):
    """``spin=0`` blocks as soon as no request is in; a 10 ms spin looks again and again first.

    Either way every call is served in order, and a waiting get that times out comes back.
    """
    broker = Broker(queue_path, config=QueueConfig(path=queue_path, fsync=False), spin=spin)
    thread = threading.Thread(target=broker.serve, daemon=True)
    thread.start()
    try:
        assert broker.ready.wait(10)
        with djq.connect(queue_path) as q:
            ids = [q.put(i) for i in range(5)]
            got = [q.get() for _ in range(5)]
            for task in got:
                assert task is not None
                q.ack(task)
            assert [t.id for t in got if t is not None] == ids
            assert q.get(timeout=0.05) is None
            assert q.stats().acked_total == 5
    finally:
        broker.shutdown()
        thread.join(10)
    assert not thread.is_alive()


def test_a_batchs_write_time_covers_its_fdatasync_after_the_lock_is_released(
    queue_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With fsync the append is fdatasynced once the lock is free: ``write_ns`` still counts the flush.

    Each batch's lock is released before its flush begins, and its write time runs at
    least from that release to the flush's end. The disk is made slow (a 20 ms flush), so
    the old write time, which ended at the release, cannot pass by chance.
    """
    flushes: list[tuple[int, int]] = []  # when each fdatasync began and ended
    fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        began = time.perf_counter_ns()
        time.sleep(0.02)  # a slow disk, not a wait for timing: the assertions compare clock readings
        fdatasync(fd)
        flushes.append((began, time.perf_counter_ns()))

    with djq.Queue(queue_path, fsync=True) as q:
        q.put("the journal's first line: it is started, with its header, and fsynced")
    monkeypatch.setattr(journal.os, "fdatasync", slow_fdatasync)
    broker = Broker(queue_path, config=QueueConfig(path=queue_path, fsync=True))
    thread = threading.Thread(target=broker.serve, daemon=True)
    thread.start()
    try:
        assert broker.ready.wait(10)
        with djq.connect(queue_path) as q:
            for i in range(3):
                q.put(i)
    finally:
        broker.shutdown()
        thread.join(10)
    assert not thread.is_alive()
    written = [row for row in broker.metrics.batches if row[-1]]
    assert len(written) == len(flushes) == 3
    for (_, _, released, _, _, write_ns, _), (began, ended) in zip(written, flushes, strict=True):
        assert released <= began
        assert write_ns >= ended - released


def test_a_broker_stopped_in_a_thread_leaves_no_accept_thread_behind(queue_path: Path):
    """serve() returns only after its accept thread ended, so one process can run brokers again and again."""
    for _ in range(3):
        broker = BrokerThread(queue_path)
        try:
            assert _still_serves(queue_path)
        finally:
            broker.stop()
        assert [t for t in threading.enumerate() if t.name == "djq-accept"] == []
    assert not wire.broker_paths(queue_path).socket.exists()


def test_status_reports_pid_address_and_counters_and_stop_clears_everything(queue_path: Path):
    """status() shows who serves and whether it answers; after stop() no socket or key is left."""
    manager = djq.BrokerManager(queue_path, fsync=False)
    try:
        assert manager.status() == {
            "queue": str(queue_path),
            "pid": None,
            "address": str(manager.paths.socket),
            "alive": False,
            "answers": False,
        }
        started = manager.start()
        with djq.connect(queue_path) as client:
            client.put("x")
            status = manager.status()
        assert started["pid"] == status["pid"] == manager.pid
        assert isinstance(status["pid"], int)
        assert status["pid"] > 1
        assert status["address"] == str(manager.paths.socket)
        assert status["alive"] is True
        assert status["answers"] is True
        assert status["clients"] == 1  # the one above; status's own client is not counted
        assert status["metrics"]["applied"] == status["metrics"]["writes"] == 1
        assert manager.paths.socket.exists()
        assert manager.paths.key.exists()
        assert oct(manager.paths.key.stat().st_mode & 0o777) == "0o600"
        assert manager.stop() is True
        assert not manager.paths.socket.exists()
        assert not manager.paths.key.exists()
        assert manager.status()["alive"] is False
        assert manager.pid is None
        assert manager.stop() is False, "stopping twice is harmless"
    finally:
        manager.stop()


def test_the_stale_socket_of_a_killed_broker_is_cleaned_by_the_next_start(manager: djq.BrokerManager):
    """After kill -9 the socket and key stay; clients get BrokerUnavailable; start() serves again."""
    victim = manager.pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _wait_exited(victim)
    assert not manager.is_alive()
    assert manager.status()["alive"] is False
    assert manager.paths.socket.exists()
    assert manager.paths.key.exists()
    with pytest.raises(djq.BrokerUnavailable, match="broker start"):
        djq.connect(manager.paths.queue)
    status = manager.start()
    assert status["answers"]
    assert status["pid"] != victim
    assert _still_serves(manager.paths.queue) == "1"


def test_a_stale_socket_file_without_a_broker_is_replaced(queue_path: Path):
    """A socket file nobody listens on (a broker that died long ago) does not stop a start."""
    paths = wire.broker_paths(queue_path)
    paths.queue.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(paths.socket))  # closing does not remove the file
    paths.key.write_text("00" * 32)
    with pytest.raises(djq.BrokerUnavailable):
        djq.connect(queue_path)
    manager = djq.BrokerManager(queue_path, fsync=False)
    try:
        assert manager.start()["answers"]
        assert _still_serves(queue_path) == "1"
    finally:
        manager.stop()


@pytest.mark.timeout(10)
def test_a_client_without_a_broker_gets_broker_unavailable_at_once(queue_path: Path):
    """No broker: connect() and a client's first call raise BrokerUnavailable saying how to start one."""
    with pytest.raises(djq.BrokerUnavailable, match=r"no broker serves .*djq --queue .* broker start"):
        djq.connect(queue_path)
    client = djq.BrokerClient(queue_path)
    with pytest.raises(djq.BrokerUnavailable):
        client.stats()
    assert not queue_path.exists(), "a client never creates the queue"


# The command line


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_djq(*args, cwd=cwd)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("djq: error: "), lines[0]
    return lines[0]


@pytest.mark.timeout(120)
def test_cli_broker_start_status_put_get_ack_stop(tmp_path: Path):
    """djq broker start returns with the broker running; --broker commands use it; stop ends it."""
    path = tmp_path / "q" / "Queue.json"
    q = ["--queue", str(path)]
    try:
        started = _cli(tmp_path, *q, "--no-fsync", "broker", "start")
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith(f"broker for {path}: pid ")
        assert "answering" in started.stdout

        status = _cli(tmp_path, *q, "--json", "broker", "status")
        assert status.returncode == 0, status.stderr
        info = orjson.loads(status.stdout)
        assert info["alive"] is True
        assert info["answers"] is True
        assert info["pid"] == djq.BrokerManager(path).pid
        assert info["address"] == str(path) + ".sock"

        assert _cli(tmp_path, *q, "--broker", "put", '{"n": 1}').stdout == "1\n"
        got = _cli(tmp_path, *q, "--broker", "--json", "get")
        assert got.returncode == 0, got.stderr
        task = orjson.loads(got.stdout)
        assert (task["id"], task["payload"], task["state"]) == ("1", {"n": 1}, "leased")
        acked = _cli(tmp_path, *q, "--broker", "ack", task["id"], task["token"])
        assert acked.returncode == 0, acked.stderr
        stats = orjson.loads(_cli(tmp_path, *q, "--broker", "--json", "stats").stdout)
        assert (stats["put_total"], stats["acked_total"], stats["total"]) == (1, 1, 0)
        assert "already serves" in _one_error_line(_cli(tmp_path, *q, "broker", "start"))

        stopped = _cli(tmp_path, *q, "broker", "stop")
        assert (stopped.returncode, stopped.stdout) == (0, "stopped\n")
        assert not (tmp_path / "q" / "Queue.json.sock").exists()
        after = _cli(tmp_path, *q, "broker", "status")
        assert after.returncode == 1
        assert after.stdout == f"broker for {path}: not running\n"
        assert orjson.loads(_cli(tmp_path, *q, "--json", "broker", "status").stdout)["alive"] is False
        again = _cli(tmp_path, *q, "broker", "stop")
        assert (again.returncode, again.stdout) == (0, f"no broker serves {path}\n")
    finally:
        djq.BrokerManager(path).stop()


@pytest.mark.parametrize("command", [["put", '{"n": 1}'], ["get"], ["stats"]])
def test_cli_broker_command_without_a_broker_is_one_error_line(tmp_path: Path, command: list[str]):
    """--broker with no broker running: exit 1, one line saying how to start one, no traceback."""
    path = tmp_path / "q" / "Queue.json"
    line = _one_error_line(_cli(tmp_path, "--queue", str(path), "--broker", *command))
    assert "no broker serves" in line
    assert "broker start" in line
    assert not path.exists()
