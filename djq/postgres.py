"""``PostgresQueue``: the one client API on a PostgreSQL server, each operation one SQL statement.

``djq.open("postgresql://...", name="jobs")`` returns one (psycopg 3). It is an
``api.BaseQueue`` whose ``_submit`` runs the operation as SQL in autocommit: no djq
state machine runs here, the statements implement the contract of ``djq.state``
(``tests/test_contract.py`` checks it) and the server applies them.

Data layout (created on first use, in the first schema of the ``search_path``, under
``pg_advisory_xact_lock`` so that racing clients create it once):

- ``djq_task``: one row per live task of every queue, keyed by ``id`` (an identity: the
  task id is its decimal, so ids are unique across queues and rise in put order) with
  ``queue`` (the name), ``payload`` (the JSON text as put), ``priority``, ``state``
  (ready, leased, dead), ``attempts``, ``max_attempts``, epoch-second times
  ``enqueued_at``, ``available_at``, ``lease_expires_at``, and ``owner``/``token``.
  An acked task is deleted. Partial indexes serve the claim (ready and leased rows, in
  delivery order) and the expiry scan.
- ``djq_count``: ``put_total``, ``acked_total``, ``dead_total`` per queue in a few
  shards (``pg_backend_pid() % 16``), summed by ``stats``, so that counting does not
  make one hot row every put and ack would queue behind.

A claim is one statement: it locks the first ready (or expired, not used up) rows in
delivery order, priority DESC then id, ``FOR UPDATE SKIP LOCKED`` (``claim="skip_locked"``,
the default) or ``FOR UPDATE`` (``claim="for_update"``: it waits behind row locks and may
come back short, PostgreSQL's lesson), leases them (``attempts + 1``, token, owner,
expiry), and reclaims every other expired lease exactly as ``state.reap`` does (to ready,
or to the dead letters after ``max_attempts``), committed at once. No transaction is held
while a task is worked on. ``ack``, ``nack`` and ``extend`` match ``id``, ``state='leased'``
and ``token``: no row is ``LeaseLost``.

A waiting get tries once; then it LISTENs on channel ``djq_<name>`` on a connection of its
own, claims again, and waits with ``Connection.notifies(timeout=...)`` until a
notification (put, nack and requeue NOTIFY), the next delayed task or lease expiry the
table names, or its timeout; it claims again after each. It holds no transaction.

Time: with ``clock=None`` every "now" is the server's (``now()`` as epoch seconds), so
clients with skewed clocks agree; a ``clock`` callable's value is passed to every
statement instead (tests, simulations). Durability: ``fsync`` sets
``synchronous_commit`` (on: a put returns once its commit is flushed to the WAL).

A lost connection raises ``BrokerUnavailable`` naming the server (no password); the next
call connects afresh; nothing is replayed. Calls are safe from several threads (one
connection, guarded by a lock; each waiting get has its own listening connection).
Imports from djq: ``api``, ``errors``, ``model``, ``ops``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import ops
from .api import BaseQueue
from .errors import BrokerError, BrokerUnavailable, ConfigError, LeaseLost, UnknownTask
from .model import QueueConfig, QueueStats, Task, TaskState

__all__ = ["CLAIMS", "CONNECT_TIMEOUT", "PostgresQueue"]

logger = logging.getLogger(__name__)
R = TypeVar("R")
Row = tuple[Any, ...]
CONNECT_TIMEOUT: Final = 10  #: seconds libpq may take to connect (unless the URL sets connect_timeout)
CLAIMS: Final = {"skip_locked": "FOR UPDATE OF d SKIP LOCKED", "for_update": "FOR UPDATE OF d"}
FILE_ONLY: Final = (
    "path", "lock", "storage", "wait", "lock_timeout", "poll_interval", "max_file_bytes",
    "compact_bytes", "file_mode",
)  # fmt: skip
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,47}")  #: a queue name (channel djq_<name> < 64)
_MIN_PAUSE: Final = 0.002  #: seconds a waiting get pauses when work is due but another claimer holds it
_SAFETY: Final = 30.0  #: seconds a waiting get sleeps at most without looking at the table
_SCHEMA_LOCK: Final = 0x646A7120  #: pg_advisory_xact_lock key of the schema's creation ("djq ")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS djq_task (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    payload text NOT NULL,
    priority bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('ready', 'leased', 'dead')),
    attempts bigint NOT NULL,
    max_attempts bigint NOT NULL,
    enqueued_at float8 NOT NULL,
    available_at float8 NOT NULL,
    owner text,
    token text,
    lease_expires_at float8,
    CHECK ((state = 'leased') = (token IS NOT NULL AND owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS djq_task_ready ON djq_task (queue, priority DESC, id) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS djq_task_leased ON djq_task (queue, priority DESC, id) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS djq_task_expiry ON djq_task (queue, lease_expires_at) WHERE state = 'leased';
CREATE TABLE IF NOT EXISTS djq_count (
    queue text NOT NULL,
    shard int NOT NULL,
    put_total bigint NOT NULL DEFAULT 0,
    acked_total bigint NOT NULL DEFAULT 0,
    dead_total bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, shard)
);
"""

# Fragments of the statements. Every statement starts with ``t``: the one "now" it uses.
_NOW: Final = "t AS (SELECT coalesce(%(now)s::float8, extract(epoch FROM now())::float8) AS now)"
_AVAILABLE: Final = "(d.available_at <= t.now OR d.available_at <= d.enqueued_at)"  # as index.available
_FIELDS: Final = (
    "id", "payload", "priority", "state", "attempts", "max_attempts", "enqueued_at", "available_at",
    "owner", "token", "lease_expires_at",
)  # fmt: skip
_COLUMNS: Final = ", ".join(f"d.{name}" for name in _FIELDS)  #: a task's row, as ``_task`` reads it
_RETIRE: Final = """state = CASE WHEN d.attempts >= d.max_attempts THEN 'dead' ELSE 'ready' END,
    owner = NULL, token = NULL, lease_expires_at = NULL"""  # state._retire


def _count(put: str = "0", acked: str = "0", dead: str = "0") -> str:
    """A CTE adding to this backend's shard of the queue's counters (when something is added)."""
    return f"""c AS (INSERT INTO djq_count AS c (queue, shard, put_total, acked_total, dead_total)
    SELECT %(q)s, pg_backend_pid() %% 16, n.put, n.acked, n.dead
    FROM (SELECT {put} AS put, {acked} AS acked, {dead} AS dead) AS n WHERE n.put + n.acked + n.dead > 0
    ON CONFLICT (queue, shard) DO UPDATE SET put_total = c.put_total + excluded.put_total,
        acked_total = c.acked_total + excluded.acked_total, dead_total = c.dead_total + excluded.dead_total)"""


def _reap(lock: str, chosen: str) -> str:
    """CTEs ``gone``/``reaped``: every expired lease (but the ``chosen`` ids) to ready or dead."""
    return f"""gone AS (SELECT d.id FROM djq_task d, t WHERE d.queue = %(q)s AND d.state = 'leased'
        AND d.lease_expires_at <= t.now AND d.id NOT IN ({chosen}) {lock}),
    reaped AS (UPDATE djq_task d SET {_RETIRE} FROM gone WHERE d.id = gone.id RETURNING d.id, d.state)"""


_DEAD: Final = "(SELECT count(*) FROM reaped WHERE reaped.state = 'dead')"


def _claim(lock: str) -> str:
    """The claim: lease up to ``n`` tasks in delivery order and reclaim the other expired leases."""
    first = "FROM djq_task d, t WHERE d.queue = %(q)s AND {} ORDER BY d.priority DESC, d.id LIMIT %(n)s"
    return f"""WITH {_NOW},
    r AS (SELECT d.id, d.priority {first.format("d.state = 'ready' AND " + _AVAILABLE)} {lock}),
    x AS (SELECT d.id, d.priority {first.format(
        "d.state = 'leased' AND d.lease_expires_at <= t.now AND d.attempts < d.max_attempts AND "
        + _AVAILABLE)} {lock}),
    chosen AS (SELECT u.id, row_number() OVER (ORDER BY u.priority DESC, u.id) AS k
        FROM (SELECT * FROM r UNION ALL SELECT * FROM x) AS u ORDER BY u.priority DESC, u.id LIMIT %(n)s),
    {_reap(lock, "SELECT id FROM chosen")},
    leased AS (UPDATE djq_task d SET state = 'leased', attempts = d.attempts + 1, owner = %(owner)s,
        token = (%(tokens)s::text[])[chosen.k], lease_expires_at = t.now + %(duration)s
        FROM chosen, t WHERE d.id = chosen.id RETURNING {_COLUMNS}),
    {_count(dead=_DEAD)}
    SELECT * FROM leased ORDER BY priority DESC, id"""  # fmt: skip


_SQL: Final = {
    "put": f"""WITH {_NOW},
    ins AS (INSERT INTO djq_task AS d (queue, payload, priority, state, attempts, max_attempts,
            enqueued_at, available_at)
        SELECT %(q)s, u.p, %(priority)s, 'ready', 0, %(max_attempts)s, t.now, t.now + %(delay)s
        FROM t, unnest(%(payloads)s::text[]) WITH ORDINALITY AS u(p, k) ORDER BY u.k RETURNING d.id),
    {_count(put="(SELECT count(*) FROM ins)")}
    SELECT array_agg(id ORDER BY id), pg_notify(%(channel)s, '') FROM ins""",
    "ack": f"""WITH l AS (SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS l(id, token)),
    a AS (DELETE FROM djq_task d USING l WHERE d.queue = %(q)s AND d.id = l.id AND d.state = 'leased'
        AND d.token = l.token RETURNING d.id, d.token),
    {_count(acked="(SELECT count(*) FROM a)")}
    SELECT id, token FROM a""",
    "nack": f"""WITH {_NOW},
    reaped AS (UPDATE djq_task d SET {_RETIRE}, available_at = CASE WHEN d.attempts >= d.max_attempts
            THEN d.available_at ELSE t.now + %(delay)s END
        FROM t WHERE d.queue = %(q)s AND d.id = %(id)s AND d.state = 'leased' AND d.token = %(token)s
        RETURNING d.state),
    {_count(dead=_DEAD)}
    SELECT state, pg_notify(%(channel)s, '') FROM reaped""",
    "extend": f"""WITH {_NOW} UPDATE djq_task d SET lease_expires_at = t.now + %(duration)s FROM t
    WHERE d.queue = %(q)s AND d.id = %(id)s AND d.state = 'leased' AND d.token = %(token)s
    RETURNING {_COLUMNS}""",
    "requeue": f"""WITH {_NOW},
    back AS (UPDATE djq_task d SET state = 'ready', attempts = 0, available_at = t.now FROM t
        WHERE d.queue = %(q)s AND d.id = %(id)s AND d.state = 'dead' RETURNING {_COLUMNS})
    SELECT *, pg_notify(%(channel)s, '') FROM back""",
    "purge": """WITH gone AS (DELETE FROM djq_task WHERE queue = %(q)s
        AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[])) RETURNING 1)
    SELECT count(*) FROM gone""",
    "reap": f"""WITH {_NOW}, {_reap(CLAIMS["skip_locked"], "0")}, {_count(dead=_DEAD)} SELECT id FROM reaped ORDER BY id""",
    "stats": f"""WITH {_NOW} SELECT
        count(*) FILTER (WHERE d.state = 'ready' AND {_AVAILABLE}),
        count(*) FILTER (WHERE d.state = 'ready' AND NOT {_AVAILABLE}),
        count(*) FILTER (WHERE d.state = 'leased' AND d.lease_expires_at > t.now),
        count(*) FILTER (WHERE d.state = 'leased' AND d.lease_expires_at <= t.now),
        count(*) FILTER (WHERE d.state = 'dead'),
        (SELECT ARRAY[coalesce(sum(put_total), 0), coalesce(sum(acked_total), 0),
            coalesce(sum(dead_total), 0)] FROM djq_count WHERE queue = %(q)s),
        pg_total_relation_size('djq_task')
    FROM t LEFT JOIN djq_task d ON d.queue = %(q)s""",
    "peek": f"""WITH {_NOW} SELECT {_COLUMNS} FROM djq_task d, t WHERE d.queue = %(q)s AND d.state = 'ready'
    ORDER BY {_AVAILABLE} DESC, CASE WHEN {_AVAILABLE} THEN 0 ELSE d.available_at END, d.priority DESC, d.id
    LIMIT %(limit)s""",
    "dead": f"SELECT {_COLUMNS} FROM djq_task d WHERE d.queue = %(q)s AND d.state = 'dead' ORDER BY d.id",
    "due": f"""WITH {_NOW} SELECT least(
        (SELECT min(CASE WHEN {_AVAILABLE} THEN t.now ELSE d.available_at END) FROM djq_task d
            WHERE d.queue = %(q)s AND d.state = 'ready'),
        (SELECT min(d.lease_expires_at) FROM djq_task d WHERE d.queue = %(q)s AND d.state = 'leased')
    ) - t.now FROM t""",
    "check": "SELECT to_regclass('djq_task') IS NOT NULL, to_regclass('djq_count') IS NOT NULL",
}
_CLAIM: Final = {kind: _claim(lock) for kind, lock in CLAIMS.items()}


class PostgresQueue(BaseQueue):
    """A djq queue named ``name`` in a PostgreSQL database; many names share one database.

    Args:
        url: a libpq URL or conninfo (``postgresql://user@host/db``); its password is never shown.
        name: the queue inside the database: 1 to 48 of ``A-Z a-z 0-9 _ . -``.
        clock: None (the server's clock decides every lease, delay and expiry) or a
            callable returning epoch seconds, passed to every statement instead.
        claim: ``"skip_locked"`` (claimers pass each other's locked rows) or
            ``"for_update"`` (they wait behind them).
        options: ``lease``, ``max_attempts``, ``max_payload_bytes``, ``fsync``. The file
            queue's options (``lock``, ``storage``, ...) are refused. ``config.path`` is a
            placeholder, ``Path(name)``: there is no file.

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
        self._name, self._clock, self._claim = name, clock, _CLAIM[claim]
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

    @property
    def name(self) -> str:
        """The queue's name inside the database."""
        return self._name

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
        """Run the statement ``_SQL[key]`` (or a claim) with ``params``; return its rows."""
        params.setdefault("q", self._name)
        params["now"] = None if self._clock is None else float(self._clock())
        query = self._claim if key == "claim" else _SQL[key]
        with self._mutex:
            conn = self._connection()
            with self._errors(conn):
                return conn.execute(query, params, prepare=True).fetchall()

    def _connection(self) -> psycopg.Connection[Row]:
        """The statement connection, connected (schema made, fsync set) if it is not."""
        if self._pid != os.getpid():  # a forked child must never use the parent's sockets
            self._conn, self._idle, self._pid = None, [], os.getpid()
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            with self._errors(self._conn):
                _prepare(self._conn, fsync=self._config.fsync)
        return self._conn

    def _connect(self) -> psycopg.Connection[Row]:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    def _errors(self, conn: psycopg.Connection[Row]) -> _Translate:
        return _Translate(self, conn)

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        first = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
        return BrokerUnavailable(f"the PostgreSQL server at {self._shown} is unavailable: {first[0]}")

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
                    for _ in listener.notifies(timeout=pause, stop_after=1):
                        pass
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
        """A connection LISTENing on the queue's channel (pooled between waiting gets)."""
        with self._mutex:
            conn = self._idle.pop() if self._idle else None
        conn = conn if conn is not None and not conn.closed else self._connect()
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


class _Translate:
    """Context manager: psycopg's errors as djq's; a lost connection is dropped for the next call."""

    def __init__(self, queue: PostgresQueue, conn: psycopg.Connection[Row]) -> None:
        self.queue, self.conn = queue, conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, psycopg.Error):
            return
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or self.conn.broken:
            if self.queue._conn is self.conn:
                self.queue._conn = None
            _quietly(self.conn.close)
            raise self.queue._unavailable(exc) from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BrokerError(f"the PostgreSQL server at {self.queue._shown} refused: {first}") from exc


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
    ids = queue._rows(
        "put", payloads=texts, priority=op.priority, delay=op.delay,
        max_attempts=op.max_attempts, channel=queue._channel,
    )[0][0]  # fmt: skip
    return [str(i) for i in ids]


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


def _nack(queue: PostgresQueue, op: ops.Nack) -> TaskState:
    rows = queue._rows("nack", id=_seq(op.id), token=op.token, delay=op.delay, channel=queue._channel)
    if not rows:
        raise LeaseLost(task_id=op.id, token=op.token)
    return TaskState(rows[0][0])


def _extend(queue: PostgresQueue, op: ops.Extend) -> Task:
    rows = queue._rows("extend", id=_seq(op.id), token=op.token, duration=op.duration)
    if not rows:
        raise LeaseLost(task_id=op.id, token=op.token)
    return _task(rows[0])


def _requeue(queue: PostgresQueue, op: ops.Requeue) -> Task:
    rows = queue._rows("requeue", id=_seq(op.id), channel=queue._channel)
    if not rows:
        raise UnknownTask(f"no dead task with id {op.id!r}", task_id=op.id)
    return _task(rows[0])


def _purge(queue: PostgresQueue, op: ops.Purge) -> int:
    states = None if op.states is None else sorted(s.value for s in op.states)
    return int(queue._rows("purge", states=states)[0][0])


def _stats(queue: PostgresQueue, op: ops.Stats) -> QueueStats:
    ready, delayed, leased, expired, dead, totals, size = queue._rows("stats")[0]
    put_total, acked_total, dead_total = (int(n) for n in totals)
    return QueueStats(
        ready=ready, delayed=delayed, leased=leased, expired=expired, dead=dead, put_total=put_total,
        acked_total=acked_total, dead_total=dead_total, file_bytes=size,  # the shared table's bytes
    )  # fmt: skip


def _check(queue: PostgresQueue, op: ops.Check) -> list[str]:
    """The schema's tables are there (its CHECK constraints keep every row consistent); nothing to fix."""
    task, count = queue._rows("check")[0]
    return [f"table {t} is missing" for t, ok in (("djq_task", task), ("djq_count", count)) if not ok]


_RUN: Final[dict[type[ops.Op[Any]], Callable[[PostgresQueue, Any], Any]]] = {
    ops.Put: _put,
    ops.PutMany: _put,
    ops.LeaseNext: _lease,
    ops.LeaseMany: _lease,
    ops.Ack: _ack,
    ops.AckMany: lambda q, op: _ack_many(q, op.leases),
    ops.Nack: _nack,
    ops.Extend: _extend,
    ops.Requeue: _requeue,
    ops.Purge: _purge,
    ops.Reap: lambda q, op: [str(row[0]) for row in q._rows("reap")],
    ops.Stats: _stats,
    ops.Peek: lambda q, op: [_task(row) for row in q._rows("peek", limit=op.limit)],
    ops.Dead: lambda q, op: [_task(row) for row in q._rows("dead")],
    ops.Check: _check,
}


def _task(row: Row) -> Task:
    """The ``Task`` of a row that starts with ``_COLUMNS``."""
    fields = dict(zip(_FIELDS, row, strict=False))
    fields.update(id=str(row[0]), payload=json.loads(row[1]), state=TaskState(row[3]))
    return Task(**fields)


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
        raise ConfigError(f"clock must be None or a callable returning epoch seconds, not {clock!r:.80}",
                          field="clock")  # fmt: skip
    if claim not in CLAIMS:
        raise ConfigError(f"claim must be one of {', '.join(map(repr, CLAIMS))}, not {claim!r:.80}",
                          field="claim")  # fmt: skip
    for field in FILE_ONLY:
        if field in options:
            raise ConfigError(f"{field} is an option of the file queue, not of a PostgreSQL queue",
                              field=field)  # fmt: skip


def _conninfo(url: str, name: str) -> str:
    """``url`` as libpq conninfo with djq's defaults (connect timeout, application name)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["malformed"])[0]
        raise ConfigError(f"not a PostgreSQL URL: {_shown(url)} ({first})", field="url") from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", f"djq/{name}")
    return make_conninfo(**params)


def _shown(url: str) -> str:
    """``url`` without its password (in the authority or a ``password`` parameter)."""
    if "://" not in url:
        return " ".join(p for p in url.split() if not p.startswith("password="))
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"], safe="/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _quietly(action: Callable[[], object]) -> None:
    """Run ``action``, ignoring the server's errors (closing what may already be gone)."""
    try:
        action()
    except psycopg.Error:
        logger.debug("ignored while closing", exc_info=True)
