"""Shared fixtures: a queue path under tmp_path, a fake clock, a queue per lock kind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from blocking import Blocking, LoopThread

import djq
from djq.broker import Broker
from djq.model import LockKind, QueueConfig

LOCK_KINDS = [k.value for k in LockKind]


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue_path(tmp_path: Path) -> Path:
    return tmp_path / "q" / "Queue.json"


@pytest.fixture(params=LOCK_KINDS)
def lock_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def queue(queue_path: Path, lock_kind: str, clock: FakeClock) -> djq.Queue:
    """A direct queue in rewrite storage on a fresh file, one per lock kind, on the fake clock, no fsync.

    The bad-input tests inject failures into the rewrite path; the contract tests
    (``open_queue``) run every storage.
    """
    q = djq.Queue(queue_path, lock=lock_kind, storage="rewrite", clock=clock, fsync=False, poll_interval=None)
    yield q
    q.close()


SERVER_KINDS = [
    "postgres",
    "redis",
]  #: server backends, on scratch servers (or DJQ_POSTGRES_URL / DJQ_REDIS_URL)
#: lock kinds in journal storage, flock in rewrite, the broker, then the servers
ASYNC_KINDS = ["async-file", "async-broker", *(f"async-{kind}" for kind in SERVER_KINDS)]
CLIENT_KINDS = [*LOCK_KINDS, "rewrite", "broker", *SERVER_KINDS, *ASYNC_KINDS]
#: the clients of a queue file
FILE_KINDS = [kind for kind in CLIENT_KINDS if kind.removeprefix("async-") not in SERVER_KINDS]


def cannot_run(what: str, why: str) -> None:
    """Fail under CI (the environment variable ``CI`` set: it must run there), skip elsewhere; one line."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} cannot run under CI: {why}", pytrace=False)
    pytest.skip(f"{what} skipped: {why}")


_servers: dict[str, object] = {}  # kind -> its URL, or the reason it cannot start


def server_url(kind: str) -> str:
    """The URL of a ``kind`` server for this test session: ``DJQ_*_URL``, else a scratch server.

    Started once per session, stopped by its pid at the end (``pytest_sessionfinish``); a
    server that cannot start fails the test under CI and skips it elsewhere.
    """
    from djq import scratch

    if kind not in _servers:
        url = _ENV_URLS.get(kind)
        try:
            if url is None:
                server = getattr(scratch, kind)().start()
                _scratch.append(server)
                url = server.url
            _servers[kind] = url
        except djq.DjqError as exc:
            _servers[kind] = exc
    found = _servers[kind]
    if isinstance(found, BaseException):
        cannot_run(f"the {kind} backend", str(found))
    return str(found)


_ENV_URLS = {
    kind: os.environ.get(f"DJQ_{kind.upper()}_URL") for kind in SERVER_KINDS
}  # read before any test clears them
_scratch: list = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    for server in _scratch:
        server.remove()


_names = iter(range(1 << 30))  # queue names, fresh per test


class BrokerThread:
    """A broker serving ``path`` in a thread of the test process (so it shares the fake clock)."""

    def __init__(self, path: Path, clock: object = time.time, **options: object) -> None:
        config = QueueConfig(path=path, fsync=False, **options)
        self.broker = Broker(path, config=config, clock=clock)
        self.thread = threading.Thread(target=self.broker.serve, daemon=True)
        self.thread.start()
        if not self.broker.ready.wait(10):
            raise RuntimeError("the broker did not start")

    def stop(self) -> None:
        self.broker.shutdown()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the broker thread did not stop"


@pytest.fixture(params=CLIENT_KINDS)
def client_kind(request: pytest.FixtureRequest) -> str:
    """Every kind of client: each lock kind of the direct ``Queue`` (journal), rewrite storage, the broker,
    the servers, and the async client of each backend (run through ``blocking.Blocking``)."""
    return request.param


@pytest.fixture
def open_queue(queue_path: Path, clock: FakeClock, client_kind: str):
    """A factory of clients of one kind (``client_kind``) on one file, all on the fake clock.

    Direct kinds give a new ``Queue`` per call; ``"broker"`` starts one broker in a thread
    (with the options of the first call) and gives a new ``djq.connect`` client per call;
    a server kind gives a new client of one fresh queue on the session's server, whose
    ``clock`` is the fake clock.
    """
    kind = client_kind.removeprefix("async-")
    asynchronous = kind != client_kind
    opened: list = []
    brokers: list[BrokerThread] = []
    loops: list[LoopThread] = []
    name = f"t{os.getpid()}-{next(_names)}"

    def make(**options: object):
        if kind in SERVER_KINDS:
            where = {"target": server_url(kind), "name": name}
        elif kind == "broker":
            if not brokers:
                brokers.append(BrokerThread(queue_path, clock, **options))
            where = None
        elif kind in ("rewrite", "file"):
            where = {"target": queue_path, "storage": "rewrite" if kind == "rewrite" else "journal"}
        else:
            where = {"target": queue_path, "lock": kind, "poll_interval": None}
        if not asynchronous:
            client = (
                djq.connect(queue_path)
                if where is None
                else djq.open(**where, clock=clock, fsync=False, **options)
            )
            opened.append(client)
            return client
        if not loops:
            loops.append(LoopThread())
        if where is None:
            queue = djq.AsyncBrokerClient(queue_path)
        else:
            queue = djq.open(**where, clock=clock, fsync=False, asynchronous=True, **options)
        opened.append(client := Blocking(queue, loops[0]))
        return client

    yield make
    for client in opened:
        client.close()
    for loop in loops:
        loop.stop()
    for broker in brokers:
        broker.stop()


@pytest.fixture(autouse=True)
def _no_queue_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder, so a default path can never touch the repo's data/."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("DJQ_"):
            monkeypatch.delenv(name)


ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 60.0  #: seconds for any one ``python -m djq`` command


def run_djq(
    *args: str, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m djq ARGS`` (the package of this checkout); never a traceback."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "djq", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def file_bytes(path: Path) -> bytes | None:
    """The exact bytes on disk, or None when the file does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
