"""A simulated consumer's hold on its task: working under a heartbeat, dying with the lease held.

``djq.workers``' consumer loop calls these for one task at a time. ``work`` sleeps for the
task's work time; with ``heartbeat`` a thread beside it extends the lease every
``HEARTBEAT_FRACTION`` of it (one ``extend`` op row each), as
``Consumer.run(heartbeat=True)`` does for a real handler. ``die`` works part of a task and
then SIGKILLs its own process with the lease held: no ``finally`` runs after that, so a
consumer that is to die keeps its op rows in an ``OpLog``, written to a file row by row,
which ``read_log`` reads back in the parent. Imports from djq: ``errors``, ``model``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from .client import HEARTBEAT_FRACTION  # the consumers' own heartbeat period, one constant
from .errors import LeaseLost
from .model import Task

__all__ = ["OpLog", "die", "read_log", "work"]


class _Extends(Protocol):
    def extend(self, task: Task, *, lease: float | None = None) -> Task: ...


class OpLog(list[Any]):
    """Op rows that are also appended to a file as they come, one JSON line each."""

    def __init__(self, path: Path) -> None:
        """Append to ``path`` (created, mode 0o600)."""
        super().__init__()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, row: Any) -> None:
        """Keep ``row`` and write it to the file at once (one ``write``, before anything else)."""
        super().append(row)
        os.write(self._fd, orjson.dumps(row) + b"\n")


def read_log(path: Path) -> list[Any]:
    """The rows an ``OpLog`` wrote to ``path`` (none if there is no file; a torn line is left out)."""
    lines = path.read_bytes().split(b"\n") if path.exists() else []
    rows = []
    for line in filter(None, lines):
        with contextlib.suppress(orjson.JSONDecodeError):
            rows.append(orjson.loads(line))
    return rows


def work(
    queue: _Extends, task: Task, seconds: float, *, lease: float, heartbeat: bool, ops: list[Any]
) -> None:
    """Work ``seconds`` on ``task`` (sleep); with ``heartbeat`` a thread extends its ``lease`` meanwhile."""
    if not heartbeat or seconds < HEARTBEAT_FRACTION * lease:  # no beat would come: no thread
        time.sleep(seconds)
        return
    done = threading.Event()
    beat = threading.Thread(target=_beat, args=(queue, task, lease, done, ops), daemon=True)
    beat.start()
    try:
        time.sleep(seconds)
    finally:
        done.set()
        beat.join()  # no extend comes after the ack


def _beat(queue: _Extends, task: Task, lease: float, done: threading.Event, ops: list[Any]) -> None:
    """Extend ``task``'s lease every ``HEARTBEAT_FRACTION`` of it until ``done`` or a lost lease."""
    while not done.wait(HEARTBEAT_FRACTION * lease):
        start = time.perf_counter_ns()
        try:
            queue.extend(task, lease=lease)
        except LeaseLost:
            ops.append(["extend", start, time.perf_counter_ns(), [task.id], False, task.attempts])
            return
        ops.append(["extend", start, time.perf_counter_ns(), [task.id], True, task.attempts])


def die(
    queue: _Extends, task: Task, seconds: float, *, lease: float, heartbeat: bool, ops: list[Any]
) -> None:
    """Work ``seconds`` on ``task``, record a ``kill`` row, then SIGKILL this process (the lease held)."""
    work(queue, task, seconds, lease=lease, heartbeat=heartbeat, ops=ops)
    now = time.perf_counter_ns()
    ops.append(["kill", now, now, [task.id], True, task.attempts])
    os.kill(os.getpid(), signal.SIGKILL)
