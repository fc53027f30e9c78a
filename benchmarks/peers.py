"""djq against the queues a user would pick instead, measured side by side in one run.

The peers are diskcache's ``Deque``, litequeue's ``LiteQueue`` and persist-queue's
``SQLiteAckQueue``: persistent queues in a local file that several processes can share,
all three on SQLite. Every system runs in two durability classes, so that like is
compared with like:

* fsync on: a call that returned survives an OS crash or a power loss. djq
  ``fsync=True``; SQLite ``synchronous=FULL`` in WAL mode (the WAL is fsynced at
  every commit).
* fsync off: a call that returned survives its process crashing, not the OS. djq
  ``fsync=False``; SQLite ``synchronous=NORMAL`` in WAL mode (the WAL is fsynced only
  at checkpoints: the last commits can roll back after a power loss).

Each library's own default is used where it falls in a class, and the setting is changed
only for the other class; the table's ``durability`` column shows what was measured on
the live connection (``PRAGMA``), a ``*`` marking the library's default.

What is measured, for every system and class (payloads of about 200 bytes of JSON):

1. One process: N puts, then N get+acks draining them (diskcache: ``popleft``, which
   removes the item; it has no ack). Ops/s of each phase.
2. 2 producer + 2 consumer processes (spawn context), N items end to end: items/s from
   the first put to the last ack. Every payload carries a unique (producer, n); from
   what the producers recorded put and the consumers recorded delivered, the table
   counts ``lost`` (put, never delivered), ``dup`` (deliveries beyond the first) and
   ``left`` (not delivered during the run but still in the queue: a drain after the
   run finds them). Consumers stop when the acks, counted in a shared counter, reach N,
   or at the time limit; every child is joined with a deadline and killed past it.
3. djq only: microseconds per put and per get+ack with 100, 10,000 and 100,000 tasks
   already in the queue (prefilled with ``put_many`` in chunks, not timed), the depth
   held between ``depth`` and ``depth + k`` by untimed refills; up to 2,000 ops or a
   few seconds per cell, whichever comes first.

djq runs as ``djq-<storage>-<lock>-<direct|broker>``: every storage mode this djq has
(``djq.model.STORAGE_MODES``; only "rewrite" before it existed) x lock ("flock",
"filelock") x direct ``djq.Queue`` or broker (``djq.connect`` against a
``djq.BrokerManager`` the script starts and stops). The default set is djq with
"flock" plus the peers; ``--full`` adds "filelock". "rewrite" rewrites the whole file at
every call, so its N is capped (``--rewrite-n``) and it skips depths above 10,000.
Peers that are not installed are skipped with a note.

On a shared or virtual machine one system's rate moves by tens of percent between
minutes (a disk's flush time, another guest's load), so a single pass cannot rank two
systems that differ by less. ``--rounds K`` measures everything K times, round after
round (every system once per round, the floors at the start of each), and the tables
show each cell's median; ``lost``, ``dup``, ``left`` and ``err`` are summed over the
rounds. A last table gives each ratio of every round: the ratios of one round are
measured minutes apart at most, so their spread says how far the medians can be trusted.

Server systems (``servers.py``), only with ``--servers`` or when ``--systems`` names them:
djq's PostgreSQL queue (``djq-postgres``, ``djq-postgres-for_update``) and Redis queue
(``djq-redis``) beside pgqueuer and the bare floors ``pg-floor`` (SKIP LOCKED
claim-and-delete) and ``redis-floor`` (BLMOVE + LREM), on scratch servers the run starts
(or DJQ_POSTGRES_URL / DJQ_REDIS_URL). They get phases 1 and 2 and a table of their own
(ratios to the floor and to pgqueuer); djq's server queues get phase 3 up to depth 10,000.
A system whose library or server is missing gets a row of dashes and a one-line note.

How to run, from the repository root (the default set takes several minutes on 2 cores)::

    python3 -m pip install -e '.[bench]'    # the peers
    python3 benchmarks/peers.py
    python3 benchmarks/peers.py --quick --systems 'djq-*-flock-direct,diskcache'
    python3 benchmarks/peers.py --full --n 20000 --dir /var/tmp
    python3 benchmarks/peers.py --rounds 3 --depths 100 --systems 'djq-journal-flock-*,diskcache'
    python3 benchmarks/peers.py --systems 'djq-postgres*,djq-redis,pgqueuer,pg-floor,redis-floor' --n 4000
    python3 benchmarks/peers.py --help

The tables go to stdout, one progress line per measurement to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import importlib
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import floors
import servers
from throughput import file_system, load_average, version_of

import djq
import djq.model

LOCKS = ("flock", "filelock")
ACCESS = ("direct", "broker")
PEERS = {"diskcache": "diskcache", "litequeue": "litequeue", "persist-queue": "persistqueue"}  # -> module
REFERENCE = "diskcache"  #: the 2P+2C ratio is to this peer's items/s
PAD = "x" * 180  #: {"p": 0, "n": 1234, "pad": PAD} is about 200 bytes of JSON
DEFAULT_N = 10_000
DEFAULT_REWRITE_N = 2_000
DEFAULT_DEPTHS = (100, 10_000, 100_000)
DEFAULT_DEPTH_OPS = 2_000
DEFAULT_DEPTH_SECONDS = 4.0
DEFAULT_LIMIT = 300.0
REWRITE_MAX_DEPTH = 10_000
PREFILL_CHUNK = 1_000
PRODUCERS = CONSUMERS = 2
QUICK = {"n": 200, "rewrite_n": 200, "depths": (100, 1_000), "depth_ops": 50, "depth_seconds": 1.0}
EMPTY_PAUSE = 0.001  #: seconds a consumer sleeps after finding a peer's queue empty
IDLE_STOP = 5.0  #: seconds a consumer goes on finding nothing after the producers finished
DJQ_WAIT = 0.1  #: seconds a djq consumer's get waits (direct: watching the file; broker: in the broker)

SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}  #: SQLite's PRAGMA synchronous levels

Item = dict[str, Any]


def payload(producer: int, n: int) -> Item:
    return {"p": producer, "n": n, "pad": PAD}


def storage_modes() -> tuple[str, ...]:
    return tuple(getattr(djq.model, "STORAGE_MODES", ("rewrite",)))


def storage_option(mode: str | None) -> dict[str, str]:
    """``storage=`` only for a djq that has storage modes."""
    return {"storage": mode} if mode is not None and hasattr(djq.model, "STORAGE_MODES") else {}


@dataclass(frozen=True)
class System:
    """One thing measured: a djq configuration or a peer library."""

    name: str
    storage: str | None = None  #: djq's file queue only
    lock: str | None = None  #: djq's file queue only
    broker: bool = False
    server: str | None = None  #: "postgres" or "redis": a system of servers.py
    consume: str = "get"  #: djq only: "get" then "ack"; "pop" (at most once); "fused" (ack_and_get)

    @property
    def is_djq(self) -> bool:
        """djq's file queue (direct or broker); djq's server queues are server systems."""
        return self.storage is not None


def all_systems() -> list[System]:
    ours = [
        System(f"djq-{mode}-{lock}-{access}", mode, lock, access == "broker")
        for mode in storage_modes()
        for lock in LOCKS
        for access in ACCESS
    ]
    if hasattr(djq.Queue, "pop"):  # djq's other consumer paths, on its default file queue
        mode = storage_modes()[-1] if "journal" not in storage_modes() else "journal"
        ours += [System(f"djq-{mode}-flock-{how}", mode, "flock", consume=how) for how in ("pop", "fused")]
    return (
        ours
        + [System(name) for name in PEERS]
        + [System(name, server=servers.kind_of(name)) for name in servers.SYSTEMS]
    )


# The stores: one interface over djq and the peers


class Store:
    """A queue opened in one process. ``get`` returns (payload, handle) or None."""

    waits = False  #: True when ``get(wait=True)`` waits for a task itself

    def durability(self) -> str:
        raise NotImplementedError

    def put(self, item: Item) -> None:
        raise NotImplementedError

    def put_many(self, items: Sequence[Item]) -> None:
        for item in items:
            self.put(item)

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        raise NotImplementedError

    def get_many(self, n: int, wait: bool) -> list[tuple[Item, Any]]:
        got = self.get(wait)
        return [] if got is None else [got]

    def ack(self, handle: Any) -> None:
        raise NotImplementedError

    def ack_many(self, handles: Sequence[Any]) -> None:
        for handle in handles:
            self.ack(handle)

    def close(self) -> None:
        raise NotImplementedError


def _pragmas(conn: sqlite3.Connection, default: str) -> str:
    """'WAL/FULL' from the live connection; '*' when it is the library's default."""
    journal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).upper()
    sync = SYNC_NAMES[int(conn.execute("PRAGMA synchronous").fetchone()[0])]
    return f"{journal}/{sync}" + ("*" if sync == default else "")


class DjqStore(Store):
    waits = True

    def __init__(self, system: System, path: Path, fsync: bool) -> None:
        self.fsync = fsync
        self.how = system.consume
        self.pending: Any = None  #: fused: the task whose ack waits for the next get
        if system.broker:
            self.q: Any = djq.connect(path)
        else:
            self.q = djq.Queue(
                path, lock=system.lock or "flock", fsync=fsync, **storage_option(system.storage)
            )
            _check_config(system, fsync, dataclasses.asdict(self.q.config))

    def durability(self) -> str:
        return f"fsync={'on' if self.fsync else 'off'}" + (
            "*" if self.fsync == djq.model.DEFAULT_FSYNC else ""
        )

    def put(self, item: Item) -> None:
        self.q.put(item)

    def put_many(self, items: Sequence[Item]) -> None:
        self.q.put_many(items)

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        timeout = DJQ_WAIT if wait else 0.0
        if self.how == "pop":
            task = self.q.pop(timeout=timeout)
        elif self.pending is not None:  # fused: the last task's ack goes with this get
            task, self.pending = self.q.ack_and_get(self.pending, timeout=timeout), None
        else:
            task = self.q.get(timeout=timeout)
        return None if task is None else (task.payload, task)

    def get_many(self, n: int, wait: bool) -> list[tuple[Item, Any]]:
        if not hasattr(self.q, "get_many"):
            return super().get_many(n, wait)
        tasks = self.q.get_many(n, timeout=DJQ_WAIT if wait else 0.0)
        return [(t.payload, t) for t in tasks]

    def ack(self, handle: Any) -> None:
        if self.how == "fused":
            self.pending = handle  # acked by the next get (ack_and_get), or at close
        elif self.how == "get":
            self.q.ack(handle)

    def ack_many(self, handles: Sequence[Any]) -> None:
        if hasattr(self.q, "ack_many"):
            lost = self.q.ack_many(list(handles))  # the ids whose lease was lost: not acked
            if lost:
                raise RuntimeError(f"ack_many: {len(lost)} of {len(handles)} leases lost")
        else:
            super().ack_many(handles)

    def close(self) -> None:
        if self.pending is not None:
            self.q.ack(self.pending)
            self.pending = None
        self.q.close()


class DiskcacheStore(Store):
    """``diskcache.Deque``: append puts, popleft gets and removes in one transaction."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        import diskcache

        # default sqlite_synchronous=1 (NORMAL), sqlite_journal_mode="wal" (diskcache.core.DEFAULT_SETTINGS)
        settings = {"sqlite_synchronous": 2} if fsync else {}
        self.cache = diskcache.Cache(str(folder / "diskcache"), eviction_policy="none", **settings)
        self.deque = diskcache.Deque.fromcache(self.cache)

    def durability(self) -> str:
        return _pragmas(self.cache._con, "NORMAL")

    def put(self, item: Item) -> None:
        self.deque.append(item)

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        try:
            return self.deque.popleft(), None
        except IndexError:
            return None

    def ack(self, handle: Any) -> None:
        pass  # popleft already removed it

    def close(self) -> None:
        self.cache.close()


class LitequeueStore(Store):
    """``litequeue.LiteQueue``: put, pop (marks LOCKED), done (marks DONE)."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        import litequeue

        self.q = litequeue.LiteQueue(str(folder / "litequeue.sqlite3"))  # sets WAL + synchronous=NORMAL
        if fsync:
            self.q.conn.execute("PRAGMA synchronous = FULL")

    def durability(self) -> str:
        return _pragmas(self.q.conn, "NORMAL")

    def put(self, item: Item) -> None:
        self.q.put(json.dumps(item))

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        message = self.q.pop()
        return None if message is None else (json.loads(message.data), message)

    def ack(self, handle: Any) -> None:
        if hasattr(handle, "claim_id"):  # litequeue 0.10 and later: done(id, claim_id=...) -> bool
            if not self.q.done(handle.message_id, claim_id=handle.claim_id):
                raise RuntimeError(f"litequeue refused done() for {handle.message_id}: stale claim")
        else:
            self.q.done(handle.message_id)

    def close(self) -> None:
        self.q.close()


class PersistQueueStore(Store):
    """``persistqueue.SQLiteAckQueue(multithreading=True)``: put, get, ack."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        import persistqueue

        self.empty = persistqueue.Empty
        self.q = persistqueue.SQLiteAckQueue(
            str(folder / "persistqueue"), multithreading=True, auto_commit=True
        )
        if not fsync:  # WAL with SQLite's default synchronous (FULL, unless built otherwise)
            for conn in {id(c): c for c in (self.q._putter, self.q._getter)}.values():
                conn.execute("PRAGMA synchronous = NORMAL")
        self.default = _sqlite_default_synchronous()

    def durability(self) -> str:
        return _pragmas(self.q._putter, self.default)

    def put(self, item: Item) -> None:
        self.q.put(item)

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        try:
            row = self.q.get(block=False, raw=True)
        except self.empty:
            return None
        return row["data"], row["pqid"]

    def ack(self, handle: Any) -> None:
        if self.q.ack(id=handle) is None:
            raise RuntimeError(f"persist-queue found no row {handle} to ack")

    def close(self) -> None:
        self.q.close()


def _sqlite_default_synchronous() -> str:
    """SQLite's compiled-in default synchronous level, read from a throwaway database."""
    conn = sqlite3.connect(":memory:")
    try:
        return SYNC_NAMES[int(conn.execute("PRAGMA synchronous").fetchone()[0])]
    finally:
        conn.close()


def open_store(system: System, folder: Path, fsync: bool) -> Store:
    if system.server is not None:
        return servers.open_store(system.name, folder, fsync)  # type: ignore[no-any-return] (duck-typed Store)
    if system.is_djq:
        return DjqStore(system, folder / "Queue.json", fsync)
    kinds = {"diskcache": DiskcacheStore, "litequeue": LitequeueStore, "persist-queue": PersistQueueStore}
    return kinds[system.name](folder, fsync)


@contextlib.contextmanager
def serving(system: System, folder: Path, fsync: bool) -> Iterator[None]:
    """Start a djq broker for the folder's queue when the system needs one; stop it after."""
    if not system.broker:
        yield
        return
    manager = djq.BrokerManager(
        folder / "Queue.json", fsync=fsync, lock=system.lock or "flock", **storage_option(system.storage)
    )
    manager.start()
    try:
        client = djq.connect(folder / "Queue.json")
        try:
            _check_config(system, fsync, client.ping()["config"])
        finally:
            client.close()
        yield
    finally:
        manager.stop()


def _check_config(system: System, fsync: bool, config: dict[str, Any]) -> None:
    """Refuse to measure a djq that does not run as asked (a broker that ignores an option)."""
    asked = {"fsync": fsync, "lock": system.lock, **storage_option(system.storage)}
    wrong = {k: str(config[k]) for k, v in asked.items() if k in config and config[k] != v}
    if wrong:
        raise RuntimeError(f"asked for {asked}, but djq runs with {wrong}")


# Phase 1: one process


@dataclass
class Single:
    n: int = 0
    put_per_s: float = math.nan
    get_per_s: float = math.nan
    durability: str = "?"
    note: str = ""


def _chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def single_process(system: System, folder: Path, fsync: bool, n: int, batch: int, limit: float) -> Single:
    result = Single(n=n)
    with serving(system, folder, fsync):
        store = open_store(system, folder, fsync)
        try:
            result.durability = store.durability()
            items = [payload(0, i) for i in range(n)]
            deadline = time.monotonic() + limit
            clock = time.perf_counter
            put = 0
            started = clock()
            for chunk in _chunks(items, batch):
                if batch == 1:
                    store.put(chunk[0])
                else:
                    store.put_many(chunk)
                put += len(chunk)
                if time.monotonic() > deadline:
                    result.note = f"put stopped at {put} of {n} after {limit:g} s"
                    break
            result.put_per_s = put / (clock() - started)
            got = 0
            started = clock()
            if hasattr(store, "drain"):  # pgqueuer: a drain-mode QueueManager run
                got = len(store.drain(batch))
            while got < put and not hasattr(store, "drain"):
                if batch == 1:
                    one = store.get(wait=False)
                    if one is None:
                        break
                    store.ack(one[1])
                    got += 1
                else:
                    many = store.get_many(batch, wait=False)
                    if not many:
                        break
                    store.ack_many([handle for _, handle in many])
                    got += len(many)
                if time.monotonic() > deadline:
                    break
            result.get_per_s = got / (clock() - started)
            if got != put:
                result.note = (result.note + "; " if result.note else "") + f"drained {got} of {put}"
        finally:
            store.close()
    return result


# Phase 2: 2 producers + 2 consumers


@dataclass
class Multi:
    n: int = 0
    items_per_s: float = math.nan
    lost: int = 0
    dup: int = 0
    left: int = 0
    errors: int = 0
    note: str = ""
    ran: bool = False  #: False when the run failed before its counts meant anything
    user_us: float = math.nan  #: the four workers' user CPU per item delivered
    sys_us: float = math.nan  #: their system CPU per item
    waits: float = math.nan  #: their voluntary context switches per item (blocked: a lock, a socket)
    preempted: float = math.nan  #: their involuntary ones per item (descheduled while runnable)


@dataclass(frozen=True)
class Shared:
    """What the parent and the children of phase 2 share."""

    acked: Any  #: ctx.Value: acks so far, all consumers
    target: Any  #: ctx.Value: acks to stop at (N, or fewer if puts failed)
    producers_done: Any  #: ctx.Event: set once the producers exited


def _worker(spec: dict[str, Any], barrier: Any, shared: Shared) -> None:
    """One producer or consumer of phase 2; writes what it did to ``spec["out"]`` as JSON."""
    record: dict[str, Any] = {
        "put": [],
        "got": [],
        "first_ns": None,
        "last_ns": None,
        "errors": 0,
        "error": "",
    }
    store: Store | None = None
    started = False
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        system = System(**spec["system"])
        store = open_store(system, Path(spec["folder"]), spec["fsync"])
        barrier.wait(60)
        started = True
        before = resource.getrusage(resource.RUSAGE_SELF)
        if spec["role"] == "producer":
            _produce(store, spec, record)
        elif hasattr(store, "consume"):  # pgqueuer: its QueueManager pushes the jobs
            _consume_pushed(store, spec, record, shared)
        else:
            _consume(store, spec, record, shared)
    except Exception as exc:  # recorded, so the parent can report it
        record["errors"] += 1
        record["error"] = f"{type(exc).__name__}: {exc}"[:300]
        if not started:
            barrier.abort()  # nobody waits for a child that will never come
    finally:
        after = resource.getrusage(resource.RUSAGE_SELF)  # from the barrier on: the run's own cost
        record["cost"] = [
            after.ru_utime - before.ru_utime,
            after.ru_stime - before.ru_stime,
            after.ru_nvcsw - before.ru_nvcsw,
            after.ru_nivcsw - before.ru_nivcsw,
        ]
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
        Path(spec["out"]).write_text(json.dumps(record))


def _produce(store: Store, spec: dict[str, Any], record: dict[str, Any]) -> None:
    me, batch = spec["index"], spec["batch"]
    items = [payload(me, i) for i in range(spec["count"])]
    record["first_ns"] = time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process here
    for chunk in _chunks(items, batch):
        if time.time() > spec["deadline"]:
            break
        try:
            if batch == 1:
                store.put(chunk[0])
            else:
                store.put_many(chunk)
        except Exception as exc:
            record["errors"] += 1
            record["error"] = f"put: {type(exc).__name__}: {exc}"[:300]
            continue
        record["put"].extend([item["p"], item["n"]] for item in chunk)


def _consume(store: Store, spec: dict[str, Any], record: dict[str, Any], shared: Shared) -> None:
    batch = spec["batch"]
    last = time.monotonic()
    while shared.acked.value < shared.target.value and time.time() < spec["deadline"]:
        if shared.producers_done.is_set() and time.monotonic() - last > IDLE_STOP:
            break  # everything put has come and gone, or what is missing will not come
        try:
            if batch == 1:
                one = store.get(wait=True)
                got = [] if one is None else [one]
            else:
                got = store.get_many(batch, wait=True)
        except Exception as exc:
            record["errors"] += 1
            record["error"] = f"get: {type(exc).__name__}: {exc}"[:300]
            time.sleep(EMPTY_PAUSE)
            continue
        if not got:
            if not store.waits:
                time.sleep(EMPTY_PAUSE)
            continue
        last = time.monotonic()
        record["got"].extend([item["p"], item["n"]] for item, _ in got)
        try:
            if batch == 1:
                store.ack(got[0][1])
            else:
                store.ack_many([handle for _, handle in got])
        except Exception as exc:
            record["errors"] += 1
            record["error"] = f"ack: {type(exc).__name__}: {exc}"[:300]
            continue
        record["last_ns"] = time.monotonic_ns()
        with shared.acked.get_lock():
            shared.acked.value += len(got)


def _consume_pushed(store: Any, spec: dict[str, Any], record: dict[str, Any], shared: Shared) -> None:
    """A consumer whose library calls back per item; it stops on the same conditions as ``_consume``."""
    last = [time.monotonic()]

    def handle(item: Item) -> None:
        record["got"].append([item["p"], item["n"]])
        record["last_ns"] = time.monotonic_ns()
        last[0] = time.monotonic()
        with shared.acked.get_lock():
            shared.acked.value += 1

    def stop() -> bool:
        idle = shared.producers_done.is_set() and time.monotonic() - last[0] > IDLE_STOP
        return shared.acked.value >= shared.target.value or time.time() > spec["deadline"] or idle

    store.consume(handle, stop, spec["batch"])


def producers_and_consumers(
    system: System, folder: Path, fsync: bool, n: int, batch: int, limit: float
) -> Multi:
    result = Multi(n=n, ran=True)
    with serving(system, folder, fsync):
        open_store(system, folder, fsync).close()  # create it before the children race to
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(PRODUCERS + CONSUMERS + 1)
        shared = Shared(ctx.Value("q", 0), ctx.Value("q", n), ctx.Event())
        deadline = time.time() + limit
        common = {"system": dataclasses.asdict(system), "folder": str(folder), "fsync": fsync, "batch": batch}
        specs = [
            {**common, "role": "producer", "index": i, "count": n // PRODUCERS + (i < n % PRODUCERS)}
            for i in range(PRODUCERS)
        ] + [{**common, "role": "consumer", "index": i, "total": n} for i in range(CONSUMERS)]
        for i, spec in enumerate(specs):
            spec.update(deadline=deadline, out=str(folder / f"worker-{i}.json"))
        procs = [ctx.Process(target=_worker, args=(spec, barrier, shared), daemon=True) for spec in specs]
        killed = 0
        try:
            for p in procs:
                p.start()
            try:
                barrier.wait(120)  # every child has its queue open
            except threading.BrokenBarrierError:
                for p in procs:
                    p.join(10)
                errors = {_read_record(Path(spec["out"]))["error"] for spec in specs} - {""}
                raise RuntimeError(f"a child could not start: {'; '.join(sorted(errors))}") from None
            for p in procs[:PRODUCERS]:
                p.join(max(0.1, deadline + 30 - time.time()))
            put_count = sum(len(_read_record(Path(spec["out"]))["put"]) for spec in specs[:PRODUCERS])
            with shared.target.get_lock():
                shared.target.value = min(n, put_count)  # fewer when puts failed
            shared.producers_done.set()
            for p in procs[PRODUCERS:]:
                p.join(max(0.1, deadline + 30 - time.time()))
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    killed += 1
                p.join(10)
        records = [_read_record(Path(spec["out"])) for spec in specs]
        put = [tuple(x) for r in records[:PRODUCERS] for x in r["put"]]
        got = [tuple(x) for r in records[PRODUCERS:] for x in r["got"]]
        result.left = _drain(system, folder, fsync, put, set(got))
        seen = Counter(got)
        put_set = set(put)
        result.dup = sum(count - 1 for count in seen.values())
        result.lost = len(put_set - set(seen)) - result.left
        result.errors = sum(r["errors"] for r in records) + len(set(seen) - put_set)
        firsts = [r["first_ns"] for r in records[:PRODUCERS] if r["first_ns"] is not None]
        lasts = [r["last_ns"] for r in records[PRODUCERS:] if r["last_ns"] is not None]
        if firsts and lasts:
            result.items_per_s = len(seen) / ((max(lasts) - min(firsts)) / 1e9)
        _add_cost(result, records, len(seen))
        notes = [r["error"] for r in records if r["error"]]
        if killed:
            notes.insert(0, f"{killed} child(ren) killed at the time limit")
        if len(put) < n:
            notes.insert(0, f"only {len(put)} of {n} put")
        result.note = "; ".join(dict.fromkeys(notes))
    return result


def _add_cost(result: Multi, records: Sequence[dict[str, Any]], items: int) -> None:
    """What the items cost the workers, per item: CPU (µs) and context switches, summed over all four."""
    costs = [r["cost"] for r in records if "cost" in r]
    if items and len(costs) == len(records):
        user, system, waits, preempted = (sum(c[i] for c in costs) / items for i in range(4))
        result.user_us, result.sys_us = 1e6 * user, 1e6 * system
        result.waits, result.preempted = waits, preempted


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"put": [], "got": [], "first_ns": None, "last_ns": None, "errors": 1, "error": "no record"}


def _drain(system: System, folder: Path, fsync: bool, put: list[tuple[int, int]], got: set[Any]) -> int:
    """After the run: deliver whatever is still in the queue; return how many put items it held."""
    missing = set(put) - got
    if not missing:
        return 0
    found = 0
    store = open_store(system, folder, fsync)
    if hasattr(store, "drain"):  # pgqueuer: what a drain-mode QueueManager still finds
        try:
            return len(missing & {(item["p"], item["n"]) for item in store.drain(1)})
        finally:
            store.close()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            one = store.get(wait=False)
            if one is None:
                break
            store.ack(one[1])
            key = (one[0]["p"], one[0]["n"])
            if key in missing:
                missing.discard(key)
                found += 1
    finally:
        store.close()
    return found


# Phase 3: djq's cost per op against depth


@dataclass
class DepthCell:
    put_us: float = math.nan
    get_us: float = math.nan
    ops: int = 0
    note: str = ""


def _fill(store: Store, count: int, start: int) -> None:
    for chunk_start in range(0, count, PREFILL_CHUNK):
        size = min(PREFILL_CHUNK, count - chunk_start)
        store.put_many([payload(9, start + chunk_start + i) for i in range(size)])


def _take(store: Store, count: int) -> None:
    """Untimed: remove ``count`` tasks from the front."""
    left = count
    while left > 0:
        got = store.get_many(min(left, 100), wait=False)
        if not got:
            raise RuntimeError("the queue ran dry: the depth bookkeeping of the benchmark is wrong")
        store.ack_many([handle for _, handle in got])
        left -= len(got)


def depth_cost(
    system: System, folder: Path, fsync: bool, depth: int, ops: int, seconds: float, limit: float
) -> DepthCell:
    """Time up to ``ops`` puts, then up to ``ops`` get+acks, at a steady ``depth``."""
    cell = DepthCell()
    step = max(1, min(100, depth // 10))  # depth stays within [depth, depth + step]
    clock = time.perf_counter_ns
    with serving(system, folder, fsync):
        store = open_store(system, folder, fsync)
        try:
            filling = time.monotonic()
            _fill(store, depth, 0)
            if time.monotonic() - filling > limit:
                cell.note = f"prefill of {depth:,} took over {limit:g} s"
            spent: list[int] = []
            stop = time.monotonic() + seconds
            extra = 0
            while len(spent) < ops and time.monotonic() < stop:
                t0 = clock()
                store.put(payload(8, len(spent)))
                spent.append(clock() - t0)
                extra += 1
                if extra == step:
                    _take(store, step)
                    extra = 0
            cell.put_us = sum(spent) / len(spent) / 1e3
            count = len(spent)
            _fill(store, step - extra, 10 * depth)  # depth + step tasks
            spent = []
            stop = time.monotonic() + seconds
            short = 0
            while len(spent) < ops and time.monotonic() < stop:
                t0 = clock()
                one = store.get(wait=False)
                if one is None:
                    raise RuntimeError("the queue ran dry: the depth bookkeeping of the benchmark is wrong")
                store.ack(one[1])
                spent.append(clock() - t0)
                short += 1
                if short == step:
                    _fill(store, step, 20 * depth + len(spent))
                    short = 0
            cell.get_us = sum(spent) / len(spent) / 1e3
            cell.ops = min(count, len(spent))
        finally:
            store.close()
    return cell


# The run


@dataclass
class Row:
    system: System
    fsync: bool
    n: int
    single: Single = field(default_factory=Single)
    multi: Multi = field(default_factory=Multi)
    depths: dict[int, DepthCell] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    rounds: list[Row] = field(default_factory=list)  #: with --rounds K > 1: each round's row


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.perf_counter()

    def say(self, text: str, seconds: float) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        print(
            f"[{self.done:>3}/{self.total} {elapsed:6.0f} s] {text} ({seconds:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    def skip(self, steps: int) -> None:
        self.total -= steps


def run(
    args: argparse.Namespace,
    systems: Sequence[System],
    parent: Path,
    on: servers.Servers,
    measured: dict[str, float],
) -> tuple[list[Row], list[dict[str, float]]]:
    """Measure every system ``args.rounds`` times, a round at a time; return the rows and each round's floors.

    With one round these are the measurements themselves. With more, each row holds its
    rounds (``Row.rounds``) and the medians of their cells; the header's floors are the
    first round's, and each later round measures its own at its start.
    """
    rows = [Row(s, fsync, _n_for(s, args)) for s in systems for fsync in args.fsync]
    deep = {r.system.name: _depths_for(r.system, args.depths) for r in rows}
    progress = Progress((len(rows) * 2 + sum(len(deep[r.system.name]) for r in rows)) * args.rounds)
    folders = iter(range(1_000_000))

    def fresh() -> Path:
        folder = parent / f"{next(folders):03d}"  # short: the broker's socket path has a length limit
        folder.mkdir()
        return folder

    floors_of = [measured]
    for number in range(args.rounds):
        if number:
            floors_of.append(floors.measure(parent))
            print(f"round {number + 1} of {args.rounds}: {floors.line(floors_of[-1])}", file=sys.stderr)
        this = [Row(r.system, r.fsync, r.n) for r in rows]
        for row in this:
            _measure_or_skip(row, args, deep[row.system.name], fresh, on, progress, say_skip=not number)
            for folder in parent.iterdir():
                shutil.rmtree(folder, ignore_errors=True)
        if args.rounds == 1:
            return this, floors_of
        add_ratios(this)
        for row, done in zip(rows, this, strict=True):
            row.rounds.append(done)
    for row in rows:
        _combine(row)
    return rows, floors_of


def _measure_or_skip(
    row: Row,
    args: argparse.Namespace,
    depths: Sequence[int],
    fresh: Any,
    on: servers.Servers,
    progress: Progress,
    *,
    say_skip: bool,
) -> None:
    why = "" if row.system.server is None else on.why_not(row.system.name, row.fsync)
    if why:
        row.single.note = f"skipped: {why}"
        progress.skip(2 + len(depths))
        if say_skip:
            print(f"skipped: {row.system.name} fsync={'on' if row.fsync else 'off'}: {why}", file=sys.stderr)
        return
    place = fresh if row.system.server is None else lambda r=row: on.place(fresh(), r.system.name, r.fsync)
    measure_row(row, args, depths, place, progress)


def _median(values: Sequence[float]) -> float:
    """The median of the values that are numbers (NaN: a failed or skipped measurement); NaN if none."""
    numbers = sorted(v for v in values if not math.isnan(v))
    if not numbers:
        return math.nan
    middle = len(numbers) // 2
    return numbers[middle] if len(numbers) % 2 else (numbers[middle - 1] + numbers[middle]) / 2


def _merge(cells: Sequence[Any]) -> Any:
    """One cell of the rounds' cells: floats their median, counts their sum, notes each once."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cells[0]):
        column = [getattr(c, f.name) for c in cells]
        if f.name == "n":
            values[f.name] = column[0]
        elif isinstance(column[0], bool):
            values[f.name] = all(column)
        elif isinstance(column[0], float):
            values[f.name] = _median(column)
        elif isinstance(column[0], int):
            values[f.name] = sum(column)
        else:
            values[f.name] = "; ".join(dict.fromkeys(v for v in column if v))
    return type(cells[0])(**values)


def _combine(row: Row) -> None:
    """Fill ``row`` from its rounds: each cell the merge of the rounds' (see ``_merge``)."""
    row.single = _merge([r.single for r in row.rounds])
    row.multi = _merge([r.multi for r in row.rounds])
    for depth in row.rounds[0].depths:
        row.depths[depth] = _merge([r.depths.get(depth, DepthCell()) for r in row.rounds])


def measure_row(
    row: Row, args: argparse.Namespace, depths: Sequence[int], fresh: Any, progress: Progress
) -> None:
    """The three phases for one system in one durability class; a failed phase 1 skips the rest."""
    label = f"{row.system.name} fsync={'on' if row.fsync else 'off'}"
    started = time.perf_counter()
    common = (row.fsync, row.n, args.batch, args.limit)
    row.single = s = _guarded(Single(n=row.n), single_process, row.system, fresh(), *common)
    progress.say(
        f"{label}: 1 process, N={row.n}: put {s.put_per_s:,.0f}/s, get+ack {s.get_per_s:,.0f}/s {s.note}",
        time.perf_counter() - started,
    )
    if s.note.startswith("failed"):
        progress.skip(1 + len(depths))
        return
    started = time.perf_counter()
    row.multi = m = _guarded(Multi(n=row.n), producers_and_consumers, row.system, fresh(), *common)
    progress.say(
        f"{label}: 2P+2C, N={row.n}: {m.items_per_s:,.0f} items/s, "
        f"lost {m.lost}, dup {m.dup}, left {m.left}, errors {m.errors}, "
        f"{m.user_us + m.sys_us:,.0f} us of the workers' CPU per item {m.note}",
        time.perf_counter() - started,
    )
    for depth in depths:
        started = time.perf_counter()
        budget = (args.depth_ops, args.depth_seconds, args.limit)
        row.depths[depth] = c = _guarded(
            DepthCell(), depth_cost, row.system, fresh(), row.fsync, depth, *budget
        )
        progress.say(
            f"{label}: depth {depth:,}: put {c.put_us:,.0f} us, get+ack {c.get_us:,.0f} us, "
            f"{c.ops} ops {c.note}",
            time.perf_counter() - started,
        )


def _guarded(empty: Any, fn: Any, *args: Any) -> Any:
    """Run one measurement; a failure becomes a note in the table instead of ending the run."""
    try:
        return fn(*args)
    except Exception as exc:
        empty.note = f"failed: {type(exc).__name__}: {exc}"[:200]
        return empty


def _n_for(system: System, args: argparse.Namespace) -> int:
    return min(args.n, args.rewrite_n) if system.storage == "rewrite" else args.n


def _depths_for(system: System, depths: Sequence[int]) -> list[int]:
    if system.server is not None:
        return servers.depths_for(system.name, depths)
    if not system.is_djq:
        return []
    return [d for d in depths if system.storage != "rewrite" or d <= REWRITE_MAX_DEPTH]


def add_ratios(rows: Sequence[Row]) -> None:
    """Each row against the best peer of its durability class (and diskcache for 2P+2C)."""
    for fsync in (True, False):
        peers = [r for r in rows if r.fsync == fsync and not r.system.is_djq and r.system.server is None]
        best_put = max((r.single.put_per_s for r in peers if r.single.put_per_s > 0), default=math.nan)
        best_get = max((r.single.get_per_s for r in peers if r.single.get_per_s > 0), default=math.nan)
        ref = next((r.multi.items_per_s for r in peers if r.system.name == REFERENCE), math.nan)
        for r in rows:
            if r.fsync == fsync and r.system.server is None:
                r.ratios = {
                    "put": r.single.put_per_s / best_put,
                    "get": r.single.get_per_s / best_get,
                    "mp": r.multi.items_per_s / ref,
                }


# Output


def _num(value: float, width: int, digits: int = 0) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width},.{digits}f}"


def print_header(args: argparse.Namespace, parent: str, skipped: dict[str, str]) -> dict[str, float]:
    """Print what was run where, and the machine's floors; return the floors (µs)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    fs = file_system(parent)
    batch_ops = [m for m in ("get_many", "ack_many") if hasattr(djq.Queue, m)]
    print("djq against its peers: one process, then 2 producers + 2 consumers, then djq's cost per depth")
    print(f"date:      {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"machine:   {os.cpu_count()} CPUs ({usable} usable), {platform.platform()}")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"python:    {python}, SQLite {sqlite3.sqlite_version}")
    print(f"load:      {load_average()} at the start (other processes on the machine add noise)")
    names = [*PEERS] + (["pgqueuer", "psycopg", "redis"] if any(s.server for s in args.chosen) else [])
    peers = ", ".join(f"{name} {version_of(name)}" for name in names)
    print(f"versions:  djq {djq.__version__} (storage modes: {', '.join(storage_modes())}), {peers}")
    print(f"folders:   a fresh folder per measurement under {parent}, on {fs}")
    if fs.startswith("tmpfs"):
        print("           (tmpfs: fsync costs nothing here; use --dir on a real disk to see it)")
    measured = floors.measure(Path(parent))  # what no file or broker queue here can beat
    print(floors.line(measured))
    print(f"payload:   {len(json.dumps(payload(0, 1234), separators=(',', ':')))} bytes of JSON per item")
    capped = min(args.n, args.rewrite_n)
    print(
        f"N:         {args.n:,} items per phase (djq rewrite: {capped:,}: each call rewrites the whole file)"
    )
    if args.batch > 1:
        how = (
            "get_many/ack_many"
            if len(batch_ops) == 2
            else "single get/ack (this djq has no get_many/ack_many)"
        )
        print(
            f"batch:     djq puts {args.batch} at a time with put_many, gets with {how}; file peers one at a "
            f"time; server systems in batches of {args.batch} (pgqueuer: enqueue lists, qm.run(batch_size=))"
        )
    for name, why in skipped.items():
        print(f"skipped:   {name}: {why}")
    print()
    return measured


MAIN_TITLE = (
    f"{'system':<26} {'fsync':<5} {'durability':<13} {'N':>6} {'put/s':>8} {'get+ack/s':>9} {'2P2C/s':>8} "
    f"{'lost':>5} {'dup':>5} {'left':>5} {'err':>4} {'put:best':>8} {'get:best':>8} {'2P2C:dc':>8}"
)


def print_main(rows: Sequence[Row]) -> None:
    print(
        "throughput and correctness (ratios: to the best peer of the same fsync class; 2P2C to diskcache's)"
    )
    print(MAIN_TITLE)
    for fsync in (True, False):
        for r in (r for r in rows if r.fsync == fsync and r.system.server is None):
            s, m, q = r.single, r.multi, r.ratios
            print(
                f"{r.system.name:<26} {'on' if r.fsync else 'off':<5} {s.durability:<13} {r.n:>6} "
                f"{_num(s.put_per_s, 8)} {_num(s.get_per_s, 9)} {_num(m.items_per_s, 8)} "
                + (
                    f"{m.lost:>5} {m.dup:>5} {m.left:>5} {m.errors:>4} "
                    if m.ran
                    else f"{'-':>5} " * 3 + f"{'-':>4} "
                )
                + " ".join(_num(q.get(key, math.nan), 8, 2) for key in ("put", "get", "mp"))
            )
    servers.print_notes([r for r in rows if r.system.server is None])
    print()


FLOORS_TITLE = (
    f"{'system':<26} {'fsync':<5} {'put':>7} {'get':>7} {'floor':>7} {'put:floor':>9} {'get:floor':>9}  "
    "floor_is"
)


def print_floors(rows: Sequence[Row], measured: dict[str, float]) -> None:
    """One process's djq calls (µs per call) beside the floor measured in the same run."""
    print("djq, one process, one call at a time: µs per call beside the floor it cannot beat (get: get+ack")
    print(
        "is two calls; pop and ack_and_get one). floor_is: write = a write over zeros + fdatasync (fsync on);"
    )
    print("socket = the bare socket round trip (broker); direct with fsync off has no floor here")
    print(FLOORS_TITLE)
    for r in rows:
        if (against := _against_floor(r, measured)) is not None:
            put, get, floor, what = against
            print(
                f"{r.system.name:<26} {'on' if r.fsync else 'off':<5} {_num(put, 7)} {_num(get, 7)} "
                f"{_num(floor, 7)} {_num(put / floor, 9, 2)} {_num(get / floor, 9, 2)}  {what}"
            )
    print()


def _against_floor(r: Row, measured: dict[str, float]) -> tuple[float, float, float, str] | None:
    """(µs per put, µs per get call, the floor, what it is) of a djq row that has a floor; else None."""
    if not (r.system.is_djq and r.single.put_per_s > 0 and r.single.get_per_s > 0):
        return None
    broker = r.system.broker
    if not (broker or r.fsync):
        return None
    floor = (measured["socket"] if broker else 0.0) + (measured["overwrite"] if r.fsync else 0.0)
    what = "+".join(w for w, on in (("socket", broker), ("write", r.fsync)) if on)
    get_calls = 2 if r.system.consume == "get" else 1
    return 1e6 / r.single.put_per_s, 1e6 / r.single.get_per_s / get_calls, floor, what


def print_rounds(rows: Sequence[Row], floors_of: Sequence[dict[str, float]]) -> None:
    """Each ratio of the main and floor tables, round by round (those tables show their medians)."""
    print(f"the ratios of each round, measured side by side within it ({len(floors_of)} rounds):")
    print(f"{'system':<26} {'fsync':<5} {'put:best':>20} {'get:best':>20} {'2P2C:dc':>20} {'put:floor':>20} "
          f"{'get:floor':>20}")  # fmt: skip
    for r in (r for r in rows if r.system.is_djq and r.system.server is None):
        against = [_against_floor(done, floors) for done, floors in zip(r.rounds, floors_of, strict=True)]
        columns = [[done.ratios.get(key, math.nan) for done in r.rounds] for key in ("put", "get", "mp")]
        columns.append([math.nan if a is None else a[0] / a[2] for a in against])
        columns.append([math.nan if a is None else a[1] / a[2] for a in against])
        cells = (" ".join(_num(value, 6, 2) for value in column) for column in columns)
        print(f"{r.system.name:<26} {'on' if r.fsync else 'off':<5} " + " ".join(f"{c:>20}" for c in cells))
    print()


COST_TITLE = (
    f"{'system':<26} {'fsync':<5} {'cpu/item':>8} {'user':>6} {'sys':>6} {'waits':>6} {'preempt':>7} "
    f"{'1P/item':>7}"
)


def print_cost(rows: Sequence[Row]) -> None:
    """Per item of 2P+2C: the four workers' CPU and context switches, beside one process's cost."""
    print("2P2C: what each item cost the four workers (their own CPU, µs, and context switches per item;")
    print("a broker's or a server's own process is not counted); 1P/item: one process's put and get+ack,")
    print("wall time per item, for comparison")
    print(COST_TITLE)
    for fsync in (True, False):
        for r in (r for r in rows if r.fsync == fsync and r.system.server is None and r.multi.ran):
            m, s = r.multi, r.single
            one = 1e6 / s.put_per_s + 1e6 / s.get_per_s if s.put_per_s > 0 and s.get_per_s > 0 else math.nan
            print(
                f"{r.system.name:<26} {'on' if r.fsync else 'off':<5} {_num(m.user_us + m.sys_us, 8)} "
                f"{_num(m.user_us, 6)} {_num(m.sys_us, 6)} {_num(m.waits, 6, 2)} {_num(m.preempted, 7, 2)} "
                f"{_num(one, 7)}"
            )
    print()


def print_depths(rows: Sequence[Row], depths: Sequence[int]) -> None:
    ours = [r for r in rows if r.depths]  # djq's file queues, and its server queues up to servers.MAX_DEPTH
    if not ours:
        return
    base = depths[0]
    label = [_short(d) for d in depths]
    ratio = [f"{_short(d)}:{_short(base)}" for d in depths[1:]]
    print(
        f"djq: microseconds per op with the queue held at each depth (one process; ratios: to depth {base:,})"
    )
    head = " ".join(f"{'put@' + x:>10}" for x in label) + " " + " ".join(f"{x:>9}" for x in ratio)
    head += " " + " ".join(f"{'get@' + x:>10}" for x in label) + " " + " ".join(f"{x:>9}" for x in ratio)
    print(f"{'system':<26} {'fsync':<5} {head} {'ops':>5}")
    for r in ours:
        cells = [r.depths.get(d, DepthCell()) for d in depths]
        parts = []
        for attr in ("put_us", "get_us"):
            values = [getattr(c, attr) for c in cells]
            parts += [_num(v, 10) for v in values]
            parts += [_num(v / values[0], 9, 1) for v in values[1:]]
        ops = min((c.ops for c in cells if c.ops), default=0)
        print(f"{r.system.name:<26} {'on' if r.fsync else 'off':<5} {' '.join(parts)} {ops:>5}")
    notes = [
        f"  {r.system.name} fsync={'on' if r.fsync else 'off'} depth {d:,}: {c.note}"
        for r in ours
        for d, c in r.depths.items()
        if c.note
    ]
    if notes:
        print("notes:")
        print("\n".join(notes))
    print()


def _short(depth: int) -> str:
    return f"{depth // 1000}k" if depth >= 1000 and depth % 1000 == 0 else str(depth)


LEGEND = """\
fsync on:  a call that returned survives an OS crash or power loss. djq fsync=True: the change is on
           disk (fsynced) before the call returns; SQLite WAL with synchronous=FULL: the WAL is fsynced at
           every commit.
fsync off: survives its process crashing, not the OS: djq fsync=False (written, never fsynced); SQLite
           WAL with synchronous=NORMAL: the WAL is fsynced only at checkpoints, so the last commits can
           roll back after a power loss (the database stays consistent).
durability: what the live connection reports (PRAGMA journal_mode/synchronous); * = the library's default.
diskcache: Deque over Cache(eviction_policy="none"); its defaults are journal WAL, sqlite_synchronous=1
           (NORMAL); the fsync-on rows pass sqlite_synchronous=2 (FULL). popleft removes the item in its
           own transaction and there is no ack: an item whose consumer dies is gone (at most once).
litequeue: LiteQueue(path); its __init__ always sets WAL and synchronous=NORMAL; the fsync-on rows run
           PRAGMA synchronous=FULL on its connection after opening. pop marks a message LOCKED, done marks
           it DONE; a LOCKED message is never delivered again by itself (list_locked + retry by hand).
persist-queue: SQLiteAckQueue(path, multithreading=True, auto_commit=True); it sets WAL and leaves
           synchronous at SQLite's built-in default (FULL in most builds); the fsync-off rows set
           synchronous=NORMAL on its two connections. get selects the next row, then marks it taken,
           under an in-process lock only, so two processes can take the same row (the dup column);
           auto_resume puts every unacked row back to ready whenever a queue object is opened.
djq:       direct: each call takes the file lock (flock: blocks in the kernel; filelock: polls every
           50 ms). broker: one process owns the file and writes once per batch of requests. -flock-pop: the
           consumers call pop() (at most once, like diskcache's popleft: the item leaves in the same
           write, no ack); -flock-fused: each ack goes with the next get, ack_and_get() (one lock and
           one write per task).
columns:   put/s and get+ack/s: one process, N puts then N get+acks (diskcache: popleft). 2P2C/s: items
           from the first put to the last ack with 2 producer and 2 consumer processes. lost: put, never
           delivered (nor found after the run); dup: deliveries beyond the first; left: not delivered
           during the run but still in the queue after it; err: calls that raised, and children killed or
           lost. Empty queue: djq consumers call get(timeout=0.1) (it waits), peers' consumers poll every
           1 ms."""


def print_legend() -> None:
    print(LEGEND)
    print()


# Command line


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="djq against diskcache, litequeue and persist-queue: ops/s in one process, items/s and "
        "lost/duplicated items with 2 producer + 2 consumer processes, djq's cost per op against depth; "
        "every system with fsync on and off.",
        epilog="Systems: djq-<storage>-<lock>-<direct|broker> (storage: "
        + ", ".join(storage_modes())
        + "; lock: flock, filelock), diskcache, litequeue, persist-queue; with servers: "
        + ", ".join(servers.SYSTEMS)
        + ". "
        "Example: python3 benchmarks/peers.py --systems 'djq-*-flock-direct,diskcache' --fsync off",
    )
    add = parser.add_argument
    add(
        "--n",
        type=positive,
        default=None,
        help=f"items per phase (default {DEFAULT_N:,}; quick {QUICK['n']})",
    )
    add(
        "--rewrite-n",
        type=positive,
        default=None,
        help=f"cap on N for djq's rewrite storage, whose calls cost more the deeper the queue "
        f"(default {DEFAULT_REWRITE_N:,}; quick {QUICK['rewrite_n']})",
    )
    add(
        "--systems",
        help="comma-separated names or shell patterns, e.g. 'djq-*-flock-direct,diskcache' "
        "(default: djq with flock, and every peer)",
    )
    add("--full", action="store_true", help="every file system: djq with both lock kinds, and every peer")
    add(
        "--servers",
        action="store_true",
        help="add the server systems (" + ", ".join(servers.SYSTEMS) + ") to the default or --full set; "
        "they start scratch servers (or use DJQ_POSTGRES_URL, DJQ_REDIS_URL)",
    )
    add("--fsync", choices=("both", "on", "off"), default="both", help="durability classes (default: both)")
    add(
        "--batch",
        type=positive,
        default=1,
        help="djq only: put_many and get_many/ack_many of this many items (the latter when this djq has "
        "them); default 1: plain put, get and ack",
    )
    add(
        "--depths",
        type=positive,
        nargs="+",
        default=None,
        help=f"djq's depths for phase 3 (default {list(DEFAULT_DEPTHS)}; rewrite skips those over "
        f"{REWRITE_MAX_DEPTH:,})",
    )
    add(
        "--depth-ops",
        type=positive,
        default=None,
        help=f"ops per op kind and depth (default {DEFAULT_DEPTH_OPS:,})",
    )
    add(
        "--depth-seconds",
        type=float,
        default=None,
        help=f"time limit of one op kind at one depth (default {DEFAULT_DEPTH_SECONDS:g} s)",
    )
    add(
        "--limit",
        type=float,
        default=DEFAULT_LIMIT,
        help=f"time limit of one phase of one system, seconds (default {DEFAULT_LIMIT:g})",
    )
    add(
        "--rounds",
        type=positive,
        default=1,
        help="measure everything this many times, a round at a time, and show each cell's median "
        "and every round's ratios (default 1)",
    )
    add("--dir", help="existing folder for the temporary queues (default: the system temp; use a real disk)")
    add(
        "--quick",
        action="store_true",
        help="smoke run of a few seconds per system: N=200, depths 100 and 1,000, 50 ops or 1 s per cell",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {
        "n": DEFAULT_N, "rewrite_n": DEFAULT_REWRITE_N, "depths": DEFAULT_DEPTHS,
        "depth_ops": DEFAULT_DEPTH_OPS, "depth_seconds": DEFAULT_DEPTH_SECONDS,
    }  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.depths = sorted(set(args.depths))
    args.fsync = {"both": [True, False], "on": [True], "off": [False]}[args.fsync]
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a folder")
    everything = all_systems()
    if args.systems:
        patterns = [p.strip() for p in args.systems.split(",") if p.strip()]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(s.name, pattern) for s in everything):
                parser.error(
                    f"--systems: {pattern!r} matches none of: {', '.join(s.name for s in everything)}"
                )
        args.chosen = [s for s in everything if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    elif args.full:
        args.chosen = [s for s in everything if s.server is None or args.servers]
    else:
        args.chosen = [
            s for s in everything if (s.server is None and (not s.is_djq or s.lock == "flock")) or
            (s.server is not None and args.servers)
        ]  # fmt: skip
    return args


def _missing(module: str) -> str:
    """Why a peer cannot run here ('' when it can)."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"not installed ({exc}; python3 -m pip install -e '.[bench]')"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    skipped = {s.name: why for s in args.chosen if s.name in PEERS and (why := _missing(PEERS[s.name]))}
    systems = [s for s in args.chosen if s.name not in skipped]
    parent = args.dir or tempfile.gettempdir()
    started = time.perf_counter()
    measured = print_header(args, parent, skipped)
    sys.stdout.flush()
    with (
        servers.Servers() as on,
        tempfile.TemporaryDirectory(prefix="djq-peers-", dir=parent) as folder,
    ):
        rows, floors_of = run(args, systems, Path(folder), on, measured)
    measured = {key: _median([f[key] for f in floors_of]) for key in measured}  # one round: as measured
    add_ratios(rows)
    served = [r for r in rows if r.system.server is not None]
    files = len(served) < len(rows) or not served
    if files:
        print_main(rows)
        if args.batch == 1:  # per call: with batches a call moves several items
            print_floors(rows, measured)
        print_cost(rows)
        if args.rounds > 1:
            print_rounds(rows, floors_of)
    if served:
        servers.print_table(served, on)
    print_depths(rows, args.depths)
    if files:
        print_legend()
    print(f"load:      {load_average()} at the end (1, 5 and 15 minute averages)")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
