"""Top-level worker functions for the multi-process tests.

They live in a plain module (no pytest imports) so a spawned child can import them by
name, and a forked child can call them directly. Each worker opens its own ``Queue``, or
with ``lock="broker"`` its own ``djq.connect`` client (a queue object is never shared
across processes), and reports once, at the end. ``storage`` ("journal", the default, or
"rewrite") picks how a direct ``Queue`` writes the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
import traceback
from typing import Any

import djq
from djq.model import DEFAULT_COMPACT_BYTES

#: seconds a worker of test_processes may run before it gives up; the test's own
#: deadline is shorter, so this only matters if the parent died and left it behind.
WORKER_DEADLINE = 120.0


def _open(
    path: str, lock: str, poll_interval: float | None, *, storage: str = "journal", fsync: bool = False
) -> djq.Queue | djq.BrokerClient:
    """Open a direct ``Queue`` with this lock kind and storage, or with ``lock="broker"`` a broker client.

    A broker client takes its options (lock, storage, fsync, ...) from the broker serving ``path``.
    """
    if lock == "broker":
        return djq.connect(path)
    return djq.Queue(path, lock=lock, storage=storage, fsync=fsync, poll_interval=poll_interval)


def _write_record(out_path: str, record: dict[str, Any]) -> None:
    """Write a worker's record once, atomically (a half-written record is never read)."""
    tmp = f"{out_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, out_path)


def producer(
    path: str,
    lock: str,
    poll_interval: float | None,
    producer_id: int,
    count: int,
    high_water: int,
    out_path: str,
    *,
    storage: str = "journal",
) -> None:
    """Put ``count`` distinct payloads ``{"p": producer_id, "n": i}``; record (id, payload).

    Backpressure: while more than ``high_water`` tasks are ready, pause briefly (the
    classic bounded buffer). ``stats()`` reads the file without the lock. This keeps
    the file small: in rewrite storage every operation rewrites the whole file.
    """
    q = _open(path, lock, poll_interval, storage=storage)
    deadline = time.monotonic() + WORKER_DEADLINE
    put: list[list[Any]] = []
    pauses = 0
    try:
        for n in range(count):
            while q.stats().ready > high_water:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"producer {producer_id}: queue stayed full")
                pauses += 1
                time.sleep(0.002)
            payload = {"p": producer_id, "n": n}
            put.append([q.put(payload), payload])
    finally:
        q.close()
    _write_record(out_path, {"put": put, "pauses": pauses})


def consumer(
    path: str,
    lock: str,
    poll_interval: float | None,
    consumer_id: int,
    total: int,
    out_path: str,
    *,
    storage: str = "journal",
) -> None:
    """Get, ack and record (id, payload) until the queue's ``acked_total`` reaches ``total``.

    A ``LeaseLost`` on ack is recorded, not hidden: the test expects none (leases are
    30 s, and a task is held for a few milliseconds).
    """
    q = _open(path, lock, poll_interval, storage=storage)
    deadline = time.monotonic() + WORKER_DEADLINE
    acked: list[list[Any]] = []
    lost: list[str] = []
    empty_gets = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer {consumer_id}: acked_total never reached {total}")
            task = q.get(timeout=0.05)
            if task is None:
                empty_gets += 1
                if q.stats().acked_total >= total:
                    break
                continue
            try:
                q.ack(task)
            except djq.LeaseLost:
                lost.append(task.id)
            else:
                acked.append([task.id, task.payload])
    finally:
        q.close()
    _write_record(out_path, {"acked": acked, "lost": lost, "empty_gets": empty_gets})


def crash_child(
    path: str,
    ledger: str,
    lock: str,
    seed: int,
    *,
    lease: float,
    max_attempts: int,
    storage: str = "journal",
    compact_bytes: int = DEFAULT_COMPACT_BYTES,
    compact: float = 0.0,
) -> None:
    """Put, get and ack on ``path`` until killed, logging every step to ``ledger``.

    Meant to run in a forked child that the parent SIGKILLs at a random moment. Each
    ledger line is one ``os.write`` to a file opened with ``O_APPEND``, so a line is
    either whole or absent:

    * ``put <id>`` after ``put`` returned;
    * ``acking <id>`` before ``ack`` is called;
    * ``acked <id>`` after ``ack`` returned.

    A task that was leased and never acked (the kill came first) stays leased in the
    file until its lease runs out. After each step, with probability ``compact``, it
    also folds the journal into a new snapshot (``Queue.compact``), so that kills land
    inside compactions too. Returns only if nobody killed it within 10 s; run it
    through ``run_forked``, which leaves the forked child with ``os._exit``.
    """
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    rng = random.Random(seed)
    q = djq.Queue(
        path,
        lock=lock,
        storage=storage,
        fsync=True,
        lease=lease,
        max_attempts=max_attempts,
        compact_bytes=compact_bytes,
    )
    ledger_steps(q, fd, rng, seed, compact)


def ledger_steps(q: Any, fd: int, rng: random.Random, seed: int, compact: float = 0.0) -> None:
    """Put or get+ack on ``q`` at random for 10 s, writing each step to ledger ``fd`` (see ``crash_child``).

    The parent kills this process (or its broker) within 50 ms; with probability
    ``compact`` per step the direct queue ``q`` also compacts.
    """
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        task = q.get(timeout=0) if rng.random() < 0.5 else None
        if task is None:
            task_id = q.put({"seed": seed, "r": rng.random()})
            os.write(fd, f"put {task_id}\n".encode())
        else:
            os.write(fd, f"acking {task.id}\n".encode())
            q.ack(task)
            os.write(fd, f"acked {task.id}\n".encode())
        if compact and rng.random() < compact:
            q.compact()


def compact_until_killed(path: str, replace: int, when: str) -> None:
    """Compact the queue at ``path``, SIGKILLing this process just ``when`` its ``replace``-th ``os.replace``.

    A compaction replaces ``Queue.json`` (the 1st replace) then the journal (the 2nd).
    Run it through ``run_forked`` only: it patches ``os.replace`` for the whole process.
    Returns (exit status 0) only if the compaction finished without reaching that point.
    """
    real = os.replace
    calls = 0

    def replace_then_maybe_die(src: Any, dst: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == replace and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
        if calls == replace and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_maybe_die  # type: ignore[assignment]
    q = djq.Queue(path, fsync=True)
    q.compact()


def final_stats(path: str, lock: str, *, storage: str = "journal") -> djq.QueueStats:
    """Open the queue afresh, check its files are healthy, and return its counts."""
    q = djq.Queue(path, lock=lock, storage=storage)
    try:
        assert q.check() == []
        return q.stats()
    finally:
        q.close()


def run_forked(target: Any, *args: Any, **kwargs: Any) -> None:
    """Run ``target`` in this forked child and leave with ``os._exit``, never returning.

    Exit status 0: the target returned; 1: it raised (the traceback goes to stderr).
    ``os._exit`` skips the parent's atexit handlers and buffered output (pytest's).
    """
    code = 1
    try:
        target(*args, **kwargs)
        code = 0
    except BaseException:
        with contextlib.suppress(OSError):
            os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(code)


def run_all(processes: list[Any], seconds: float) -> list[str]:
    """Start every child, wait for them for at most ``seconds``, reap them all; return what went wrong."""
    try:
        for p in processes:
            p.start()
        return join_all(processes, time.monotonic() + seconds)
    finally:
        reap(processes)


def join_all(processes: list[Any], deadline: float) -> list[str]:
    """Wait for every child until ``deadline`` (monotonic); return what went wrong."""
    problems = []
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            problems.append(f"{p.name} still running at the deadline")
        elif p.exitcode != 0:
            problems.append(f"{p.name} exited with {p.exitcode}")
    return problems


def reap(processes: list[Any]) -> None:
    """Stop and reap every child, whatever state it is in."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
        p.close()
