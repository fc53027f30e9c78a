"""``AsyncPostgresQueue``: the one client API as coroutines on PostgreSQL (psycopg 3's ``AsyncConnection``).

``djq.open("postgresql://...", name="jobs", asynchronous=True)`` returns one. It runs the
very statements of ``djq.postgres`` (``djq.pgsql`` holds them, and what each operation makes
of its rows), with the same arguments, checks and errors; only the waiting differs: the
event loop never blocks on the server.

- Statements run on one autocommit ``AsyncConnection`` guarded by an ``asyncio.Lock`` (any
  number of coroutines of one loop share a handle), each through ``_unbroken``: a cancel
  lets the statement end (a claim's tasks are then released), so the connection is never
  left mid-statement.
- A waiting get LISTENs on ``djq_<name>`` on a pooled connection of its own and awaits
  ``AsyncConnection.notifies(timeout=..., stop_after=1)``: a NOTIFY (put, nack, release,
  requeue), the next delay or lease expiry (asked on that same connection), or its timeout,
  then claims again, as ``PostgresQueue`` does. A cancel while it waits ends the wait at
  once and closes that connection (never pooled in an unknown state). Its UNLISTEN runs in
  a task of its own after the get has its task, so no cancel can come between a lease and
  its caller.
- ``await close()`` NOTIFYs the channel, so waiting gets return None (or []), and closes
  every connection; a later call reconnects.

A lost connection raises ``BrokerUnavailable`` naming the server (no password); the next
call connects afresh, nothing is replayed. A handle belongs to one event loop.
Imports from djq: ``aio``, ``errors``, ``model``, ``ops``, ``pgsql``, ``process``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from . import ops, pgsql, process
from .aio import AsyncBaseQueue
from .errors import BrokerError
from .model import QueueConfig
from .pgsql import Row

__all__ = ["AsyncPostgresQueue"]

logger = logging.getLogger(__name__)
R = TypeVar("R")
_Connection = psycopg.AsyncConnection[Row]


class AsyncPostgresQueue(AsyncBaseQueue):
    """A djq queue named ``name`` in a PostgreSQL database, as coroutines.

    Its arguments, checks and errors are ``djq.postgres.PostgresQueue``'s (``url``, ``name``,
    ``clock``, ``claim``, ``model.SERVER_FIELDS``); a bad one is a ``ConfigError`` before any I/O.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "default",
        clock: Callable[[], float] | None = None,
        claim: str = "skip_locked",
        **options: Any,
    ) -> None:
        """Describe the queue; the server is reached (and the schema made) by the first call."""
        self._db = pgsql.Database.of(url, name=name, clock=clock, claim=claim, options=options)
        self._lock = asyncio.Lock()  # guards the one statement connection
        self._conn: _Connection | None = None
        self._pid = process.pid()
        self._idle: list[_Connection] = []  # listening connections no get uses now
        self._returning: set[asyncio.Task[None]] = set()  # listeners being UNLISTENed for the pool
        self._generation = 0  # raised by close(): a waiting get of an older one returns

    @property
    def config(self) -> QueueConfig:
        """The validated configuration (``path`` is the placeholder ``Path(name)``)."""
        return self._db.config

    async def close(self) -> None:
        """Close the connections (idempotent); a waiting get returns None; a later call reconnects."""
        self._generation += 1
        async with self._lock:
            conn, self._conn = self._conn, None
        try:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute(pgsql.WAKE, [self._db.channel])  # wakes waiters
            await asyncio.gather(*self._returning, return_exceptions=True)  # each closes its listener
        finally:
            idle, self._idle = self._idle, []
            for each in [c for c in [conn, *idle] if c is not None]:
                await each.close()

    def __repr__(self) -> str:
        return f"AsyncPostgresQueue({self._db.shown!r}, name={self._db.name!r})"

    async def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` as SQL; a lease waits up to ``wait`` seconds for work (None: for ever)."""
        result = await self._attempt(op)
        if result or not op.waits or wait == 0:
            return result
        return await self._wait_for(op, wait)

    async def _attempt(self, op: ops.Op[R]) -> R:
        """One statement of ``op``, whole even when cancelled (``AsyncBaseQueue._unbroken``)."""
        return await self._unbroken(op, self._run(pgsql.plan(op, self._db.channel)))

    async def _run(self, call: pgsql.Call[R]) -> R:
        """Run ``call``'s statement on the statement connection; return what its rows make."""
        query, params = self._db.statement(call)
        async with self._lock:
            conn = await self._connection()
            rows = await self._execute(conn, query, params)
        return call.result(rows)

    async def _execute(self, conn: _Connection, query: Any, params: Any = None) -> list[Row]:
        """The rows of one statement on ``conn``; psycopg's errors as djq's (see ``_failed``)."""
        try:
            cursor = await conn.execute(query, params, prepare=isinstance(query, str) or None)
            return await cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise await self._failed(conn, exc) from exc

    async def _failed(self, conn: _Connection, exc: psycopg.Error) -> BrokerError:
        """The djq error for ``exc``; ``conn`` closed if it is lost, or not the statement connection."""
        lost = pgsql.is_lost(exc)
        if lost and self._conn is conn:
            self._conn = None
        if lost or conn is not self._conn:  # being prepared, or a listener: never reused after an error
            await conn.close()
        return self._db.error(exc)

    async def _connection(self) -> _Connection:
        """The statement connection, connected (schema made, fsync set) if it is not."""
        if self._pid != process.pid():  # a forked child must never use the parent's sockets
            self._conn, self._idle, self._pid = None, [], process.pid()
        if self._conn is None or self._conn.closed:
            conn = await self._connect()
            try:
                await _prepare(conn, fsync=self._db.config.fsync)
            except psycopg.Error as exc:
                raise await self._failed(conn, exc) from exc
            self._conn = conn
        return self._conn

    async def _connect(self) -> _Connection:
        try:
            return await psycopg.AsyncConnection.connect(self._db.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._db.unavailable(exc) from exc

    async def _wait_for(self, op: ops.Op[R], wait: float | None) -> R:
        """LISTEN, then claim after every notification or due time until a task comes or time is up."""
        deadline = None if wait is None else time.monotonic() + wait
        generation = self._generation
        listener = await self._listener()
        reusable = False  # after a cancel or an error the listener's state is unknown: closed
        try:
            result = await self._attempt(op)
            while not result and generation == self._generation:
                left = pgsql.time_left(deadline)
                if left is None:
                    break
                query, params = self._db.statement(pgsql.DUE)
                pause = pgsql.pause(left, pgsql.DUE.result(await self._execute(listener, query, params)))
                await self._notified(listener, pause)
                if generation == self._generation:  # close() woke us: never reconnect for it
                    result = await self._attempt(op)
            reusable = True
            return result
        finally:
            if reusable and generation == self._generation:
                self._give_back_soon(listener, generation)
            else:
                await listener.close()

    async def _notified(self, listener: _Connection, pause: float) -> None:
        """Until one notification comes to ``listener``, or ``pause`` seconds have passed."""
        try:
            async for _ in listener.notifies(timeout=pause, stop_after=1):
                pass
        except psycopg.Error as exc:
            raise await self._failed(listener, exc) from exc

    async def _listener(self) -> _Connection:
        """A connection LISTENing on the queue's channel: a pooled one if it still works, else a new one."""
        if self._idle:
            with contextlib.suppress(BrokerError):  # a pooled one may have died with a server restart
                return await self._listen(self._idle.pop())
        return await self._listen(await self._connect())

    async def _listen(self, conn: _Connection) -> _Connection:
        try:
            await self._execute(conn, pgsql.listen(self._db.channel))
        except BaseException:  # refused, lost or cancelled: never pooled in an unknown state
            await conn.close()
            raise
        return conn

    def _give_back_soon(self, conn: _Connection, generation: int) -> None:
        """UNLISTEN and pool ``conn`` in a task of its own: the get returns its task at once."""
        task = asyncio.ensure_future(self._give_back(conn, generation))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _give_back(self, conn: _Connection, generation: int) -> None:
        """UNLISTEN and pool the listener again (closed instead if it broke or the queue closed)."""
        try:
            await conn.execute(pgsql.UNLISTEN)
        except psycopg.Error:
            logger.debug("a listener of %s broke; closing it", self._db.shown, exc_info=True)
        else:
            if generation == self._generation and not conn.closed:
                self._idle.append(conn)
                return
        await conn.close()


async def _prepare(conn: _Connection, *, fsync: bool) -> None:
    """Set ``synchronous_commit`` from ``fsync``; create the schema unless it exists (one client only)."""
    cursor = await conn.execute(pgsql.SETUP, ["on" if fsync else "off"])
    if not pgsql.is_ready(await cursor.fetchone()):
        async with conn.transaction():
            await conn.execute(pgsql.SCHEMA_LOCK)
            await conn.execute(pgsql.SCHEMA)
