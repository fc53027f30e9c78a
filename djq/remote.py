"""``BrokerClient``: the queue's methods, served by a broker instead of the file lock.

``djq.connect(path)`` returns one. It has ``Queue``'s methods and semantics, so
``Producer``, ``Consumer`` and the simulation work with either; the same errors come back
(``LeaseLost``, ``ConfigError``, ``StorageError``, ...), rebuilt from their data. Arguments
are checked here first, exactly as ``Queue`` checks them, so a bad one fails without a
round trip. A client whose broker is gone raises ``BrokerUnavailable`` at once (the
socket closes when the broker dies); the next call connects again, so work continues
once a broker is back. Imports from djq: ``errors``, ``model``, ``storage``, ``wire``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from multiprocessing import AuthenticationError
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any, Final

from . import wire
from .errors import BrokerProtocolError, BrokerUnavailable, ConfigError
from .model import (
    DEFAULT_QUEUE_PATH,
    JSON,
    MAX_LEASE_DURATION,
    MIN_LEASE_DURATION,
    EventType,
    Lease,
    QueueConfig,
    QueueStats,
    Task,
    TaskState,
    check_priority,
    check_seconds,
)
from .storage import check_payload

__all__ = ["DEFAULT_REPLY_TIMEOUT", "BrokerClient", "connect"]

DEFAULT_REPLY_TIMEOUT: Final = 60.0  #: seconds a call waits for its reply (beyond a get's own wait)


def connect(
    path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH, *, timeout: float = DEFAULT_REPLY_TIMEOUT
) -> BrokerClient:
    """Connect to the broker serving ``path``; return a client with ``Queue``'s methods.

    Raises:
        BrokerUnavailable: no broker serves this file (start one: ``djq broker start``).
    """
    client = BrokerClient(path, timeout=timeout)
    client.ping()
    return client


class BrokerClient:
    """A queue whose calls a broker serves. Thread-safe; reconnects in a forked child.

    Args:
        path: the queue file the broker serves.
        timeout: seconds to wait for a reply before giving up on the broker
            (``BrokerUnavailable``); a waiting ``get`` adds its own timeout to this.
    """

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH, *, timeout: float = DEFAULT_REPLY_TIMEOUT
    ) -> None:
        """Describe the client; it connects at the first call."""
        check_seconds("timeout", timeout, low=0.0, high=math.inf)
        self._paths = wire.broker_paths(path)
        self._timeout = timeout
        self._conn: mpc.Connection | None = None
        self._mutex = threading.Lock()
        self._pid = os.getpid()
        self._config: QueueConfig | None = None

    @property
    def path(self) -> Path:
        """The queue file."""
        return self._paths.queue

    @property
    def config(self) -> QueueConfig:
        """The broker's queue configuration (asked once)."""
        if self._config is None:
            self.ping()
        return self._config  # type: ignore[return-value]  # ping set it

    def __repr__(self) -> str:
        return f"BrokerClient({str(self.path)!r})"

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the broker and the queue carry on."""
        with self._mutex:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> mpc.Connection:
        paths = self._paths
        try:
            key = bytes.fromhex(paths.key.read_text())
            return mpc.Client(str(paths.socket), family="AF_UNIX", authkey=key)
        except (OSError, ValueError, EOFError) as exc:
            raise BrokerUnavailable(
                f"no broker serves {paths.queue} ({type(exc).__name__}: {exc}); "
                f"start one with: djq --queue {paths.queue} broker start"
            ) from None
        except AuthenticationError as exc:
            raise BrokerUnavailable(f"the broker at {paths.socket} refused this client: {exc}") from None

    def _call(self, op: EventType, wait: float | None = 0.0, **args: JSON) -> Any:
        """Send one request and return its reply's value (or raise the error it carries)."""
        data = wire.encode_request(op, **args)
        limit = None if wait is None else wait + self._timeout
        with self._mutex:
            if self._pid != os.getpid():  # forked: never share the parent's connection
                self._conn, self._pid = None, os.getpid()
            conn = self._conn or self._connect()
            self._conn = conn
            try:
                conn.send_bytes(data)
                if not conn.poll(limit):
                    self._disconnect()  # a late reply must never answer the next call
                    raise BrokerUnavailable(
                        f"the broker at {self._paths.socket} did not reply within {limit:g} s"
                    )
                reply = conn.recv_bytes(wire.MAX_MESSAGE_BYTES)
            except (EOFError, OSError) as exc:
                self._disconnect()
                raise BrokerUnavailable(
                    f"lost the broker at {self._paths.socket}: {type(exc).__name__}"
                ) from None
        return wire.decode_reply(reply)

    # The queue's methods

    def ping(self) -> dict[str, Any]:
        """Return the broker's ``info()``: pid, address, start time, config, clients, waiting gets."""
        info = self._call(EventType.PING)
        if not isinstance(info, dict):
            raise BrokerProtocolError(f"a ping was answered with {info!r:.100}")
        self._config = QueueConfig(**info["config"])
        return info

    def put(self, payload: JSON, *, priority: int = 0, delay: float = 0.0) -> str:
        """Add a task; return its id once the broker has written it (see ``Queue.put``)."""
        return self.put_many([payload], priority=priority, delay=delay)[0]

    def put_many(self, payloads: Iterable[JSON], *, priority: int = 0, delay: float = 0.0) -> list[str]:
        """Add several tasks in one request (and one write); return their ids in order."""
        check_priority(priority)
        check_seconds("delay", delay, low=0.0, high=math.inf)
        limit = self.config.max_payload_bytes
        copies = [check_payload(p, max_bytes=limit) for p in payloads]
        if not copies:
            return []
        return list(self._call(EventType.PUT_MANY, payloads=copies, priority=priority, delay=delay))

    def get(
        self, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> Task | None:
        """Lease the next task, or return None when none came in time (see ``Queue.get``).

        A waiting get waits in the broker, which answers as soon as a task comes.
        """
        check_seconds("lease", lease, low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)
        check_seconds("timeout", timeout, low=0.0, high=math.inf)
        holder = owner or f"pid-{os.getpid()}"
        task = self._call(EventType.LEASE, wait=timeout, lease=lease, timeout=timeout, owner=holder)
        return None if task is None else wire.task_from_json(task)

    def get_many(
        self, n: int, *, lease: float | None = None, timeout: float | None = 0.0, owner: str | None = None
    ) -> list[Task]:
        """Lease up to ``n`` tasks in one request; [] when none came in time (see ``Queue.get_many``)."""
        if type(n) is not int or n < 1:
            raise ConfigError(f"n must be a positive integer, not {n!r}", field="n")
        check_seconds("lease", lease, low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)
        check_seconds("timeout", timeout, low=0.0, high=math.inf)
        holder = owner or f"pid-{os.getpid()}"
        tasks = self._call(
            EventType.LEASE_MANY, wait=timeout, n=n, lease=lease, timeout=timeout, owner=holder
        )
        return [wire.task_from_json(t) for t in tasks]

    def ack_many(self, tasks: Iterable[Task | Lease]) -> list[str]:
        """Ack several tasks in one request; return the ids whose lease was lost (not acked)."""
        leases = [[t.id, _token(t)] for t in tasks]
        if not leases:
            return []
        return [str(i) for i in self._call(EventType.ACK_MANY, leases=leases)]

    def ack(self, task: Task | Lease) -> None:
        """Finish a leased task (raises ``LeaseLost`` if the token no longer holds it)."""
        self._call(EventType.ACK, id=task.id, token=_token(task))

    def nack(self, task: Task | Lease, *, delay: float = 0.0) -> TaskState:
        """Give a leased task back; return ``READY``, or ``DEAD`` if its attempts are used up."""
        check_seconds("delay", delay, low=0.0, high=math.inf)
        return TaskState(self._call(EventType.NACK, id=task.id, token=_token(task), delay=delay))

    def extend(self, task: Task | Lease, *, lease: float | None = None) -> Task:
        """Renew a lease for ``lease`` seconds from now; return the renewed task."""
        check_seconds("lease", lease, low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)
        return wire.task_from_json(self._call(EventType.EXTEND, id=task.id, token=_token(task), lease=lease))

    def requeue(self, task_id: str) -> Task:
        """Move a dead task back to ready with its attempts reset; return it."""
        return wire.task_from_json(self._call(EventType.REQUEUE, id=task_id))

    def purge(self, *, dead_only: bool = False) -> int:
        """Remove every task (or only the dead letters); return how many were removed."""
        return int(self._call(EventType.PURGE, dead_only=dead_only))

    def stats(self) -> QueueStats:
        """Count the tasks in each state."""
        return wire.stats_from_json(self._call(EventType.STATS))

    def peek(self, limit: int = 10) -> list[Task]:
        """Return up to ``limit`` ready tasks in delivery order, without leasing them."""
        return [wire.task_from_json(t) for t in self._call(EventType.PEEK, limit=limit)]

    def dead(self) -> list[Task]:
        """Return the dead letters."""
        return [wire.task_from_json(t) for t in self._call(EventType.DEAD)]

    def check(self, *, fix: bool = False) -> list[str]:
        """Validate the queue's files (the broker runs ``Queue.check``)."""
        return [str(p) for p in self._call(EventType.CHECK, fix=fix)]

    def metrics(self, *, rows: bool = False) -> dict[str, Any]:
        """Return the broker's counters (and, with ``rows``, its per-batch and per-event rows)."""
        return dict(self._call(EventType.METRICS, rows=rows))

    def shutdown(self) -> None:
        """Ask the broker to stop after answering this request."""
        self._call(EventType.SHUTDOWN)


def _token(task: Task | Lease) -> str:
    if task.token is None:
        raise ConfigError(f"task {task.id} is not leased: pass the task get() returned", field="task")
    return task.token
