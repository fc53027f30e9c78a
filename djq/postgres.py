"""``PostgresQueue``: the one client API on PostgreSQL (psycopg 3), each operation one statement.

``djq.open("postgresql://...", name="jobs")`` returns one. Its ``_submit`` runs the operation
as one autocommit SQL statement that implements ``djq.state``'s rule (no state machine runs
here; ``tests/test_contract.py`` is the contract).

Data layout (``_SCHEMA``), made on first use in the ``search_path``'s first schema, under
``pg_advisory_xact_lock`` so racing clients make it once. ``djq_task``: one row per live
task of every queue; ``id`` an identity (the task id is its decimal: unique across queues,
rising in put order), ``queue`` the name, ``payload`` the JSON text, ``state`` ready,
leased or dead, times in epoch seconds; an acked task is deleted. ``djq_count``: each
queue's totals in 16 shards (``pg_backend_pid() % 16``), summed by ``stats``, so that no
one hot row serializes every put and ack.

A claim is one statement: it locks the first ready (or expired, not used up) rows in
delivery order (priority DESC, id) ``FOR UPDATE SKIP LOCKED`` (``claim="skip_locked"``) or
``FOR UPDATE`` (``"for_update"``: waits behind others' row locks, may come back short),
leases them, reclaims every other expired lease as ``state.reap`` does and commits: no
transaction is held while a task is worked on. ``ack``, ``nack``, ``extend`` match id,
``state='leased'`` and token, or raise ``LeaseLost``.

A waiting get LISTENs on ``djq_<name>`` on a pooled connection of its own and sleeps in
``Connection.notifies(timeout=...)`` until a NOTIFY (put, nack, requeue), the next delay or
lease expiry in the table, or its timeout, claiming after each; it holds no transaction.

Time: with ``clock=None`` every "now" is the server's (``now()``, epoch seconds), so clients
with skewed clocks agree; else ``clock()`` is passed to every statement. Durability:
``fsync`` sets ``synchronous_commit`` (on: a put returns once its commit is in the WAL on
disk). A lost connection raises ``BrokerUnavailable`` naming the server (no password); the
next call connects afresh, nothing is replayed. Thread-safe (one connection, one lock).
Imports from djq: ``api``, ``errors``, ``model``, ``ops``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import ops
from .api import BaseQueue
from .errors import BrokerError, BrokerUnavailable, ConfigError, LeaseLost, UnknownTask
from .model import CLAIMS, QueueConfig, QueueStats, Task, TaskState, refuse_file_options

__all__ = ["CONNECT_TIMEOUT", "PostgresQueue"]

logger = logging.getLogger(__name__)
R = TypeVar("R")
Row = tuple[Any, ...]
CONNECT_TIMEOUT: Final = 10  #: seconds libpq may take to connect (unless the URL sets connect_timeout)
_LOCKING: Final = {
    "skip_locked": "FOR UPDATE OF d SKIP LOCKED",
    "for_update": "FOR UPDATE OF d",
}  #: by CLAIMS
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,47}")  #: a queue name (channel djq_<name> < 64)
_MIN_PAUSE: Final = 0.002  #: seconds a waiting get pauses when work is due but another claimer holds it
_SAFETY: Final = 30.0  #: seconds a waiting get sleeps at most without looking at the table
_SCHEMA_LOCK: Final = 0x646A7120  #: pg_advisory_xact_lock key of the schema's creation ("djq ")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS djq_task (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, queue text NOT NULL, payload text NOT NULL,
    priority bigint NOT NULL, state text NOT NULL CHECK (state IN ('ready', 'leased', 'dead')),
    attempts bigint NOT NULL, max_attempts bigint NOT NULL, enqueued_at float8 NOT NULL,
    available_at float8 NOT NULL, owner text, token text, lease_expires_at float8,
    CHECK ((state = 'leased') = (token IS NOT NULL AND owner IS NOT NULL AND lease_expires_at IS NOT NULL)));
CREATE INDEX IF NOT EXISTS djq_task_ready ON djq_task (queue, priority DESC, id) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS djq_task_leased ON djq_task (queue, priority DESC, id) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS djq_task_expiry ON djq_task (queue, lease_expires_at) WHERE state = 'leased';
CREATE TABLE IF NOT EXISTS djq_count (queue text NOT NULL, shard int NOT NULL,
    put_total bigint NOT NULL DEFAULT 0, acked_total bigint NOT NULL DEFAULT 0,
    dead_total bigint NOT NULL DEFAULT 0, PRIMARY KEY (queue, shard));
"""
_STATS: Final = tuple(f.name for f in dataclasses.fields(QueueStats))  #: the order "stats" selects
_FIELDS: Final = (
    "id", "payload", "priority", "state", "attempts", "max_attempts", "enqueued_at", "available_at",
    "owner", "token", "lease_expires_at",
)  # fmt: skip
# The statements' shared parts, by the names the templates use. ``t`` is the statement's one
# "now"; ``count`` adds the CTE ``n``'s numbers to this backend's shard of the counters;
# ``reaped`` retires the rows of the CTE ``gone`` (as state._retire); ``lock`` is the claim's.
_PARTS: Final = {
    "now": "t AS (SELECT coalesce(%(now)s::float8, extract(epoch FROM now())::float8) AS now)",
    "available": "(d.available_at <= t.now OR d.available_at <= d.enqueued_at)",  # index.available
    "columns": ", ".join(f"d.{name}" for name in _FIELDS),
    "retire": """state = CASE WHEN d.attempts >= d.max_attempts THEN 'dead' ELSE 'ready' END,
        owner = NULL, token = NULL, lease_expires_at = NULL""",
    "dead": "(SELECT count(*) FROM reaped WHERE reaped.state = 'dead')",
    "count": """c AS (INSERT INTO djq_count AS c (queue, shard, put_total, acked_total, dead_total)
        SELECT %(q)s, pg_backend_pid() %% 16, n.put, n.acked, n.dead FROM n
        WHERE n.put + n.acked + n.dead > 0
        ON CONFLICT (queue, shard) DO UPDATE SET put_total = c.put_total + excluded.put_total,
        acked_total = c.acked_total + excluded.acked_total,
        dead_total = c.dead_total + excluded.dead_total)""",
    "expired": "d.queue = %(q)s AND d.state = 'leased' AND d.lease_expires_at <= t.now",
    "reaped": """reaped AS (UPDATE djq_task d SET state = CASE WHEN d.attempts >= d.max_attempts THEN 'dead'
        ELSE 'ready' END, owner = NULL, token = NULL, lease_expires_at = NULL,
        available_at = CASE WHEN d.attempts >= d.max_attempts THEN d.available_at ELSE d.enqueued_at END
        FROM gone
        WHERE d.id = gone.id RETURNING d.id, d.state)""",  # as "retire"
}
_TEMPLATES: Final = {
    "claim": """WITH {now},
    r AS (SELECT d.id, d.priority FROM djq_task d, t WHERE d.queue = %(q)s AND d.state = 'ready'
        AND {available} ORDER BY d.priority DESC, d.id LIMIT %(n)s {lock}),
    x AS (SELECT d.id, d.priority FROM djq_task d, t WHERE {expired} AND d.attempts < d.max_attempts
        ORDER BY d.priority DESC, d.id LIMIT %(n)s {lock}),
    chosen AS (SELECT u.id, row_number() OVER (ORDER BY u.priority DESC, u.id) AS k
        FROM (SELECT * FROM r UNION ALL SELECT * FROM x) AS u ORDER BY u.priority DESC, u.id LIMIT %(n)s),
    gone AS (SELECT d.id FROM djq_task d, t WHERE {expired} AND d.id NOT IN (SELECT id FROM chosen) {lock}),
    {reaped},
    leased AS (UPDATE djq_task d SET state = 'leased', attempts = d.attempts + 1, owner = %(owner)s,
        token = (%(tokens)s::text[])[chosen.k], lease_expires_at = t.now + %(duration)s,
        available_at = CASE WHEN d.state = 'leased' THEN d.enqueued_at ELSE d.available_at END
        FROM chosen, t WHERE d.id = chosen.id RETURNING {columns}),
    n AS (SELECT 0 AS put, 0 AS acked, {dead} AS dead), {count}
    SELECT * FROM leased ORDER BY priority DESC, id""",
    "put": """WITH {now},
    ins AS (INSERT INTO djq_task AS d (queue, payload, priority, state, attempts, max_attempts,
            enqueued_at, available_at)
        SELECT %(q)s, u.p, %(priority)s, 'ready', 0, %(max_attempts)s, t.now, t.now + %(delay)s
        FROM t, unnest(%(payloads)s::text[]) WITH ORDINALITY AS u(p, k) ORDER BY u.k RETURNING d.id),
    n AS (SELECT (SELECT count(*) FROM ins) AS put, 0 AS acked, 0 AS dead), {count}
    SELECT array_agg(id ORDER BY id), pg_notify(%(channel)s, '') FROM ins""",
    "ack": """WITH l AS (SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS l(id, token)),
    a AS (DELETE FROM djq_task d USING l WHERE d.queue = %(q)s AND d.id = l.id AND d.state = 'leased'
        AND d.token = l.token RETURNING d.id, d.token),
    n AS (SELECT 0 AS put, (SELECT count(*) FROM a) AS acked, 0 AS dead), {count}
    SELECT id, token FROM a""",
    "nack": """WITH {now},
    reaped AS (UPDATE djq_task d SET {retire}, available_at = CASE WHEN d.attempts >= d.max_attempts
            THEN d.available_at WHEN %(delay)s > 0 THEN t.now + %(delay)s ELSE d.enqueued_at END
        FROM t WHERE d.queue = %(q)s AND d.id = %(id)s AND d.state = 'leased' AND d.token = %(token)s
        RETURNING d.state),
    n AS (SELECT 0 AS put, 0 AS acked, {dead} AS dead), {count}
    SELECT state, pg_notify(%(channel)s, '') FROM reaped""",
    "extend": """WITH {now} UPDATE djq_task d SET lease_expires_at = t.now + %(duration)s FROM t
    WHERE d.queue = %(q)s AND d.id = %(id)s AND d.state = 'leased' AND d.token = %(token)s
    RETURNING {columns}""",
    "requeue": """WITH {now},
    back AS (UPDATE djq_task d SET state = 'ready', attempts = 0, available_at = d.enqueued_at FROM t
        WHERE d.queue = %(q)s AND d.id = %(id)s AND d.state = 'dead' RETURNING {columns})
    SELECT *, pg_notify(%(channel)s, '') FROM back""",
    "purge": """WITH gone AS (DELETE FROM djq_task WHERE queue = %(q)s
        AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[])) RETURNING 1)
    SELECT count(*) FROM gone""",
    "reap": """WITH {now}, gone AS (SELECT d.id FROM djq_task d, t WHERE {expired} {lock}), {reaped},
    n AS (SELECT 0 AS put, 0 AS acked, {dead} AS dead), {count} SELECT id FROM reaped ORDER BY id""",
    "stats": """WITH {now} SELECT
        count(*) FILTER (WHERE d.state = 'ready' AND {available}),
        count(*) FILTER (WHERE d.state = 'ready' AND NOT {available}),
        count(*) FILTER (WHERE d.state = 'leased' AND d.lease_expires_at > t.now),
        count(*) FILTER (WHERE d.state = 'leased' AND d.lease_expires_at <= t.now),
        count(*) FILTER (WHERE d.state = 'dead'),
        s.p, s.a, s.d, pg_total_relation_size('djq_task') -- file_bytes: of the table all queues share
    FROM t CROSS JOIN (SELECT coalesce(sum(put_total), 0)::bigint, coalesce(sum(acked_total), 0)::bigint,
        coalesce(sum(dead_total), 0)::bigint FROM djq_count WHERE queue = %(q)s) AS s(p, a, d)
    LEFT JOIN djq_task d ON d.queue = %(q)s GROUP BY s.p, s.a, s.d""",
    "peek": """WITH {now} SELECT {columns} FROM djq_task d, t WHERE d.queue = %(q)s AND d.state = 'ready'
    ORDER BY {available} DESC, CASE WHEN {available} THEN 0 ELSE d.available_at END, d.priority DESC, d.id
    LIMIT %(limit)s""",
    "dead": "SELECT {columns} FROM djq_task d WHERE d.queue = %(q)s AND d.state = 'dead' ORDER BY d.id",
    "due": """WITH {now} SELECT least(
        (SELECT min(CASE WHEN {available} THEN t.now ELSE d.available_at END) FROM djq_task d
            WHERE d.queue = %(q)s AND d.state = 'ready'),
        (SELECT min(d.lease_expires_at) FROM djq_task d WHERE d.queue = %(q)s AND d.state = 'leased')
    ) - t.now FROM t""",
    "check": "SELECT t FROM unnest(ARRAY['djq_task', 'djq_count']) AS t WHERE to_regclass(t) IS NULL",
}


#: every statement by claim kind, its parts filled in (constants here: values travel as parameters)
_STATEMENTS: Final = {
    claim: {key: template.format(lock=lock, **_PARTS) for key, template in _TEMPLATES.items()}
    for claim, lock in _LOCKING.items()
}


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
        _check_arguments(name, clock, claim, options)
        self._config = QueueConfig.from_options(path=Path(name), **options)
        self._conninfo = _conninfo(url, name)
        self._shown = _shown(url)
        self._name, self._clock, self._statements = name, clock, _STATEMENTS[claim]
        self._channel = f"djq_{name}"
        self._mutex = threading.Lock()  # guards the one statement connection
        self._conn: psycopg.Connection[Row] | None = None
        self._pid = os.getpid()
        self._idle: list[psycopg.Connection[Row]] = []  # listening connections no get uses now
        self._generation = 0  # raised by close(): a waiting get of an older one returns

    @property
    def config(self) -> QueueConfig:
        """The validated configuration (``path`` is the placeholder ``Path(name)``)."""
        return self._config

    def close(self) -> None:
        """Close the connections (idempotent); a waiting get returns None; a later call reconnects."""
        with self._mutex:
            self._generation += 1
            conn, self._conn = self._conn, None
            idle, self._idle = self._idle, []
        if conn is not None:
            _quietly(lambda: conn.execute("SELECT pg_notify(%s, '')", [self._channel]))  # wakes waiters
        for each in [c for c in [conn, *idle] if c is not None]:
            _quietly(each.close)

    def __repr__(self) -> str:
        return f"PostgresQueue({self._shown!r}, name={self._name!r})"

    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run ``op`` as SQL; a lease waits up to ``wait`` seconds for work (None: for ever)."""
        result: R = _RUN[type(op)](self, op)
        if result or not op.waits or wait == 0:
            return result
        return self._wait_for(op, wait)

    def _rows(self, key: str, **params: Any) -> list[Row]:
        """Run the statement ``key`` of ``_TEMPLATES`` with ``params``; return its rows."""
        params.setdefault("q", self._name)
        params["now"] = None if self._clock is None else float(self._clock())
        query = self._statements[key]
        with self._mutex:
            conn = self._connection()
            with self._errors(conn):
                return conn.execute(query, params, prepare=True).fetchall()

    def _connection(self) -> psycopg.Connection[Row]:
        """The statement connection, connected (schema made, fsync set) if it is not."""
        if self._pid != os.getpid():  # a forked child must never use the parent's sockets
            self._conn, self._idle, self._pid = None, [], os.getpid()
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            with self._errors(conn):
                _prepare(conn, fsync=self._config.fsync)
            self._conn = conn
        return self._conn

    def _connect(self) -> psycopg.Connection[Row]:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    @contextlib.contextmanager
    def _errors(self, conn: psycopg.Connection[Row]) -> Iterator[None]:
        """Psycopg's errors as djq's; a lost connection is closed, for the next call to replace."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._conn = None if self._conn is conn else self._conn
            _quietly(conn.close)
            raise self._unavailable(exc) from exc
        except psycopg.Error as exc:
            if conn is not self._conn:  # being prepared, or a listener: never reused after an error
                _quietly(conn.close)
            raise BrokerError(f"the PostgreSQL server at {self._shown} refused: {_first(exc)}") from exc

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"the PostgreSQL server at {self._shown} is unavailable: {_first(exc)}")

    def _wait_for(self, op: ops.Op[R], wait: float | None) -> R:
        """LISTEN, then claim after every notification or due time until a task comes or time is up."""
        deadline = None if wait is None else time.monotonic() + wait
        generation = self._generation
        listener = self._listener()
        try:
            result: R = _RUN[type(op)](self, op)
            while not result and generation == self._generation:
                pause = self._pause(deadline)
                if pause is None:
                    break
                with self._errors(listener):
                    list(listener.notifies(timeout=pause, stop_after=1))  # one notification, or the time
                if generation == self._generation:  # close() woke us: never reconnect for it
                    result = _RUN[type(op)](self, op)
            return result
        finally:
            self._give_back(listener, generation)

    def _pause(self, deadline: float | None) -> float | None:
        """Seconds to sleep before the next claim (until the next due time); None at the deadline."""
        left = _SAFETY if deadline is None else min(deadline - time.monotonic(), _SAFETY)
        if left <= 0:
            return None
        due = self._rows("due")[0][0]
        return left if due is None else max(min(left, due), _MIN_PAUSE)

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
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        return conn

    def _give_back(self, conn: psycopg.Connection[Row], generation: int) -> None:
        """UNLISTEN and pool the listener again (closed instead if it broke or the queue closed)."""
        try:
            if generation == self._generation and not conn.closed:
                conn.execute("UNLISTEN *")
                with self._mutex:
                    if generation == self._generation:
                        self._idle.append(conn)
                        return
        except psycopg.Error:
            logger.debug("a listener of %s broke; closing it", self._shown, exc_info=True)
        _quietly(conn.close)


def _prepare(conn: psycopg.Connection[Row], *, fsync: bool) -> None:
    """Set ``synchronous_commit`` from ``fsync``; create the schema unless it exists (one client only)."""
    row = conn.execute(
        "SELECT set_config('synchronous_commit', %s, false),"
        " to_regclass('djq_task') IS NOT NULL AND to_regclass('djq_count') IS NOT NULL",
        ["on" if fsync else "off"],
    ).fetchone()
    if row is None or not row[1]:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
            conn.execute(_SCHEMA)


def _put(queue: PostgresQueue, op: ops.Put | ops.PutMany) -> list[str]:
    payloads = op.payloads if isinstance(op, ops.PutMany) else (op.payload,)
    texts = [json.dumps(p, ensure_ascii=False, separators=(",", ":")) for p in payloads]
    params = {"priority": op.priority, "delay": op.delay, "max_attempts": op.max_attempts}
    return [str(i) for i in queue._rows("put", payloads=texts, channel=queue._channel, **params)[0][0]]


def _lease(queue: PostgresQueue, op: ops.LeaseNext | ops.LeaseMany) -> Any:
    tokens = list(op.tokens) if isinstance(op, ops.LeaseMany) else [op.token]
    rows = queue._rows("claim", n=len(tokens), tokens=tokens, owner=op.owner, duration=op.duration)
    tasks = [_task(row) for row in rows]
    return tasks if isinstance(op, ops.LeaseMany) else (tasks[0] if tasks else None)


def _ack_many(queue: PostgresQueue, leases: Sequence[tuple[str, str]]) -> list[str]:
    """Ack every held ``(id, token)``; return the ids whose lease was lost, as ``state.ack_many``."""
    rows = queue._rows("ack", ids=[_seq(i) for i, _ in leases], tokens=[t for _, t in leases])
    held = {(str(i), token) for i, token in rows}
    lost = []
    for pair in leases:
        if pair in held:
            held.discard(pair)  # a pair given twice is acked once: the second is lost
        else:
            lost.append(pair[0])
    return lost


def _ack(queue: PostgresQueue, op: ops.Ack) -> None:
    if _ack_many(queue, [(op.id, op.token)]):
        raise LeaseLost(task_id=op.id, token=op.token)


def _held(queue: PostgresQueue, key: str, op: ops.Nack | ops.Extend, **params: Any) -> Row:
    """The row of statement ``key`` on the task ``op`` holds; ``LeaseLost`` when there is none."""
    rows = queue._rows(key, id=_seq(op.id), token=op.token, channel=queue._channel, **params)
    if not rows:
        raise LeaseLost(task_id=op.id, token=op.token)
    return rows[0]


def _requeue(queue: PostgresQueue, op: ops.Requeue) -> Task:
    rows = queue._rows("requeue", id=_seq(op.id), channel=queue._channel)
    if not rows:
        raise UnknownTask(f"no dead task with id {op.id!r}", task_id=op.id)
    return _task(rows[0])


_RUN: Final[dict[type[ops.Op[Any]], Callable[[PostgresQueue, Any], Any]]] = {
    ops.Put: _put,
    ops.PutMany: _put,
    ops.LeaseNext: _lease,
    ops.LeaseMany: _lease,
    ops.Ack: _ack,
    ops.AckMany: lambda q, op: _ack_many(q, op.leases),
    ops.Nack: lambda q, op: TaskState(_held(q, "nack", op, delay=op.delay)[0]),
    ops.Extend: lambda q, op: _task(_held(q, "extend", op, duration=op.duration)),
    ops.Requeue: _requeue,
    ops.Purge: lambda q, op: q._rows("purge", states=_values(op.states))[0][0],
    ops.Reap: lambda q, op: [str(row[0]) for row in q._rows("reap")],
    ops.Stats: lambda q, op: QueueStats(**dict(zip(_STATS, q._rows("stats")[0], strict=True))),
    ops.Peek: lambda q, op: [_task(row) for row in q._rows("peek", limit=op.limit)],
    ops.Dead: lambda q, op: [_task(row) for row in q._rows("dead")],
    # the schema's CHECK constraints keep every row consistent: check() looks for the tables only
    ops.Check: lambda q, op: [f"table {row[0]} is missing" for row in q._rows("check")],
}


def _task(row: Row) -> Task:
    """The ``Task`` of a row that starts with the ``columns`` of ``_PARTS``."""
    fields = dict(zip(_FIELDS, row, strict=False))
    fields.update(id=str(row[0]), payload=json.loads(row[1]), state=TaskState(row[3]))
    return Task(**fields)


def _values(states: frozenset[TaskState] | None) -> list[str] | None:
    return None if states is None else [state.value for state in states]


def _seq(task_id: str) -> int:
    """The row id a task id names; 0 (no row) for a string no task of ours has."""
    if task_id.isascii() and task_id.isdigit() and str(int(task_id)) == task_id and len(task_id) < 19:
        return int(task_id)
    return 0


def _check_arguments(name: object, clock: object, claim: object, options: dict[str, Any]) -> None:
    """Raise ``ConfigError`` for a bad name, clock or claim, or an option of the file queue."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"name must be 1 to 48 of the characters A-Z a-z 0-9 _ . - (not first . -), not {name!r:.80}",
            field="name",
        )
    if clock is not None and not callable(clock):
        raise ConfigError(f"clock must be None or a callable, not {clock!r:.80}", field="clock")
    if claim not in CLAIMS:
        raise ConfigError(f"claim must be 'skip_locked' or 'for_update', not {claim!r:.80}", field="claim")
    refuse_file_options(options, "a PostgreSQL queue")


def _conninfo(url: str, name: str) -> str:
    """``url`` as libpq conninfo with djq's defaults (connect timeout, application name)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ConfigError(f"not a PostgreSQL URL: {_shown(url)} ({_first(exc)})", field="url") from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", f"djq/{name}")
    return make_conninfo("", **params)


def _shown(url: str) -> str:
    """``url`` without its password (in the authority or a ``password`` parameter)."""
    if "://" not in url:
        return " ".join(p for p in url.split() if not p.startswith("password="))
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    pairs = [(k, v) for k, v in parse_qsl(parts.query) if k != "password"]
    netloc, query = f"{user.split(':', 1)[0]}{at}{host}", urlencode(pairs, safe="/", quote_via=quote)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _first(exc: BaseException) -> str:
    """The first line of an error's message (libpq's run to several)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _quietly(action: Callable[[], object]) -> None:
    """Run ``action``, ignoring the server's errors (closing what may already be gone)."""
    try:
        action()
    except psycopg.Error:
        logger.debug("ignored while closing", exc_info=True)
