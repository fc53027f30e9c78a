"""Golden files: the bytes djq writes stay the bytes djq 0.1 wrote, and its queues open unchanged.

``tests/golden/`` holds what the code before the one-API refactor wrote for the scenario
below (journal lines, snapshots in both storages). The scenario is replayed through the
public API with a fake clock and counted lease tokens; the files must match byte for byte.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

import djq

GOLDEN = Path(__file__).parent / "golden"
T0 = 1_764_300_000.25


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def scenario(path: Path, storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every operation that writes, each at least once, in an order whose outcome is known."""
    counter = itertools.count()
    monkeypatch.setattr(djq.api, "new_token", lambda: f"tok{next(counter):02d}")
    monkeypatch.setattr(djq.api, "new_tokens", lambda n: tuple(f"tok{next(counter):02d}" for _ in range(n)))
    clock = _Clock()
    q = djq.Queue(path, storage=storage, clock=clock, fsync=False, max_attempts=2)
    q.put({"n": 1, "s": "é\u2603", "f": 1.5, "l": [1, None, True]}, priority=3, delay=2.5)
    q.put_many(["a", "b"], priority=-1)
    clock.now += 3
    first = q.get(lease=10.0, owner="w1")
    q.extend(first, lease=20.0)
    pair = q.get_many(2, owner="w2")
    q.ack(first)
    q.nack(pair[0], delay=1.25)
    assert q.ack_many([pair[1], djq.Lease(id="99", token="x")]) == ["99"]
    clock.now += 2
    task = q.get(lease=1.0, owner="w3")
    assert q.nack(task) is djq.TaskState.DEAD
    q.requeue(task.id)
    q.get(lease=1.0, owner="w3")
    clock.now += 5
    assert q.get(owner="w4").attempts == 2
    clock.now += 40
    assert q.get(owner="w4") is None  # the lease was reclaimed on the last attempt: dead
    q.purge(dead_only=True)
    q.put(0)
    if storage == "journal":
        q.purge()
    q.close()


def test_journal_lines_are_byte_identical_to_djq_0_1(tmp_path, monkeypatch):
    """Every journal line (and the first snapshot) is what djq 0.1 wrote for the same calls.

    Only zeros follow them: the room the journal grows by (djq 0.1 wrote none).
    """
    path = tmp_path / "Queue.json"
    scenario(path, "journal", monkeypatch)
    lines, _, zeros = path.with_name("Queue.json.journal").read_bytes().partition(b"\0")
    assert lines == (GOLDEN / "Queue.json.journal").read_bytes()
    assert not zeros.strip(b"\0")
    assert path.read_bytes() == (GOLDEN / "Queue.json").read_bytes()


def test_rewrite_snapshot_is_byte_identical_to_djq_0_1(tmp_path, monkeypatch):
    """Rewrite storage writes the same Queue.json as djq 0.1."""
    path = tmp_path / "Queue.json"
    scenario(path, "rewrite", monkeypatch)
    assert path.read_bytes() == (GOLDEN / "rewrite.Queue.json").read_bytes()


@pytest.mark.parametrize("storage", ["journal", "rewrite"])
def test_a_queue_written_by_djq_0_1_opens_unchanged(tmp_path, storage):
    """The golden files open with this djq, report what djq 0.1 left, and take new work."""
    path = tmp_path / "Queue.json"
    if storage == "journal":
        shutil.copy(GOLDEN / "Queue.json", path)
        shutil.copy(GOLDEN / "Queue.json.journal", path.with_name("Queue.json.journal"))
    else:
        shutil.copy(GOLDEN / "rewrite.Queue.json", path)
    for copied in tmp_path.iterdir():
        copied.chmod(0o600)  # as djq 0.1 created them (git checks files out 644)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    q = djq.Queue(path, storage=storage, fsync=False)
    stats = q.stats()
    assert (stats.put_total, stats.acked_total, stats.dead_total) == (4, 2, 2)
    assert q.check() == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    expected = [] if storage == "journal" else [0]
    assert [t.payload for t in q.peek()] == expected
    task_id = q.put("new")
    assert q.get().id == (task_id if storage == "journal" else "4")
