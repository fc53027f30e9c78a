"""The state's index: heaps that make lease, reap and next_deadline O(log n) instead of a scan.

Part of the rules (``state``), and as pure: no files, clocks or randomness. The index
holds only ``(key, seq, id)`` entries and is never the truth: ``QueueState.tasks`` is.
Entries are never removed when a task changes; a popped entry is used only if it still
matches its task (lazy deletion). Every function reads tasks through ``Entry``, the
fields of ``state.Record`` it needs, so this module does not import ``state``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .model import TaskState

__all__ = ["Entry", "Index", "available"]


class Entry(Protocol):
    """What the index reads of a task (``state.Record`` has these fields)."""

    id: str
    seq: int
    priority: int
    state: TaskState
    enqueued_at: float
    available_at: float
    token: str | None
    lease_expires_at: float | None


E = TypeVar("E", bound=Entry)


def available(record: Entry, now: float) -> bool:
    """True if a ready task may be leased at ``now``.

    A task put without a delay (``available_at <= enqueued_at``) is available whatever
    ``now`` says: a wall clock stepped back behind its put must not hold it back.
    """
    return record.available_at <= now or record.available_at <= record.enqueued_at


def _holds(record: Entry | None, at: float, token: str) -> bool:
    """Whether an ``expiry`` entry still matches its task's lease."""
    return (
        record is not None
        and record.state is TaskState.LEASED
        and record.token == token
        and record.lease_expires_at == at
    )


@dataclass(slots=True)
class Index:
    """The heaps.

    ``due`` holds ready tasks by (-priority, seq), maybe not yet available; ``later``
    holds ready tasks by available_at until they come due; ``expiry`` holds leases by
    expiry.
    """

    due: list[tuple[int, int, str]] = field(default_factory=list)
    later: list[tuple[float, int, str]] = field(default_factory=list)
    expiry: list[tuple[float, int, str, str]] = field(default_factory=list)
    latest: float = -math.inf  #: no lease indexed expires later than this (an upper bound)

    @classmethod
    def build(cls, records: Iterable[Entry]) -> Index:
        """Return the index of ``records`` (every live task)."""
        index = cls()
        for r in records:
            if r.state is TaskState.READY and r.available_at > r.enqueued_at:  # delayed at some point
                index.later.append((r.available_at, r.seq, r.id))
            elif r.state is TaskState.READY:  # available since it was put: no promotion needed
                index.due.append((-r.priority, r.seq, r.id))
            elif r.state is TaskState.LEASED and r.lease_expires_at is not None and r.token is not None:
                index.expiry.append((r.lease_expires_at, r.seq, r.id, r.token))
                index.latest = max(index.latest, r.lease_expires_at)
        heapq.heapify(index.due)
        heapq.heapify(index.later)
        heapq.heapify(index.expiry)
        return index

    def ready(self, record: Entry) -> None:
        """Index a task that just became ready: due at once if it has no delay, else by its time."""
        if record.available_at <= record.enqueued_at:
            heapq.heappush(self.due, (-record.priority, record.seq, record.id))
        else:
            heapq.heappush(self.later, (record.available_at, record.seq, record.id))

    def leased(self, record: Entry, expires_at: float, token: str) -> None:
        """Index a lease (new or renewed) that expires at ``expires_at``."""
        heapq.heappush(self.expiry, (expires_at, record.seq, record.id, token))
        if expires_at > self.latest:
            self.latest = expires_at

    def beyond(self, tasks: Mapping[str, E], limit: float) -> list[E]:
        """The leased tasks whose lease expires after ``limit``, in seq order (a scan, only when some may)."""
        if self.latest <= limit:
            return []
        found, latest = [], -math.inf
        for r in tasks.values():
            at = r.lease_expires_at
            if r.state is TaskState.LEASED and at is not None and r.token is not None:
                if at > limit:
                    found.append(r)
                elif at > latest:
                    latest = at
        self.latest = limit if found else latest
        return sorted(found, key=lambda r: r.seq)

    def promote(self, tasks: Mapping[str, Entry], now: float) -> None:
        """Move ready tasks whose time has come from ``later`` to ``due``; drop stale entries."""
        later = self.later
        while later:
            at, seq, task_id = later[0]
            r = tasks.get(task_id)
            if r is not None and r.state is TaskState.READY and r.available_at == at:
                if at > now:
                    break
                heapq.heappush(self.due, (-r.priority, seq, task_id))
            heapq.heappop(later)

    def next_ready(self, tasks: Mapping[str, E], now: float) -> E | None:
        """Pop the next task to deliver (highest priority, then lowest seq); None if none is."""
        self.promote(tasks, now)
        due = self.due
        while due:
            _, _, task_id = heapq.heappop(due)
            r = tasks.get(task_id)
            if r is not None and r.state is TaskState.READY:
                if available(r, now):
                    return r
                self.ready(r)  # given back with a delay since it was indexed: wait in ``later``
        return None

    def expired(self, tasks: Mapping[str, E], now: float) -> list[E]:
        """Pop every lease that expired at or before ``now``; return their tasks in seq order."""
        expiry = self.expiry
        found: dict[str, E] = {}  # by id: a lease extended back to an old expiry has two entries
        while expiry and expiry[0][0] <= now:
            at, _, task_id, token = heapq.heappop(expiry)
            r = tasks.get(task_id)
            if r is not None and _holds(r, at, token):
                found[task_id] = r
        return sorted(found.values(), key=lambda r: r.seq)

    def has_work(self, tasks: Mapping[str, Entry], now: float) -> bool:
        """True if a lease at ``now`` would get a task: one is ready, or a lease has expired."""
        self.promote(tasks, now)
        due, expiry = self.due, self.expiry
        while due:
            r = tasks.get(due[0][2])
            if r is not None and r.state is TaskState.READY and available(r, now):
                return True
            heapq.heappop(due)
            if r is not None and r.state is TaskState.READY:
                self.ready(r)  # given back with a delay: wait in ``later``
        while expiry:
            at, _, task_id, token = expiry[0]
            if _holds(tasks.get(task_id), at, token):
                return at <= now
            heapq.heappop(expiry)
        return False

    def next_deadline(self, tasks: Mapping[str, Entry], now: float) -> float | None:
        """Return the first ``available_at`` or lease expiry after ``now``, or None."""
        self.promote(tasks, now)  # afterwards the first valid ``later`` entry is > now
        expiry = self.expiry
        moments = [self.later[0][0]] if self.later else []
        expired = []  # leases past expiry but not yet reclaimed: not future moments
        while expiry:
            at, _, task_id, token = expiry[0]
            if not _holds(tasks.get(task_id), at, token):
                heapq.heappop(expiry)
            elif at <= now:
                expired.append(heapq.heappop(expiry))
            else:
                moments.append(at)
                break
        for entry in expired:
            heapq.heappush(expiry, entry)
        return min(moments, default=None)
