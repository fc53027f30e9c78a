"""The server systems of peers.py: djq on PostgreSQL and Redis beside pgqueuer and two bare floors.

Every system here keeps its items in a server, reached over a Unix socket:

* ``djq-postgres``, ``djq-postgres-for_update``: ``djq.open(url, name=..., fsync=..., claim=...)``
  with ``claim="skip_locked"`` and ``"for_update"``.
* ``djq-redis``: ``djq.open(url, name=..., fsync=...)`` on Redis.
* ``pgqueuer``: the established PostgreSQL queue library, used as its docs show: producers
  enqueue with ``SyncQueries(SyncPsycopgDriver(conn)).enqueue(entrypoint, payload)``;
  consumers build ``PgQueuer.from_asyncpg_connection(await asyncpg.connect(url))`` with one
  ``@pgq.entrypoint`` and run its ``QueueManager``, ``asyncio.run(pgq.qm.run(batch_size=...))``
  (no schedules, so no ``SchedulerManager``), stopped by setting ``pgq.qm.shutdown``. asyncpg,
  not psycopg, in the consumers: pgqueuer's ``PsycopgDriver`` shares its one connection between
  LISTEN and the queries, and while no NOTIFY comes each query waits for the listener's 1 s
  ``notifies(timeout=1.0)`` to give the connection back (measured here: a drain of an empty
  queue took 4 s); asyncpg delivers notifications by callback, as pgqueuer's docs show first.
* ``pg-floor``: one table, a claim-and-delete loop in plain psycopg (autocommit):
  ``DELETE ... WHERE id = (SELECT id ... ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING``.
* ``redis-floor``: a reliable queue in plain redis-py: ``LPUSH``; a consumer ``BLMOVE``s into
  a processing list of its own, then ``LREM``s the item from it as the ack.

The servers are scratch servers (``djq.scratch``) started once per run and removed at
its end, or the ones ``DJQ_POSTGRES_URL`` / ``DJQ_REDIS_URL`` name. Durability classes:
PostgreSQL runs one server with ``fsync=on``, and each session sets ``synchronous_commit``
on (fsync-on class) or off; Redis runs one server per class, ``appendonly yes`` with
``appendfsync always`` (on) or ``appendonly no`` (off). Each measurement has a queue of
its own: ``peers_<run token>_<folder>`` is the djq queue name, the pg-floor table, the
pgqueuer entrypoint and the redis-floor key. peers.py reaches a measurement's server
through ``server.json`` in the measurement's folder (``Servers.place``), which its spawned
children read too.

The stores have peers.py's ``Store`` methods (duck-typed, so this module never imports
peers.py); pgqueuer's, which is pushed its jobs, has ``consume`` and ``drain`` instead of
``get``. This module imports djq, and psycopg, redis and pgqueuer only inside the stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import djq
from djq import scratch

Item = dict[str, Any]

#: system -> (server kind, the modules it needs)
SYSTEMS = {
    "djq-postgres": ("postgres", "psycopg"),
    "djq-postgres-for_update": ("postgres", "psycopg"),
    "djq-redis": ("redis", "redis"),
    "pgqueuer": ("postgres", "pgqueuer", "asyncpg"),
    "pg-floor": ("postgres", "psycopg"),
    "redis-floor": ("redis", "redis"),
}
FLOOR = {
    "djq-postgres": "pg-floor",
    "djq-postgres-for_update": "pg-floor",
    "pgqueuer": "pg-floor",
    "djq-redis": "redis-floor",
}
LIBRARY = {"djq-postgres": "pgqueuer", "djq-postgres-for_update": "pgqueuer"}  #: the library peer
DEPTH_SYSTEMS = ("djq-postgres", "djq-postgres-for_update", "djq-redis")  #: in the depth table
MAX_DEPTH = 10_000  #: the depth table stops here for servers (prefills over a socket are slow)
PLACE = "server.json"
WAIT = 0.1  #: seconds a waiting get waits in the server (djq's get(timeout=), BLMOVE)
STOP_CHECK = 0.01  #: seconds between a pgqueuer consumer's looks at the stop condition
_INSTALL_LOCK = 0x70677100  #: pg_advisory_lock key around pgqueuer's schema install ("pgq\0")


def kind_of(name: str) -> str:
    return SYSTEMS[name][0]


# The servers of one run


class Servers:
    """The run's servers, started on first use; a server that cannot start is remembered as why."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)  #: in every queue name of this run
        self._urls: dict[tuple[str, bool], str] = {}
        self._why: dict[tuple[str, bool], str] = {}
        self._scratch: list[scratch.Scratch] = []
        self.shown: dict[tuple[str, bool], str] = {}  #: what each server is, for the header

    def why_not(self, name: str, fsync: bool) -> str:
        """Why ``name`` cannot run in this class here ('' when it can), one line."""
        kind, *modules = SYSTEMS[name]
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                extra = kind if module in {"psycopg", "redis"} else "bench"
                return f"{module} not installed ({exc}; python3 -m pip install -e '.[{extra}]')"
        try:
            self.url(kind, fsync)
        except Exception as exc:  # ConfigError from scratch, or the server's own error
            return f"no {kind} server: {_line(exc)}"
        return ""

    def url(self, kind: str, fsync: bool) -> str:
        """The ``kind`` server for this class: DJQ_*_URL, else a scratch one (Redis: one per class)."""
        key = (kind, fsync if kind == "redis" else True)
        if key in self._why:
            raise RuntimeError(self._why[key])
        if key not in self._urls:
            try:
                self._urls[key] = self._start(key)
            except Exception as exc:
                self._why[key] = _line(exc)
                raise
        return self._urls[key]

    def _start(self, key: tuple[str, bool]) -> str:
        kind, fsync = key
        url = scratch.url_of(kind)
        if url is None:
            server = (
                scratch.postgres(fsync=True) if kind == "postgres" else scratch.redis(fsync=fsync)
            ).start()
            self._scratch.append(server)
            url, where = server.url, "scratch server"
        else:
            where = f"{scratch.ENV[kind]}"
        self.shown[key] = f"{where}: {_server_info(kind, url)}"
        return url

    def place(self, folder: Path, name: str, fsync: bool) -> Path:
        """Write where the measurement in ``folder`` finds its server and queue; return ``folder``."""
        place = {"url": self.url(kind_of(name), fsync), "name": f"peers_{self.token}_{folder.name}"}
        (folder / PLACE).write_text(json.dumps(place))
        return folder

    def close(self) -> None:
        for server in self._scratch:
            server.remove()
        self._scratch.clear()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def _server_info(kind: str, url: str) -> str:
    if kind == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        return f"PostgreSQL {version[0] if version else '?'}, fsync={fsync[0] if fsync else '?'}"
    import redis

    client = redis.Redis.from_url(url)
    try:
        version = client.info("server").get("redis_version", "?")
        return f"Redis {version}, {_aof(client)}"
    finally:
        client.close()


def _aof(client: Any) -> str:
    """'aof=always', 'aof=everysec' or 'aof=no' (appendonly no), from CONFIG GET."""
    config = client.config_get("append*")
    if config.get("appendonly") != "yes":
        return "aof=no"
    return f"aof={config.get('appendfsync', '?')}"


def _commit(fsync: bool) -> str:
    return f"-c synchronous_commit={'on' if fsync else 'off'}"


# The stores


def open_store(name: str, folder: Path, fsync: bool) -> Any:
    """The store of server system ``name`` for the measurement in ``folder``."""
    place = json.loads((folder / PLACE).read_text())
    url, queue = place["url"], place["name"]
    if name.startswith("djq-postgres"):
        claim = "for_update" if name.endswith("for_update") else "skip_locked"
        return QueueStore(djq.open(url, name=queue, fsync=fsync, claim=claim), f"commit={_on(fsync)}")
    if name == "djq-redis":
        return QueueStore(djq.open(url, name=queue, fsync=fsync), _redis_durability(url))
    kinds = {"pgqueuer": PgqueuerStore, "pg-floor": PgFloorStore, "redis-floor": RedisFloorStore}
    return kinds[name](url, queue, fsync)


def print_notes(rows: Sequence[Any]) -> None:
    """Print each row's notes (of its one-process and its multi-process phase), if any (peers.py's too)."""
    notes = [
        f"  {r.system.name} fsync={_on(r.fsync)}: {note}"
        for r in rows
        for note in dict.fromkeys((r.single.note, r.multi.note))
        if note
    ]
    if notes:
        print("notes:")
        print("\n".join(notes))


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _redis_durability(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return _aof(client)
    finally:
        client.close()


class QueueStore:
    """A djq server queue (``djq.open``): put, get(timeout=), ack, and the batch calls."""

    waits = True

    def __init__(self, q: Any, durability: str) -> None:
        self.q, self._durability = q, durability

    def durability(self) -> str:
        return self._durability  # PostgreSQL: djq sets synchronous_commit from fsync; Redis: the server's

    def put(self, item: Item) -> None:
        self.q.put(item)

    def put_many(self, items: Sequence[Item]) -> None:
        self.q.put_many(list(items))

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        task = self.q.get(timeout=WAIT if wait else 0.0)
        return None if task is None else (task.payload, task)

    def get_many(self, n: int, wait: bool) -> list[tuple[Item, Any]]:
        return [(t.payload, t) for t in self.q.get_many(n, timeout=WAIT if wait else 0.0)]

    def ack(self, handle: Any) -> None:
        self.q.ack(handle)

    def ack_many(self, handles: Sequence[Any]) -> None:
        lost = self.q.ack_many(list(handles))
        if lost:
            raise RuntimeError(f"ack_many: {len(lost)} of {len(handles)} leases lost")

    def close(self) -> None:
        self.q.close()


class PgFloorStore:
    """The PostgreSQL floor: INSERT; claim-and-delete with SKIP LOCKED in one autocommit statement."""

    waits = False  #: an empty queue is polled (peers.py sleeps 1 ms between looks)

    def __init__(self, url: str, table: str, fsync: bool) -> None:
        import psycopg
        from psycopg import sql

        self.conn = psycopg.connect(url, autocommit=True, options=_commit(fsync))
        t = sql.Identifier(table)
        self.sql = {
            "put": sql.SQL("INSERT INTO {} (payload) VALUES (%s)").format(t),
            "put_many": sql.SQL("INSERT INTO {} (payload) SELECT unnest(%s::text[])").format(t),
            "get": sql.SQL(
                "DELETE FROM {t} WHERE id = (SELECT id FROM {t} ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " RETURNING payload"
            ).format(t=t),
            "get_many": sql.SQL(
                "DELETE FROM {t} WHERE id = ANY(ARRAY("
                "SELECT id FROM {t} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)) RETURNING id, payload"
            ).format(t=t),
        }
        self.conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " payload text NOT NULL)"
            ).format(t)
        )

    def durability(self) -> str:
        row = self.conn.execute("SHOW synchronous_commit").fetchone()
        return f"commit={row[0] if row else '?'}"

    def put(self, item: Item) -> None:
        self.conn.execute(self.sql["put"], [json.dumps(item)], prepare=True)

    def put_many(self, items: Sequence[Item]) -> None:
        self.conn.execute(self.sql["put_many"], [[json.dumps(i) for i in items]], prepare=True)

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        row = self.conn.execute(self.sql["get"], prepare=True).fetchone()
        return None if row is None else (json.loads(row[0]), None)

    def get_many(self, n: int, wait: bool) -> list[tuple[Item, Any]]:
        rows = self.conn.execute(self.sql["get_many"], [n], prepare=True).fetchall()
        return [(json.loads(payload), None) for _, payload in sorted(rows)]

    def ack(self, handle: Any) -> None:
        pass  # the claim deleted it: at most once

    def ack_many(self, handles: Sequence[Any]) -> None:
        pass

    def close(self) -> None:
        self.conn.close()


class RedisFloorStore:
    """The Redis floor: LPUSH; BLMOVE into this process's processing list; LREM from it as the ack."""

    waits = True  #: BLMOVE waits in the server

    def __init__(self, url: str, key: str, fsync: bool) -> None:
        import redis

        self.r = redis.Redis.from_url(url)
        self.key, self.processing = key, f"{key}:processing:{os.getpid()}"

    def durability(self) -> str:
        return _aof(self.r)

    def put(self, item: Item) -> None:
        self.r.lpush(self.key, json.dumps(item))

    def put_many(self, items: Sequence[Item]) -> None:
        self.r.lpush(self.key, *[json.dumps(i) for i in items])  # first in, rightmost: RIGHT pops it first

    def get(self, wait: bool) -> tuple[Item, Any] | None:
        if wait:
            # redis-py types the timeout as int; Redis takes float seconds
            raw = self.r.blmove(self.key, self.processing, WAIT, "RIGHT", "LEFT")  # type: ignore[arg-type]
        else:
            raw = self.r.lmove(self.key, self.processing, "RIGHT", "LEFT")
        return None if raw is None else (json.loads(raw), raw)

    def get_many(self, n: int, wait: bool) -> list[tuple[Item, Any]]:
        first = self.get(wait)
        if first is None or n == 1:
            return [] if first is None else [first]
        pipe = self.r.pipeline(transaction=False)
        for _ in range(n - 1):
            pipe.lmove(self.key, self.processing, "RIGHT", "LEFT")
        return [first] + [(json.loads(raw), raw) for raw in pipe.execute() if raw is not None]

    def ack(self, handle: Any) -> None:
        if self.r.lrem(self.processing, 1, handle) != 1:
            raise RuntimeError("LREM found no such item in the processing list")

    def ack_many(self, handles: Sequence[Any]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for handle in handles:
            pipe.lrem(self.processing, 1, handle)
        if sum(pipe.execute()) != len(handles):
            raise RuntimeError("LREM found fewer items than acked in the processing list")

    def close(self) -> None:
        self.r.close()


class PgqueuerStore:
    """pgqueuer: enqueue through ``SyncQueries``; a ``QueueManager`` pushes the jobs to ``consume``."""

    waits = True

    def __init__(self, url: str, entrypoint: str, fsync: bool) -> None:
        import psycopg
        from pgqueuer.db import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries
        from psycopg.conninfo import make_conninfo

        self.url, self.fsync, self.entrypoint = url, fsync, entrypoint
        conninfo = make_conninfo(url, options=_commit(fsync))
        self.conn = psycopg.connect(conninfo, autocommit=True)  # pgqueuer requires autocommit
        self.queries = SyncQueries(SyncPsycopgDriver(self.conn))
        self.conn.execute("SELECT pg_advisory_lock(%s)", [_INSTALL_LOCK])
        try:
            asyncio.run(self._install())
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", [_INSTALL_LOCK])

    async def _install(self) -> None:
        """``Queries.install()`` (what ``pgq install`` runs) unless this database has the schema."""
        from pgqueuer.queries import Queries

        conn = await self._connect()
        try:
            queries = Queries.from_asyncpg_connection(conn)
            if not await queries.schema_is_installed():
                await queries.install()
        finally:
            await conn.close()

    def durability(self) -> str:
        row = self.conn.execute("SHOW synchronous_commit").fetchone()
        return f"commit={row[0] if row else '?'}"

    def put(self, item: Item) -> None:
        self.queries.enqueue(self.entrypoint, json.dumps(item).encode())

    def put_many(self, items: Sequence[Item]) -> None:
        k = len(items)
        self.queries.enqueue([self.entrypoint] * k, [json.dumps(i).encode() for i in items], [0] * k)

    def consume(self, handle: Callable[[Item], None], stop: Callable[[], bool], batch: int) -> None:
        """Run a QueueManager (continuous mode) handing each job's payload to ``handle`` until ``stop()``."""
        from pgqueuer.types import QueueExecutionMode

        asyncio.run(self._run(handle, stop, batch, QueueExecutionMode.continuous))

    def drain(self, batch: int) -> list[Item]:
        """Run a QueueManager in drain mode (it returns once the queue is empty); return the payloads."""
        from pgqueuer.types import QueueExecutionMode

        got: list[Item] = []
        asyncio.run(self._run(got.append, lambda: False, batch, QueueExecutionMode.drain))
        return got

    async def _run(
        self, handle: Callable[[Item], None], stop: Callable[[], bool], batch: int, mode: Any
    ) -> None:
        from pgqueuer import PgQueuer
        from pgqueuer.models import Job

        conn = await self._connect()
        try:
            pgq = PgQueuer.from_asyncpg_connection(conn)

            @pgq.entrypoint(self.entrypoint)
            async def work(job: Job) -> None:
                handle(json.loads(job.payload or b"null"))

            watcher = asyncio.create_task(_stop_when(stop, pgq.qm.shutdown))
            try:
                await pgq.qm.run(batch_size=batch, mode=mode)  # the jobs only: no SchedulerManager
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        finally:
            await conn.close()

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.url, server_settings={"synchronous_commit": _on(self.fsync)})

    def close(self) -> None:
        self.conn.close()


async def _stop_when(stop: Callable[[], bool], shutdown: asyncio.Event) -> None:
    while not stop():
        await asyncio.sleep(STOP_CHECK)
    shutdown.set()


# The table


def depths_for(name: str, depths: Sequence[int]) -> list[int]:
    return [d for d in depths if d <= MAX_DEPTH] if name in DEPTH_SYSTEMS else []


def one_process_rate(single: Any) -> float:
    """Items per second through one process: N puts then N get+acks, both phases' time together."""
    if not (single.put_per_s > 0 and single.get_per_s > 0):
        return math.nan
    return 1.0 / (1.0 / single.put_per_s + 1.0 / single.get_per_s)


def _num(value: float, width: int, digits: int = 0) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width},.{digits}f}"


TITLE = (
    f"{'system':<24} {'fsync':<5} {'durability':<11} {'N':>6} {'put/s':>7} {'get+ack/s':>9} {'1P/s':>7} "
    f"{'2P2C/s':>7} {'lost':>5} {'dup':>5} {'left':>5} {'err':>4} "
    f"{'1P:floor':>8} {'2P2C:floor':>10} {'1P:lib':>6} {'2P2C:lib':>8}"
)


def print_table(rows: Sequence[Any], servers: Servers) -> None:
    """The server systems: throughput, lost and duplicated, and the ratios to the floor and to pgqueuer."""
    print("server queues: djq on PostgreSQL and Redis, pgqueuer, and the bare floors")
    for (kind, fsync), shown in sorted(servers.shown.items()):
        label = "both classes" if kind == "postgres" else f"fsync {_on(fsync)}"
        print(f"  {kind} ({label}): {shown}")
    print("ratios: items/s over pg-floor's or redis-floor's (floor) and over pgqueuer's (lib), same class")
    print(TITLE)
    by = {(r.system.name, r.fsync): r for r in rows}
    for fsync in (True, False):
        for r in (r for r in rows if r.fsync == fsync):
            s, m = r.single, r.multi
            ratios = []
            for peer in (FLOOR.get(r.system.name), LIBRARY.get(r.system.name)):
                other = by.get((peer, fsync)) if peer else None
                ratios += [
                    one_process_rate(s) / one_process_rate(other.single) if other else math.nan,
                    m.items_per_s / other.multi.items_per_s if other else math.nan,
                ]
            counts = (
                f"{m.lost:>5} {m.dup:>5} {m.left:>5} {m.errors:>4}"
                if m.ran
                else f"{'-':>5} " * 3 + f"{'-':>4}"
            )
            print(
                f"{r.system.name:<24} {_on(r.fsync):<5} {s.durability:<11} {r.n:>6} {_num(s.put_per_s, 7)} "
                f"{_num(s.get_per_s, 9)} {_num(one_process_rate(s), 7)} {_num(m.items_per_s, 7)} {counts} "
                + " ".join(_num(x, w, 2) for x, w in zip(ratios, (8, 10, 6, 8), strict=True))
            )
    print_notes(rows)
    print()
    print(LEGEND)
    print()


LEGEND = """\
fsync on:  PostgreSQL synchronous_commit=on on a server with fsync=on: a commit returns once its WAL
           record is fsynced. Redis appendonly yes, appendfsync always: every write is fsynced into the
           append-only file before the reply. djq's server queues run with fsync=True.
fsync off: PostgreSQL synchronous_commit=off (same server, fsync=on): a commit returns before its WAL
           is flushed; a crash of the server or the OS can lose the last ~0.6 s of commits, never
           consistency. Redis appendonly no: nothing is persisted; a restart empties it. djq fsync=False.
durability: commit= the session's synchronous_commit (djq: what djq sets from fsync; the others: SHOW on
           the live connection); aof= the server's CONFIG (appendfsync, or no when appendonly is off).
djq-postgres: djq.open(url, claim="skip_locked"): a get is one claim statement (FOR UPDATE SKIP LOCKED,
           then the lease), an ack a second (matching id and token); a waiting get LISTENs.
           -for_update: claim="for_update": claimers wait on each other's row locks.
djq-redis: djq.open(url): every call one Lua script; a waiting get blocks in BLPOP on a wake list.
pgqueuer:  producers SyncQueries.enqueue(entrypoint, bytes) (one INSERT; its trigger NOTIFYs); consumers
           a QueueManager with one @entrypoint in asyncio (qm.run(batch_size=--batch), the job marked
           picked under FOR UPDATE SKIP LOCKED, then its completion logged in a buffered batch that
           deletes the row). At least once: a worker that dies leaves its jobs picked until
           heartbeat_timeout (30 s) and another runs them again; completions buffered when it died are
           re-run too. pgqueuer's own default is batch_size=10: --batch 10 measures that. Its consumer
           counts a job done when the handler returns; the row is deleted at the buffer's flush.
pg-floor:  INSERT, and DELETE ... WHERE id = (SELECT id ... ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
           RETURNING, autocommit: the least SQL a PostgreSQL queue can do. At most once: an item whose
           consumer dies after the DELETE is gone. An empty queue is polled every 1 ms (no LISTEN).
redis-floor: LPUSH; BLMOVE (timeout 0.1 s) into the consumer's own processing list; LREM as the ack.
           At least once only with a reaper that moves a dead consumer's processing list back: none here.
columns:   put/s, get+ack/s: one process, N puts then N get+acks (pgqueuer: a drain-mode QueueManager
           run); 1P/s: N over both phases' time. 2P2C/s, lost, dup, left, err: as in the table above.
depth:     the depth table has djq's server queues at depths up to 10,000 only (prefilling over a
           socket); pgqueuer and the floors are not in it."""
