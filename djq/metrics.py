"""Stdlib-only recorders of what happens inside a process: lock spans and operation times.

Used inside simulation workers, so no pandas here: a recorder appends plain tuples of
``time.perf_counter_ns()`` values (one CLOCK_MONOTONIC across processes on Linux) and
turns them into records only when asked; ``BrokerMetrics`` holds the broker's counters and
rows the same way. Imports from djq: ``errors``, ``model``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Final

__all__ = ["BrokerMetrics", "LockRecorder", "LockSample", "LockStatistics"]

_METRIC_ROWS: Final = 200_000  #: the broker's per-batch and per-event rows kept (the newest)


@dataclass(frozen=True, slots=True, kw_only=True)
class LockSample:
    """One acquisition of a lock, in ``perf_counter_ns`` nanoseconds."""

    op: str  #: what the lock was taken for: "put", "lease", "ack", ...
    requested_ns: int
    acquired_ns: int
    released_ns: int

    @property
    def wait_s(self) -> float:
        """Seconds from asking for the lock to getting it."""
        return (self.acquired_ns - self.requested_ns) / 1e9

    @property
    def hold_s(self) -> float:
        """Seconds the lock was held."""
        return (self.released_ns - self.acquired_ns) / 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class LockStatistics:
    """Running totals of one lock object in this process (``lock.stats()``)."""

    acquisitions: int
    timeouts: int
    wait_s_total: float
    hold_s_total: float
    wait_s_max: float


class LockRecorder:
    """Collects every acquisition of the locks it is attached to, cheaply.

    ``record`` appends one tuple; nothing is formatted until ``samples()``.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._rows: list[tuple[str, int, int, int]] = []

    def record(self, op: str, requested_ns: int, acquired_ns: int, released_ns: int) -> None:
        """Store one acquisition (called by the lock after it released)."""
        self._rows.append((op, requested_ns, acquired_ns, released_ns))

    def samples(self) -> list[LockSample]:
        """Return every acquisition recorded so far, oldest first."""
        return [LockSample(op=op, requested_ns=r, acquired_ns=a, released_ns=x) for op, r, a, x in self._rows]

    def rows(self) -> list[tuple[str, int, int, int]]:
        """Return the raw ``(op, requested_ns, acquired_ns, released_ns)`` tuples."""
        return list(self._rows)

    def clear(self) -> None:
        """Forget everything recorded."""
        self._rows.clear()

    def __len__(self) -> int:
        """Return how many acquisitions were recorded."""
        return len(self._rows)


@dataclass(slots=True)
class BrokerMetrics:
    """What the broker did: running counters, and the newest per-batch and per-event rows.

    ``batches`` rows are ``(lock_requested_ns, lock_acquired_ns, lock_released_ns, events,
    apply_ns, write_ns, wrote)``; ``events`` rows are ``(op, received_ns, applied_ns, replied_ns,
    ok)``, all ``time.perf_counter_ns`` values.
    """

    requests: int = 0  #: requests received
    applied: int = 0  #: events applied to the state (writes and served gets)
    transactions: int = 0  #: batches applied under the lock
    writes: int = 0  #: times the file was written
    largest_batch: int = 0
    dropped: int = 0  #: clients dropped for breaking a bound, sending garbage, or failing
    errors: int = 0  #: unexpected exceptions the loop survived (each logged)
    accept_errors: int = 0  #: failed accepts (out of descriptors, ...) the accept thread survived
    batches: collections.deque[tuple[int, int, int, int, int, int, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=_METRIC_ROWS)
    )
    events: collections.deque[tuple[str, int, int, int, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=_METRIC_ROWS)
    )

    def counters(self) -> dict[str, int]:
        """Return the running counters."""
        names = ("requests", "applied", "transactions", "writes", "largest_batch", "dropped", "errors")
        return {name: getattr(self, name) for name in (*names, "accept_errors")}
