"""What the sync and async Redis clients share: the Lua script, the keys, each operation's codec, the checks.

``djq.redisq.RedisQueue`` (redis-py) and ``djq.aredisq.AsyncRedisQueue`` (``redis.asyncio``)
are two I/O shells around this module: each runs ``SCRIPT`` with the arguments ``CODEC``
builds, decodes its reply with ``CODEC``, and checks its arguments, URL and server with
the functions here. Nothing here does I/O.

Data layout: every key of a queue is under one hash tag, ``djq:{name}:``, so a queue
lives in one cluster slot and each script declares every key it touches (``KEYS``):

- ``meta``    HASH: ``seq`` (the last task id), ``put_total``, ``acked_total``, ``dead_total``;
- ``tasks``   HASH: task id -> the task's record, MessagePack (``cmsgpack``) of its fields,
  the payload as the JSON text the client wrote (never decoded in Lua);
- ``ready``   ZSET, every score 0: tasks that can be leased now, by member;
- ``delayed`` ZSET scored by ``available_at``: ready tasks that wait for their time;
- ``leases``  ZSET scored by ``lease_expires_at``: leased tasks;
- ``dead``    ZSET scored by ``seq``: the dead letters, in put order;
- ``wake``    LIST: wake-up tokens for waiting gets (at most ``WAKE_CAP``, expiring).

Every index member is ``rank`` (20 digits: ``2**63 - 1 - priority``: 64-bit priorities no
double could hold sort exactly) then ``seq`` (16 digits; the id is ``seq`` without its
zeros). Members of equal score sort by their bytes: the first of ``ready`` is the highest
priority, oldest task. Times are seconds (doubles, written with 17 digits: exact).

A claim (``get``/``get_many``) is one script: reclaim every lease expired by now (back to
ready, or to the dead letters when its attempts are used up), move the delayed tasks
that came due to ``ready``, then lease the first members of ``ready``. A pop is that claim
taking the first member for good (gone from every key, counted in ``acked_total``); an
ack-and-lease acks its lease, then (only if the ack held: else it changes nothing) claims.
A task is in one index at a time, and a script runs alone on the server: two clients never
lease one task.
A release puts a leased task back under its own member (its place in the order), ready at
once, its attempts lowered by the delivery it had.

Waking: a script pushes a token on ``wake`` when work is ready after it (a put, a nack, a
release, a claim that left tasks: the baton passes on) or when it moved the next due time
earlier (a new lease, a delayed put); a waiting get pops it (BLPOP). The list keeps
``WAKE_CAP`` tokens and expires ``WAKE_TTL_MS`` after its last push.
Imports from djq: ``errors``, ``model``, ``ops``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis import exceptions

from . import ops
from .errors import BrokerUnavailable, ConfigError, DjqError, LeaseLost, StorageError, UnknownTask
from .model import QueueConfig, QueueStats, Task, TaskState, refuse_file_options

__all__ = [
    "BLOCK_CHUNK",
    "CODEC",
    "CONNECT_TIMEOUT",
    "FAILURES",
    "KEYS",
    "REPLY_TIMEOUT",
    "SCRIPT",
    "WAKE_CAP",
    "WAKE_TTL_MS",
    "argv",
    "block_seconds",
    "check_durable",
    "client",
    "configure",
    "due",
    "durability_unknown",
    "failure",
    "rerun",
    "shown",
]

C = TypeVar("C")
CONNECT_TIMEOUT: Final = 5.0  #: seconds to connect to the server
REPLY_TIMEOUT: Final = 60.0  #: seconds a command may take to answer (a BLPOP blocks less)
BLOCK_CHUNK: Final = 30.0  #: seconds; the longest single BLPOP of a waiting get
WAKE_CAP: Final = 8  #: most wake-up tokens a queue's ``wake`` list keeps
WAKE_TTL_MS: Final = 60_000  #: the ``wake`` list expires this long after its last push
KEYS: Final = ("meta", "tasks", "ready", "delayed", "leases", "dead", "wake")  #: in ``SCRIPT``'s order
#: what redis-py raises for a server that is lost or refuses a call (``failure`` translates them)
FAILURES: Final = (exceptions.ConnectionError, exceptions.TimeoutError, exceptions.ResponseError)
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_FIELDS: Final = 11  #: values per task in a script's reply

#: ARGV: [1] the operation, [2] now ("" reads TIME), then the operation's arguments (``_CODEC``).
SCRIPT: Final = """
local META, TASKS, READY, DELAYED, LEASES, DEAD, WAKE = unpack(KEYS)
local call, op, now = redis.call, ARGV[1], tonumber(ARGV[2])
if not now then local t = call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local function num(x) return string.format('%.17g', x) end
local NOW = num(now)
local function id_of(m) return (string.gsub(string.sub(m, 21), '^0+', '')) end
local function load(id) local raw = call('HGET', TASKS, id); if raw then return cmsgpack.unpack(raw) end end
local function save(r) call('HSET', TASKS, r.id, cmsgpack.pack(r)) end
local function out(r, list)
  for _, v in ipairs({r.id, r.p, r.pri, r.st, num(r.a), num(r.ma), num(r.e), num(r.v),
                      r.o or '', r.tk or '', r.x and num(r.x) or ''}) do list[#list + 1] = v end
  return list
end
local function tasks(members)
  local list = {}
  for _, m in ipairs(members) do out(load(id_of(m)), list) end
  return list
end
local function first(key) return tonumber(call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) end
local function earliest()
  local d, l = first(DELAYED), first(LEASES)
  if d and l then return math.min(d, l) end
  return d or l
end
-- wake a waiting get: work is ready, or the next due time moved earlier than ``before``
local function signal(before)
  local after = earliest()
  if call('ZCARD', READY) > 0 or (after and (not before or after < before)) then
    call('RPUSH', WAKE, '1'); call('LTRIM', WAKE, -@CAP@, -1); call('PEXPIRE', WAKE, @TTL@)
  end
end
local function unlease(r, st) r.st, r.o, r.tk, r.x = st, nil, nil, nil end
local function make_ready(r, at)
  unlease(r, 'ready'); r.v = at
  if at <= r.e then call('ZADD', READY, 0, r.m) else call('ZADD', DELAYED, num(at), r.m) end
end
local function retire(r, at)
  call('ZREM', LEASES, r.m)
  if r.a < r.ma then make_ready(r, at)
  else unlease(r, 'dead'); call('ZADD', DEAD, num(r.seq), r.m); call('HINCRBY', META, 'dead_total', 1) end
  save(r)
end
local function held(id, token)
  local r = load(id)
  if r and r.st == 'leased' and r.tk == token then return r end
end
local function reap()
  local ms, ids = call('ZRANGEBYSCORE', LEASES, '-inf', NOW), {}
  table.sort(ms, function(a, b) return tonumber(string.sub(a, 21)) < tonumber(string.sub(b, 21)) end)
  for i, m in ipairs(ms) do local r = load(id_of(m)); retire(r, r.e); ids[i] = r.id end  -- available again
  return ids
end
local function lease(token, owner, expires)
  local m = call('ZRANGE', READY, 0, 0)[1]
  if not m then return nil end
  local r = load(id_of(m))
  r.st, r.a, r.o, r.tk, r.x = 'leased', r.a + 1, owner, token, expires
  call('ZREM', READY, m); call('ZADD', LEASES, num(expires), m); save(r)
  return r
end
local function ack(id, token)
  local r = held(id, token)
  if not r then return 0 end
  call('ZREM', LEASES, r.m); call('HDEL', TASKS, r.id); call('HINCRBY', META, 'acked_total', 1)
  return 1
end
local OPS = {}
function OPS.put()  -- rank, priority, delay, max_attempts, payloads...
  local before, ids = earliest(), {}
  for i = 7, #ARGV do
    local seq = call('HINCRBY', META, 'seq', 1)
    local r = {id = string.format('%d', seq), seq = seq, m = ARGV[3] .. string.format('%016d', seq),
               p = ARGV[i], pri = ARGV[4], a = 0, ma = tonumber(ARGV[6]), e = now}
    make_ready(r, now + tonumber(ARGV[5])); save(r); ids[#ids + 1] = r.id
  end
  call('HINCRBY', META, 'put_total', #ids); signal(before)
  return ids
end
-- a claim: reclaim, move the due delayed tasks to ready, then ``take`` (its tasks go in ``list``); wake
-- the next waiter if work is left. The reply starts with the seconds to the next due time ('': none)
local function claim(take)
  local list = {''}
  reap()
  for _, m in ipairs(call('ZRANGEBYSCORE', DELAYED, '-inf', NOW)) do
    call('ZREM', DELAYED, m); call('ZADD', READY, 0, m)
  end
  local before = earliest()
  take(list); signal(before)
  local due = earliest()
  if due then list[1] = num(due - now) end
  return list
end
local function lease_all(duration, owner, from)  -- a claim leasing one task per token ARGV[from], ...
  local expires = now + tonumber(duration)
  return claim(function(list)
    for i = from, #ARGV do
      local r = lease(ARGV[i], owner, expires)
      if not r then break end
      out(r, list)
    end
  end)
end
function OPS.lease() return lease_all(ARGV[3], ARGV[4], 5) end  -- duration, owner, tokens...
function OPS.pop()  -- a claim taking the first ready task for good: gone from every key, counted acked
  return claim(function(list)
    local m = call('ZRANGE', READY, 0, 0)[1]
    if not m then return end
    local r = load(id_of(m))
    r.st, r.a = 'done', r.a + 1
    call('ZREM', READY, m); call('HDEL', TASKS, r.id); call('HINCRBY', META, 'acked_total', 1)
    out(r, list)
  end)
end
function OPS.ack() return ack(ARGV[3], ARGV[4]) end
function OPS.ack_lease()  -- id, token, duration, owner, next token: {} (lease lost: no change), or a claim
  if ack(ARGV[3], ARGV[4]) == 0 then return {} end
  return lease_all(ARGV[5], ARGV[6], 7)
end
function OPS.ack_many()  -- id, token, id, token...
  local lost = {}
  for i = 3, #ARGV, 2 do if ack(ARGV[i], ARGV[i + 1]) == 0 then lost[#lost + 1] = ARGV[i] end end
  return lost
end
function OPS.nack()  -- id, token, delay
  local r, before = held(ARGV[3], ARGV[4]), earliest()
  if not r then return '' end
  local delay = tonumber(ARGV[5])
  retire(r, delay > 0 and now + delay or r.e); signal(before)  -- no delay: available whatever the clock
  return r.st
end
function OPS.release()  -- id, token: back at its place, ready at once, the delivery uncounted
  local r, before = held(ARGV[3], ARGV[4]), earliest()
  if not r then return 0 end
  r.a = math.max(r.a - 1, 0); call('ZREM', LEASES, r.m); make_ready(r, r.e); save(r); signal(before)
  return 1
end
function OPS.extend()  -- id, token, duration
  local r, before = held(ARGV[3], ARGV[4]), earliest()
  if not r then return {} end
  local expires = now + tonumber(ARGV[5])
  if r.x ~= expires then r.x = expires; call('ZADD', LEASES, num(expires), r.m); save(r); signal(before) end
  return out(r, {})
end
function OPS.requeue()  -- id
  local r, before = load(ARGV[3]), earliest()
  if not r or r.st ~= 'dead' then return {} end
  r.a = 0; call('ZREM', DEAD, r.m); make_ready(r, r.e); save(r); signal(before)
  return out(r, {})
end
function OPS.purge()  -- 'all', or 'some' and task states...
  local n = 0
  if ARGV[3] == 'all' then n = call('HLEN', TASKS); call('DEL', TASKS, READY, DELAYED, LEASES, DEAD) end
  local sets = {ready = {READY, DELAYED}, leased = {LEASES}, dead = {DEAD}}
  for i = 4, #ARGV do
    for _, key in ipairs(sets[ARGV[i]] or {}) do
      for _, m in ipairs(call('ZRANGE', key, 0, -1)) do call('HDEL', TASKS, id_of(m)); n = n + 1 end
      call('DEL', key)
    end
  end
  return n
end
function OPS.reap() local before = earliest(); local ids = reap(); signal(before); return ids end
function OPS.stats()
  local due, expired, bytes = call('ZCOUNT', DELAYED, '-inf', NOW), call('ZCOUNT', LEASES, '-inf', NOW), 0
  for _, key in ipairs(KEYS) do bytes = bytes + (call('MEMORY', 'USAGE', key) or 0) end
  local m = call('HMGET', META, 'put_total', 'acked_total', 'dead_total')
  return {call('ZCARD', READY) + due, call('ZCARD', DELAYED) - due, call('ZCARD', LEASES) - expired, expired,
          call('ZCARD', DEAD), tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(m[3]) or 0, bytes}
end
function OPS.peek()  -- limit: the available tasks in delivery order, then the delayed by time
  local limit, picked, i, j = tonumber(ARGV[3]), {}, 1, 1
  local a, b = call('ZRANGE', READY, 0, limit - 1), call('ZRANGEBYSCORE', DELAYED, '-inf', NOW)
  table.sort(b)  -- due but not yet moved to ready: merged by member (equal-width digits)
  while #picked < limit and (a[i] or b[j]) do
    if b[j] and (not a[i] or b[j] < a[i]) then picked[#picked + 1], j = b[j], j + 1
    else picked[#picked + 1], i = a[i], i + 1 end
  end
  if #picked < limit then
    local later = call('ZRANGEBYSCORE', DELAYED, '(' .. NOW, '+inf', 'LIMIT', 0, limit - #picked)
    for _, m in ipairs(later) do picked[#picked + 1] = m end
  end
  return tasks(picked)
end
function OPS.dead() return tasks(call('ZRANGE', DEAD, 0, -1)) end
function OPS.check()
  local stored, indexed = call('HLEN', TASKS), 0
  for _, key in ipairs({READY, DELAYED, LEASES, DEAD}) do indexed = indexed + call('ZCARD', key) end
  if stored == indexed then return {} end
  return {string.format('%d tasks are stored but %d are indexed', stored, indexed)}
end
return OPS[op]()
""".replace("@CAP@", str(WAKE_CAP)).replace("@TTL@", str(WAKE_TTL_MS))
_STATS: Final = (
    "ready", "delayed", "leased", "expired", "dead", "put_total", "acked_total", "dead_total", "file_bytes"
)  # fmt: skip


def _rank(priority: int) -> str:
    """Priority DESC as 20 digits: ``2**63 - 1 - priority``, from 0 up to ``2**64 - 1``."""
    return f"{(1 << 63) - 1 - priority:020d}"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _put(op: ops.Put | ops.PutMany) -> list[Any]:
    payloads = op.payloads if isinstance(op, ops.PutMany) else (op.payload,)
    return ["put", _rank(op.priority), str(op.priority), op.delay, op.max_attempts, *map(_json, payloads)]


def _task(f: list[bytes]) -> Task:
    """One task from its ``_FIELDS`` values in a script's reply."""
    return Task(
        id=f[0].decode(), payload=json.loads(f[1]), priority=int(f[2]), state=TaskState(f[3].decode()),
        attempts=int(f[4]), max_attempts=int(f[5]), enqueued_at=float(f[6]), available_at=float(f[7]),
        owner=f[8].decode() or None, token=f[9].decode() or None,
        lease_expires_at=float(f[10]) if f[10] else None,
    )  # fmt: skip


def _tasks(values: list[bytes]) -> list[Task]:
    return [_task(values[i : i + _FIELDS]) for i in range(0, len(values), _FIELDS)]


def _claimed(op: Any, reply: list[bytes]) -> Task | None:
    """The task of a claim's reply (after its seconds to the next due time), or None."""
    return next(iter(_tasks(reply[1:])), None)


def _held(op: Any, found: Any) -> Any:
    """``found`` unless the script reported the lease lost (an empty reply)."""
    if not found:
        raise LeaseLost(task_id=op.id, token=op.token)
    return found


def _dead_task(op: ops.Requeue, reply: list[bytes]) -> Task:
    if not reply:
        raise UnknownTask(f"no dead task with id {op.id!r}", task_id=op.id)
    return _task(reply)


def _ids(op: Any, reply: list[bytes]) -> list[str]:
    return [value.decode() for value in reply]


def _stats(op: Any, reply: list[int]) -> QueueStats:
    return QueueStats(**dict(zip(_STATS, map(int, reply), strict=True)))


_Args = Callable[[Any], list[Any]]
_Result = Callable[[Any, Any], Any]
#: Each operation: its script arguments (its Lua name first), and its result from the reply.
# fmt: off
CODEC: Final[dict[type[ops.Op[Any]], tuple[_Args, _Result]]] = {
    ops.Put: (_put, _ids),
    ops.PutMany: (_put, _ids),
    ops.LeaseNext: (lambda op: ["lease", op.duration, op.owner, op.token], _claimed),
    ops.LeaseMany: (lambda op: ["lease", op.duration, op.owner, *op.tokens], lambda op, r: _tasks(r[1:])),
    ops.Pop: (lambda op: ["pop"], _claimed),
    ops.Ack: (lambda op: ["ack", op.id, op.token], lambda op, reply: _held(op, reply) and None),
    ops.AckLease: (lambda op: ["ack_lease", op.id, op.token, op.duration, op.owner, op.next_token],
                   lambda op, reply: _claimed(op, _held(op, reply))),
    ops.AckMany: (lambda op: ["ack_many", *(part for pair in op.leases for part in pair)], _ids),
    ops.Nack: (lambda op: ["nack", op.id, op.token, op.delay],
               lambda op, reply: TaskState(_held(op, reply).decode())),
    ops.Release: (lambda op: ["release", op.id, op.token], lambda op, reply: _held(op, reply) and None),
    ops.Extend: (lambda op: ["extend", op.id, op.token, op.duration], lambda op, r: _task(_held(op, r))),
    ops.Requeue: (lambda op: ["requeue", op.id], _dead_task),
    ops.Purge: (lambda op: ["purge", "all"] if op.states is None else ["purge", "some", *sorted(op.states)],
                lambda op, reply: int(reply)),
    ops.Reap: (lambda op: ["reap"], _ids),
    ops.Stats: (lambda op: ["stats"], _stats),
    ops.Peek: (lambda op: ["peek", op.limit], lambda op, reply: _tasks(reply)),
    ops.Dead: (lambda op: ["dead"], lambda op, reply: _tasks(reply)),
    ops.Check: (lambda op: ["check"], _ids),
}
# fmt: on


def configure(name: str, clock: object, options: Mapping[str, Any]) -> tuple[QueueConfig, list[str]]:
    """Check a client's arguments; return its configuration and its queue's keys (``KEYS``' order).

    Raises:
        ConfigError: a bad name or clock, a file queue's option, a bad ``QueueConfig`` field.
    """
    if type(name) is not str or not _NAME.fullmatch(name):
        raise ConfigError(
            f"name must be 1 to 100 letters, digits, '_', '.' or '-', not {name!r:.80}", field="name"
        )
    if clock is not None and not callable(clock):
        raise ConfigError(f"clock must be None or a callable, not {clock!r:.80}", field="clock")
    refuse_file_options(options, "a Redis queue")
    config = QueueConfig.from_options(path=Path(f"djq:{{{name}}}"), **options)
    return config, [f"djq:{{{name}}}:{key}" for key in KEYS]


def client(from_url: Callable[..., C], url: str, retry: object) -> C:
    """``from_url(url)`` with its own pool, connect and reply timeouts, and ``retry`` (never retrying).

    ``retry`` is the client's ``Retry`` of no retries (sync and async redis-py each have one):
    a write that may have committed is never sent again.
    """
    try:
        return from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=REPLY_TIMEOUT, retry=retry,
            decode_responses=False,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a Redis URL: {shown(url)!r:.200} ({exc})", field="url") from None


def argv(args: list[Any], clock: Callable[[], float] | None) -> list[Any]:
    """One run's ARGV: the operation's name, now ("": the server's TIME), its arguments."""
    now = "" if clock is None else repr(float(clock()))
    return [args[0], now, *args[1:]]


def due(reply: list[Any]) -> float:
    """Seconds from a claim's "now" to the next delayed task or lease expiry (inf: none, or no claim)."""
    return float(reply[0]) if reply and reply[0] else math.inf


def rerun(op: ops.Op[Any], args: list[Any]) -> list[Any]:
    """The arguments of a waiting operation's next run: an ``AckLease``'s first run did its ack, so it leases.

    (Run again whole, its ack would find the task gone and raise ``LeaseLost``.)
    """
    if isinstance(op, ops.AckLease):
        return ["lease", op.duration, op.owner, op.next_token]
    return args


def block_seconds(left: float, until_due: float) -> float:
    """How long one BLPOP of a waiting get blocks: never past its timeout, the next due time, a chunk.

    Never 0 (that would block for ever): at least a millisecond.
    """
    return max(round(min(left, until_due, BLOCK_CHUNK), 3), 0.001)


def failure(exc: BaseException, where: str) -> DjqError:
    """The DjqError for one of ``FAILURES`` from the server at ``where`` (one line)."""
    if isinstance(exc, exceptions.ResponseError):
        return StorageError(
            f"the Redis server at {where} refused the call: {str(exc).strip()[:200]}", path=where
        )
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BrokerUnavailable(f"the Redis server at {where} is unavailable: {reason}")


_ADVICE: Final = "start it with --appendonly yes --appendfsync always, or open the queue with fsync=False"


def check_durable(found: Mapping[Any, Any], where: str) -> None:
    """Refuse ``fsync=True`` unless ``found`` (``CONFIG GET append*``) says every write is fsynced.

    Raises:
        ConfigError: ``appendonly`` is not ``yes`` or ``appendfsync`` not ``always``.
    """
    setting = {_str(k): _str(v) for k, v in found.items()}
    if setting.get("appendonly") != "yes" or setting.get("appendfsync") != "always":
        raise ConfigError(
            f"fsync=True, but the Redis server at {where} has appendonly "
            f"{setting.get('appendonly')} and appendfsync {setting.get('appendfsync')}: {_ADVICE}",
            field="fsync",
        )


def durability_unknown(refused: StorageError, where: str) -> ConfigError:
    """The error of ``fsync=True`` when the server refused ``CONFIG GET``: whether it fsyncs is unknown."""
    return ConfigError(
        f"fsync=True, but the Redis server at {where} refused CONFIG GET, so whether it "
        f"fsyncs every write is unknown ({refused.__cause__}): {_ADVICE}",
        field="fsync",
    )


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def shown(url: str) -> str:
    """``url`` with its password replaced by ``***`` (what error messages show)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<a malformed URL>"
