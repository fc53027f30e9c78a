"""The one client API: the queue's methods, written once over one seam.

``BaseQueue`` holds every user method (put, put_many, get, get_many, pop, ack, ack_many,
ack_and_get, nack, release, extend, requeue, purge, stats, peek, dead, check). Each
resolves its defaults, lease tokens and owner here, builds one operation of ``djq.ops``
(validated when built, before any lock, socket or query) and hands it to the seam::

    _submit(op, wait=0.0) -> the operation's result

A transport is a subclass that implements ``_submit``, ``config`` and ``close``: the
direct ``Queue`` runs the operation in the file engine; ``BrokerClient`` sends it to the
broker. A server backend (PostgreSQL, Redis) executes the operation itself, in SQL or
Lua: it needs no djq state machine, only the contract (``tests/test_contract.py``).
``wait`` is how long a leasing operation may wait for a task (0: not at all; None: as
long as it takes); every other operation is submitted with 0.

Imports from djq: ``errors``, ``model``, ``ops``, ``process``.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import ops, process
from .errors import ConfigError
from .model import JSON, MAX_TIMEOUT, Lease, QueueConfig, QueueStats, Task, TaskState, check_seconds

__all__ = ["BaseQueue", "new_token"]

R = TypeVar("R")


def new_token() -> str:
    """Return a fresh lease token: 16 hex digits from ``os.urandom`` (what ``secrets`` reads)."""
    return os.urandom(8).hex()


def new_tokens(n: int) -> tuple[str, ...]:
    """Return ``n`` fresh lease tokens, as ``new_token`` makes them, from one read of ``os.urandom``."""
    digits = os.urandom(8 * n).hex()
    return tuple(digits[i : i + 16] for i in range(0, 16 * n, 16))


class BaseQueue(abc.ABC):
    """The queue's methods; a subclass supplies the transport (``_submit``, ``config``, ``close``).

    Delivery is at-least-once: a leased task that is not acked before its lease expires
    is delivered again, its ``attempts`` raised; after ``max_attempts`` deliveries it goes
    to the dead letters. Calls are safe from several threads.
    """

    @property
    @abc.abstractmethod
    def config(self) -> QueueConfig:
        """The queue's configuration (lease, max_attempts, payload limit, ...)."""

    @property
    def path(self) -> Path:
        """The queue file."""
        return self.config.path

    @abc.abstractmethod
    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Run one operation; return its result (the seam every transport implements)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what this client holds open; the queue itself carries on."""

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, payload: JSON, *, priority: int = 0, delay: float = 0.0) -> str:
        """Add a task; return its id once it is stored (and durable, with ``fsync``).

        Args:
            payload: any JSON value that survives an orjson round trip unchanged.
            priority: higher is delivered first; FIFO within a priority.
            delay: seconds before the task can be leased.

        Raises:
            PayloadError: the payload is not storable; nothing was touched.
            StorageError: the queue could not be read or written; it is unchanged.
        """
        return self.put_many([payload], priority=priority, delay=delay)[0]

    def put_many(self, payloads: Iterable[JSON], *, priority: int = 0, delay: float = 0.0) -> list[str]:
        """Add several tasks in one operation (one lock, one write); return their ids in order."""
        op = _put_many(self.config, payloads, priority, delay)
        return [] if op is None else self._submit(op)

    def get(
        self, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> Task | None:
        """Lease the next task; return it, or None when none came in time.

        Args:
            lease: seconds the lease lasts; None uses the queue's default.
            timeout: 0 does not wait; None waits until a task comes; a number waits up to
                that many seconds (at most a year: infinity is refused, pass None).
            owner: who holds the lease, stored with it: a printable string of 1 to 200
                characters (default ``pid-<pid>``).
        """
        return self._submit(_lease_next(self.config, lease, owner), wait=_timeout(timeout))

    def pop(self, *, timeout: float | None = 0.0) -> Task | None:
        """Take the next task for good, at most once: it leaves the queue in this same write.

        No lease and no ack: what diskcache's ``popleft`` and Redis's ``LPOP`` give. A consumer
        that dies (or a call cancelled) while holding a popped task loses it; use ``get`` and
        ``ack`` for at-least-once. The task comes back with state ``DONE``, ``attempts`` raised.
        ``timeout`` as for ``get``.
        """
        return self._submit(ops.Pop(), wait=_timeout(timeout))

    def ack_and_get(
        self,
        task: Task | Lease,
        *,
        lease: float | None = None,
        timeout: float | None = 0.0,
        owner: str | None = None,
    ) -> Task | None:
        """Ack ``task`` and lease the next task in one operation: a consumer's step, one lock and one write.

        The ack happens at once (``LeaseLost`` if it cannot, and then nothing is leased);
        if no task is ready, the get waits up to ``timeout`` (as ``get``) after it.
        """
        op = _ack_lease(self.config, task, lease, owner)
        wait = _timeout(timeout)  # checked before anything is submitted
        found = self._submit(op)
        return found if found is not None or wait == 0 else self._submit(_then_lease(op), wait=wait)

    def get_many(
        self, n: int, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> list[Task]:
        """Lease up to ``n`` tasks at once, each with its own lease; [] when none came in time.

        Waits (``timeout`` as for ``get``) only until at least one task can be leased.
        """
        return self._submit(_lease_many(self.config, n, lease, owner), wait=_timeout(timeout))

    def ack(self, task: Task | Lease) -> None:
        """Finish a leased task: it is never delivered again.

        Raises:
            LeaseLost: the lease expired and the task was leased again (or acked, nacked,
                requeued, purged). Nothing changed.
        """
        self._submit(ops.Ack(id=_id(task), token=_token(task)))

    def ack_many(self, tasks: Iterable[Task | Lease]) -> list[str]:
        """Ack several leased tasks at once; return the ids whose lease was lost (not acked)."""
        op = _ack_many(tasks)
        return [] if op is None else self._submit(op)

    def nack(self, task: Task | Lease, *, delay: float = 0.0) -> TaskState:
        """Give a leased task back; return ``READY``, or ``DEAD`` if its attempts are used up.

        Args:
            task: the leased task.
            delay: seconds before it can be leased again.

        Raises:
            LeaseLost: the token no longer holds the task.
        """
        return self._submit(ops.Nack(id=_id(task), token=_token(task), delay=delay))

    def release(self, task: Task | Lease) -> None:
        """Give a leased task back as if it was never delivered: ready at once, the attempt uncounted.

        For a task this client leased but never started on (a consumer stopping, a
        cancelled get): unlike ``nack`` it never sends the task to the dead letters.

        Raises:
            LeaseLost: the token no longer holds the task.
        """
        self._submit(ops.Release(id=_id(task), token=_token(task)))

    def extend(self, task: Task | Lease, *, lease: float | None = None) -> Task:
        """Renew a lease for ``lease`` seconds from now; return the renewed task.

        Raises:
            LeaseLost: the token no longer holds the task.
        """
        return self._submit(_extend(self.config, task, lease))

    def requeue(self, task_id: str) -> Task:
        """Move a dead task back to ready with its attempts reset; return it.

        Raises:
            UnknownTask: no dead task has this id.
        """
        return self._submit(ops.Requeue(id=task_id))

    def purge(self, *, dead_only: bool = False) -> int:
        """Remove every task (or only the dead letters); return how many were removed."""
        return self._submit(_purge(dead_only))

    def stats(self) -> QueueStats:
        """Count the tasks in each state."""
        return self._submit(ops.Stats())

    def peek(self, limit: int = 10) -> list[Task]:
        """Return up to ``limit`` ready tasks in delivery order, without leasing them."""
        return self._submit(ops.Peek(limit=limit))

    def dead(self) -> list[Task]:
        """Return the dead letters."""
        return self._submit(ops.Dead())

    def check(self, *, fix: bool = False) -> list[str]:
        """Validate the stored queue; return the problems, one line each (empty when healthy).

        Never repairs anything unless ``fix``; then only what is safe (temp files left by
        crashed writers, a torn last journal line). Corruption is reported, never rewritten.
        """
        return self._submit(ops.Check(fix=fix))


# What each method submits, built once for this API and ``djq.aio``'s coroutines. Every
# argument is checked here or by the operation as it is built: before any lock or socket.


def _put_many(
    config: QueueConfig, payloads: Iterable[JSON], priority: int, delay: float
) -> ops.PutMany | None:
    """The put of ``payloads`` (each checked and copied); None when there are none."""
    limit = config.max_payload_bytes
    copies = tuple(ops.check_payload(p, max_bytes=limit) for p in _many(payloads, "payloads"))
    if not copies:
        return None
    return ops.PutMany(payloads=copies, priority=priority, delay=delay, max_attempts=config.max_attempts)


def _lease_next(config: QueueConfig, lease: float | None, owner: str | None) -> ops.LeaseNext:
    return ops.LeaseNext(token=new_token(), owner=_owner(owner), duration=_duration(config, lease))


def _lease_many(config: QueueConfig, n: int, lease: float | None, owner: str | None) -> ops.LeaseMany:
    if type(n) is not int or not 1 <= n <= ops.MAX_BATCH:
        raise ConfigError(f"n must be an integer from 1 to {ops.MAX_BATCH}, not {n!r}", field="n")
    tokens = new_tokens(n)
    return ops.LeaseMany(tokens=tokens, owner=_owner(owner), duration=_duration(config, lease))


def _ack_lease(
    config: QueueConfig, task: Task | Lease, lease: float | None, owner: str | None
) -> ops.AckLease:
    return ops.AckLease(
        id=_id(task),
        token=_token(task),
        next_token=new_token(),
        owner=_owner(owner),
        duration=_duration(config, lease),
    )


def _then_lease(op: ops.AckLease) -> ops.LeaseNext:
    """The waiting part of ``ack_and_get``: the lease ``op`` asked for, alone (its ack is done)."""
    return ops.LeaseNext(token=op.next_token, owner=op.owner, duration=op.duration)


def _ack_many(tasks: Iterable[Task | Lease]) -> ops.AckMany | None:
    leases = []
    for t in _many(tasks, "tasks"):
        if type(t) is not Task or t.token is None:  # the common case in one test; else the checks
            _token(t)
        leases.append((t.id, t.token))
    return ops.AckMany(leases=tuple(leases)) if leases else None


def _extend(config: QueueConfig, task: Task | Lease, lease: float | None) -> ops.Extend:
    return ops.Extend(id=_id(task), token=_token(task), duration=_duration(config, lease))


def _purge(dead_only: bool) -> ops.Purge:
    if type(dead_only) is not bool:  # a None or 0 must never mean "every task"
        raise ConfigError(f"dead_only must be True or False, not {dead_only!r:.80}", field="dead_only")
    return ops.Purge(states=frozenset({TaskState.DEAD}) if dead_only else None)


def _duration(config: QueueConfig, lease: float | None) -> float:
    return config.lease if lease is None else lease


def _owner(owner: str | None) -> str:
    """The lease's owner: the one given (checked by the operation), or ``pid-<pid>`` for None."""
    return f"pid-{process.pid()}" if owner is None else owner


def _timeout(timeout: float | None) -> float | None:
    """Check a get's timeout: 0 up to a year; None (never infinity) waits as long as it takes."""
    check_seconds("timeout", timeout, low=0.0, high=MAX_TIMEOUT, forever=True)
    return timeout


def _many(values: Iterable[Any], name: str) -> Iterable[Any]:
    """``values`` if it is a collection of items; a string, bytes, mapping or non-iterable is refused."""
    if type(values) is list or type(values) is tuple:  # the common case, without the ABC checks below
        return values
    if isinstance(values, str | bytes | bytearray | memoryview | Mapping) or not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a list (or another iterable), not {values!r:.80}", field=name)
    return values


def _id(task: Task | Lease) -> str:
    _check_task(task)
    return task.id


def _token(task: Task | Lease) -> str:
    _check_task(task)
    if task.token is None:
        raise ConfigError(f"task {task.id!r:.80} is not leased: pass the task get() returned", field="task")
    return task.token


def _check_task(task: object) -> None:
    if not isinstance(task, Task | Lease):
        raise ConfigError(f"task must be a Task from get() or a Lease, not {task!r:.80}", field="task")
