"""SIGKILL a writer at random moments: Queue.json stays valid and nothing acked or put is lost.

A forked child puts, gets and acks (fsync on, as the crash safety under test includes
fsync) and keeps a ledger; the parent kills it after a random 0-50 ms, then checks the
file against the ledger, and at the end drains every task that is left, including the
leases the killed children never acked.

Reproduce a failure with ``CRASH_TEST_SEED=<seed> pytest tests/test_crash.py`` (the seed
is printed and attached to the failure).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import workers

import djq
from djq.model import TaskState
from djq.storage import temp_files

SEED = int(os.environ.get("CRASH_TEST_SEED", "20240917"))
MAX_KILL_DELAY = 0.050  #: seconds; each kill lands uniformly in [0, this) after the fork
#: The children's leases outlive the test, so a task leased by a killed child is never
#: delivered again during the run (each id is leased at most once); the final drain
#: moves the clock past them instead of sleeping.
CHILD_LEASE = 3600.0
CHILD_MAX_ATTEMPTS = 1_000  #: a task leased by several killed children never goes dead
FUTURE = 10_000.0  #: seconds; the drain's clock is this far ahead, past every child lease
TEMP_FILES_MESSAGE = "temp files left by crashed writers"


def _fork_and_kill(path: Path, ledger: Path, lock_kind: str, child_seed: int, delay: float) -> int:
    """Fork a child running ``workers.crash_child``, SIGKILL it after ``delay``; return its status."""
    # os.fork copies only the calling thread: with other threads alive the child could
    # inherit a lock held by one of them (and Python 3.12+ warns, an error here).
    assert threading.active_count() == 1, f"threads alive before fork: {threading.enumerate()}"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        workers.run_forked(
            workers.crash_child,
            str(path),
            str(ledger),
            lock_kind,
            child_seed,
            lease=CHILD_LEASE,
            max_attempts=CHILD_MAX_ATTEMPTS,
        )
    reaped = False
    try:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return status


def _read_ledger(ledger: Path) -> dict[str, list[str]]:
    """Return the ids of each ledger event, in order."""
    events: dict[str, list[str]] = {"put": [], "acking": [], "acked": []}
    try:
        text = ledger.read_text(encoding="ascii")
    except FileNotFoundError:
        return events
    for line in text.splitlines(keepends=True):
        assert line.endswith("\n"), f"torn ledger line {line!r}"  # one os.write per line
        kind, _, task_id = line[:-1].partition(" ")
        events[kind].append(task_id)
    return events


def _log(ledger_fd: int, event: str, task_id: str) -> None:
    os.write(ledger_fd, f"{event} {task_id}\n".encode())


def _inspect(path: Path, lock_kind: str) -> tuple[dict[str, TaskState], list[Path]]:
    """Open the queue afresh after a kill; return its tasks' states and the temp files left."""
    q = djq.Queue(path, lock=lock_kind)
    try:
        q.stats()  # parses, or raises
        problems = [p for p in q.check() if not p.startswith(TEMP_FILES_MESSAGE)]
        assert problems == []
        tasks = {task_id: record.state for task_id, record in q.file.load().tasks.items()}
    finally:
        q.close()
    return tasks, temp_files(path)


def _write_once(path: Path, lock_kind: str, ledger_fd: int, n: int) -> None:
    """One real write through a fresh queue, logged like the children's: ack a task, or put one."""
    q = djq.Queue(path, lock=lock_kind, lease=CHILD_LEASE, max_attempts=CHILD_MAX_ATTEMPTS)
    try:
        task = q.get(timeout=0)
        if task is None:
            _log(ledger_fd, "put", q.put({"parent": n}))
        else:
            _log(ledger_fd, "acking", task.id)
            q.ack(task)
            _log(ledger_fd, "acked", task.id)
    finally:
        q.close()


def _check_ledger(events: dict[str, list[str]], tasks: dict[str, TaskState]) -> None:
    acking = set(events["acking"])
    lost = sorted(set(events["put"]) - tasks.keys() - acking, key=int)
    assert lost == [], f"put returned, never acked, but gone from the file: {lost}"
    back = sorted(set(events["acked"]) & tasks.keys(), key=int)
    assert back == [], f"acked but back in the file: {back}"
    twice = sorted((i for i, c in Counter(events["acking"]).items() if c > 1), key=int)
    assert twice == [], f"delivered twice although no lease expired: {twice}"
    dead = sorted((i for i, s in tasks.items() if s is TaskState.DEAD), key=int)
    assert dead == [], f"dead letters: {dead}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("lock_kind", "kills"),
    [("flock", 200), ("filelock", 50)],  # flock is the default: it gets the most kills
)
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, lock_kind: str, kills: int):
    print(f"CRASH_TEST_SEED={SEED}")
    rng = random.Random(f"{SEED}-{lock_kind}")
    path = tmp_path / "q" / "Queue.json"
    ledger = tmp_path / "ledger.txt"
    ledger_fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    left_temp = 0
    kill = -1
    try:
        for kill in range(kills):
            status = _fork_and_kill(
                path, ledger, lock_kind, rng.randrange(2**32), rng.uniform(0, MAX_KILL_DELAY)
            )
            assert os.WIFSIGNALED(status), f"the child exited on its own ({status:#x}); see its stderr"
            assert os.WTERMSIG(status) == signal.SIGKILL

            tasks, temps = _inspect(path, lock_kind)
            assert len(temps) <= 1, f"more than one temp file after one kill: {temps}"
            left_temp += len(temps)
            _check_ledger(_read_ledger(ledger), tasks)

            _write_once(path, lock_kind, ledger_fd, kill)  # the next write cleans up
            assert temp_files(path) == [], "a temp file survived the next write"

        kill = -1  # the end: everything left is delivered
        tasks, _ = _inspect(path, lock_kind)
        events = _read_ledger(ledger)
        _check_ledger(events, tasks)
        delivered = _drain(path, lock_kind, len(tasks))
        assert sorted(delivered, key=int) == sorted(tasks, key=int), (
            "the drain did not deliver each task left once"
        )
        unacked = set(events["put"]) - set(events["acking"])
        assert unacked <= set(delivered), f"never delivered: {sorted(unacked - set(delivered), key=int)}"
        assert not set(events["acked"]) & set(delivered), "an acked task was delivered again"

        stats = workers.final_stats(path, lock_kind)
        assert stats.total == 0
        assert stats.put_total == stats.acked_total
        assert stats.dead_total == 0
        abandoned = [i for i, s in tasks.items() if s is TaskState.LEASED]
        print(
            f"{lock_kind}: {kills} kills, {left_temp} left a temp file; {stats.put_total} tasks put, "
            f"{len(events['acked'])} acks logged; {len(delivered)} drained, "
            f"{len(abandoned)} of them leases the killed children never acked"
        )
    except BaseException as exc:
        where = "at the end" if kill < 0 else f"after kill {kill}"
        exc.add_note(f"reproduce with CRASH_TEST_SEED={SEED} ({lock_kind}, {where})")
        raise
    finally:
        os.close(ledger_fd)


def _drain(path: Path, lock_kind: str, expected: int) -> list[str]:
    """Get and ack until empty, with a clock past every lease; return the ids delivered."""
    q = djq.Queue(path, lock=lock_kind, clock=lambda: time.time() + FUTURE, max_attempts=CHILD_MAX_ATTEMPTS)
    delivered = []
    try:
        stats = q.stats()
        assert stats.leased == 0, "a lease outlived the future clock"
        assert stats.ready + stats.expired == expected
        for _ in range(expected + 1):  # bounded: one extra get must find nothing
            task = q.get(timeout=0)
            if task is None:
                break
            delivered.append(task.id)
            q.ack(task)
    finally:
        q.close()
    return delivered
