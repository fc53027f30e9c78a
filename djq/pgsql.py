"""What both PostgreSQL clients share: the schema, every statement, each operation as one statement.

``djq.postgres`` (``PostgresQueue``, psycopg's ``Connection``) and ``djq.apostgres``
(``AsyncPostgresQueue``, its ``AsyncConnection``) differ only in how they wait for the
server; everything they send and everything they make of its answers is here, once:

- ``Database``: the checked arguments of a client (name, clock, claim, options, URL), the
  text of each statement for its claim kind, and djq's errors for psycopg's;
- ``plan(op, channel)``: the ``Call`` (statement key, parameters, and the function that
  turns its rows into the operation's result, raising ``LeaseLost``/``UnknownTask``) that
  runs ``op``; a client runs ``call.key`` and returns ``call.result(rows)``;
- the connection's setup (``SETUP``, ``SCHEMA`` under ``SCHEMA_LOCK``), ``listen``,
  ``UNLISTEN``, ``WAKE``, and the waiting get's pacing (``time_left``, ``pause``, ``DUE``).

Data layout (``SCHEMA``), made on first use in the ``search_path``'s first schema, under
``pg_advisory_xact_lock`` so racing clients make it once. ``djq_task``: one row per live
task of every queue; ``id`` an identity (the task id is its decimal: unique across queues,
rising in put order), ``queue`` the name, ``payload`` the JSON text, ``state`` ready,
leased or dead, times in epoch seconds; an acked task is deleted. ``djq_count``: each
queue's totals in 16 shards (``pg_backend_pid() % 16``), summed by ``stats``, so that no
one hot row serializes every put and ack.

A claim is one statement: it locks the first ready (or expired, not used up) rows in
delivery order (priority DESC, id) ``FOR UPDATE SKIP LOCKED`` (``claim="skip_locked"``) or
``FOR UPDATE`` (``"for_update"``: waits behind others' row locks, may come back short),
leases them (``pop`` deletes its one, counted acked; ``ack_lease`` claims only if its ack
found its row), reclaims every other expired lease as ``state.reap`` does and commits: no
transaction is held while a task is worked on. ``ack``, ``nack``, ``release``, ``extend``
match id, ``state='leased'`` and token, or raise ``LeaseLost``. Every statement that makes
a task ready (put, nack, release, requeue) NOTIFYs ``djq_<name>``, which waiting gets LISTEN on.

Time: with ``clock=None`` every "now" is the server's (``now()``, epoch seconds); else
``clock()`` is passed to every statement. No I/O here. Imports from djq: ``errors``,
``model``, ``ops``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import ops
from .errors import BrokerError, BrokerUnavailable, ConfigError, LeaseLost, UnknownTask
from .model import CLAIMS, QueueConfig, QueueStats, Task, TaskState, refuse_file_options

__all__ = [
    "CONNECT_TIMEOUT",
    "DUE",
    "SCHEMA",
    "SCHEMA_LOCK",
    "SETUP",
    "UNLISTEN",
    "WAKE",
    "Call",
    "Database",
    "Row",
    "is_lost",
    "is_ready",
    "listen",
    "pause",
    "plan",
    "time_left",
]

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
SCHEMA_LOCK: Final = "SELECT pg_advisory_xact_lock(1684697376)"  #: the schema's creation ("djq " as int)
#: synchronous_commit from fsync (parameter: "on"/"off"); whether both tables exist
SETUP: Final = """SELECT set_config('synchronous_commit', %s, false),
    to_regclass('djq_task') IS NOT NULL AND to_regclass('djq_count') IS NOT NULL"""
WAKE: Final = "SELECT pg_notify(%s, '')"  #: a notification on the channel (parameter): wakes its waiters
UNLISTEN: Final = "UNLISTEN *"

SCHEMA: Final = """
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
    "held": "d.queue = %(q)s AND d.id = %(id)s AND d.state = 'leased' AND d.token = %(token)s",
    "reaped": """reaped AS (UPDATE djq_task d SET state = CASE WHEN d.attempts >= d.max_attempts THEN 'dead'
        ELSE 'ready' END, owner = NULL, token = NULL, lease_expires_at = NULL,
        available_at = CASE WHEN d.attempts >= d.max_attempts THEN d.available_at ELSE d.enqueued_at END
        FROM gone WHERE d.id = gone.id RETURNING d.id, d.state)""",  # as "retire"
}
# A claim's choice (claim, pop, ack_lease): the first ``n`` ready (or expired, not used up) rows in
# delivery order (``chosen``, numbered ``k``); every other expired lease reclaimed (``reaped``).
_CHOOSE: Final = """r AS (SELECT d.id, d.priority FROM djq_task d, t WHERE d.queue = %(q)s
        AND d.state = 'ready' AND {available}{gate} ORDER BY d.priority DESC, d.id LIMIT %(n)s {lock}),
    x AS (SELECT d.id, d.priority FROM djq_task d, t WHERE {expired} AND d.attempts < d.max_attempts{gate}
        ORDER BY d.priority DESC, d.id LIMIT %(n)s {lock}),
    chosen AS (SELECT u.id, row_number() OVER (ORDER BY u.priority DESC, u.id) AS k
        FROM (SELECT * FROM r UNION ALL SELECT * FROM x) AS u ORDER BY u.priority DESC, u.id LIMIT %(n)s),
    gone AS (SELECT d.id FROM djq_task d, t WHERE {expired} AND d.id NOT IN (SELECT id FROM chosen){gate}
        {lock}),
    {reaped}"""
#: the leases of the chosen rows, for "claim" and "ack_lease"
_LEASED: Final = """leased AS (UPDATE djq_task d SET state = 'leased', attempts = d.attempts + 1,
        owner = %(owner)s, token = (%(tokens)s::text[])[chosen.k], lease_expires_at = t.now + %(duration)s,
        available_at = CASE WHEN d.state = 'leased' THEN d.enqueued_at ELSE d.available_at END
        FROM chosen, t WHERE d.id = chosen.id RETURNING {columns})"""
# ``{gate}``: AckLease claims only if its ack found the row, and never that row (expired unreclaimed, it acks)
_GATES: Final = {"ack_lease": " AND d.id <> %(id)s AND EXISTS (SELECT FROM a)"}  #: ``{gate}`` by key
_TEMPLATES: Final = {
    "claim": """WITH {now}, {choose}, {leased},
    n AS (SELECT 0 AS put, 0 AS acked, {dead} AS dead), {count}
    SELECT * FROM leased ORDER BY priority DESC, id""",
    # as state.pop: the claim's choice (n = 1) leaves at once, its delivery counted, acked
    "pop": """WITH {now}, {choose},
    popped AS (DELETE FROM djq_task d USING chosen WHERE d.id = chosen.id RETURNING d.id, d.payload,
        d.priority, 'done', d.attempts + 1, d.max_attempts, d.enqueued_at,
        CASE WHEN d.state = 'leased' THEN d.enqueued_at ELSE d.available_at END, NULL, NULL, NULL),
    n AS (SELECT 0 AS put, (SELECT count(*) FROM popped) AS acked, {dead} AS dead), {count}
    SELECT * FROM popped""",
    # as state.ack_lease: the ack, then a claim (n = 1) if it found its row (_after_ack reads the row)
    "ack_lease": """WITH {now}, a AS (DELETE FROM djq_task d WHERE {held} RETURNING d.id), {choose}, {leased},
    n AS (SELECT 0 AS put, (SELECT count(*) FROM a) AS acked, {dead} AS dead), {count}
    SELECT a.id, leased.* FROM a LEFT JOIN leased ON true""",
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
        FROM t WHERE {held} RETURNING d.state),
    n AS (SELECT 0 AS put, 0 AS acked, {dead} AS dead), {count}
    SELECT state, pg_notify(%(channel)s, '') FROM reaped""",
    # as state.release: ready at once, the delivery uncounted (never dead: attempts - 1 < max_attempts)
    "release": """WITH back AS (UPDATE djq_task d SET state = 'ready', attempts = greatest(d.attempts - 1, 0),
        available_at = d.enqueued_at, owner = NULL, token = NULL, lease_expires_at = NULL
        WHERE {held} RETURNING d.id)
    SELECT id, pg_notify(%(channel)s, '') FROM back""",
    "extend": """WITH {now} UPDATE djq_task d SET lease_expires_at = t.now + %(duration)s FROM t
    WHERE {held} RETURNING {columns}""",
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
    claim: {
        key: text.replace("{choose}", _CHOOSE)
        .replace("{leased}", _LEASED)
        .format(lock=lock, gate=_GATES.get(key, ""), **_PARTS)
        for key, text in _TEMPLATES.items()
    }
    for claim, lock in _LOCKING.items()
}


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One statement that runs an operation: its key, its parameters, and its rows -> the result."""

    key: str
    params: dict[str, Any]
    result: Callable[[list[Row]], R]


DUE: Final[Call[float | None]] = Call("due", {}, lambda rows: rows[0][0])  #: seconds to the next due time


@dataclass(frozen=True, slots=True, kw_only=True)
class Database:
    """One queue in one database as a client reaches it: its checked arguments and its statements."""

    config: QueueConfig
    name: str
    conninfo: str  #: libpq conninfo with djq's defaults (connect timeout, application name)
    shown: str  #: the URL without its password, for messages
    clock: Callable[[], float] | None
    statements: Mapping[str, str]

    @classmethod
    def of(
        cls, url: str, *, name: str, clock: Callable[[], float] | None, claim: str, options: dict[str, Any]
    ) -> Database:
        """Check a client's arguments (``ConfigError`` naming the field, before any I/O)."""
        _check_arguments(name, clock, claim, options)
        return cls(
            config=QueueConfig.from_options(path=Path(name), **options),
            name=name,
            conninfo=_conninfo(url, name),
            shown=_shown(url),
            clock=clock,
            statements=_STATEMENTS[claim],
        )

    @property
    def channel(self) -> str:
        """The channel waiting gets LISTEN on, and statements that make a task ready NOTIFY."""
        return f"djq_{self.name}"

    def statement(self, call: Call[Any]) -> tuple[str, dict[str, Any]]:
        """The text and the parameters (the queue's name, this statement's "now") of ``call``."""
        params = {"q": self.name, **call.params}
        params["now"] = None if self.clock is None else float(self.clock())
        return self.statements[call.key], params

    def error(self, exc: psycopg.Error) -> BrokerError:
        """The djq error for a psycopg error: ``BrokerUnavailable`` if the connection is lost."""
        if is_lost(exc):
            return self.unavailable(exc)
        return BrokerError(f"the PostgreSQL server at {self.shown} refused: {_first(exc)}")

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        """One line naming the server (never its password)."""
        return BrokerUnavailable(f"the PostgreSQL server at {self.shown} is unavailable: {_first(exc)}")


def is_lost(exc: psycopg.Error) -> bool:
    """Whether ``exc`` means the connection is gone (the next call must connect afresh)."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def is_ready(row: Row | None) -> bool:
    """Whether ``SETUP``'s row says both tables exist (else make ``SCHEMA`` under ``SCHEMA_LOCK``)."""
    return row is not None and bool(row[1])


def listen(channel: str) -> sql.Composed:
    """``LISTEN`` on ``channel``, quoted."""
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def time_left(deadline: float | None) -> float | None:
    """Seconds a waiting get may still sleep (``_SAFETY`` at most: then it looks); None when it is up."""
    left = _SAFETY if deadline is None else min(deadline - time.monotonic(), _SAFETY)
    return left if left > 0 else None


def pause(left: float, due: float | None) -> float:
    """Seconds to sleep before the next claim: until ``due`` (``DUE``'s result), at most ``left``."""
    return left if due is None else max(min(left, due), _MIN_PAUSE)


def plan(op: ops.Op[R], channel: str) -> Call[R]:
    """The statement that runs ``op`` (the queue's ``channel`` for its NOTIFY)."""
    made: Call[R] = _PLANS[type(op)](op, channel)
    return made


def _put(op: ops.Put | ops.PutMany, channel: str) -> Call[list[str]]:
    payloads = op.payloads if isinstance(op, ops.PutMany) else (op.payload,)
    texts = [json.dumps(p, ensure_ascii=False, separators=(",", ":")) for p in payloads]
    params = {"priority": op.priority, "delay": op.delay, "max_attempts": op.max_attempts}
    return Call(
        "put", {"payloads": texts, "channel": channel, **params}, lambda rows: [str(i) for i in rows[0][0]]
    )


def _lease(op: ops.LeaseNext | ops.LeaseMany, channel: str) -> Call[Any]:
    tokens = list(op.tokens) if isinstance(op, ops.LeaseMany) else [op.token]
    params = {"n": len(tokens), "tokens": tokens, "owner": op.owner, "duration": op.duration}

    def result(rows: list[Row]) -> Any:
        tasks = [_task(row) for row in rows]
        return tasks if isinstance(op, ops.LeaseMany) else (tasks[0] if tasks else None)

    return Call("claim", params, result)


def _after_ack(row: Row) -> Task | None:
    """AckLease's row (none when the ack found none): the acked id, the lease's columns (NULLs: none)."""
    return None if row[1] is None else _task(row[1:])


def _ack_many(leases: Sequence[tuple[str, str]]) -> Call[list[str]]:
    """Ack every held ``(id, token)``; the result: the ids whose lease was lost, as ``state.ack_many``."""

    def lost(rows: list[Row]) -> list[str]:
        held = {(str(i), token) for i, token in rows}
        found = []
        for pair in leases:
            if pair in held:
                held.discard(pair)  # a pair given twice is acked once: the second is lost
            else:
                found.append(pair[0])
        return found

    return Call("ack", {"ids": [_seq(i) for i, _ in leases], "tokens": [t for _, t in leases]}, lost)


def _ack(op: ops.Ack) -> Call[None]:
    acking = _ack_many([(op.id, op.token)])

    def result(rows: list[Row]) -> None:
        if acking.result(rows):
            raise LeaseLost(task_id=op.id, token=op.token)

    return Call(acking.key, acking.params, result)


def _held(
    key: str, op: ops.Nack | ops.Release | ops.Extend | ops.AckLease, make: Callable[[Row], R], **params: Any
) -> Call[R]:
    """Statement ``key`` on the task ``op`` holds; its row made a result, ``LeaseLost`` when there is none."""

    def result(rows: list[Row]) -> R:
        if not rows:
            raise LeaseLost(task_id=op.id, token=op.token)
        return make(rows[0])

    return Call(key, {"id": _seq(op.id), "token": op.token, **params}, result)


def _requeue(op: ops.Requeue, channel: str) -> Call[Task]:
    def result(rows: list[Row]) -> Task:
        if not rows:
            raise UnknownTask(f"no dead task with id {op.id!r}", task_id=op.id)
        return _task(rows[0])

    return Call("requeue", {"id": _seq(op.id), "channel": channel}, result)


_PLANS: Final[dict[type[ops.Op[Any]], Callable[[Any, str], Call[Any]]]] = {
    ops.Put: _put,
    ops.PutMany: _put,
    ops.LeaseNext: _lease,
    ops.LeaseMany: _lease,
    ops.Pop: lambda op, ch: Call("pop", {"n": 1}, lambda rows: _task(rows[0]) if rows else None),
    ops.AckLease: lambda op, ch: _held(
        "ack_lease", op, _after_ack, n=1, tokens=[op.next_token], owner=op.owner, duration=op.duration
    ),
    ops.Ack: lambda op, ch: _ack(op),
    ops.AckMany: lambda op, ch: _ack_many(op.leases),
    ops.Nack: lambda op, ch: _held("nack", op, lambda row: TaskState(row[0]), delay=op.delay, channel=ch),
    ops.Release: lambda op, ch: _held("release", op, lambda row: None, channel=ch),
    ops.Extend: lambda op, ch: _held("extend", op, _task, duration=op.duration),
    ops.Requeue: _requeue,
    ops.Purge: lambda op, ch: Call("purge", {"states": _values(op.states)}, lambda rows: rows[0][0]),
    ops.Reap: lambda op, ch: Call("reap", {}, lambda rows: [str(row[0]) for row in rows]),
    ops.Stats: lambda op, ch: Call("stats", {}, _stats),
    ops.Peek: lambda op, ch: Call("peek", {"limit": op.limit}, _tasks),
    ops.Dead: lambda op, ch: Call("dead", {}, _tasks),
    # the schema's CHECK constraints keep every row consistent: check() looks for the tables only
    ops.Check: lambda op, ch: Call("check", {}, lambda rows: [f"table {row[0]} is missing" for row in rows]),
}


def _task(row: Row) -> Task:
    """The ``Task`` of a row that starts with the ``columns`` of ``_PARTS``."""
    fields = dict(zip(_FIELDS, row, strict=False))
    fields.update(id=str(row[0]), payload=json.loads(row[1]), state=TaskState(row[3]))
    return Task(**fields)


def _tasks(rows: list[Row]) -> list[Task]:
    return [_task(row) for row in rows]


def _stats(rows: list[Row]) -> QueueStats:
    return QueueStats(**dict(zip(_STATS, rows[0], strict=True)))


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
