"""The rules of the queue, as pure transitions over plain data.

Two rules for this module: everything that decides a task's fate lives here, and it
knows nothing about files, locks, processes or clocks. Time comes in as ``now`` (wall
clock epoch seconds, read by the caller); lease tokens come in from the caller too.
``QueueState`` is mutated in place (for speed: the broker applies a batch and writes
once), but only by the functions here. A transition that raises leaves the state
exactly as it was. The heaps that find the next task and the expired leases without a
scan are ``index.Index`` (built on first use, kept in ``QueueState.index``).

Order: among ready tasks that are available (``available_at <= now``, or put without a
delay: ``available_at <= enqueued_at``, so a wall clock stepped back never holds back a
task nobody delayed; a task given back without a delay, by nack, requeue or an expired
lease, gets ``available_at = enqueued_at`` again), the highest ``priority`` first, FIFO
(by ``seq``) within a priority.
``attempts`` counts deliveries: every lease raises it, and a task whose lease expires or
is nacked after ``max_attempts`` deliveries goes to the dead letters instead of back to
ready (the SQS receive-count rule).

Example:
    >>> s = QueueState()
    >>> put(s, {"n": 1}, now=0.0).id
    '1'
    >>> task = lease(s, token="t1", owner="me", duration=30.0, now=1.0)
    >>> (task.id, task.attempts, task.lease_expires_at)
    ('1', 1, 31.0)
    >>> ack(s, "1", "t1", now=2.0)
    >>> (len(s.tasks), s.acked_total)
    (0, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from . import ops
from .errors import LeaseLost, UnknownTask
from .index import Index, available
from .model import DEFAULT_MAX_ATTEMPTS, JSON, MAX_LEASE_DURATION, QueueStats, Task, TaskState

__all__ = [
    "RULES",
    "QueueState",
    "Record",
    "ack",
    "ack_lease",
    "ack_many",
    "advance",
    "apply",
    "dead",
    "extend",
    "has_work",
    "lease",
    "lease_many",
    "nack",
    "next_deadline",
    "peek",
    "pop",
    "purge",
    "put",
    "put_many",
    "reap",
    "release",
    "requeue",
    "stats",
]


@dataclass(slots=True, kw_only=True)
class Record:
    """One task as the state holds it (mutable; ``Task`` is its frozen snapshot)."""

    id: str
    seq: int
    payload: JSON
    priority: int = 0
    state: TaskState = TaskState.READY
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    enqueued_at: float = 0.0
    available_at: float = 0.0
    owner: str | None = None
    token: str | None = None
    lease_expires_at: float | None = None

    def snapshot(self) -> Task:
        """Return the frozen ``Task`` a caller sees."""
        return Task(
            id=self.id,
            payload=self.payload,
            priority=self.priority,
            state=self.state,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            enqueued_at=self.enqueued_at,
            available_at=self.available_at,
            owner=self.owner,
            token=self.token,
            lease_expires_at=self.lease_expires_at,
        )

    def _release(self, state: TaskState) -> None:
        self.state = state
        self.owner = self.token = self.lease_expires_at = None


@dataclass(slots=True, kw_only=True)
class QueueState:
    """Every live task (ready, leased, dead) by id, in put order, and the counters."""

    tasks: dict[str, Record] = field(default_factory=dict)
    next_seq: int = 1
    put_total: int = 0
    acked_total: int = 0
    dead_total: int = 0
    revision: int = 0  #: raised by every transition that changes something
    index: Index | None = field(default=None, repr=False, compare=False)  #: built on first use


def _indexed(state: QueueState) -> Index:
    """Return the state's index (``index.Index``), building it from the tasks on first use."""
    if state.index is None:
        state.index = Index.build(state.tasks.values())
    return state.index


def apply(state: QueueState, op: ops.Op[Any], *, now: float) -> Any:
    """Apply one operation by its rule in ``RULES``; return the operation's result.

    A caller that needs to know whether anything changed compares ``state.revision``
    before and after (the journal writes exactly the operations that changed it).

    Raises:
        LeaseLost: ack, nack or extend with a token that no longer holds the task.
        UnknownTask: requeue of an id that is not in the dead letters.
        TypeError: ``op`` has no rule here (``check`` is the storage's, not a rule).
    """
    rule = RULES.get(type(op))
    if rule is None:
        raise TypeError(f"no rule for {op!r}")
    return rule(state, op, now)


def advance(state: QueueState, op: ops.Op[Any], *, now: float) -> None:
    """Apply one operation for its change alone, as a journal's replay does: ``apply`` without its result.

    The same change as ``apply`` (the same rule), without the snapshots a caller would get.
    """
    rule = _CHANGES.get(type(op)) or RULES.get(type(op))
    if rule is None:
        raise TypeError(f"no rule for {op!r}")
    rule(state, op, now)


def put(
    state: QueueState,
    payload: JSON,
    *,
    priority: int = 0,
    delay: float = 0.0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    now: float,
) -> Task:
    """Append a task; it can be leased from ``now + delay`` on. Returns its snapshot."""
    return put_many(state, (payload,), priority=priority, delay=delay, max_attempts=max_attempts, now=now)[0]


def put_many(
    state: QueueState,
    payloads: Iterable[JSON],
    *,
    priority: int = 0,
    delay: float = 0.0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    now: float,
) -> list[Task]:
    """Append several tasks in order; return their snapshots."""
    return [record.snapshot() for record in _add(state, payloads, priority, delay, max_attempts, now)]


def _add(
    state: QueueState, payloads: Iterable[JSON], priority: int, delay: float, max_attempts: int, now: float
) -> list[Record]:
    """Append tasks in order; return their records (``put_many`` without the snapshots)."""
    added = []
    for payload in payloads:
        seq = state.next_seq
        record = Record(
            id=str(seq),
            seq=seq,
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            enqueued_at=now,
            available_at=now + delay,
        )
        state.tasks[record.id] = record
        state.next_seq = seq + 1
        _indexed(state).ready(record)
        added.append(record)
    if added:
        state.put_total += len(added)
        state.revision += 1
    return added


def _retire(state: QueueState, record: Record, *, available_at: float) -> None:
    """Take a task off its lease: back to ready, or to the dead letters if used up.

    ``available_at`` is ``record.enqueued_at`` for a task given back without a delay:
    available whatever the clock says, as a task put without one.
    """
    if record.attempts >= record.max_attempts:
        record._release(TaskState.DEAD)
        state.dead_total += 1
    else:
        record._release(TaskState.READY)
        record.available_at = available_at
        _indexed(state).ready(record)


def reap(state: QueueState, *, now: float) -> list[str]:
    """Reclaim every lease that expired at or before ``now``; return the reclaimed ids.

    A lease that expires more than ``MAX_LEASE_DURATION`` after ``now`` (the wall clock
    stepped back since it was granted) is first clamped to ``now + MAX_LEASE_DURATION``: a
    clock stepped back makes a lease last longer, but never longer than the longest lease.
    """
    index = _indexed(state)
    limit = now + MAX_LEASE_DURATION
    clamped = index.beyond(state.tasks, limit)
    for record in clamped:  # each holds a token (``beyond`` says so)
        record.lease_expires_at = limit
        index.leased(record, limit, str(record.token))
    expired = index.expired(state.tasks, now)
    for record in expired:
        _retire(state, record, available_at=record.enqueued_at)  # it was available: it is again
    if expired or clamped:
        state.revision += 1
    return [r.id for r in expired]


def lease(state: QueueState, *, token: str, owner: str, duration: float, now: float) -> Task | None:
    """Reclaim expired leases, then lease the next ready task; None when none is ready."""
    record = _lease(state, token, owner, duration, now)
    return None if record is None else record.snapshot()


def _lease(state: QueueState, token: str, owner: str, duration: float, now: float) -> Record | None:
    """``lease`` without the snapshot: the record leased, or None."""
    expires_at = now + duration  # before any change: a bad duration must leave the state as it was
    reap(state, now=now)
    return _lease_ready(state, token, owner, expires_at, now)


def _lease_ready(state: QueueState, token: str, owner: str, expires_at: float, now: float) -> Record | None:
    """Lease the next ready task without reclaiming first (the caller just did, at this ``now``)."""
    index = _indexed(state)
    record = index.next_ready(state.tasks, now)
    if record is None:
        return None
    record.state = TaskState.LEASED
    record.attempts += 1
    record.owner = owner
    record.token = token
    record.lease_expires_at = expires_at
    index.leased(record, expires_at, token)
    state.revision += 1
    return record


def pop(state: QueueState, *, now: float) -> Task | None:
    """Reclaim expired leases, then take the next ready task for good; None when none is ready.

    At most once: the task leaves the queue in this same change (counted in ``acked_total``),
    so a consumer that dies holding it loses it. Its snapshot says ``DONE``, attempts raised.
    """
    reap(state, now=now)
    record = _indexed(state).next_ready(state.tasks, now)
    if record is None:
        return None
    record.attempts += 1
    del state.tasks[record.id]
    state.acked_total += 1
    state.revision += 1
    return replace(record.snapshot(), state=TaskState.DONE)


def ack_lease(
    state: QueueState, task_id: str, token: str, *, next_token: str, owner: str, duration: float, now: float
) -> Task | None:
    """Ack ``task_id`` under ``token``, then lease the next ready task: a consumer's step, in one change.

    Raises:
        LeaseLost: the token no longer holds the task; nothing changed (nothing is leased either).
    """
    ack(state, task_id, token, now=now)
    return lease(state, token=next_token, owner=owner, duration=duration, now=now)


def lease_many(
    state: QueueState, *, tokens: Iterable[str], owner: str, duration: float, now: float
) -> list[Task]:
    """Lease up to one task per token, in delivery order; fewer (or none) when fewer are ready.

    The same as a ``lease`` per token: after the first reclaim, none at this ``now`` finds
    anything more to reclaim (a lease granted here expires after ``now``, within the longest).
    """
    expires_at = now + duration
    reap(state, now=now)
    leased = []
    for token in tokens:
        record = _lease_ready(state, token, owner, expires_at, now)
        if record is None:
            break
        leased.append(record.snapshot())
    return leased


def ack_many(state: QueueState, leases: Iterable[tuple[str, str]], *, now: float) -> list[str]:
    """Ack every ``(id, token)`` whose lease still holds; return the ids whose lease was lost."""
    lost = []
    for task_id, token in leases:
        try:
            ack(state, task_id, token, now=now)
        except LeaseLost:
            lost.append(task_id)
    return lost


def _held(state: QueueState, task_id: str, token: str) -> Record:
    record = state.tasks.get(task_id)
    if record is None or record.state is not TaskState.LEASED or record.token != token:
        raise LeaseLost(task_id=task_id, token=token)
    return record


def ack(state: QueueState, task_id: str, token: str, *, now: float) -> None:
    """Finish a leased task: it leaves the queue for good.

    A lease that expired but was not reclaimed yet still holds: its ack succeeds.

    Raises:
        LeaseLost: the token no longer holds the task.
    """
    _held(state, task_id, token)
    del state.tasks[task_id]
    state.acked_total += 1
    state.revision += 1


def nack(state: QueueState, task_id: str, token: str, *, delay: float = 0.0, now: float) -> TaskState:
    """Give a leased task back; return its new state (``READY``, or ``DEAD`` when used up).

    Raises:
        LeaseLost: the token no longer holds the task.
    """
    record = _held(state, task_id, token)
    _retire(state, record, available_at=now + delay if delay else record.enqueued_at)
    state.revision += 1
    return record.state


def release(state: QueueState, task_id: str, token: str, *, now: float) -> None:
    """Give a leased task back uncounted: ready at once, ``attempts`` lowered by the delivery it had.

    For a client that leased a task it never handed to a handler (a cancelled get, a
    consumer stopping): the task is where it was before that lease, never dead for it.

    Raises:
        LeaseLost: the token no longer holds the task.
    """
    record = _held(state, task_id, token)
    record.attempts = max(record.attempts - 1, 0)
    _retire(state, record, available_at=record.enqueued_at)
    state.revision += 1


def extend(state: QueueState, task_id: str, token: str, *, duration: float, now: float) -> Task:
    """Renew a lease: it now expires ``duration`` seconds after ``now``.

    Raises:
        LeaseLost: the token no longer holds the task.
    """
    record = _held(state, task_id, token)
    expires_at = now + duration
    if record.lease_expires_at != expires_at:  # an identical renewal changes nothing
        record.lease_expires_at = expires_at
        _indexed(state).leased(record, expires_at, token)
        state.revision += 1
    return record.snapshot()


def requeue(state: QueueState, task_id: str, *, now: float) -> Task:
    """Move a dead task back to ready at once, its attempts reset to 0.

    Raises:
        UnknownTask: no dead task has this id.
    """
    record = state.tasks.get(task_id)
    if record is None or record.state is not TaskState.DEAD:
        raise UnknownTask(f"no dead task with id {task_id!r}", task_id=task_id)
    record.state = TaskState.READY
    record.attempts = 0
    record.available_at = record.enqueued_at  # available at once, whatever the clock
    _indexed(state).ready(record)
    state.revision += 1
    return record.snapshot()


def purge(state: QueueState, *, states: frozenset[TaskState] | None = None, now: float) -> int:
    """Remove every task (or every task in ``states``); return how many were removed."""
    doomed = [r.id for r in state.tasks.values() if states is None or r.state in states]
    for task_id in doomed:
        del state.tasks[task_id]
    if doomed:
        state.revision += 1
    return len(doomed)


def peek(state: QueueState, limit: int, *, now: float) -> list[Task]:
    """Return up to ``limit`` ready tasks in delivery order, delayed ones last; change nothing."""
    ready = [r for r in state.tasks.values() if r.state is TaskState.READY and available(r, now)]
    later = [r for r in state.tasks.values() if r.state is TaskState.READY and not available(r, now)]
    ready.sort(key=lambda r: (-r.priority, r.seq))
    later.sort(key=lambda r: (r.available_at, -r.priority, r.seq))
    return [r.snapshot() for r in (ready + later)[: max(limit, 0)]]


def dead(state: QueueState) -> list[Task]:
    """Return the dead letters in put order."""
    return [r.snapshot() for r in state.tasks.values() if r.state is TaskState.DEAD]


def has_work(state: QueueState, *, now: float) -> bool:
    """True if a lease at ``now`` would get a task: one is ready, or a lease has expired."""
    return _indexed(state).has_work(state.tasks, now)


def next_deadline(state: QueueState, *, now: float) -> float | None:
    """Return the earliest moment after ``now`` the state can change by itself, or None.

    That is the first ``available_at`` of a delayed task or ``lease_expires_at`` of a
    lease. A waiting consumer need not look again before then unless the file changed.
    """
    return _indexed(state).next_deadline(state.tasks, now)


def stats(state: QueueState, *, now: float, file_bytes: int = 0) -> QueueStats:
    """Count the tasks in each state at ``now``."""
    ready = delayed = leased = expired = dead_ = 0
    for r in state.tasks.values():
        if r.state is TaskState.READY:
            if available(r, now):
                ready += 1
            else:
                delayed += 1
        elif r.state is TaskState.LEASED:
            if r.lease_expires_at is not None and r.lease_expires_at <= now:
                expired += 1
            else:
                leased += 1
        else:
            dead_ += 1
    return QueueStats(
        ready=ready,
        delayed=delayed,
        leased=leased,
        expired=expired,
        dead=dead_,
        put_total=state.put_total,
        acked_total=state.acked_total,
        dead_total=state.dead_total,
        file_bytes=file_bytes,
    )


# Each operation's rule: the table ``apply`` dispatches on. A rule returns the operation's result.


def _put_ids(state: QueueState, op: ops.Put | ops.PutMany, now: float) -> list[str]:
    payloads = op.payloads if isinstance(op, ops.PutMany) else (op.payload,)
    return [record.id for record in _add(state, payloads, op.priority, op.delay, op.max_attempts, now)]


RULES: Final[dict[type[ops.Op[Any]], Callable[[QueueState, Any, float], Any]]] = {
    ops.Put: _put_ids,
    ops.PutMany: _put_ids,
    ops.LeaseNext: lambda s, op, now: lease(s, token=op.token, owner=op.owner, duration=op.duration, now=now),
    ops.LeaseMany: lambda s, op, now: lease_many(
        s, tokens=op.tokens, owner=op.owner, duration=op.duration, now=now
    ),
    ops.Pop: lambda s, op, now: pop(s, now=now),
    ops.AckLease: lambda s, op, now: ack_lease(
        s, op.id, op.token, next_token=op.next_token, owner=op.owner, duration=op.duration, now=now
    ),
    ops.Ack: lambda s, op, now: ack(s, op.id, op.token, now=now),
    ops.AckMany: lambda s, op, now: ack_many(s, op.leases, now=now),
    ops.Nack: lambda s, op, now: nack(s, op.id, op.token, delay=op.delay, now=now),
    ops.Release: lambda s, op, now: release(s, op.id, op.token, now=now),
    ops.Extend: lambda s, op, now: extend(s, op.id, op.token, duration=op.duration, now=now),
    ops.Requeue: lambda s, op, now: requeue(s, op.id, now=now),
    ops.Purge: lambda s, op, now: purge(s, states=op.states, now=now),
    ops.Reap: lambda s, op, now: reap(s, now=now),
    ops.Stats: lambda s, op, now: stats(s, now=now),
    ops.Peek: lambda s, op, now: peek(s, op.limit, now=now),
    ops.Dead: lambda s, op, now: dead(s),
}
#: Rules whose result ``advance`` does not build: a lease's snapshot of the task it leased.
_CHANGES: Final[dict[type[ops.Op[Any]], Callable[[QueueState, Any, float], Any]]] = {
    ops.LeaseNext: lambda s, op, now: _lease(s, op.token, op.owner, op.duration, now),
    ops.AckLease: lambda s, op, now: _ack_lease(s, op, now),
}


def _ack_lease(state: QueueState, op: ops.AckLease, now: float) -> None:
    """``ack_lease`` without the snapshot of the task it leased."""
    ack(state, op.id, op.token, now=now)
    _lease(state, op.next_token, op.owner, op.duration, now)
