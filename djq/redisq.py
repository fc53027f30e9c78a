"""``RedisQueue``: the one client API on a Redis server, every operation one atomic Lua script.

``djq.open("redis://host/0", name="jobs")`` (or ``unix:///path/redis.sock``) returns one.
Many queues share one server; ``name`` picks one. Requires Redis 7 (``TIME`` inside a
script that writes: effects replication, the default since 7.0). The script, the keys
and each operation's codec are ``djq.redislua``'s, shared with ``djq.aredisq``: this
module is the blocking I/O around them (redis-py).

A waiting get blocks in the server: when its claim finds nothing, it pops the queue's
``wake`` list (BLPOP) for at most the time until the next delayed task or lease comes due
(the claim returns it, on the statement's clock), then claims again.

Clock: with ``clock=None`` the script reads the server's ``TIME``, so every lease, delay
and expiry follows one clock whatever the clients' clocks say; with ``clock=`` each
statement gets ``clock()`` as its "now" (tests, simulations with a fake clock).

Durability is the server's: ``fsync=True`` (the default) needs ``appendonly yes`` and
``appendfsync always`` (a put's reply comes after its fsync), else (or when ``CONFIG GET``
is refused: unknown) it is a ``ConfigError``. A lost server raises ``BrokerUnavailable``;
redis-py never retries (no replayed write that may have committed); the next call
connects afresh.
Imports from djq: ``api``, ``errors``, ``model``, ``ops``, ``redislua``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import ops, redislua
from .api import BaseQueue
from .errors import BrokerUnavailable, StorageError
from .model import QueueConfig

__all__ = ["RedisQueue"]

R = TypeVar("R")


class RedisQueue(BaseQueue):
    """A queue on a Redis server (7 or later); safe to share between threads (a connection pool).

    ``config.path`` is a placeholder naming no file: ``Path("djq:{<name>}")``, the queue's
    key prefix. ``stats().file_bytes`` is what Redis's ``MEMORY USAGE`` reports for the
    queue's keys (sampled, so approximate for large queues), not the size of a file.

    Args:
        url: ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` or ``unix:///path``.
        name: the queue inside the server: 1 to 100 letters, digits, ``_``, ``.`` or ``-``.
        clock: None: the server's ``TIME`` is every statement's "now"; a callable returning
            epoch seconds replaces it (tests, simulations with a fake clock).
        options: ``QueueConfig`` fields ``lease``, ``max_attempts``, ``max_payload_bytes``,
            ``fsync`` (True needs a server with ``appendonly yes``, ``appendfsync always``).

    Raises:
        ConfigError: a bad name, clock, option or URL, a file queue's option, or ``fsync=True``
            on a server that does not fsync every write.
        BrokerUnavailable: the server does not answer.
    """

    def __init__(
        self, url: str, *, name: str = "default", clock: Callable[[], float] | None = None, **options: Any
    ) -> None:
        self._config, self._keys = redislua.configure(name, clock, options)
        self._name, self._shown, self._clock, self._closes = name, redislua.shown(url), clock, 0
        self._redis: redis.Redis = redislua.client(redis.Redis.from_url, url, Retry(NoBackoff(), 0))
        self._script = self._redis.register_script(redislua.SCRIPT)
        self._call(self._redis.ping)
        if self._config.fsync:
            self._check_durable()

    @property
    def config(self) -> QueueConfig:
        """The queue's configuration (its ``path`` is the placeholder ``djq:{name}``)."""
        return self._config

    @property
    def name(self) -> str:
        """The queue's name inside the server."""
        return self._name

    def close(self) -> None:
        """Close this client's connections (idempotent; a later call connects again).

        A ``get`` waiting in another thread returns None (``get_many``: []) at once.
        """
        self._closes += 1
        self._redis.close()

    def __repr__(self) -> str:
        return f"RedisQueue({self._shown!r}, name={self.name!r})"

    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` as one script; a lease waits in the server up to ``wait`` s (None: for ever)."""
        encode, decode = redislua.CODEC[type(op)]
        args = encode(op)
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            reply = self._run(args)
            result: R = decode(op, reply)
            if result or not op.waits:
                return result
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return result
            args, closes = redislua.rerun(op, args), self._closes
            try:
                self._block(redislua.block_seconds(left, redislua.due(reply)))
            except BrokerUnavailable:
                if self._closes == closes:
                    raise
                return result  # closed while it waited

    def _run(self, args: list[Any]) -> Any:
        """Run the script once on the operation's arguments (``redislua.argv``: with its "now")."""
        return self._call(self._script, self._keys, redislua.argv(args, self._clock))

    def _block(self, seconds: float) -> None:
        """Wait in the server for a wake-up token (BLPOP), at most ``seconds``."""
        self._call(self._redis.blpop, [self._keys[-1]], seconds)

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call redis-py, translating its errors into djq's (one line each)."""
        try:
            return function(*args)
        except redislua.FAILURES as exc:
            raise redislua.failure(exc, self._shown) from exc

    def _check_durable(self) -> None:
        """Refuse ``fsync=True`` unless the server fsyncs its append-only file on every write."""
        try:
            found = self._call(self._redis.config_get, "append*")
        except StorageError as exc:
            raise redislua.durability_unknown(exc, self._shown) from exc
        redislua.check_durable(found, self._shown)
