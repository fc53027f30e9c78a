"""Misbehaving broker clients: none can stall the broker, exhaust its memory or kill it.

Each case plays one kind of bad client against a real broker process (``BrokerManager``,
stopped in a ``finally``): slow senders, half messages then silence, absurd length
prefixes, hundreds of idle connections, a client that never reads its replies, one that
hangs up mid-reply, garbage after the handshake, a broker out of descriptors. After each,
a well-behaved client's put, get and ack must complete within ``BOUND`` seconds (a
generous bound for "not stuck", never a speed threshold), the broker's buffered bytes
(its ``metrics``) stay under its bounds, and its process is the same and alive.

Then the client side: a broker that does not answer its handshake (a fake, or a real one
under SIGSTOP) bounds ``djq.connect`` and ``BrokerManager.stop`` by their timeouts; a
client shared by threads does not make a put wait behind a waiting get; "did not reply"
and "lost the broker" are told apart. Faults inside the broker (any exception from a
request, a batch or the loop) are injected into a broker run in a thread. Last, the
broker's files: nothing is written through a symlink planted at them, and missing
folders are made 0700.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import random
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import BrokerThread

import djq
from djq import broker as broker_module
from djq import engine, files, ops, remote, wire
from djq.broker import MAX_BUFFERED_BYTES, MAX_OUTGOING_BYTES, MAX_PENDING_REPLIES, Broker
from djq.model import QueueConfig

BOUND = 10.0  #: seconds a well-behaved call may take while others misbehave (generous: "not stuck")
MEMORY_BOUND = MAX_BUFFERED_BYTES + MAX_OUTGOING_BYTES  #: what one connection may make the broker hold
RSS_BOUND = 400 << 20  #: bytes of resident memory the broker process stays under in every case


@pytest.fixture
def manager(queue_path: Path) -> Iterator[djq.BrokerManager]:
    """A broker process for ``queue_path`` (no fsync), stopped (and reaped) at teardown."""
    m = djq.BrokerManager(queue_path, fsync=False)
    m.start()
    try:
        yield m
    finally:
        pid = m.pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a test may have stopped it
        m.stop(timeout=5.0)
        assert m.pid is None


# Helpers


def _authed(paths: wire.BrokerPaths) -> socket.socket:
    """A raw socket past the authkey handshake and the hello: it sends whatever bytes the test wants."""
    key = bytes.fromhex(paths.key.read_text())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.connect(str(paths.socket))
    sock.setblocking(True)  # the handshake reads block (bounded by SO_RCVTIMEO below)
    conn = mpc.Connection(os.dup(sock.fileno()))  # blocking, bounded by the socket timeout below
    try:
        _timeouts(conn.fileno(), BOUND)
        mpc.answer_challenge(conn, key)
        mpc.deliver_challenge(conn, key)
        conn.send_bytes(wire.encode_hello())
        assert conn.poll(BOUND), "no hello from the broker"
        assert wire.decode_reply(conn.recv_bytes()) == {"protocol": wire.PROTOCOL}
    finally:
        conn.close()  # the duplicate only
    sock.settimeout(BOUND)
    return sock


def _timeouts(fd: int, seconds: float) -> None:
    value = struct.pack("ll", int(seconds), 0)
    with socket.socket(fileno=os.dup(fd)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _frame(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise EOFError
        chunks += chunk
    return bytes(chunks)


def _read_reply(sock: socket.socket) -> Any:
    (size,) = struct.unpack("!i", _recv_exactly(sock, 4))
    return wire.decode_reply(_recv_exactly(sock, size))


def _closed_by_broker(sock: socket.socket) -> bool:
    """True once the broker has closed this connection (EOF or reset within BOUND)."""
    sock.settimeout(BOUND)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _well_behaved_round(path: Path) -> float:
    """A new client puts, gets and acks; return the seconds it took (asserted under BOUND)."""
    start = time.monotonic()
    with djq.connect(path, timeout=BOUND) as client:
        client.put({"well": "behaved"})
        task = client.get()
        assert task is not None
        client.ack(task)
    took = time.monotonic() - start
    assert took < BOUND, f"a well-behaved put/get/ack took {took:.1f} s"
    return took


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    return 0


def _healthy(manager: djq.BrokerManager, pid: int) -> dict[str, Any]:
    """The same broker is alive, answers a well-behaved round, and holds bounded memory."""
    assert manager.pid == pid, "the broker process changed or died"
    os.kill(pid, 0)
    _well_behaved_round(manager.paths.queue)
    with djq.connect(manager.paths.queue, timeout=BOUND) as client:
        metrics = client.metrics()
    assert metrics["largest_buffer"] <= MEMORY_BOUND, metrics
    assert _rss(pid) < RSS_BOUND, f"the broker's RSS is {_rss(pid) >> 20} MiB"
    return metrics


def _wait_for(condition: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound:g} s: {what}"
        time.sleep(0.02)


def _metrics(path: Path) -> dict[str, Any]:
    with djq.connect(path, timeout=BOUND) as client:
        return client.metrics()


def _info(path: Path) -> dict[str, Any]:
    with djq.connect(path, timeout=BOUND) as client:
        return client.ping()


def _unread(fd: int) -> int:
    """Bytes waiting to be read on socket ``fd``."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


# Slow and half senders


@pytest.mark.timeout(60)
def test_a_slow_sender_one_byte_at_a_time_stalls_no_one(manager: djq.BrokerManager):
    """A request trickling in byte by byte is served when whole; meanwhile others are served."""
    pid = manager.pid
    assert pid
    request = _frame(wire.encode_request(ops.PutMany(payloads=({"slow": "x" * 100},))))
    with _authed(manager.paths) as slow:
        half = len(request) // 2
        for i in range(half):
            slow.sendall(request[i : i + 1])
            if i % 16 == 0:
                time.sleep(0.001)
        _healthy(manager, pid)  # half a message waits in its buffer; the loop serves others
        assert _metrics(manager.paths.queue)["largest_buffer"] >= half
        for i in range(half, len(request)):
            slow.sendall(request[i : i + 1])
        assert len(_read_reply(slow)) == 1, "the slow put was not answered"
    _healthy(manager, pid)


@pytest.mark.timeout(60)
def test_half_messages_then_silence_hold_only_their_own_buffers(manager: djq.BrokerManager):
    """Clients that stop mid-message (Ctrl-Z on a big batch) freeze nothing; their buffers are bounded."""
    pid = manager.pid
    assert pid
    with contextlib.ExitStack() as stack:
        small = stack.enter_context(_authed(manager.paths))
        small.sendall(struct.pack("!i", 1000) + b'{"op": "put_')  # then silence
        big = stack.enter_context(_authed(manager.paths))
        big.sendall(struct.pack("!i", 32 << 20) + b"x" * (4 << 20))  # 4 of 32 MiB, then silence
        _wait_for(
            lambda: _metrics(manager.paths.queue)["buffered_bytes"] >= 4 << 20, "the broker read the 4 MiB"
        )
        for _ in range(3):
            metrics = _healthy(manager, pid)
        assert metrics["largest_buffer"] <= (32 << 20) + 4
        assert metrics["clients"] >= 3  # the two silent ones are still connected: nothing was dropped
    _wait_for(lambda: _metrics(manager.paths.queue)["buffered_bytes"] == 0, "their buffers were freed")
    _healthy(manager, pid)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(struct.pack("!i", 0x7FFF_FFFF), id="2GiB"),
        pytest.param(struct.pack("!i", wire.MAX_MESSAGE_BYTES + 1), id="limit+1"),
        pytest.param(struct.pack("!iQ", -1, 2**63), id="long-form-2**63"),
        pytest.param(struct.pack("!iQ", -1, 2**64 - 1), id="long-form-max"),
        pytest.param(struct.pack("!i", -7), id="negative"),
    ],
)
def test_a_huge_length_prefix_drops_only_that_client_and_allocates_nothing(
    manager: djq.BrokerManager, prefix: bytes
):
    """A prefix announcing more than MAX_MESSAGE_BYTES (or less than 0) closes that connection at once."""
    pid = manager.pid
    assert pid
    before = _metrics(manager.paths.queue)["dropped"]
    with _authed(manager.paths) as sock:
        sock.sendall(prefix + b"{}")
        assert _closed_by_broker(sock)
    metrics = _healthy(manager, pid)
    assert metrics["dropped"] == before + 1
    assert metrics["buffered_bytes"] < 1 << 20


def test_the_long_form_of_a_length_is_understood(manager: djq.BrokerManager):
    """multiprocessing's long form (-1, then 8 bytes) of a small length frames a request too."""
    with _authed(manager.paths) as sock:
        data = wire.encode_control("ping")
        sock.sendall(struct.pack("!iQ", -1, len(data)) + data)
        assert _read_reply(sock)["pid"] == manager.pid
        sock.sendall(_frame(data) * 3)  # three at once: answered in order, one per batch
        assert [_read_reply(sock)["pid"] for _ in range(3)] == [manager.pid] * 3


# Many connections


IDLE_AUTHED = 300
IDLE_STRANGERS = 30


@pytest.mark.timeout(120)
def test_hundreds_of_idle_connections_do_not_slow_the_others(manager: djq.BrokerManager):
    """300 authenticated clients that say nothing and 30 that never do the handshake: others are served."""
    pid = manager.pid
    assert pid
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (IDLE_AUTHED + IDLE_STRANGERS) + 200
    if soft < need:
        pytest.skip(f"RLIMIT_NOFILE is {soft}; this test needs {need} descriptors")
    with contextlib.ExitStack() as stack:
        for _ in range(IDLE_STRANGERS):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.connect(str(manager.paths.socket))
        for _ in range(IDLE_AUTHED):
            stack.enter_context(_authed(manager.paths))
        metrics = _healthy(manager, pid)
        assert metrics["clients"] >= IDLE_AUTHED
    _wait_for(lambda: _metrics(manager.paths.queue)["clients"] == 1, "the idle clients were let go")
    _healthy(manager, pid)


# Clients that do not read, or leave mid-reply


BIG_TASKS = 400
BIG_PAYLOAD = "y" * 4000  #: 400 tasks of 4 kB: a peek's reply of 1.6 MB, more than a socket buffer


def _fill(path: Path) -> None:
    with djq.connect(path, timeout=BOUND) as client:
        client.put_many([{"n": n, "pad": BIG_PAYLOAD} for n in range(BIG_TASKS)])


@pytest.mark.timeout(90)
def test_a_client_that_never_reads_its_replies_cannot_grow_the_broker(manager: djq.BrokerManager):
    """Pipelined peeks whose big replies are never read: the broker stops reading that client.

    Its unsent replies stay under MAX_OUTGOING_BYTES (the broker takes no new request from
    a client whose replies wait), so its memory is bounded however much the client sends.
    """
    pid = manager.pid
    assert pid
    _fill(manager.paths.queue)
    request = _frame(wire.encode_request(ops.Peek(limit=BIG_TASKS)))
    with _authed(manager.paths) as deaf:
        deaf.setblocking(False)
        view = memoryview(request * 200)  # 200 replies of 1.6 MB, if the broker took them all
        stuck_since = None
        while view:  # until all is sent, or the broker has stopped reading for half a second
            try:
                view = view[deaf.send(view) :]
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 0.5:
                    break
                time.sleep(0.01)
        metrics = _healthy(manager, pid)
        assert metrics["largest_buffer"] <= MAX_OUTGOING_BYTES + len(request)
        assert _rss(pid) < RSS_BOUND
    _wait_for(lambda: _metrics(manager.paths.queue)["buffered_bytes"] == 0, "the deaf client was let go")
    _healthy(manager, pid)


@pytest.mark.timeout(60)
def test_a_client_with_too_many_requests_unanswered_is_dropped(manager: djq.BrokerManager):
    """Waiting gets pipelined past MAX_PENDING_REPLIES: that client is dropped, its gets forgotten."""
    pid = manager.pid
    assert pid
    lease = wire.encode_request(ops.LeaseNext(token="t", owner="greedy", duration=30.0), None)
    with _authed(manager.paths) as greedy:
        greedy.sendall(_frame(lease) * (MAX_PENDING_REPLIES + 10))
        assert _closed_by_broker(greedy)
    metrics = _healthy(manager, pid)
    assert metrics["dropped"] >= 1
    with djq.connect(manager.paths.queue, timeout=BOUND) as client:
        assert client.ping()["waiting"] == 0
        assert client.stats().leased == 0, "a dropped client's get took a task"


@pytest.mark.timeout(60)
def test_clients_that_hang_up_mid_reply_are_dropped_and_others_served(manager: djq.BrokerManager):
    """A peek whose 1.6 MB reply the client never waits for: the broker's write fails, only it is dropped."""
    pid = manager.pid
    assert pid
    _fill(manager.paths.queue)
    request = _frame(wire.encode_request(ops.Peek(limit=BIG_TASKS)))
    for _ in range(5):
        with _authed(manager.paths) as rude:
            rude.sendall(request)
            _recv_exactly(rude, 1000)  # the reply has begun
        _healthy(manager, pid)
    with djq.Queue(manager.paths.queue, fsync=False) as q:
        stats = q.stats()
    assert (stats.total, stats.leased) == (BIG_TASKS, 0), "a peek changed the queue"


# Garbage after the handshake


@pytest.mark.timeout(90)
def test_garbage_after_the_handshake_is_answered_or_dropped_never_fatal(manager: djq.BrokerManager):
    """Random bytes, random frames and truncated requests from authenticated clients crash nothing."""
    pid = manager.pid
    assert pid
    rng = random.Random(20261201)
    good = wire.encode_request(ops.PutMany(payloads=({"n": 1},)))
    samples = [
        rng.randbytes(4096),
        _frame(rng.randbytes(200)),
        _frame(good[: len(good) // 2]),
        _frame(b"\xff\xfe" * 50),
        _frame(b'{"op": "put_many", "payloads": [' * 1000),
        _frame(orjson.dumps({"op": "ack", "id": ["1"], "token": {"a": 1}})),
        _frame(orjson.dumps({"op": "ping", "rows": 1e308})),
        _frame(b""),
    ] + [rng.randbytes(rng.randrange(1, 64)) for _ in range(20)]
    for data in samples:
        with _authed(manager.paths) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(BOUND)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):  # an error reply, or nothing, then EOF
                    pass
    _healthy(manager, pid)


# Out of descriptors


@pytest.mark.timeout(90)
def test_a_broker_out_of_descriptors_accepts_again_once_they_are_free(manager: djq.BrokerManager):
    """accept() failing with EMFILE is logged and retried: once descriptors are free, clients are served."""
    pid = manager.pid
    assert pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use, hard))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot lower the broker's descriptor limit: {exc}")
    waiting: list[socket.socket] = []
    try:
        for _ in range(3):  # they wait in the listen backlog while accept fails
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(manager.paths.socket))
            waiting.append(sock)
        _wait_for(lambda: "cannot accept a client" in manager.paths.log.read_text(), "the EMFILE was logged")
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        for sock in waiting:
            sock.close()
    metrics = _healthy(manager, pid)
    assert metrics["accept_errors"] >= 1


# The client side: bounded connects and stops, threads, accurate errors

FAKE_BROKER = r"""
import fcntl, os, socket, sys, time, orjson
info, address, key = sys.argv[1:4]
fd = os.open(info, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, orjson.dumps({"pid": os.getpid(), "address": address, "started_at": 0}), 0)
with open(key, "w") as f:
    f.write("00" * 32)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(address)
listener.listen(64)
print("ready", flush=True)
held = []
while True:  # accepts, and never says a word
    conn, _ = listener.accept()
    held.append(conn)
"""


@pytest.mark.timeout(60)
def test_connect_and_stop_are_bounded_on_a_broker_that_never_answers_its_handshake(queue_path: Path):
    """A "broker" that accepts and says nothing: connect(timeout=1) raises; stop(timeout=1) kills it."""
    paths = wire.broker_paths(queue_path)
    queue_path.parent.mkdir(parents=True)
    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE_BROKER, str(paths.info), str(paths.socket), str(paths.key)],
        stdout=subprocess.PIPE,
    )
    try:
        assert fake.stdout is not None
        assert fake.stdout.readline() == b"ready\n"
        start = time.monotonic()
        with pytest.raises(djq.BrokerUnavailable, match="did not complete the handshake within 1 s"):
            djq.connect(queue_path, timeout=1)
        assert time.monotonic() - start < 5.0, "connect(timeout=1) was not bounded"
        manager = djq.BrokerManager(queue_path)
        assert manager.pid == fake.pid
        start = time.monotonic()
        assert manager.stop(timeout=1) is True
        took = time.monotonic() - start
        assert took < 2.5, f"stop(timeout=1) took {took:.1f} s"
        assert fake.wait(BOUND) == -signal.SIGTERM
        assert manager.pid is None
    finally:
        if fake.poll() is None:
            fake.kill()
        fake.wait(BOUND)
        if fake.stdout is not None:
            fake.stdout.close()


@pytest.mark.timeout(60)
def test_a_stopped_broker_times_out_clients_and_stop_kills_it_within_its_timeout(queue_path: Path):
    """SIGSTOP on the broker: connect and a call time out with "did not ...", and stop(timeout=2) ends it."""
    manager = djq.BrokerManager(queue_path, fsync=False)
    try:
        manager.start()
        pid = manager.pid
        assert pid
        client = djq.connect(queue_path, timeout=1)
        client.put("before")
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(djq.BrokerUnavailable, match=r"did not reply within 1 s") as info:
            client.put("while stopped")
        assert "lost" not in str(info.value)
        with pytest.raises(djq.BrokerUnavailable, match="did not complete the handshake within 1 s"):
            djq.connect(queue_path, timeout=1)
        assert time.monotonic() - start < 6.0
        client.close()
        start = time.monotonic()
        assert manager.stop(timeout=2) is True
        took = time.monotonic() - start
        assert took < 3.5, f"stop(timeout=2) took {took:.1f} s"
        assert manager.pid is None
        assert manager._process is None, "the killed broker was not reaped"
    finally:
        pid = manager.pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        manager.stop(timeout=5)


@pytest.mark.timeout(60)
def test_a_killed_broker_is_reported_lost_not_late(manager: djq.BrokerManager):
    """SIGKILL mid-get: the waiting client is told it lost the broker (at once), not that it was slow."""
    pid = manager.pid
    assert pid
    client = djq.connect(manager.paths.queue, timeout=BOUND)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            client.get(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        _wait_for(lambda: _info(manager.paths.queue)["waiting"] == 1, "the get is waiting")
        os.kill(pid, signal.SIGKILL)
        waiter.join(BOUND)
        assert not waiter.is_alive()
    finally:
        client.close()
    assert len(errors) == 1
    assert isinstance(errors[0], djq.BrokerUnavailable)
    assert "lost the broker" in str(errors[0])
    assert "did not reply" not in str(errors[0])


@pytest.mark.timeout(60)
def test_a_waiting_get_does_not_hold_up_another_threads_put_on_the_same_client(manager: djq.BrokerManager):
    """One client, two threads: a get waiting for ever, then a put from the other thread serves it."""
    client = djq.connect(manager.paths.queue, timeout=BOUND)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(client.get(timeout=None)))
    try:
        waiter.start()
        _wait_for(lambda: client.ping()["waiting"] == 1, "the get waits in the broker")
        start = time.monotonic()
        task_id = client.put({"from": "the other thread"})
        assert time.monotonic() - start < BOUND
        waiter.join(BOUND)
        assert not waiter.is_alive(), "the waiting get was never served"
        assert got[0].id == task_id
        client.ack(got[0])
    finally:
        client.close()
        waiter.join(BOUND)


@pytest.mark.timeout(60)
def test_a_forked_child_uses_its_own_connection(manager: djq.BrokerManager):
    """After fork the child's calls open their own connection; the parent's carries on undisturbed."""
    client = djq.connect(manager.paths.queue, timeout=BOUND)
    try:
        client.put("parent")
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.close(read)
                os.write(write, client.put("child").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with open(read, "rb") as r:
            child_id = r.read().decode()
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.put("parent again") not in (child_id, "1")
        assert {t.payload for t in client.peek()} == {"parent", "child", "parent again"}
    finally:
        client.close()


def test_a_client_polls_for_its_reply_only_while_replies_come_fast():
    """Polling before blocking pays only while replies come within 1.5 times the spin; 0 never polls."""
    spinner = remote._Spinner(100e-6)
    assert spinner.wanted()  # nothing measured yet: a lone client's first call polls
    spinner.took(0.05)  # a get that waited for a task, or a broker sharing a busy core
    assert not spinner.wanted()
    for _ in range(40):
        spinner.took(50e-6)
    assert spinner.wanted()
    spinner.took(0.05)
    assert not spinner.wanted()
    idle = remote._Spinner(0.0)
    idle.took(1e-6)
    assert not idle.wanted()


def test_polling_finds_a_reply_that_is_there_and_gives_up_on_one_that_is_not():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        spinner = remote._Spinner(1e-3)
        assert not spinner.poll(ours.fileno(), time.perf_counter())
        theirs.send(b"x")
        assert spinner.poll(ours.fileno(), time.perf_counter())
        assert ours.recv(1) == b"x"  # polling read nothing itself


@pytest.mark.parametrize("spin", [-1e-6, 2.0, math.nan, math.inf, None, "fast", True])
def test_a_bad_spin_is_refused_naming_it(queue_path: Path, spin: Any):
    with pytest.raises(djq.ConfigError, match="spin") as caught:
        djq.BrokerClient(queue_path, spin=spin)
    assert caught.value.field == "spin"


@pytest.mark.timeout(60)
def test_clients_that_poll_and_clients_that_block_share_one_queue(manager: djq.BrokerManager):
    """Polling changes when a reply is read, never which: every call gets its own answer."""
    path = manager.paths.queue
    with (
        djq.connect(path, timeout=BOUND, spin=0.0) as blocking,
        djq.connect(path, timeout=BOUND, spin=0.5) as polling,
    ):
        put = [client.put({"n": n}) for n in range(20) for client in (blocking, polling)]
        got = [client.get() for _ in range(20) for client in (polling, blocking)]
        assert [t.id for t in got] == put  # FIFO, each call answered with its own reply
        for n, task in enumerate(got):
            (blocking if n % 2 else polling).ack(task)  # by the client that got it
        assert polling.stats().acked_total == 40
        assert polling.get() is None
        assert blocking.get() is None


def test_a_call_that_fails_after_sending_never_leaves_its_reply_for_the_next_call(
    manager: djq.BrokerManager, monkeypatch: pytest.MonkeyPatch
):
    """Whatever interrupts a call between its request and its reply, the next call gets its own reply."""
    client = djq.connect(manager.paths.queue, timeout=BOUND)
    try:
        real = djq.BrokerClient._receive
        calls = []

        def interrupted(self: Any, *args: Any, **kwargs: Any) -> bytes:
            calls.append(1)
            if len(calls) == 1:
                raise OverflowError("timeout too large")  # as poll() once did for huge waits
            return real(self, *args, **kwargs)

        monkeypatch.setattr(djq.BrokerClient, "_receive", interrupted)
        with pytest.raises(OverflowError):
            client.put("one")
        stats = client.stats()  # not the put's reply
        assert isinstance(stats, djq.QueueStats)
        assert stats.total == 1
    finally:
        client.close()


# Faults inside the broker (a broker in a thread, faults injected)


@pytest.mark.timeout(60)
def test_any_exception_from_a_read_request_is_that_requests_error(
    queue_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A bug raising a non-djq exception (ZeroDivisionError) answers a BrokerError; the broker serves on."""
    broker = BrokerThread(queue_path)
    try:
        with djq.connect(queue_path, timeout=BOUND) as client:
            monkeypatch.setattr(engine.Engine, "run", lambda self, op: 1 / 0)
            with pytest.raises(djq.BrokerError, match="ZeroDivisionError"):
                client.stats()
            monkeypatch.undo()
            assert client.put("after") == "1"
            assert client.stats().total == 1
            assert client.metrics()["errors"] >= 1
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_one_poisoned_request_fails_alone_in_its_batch(
    queue_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Three puts in one batch, one of which makes apply raise TypeError: only that one fails.

    A first put holds the loop inside its transaction (a gate) until the other three
    clients' requests are in the broker's sockets, so the next batch holds all three; it
    fails, and the broker applies them one by one.
    """
    gate, held = threading.Event(), threading.Event()
    real_apply = engine.Transaction.apply

    def apply(self: Any, op: Any) -> Any:
        payloads = getattr(op, "payloads", ())
        if payloads == ("gate",):
            held.set()
            assert gate.wait(BOUND)
        if payloads == ("poison",):
            raise TypeError("a field of the wrong type")
        return real_apply(self, op)

    monkeypatch.setattr(engine.Transaction, "apply", apply)
    caplog.set_level(logging.WARNING, logger="djq.broker")
    broker = BrokerThread(queue_path)
    results: dict[str, Any] = {}
    threads: list[threading.Thread] = []
    try:
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(djq.connect(queue_path, timeout=BOUND)) for _ in range(4)]
            payloads = ("gate", "a", "poison", "b")
            threads = [
                threading.Thread(target=lambda c=c, p=p: results.__setitem__(p, _put_or_error(c, p)))
                for c, p in zip(clients, payloads, strict=True)
            ]
            threads[0].start()
            assert held.wait(BOUND)
            for t in threads[1:]:
                t.start()
            _wait_for(
                lambda: sum(_unread(c.fd) > 0 for c in list(broker.broker._clients)) == 3,
                "the three puts wait in the broker's sockets",
            )
            gate.set()
            for t in threads:
                t.join(BOUND)
                assert not t.is_alive()
        assert isinstance(results["poison"], djq.BrokerError), results
        assert "TypeError" in str(results["poison"])
        assert all(isinstance(results[p], str) for p in ("gate", "a", "b")), results
        assert "a batch of 3 failed: TypeError" in caplog.text
        with djq.connect(queue_path, timeout=BOUND) as client:
            assert sorted(t.payload for t in client.peek()) == ["a", "b", "gate"]
    finally:
        gate.set()
        for t in threads:
            t.join(BOUND)
        broker.stop()


def _put_or_error(client: djq.BrokerClient, payload: str) -> Any:
    try:
        return client.put(payload)
    except djq.DjqError as exc:
        return exc


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


@pytest.mark.timeout(60)
def test_a_failing_batch_or_loop_fails_only_its_requests(queue_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A transaction raising RuntimeError, then the loop's own step raising: each fails its requests only."""
    broker = BrokerThread(queue_path)
    try:
        with djq.connect(queue_path, timeout=BOUND) as client:
            with monkeypatch.context() as m:
                m.setattr(engine.Engine, "transact", _raise(RuntimeError("a bug in a transaction")))
                with pytest.raises(djq.BrokerError, match="RuntimeError"):
                    client.put("lost")
            with monkeypatch.context() as m:
                m.setattr(Broker, "_run", _raise(KeyError("a bug in the loop")))
                with pytest.raises(djq.BrokerError, match="KeyError"):
                    client.put("also lost")
            assert client.put("kept") == "1"
            assert [t.payload for t in client.peek()] == ["kept"]
            assert client.metrics()["errors"] >= 1
        assert broker.thread.is_alive()
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_a_reply_over_the_message_limit_is_an_error_not_a_dropped_client(
    queue_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A peek whose reply the client could not read (over MAX_MESSAGE_BYTES) answers an error instead."""
    monkeypatch.setattr(wire, "MAX_MESSAGE_BYTES", 20_000)  # both ends of this process read the limit here
    broker = BrokerThread(queue_path)
    try:
        with djq.connect(queue_path, timeout=BOUND) as client:
            for _ in range(20):  # each request under the limit, the peek of all of them over it
                client.put({"pad": "z" * 2000})
            with pytest.raises(djq.BrokerError, match="over the wire's limit"):
                client.peek(20)
            assert len(client.peek(2)) == 2  # the same client carries on
            assert client.metrics()["dropped"] == 0
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_the_accept_thread_survives_any_accept_failure(queue_path: Path, monkeypatch: pytest.MonkeyPatch):
    """accept() raising EMFILE, ENFILE, then ENOMEM: logged and retried; the next client is served."""
    failures = [OSError(errno.EMFILE, "Too many open files"), OSError(errno.ENFILE, "File table overflow")]
    failures.append(OSError(errno.ENOMEM, "Cannot allocate memory"))
    real = mpc.Listener.accept

    def accept(self: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return real(self)

    monkeypatch.setattr(mpc.Listener, "accept", accept)
    broker = BrokerThread(queue_path)
    try:
        with djq.connect(queue_path, timeout=BOUND) as client:
            assert client.put("served") == "1"
        assert broker.broker.metrics.accept_errors == 3
        assert [t.name for t in threading.enumerate()].count("djq-accept") == 1
    finally:
        broker.stop()


# The broker's files


def _target(tmp_path: Path) -> Path:
    target = tmp_path / "precious"
    target.write_bytes(b"precious\n")
    target.chmod(0o644)
    return target


def _untouched(target: Path) -> None:
    assert target.read_bytes() == b"precious\n", "written through a symlink"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_symlink_at_the_info_file_is_refused(queue_path: Path, tmp_path: Path):
    target = _target(tmp_path)
    queue_path.parent.mkdir(parents=True)
    wire.broker_paths(queue_path).info.symlink_to(target)
    with pytest.raises(djq.StorageError, match="info"):
        Broker(queue_path, config=QueueConfig(fsync=False)).serve()
    _untouched(target)


def test_a_symlink_at_the_log_is_refused(queue_path: Path, tmp_path: Path):
    target = _target(tmp_path)
    queue_path.parent.mkdir(parents=True)
    wire.broker_paths(queue_path).log.symlink_to(target)
    manager = djq.BrokerManager(queue_path, fsync=False)
    try:
        with pytest.raises(djq.StorageError, match="log"):
            manager.start()
        assert manager.pid is None
    finally:
        manager.stop()
    _untouched(target)


@pytest.mark.parametrize("name", ["key", "socket"])
def test_a_symlink_at_the_key_or_socket_is_replaced_not_followed(queue_path: Path, tmp_path: Path, name: str):
    target = _target(tmp_path)
    queue_path.parent.mkdir(parents=True)
    link = getattr(wire.broker_paths(queue_path), name)
    link.symlink_to(target)
    broker = BrokerThread(queue_path)
    try:
        assert _well_behaved_round(queue_path) < BOUND
        assert not link.is_symlink()
        mode = link.lstat().st_mode
        assert stat.S_ISREG(mode) if name == "key" else stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    finally:
        broker.stop()
    _untouched(target)


def test_a_symlink_at_the_keys_temp_file_is_refused(
    queue_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = _target(tmp_path)
    queue_path.parent.mkdir(parents=True)
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "feedbeef")  # the temp name, made predictable
    key = wire.broker_paths(queue_path).key
    (key.parent / f".{key.name}.{os.getpid()}.feedbeef.tmp").symlink_to(target)
    with pytest.raises(djq.StorageError, match="temp file"):
        Broker(queue_path, config=QueueConfig(fsync=False)).serve()
    _untouched(target)
    assert not key.exists()


def test_start_makes_missing_folders_owner_only_whatever_the_umask(tmp_path: Path):
    path = tmp_path / "a" / "b" / "q" / "Queue.json"
    old = os.umask(0o022)
    manager = djq.BrokerManager(path, fsync=False)
    try:
        manager.start()
    finally:
        os.umask(old)
        manager.stop()
    for folder in (tmp_path / "a", tmp_path / "a" / "b", path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_the_bounds_are_what_the_broker_module_says():
    """The documented bounds: one message and one read in, one message out, a few dozen pending."""
    assert MAX_BUFFERED_BYTES < 2 * wire.MAX_MESSAGE_BYTES
    assert MAX_OUTGOING_BYTES < 2 * wire.MAX_MESSAGE_BYTES
    assert 1 < MAX_PENDING_REPLIES <= 1024
    assert broker_module.MAX_PENDING_REPLIES == MAX_PENDING_REPLIES
