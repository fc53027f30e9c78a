"""``PostgresQueue``: the one client API on PostgreSQL (psycopg 3), each operation one statement.

``djq.open("postgresql://...", name="jobs")`` returns one. Its ``_submit`` runs the operation
as one autocommit SQL statement that implements ``djq.state``'s rule (no state machine runs
here; ``tests/test_contract.py`` is the contract). The statements, the schema and what each
operation makes of its rows are ``djq.pgsql``'s, shared with ``djq.apostgres``: this module
only runs them on psycopg's blocking ``Connection``.

A waiting get LISTENs on ``djq_<name>`` on a pooled connection of its own and sleeps in
``Connection.notifies(timeout=...)`` until a NOTIFY (put, nack, release, requeue), the next
delay or lease expiry in the table, or its timeout, claiming after each; it holds no
transaction.

Durability: ``fsync`` sets ``synchronous_commit`` (on: a put returns once its commit is in the
WAL on disk). A lost connection raises ``BrokerUnavailable`` naming the server (no password);
the next call connects afresh, nothing is replayed. Thread-safe (one connection, one lock).
Imports from djq: ``api``, ``errors``, ``model``, ``ops``, ``pgsql``, ``process``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import psycopg

from . import ops, pgsql, process
from .api import BaseQueue
from .errors import BrokerError
from .model import QueueConfig
from .pgsql import Row

__all__ = ["CONNECT_TIMEOUT", "PostgresQueue"]

logger = logging.getLogger(__name__)
R = TypeVar("R")
CONNECT_TIMEOUT: Final = pgsql.CONNECT_TIMEOUT


class PostgresQueue(BaseQueue):
    """A djq queue named ``name`` in a PostgreSQL database; many names share one database.

    Args:
        url: a libpq URL or conninfo (``postgresql://user@host/db``); its password is never shown.
        name: the queue inside the database: 1 to 48 of ``A-Z a-z 0-9 _ . -``.
        clock: None (the server's clock decides every lease, delay, expiry) or epoch seconds.
        claim: ``"skip_locked"`` (claimers pass each other's locked rows) or
            ``"for_update"`` (they wait behind them).
        options: ``model.SERVER_FIELDS`` (``lease``, ``max_attempts``, ``max_payload_bytes``,
            ``fsync``); the file queue's are refused. ``config.path`` is ``Path(name)``, a placeholder.

    Raises:
        ConfigError: a bad name, claim, clock, option or malformed URL (before any I/O).
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
        self._mutex = threading.Lock()  # guards the one statement connection
        self._conn: psycopg.Connection[Row] | None = None
        self._pid = process.pid()
        self._idle: list[psycopg.Connection[Row]] = []  # listening connections no get uses now
        self._generation = 0  # raised by close(): a waiting get of an older one returns

    @property
    def config(self) -> QueueConfig:
        """The validated configuration (``path`` is the placeholder ``Path(name)``)."""
        return self._db.config

    def close(self) -> None:
        """Close the connections (idempotent); a waiting get returns None; a later call reconnects."""
        with self._mutex:
            self._generation += 1
            conn, self._conn = self._conn, None
            idle, self._idle = self._idle, []
        if conn is not None:
            _quietly(lambda: conn.execute(pgsql.WAKE, [self._db.channel]))  # wakes waiters
        for each in [c for c in [conn, *idle] if c is not None]:
            _quietly(each.close)

    def __repr__(self) -> str:
        return f"PostgresQueue({self._db.shown!r}, name={self._db.name!r})"

    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` as SQL; a lease waits up to ``wait`` seconds for work (None: for ever)."""
        result = self._run(pgsql.plan(op, self._db.channel))
        if result or not op.waits or wait == 0:
            return result
        return self._wait_for(op, wait)

    def _run(self, call: pgsql.Call[R]) -> R:
        """Run ``call``'s statement on the statement connection; return what its rows make."""
        query, params = self._db.statement(call)
        with self._mutex:
            conn = self._connection()
            with self._errors(conn):
                rows = conn.execute(query, params, prepare=True).fetchall()
        return call.result(rows)

    def _connection(self) -> psycopg.Connection[Row]:
        """The statement connection, connected (schema made, fsync set) if it is not."""
        if self._pid != process.pid():  # a forked child must never use the parent's sockets
            self._conn, self._idle, self._pid = None, [], process.pid()
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            with self._errors(conn):
                _prepare(conn, fsync=self._db.config.fsync)
            self._conn = conn
        return self._conn

    def _connect(self) -> psycopg.Connection[Row]:
        try:
            return psycopg.connect(self._db.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._db.unavailable(exc) from exc

    @contextlib.contextmanager
    def _errors(self, conn: psycopg.Connection[Row]) -> Iterator[None]:
        """Psycopg's errors as djq's; a lost connection is closed, for the next call to replace."""
        try:
            yield
        except psycopg.Error as exc:
            lost = pgsql.is_lost(exc)
            if lost and self._conn is conn:
                self._conn = None
            if lost or conn is not self._conn:  # being prepared, or a listener: never reused after an error
                _quietly(conn.close)
            raise self._db.error(exc) from exc

    def _wait_for(self, op: ops.Op[R], wait: float | None) -> R:
        """LISTEN, then claim after every notification or due time until a task comes or time is up."""
        deadline = None if wait is None else time.monotonic() + wait
        generation = self._generation
        listener = self._listener()
        try:
            result = self._run(pgsql.plan(op, self._db.channel))
            while not result and generation == self._generation:
                left = pgsql.time_left(deadline)
                if left is None:
                    break
                pause = pgsql.pause(left, self._run(pgsql.DUE))
                with self._errors(listener):
                    list(listener.notifies(timeout=pause, stop_after=1))  # one notification, or the time
                if generation == self._generation:  # close() woke us: never reconnect for it
                    result = self._run(pgsql.plan(op, self._db.channel))
            return result
        finally:
            self._give_back(listener, generation)

    def _listener(self) -> psycopg.Connection[Row]:
        """A connection LISTENing on the queue's channel: a pooled one if it still works, else a new one."""
        with self._mutex:
            pooled = self._idle.pop() if self._idle else None
        if pooled is not None:
            with contextlib.suppress(BrokerError):  # a pooled one may have died with a server restart
                return self._listen(pooled)
        return self._listen(self._connect())

    def _listen(self, conn: psycopg.Connection[Row]) -> psycopg.Connection[Row]:
        with self._errors(conn):
            conn.execute(pgsql.listen(self._db.channel))
        return conn

    def _give_back(self, conn: psycopg.Connection[Row], generation: int) -> None:
        """UNLISTEN and pool the listener again (closed instead if it broke or the queue closed)."""
        try:
            if generation == self._generation and not conn.closed:
                conn.execute(pgsql.UNLISTEN)
                with self._mutex:
                    if generation == self._generation:
                        self._idle.append(conn)
                        return
        except psycopg.Error:
            logger.debug("a listener of %s broke; closing it", self._db.shown, exc_info=True)
        _quietly(conn.close)


def _prepare(conn: psycopg.Connection[Row], *, fsync: bool) -> None:
    """Set ``synchronous_commit`` from ``fsync``; create the schema unless it exists (one client only)."""
    if not pgsql.is_ready(conn.execute(pgsql.SETUP, ["on" if fsync else "off"]).fetchone()):
        with conn.transaction():
            conn.execute(pgsql.SCHEMA_LOCK)
            conn.execute(pgsql.SCHEMA)


def _quietly(action: Callable[[], object]) -> None:
    """Run ``action``, ignoring the server's errors (closing what may already be gone)."""
    try:
        action()
    except psycopg.Error:
        logger.debug("ignored while closing", exc_info=True)
