"""Real processes on one Queue.json: every task put is acked exactly once, none lost.

Two producer and two consumer processes per lock kind and storage move N tasks through
one file. The children are spawned (not forked), so this test never forks a process
that may have threads, and the workers import djq afresh, as real separate programs
would. One more case runs two consumer processes of four threads each, the threads of a
process sharing one ``Queue`` and its waiting turn.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import workers

from djq.model import LockKind, StorageKind

N = 5_000  #: tasks per case (2 producers x 2,500)
PRODUCERS = 2
CONSUMERS = 2
#: Producers pause while more than this many tasks are ready. In rewrite storage every
#: operation rewrites (and every other process re-reads and validates) the whole file,
#: O(depth) in Python: at 200 ready tasks the flock run used about twice the CPU time of
#: 50, for no more interleavings; 50 keeps the buffer bounded and the test fast.
HIGH_WATER = 50
#: Every lock kind in journal storage (the default: each process replays the lines the
#: others appended), and rewrite storage (each re-reads the whole file) with flock only:
#: the locks exclude each other the same way in both storages, and rewrite costs O(depth)
#: per call, about 13 s with flock here but 15 s with filelock and 41 s with soft.
CASES = [(StorageKind.JOURNAL.value, lock.value) for lock in LockKind] + [
    (StorageKind.REWRITE.value, LockKind.FLOCK.value)
]
#: The polling locks sleep between tries. filelock's default 0.05 s would make each
#: contended acquisition wait up to 50 ms, and with four processes most of the ~15,000
#: acquisitions per kind are contended: far past this file's time budget. Much shorter
#: is not better either: a failed try costs about 0.15 ms of CPU ("filelock") and 0.5 ms
#: ("soft", which reads and checks the marker), so 1 ms polling burns the two cores.
#: 3 ms measured best; the test is about the queue's correctness, not the poll interval.
POLL_INTERVAL = {"flock": None, "filelock": 0.003, "soft": 0.003}
#: Seconds for all children of one case to finish; a hung child fails the test. Runs take
#: 2-13 s here; the margin is for a CI machine shared with other jobs.
DEADLINE = 100.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("storage", "lock_kind"), CASES)
def test_producers_and_consumers_move_every_task_exactly_once(tmp_path: Path, storage: str, lock_kind: str):
    """Two producers and two consumers in separate processes: each of N tasks acked exactly once.

    No task is lost, none delivered twice, no payload changed, no lease lost (none can
    expire here); the file then reads back clean and empty, with matching counters.
    """
    path = tmp_path / "q" / "Queue.json"
    poll = POLL_INTERVAL[lock_kind]
    ctx = multiprocessing.get_context("spawn")
    per_producer = N // PRODUCERS
    # fsync=False (in workers._open) keeps CI fast: the crash tests cover fsync; here
    # only mutual exclusion between processes is under test, and no process crashes.
    processes = [
        ctx.Process(
            target=workers.producer,
            args=(
                str(path),
                lock_kind,
                poll,
                i,
                per_producer,
                HIGH_WATER,
                str(tmp_path / f"producer-{i}.json"),
            ),
            kwargs={"storage": storage},
            name=f"producer-{i}",
        )
        for i in range(PRODUCERS)
    ] + [
        ctx.Process(
            target=workers.consumer,
            args=(str(path), lock_kind, poll, i, N, str(tmp_path / f"consumer-{i}.json")),
            kwargs={"storage": storage},
            name=f"consumer-{i}",
        )
        for i in range(CONSUMERS)
    ]
    started = time.monotonic()
    problems = workers.run_all(processes, DEADLINE)
    elapsed = time.monotonic() - started
    assert problems == [], problems

    records = {p: json.loads((tmp_path / f"{p}.json").read_text()) for p in _names()}
    put = [tuple(item) for name, r in records.items() if name.startswith("producer") for item in r["put"]]
    acked = [tuple(item) for name, r in records.items() if name.startswith("consumer") for item in r["acked"]]
    lost = [i for name, r in records.items() if name.startswith("consumer") for i in r["lost"]]
    print(
        f"{storage}, {lock_kind}: {N} tasks in {elapsed:.1f} s; producer pauses "
        f"{[records[f'producer-{i}']['pauses'] for i in range(PRODUCERS)]}, "
        f"acked per consumer {[len(records[f'consumer-{i}']['acked']) for i in range(CONSUMERS)]}"
    )

    put_ids = Counter(task_id for task_id, _ in put)
    acked_ids = Counter(task_id for task_id, _ in acked)
    assert len(put) == N
    assert max(put_ids.values()) == 1, "a task id was handed out twice"
    assert lost == [], "a lease was lost although no lease can expire in this test"
    twice = sorted(i for i, c in acked_ids.items() if c > 1)
    assert twice == [], f"acked more than once: {twice[:10]}"
    missing = sorted(put_ids.keys() - acked_ids.keys())
    assert missing == [], f"put but never acked: {len(missing)}, e.g. {missing[:10]}"
    extra = sorted(acked_ids.keys() - put_ids.keys())
    assert extra == [], f"acked but never put: {extra[:10]}"
    assert dict(acked) == dict(put), "an acked payload differs from the payload put under its id"
    assert _multiset(p for _, p in acked) == _multiset(p for _, p in put)
    assert {(p["p"], p["n"]) for _, p in put} == {
        (i, n) for i in range(PRODUCERS) for n in range(per_producer)
    }

    stats = workers.final_stats(path, lock_kind, storage=storage)
    assert stats.total == 0
    assert stats.acked_total == stats.put_total == N
    assert stats.dead_total == 0


def _names() -> list[str]:
    return [f"producer-{i}" for i in range(PRODUCERS)] + [f"consumer-{i}" for i in range(CONSUMERS)]


def _multiset(payloads: Any) -> Counter[str]:
    return Counter(json.dumps(p, sort_keys=True) for p in payloads)


THREADED_N = 2_000  #: tasks through the threaded consumers
THREADS = 4  #: consumer threads per process, sharing one Queue


def threaded_consumer(path: str, consumer_id: int, total: int, out_path: str) -> None:
    """Spawned child: ``THREADS`` threads share one ``Queue``, each getting with a timeout and acking.

    Waiting gets of one Queue share its turn and its inotify watch (and other processes
    compete for the same turn); each thread records what it acked, and any error.
    """
    import threading

    import djq

    q = djq.Queue(path, fsync=False)
    acked: list[list[Any]] = []
    errors: list[str] = []
    guard = threading.Lock()

    def run() -> None:
        deadline = time.monotonic() + workers.WORKER_DEADLINE
        try:
            while time.monotonic() < deadline:
                task = q.get(timeout=0.05)
                if task is None:
                    if q.stats().acked_total >= total:
                        return
                    continue
                q.ack(task)
                with guard:
                    acked.append([task.id, task.payload])
            errors.append("deadline")
        except BaseException as exc:  # recorded for the parent
            errors.append(repr(exc))

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.close()
    workers._write_record(out_path, {"acked": acked, "lost": errors, "empty_gets": 0})


@pytest.mark.timeout(120)
def test_threads_sharing_a_queue_in_each_of_two_processes_move_every_task_once(tmp_path: Path):
    """Two consumer processes of four threads each, one Queue per process, waiting gets: each task once."""
    path = tmp_path / "q" / "Queue.json"
    ctx = multiprocessing.get_context("spawn")
    processes = [
        ctx.Process(
            target=workers.producer,
            args=(str(path), "flock", None, 0, THREADED_N, HIGH_WATER, str(tmp_path / "producer-0.json")),
            name="producer-0",
        )
    ] + [
        ctx.Process(
            target=threaded_consumer,
            args=(str(path), i, THREADED_N, str(tmp_path / f"consumer-{i}.json")),
            name=f"consumer-{i}",
        )
        for i in range(CONSUMERS)
    ]
    problems = workers.run_all(processes, DEADLINE)
    assert problems == [], problems
    put = json.loads((tmp_path / "producer-0.json").read_text())["put"]
    records = [json.loads((tmp_path / f"consumer-{i}.json").read_text()) for i in range(CONSUMERS)]
    assert [r["lost"] for r in records] == [[]] * CONSUMERS, "a thread's waiting get failed"
    acked = Counter(task_id for r in records for task_id, _ in r["acked"])
    assert acked == Counter(task_id for task_id, _ in put), "a task was lost or acked twice"
    stats = workers.final_stats(str(path), "flock")
    assert (stats.total, stats.acked_total) == (0, THREADED_N)
