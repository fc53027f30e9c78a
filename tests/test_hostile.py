# ruff: noqa: E501  (the tables of hostile values read best one parameter a line)
"""Hostile parameters: every public method, constructor option and CLI option, with bad values.

For each parameter of the one client API (``BaseQueue``: put, put_many, get, get_many, ack,
ack_many, nack, extend, requeue, purge, stats, peek, dead, check), of ``QueueConfig`` and the
constructors (``Queue``, ``BrokerManager``, ``djq.connect``), and of every CLI command, the
values a careless or hostile caller passes: wrong types, NaN, +-infinity, huge and negative
numbers, bools for numbers, bytes, lone surrogates, empty and very long strings, None where
it is not allowed. Each must be refused with ``ConfigError`` or ``PayloadError`` (from the
CLI: one line on stderr, exit 2, no traceback) before any lock is taken, leaving the queue's
files byte for byte as they were and a second client (standing in for another process) in
step: same stats, peek and dead letters, and a put/get/ack still works for both afterwards.

Run over the direct queue in journal storage and in rewrite storage, and the broker client.
The number of hostile values tried is printed at the end of the module (also without ``-s``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import inspect
import io
import math
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BrokerThread, FakeClock, run_djq

import djq
from djq import api, ops
from djq import cli as djq_cli
from djq.errors import ConfigError, LeaseLost, PayloadError, UnknownTask
from djq.model import CONFIG_FIELDS, MAX_DELAY, MAX_TIMEOUT, QueueConfig

TRIED: Counter[str] = Counter()  #: hostile calls made, by where: "api", "config", "cli", "cli-process"
DISTINCT: set[tuple[str, str, str]] = set()  #: (method or option, parameter, value label)

NAN, INF = math.nan, math.inf
HUGE = 10**400  #: an integer no float holds
LONG = "x" * 100_000
SURROGATE = "\ud800"  #: a lone surrogate: no UTF-8 encodes it


@pytest.fixture(params=["journal", "rewrite", "broker"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """The direct queue (flock) in journal storage, in rewrite storage, and the broker client."""
    return "flock" if request.param == "journal" else request.param


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and TRIED:
        kinds = ", ".join(f"{n} {where}" for where, n in sorted(TRIED.items()))
        uncaptured = (
            capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        )
        with uncaptured:  # a teardown's output is captured (and shown only on failure) otherwise
            reporter.write_line(
                f"\ntest_hostile: {sum(TRIED.values())} hostile calls ({kinds}); "
                f"{len(DISTINCT)} distinct (parameter, value) cases"
            )


# The hostile values, by what the parameter is


def _deep(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


@dataclasses.dataclass
class _Point:
    x: int


class _FloatSub(float):
    pass


#: Values no seconds parameter takes (delay, lease, timeout: None is added where it is not allowed).
SECONDS = {
    "nan": NAN,
    "-nan": -NAN,
    "inf": INF,
    "-inf": -INF,
    "-1": -1.0,
    "-1e-300": -1e-300,
    "huge-int": HUGE,
    "-huge-int": -HUGE,
    "1e300": 1e300,
    "2**64": 2**64,
    "True": True,
    "False": False,
    "str": "5",
    "bytes": b"5",
    "list": [1.0],
    "complex": 1j,
    "object": object(),
}
DELAYS = {**SECONDS, "None": None, "over-a-century": MAX_DELAY * 2}
LEASES = {**SECONDS, "0": 0, "zero": 0.0, "over-12h": 43_200.5}  # None: the queue's default
TIMEOUTS = {**SECONDS, "over-a-year": MAX_TIMEOUT * 2}  # None: wait for ever
PRIORITIES = {
    "nan": NAN,
    "inf": INF,
    "-inf": -INF,
    "1.5": 1.5,
    "1.0": 1.0,
    "2**63": 1 << 63,
    "-2**63-1": -(1 << 63) - 1,
    "huge-int": HUGE,
    "True": True,
    "str": "1",
    "bytes": b"1",
    "None": None,
    "list": [1],
}
COUNTS = {  # get_many's n
    "0": 0,
    "-1": -1,
    "MAX_BATCH+1": ops.MAX_BATCH + 1,
    "huge-int": HUGE,
    "1.0": 1.0,
    "nan": NAN,
    "inf": INF,
    "True": True,
    "str": "1",
    "bytes": b"1",
    "None": None,
}
LIMITS = {  # peek's limit
    "-1": -1,
    "MAX_PEEK+1": ops.MAX_PEEK + 1,
    "huge-int": HUGE,
    "1.5": 1.5,
    "nan": NAN,
    "inf": INF,
    "True": True,
    "str": "5",
    "bytes": b"5",
    "None": None,
}
FLAGS = {"None": None, "0": 0, "1": 1, "str": "yes", "empty": "", "bytes": b"", "list": [], "1.0": 1.0}
OWNERS = {  # None: pid-<pid>
    "empty": "",
    "surrogate": SURROGATE,
    "low-surrogate": "\udc80",
    "201-chars": "x" * 201,
    "long": LONG,
    "newline": "a\nb",
    "nul": "a\x00b",
    "tab": "\t",
    "escape": "\x1b[2J",
    "bytes": b"w",
    "int": 5,
    "True": True,
    "float": 1.5,
    "list": ["w"],
}
TOKENS = {
    "empty": "",
    "surrogate": SURROGATE,
    "long": LONG,
    "newline": "a\nb",
    "nul": "\x00",
    "bytes": b"t",
    "int": 5,
    "list": ["t"],
}
IDS = {  # refused when the operation is built
    "bytes": b"1",
    "int": 1,
    "None": None,
    "float": 1.0,
    "surrogate": SURROGATE,
    "201-chars": "1" * 201,
    "long": LONG,
    "list": ["1"],
    "True": True,
}
ODD_IDS = {  # strings no task has: the rule refuses them (LeaseLost, UnknownTask)
    "empty": "",
    "newline": "\n",
    "zero": "0",
    "negative": "-1",
    "spaces": " 1 ",
    "200-chars": "9" * 200,
    "accented": "é",
}
PAYLOADS = {
    "set": {1, 2},
    "bytes": b"abc",
    "bytearray": bytearray(b"abc"),
    "object": object(),
    "int-key": {1: "a"},
    "none-key": {None: "a"},
    "bytes-key": {b"k": "a"},
    "surrogate-key": {SURROGATE: 1},
    "lone-surrogate": SURROGATE,
    "low-surrogate-in-list": ["ok", "\udc80"],
    "int-2**64": 2**64,
    "int--2**63-1": -(2**63) - 1,
    "huge-int": HUGE,
    "nan": NAN,
    "inf": INF,
    "-inf": -INF,
    "nested-nan": {"a": [1, {"b": NAN}]},
    "nested-huge": [[[HUGE]]],
    "tuple": (1, 2),
    "datetime": datetime.datetime(2026, 1, 1),
    "uuid": uuid.UUID(int=1),
    "dataclass": _Point(1),
    "float-subclass": _FloatSub(1.5),
    "too-deep": _deep(10_000),
    "oversized": "x" * (1 << 20),
    "complex": 1j,
    "function": len,
}
NOT_TASKS = {
    "None": None,
    "str": "1",
    "int": 1,
    "bytes": b"1",
    "tuple": ("1", "t"),
    "dict": {"id": "1", "token": "t"},
    "object": object(),
}
NOT_LISTS = {"None": None, "int": 5, "str": "ab", "bytes": b"ab", "dict": {"1": "t"}, "float": 1.5}


# The world each test runs in: a writer, a second client, and the files


class World:
    """Two clients of one queue (``q`` is called with the hostile values; ``other`` watches).

    The queue holds a dead letter, a task leased by ``q`` (``held``), two ready tasks and a
    delayed one, so that every rule has something to get wrong.
    """

    def __init__(self, make: Callable[..., Any], kind: str, folder: Path) -> None:
        self.kind, self.folder = kind, folder
        self.recorder = None if kind == "broker" else djq.LockRecorder()
        options: dict[str, Any] = {"max_attempts": 1}
        if self.recorder is not None:
            options["recorder"] = self.recorder
        self.q = make(**options)
        self.other = make(**options)
        self.dead_id = self.q.put("doomed")
        doomed = self.q.get(owner="setup")
        assert doomed is not None
        assert self.q.nack(doomed) is djq.TaskState.DEAD
        self.q.put("held")
        held = self.q.get(owner="setup")
        assert held is not None
        self.held: djq.Task = held
        self.q.put_many(["ready-1", "ready-2"], priority=-1)
        self.q.put("delayed", delay=60.0)
        self.tried = 0

    def files(self) -> dict[str, bytes]:
        """Every regular file beside the queue, by name, with its bytes."""
        return {p.name: p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file()}

    @staticmethod
    def view(client: Any) -> tuple[Any, ...]:
        return client.stats(), client.peek(100), client.dead()

    def attempt(self, where: str, param: str, label: str, call: Callable[[Any], object], expect: Any) -> None:
        """Call ``call(q)``: it must raise ``expect`` and change nothing anyone can see."""
        DISTINCT.add((where, param, label))
        TRIED["api"] += 1
        self.tried += 1
        files, seen = self.files(), self.view(self.other)
        assert self.view(self.q) == seen
        if self.recorder is not None:
            self.recorder.clear()
        with pytest.raises(expect) as info:
            call(self.q)
        context = f"{where}({param}={label}) on {self.kind}: {info.value!r:.200}"
        if self.recorder is not None and expect in (ConfigError, PayloadError):
            assert len(self.recorder) == 0, f"the lock was taken: {context}"
        assert self.files() == files, f"the files changed: {context}"
        assert self.view(self.other) == seen, f"the other client is out of step: {context}"
        assert self.view(self.q) == seen, f"this client is out of step: {context}"
        self.round_trip()

    def round_trip(self) -> None:
        """A put by each client is leased and acked by the other."""
        for one, two in ((self.q, self.other), (self.other, self.q)):
            task_id = one.put({"round": "trip"}, priority=100)
            task = two.get(owner="checker")
            assert task is not None
            assert (task.id, task.payload) == (task_id, {"round": "trip"})
            two.ack(task)


@pytest.fixture
def world(open_queue: Callable[..., Any], client_kind: str, queue_path: Path) -> World:
    return World(open_queue, client_kind, queue_path.parent)


Call = Callable[[World, Any], object]
#: method -> [(parameter, {label: value}, how to call q with the value, the error expected)]
CASES: dict[str, list[tuple[str, dict[str, Any], Callable[[World, Any, Any], object], Any]]] = {
    "put": [
        ("payload", PAYLOADS, lambda w, q, v: q.put(v), PayloadError),
        ("priority", PRIORITIES, lambda w, q, v: q.put(1, priority=v), ConfigError),
        ("delay", DELAYS, lambda w, q, v: q.put(1, delay=v), ConfigError),
    ],
    "put_many": [
        ("payloads", NOT_LISTS, lambda w, q, v: q.put_many(v), ConfigError),
        ("payloads[1]", PAYLOADS, lambda w, q, v: q.put_many(["ok", v, "ok"]), PayloadError),
        ("priority", PRIORITIES, lambda w, q, v: q.put_many(["ok"], priority=v), ConfigError),
        ("delay", DELAYS, lambda w, q, v: q.put_many(["ok"], delay=v), ConfigError),
    ],
    "get": [
        ("lease", LEASES, lambda w, q, v: q.get(lease=v), ConfigError),
        ("timeout", TIMEOUTS, lambda w, q, v: q.get(timeout=v), ConfigError),
        ("owner", OWNERS, lambda w, q, v: q.get(owner=v), ConfigError),
    ],
    "pop": [("timeout", TIMEOUTS, lambda w, q, v: q.pop(timeout=v), ConfigError)],
    "ack_and_get": [
        ("task", NOT_TASKS, lambda w, q, v: q.ack_and_get(v), ConfigError),
        ("task.id", IDS, lambda w, q, v: q.ack_and_get(djq.Lease(id=v, token=w.held.token)), ConfigError),
        ("task.token", {**TOKENS, "None": None}, lambda w, q, v: q.ack_and_get(djq.Lease(id=w.held.id, token=v)), ConfigError),
        ("lease", LEASES, lambda w, q, v: q.ack_and_get(w.held, lease=v), ConfigError),
        ("timeout", TIMEOUTS, lambda w, q, v: q.ack_and_get(w.held, timeout=v), ConfigError),
        ("owner", OWNERS, lambda w, q, v: q.ack_and_get(w.held, owner=v), ConfigError),
        ("task.id (none has)", ODD_IDS, lambda w, q, v: q.ack_and_get(djq.Lease(id=v, token=w.held.token)), LeaseLost),
    ],
    "get_many": [
        ("n", COUNTS, lambda w, q, v: q.get_many(v), ConfigError),
        ("lease", LEASES, lambda w, q, v: q.get_many(2, lease=v), ConfigError),
        ("timeout", TIMEOUTS, lambda w, q, v: q.get_many(2, timeout=v), ConfigError),
        ("owner", OWNERS, lambda w, q, v: q.get_many(2, owner=v), ConfigError),
    ],
    "ack": [
        ("task", NOT_TASKS, lambda w, q, v: q.ack(v), ConfigError),
        ("task.id", IDS, lambda w, q, v: q.ack(djq.Lease(id=v, token=w.held.token)), ConfigError),
        ("task.token", {**TOKENS, "None": None}, lambda w, q, v: q.ack(djq.Lease(id=w.held.id, token=v)), ConfigError),
        ("Task.id", IDS, lambda w, q, v: q.ack(dataclasses.replace(w.held, id=v)), ConfigError),
        ("task.id (none has)", ODD_IDS, lambda w, q, v: q.ack(djq.Lease(id=v, token=w.held.token)), LeaseLost),
        ("task.token (stale)", {"other": "0" * 16, "spaces": "   "}, lambda w, q, v: q.ack(djq.Lease(id=w.held.id, token=v)), LeaseLost),
    ],
    "ack_many": [
        ("tasks", NOT_LISTS, lambda w, q, v: q.ack_many(v), ConfigError),
        ("tasks[1]", NOT_TASKS, lambda w, q, v: q.ack_many([w.held, v]), ConfigError),
        ("tasks[1].id", IDS, lambda w, q, v: q.ack_many([w.held, djq.Lease(id=v, token="t")]), ConfigError),
        ("tasks[1].token", {**TOKENS, "None": None}, lambda w, q, v: q.ack_many([w.held, djq.Lease(id="1", token=v)]), ConfigError),
    ],
    "nack": [
        ("task", NOT_TASKS, lambda w, q, v: q.nack(v), ConfigError),
        ("task.id", IDS, lambda w, q, v: q.nack(djq.Lease(id=v, token=w.held.token)), ConfigError),
        ("task.token", {**TOKENS, "None": None}, lambda w, q, v: q.nack(djq.Lease(id=w.held.id, token=v)), ConfigError),
        ("delay", DELAYS, lambda w, q, v: q.nack(w.held, delay=v), ConfigError),
        ("task.id (none has)", ODD_IDS, lambda w, q, v: q.nack(djq.Lease(id=v, token=w.held.token)), LeaseLost),
    ],
    "release": [
        ("task", NOT_TASKS, lambda w, q, v: q.release(v), ConfigError),
        ("task.id", IDS, lambda w, q, v: q.release(djq.Lease(id=v, token=w.held.token)), ConfigError),
        ("task.token", {**TOKENS, "None": None}, lambda w, q, v: q.release(djq.Lease(id=w.held.id, token=v)), ConfigError),
        ("task.id (none has)", ODD_IDS, lambda w, q, v: q.release(djq.Lease(id=v, token=w.held.token)), LeaseLost),
    ],
    "extend": [
        ("task", NOT_TASKS, lambda w, q, v: q.extend(v), ConfigError),
        ("task.id", IDS, lambda w, q, v: q.extend(djq.Lease(id=v, token=w.held.token)), ConfigError),
        ("task.token", {**TOKENS, "None": None}, lambda w, q, v: q.extend(djq.Lease(id=w.held.id, token=v)), ConfigError),
        ("lease", LEASES, lambda w, q, v: q.extend(w.held, lease=v), ConfigError),
        ("task.id (none has)", ODD_IDS, lambda w, q, v: q.extend(djq.Lease(id=v, token=w.held.token)), LeaseLost),
    ],
    "requeue": [
        ("task_id", IDS, lambda w, q, v: q.requeue(v), ConfigError),
        ("task_id (no dead task has)", {**ODD_IDS, "held": None}, lambda w, q, v: q.requeue(w.held.id if v is None else v), UnknownTask),
    ],
    "purge": [("dead_only", FLAGS, lambda w, q, v: q.purge(dead_only=v), ConfigError)],
    "peek": [("limit", LIMITS, lambda w, q, v: q.peek(v), ConfigError)],
    "check": [("fix", FLAGS, lambda w, q, v: q.check(fix=v), ConfigError)],
    # no parameters to spoil: called with a stray argument, they are Python's TypeError, nothing else
    "stats": [("(extra argument)", {"1": 1}, lambda w, q, v: q.stats(v), TypeError)],
    "dead": [("(extra argument)", {"1": 1}, lambda w, q, v: q.dead(v), TypeError)],
}  # fmt: skip


def test_every_public_method_of_the_one_api_is_walked():
    """A method added to BaseQueue without hostile cases here fails this test."""
    public = {
        name for name, _ in inspect.getmembers(api.BaseQueue, inspect.isfunction) if not name.startswith("_")
    }
    assert public - {"close"} == set(CASES)


@pytest.mark.parametrize("method", list(CASES))
def test_hostile_values_change_nothing(world: World, method: str):
    """Each hostile value of each parameter is refused, and nobody can tell it was tried."""
    for param, values, call, expect in CASES[method]:
        for label, value in values.items():
            world.attempt(method, param, label, lambda q, v=value, c=call: c(world, q, v), expect)
    assert world.tried > 0


# Constructors and QueueConfig

#: field -> {label: value} that QueueConfig must refuse
CONFIG_VALUES: dict[str, dict[str, Any]] = {
    "path": {
        "empty": "",
        "dot": ".",
        "root": "/",
        "nul": "q/Queue\x00.json",
        "surrogate": f"q/{SURROGATE}.json",
        "long-name": "q/" + "x" * 300,
        "long-path": "q/" + "d/" * 3000 + "Queue.json",
        "int": 5,
        "None": None,
        "bytes": b"q/Queue.json",
        "list": ["q"],
    },
    "lock": {"unknown": "nope", "empty": "", "int": 5, "None": None, "bytes": b"flock", "list": ["flock"]},
    "storage": {"unknown": "nope", "int": 1, "None": None, "bytes": b"journal", "surrogate": SURROGATE},
    "wait": {"unknown": "nope", "int": 0, "None": None, "bytes": b"poll"},
    "lock_timeout": TIMEOUTS,
    "poll_interval": {**SECONDS, "0": 0.0, "over-a-minute": 61.0},
    "fsync": {"None": None, "0": 0, "1": 1, "str": "yes", "bytes": b""},
    "lease": {**LEASES, "None": None},
    "max_attempts": {"0": 0, "-1": -1, "1.5": 1.5, "True": True, "None": None, "str": "5", "2**31+1": (1 << 31) + 1, "huge-int": HUGE, "nan": NAN},
    "max_payload_bytes": {"0": 0, "-1": -1, "1.5": 1.5, "True": True, "None": None, "str": "5", "2**63": 1 << 63, "huge-int": HUGE, "inf": INF},
    "max_file_bytes": {"0": 0, "-1": -1, "1.0": 1.0, "False": False, "None": None, "bytes": b"5", "2**63": 1 << 63, "huge-int": HUGE},
    "compact_bytes": {"0": 0, "-1": -1, "1.0": 1.0, "True": True, "None": None, "str": "5", "2**63": 1 << 63, "huge-int": HUGE},
    "file_mode": {"-1": -1, "0o1000": 0o1000, "str": "600", "1.5": 1.5, "True": True, "None": None, "huge-int": HUGE},
}  # fmt: skip


def test_every_config_field_is_walked():
    assert set(CONFIG_VALUES) == set(CONFIG_FIELDS)


def _constructors(kind: str, path: Path) -> dict[str, Callable[..., object]]:
    """The ways this kind of client takes queue options."""
    if kind == "broker":
        return {
            "QueueConfig": lambda **o: QueueConfig.from_options(**{"path": path, **o}),
            "BrokerManager": lambda **o: djq.BrokerManager(o.pop("path", path), **o),
        }
    storage = {"storage": "rewrite"} if kind == "rewrite" else {}
    return {
        "QueueConfig": lambda **o: QueueConfig.from_options(**{"path": path, **storage, **o}),
        "Queue": lambda **o: djq.Queue(o.pop("path", path), **{**storage, **o}),
    }


def test_hostile_options_are_refused_when_the_client_is_made(world: World, queue_path: Path):
    """Each bad option raises ConfigError naming it, before anything is opened or started."""
    for name, build in _constructors(world.kind, queue_path).items():
        for field, values in CONFIG_VALUES.items():
            for label, value in values.items():
                if field == "path" and (
                    name == "BrokerManager" or (name == "Queue" and type(value) is not str)
                ):
                    continue  # checked before QueueConfig sees it: see KNOWN

                def make(
                    q: Any, build: Callable[..., object] = build, field: str = field, value: Any = value
                ) -> None:
                    made = build(**{field: value})
                    with contextlib.suppress(Exception):
                        made.close()

                world.attempt(name, field, label, make, ConfigError)
                TRIED["api"] -= 1
                TRIED["config"] += 1
        world.attempt(name, "bogus", "unknown option", lambda q, b=build: b(bogus=1), ConfigError)


def test_hostile_timeouts_of_a_broker_client_are_refused(world: World, queue_path: Path):
    """djq.connect's own option: the reply timeout (None is not one: it must be finite; see KNOWN)."""
    if world.kind != "broker":
        pytest.skip("a broker client's option")
    for label, value in SECONDS.items():
        world.attempt(
            "connect", "timeout", label, lambda q, v=value: djq.connect(queue_path, timeout=v), ConfigError
        )


def _xfail(maker: str, option: str, value: Any, reason: str) -> Any:
    """A case once strict-xfail (``reason`` was its root); fixed there, it now passes."""
    return pytest.param(maker, option, value)


_QUEUE_PATH = "queue.py: Queue() calls Path(path) before QueueConfig checks it: TypeError"
_BROKER_PATH = "wire.py/manager.py: BrokerManager() runs broker_paths(path) before QueueConfig checks it"
_CONNECT_PATH = "remote.py/wire.py: connect(path) runs broker_paths(path) unchecked: TypeError"
#: Options checked outside QueueConfig (once strict xfails, rooted in files since fixed).
KNOWN: list[Any] = [
    _xfail("Queue", "clock", "x", "queue.py: Queue() does not check clock; the first call raises TypeError"),
    _xfail(
        "Queue",
        "recorder",
        5,
        "queue.py: Queue() does not check recorder; a put commits, then AttributeError",
    ),
    _xfail("Queue", "path", 5, _QUEUE_PATH),
    _xfail("Queue", "path", None, _QUEUE_PATH),
    _xfail("Queue", "path", b"q/Queue.json", _QUEUE_PATH),
    _xfail("Queue", "path", ["q"], _QUEUE_PATH),
    _xfail("BrokerManager", "path", 5, _BROKER_PATH + ": TypeError"),
    _xfail("BrokerManager", "path", "", _BROKER_PATH + ": '' is taken for the working folder"),
    _xfail("BrokerManager", "path", "/", _BROKER_PATH + ": ValueError"),
    _xfail("BrokerManager", "path", f"q/{SURROGATE}.json", _BROKER_PATH + ": UnicodeEncodeError"),
    _xfail("connect", "path", 5, _CONNECT_PATH),
    _xfail("connect", "path", b"q/Queue.json", _CONNECT_PATH),
    _xfail("connect", "timeout", None, "remote.py: connect(timeout=None) raises TypeError (float(None))"),
]


@pytest.mark.parametrize("client_kind", ["flock"])
@pytest.mark.parametrize(("maker", "option", "value"), KNOWN)
def test_constructor_options_outside_queue_config(
    world: World, queue_path: Path, maker: str, option: str, value: Any
):
    """Options checked outside QueueConfig: a bad one is a ConfigError too, and changes nothing."""

    def make(q: Any) -> None:
        if maker == "connect":
            djq.connect(**{"path": queue_path, option: value})
        elif maker == "BrokerManager":
            djq.BrokerManager(value)
        else:
            made = djq.Queue(**{"path": queue_path, option: value})
            try:
                made.put("through the bad option")  # what a careless caller does next
            finally:
                made.close()

    world.attempt(maker, option, repr(value), make, ConfigError)


# The command line

CLI_CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    # option -> (argv with {} for the value, {label: value}); every value reaches djq's checks
    "put PAYLOAD": (["put", "--", "{}"], {
        "NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity", "torn": "[1,", "empty": "",
        "python-dict": "{'n': 1}", "surrogate-escape": '"\\ud800"', "huge-int": "1" * 30, "2**64": str(2**64),
        "-2**63-1": str(-(2**63) - 1), "1e999": "1e999", "deep": "[" * 100_000, "not-utf8": "\udcff",
    }),
    "put --priority": (["put", "1", "--priority", "{}"], {
        "2**63": str(2**63), "-2**63-1": str(-(2**63) - 1), "huge": "9" * 400,
    }),
    "put --delay-s": (["put", "1", "--delay-s", "{}"], {
        "inf": "inf", "-inf": "-inf", "nan": "nan", "-1": "-1", "1e400": "1e400", "1e300": "1e300", "-tiny": "-1e-9",
    }),
    "get --lease-s": (["get", "--lease-s", "{}"], {"inf": "inf", "nan": "nan", "0": "0", "-1": "-1", "43201": "43201"}),
    "get --wait-s": (["get", "--wait-s", "{}"], {"inf": "inf", "-inf": "-inf", "nan": "nan", "-1": "-1", "1e30": "1e30"}),
    "pop --wait-s": (["pop", "--wait-s", "{}"], {"inf": "inf", "nan": "nan", "-1": "-1"}),
    "ack ID": (["ack", "{}", "0123456789abcdef"], {"not-utf8": "\udcff", "long": "1" * 1000}),
    "ack TOKEN": (["ack", "1", "{}"], {"empty": "", "long": "t" * 1000, "not-utf8": "\udcff", "tab": "a\tb"}),
    "nack ID": (["nack", "{}", "0123456789abcdef"], {"not-utf8": "\udcff", "long": "1" * 1000}),
    "nack TOKEN": (["nack", "1", "{}"], {"empty": "", "newline": "a\nb"}),
    "nack --delay-s": (["nack", "1", "t", "--delay-s", "{}"], {"inf": "inf", "nan": "nan", "-1": "-1", "1e400": "1e400"}),
    "release ID": (["release", "{}", "0123456789abcdef"], {"not-utf8": "\udcff", "long": "1" * 1000}),
    "release TOKEN": (["release", "1", "{}"], {"empty": "", "newline": "a\nb"}),
    "extend ID": (["extend", "{}", "0123456789abcdef"], {"not-utf8": "\udcff", "long": "1" * 1000}),
    "extend TOKEN": (["extend", "1", "{}"], {"empty": "", "long": "t" * 1000}),
    "extend --lease-s": (["extend", "1", "t", "--lease-s", "{}"], {"inf": "inf", "nan": "nan", "0": "0", "1e400": "1e400"}),
    "ls --limit": (["ls", "--limit", "{}"], {"-1": "-1", "MAX_PEEK+1": str(ops.MAX_PEEK + 1), "huge": "9" * 30}),
    "requeue ID": (["requeue", "{}"], {"not-utf8": "\udcff", "long": "1" * 1000}),
    "purge --yes": (["purge", "{}"], {"missing": "--dead"}),
    "--queue": (["--queue", "{}", "stats"], {"empty": "", "dot": ".", "root": "/", "long-name": "q/" + "x" * 300}),
    "broker start --config-json": (["broker", "start", "--config-json", "{}"], {
        "bad-lease": '{"lease": "x"}', "inf-lease": '{"lease": 1e999}', "list": "[1]", "int-path": '{"path": 5}',
        "unknown": '{"bogus": 1}', "bad-mode": '{"file_mode": -1}', "float-attempts": '{"max_attempts": 1.5}',
        "inf-timeout": '{"lock_timeout": 1e400}', "null-lease": '{"lease": null}',
    }),
}  # fmt: skip
_BROKER_FLAGS: dict[str, dict[str, str]] = {  # broker start's queue options (a good start would be a bug)
    "--lock-timeout-s": {"inf": "inf", "nan": "nan", "-1": "-1", "over-a-year": "4e7"},
    "--poll-interval-s": {"nan": "nan", "0": "0", "61": "61", "inf": "inf"},
    "--lease-s": {"inf": "inf", "0": "0", "-1": "-1", "nan": "nan"},
    "--max-attempts": {"0": "0", "-1": "-1", "2**31+1": str((1 << 31) + 1)},
    "--max-payload-bytes": {"0": "0", "-1": "-1", "2**63": str(2**63)},
    "--max-file-bytes": {"0": "0", "huge": "9" * 40},
    "--compact-bytes": {"0": "0", "-1": "-1"},
    "--file-mode": {"0o1000": "1000", "-1": "-1", "0o7777": "7777"},
}
for _flag, _values in _BROKER_FLAGS.items():
    CLI_CASES[f"broker start {_flag}"] = (["broker", "start", _flag, "{}"], _values)
for _command in (["simulate"], ["sweep", "--grid", "workers=1"]):
    CLI_CASES[f"{_command[0]} --lease-s"] = ([*_command, "--lease-s", "{}"], {"inf": "inf", "nan": "nan"})
    CLI_CASES[f"{_command[0]} --lock-timeout-s"] = ([*_command, "--lock-timeout-s", "{}"], {"inf": "inf"})
#: argparse refuses these itself: exit 2 with its usage line, never a traceback
CLI_USAGE: dict[str, list[str]] = {
    "put --priority float": ["put", "1", "--priority", "1.5"],
    "put --priority 5000 digits": ["put", "1", "--priority", "9" * 5000],
    "put --delay-s word": ["put", "1", "--delay-s", "soon"],
    "get --wait-s word": ["get", "--wait-s", "later"],
    "ls --limit nan": ["ls", "--limit", "nan"],
    "--lock unknown": ["--lock", "nope", "stats"],
    "--storage unknown": ["--storage", "", "stats"],
    "broker --wait unknown": ["broker", "start", "--wait", "nope"],
    "broker --file-mode not octal": ["broker", "start", "--file-mode", "9"],
}
#: simulate's own options: their checks live in sim.py / cli_sim.py
CLI_KNOWN: list[Any] = [
    pytest.param(["simulate", "--tasks", "-1"]),
    pytest.param(["simulate", "--rate", "inf"]),
    pytest.param(["simulate", "--time-limit-s", "inf"]),
    pytest.param(["simulate", "--time-limit-s", "nan"]),
    pytest.param(["simulate", "--seed", "9" * 30]),
    pytest.param(["sweep", "--repeats", "0", "--grid", "workers=1"]),
    pytest.param(["simulate", "--producers", "-1"]),
    pytest.param(["simulate", "--rate", "nan"]),
    pytest.param(["simulate", "--batch", "0"]),
    pytest.param(["simulate", "--work-s", "nan"]),
    pytest.param(["demo", "--tasks", "-1"]),
    pytest.param(["demo", "--producers", "0"]),
]  # fmt: skip


def _cli_argv() -> list[tuple[str, str, list[str]]]:
    """Every (option, label, argv); an option's value as ``--flag=VALUE`` (so "-inf" is a value)."""
    cases = []
    for option, (argv, values) in CLI_CASES.items():
        for label, value in values.items():
            args: list[str] = []
            for part in argv:
                if part != "{}":
                    args.append(part)
                elif args and args[-1].startswith("--") and args[-1] != "--":
                    args[-1] = f"{args[-1]}={value}"
                else:
                    args.append(value)
            cases.append((option, label, args))
    return cases


@pytest.fixture
def cli_queue(tmp_path: Path) -> Path:
    """A queue in journal storage, as World leaves it: a dead letter, a lease, ready and delayed tasks."""
    path = tmp_path / "cli" / "q" / "Queue.json"
    clock = FakeClock()
    queue = djq.Queue(path, clock=clock, max_attempts=1, fsync=False)
    World(lambda **o: queue, "flock", path.parent)  # one client is enough to fill it
    queue.close()
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _in_step(path: Path, seen: tuple[Any, ...]) -> None:
    """A fresh process's view is what it was, and the queue still moves a task."""
    with djq.Queue(path, fsync=False, max_attempts=1) as fresh:
        assert World.view(fresh) == seen
        task_id = fresh.put("after", priority=100)
        task = fresh.get()
        assert task is not None
        assert task.id == task_id
        fresh.ack(task)


def _main(argv: list[str]) -> tuple[int, str, str]:
    """Run ``djq.cli.main`` here; return (status, stdout, stderr). argparse's exit is a status too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = djq_cli.main(argv)
        except SystemExit as exc:
            status = int(exc.code or 0)
    return status, out.getvalue(), err.getvalue()


def _one_error_line(stderr: str, context: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"{context}: {stderr!r:.500}"
    assert lines[0].startswith("djq: error: "), f"{context}: {lines[0]!r:.300}"
    assert "Traceback" not in stderr
    return lines[0]


def test_hostile_cli_values_in_process(cli_queue: Path, monkeypatch: pytest.MonkeyPatch):
    """Every CLI value through ``main`` (fast): exit 2, one line, files unchanged, others in step."""
    monkeypatch.setattr(djq_cli.logging, "basicConfig", lambda **_: None)
    folder = cli_queue.parent
    with djq.Queue(cli_queue, fsync=False) as q:
        seen = World.view(q)
    files = _files(folder)
    for option, label, argv in _cli_argv():
        context = f"djq {option} {label}"
        DISTINCT.add(("cli", option, label))
        TRIED["cli"] += 1
        status, out, err = _main(["--queue", str(cli_queue), "--no-fsync", *argv])
        assert status == 2, f"{context}: exit {status}: {err!r:.300}"
        _one_error_line(err, context)
        assert out == "", context
        assert _files(folder) == files, f"{context}: the files changed"
    for name, argv in CLI_USAGE.items():
        TRIED["cli"] += 1
        DISTINCT.add(("cli", name, "usage"))
        status, out, err = _main(["--queue", str(cli_queue), *argv])
        assert status == 2, name
        assert err.strip().splitlines()[-1].startswith("djq"), err
        assert "error:" in err.strip().splitlines()[-1], err
        assert _files(folder) == files, f"{name}: the files changed"
    _in_step(cli_queue, seen)


def test_hostile_cli_values_in_a_process(cli_queue: Path, tmp_path: Path):
    """One value per option through ``python -m djq`` (a copy of the queue each): the same, for real."""
    seen_one: dict[str, tuple[str, list[str]]] = {}
    for option, label, argv in _cli_argv():
        seen_one.setdefault(option, (label, argv))  # the first value of each option
    runs = [(option, label, argv) for option, (label, argv) in seen_one.items()]
    runs += [(name, "usage", argv) for name, argv in list(CLI_USAGE.items())[:3]]
    with djq.Queue(cli_queue, fsync=False) as q:
        seen = World.view(q)
    files = _files(cli_queue.parent)

    def run(index: int, argv: list[str]) -> tuple[Path, subprocess.CompletedProcess[str]]:
        copy = tmp_path / f"run{index}" / "q"
        shutil.copytree(cli_queue.parent, copy)
        path = copy / cli_queue.name
        return path, run_djq("--queue", str(path), "--no-fsync", *argv, cwd=copy.parent)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(run, i, argv) for i, (_, _, argv) in enumerate(runs)]
        results = [f.result() for f in futures]
    for (option, label, _), (path, result) in zip(runs, results, strict=True):
        context = f"python -m djq {option} {label}"
        TRIED["cli-process"] += 1
        assert result.returncode == 2, f"{context}: exit {result.returncode}: {result.stderr!r:.300}"
        if label == "usage":
            assert "error:" in result.stderr.strip().splitlines()[-1], result.stderr
        else:
            _one_error_line(result.stderr, context)
        assert _files(path.parent) == files, f"{context}: the files changed"
        _in_step(path, seen)


@pytest.mark.parametrize("argv", CLI_KNOWN, ids=lambda a: " ".join(a)[:40])
def test_hostile_measuring_command_options(tmp_path: Path, argv: list[str]):
    """simulate, sweep and demo options: bad ones are one line and exit 2 (no run starts)."""
    TRIED["cli-process"] += 1
    DISTINCT.add(("cli", argv[0] + " " + argv[1], argv[2]))
    path = tmp_path / "sim" / "Queue.json"
    small = [] if "--tasks" in argv else ["--tasks", "5"]  # if the value were taken, a short run
    result = run_djq("--queue", str(path), "--no-fsync", *argv, *small, cwd=tmp_path, timeout=30)
    assert result.returncode == 2, result.stdout[-300:] + result.stderr[-300:]
    _one_error_line(result.stderr, " ".join(argv))


def test_hostile_cli_values_through_the_broker(cli_queue: Path, monkeypatch: pytest.MonkeyPatch):
    """With --broker the operation is refused in the client: the broker and its queue carry on."""
    monkeypatch.setattr(djq_cli.logging, "basicConfig", lambda **_: None)
    broker = BrokerThread(cli_queue)
    try:
        with djq.connect(cli_queue) as other:
            seen = World.view(other)
            files = _files(cli_queue.parent)
            for option, label, argv in _cli_argv():
                if argv[0] not in ("put", "get", "pop", "ack", "nack", "release", "extend", "ls", "requeue"):
                    continue
                TRIED["cli"] += 1
                DISTINCT.add(("cli --broker", option, label))
                status, _, err = _main(["--queue", str(cli_queue), "--broker", *argv])
                assert status == 2, f"--broker {option} {label}: exit {status}: {err!r:.300}"
                _one_error_line(err, f"--broker {option} {label}")
                assert _files(cli_queue.parent) == files, f"--broker {option} {label}: the files changed"
                assert World.view(other) == seen
            task_id = other.put("after", priority=100)
            task = other.get()
            assert task is not None
            assert task.id == task_id
            other.ack(task)
    finally:
        broker.stop()


def test_a_bug_is_one_line_and_ctrl_c_is_quiet(cli_queue: Path, monkeypatch: pytest.MonkeyPatch):
    """Any exception is one line ("internal error"), exit 1; KeyboardInterrupt exits 130 quietly."""
    monkeypatch.setattr(djq_cli.logging, "basicConfig", lambda **_: None)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug\nwith two lines")

    monkeypatch.setattr(djq.Queue, "stats", boom)
    status, out, err = _main(["--queue", str(cli_queue), "stats"])
    assert (status, out) == (1, "")
    assert err.strip() == "djq: internal error: RuntimeError: a bug with two lines"

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(djq.Queue, "stats", interrupt)
    assert _main(["--queue", str(cli_queue), "stats"]) == (130, "", "")
