"""``AsyncRedisQueue``: the one client API as coroutines on a Redis server (``redis.asyncio``).

``djq.open("redis://host/0", name="jobs", asynchronous=True)`` returns one. It is the queue
of ``djq.redisq.RedisQueue``: the same Lua script, keys, codec and checks (``djq.redislua``),
with the I/O awaited instead of blocked on. Any number of coroutines of one event loop may
share a handle: each command runs on a connection of its pool.

Opening does no I/O: the first call pings the server and, with ``fsync=True``, refuses one
that does not fsync every write (``ConfigError``), as ``RedisQueue()`` does when made.

Each script run is one attempt, awaited through ``AsyncBaseQueue._unbroken``: a cancel while
it is in flight lets it end (the script is never cut off between its write and its reply)
and gives back what it leased. A waiting get awaits a BLPOP on the queue's ``wake`` list, as
the sync one blocks on it: the loop runs on meanwhile. A cancel ends that wait at once and
leases nothing; redis-py drops the connection of a command cancelled before its reply was
read (``Connection.read_response`` disconnects on any ``BaseException``), so no connection
goes back to the pool with a reply unread. (A BLPOP cancelled just as the server popped a
token loses that token: another waiting get then wakes at the next due time or within
``BLOCK_CHUNK``, and finds the task.)

A lost server raises ``BrokerUnavailable`` (one line, no password); redis-py never retries
(no replayed write that may have committed); the next call connects afresh.
Imports from djq: ``aio``, ``errors``, ``model``, ``ops``, ``redislua``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import ops, redislua
from .aio import AsyncBaseQueue
from .errors import StorageError
from .model import QueueConfig

__all__ = ["AsyncRedisQueue"]

R = TypeVar("R")
T = TypeVar("T")


class AsyncRedisQueue(AsyncBaseQueue):
    """A queue on a Redis server (7 or later), its methods coroutines; shared by the coroutines of one loop.

    The arguments (``url``, ``name``, ``clock``, ``QueueConfig``'s ``lease``, ``max_attempts``,
    ``max_payload_bytes``, ``fsync``), checks and errors are ``djq.redisq.RedisQueue``'s
    (``config.path`` is the placeholder ``djq:{name}``; ``stats().file_bytes`` is Redis's
    ``MEMORY USAGE``). Unlike it, nothing is asked of the server until the first call.

    Raises:
        ConfigError: (here) a bad name, clock, option or URL, or a file queue's option; (on the
            first call) ``fsync=True`` on a server that does not fsync every write.
        BrokerUnavailable: (on a call) the server does not answer.
    """

    def __init__(
        self, url: str, *, name: str = "default", clock: Callable[[], float] | None = None, **options: Any
    ) -> None:
        self._config, self._keys = redislua.configure(name, clock, options)
        self._name, self._shown, self._clock, self._closes = name, redislua.shown(url), clock, 0
        self._redis: aioredis.Redis = redislua.client(aioredis.Redis.from_url, url, Retry(NoBackoff(), 0))
        self._script = self._redis.register_script(redislua.SCRIPT)
        self._checked = False  # the server answered (and fsyncs every write, with fsync=True)
        self._running: set[asyncio.Future[Any]] = set()  # script runs in flight: close lets them end
        self._waits: set[asyncio.Future[Any]] = set()  # BLPOPs of waiting gets: close ends them

    @property
    def config(self) -> QueueConfig:
        """The queue's configuration (its ``path`` is the placeholder ``djq:{name}``)."""
        return self._config

    @property
    def name(self) -> str:
        """The queue's name inside the server."""
        return self._name

    async def close(self) -> None:
        """Close this handle's connections (idempotent; a later call connects again).

        A ``get`` waiting in it returns None (``get_many``: []) at once; a script in flight
        ends first (its caller gets its result), so nothing is leased with its reply lost.
        """
        self._closes += 1
        for blpop in self._waits:
            blpop.cancel()
        if self._running or self._waits:
            await asyncio.wait([*self._running, *self._waits])
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"AsyncRedisQueue({self._shown!r}, name={self.name!r})"

    async def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` as one script; a lease waits in the server up to ``wait`` s (None: for ever)."""
        args, closes = redislua.CODEC[type(op)][0](op), self._closes
        if not self._checked:
            await self._check()
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            due: list[float] = []
            result = await self._unbroken(op, self._attempt(op, args, due))
            if result or not op.waits:
                return result
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0 or self._closes != closes:  # closed since the get began: it waits no more
                return result
            if not await self._block(redislua.block_seconds(left, due[0])):
                return result  # closed while it waited
            args = redislua.rerun(op, args)

    async def _attempt(self, op: ops.Op[R], args: list[Any], due: list[float]) -> R:
        """Run the script once and decode its reply (a claim puts its seconds to the next due in ``due``)."""
        run = asyncio.ensure_future(self._run(args))
        self._running.add(run)
        try:
            reply = await run
        finally:
            self._running.discard(run)
        if op.waits:
            due.append(redislua.due(reply))
        result: R = redislua.CODEC[type(op)][1](op, reply)
        return result

    async def _run(self, args: list[Any]) -> Any:
        """Run the script once on the operation's arguments (``redislua.argv``: with its "now")."""
        return await self._call(self._script, self._keys, redislua.argv(args, self._clock))

    async def _block(self, seconds: float) -> bool:
        """Await a wake-up token (BLPOP) for at most ``seconds``; False when ``close`` ended the wait."""
        blpop = asyncio.ensure_future(self._call(self._redis.blpop, [self._keys[-1]], seconds))
        self._waits.add(blpop)
        try:
            await asyncio.wait([blpop])
        finally:
            self._waits.discard(blpop)
            if not blpop.done():  # this get was cancelled: its BLPOP ends too (redis-py drops its connection)
                blpop.cancel()
                await asyncio.wait([blpop])
        if blpop.cancelled():
            return False
        blpop.result()  # BrokerUnavailable if the server was lost
        return True

    async def _check(self) -> None:
        """Reach the server; with ``fsync=True``, refuse one that does not fsync every write."""
        await self._call(self._redis.ping)
        if self._config.fsync:
            try:
                found = await self._call(self._redis.config_get, "append*")
            except StorageError as exc:
                raise redislua.durability_unknown(exc, self._shown) from exc
            redislua.check_durable(found, self._shown)
        self._checked = True

    async def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Call redis-py and await it, translating its errors into djq's (one line each).

        The call is made here, in the coroutine: one cancelled before it started leaves no
        coroutine of redis-py never awaited.
        """
        try:
            return await function(*args)
        except redislua.FAILURES as exc:
            raise redislua.failure(exc, self._shown) from exc
