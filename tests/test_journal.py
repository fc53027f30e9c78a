"""Journal storage (``djq.journal``): torn and damaged lines, generations, failed appends, check, compact.

In journal storage ``Queue.json`` is a snapshot of some ``generation`` and every change
is one checksummed line appended to ``Queue.json.journal``, whose header names the
generation it applies to. These tests cut, damage and swap those files the ways a crash,
a full disk or a stale reader would, and check what every reader then sees: the state
with every complete good line applied once, never a torn or damaged last line, never a
journal of another generation; a bad line before the last is ``CorruptQueueError`` and
the files are never rewritten.

Everything runs in one process on a fake clock; "two processes" are two ``Queue``
objects on one file (each keeps its own cached state, as a process would). The real
processes and SIGKILLs are in test_processes.py and test_crash.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import random
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import FakeClock, file_bytes, run_djq

import djq
import djq.files
import djq.journal
from djq import ops
from djq.engine import Transaction
from djq.files import temp_files
from djq.journal import decode_line, encode_line, journal_path
from djq.model import Lease, Task
from djq.snapshot import decode

TORN = "torn last line"


@pytest.fixture
def open_queue(clock: FakeClock) -> Iterator[Callable[..., djq.Queue]]:
    """A factory of queues on the fake clock: journal storage, no fsync, ``max_attempts=2`` unless asked.

    Every queue it made is closed after the test.
    """
    opened: list[djq.Queue] = []

    def make(path: Path, **options: Any) -> djq.Queue:
        options.setdefault("storage", "journal")
        options.setdefault("fsync", False)
        options.setdefault("max_attempts", 2)
        q = djq.Queue(path, clock=clock, **options)
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q" / "Queue.json"


def _view(q: djq.Queue) -> dict[str, Any]:
    """Everything a caller can see of the queue: counts, delivery order, dead letters, every task."""
    current = q.file.load()
    return {
        "stats": dataclasses.replace(q.stats(), file_bytes=0),
        "peek": q.peek(1_000),
        "dead": q.dead(),
        "tasks": [record.snapshot() for record in current.tasks.values()],
        "next_seq": current.next_seq,
    }


def _tokenless(value: Any) -> Any:
    """``value`` with every task's lease token dropped: two queues on two files draw different tokens."""
    if isinstance(value, Task):
        return dataclasses.replace(value, token=None)
    if isinstance(value, dict):
        return {k: _tokenless(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tokenless(v) for v in value]
    return value


def _journal_bytes(path: Path) -> bytes:
    """The journal's lines: what comes before the zeros it grows by (which must be zeros only)."""
    data = file_bytes(journal_path(path))
    assert data is not None
    lines, _, zeros = data.partition(b"\0")
    assert not zeros.strip(b"\0"), "bytes other than zeros after the journal's end"
    return lines


def _generation(path: Path) -> int:
    """The generation of the snapshot ``Queue.json``."""
    return decode(path.read_bytes(), path).generation


def _header(generation: int) -> bytes:
    return orjson.dumps({"format": "djq.journal", "version": 1, "generation": generation}) + b"\n"


def _lines(data: bytes) -> list[bytes]:
    """The complete lines of a journal after its header, each with its newline."""
    return data.splitlines(keepends=True)[1:]


def _replace_with(target: Path, data: bytes) -> None:
    """Put ``data`` at ``target`` as a new file (a new inode), the way djq replaces its files."""
    tmp = target.with_name(target.name + ".restore")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, target)


def _copy(path: Path, dest: Path, journal: bytes) -> Path:
    """A copy of the queue at ``dest``: the same snapshot, ``journal`` as its journal."""
    dest.parent.mkdir(parents=True, mode=0o700)
    for name, data in ((dest, path.read_bytes()), (journal_path(dest), journal)):
        name.write_bytes(data)
        name.chmod(0o600)  # as djq creates them: check reports a wider mode
    return dest


# A journal with every kind of line, and a last line to tear


@dataclasses.dataclass
class _Seeded:
    held: Task  #: leased, not acked
    dead_id: str


def _seed(q: djq.Queue, clock: FakeClock) -> _Seeded:
    """Puts, leases, an ack, nacks (one to the dead letters): a journal of several kinds of line.

    ``q`` has ``max_attempts=2`` (``open_queue``'s default). Leaves ``{"n": 3}`` leased,
    ``"two"`` dead, two ready.
    """
    q.put_many([{"n": 1}, "two", {"n": 3}, 4, [5]])
    clock.advance(1.0)
    first = q.get(lease=30.0)
    assert first is not None
    q.ack(first)
    for _ in range(2):
        clock.advance(1.0)
        task = q.get(lease=30.0)
        assert task is not None
        assert task.payload == "two"
        q.nack(task)
    held = q.get(lease=30.0)
    assert held is not None
    assert held.payload == {"n": 3}
    clock.advance(1.0)
    q.extend(held, lease=40.0)
    assert [t.payload for t in q.dead()] == ["two"]
    clock.advance(1.0)
    return _Seeded(held=held, dead_id=q.dead()[0].id)


#: The last call, which appends the line the tests tear: one of each kind of event.
LAST_CALLS: dict[str, Callable[[djq.Queue, _Seeded], object]] = {
    "put": lambda q, s: q.put({"last": [1, 2.5, None]}, priority=2, delay=5.0),
    "put_many": lambda q, s: q.put_many(["x", {"y": "\u00e9\u4e2d"}]),
    "lease": lambda q, s: q.get(lease=60.0),
    "lease_many": lambda q, s: q.get_many(3, lease=60.0),
    "ack": lambda q, s: q.ack(s.held),
    "ack_many": lambda q, s: q.ack_many([s.held]),
    "nack": lambda q, s: q.nack(s.held, delay=3.0),
    "release": lambda q, s: q.release(s.held),
    "pop": lambda q, s: q.pop(),
    "ack_lease": lambda q, s: q.ack_and_get(s.held, lease=60.0),
    "extend": lambda q, s: q.extend(s.held, lease=90.0),
    "requeue": lambda q, s: q.requeue(s.dead_id),
    "purge": lambda q, s: q.purge(dead_only=True),
}


def _seeded_journal(path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, last: str) -> tuple:
    """Seed a queue, then make the ``last`` call; return (view before it, view after, journal, its start)."""
    q = open_queue(path)
    seeded = _seed(q, clock)
    before = _view(q)
    start = len(_journal_bytes(path))
    LAST_CALLS[last](q, seeded)
    after = _view(q)
    data = _journal_bytes(path)
    assert data[start:].count(b"\n") == 1, "the last call should append exactly one line"
    assert data[start:].endswith(b"\n")
    assert after != before
    assert len(_lines(data)) >= 8, "the seeded journal has lines of several kinds"
    return before, after, data, start


@pytest.mark.parametrize("zeros", [0, 400], ids=["file-ends", "zeros-follow"])
@pytest.mark.parametrize("last", list(LAST_CALLS))
def test_a_torn_last_line_at_every_byte_is_never_applied_and_the_next_write_cuts_it(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, last: str, zeros: int
):
    """The journal cut anywhere in its last line reads as if the line were not there.

    From the line's first byte to all of it but its newline, with the file ending there
    (an older djq's journal) or zeros after it (the room a journal grows into, longer than
    the put's line): a fresh queue sees the state before the last call (stats, peek, dead
    letters, every task with its lease), ``check`` reports the torn bytes, and the next put
    writes over them, so the file then holds the good lines, the put and zeros only, and
    reads back cleanly.
    """
    before, _, data, start = _seeded_journal(path, open_queue, clock, last)
    assert _view(open_queue(path)) != before  # the whole line is applied
    for cut in range(start, len(data)):  # len(data) - 1: the line without its newline
        copy = _copy(path, tmp_path / f"cut-{cut}" / "Queue.json", data[:cut] + bytes(zeros))
        fresh = open_queue(copy)
        assert _view(fresh) == before, f"cut at byte {cut}"
        problems = fresh.check()
        if cut == start:
            assert problems == []
        else:
            assert len(problems) == 1, problems
            assert f"a {TORN} of {cut - start} bytes" in problems[0]
        assert journal_path(copy).read_bytes() == data[:cut] + bytes(zeros), "check changed the journal"

        new_id = fresh.put({"after": cut})
        written = _journal_bytes(copy)
        assert written[:start] == data[:start]
        event, now = decode_line(written[start:].rstrip(b"\n"))
        assert written.endswith(b"\n")
        assert written[start:].count(b"\n") == 1, "the torn bytes were not cut before the append"
        assert event.payloads == ({"after": cut},)
        assert now == clock.now
        reader = open_queue(copy)
        assert reader.check() == []
        seen = _view(reader)
        assert seen == _view(fresh)
        assert seen["tasks"][:-1] == before["tasks"]
        assert (seen["tasks"][-1].id, seen["tasks"][-1].payload) == (new_id, {"after": cut})
        assert seen["stats"].put_total == before["stats"].put_total + 1
        fresh.close()
        reader.close()


def test_bytes_after_the_zeros_are_never_applied_and_the_next_write_cuts_them(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """Bytes past the first NUL (a write whose pages reached the disk out of order) are not lines.

    They are never applied, even when they look like one; ``check`` reports them. The next
    write cuts them off before writing when they are in the zeros a reader looks at first
    (4 KiB); farther ones are cut by the write that reaches them, or by ``check(fix=True)``:
    they never join a line.
    """
    _, after, data, _ = _seeded_journal(path, open_queue, clock, "put")
    line = _lines(data)[-1]
    for gap in (1, 300, 5000):  # in the zeros a reader looks at first, and past them
        damaged = data + bytes(gap) + line + line[:20] + bytes(100)
        copy = _copy(path, tmp_path / f"gap-{gap}" / "Queue.json", damaged)
        fresh = open_queue(copy)
        assert _view(fresh) == after
        problems = fresh.check()
        assert len(problems) == 1, problems
        assert "bytes other than zeros after its end" in problems[0]
        new_id = fresh.put({"after": gap})
        reader = open_queue(copy)
        if gap > 4096:
            assert len(reader.check()) == 1
            assert reader.check(fix=True) == []
        assert _journal_bytes(copy) == data + _lines(_journal_bytes(copy))[-1]  # checks: zeros only after
        assert reader.check() == []
        assert sorted(t.id for t in reader.peek(1_000)) == sorted([t.id for t in after["peek"]] + [new_id])
        fresh.close()
        reader.close()


@pytest.mark.parametrize("fsync", [True, False])
def test_the_journal_grows_by_zeros_within_max_file_bytes_and_every_process_reads_it(
    path: Path, open_queue: Callable[..., djq.Queue], fsync: bool
):
    """With fsync lines are written over zeros, the file growing by ``GROW``; without, at its end.

    Either way never past ``max_file_bytes``, and a queue with the other setting reads it.
    """
    limit = djq.journal.GROW + 30_000
    a = open_queue(path, max_file_bytes=limit, fsync=fsync)
    b = open_queue(path, max_file_bytes=limit, fsync=fsync)
    a.put("first")
    padded = 0
    for i in range(400):  # past GROW, then past the limit: folded into Queue.json
        (a if i % 2 else b).put({"i": i, "pad": "p" * 200})
        size = journal_path(path).stat().st_size
        assert size <= limit
        padded += size > len(_journal_bytes(path))  # which asserts that only zeros follow the lines
    assert _generation(path) > 1, "the journal never reached the limit"
    assert padded > 300 if fsync else padded == 0, "the lines were not written over zeros with fsync only"
    for q in (a, b, open_queue(path, fsync=not fsync)):
        assert [t.payload for t in q.peek(500)][1:] == [{"i": i, "pad": "p" * 200} for i in range(400)]
        assert q.check() == []


def _damage(data: bytes, line_start: int, where: str) -> bytes:
    """Change one byte of the line at ``line_start``: in its checksum or in its JSON."""
    at = line_start + (2 if where == "checksum" else 20)
    old = data[at : at + 1]
    new = b"0" if old != b"0" else b"1"
    if where == "json":
        new = bytes([data[at] ^ 0x01])
    assert new not in (old, b"\n")
    return data[:at] + new + data[at + 1 :]


def _damaged_middle_line(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, where: str
) -> tuple[Path, int, bytes]:
    """Seed a journal ending in a put, damage (``where``) the line before the last in a copy.

    Returns the copy's queue path, where the bad line starts, and the damaged journal bytes.
    """
    _, _, data, start = _seeded_journal(path, open_queue, clock, "put")
    bad_at = data.rindex(b"\n", 0, start - 1) + 1
    damaged = _damage(data, bad_at, where)
    return _copy(path, tmp_path / "copy" / "Queue.json", damaged), bad_at, damaged


@pytest.mark.parametrize("where", ["checksum", "json"])
@pytest.mark.parametrize("last", ["put", "lease", "ack"])
def test_a_damaged_last_line_is_ignored_and_cut_by_the_next_write(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, last: str, where: str
):
    """A last line whose checksum does not match is never applied; the next put replaces it."""
    before, _, data, start = _seeded_journal(path, open_queue, clock, last)
    damaged = _damage(data, start, where)
    copy = _copy(path, tmp_path / "copy" / "Queue.json", damaged)
    fresh = open_queue(copy)
    assert _view(fresh) == before
    problems = fresh.check()
    assert len(problems) == 1
    assert f"a {TORN} of {len(data) - start} bytes" in problems[0]
    fresh.put("after")
    written = _journal_bytes(copy)
    assert written[:start] == data[:start]
    assert decode_line(written[start:-1])[0].payloads == ("after",)
    reader = open_queue(copy)
    assert reader.check() == []
    assert _view(reader)["tasks"] == [*before["tasks"], _view(fresh)["tasks"][-1]]


@pytest.mark.parametrize("where", ["checksum", "json"])
def test_a_damaged_line_before_the_last_is_corruption_and_never_rewritten(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, where: str
):
    """A bad line with a good line after it: calls raise CorruptQueueError; the files are left as they are."""
    copy, bad_at, damaged = _damaged_middle_line(tmp_path, path, open_queue, clock, where)
    snapshot = copy.read_bytes()
    q = open_queue(copy)
    calls: list[Callable[[djq.Queue], object]] = [
        lambda q: q.stats(),
        lambda q: q.peek(),
        lambda q: q.put("x"),
        lambda q: q.get(),
        lambda q: q.purge(),
        lambda q: q.compact(),
    ]
    for call in calls:
        with pytest.raises(djq.CorruptQueueError) as info:
            call(q)
        assert info.value.path == str(journal_path(copy))
        assert f"bad line at byte {bad_at}" in info.value.reason
        assert journal_path(copy).read_bytes() == damaged
        assert copy.read_bytes() == snapshot
    problems = q.check()
    assert len(problems) == 1
    assert f"bad line at byte {bad_at}" in problems[0]
    assert journal_path(copy).read_bytes() == damaged
    assert temp_files(copy) == []


def test_a_queue_that_met_a_corrupt_line_reads_afresh_once_it_is_repaired(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """CorruptQueueError leaves nothing half-applied: repaired, the journal reads as the writer left it.

    The lines before the bad one were applied to the cached snapshot before the reader met
    it; were that cache kept, the next read would apply them a second time.
    """
    _, after, data, start = _seeded_journal(path, open_queue, clock, "put")
    bad_at = data.rindex(b"\n", 0, start - 1) + 1
    copy = _copy(path, tmp_path / "copy" / "Queue.json", _damage(data, bad_at, "checksum"))
    q = open_queue(copy)
    for _ in range(2):
        with pytest.raises(djq.CorruptQueueError) as info:
            q.stats()
        assert f"bad line at byte {bad_at}" in info.value.reason
    journal_path(copy).write_bytes(data)  # repaired in place: the same file, the same size
    assert _view(q) == after
    q.put("after the repair")
    assert _view(open_queue(copy)) == _view(q)


def test_check_with_fix_reports_a_corrupt_middle_line_and_leaves_it(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """``check(fix=True)`` only cuts torn lines: a corrupt line is reported, never rewritten."""
    copy, bad_at, damaged = _damaged_middle_line(tmp_path, path, open_queue, clock, "checksum")
    q = open_queue(copy)
    try:
        problems = q.check(fix=True)
    finally:
        assert journal_path(copy).read_bytes() == damaged
    assert len(problems) == 1
    assert f"bad line at byte {bad_at}" in problems[0]


@pytest.mark.parametrize("cut", [0, 10], ids=["empty", "torn-header"])
def test_a_journal_without_a_header_gets_one_before_the_next_append(
    path: Path, open_queue: Callable[..., djq.Queue], cut: int
):
    """A journal with no complete header (empty, or cut inside it): the next write starts it afresh.

    It holds no line to apply; appending to it as it is would leave a journal without a
    header, which no reader accepts.
    """
    q = open_queue(path)
    q.put_many(["a", "b"])
    assert q.compact()
    generation = _generation(path)
    _replace_with(journal_path(path), _header(generation)[:cut])
    fresh = open_queue(path)
    assert [t.payload for t in fresh.peek()] == ["a", "b"]
    fresh.put("c")
    data = _journal_bytes(path)
    assert data.startswith(_header(generation))
    assert len(_lines(data)) == 1
    reader = open_queue(path)
    assert reader.check() == []
    assert [t.payload for t in reader.peek()] == ["a", "b", "c"]
    assert [t.payload for t in q.peek()] == ["a", "b", "c"]


# Generations


def test_a_journal_older_than_the_snapshot_is_ignored(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """A crash between compaction's two replaces leaves the new snapshot and the old journal.

    The old journal's lines are already in the snapshot: a reader ignores it (they are
    never applied twice), ``check`` finds nothing wrong, and the next write starts a
    journal of the snapshot's generation.
    """
    q = open_queue(path)
    seeded = _seed(q, clock)
    view = _view(q)
    old = _journal_bytes(path)
    generation = _generation(path)
    assert len(_lines(old)) >= 8
    assert q.compact()
    assert _generation(path) == generation + 1
    assert _journal_bytes(path) == _header(generation + 1)
    _replace_with(journal_path(path), old)  # as if the crash came before the journal's replace

    fresh = open_queue(path)
    assert _view(fresh) == view
    assert fresh.check() == []
    assert _view(q) == view  # a queue that held the new journal reads again too
    q.ack(seeded.held)
    assert _journal_bytes(path).startswith(_header(generation + 1))
    assert len(_lines(_journal_bytes(path))) == 1
    after = _view(q)
    assert after["stats"].acked_total == view["stats"].acked_total + 1
    for reader in (fresh, open_queue(path)):
        assert _view(reader) == after
        assert reader.check() == []


def test_a_journal_newer_than_the_snapshot_is_refused_and_left_alone(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """A snapshot older than its journal (restored from a backup, say) is not silently combined.

    Reading retries a few times (a lock-free reader may have caught a compaction half
    way), then gives up with CorruptQueueError naming the generations; nothing is written.
    """
    q = open_queue(path)
    _seed(q, clock)
    old_snapshot = path.read_bytes()
    q.compact()
    q.put("after the compaction")
    _replace_with(path, old_snapshot)
    snapshot, journal = path.read_bytes(), _journal_bytes(path)

    for reader in (q, open_queue(path)):
        for call in (lambda r: r.stats(), lambda r: r.put("x"), lambda r: r.get(), lambda r: r.compact()):
            with pytest.raises(djq.CorruptQueueError) as info:
                call(reader)
            assert "generation" in info.value.reason
            assert (path.read_bytes(), _journal_bytes(path)) == (snapshot, journal)
        problems = reader.check()
        assert len(problems) == 1
        assert "generation" in problems[0]
    assert temp_files(path) == []


@pytest.mark.parametrize("reader_state", ["fresh", "cached"])
def test_a_reader_that_read_the_snapshot_just_before_a_compaction_reads_both_again(
    path: Path,
    open_queue: Callable[..., djq.Queue],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    reader_state: str,
):
    """Lock-free reader: snapshot of generation g read, then a compaction, then the journal of g+1.

    The reader must not apply the new journal to the old snapshot; it reads both again
    and sees exactly what the writer sees.
    """
    writer = open_queue(path)
    reader = open_queue(path)
    _seed(writer, clock)
    if reader_state == "cached":
        _view(reader)  # the reader has applied the journal so far (and holds it open)
    writer.put("more")
    load = reader.file.snapshot.load
    compactions = []

    def load_then_compact() -> Any:
        current = load()
        if not compactions:
            writer.put("during")
            compactions.append(writer.compact())
        return current

    monkeypatch.setattr(reader.file.snapshot, "load", load_then_compact)
    reads = reader.file.reads
    assert _view(reader) == _view(writer)
    assert compactions == [True]
    # fresh: the old snapshot, then the new one; cached: the old one was in memory already
    assert reader.file.reads - reads == (2 if reader_state == "fresh" else 1)
    assert [t.payload for t in reader.peek()][-2:] == ["more", "during"]


class _JournalOs:
    """Stands in for ``os`` in djq.journal: records fdatasync calls, fails writes or syncs when told.

    Everything else is the real ``os``; the snapshot (``djq.storage``) is written as usual.
    """

    def __init__(self) -> None:
        self.synced: list[tuple[int, int]] = []  #: (inode, size) of the file at each fdatasync
        self.sync_error: OSError | None = None  #: fdatasync fails (an append)
        self.fsync_error: OSError | None = None  #: fsync fails (a new journal's header)
        self.write_error: OSError | None = None
        self.short_write = False  #: write half, then report it: the disk filled part way
        self.after_write: Callable[[], object] | None = None  #: runs right after a write reached the file
        self.before_replace: Callable[[], object] | None = None  #: runs before the journal's replace
        self.before_sync: Callable[[], object] | None = None  #: runs once, as the next fdatasync starts

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        st = os.fstat(fd)
        self.synced.append((st.st_ino, st.st_size))
        if self.before_sync is not None:
            hook, self.before_sync = self.before_sync, None
            hook()
        if self.sync_error is not None:
            raise self.sync_error
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self.fsync_error is not None:
            raise self.fsync_error
        os.fsync(fd)

    def write(self, fd: int, data: bytes) -> int:
        return self.pwrite(fd, data, None)

    def pwrite(self, fd: int, data: bytes, at: int | None) -> int:
        if self.write_error is not None:
            raise self.write_error
        data = data[: len(data) // 2] if self.short_write else data
        written = os.write(fd, data) if at is None else os.pwrite(fd, data, at)
        if self.after_write is not None:
            self.after_write()
        return written

    def replace(self, src: Any, dst: Any) -> None:
        if self.before_replace is not None:
            self.before_replace()
        os.replace(src, dst)


class _OnlyTheJournal:
    """Stands in for ``os`` in djq.files (``write_atomic``): a fake's faults for the journal's files only."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _os(self, fd: int) -> Any:
        return self.fake if ".journal" in os.readlink(f"/proc/self/fd/{fd}") else os

    def fsync(self, fd: int) -> None:
        self._os(fd).fsync(fd)

    def write(self, fd: int, data: bytes) -> int:
        return int(self._os(fd).write(fd, data))

    def pwrite(self, fd: int, data: bytes, at: int) -> int:
        return int(self._os(fd).pwrite(fd, data, at))

    def replace(self, src: Any, dst: Any) -> None:
        (self.fake if str(dst).endswith(".journal") else os).replace(src, dst)


def _use_os(monkeypatch: pytest.MonkeyPatch, fake: Any) -> None:
    """Let ``fake`` stand in for ``os`` wherever djq touches the journal (appends and new journals)."""
    monkeypatch.setattr(djq.journal, "os", fake)
    monkeypatch.setattr(djq.files, "os", os if fake is os else _OnlyTheJournal(fake))


def test_a_reader_between_the_snapshot_replace_and_the_journal_replace_sees_the_right_state(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    """Looking in the middle of a compaction (new snapshot, old journal) shows the state once, not twice."""
    writer = open_queue(path)
    reader = open_queue(path)
    _seed(writer, clock)
    expected = _view(writer)
    _view(reader)
    fake = _JournalOs()
    seen = []
    fake.before_replace = lambda: seen.append((_generation(path), _view(reader), _view(open_queue(path))))
    _use_os(monkeypatch, fake)
    generation = _generation(path)
    writer.compact()
    assert seen == [(generation + 1, expected, expected)]
    assert _view(reader) == expected
    writer.put("after")
    assert _view(reader) == _view(writer)


def test_two_queues_see_each_others_changes_across_frequent_compactions(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """Two queues (two processes' caches) take turns; one compacts while the other holds its cached state.

    With ``compact_bytes=1`` a write compacts whenever the journal outgrows the snapshot
    (a put leaves it to the next write, which may be the other queue's). After every call
    both queues, and a fresh one, see the same state.
    """
    a = open_queue(path, compact_bytes=1)
    b = open_queue(path, compact_bytes=1)
    held: list[Task] = []
    for i in range(120):
        writer, other = (a, b) if i % 2 else (b, a)
        cached = _view(other)
        if i % 3 == 0:
            writer.put_many([{"i": i}] * (1 + i % 2))
        elif i % 3 == 1:
            task = writer.get(lease=10.0)
            assert task is not None
            held.append(task)
        else:
            writer.ack(held.pop(0))
        clock.advance(0.5)
        expected = _view(writer)
        assert _view(other) == expected, f"call {i}"
        assert _view(open_queue(path)) == expected
        assert cached != expected
    print(f"generation {_generation(path)}; compactions {a.file.compactions} by a, {b.file.compactions} by b")
    assert a.file.compactions >= 2
    assert b.file.compactions >= 2


# Many random calls: two journal queues against one rewrite queue

STEPS = 400
COMPACT_BYTES = [1, 300, 2_000, 1 << 20]


@dataclasses.dataclass
class _Mirror:
    """Two journal queues on one file taking turns, and a rewrite queue on another: the same calls."""

    rng: random.Random
    clock: FakeClock
    journal: list[djq.Queue]
    reference: djq.Queue
    reopen: Callable[[], djq.Queue]
    held: list[tuple[Task, Task]] = dataclasses.field(default_factory=list)  #: (journal, reference)
    step: int = 0

    def both(self, call: Callable[[djq.Queue, int], object]) -> tuple[Any, Any]:
        """Run ``call(queue, side)`` on the journal queue whose turn it is and on the reference."""
        q = self.journal[self.step % 2]
        return _outcome(lambda: call(q, 0)), _outcome(lambda: call(self.reference, 1))

    def pick(self) -> tuple[Task, Task] | None:
        return self.rng.choice(self.held[-6:]) if self.held else None

    def run(self, op: str) -> tuple[Any, Any]:
        rng = self.rng
        if op == "put":
            payload = {"k": self.step, "x": rng.random()}
            priority, delay = rng.choice([0, 0, 1, -1]), rng.choice([0.0, 0.0, 4.0])
            return self.both(lambda q, _: q.put(payload, priority=priority, delay=delay))
        if op == "put_many":
            payloads = [{"k": self.step, "i": i} for i in range(rng.randrange(4))]
            priority = rng.choice([0, 2])
            return self.both(lambda q, _: q.put_many(payloads, priority=priority))
        if op in ("get", "get_many"):
            lease, n = rng.choice([5.0, 20.0]), rng.randint(1, 3)
            got = self.both(
                lambda q, _: q.get_many(n, lease=lease) if op == "get_many" else q.get(lease=lease)
            )
            pairs = zip(*got, strict=False) if op == "get_many" else [got]  # compared after
            self.held += [pair for pair in pairs if isinstance(pair[0], Task)]
            return got
        if op in ("ack", "nack", "extend") and self.held:
            pair = self.pick()
            assert pair is not None
            delay, lease = rng.choice([0.0, 3.0]), rng.choice([5.0, 30.0])
            if op == "ack":
                return self.both(lambda q, side: q.ack(pair[side]))
            if op == "nack":
                return self.both(lambda q, side: q.nack(pair[side], delay=delay))
            return self.both(lambda q, side: q.extend(pair[side], lease=lease))
        if op == "ack_many" and self.held:
            chosen = [self.pick() for _ in range(rng.randint(1, 3))]
            return self.both(lambda q, side: q.ack_many([p[side] for p in chosen if p is not None]))
        if op == "requeue":
            dead = [t.id for t in self.reference.dead()]
            task_id = rng.choice(dead) if dead and rng.random() < 0.8 else "999999"
            return self.both(lambda q, _: q.requeue(task_id))
        if op == "purge":
            dead_only = rng.random() < 0.8
            return self.both(lambda q, _: q.purge(dead_only=dead_only))
        if op == "advance":
            self.clock.advance(rng.choice([0.5, 3.0, 11.0]))
            return None, None
        if op == "compact":
            return self.journal[self.step % 2].compact(), True
        if op == "reopen":
            self.journal[self.step % 2].close()
            self.journal[self.step % 2] = self.reopen()
            return None, None
        return None, None  # ack, nack, extend with no lease yet


def _outcome(call: Callable[[], object]) -> Any:
    """The call's result, or the type of the LeaseError it raised (LeaseLost, UnknownTask)."""
    try:
        return call()
    except djq.LeaseError as exc:
        return type(exc)


OPS = {
    "put": 8,
    "put_many": 3,
    "get": 6,
    "get_many": 2,
    "ack": 4,
    "ack_many": 2,
    "nack": 3,
    "extend": 2,
    "requeue": 1,
    "purge": 1,
    "advance": 4,
    "compact": 1,
    "reopen": 1,
}


@pytest.mark.parametrize("seed", range(4))
def test_random_calls_on_two_journal_queues_match_a_rewrite_queue(
    tmp_path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, seed: int
):
    """Random calls alternate between two journal queues on one file (small ``compact_bytes``).

    A rewrite-storage queue gets the same calls on the same fake clock. After every call
    the two journal queues see the same state (tokens included), and it is the reference's
    (ids, states, attempts, payloads, times, counters and each call's result; only the
    lease tokens differ between the two files). Compactions happen often along the way.
    """
    rng = random.Random(seed)
    path = tmp_path / "journal" / "Queue.json"

    def reopen() -> djq.Queue:
        return open_queue(path, compact_bytes=rng.choice(COMPACT_BYTES), max_attempts=2)

    mirror = _Mirror(
        rng=rng,
        clock=clock,
        journal=[reopen(), reopen()],
        reference=open_queue(tmp_path / "rewrite" / "Queue.json", storage="rewrite", max_attempts=2),
        reopen=reopen,
    )
    names, weights = list(OPS), list(OPS.values())
    for step in range(STEPS):
        mirror.step = step
        op = rng.choices(names, weights)[0]
        got, expected = mirror.run(op)
        where = f"seed {seed}, step {step}: {op}"
        assert _tokenless(got) == _tokenless(expected), where
        first, second = (_view(q) for q in mirror.journal)
        assert first == second, where
        assert _tokenless(first) == _tokenless(_view(mirror.reference)), where
    assert clock.now > 1_000_000.0
    stats = mirror.reference.stats()
    assert stats.acked_total > 20
    assert stats.dead_total > 0
    print(f"seed {seed}: generation {_generation(path)}, {stats}")
    assert _generation(path) >= 5, "the journal was seldom compacted"


# A put counts under the lock, and applies once it is free


def _lock_is_free(path: Path) -> bool:
    """Whether the queue's flock can be taken now, from an open file of its own."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the file lets go of the lock, if we took it
    return True


def _spy_on_applying(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each replay of lines and each rule applied from now on, whether the lock was free."""
    applied: list[bool] = []

    def spy(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            applied.append(_lock_is_free(path))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(djq.journal, "replay", spy(djq.journal.replay))
    monkeypatch.setattr(djq.journal, "apply_line", spy(djq.journal.apply_line))
    return applied


def test_a_put_applies_the_lines_it_passed_over_when_its_process_looks_with_the_lock_free(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    """A put needs only how many tasks came before it: under the lock it counts others' lines.

    Another process's puts, leases and acks, and the put itself, are applied later, when
    the putting process next looks at the state, with the lock free; the put's ids and the
    state are what applying them first gives.
    """
    producer, worker = open_queue(path, lock="flock"), open_queue(path, lock="flock")
    assert producer.put("first") == "1"
    worker.put_many(["a", "b", "c"])
    worker.ack(worker.get())
    worker.get()
    applied = _spy_on_applying(path, monkeypatch)
    assert producer.put("second") == "5"
    assert applied == [], "a put applies no line: they wait until its process needs the state"
    assert [t.payload for t in producer.peek()] == ["b", "c", "second"]  # "first" acked, "a" leased
    assert applied == [True, True], "the worker's lines, then the put, each applied with the lock free"
    monkeypatch.undo()
    assert _view(producer) == _view(worker) == _view(open_queue(path))


def test_a_call_after_puts_applies_their_lines_before_it_takes_the_lock(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    """A process that puts, then acks: the ack holds the lock for none of the lines the put left."""
    producer, worker = open_queue(path, lock="flock"), open_queue(path, lock="flock")
    producer.put("held")
    task = producer.get()
    worker.put_many(["a", "b"])
    producer.put("c")
    applied = _spy_on_applying(path, monkeypatch)
    producer.ack(task)
    assert applied == [True, True], "the worker's line and the put's, applied before the ack's lock"
    monkeypatch.undo()
    assert [t.payload for t in producer.peek()] == ["a", "b", "c"]
    assert _view(producer) == _view(worker) == _view(open_queue(path))


def test_a_process_that_only_puts_applies_what_it_deferred_once_it_passes_compact_bytes(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    """Its memory stays bounded when the journal may grow long (a big snapshot), lock free still."""
    producer, other = open_queue(path, compact_bytes=2_000), open_queue(path, compact_bytes=2_000)
    other.put_many([{"pad": "x" * 5_000}] * 4)
    assert other.compact()  # a snapshot of 20 kB: the journal is folded only past that
    producer.put("start")
    folds = producer.file.compactions + other.file.compactions
    applied = _spy_on_applying(path, monkeypatch)
    for n in range(12):
        producer.put({"n": n, "pad": "y" * 100})
        other.put({"n": n, "pad": "z" * 100})
    assert producer.file.compactions + other.file.compactions == folds, "no fold dropped the lines"
    assert applied, "past 2,000 deferred bytes the producer applied them itself"
    assert all(applied), "always with the lock free"
    monkeypatch.undo()
    assert _view(producer) == _view(other) == _view(open_queue(path))


def test_a_process_that_only_puts_folds_the_journal_with_none_of_its_deferred_lines_under_the_lock(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    """The put that makes a fold due lets its lines settle once the lock is free; the next write folds."""
    producer = open_queue(path, lock="flock", compact_bytes=2_000)
    producer.put("start")
    applied = _spy_on_applying(path, monkeypatch)
    for n in range(60):
        producer.put({"n": n, "pad": "y" * 100})
    assert producer.file.compactions >= 2
    assert applied, "its lines were applied"
    assert all(applied), "never with the lock held, not even by the write that folds"
    monkeypatch.undo()
    assert _view(producer) == _view(open_queue(path))
    assert [t.payload for t in producer.peek(100)][:2] == ["start", {"n": 0, "pad": "y" * 100}]


def test_a_queue_that_only_puts_gives_the_ids_and_state_of_one_that_applies_every_line(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """One queue only puts while two others lease, ack, nack and compact; it never looks in between.

    Every id it gets follows the ids before it (whoever put them), and when it looks at
    last it sees what the others and a fresh queue see, through several compactions.
    """
    rng = random.Random(7)
    producer = open_queue(path, compact_bytes=600)
    workers = [open_queue(path, compact_bytes=600) for _ in range(2)]
    producer.put("seed")
    held: list[Task] = []
    expected_id = 2
    for step in range(450):
        roll = rng.random()
        if roll < 0.4:
            count = rng.randrange(1, 4)
            ids = producer.put_many([{"step": step, "i": i} for i in range(count)])
            assert ids == [str(expected_id + i) for i in range(count)], f"step {step}"
            expected_id += count
        elif roll < 0.5:
            assert workers[step % 2].put({"step": step}) == str(expected_id), f"step {step}"
            expected_id += 1
        elif roll < 0.75:
            task = workers[step % 2].get(lease=5.0)
            if task is not None:
                held.append(task)
        elif held:
            task = held.pop(rng.randrange(len(held)))
            call = rng.choice([djq.Queue.ack, djq.Queue.ack, djq.Queue.nack])
            with contextlib.suppress(djq.LeaseLost):  # expired and leased again meanwhile
                call(workers[rng.randrange(2)], task)  # either worker: the token is the task's
        clock.advance(rng.choice([0.1, 0.1, 3.0]))
    assert producer.file.compactions + sum(w.file.compactions for w in workers) >= 5
    expected = _view(workers[0])
    assert _view(producer) == expected
    assert _view(workers[1]) == expected
    assert _view(open_queue(path)) == expected
    assert expected["next_seq"] == expected_id


@pytest.mark.parametrize(
    "bad",
    [{"op": "ack", "id": "1", "token": "nobody's"}, {"op": "nack", "id": "1", "token": "t", "delay": "soon"}],
)
def test_a_put_after_a_checksum_valid_bad_line_is_stored_and_the_next_call_names_the_line(
    path: Path, open_queue: Callable[..., djq.Queue], bad: dict[str, Any]
):
    """A line whose checksum holds but which no djq writes (bad values): a put counts past it.

    The put is stored after it (nothing is lost, the bad line is left as it is), and the
    put's own process reports the line at its next call that looks, as every reader does.
    """
    producer = open_queue(path)
    producer.put_many(["a", "b"])
    doc = orjson.dumps({**bad, "now": 1.0})
    with journal_path(path).open("ab") as f:
        at = f.tell()
        f.write(b"%08x %s\n" % (zlib.crc32(doc), doc))
    damaged = journal_path(path).read_bytes()
    assert producer.put("c") == "3"
    data = journal_path(path).read_bytes()
    assert data.startswith(damaged)
    assert decode_line(data[len(damaged) : -1])[0] == ops.PutMany(payloads=("c",), max_attempts=2)
    for q in (producer, open_queue(path)):
        with pytest.raises(djq.CorruptQueueError, match=f"at byte {at}"):
            q.stats()
    assert journal_path(path).read_bytes() == data


# Durability and failed appends


def _seeded_queue(path: Path, open_queue: Callable[..., djq.Queue], **options: Any) -> djq.Queue:
    """A queue with ``{"n": 1}`` leased and ``{"n": 2}``, ``"three"`` ready; its journal holds one line."""
    q = open_queue(path, **options)
    q.put_many([{"n": 1}, {"n": 2}, "three"])
    assert q.get() is not None
    assert len(_lines(_journal_bytes(path))) == 1  # the first put compacted: Queue.json exists
    return q


def test_with_fsync_each_append_is_fdatasynced_before_the_call_returns(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch
):
    """``fsync=True``: each call that appends fdatasyncs the journal, after the write, before returning."""
    q = _seeded_queue(path, open_queue, fsync=True)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    journal = journal_path(path)
    for call in (lambda: q.put("x"), lambda: q.get(), lambda: q.put_many(["y", "z"])):
        synced = len(fake.synced)
        call()
        st = journal.stat()
        assert fake.synced[synced:] == [(st.st_ino, st.st_size)]
    q.peek()
    q.stats()
    assert len(fake.synced) == 3  # reads never sync


def test_without_fsync_an_append_is_not_synced(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch
):
    """``fsync=False`` skips fdatasync (the change is in the page cache when the call returns)."""
    q = _seeded_queue(path, open_queue, fsync=False)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    q.put("x")
    assert fake.synced == []
    assert len(_lines(_journal_bytes(path))) == 2


def test_with_fsync_the_fdatasync_runs_with_the_lock_free(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch
):
    """Another process puts while a put's fdatasync runs; both calls return once their lines are synced.

    Holding the lock through the fdatasync would make the second put wait for it (and time out).
    """
    q = _seeded_queue(path, open_queue, fsync=True)
    other = open_queue(path, fsync=True, lock_timeout=1.0)
    other.peek()
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    fake.before_sync = lambda: other.put("during")
    q.put("x")
    journal = journal_path(path).stat()
    assert fake.synced[-1] == (journal.st_ino, journal.st_size)  # the last sync was after both lines
    assert len(fake.synced) == 2
    assert [t.payload for t in open_queue(path).peek()][-2:] == ["x", "during"]
    assert _view(q) == _view(other) == _view(open_queue(path))


def _fail_sync_after(fake: _JournalOs, step: Callable[[], object]) -> None:
    """Make the next fdatasync fail with EIO, after ``step`` (another queue's call, synced) ran."""

    def then_fail() -> None:
        step()
        fake.sync_error = OSError(errno.EIO, os.strerror(errno.EIO))

    fake.before_sync = then_fail


@pytest.mark.parametrize("meanwhile", ["a-line-follows", "folded"])
def test_a_failed_fdatasync_keeps_a_change_others_acted_on(
    path: Path,
    open_queue: Callable[..., djq.Queue],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    meanwhile: str,
):
    """The fdatasync fails after another process appended after the change (or folded the journal).

    That process has acted on the change, so it stands and the call returns: with a line
    after it, it is folded into a fresh snapshot (fsynced), and the failure is logged; a
    journal folded meanwhile holds it in a snapshot already. Every view agrees.
    """
    q = _seeded_queue(path, open_queue, fsync=True)
    other = open_queue(path, fsync=True)
    generation = _generation(path)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)

    def act() -> None:
        assert other.get() is not None  # leases {"n": 2}: acts on the state after q's put
        if meanwhile == "folded":
            assert other.compact()

    _fail_sync_after(fake, act)
    with caplog.at_level(logging.WARNING, logger="djq.journal"):
        q.put("x")
    fake.sync_error = None
    assert _generation(path) == generation + 1  # folded: by q after the failure, or by other before it
    expected = "acted on its change" if meanwhile == "a-line-follows" else "folded into a snapshot since"
    assert expected in caplog.text
    fresh = open_queue(path)
    assert fresh.check() == []
    assert [t.payload for t in fresh.peek()] == ["three", "x"]
    assert _view(q) == _view(other) == _view(fresh)
    q.put("after")
    assert [t.payload for t in open_queue(path).peek()] == ["three", "x", "after"]


def test_a_failed_fdatasync_with_no_line_after_it_is_cut_off_even_if_another_process_read_it(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch
):
    """Another process read the change (and wrote nothing) while its fdatasync ran, then the sync failed.

    The change is cut off and the call raises; the reader forgets it at its next look.
    """
    q = _seeded_queue(path, open_queue, fsync=True)
    reader = open_queue(path, fsync=True)
    view = _view(reader)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    glimpses: list[list[Any]] = []
    _fail_sync_after(fake, lambda: glimpses.append([t.payload for t in reader.peek()]))
    _journal_error(q, path, errno.EIO, lambda q: q.put("x"))
    fake.sync_error = None
    assert glimpses == [[{"n": 2}, "three", "x"]]
    assert _view(reader) == _view(q) == _view(open_queue(path)) == view


def test_a_failed_fdatasync_whose_lock_does_not_come_back_in_time_leaves_the_change_to_the_next_fold(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch
):
    """Another process takes the lock during the fdatasync, which fails, and keeps it past ``lock_timeout``.

    The call raises ``LockTimeout``; its change stands (nothing could be decided), and the
    process's next write folds the queue into a fresh snapshot, so it is durable from then.
    """
    q = _seeded_queue(path, open_queue, fsync=True, lock_timeout=0.05)
    generation = _generation(path)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    holder = os.open(path.with_name(path.name + ".lock"), os.O_RDWR)
    try:
        _fail_sync_after(fake, lambda: fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB))
        with pytest.raises(djq.LockTimeout):
            q.put("x")
    finally:
        os.close(holder)  # lets go of the lock
    fake.sync_error = None
    assert [t.payload for t in open_queue(path).peek()] == [{"n": 2}, "three", "x"]
    assert _generation(path) == generation
    q.put("after")
    assert _generation(path) == generation + 1
    fresh = open_queue(path)
    assert fresh.check() == []
    assert [t.payload for t in fresh.peek()] == [{"n": 2}, "three", "x", "after"]
    assert _view(q) == _view(fresh)


class _PowerLoss(_JournalOs):
    """Also keeps what a power loss would leave of the journal: its bytes when the newest flush began.

    A flush covers what was written before it began, not what another process wrote while
    it ran: so of the flushes that returned, the one that began last decides.
    """

    def __init__(self, journal: Path) -> None:
        super().__init__()
        self.journal = journal
        self.began = 0
        self.durable = (0, journal.read_bytes())  # (when its flush began, the bytes); all flushed so far

    def fdatasync(self, fd: int) -> None:
        self.began += 1
        began, data = self.began, os.pread(fd, os.fstat(fd).st_size, 0)
        super().fdatasync(fd)
        assert os.fstat(fd).st_ino == os.stat(self.journal).st_ino  # the journal was never replaced
        self.durable = max(self.durable, (began, data))

    def crash(self, snapshot: Path, into: Path) -> Path:
        """A copy of the queue as the disk holds it now: the snapshot (fsynced) and the durable journal."""
        into.mkdir(mode=0o700)
        for copy, data in (
            (into / snapshot.name, snapshot.read_bytes()),
            (journal_path(into / snapshot.name), self.durable[1]),
        ):
            copy.write_bytes(data)
            copy.chmod(0o600)
        return into / snapshot.name


def test_after_a_power_loss_every_answered_call_is_there_though_flushes_ran_with_the_lock_free(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """A producer's flush runs while a consumer leases the task it just put, and acks another.

    The consumer's calls are answered first, on a line the producer has not flushed yet:
    its own flush covers that line. The disk is copied as a power loss would leave it
    (the journal as of the newest flush that began and returned) after every step, and,
    once, in the middle of a flush; every answered put, lease and ack must be there.
    """
    producer = _seeded_queue(path, open_queue, fsync=True, compact_bytes=10**8, lease=3600.0)
    consumer = open_queue(path, fsync=True, compact_bytes=10**8, lease=3600.0, lock_timeout=1.0)
    fake = _PowerLoss(journal_path(path))
    _use_os(monkeypatch, fake)
    puts: list[str] = []
    leases: dict[str, str] = {}  # task id: token, answered and not acked
    acked: list[str] = []

    def consume() -> None:
        task = consumer.get()
        assert task is not None
        if leases:
            done = sorted(leases)[0]
            consumer.ack(Lease(id=done, token=leases.pop(done)))
            acked.append(done)
        leases[task.id] = task.token  # type: ignore[assignment]

    def holds(image: Path) -> None:
        fresh = djq.Queue(image, storage="journal", fsync=False)
        try:
            assert fresh.check() == []
            tasks = {record.id: record.snapshot() for record in fresh.file.load().tasks.values()}
            assert set(puts) <= set(tasks) | set(acked)
            assert not set(acked) & set(tasks)
            for task_id, token in leases.items():
                assert (tasks[task_id].state, tasks[task_id].token) == ("leased", token)
        finally:
            fresh.close()

    for step in range(6):
        fake.before_sync = consume
        puts.append(producer.put({"step": step}))
        holds(fake.crash(path, tmp_path / f"after-{step}"))
    fake.before_sync = lambda: (consume(), holds(fake.crash(path, tmp_path / "mid-flush")))
    puts.append(producer.put("last"))
    assert len(acked) >= 5


def _journal_error(q: djq.Queue, path: Path, code: int, call: Callable[[djq.Queue], object]) -> None:
    with pytest.raises(djq.StorageError) as info:
        call(q)
    exc = info.value
    assert not isinstance(exc, djq.CorruptQueueError)
    assert exc.errno == code
    assert exc.path == str(journal_path(path))
    assert isinstance(exc.__cause__, OSError)
    assert exc.__cause__.errno == code


FAILURES = ["fdatasync-EIO", "write-ENOSPC", "write-EDQUOT", "short-write"]


def _fail(fake: _JournalOs, failure: str) -> int:
    """Arm ``fake`` for ``failure``; return the errno the call must raise."""
    if failure == "fdatasync-EIO":
        fake.sync_error = OSError(errno.EIO, os.strerror(errno.EIO))
        return errno.EIO
    if failure == "short-write":
        fake.short_write = True
        return errno.ENOSPC
    code = errno.ENOSPC if failure == "write-ENOSPC" else errno.EDQUOT
    fake.write_error = OSError(code, os.strerror(code))
    return code


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_append_raises_storage_error_and_leaves_the_journal_as_before(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch, failure: str
):
    """A full disk or a failed fdatasync: StorageError, the journal cut back to its bytes before the call.

    A fresh queue sees the state without the change, and the queue works again once the
    disk does.
    """
    q = _seeded_queue(path, open_queue, fsync=True)
    before, view = _journal_bytes(path), _view(q)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    code = _fail(fake, failure)
    calls: list[Callable[[djq.Queue], object]] = [
        lambda q: q.put("x"),
        lambda q: q.put_many(["a", "b"]),
        lambda q: q.get(),
        lambda q: q.purge(),
    ]
    for call in calls:
        _journal_error(q, path, code, call)
        assert _journal_bytes(path) == before
        assert _view(open_queue(path)) == view
        assert _view(q) == view
        assert temp_files(path) == []
    _use_os(monkeypatch, os)
    q.put("after")
    reader = open_queue(path)
    assert reader.check() == []
    assert [t.payload for t in reader.peek()] == [{"n": 2}, "three", "after"]


def _put_lines(q: djq.Queue, payloads: list[str]) -> None:
    """Put each payload as its own event in one call: one append, a line per payload (as the broker does)."""

    def change(tx: Transaction) -> None:
        for payload in payloads:
            tx.apply(ops.Put(payload=payload))

    q.engine.transact("put", change)


@pytest.mark.parametrize("looks", ["after-the-failure", "after-the-next-append"])
@pytest.mark.parametrize("failure", ["fdatasync-EIO", "short-write"])
def test_a_lock_free_reader_that_saw_a_failed_append_forgets_it(
    path: Path,
    open_queue: Callable[..., djq.Queue],
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
    looks: str,
):
    """A reader (``peek`` takes no lock) applied lines of an append that then failed and was cut off.

    The reader must drop them: right after the failure it sees the state without them,
    and after the next append (whose lines have the same sizes, so the journal is as long
    as what the reader had applied) it sees that append, like everyone else.
    """
    writer = _seeded_queue(path, open_queue, fsync=True)
    reader = open_queue(path)
    view = _view(reader)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    code = _fail(fake, failure)
    glimpses = []
    fake.after_write = lambda: glimpses.append([t.payload for t in reader.peek()])
    _journal_error(writer, path, code, lambda q: _put_lines(q, ["four", "five"]))
    seen = ["four"] if failure == "short-write" else ["four", "five"]  # the short write: one whole line
    assert glimpses == [[{"n": 2}, "three", *seen]], "the reader did not see the failing append"
    _use_os(monkeypatch, os)
    if looks == "after-the-failure":
        assert _view(reader) == view
    _put_lines(writer, ["FOUR", "FIVE"])
    expected = _view(open_queue(path))
    assert [t.payload for t in expected["peek"]] == [{"n": 2}, "three", "FOUR", "FIVE"]
    assert _view(writer) == expected
    assert _view(reader) == expected


@pytest.mark.parametrize("failure", ["write-ENOSPC", "fsync-EIO"])
def test_a_failed_compaction_leaves_a_readable_queue(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch, failure: str
):
    """The journal's half of a compaction fails (after the new snapshot is in place): nothing is lost.

    The call raises StorageError; the snapshot of the next generation stands beside the old
    journal, which is ignored; a fresh queue sees every task once; the next write works.
    """
    q = _seeded_queue(path, open_queue, fsync=True)
    view = _view(q)
    generation = _generation(path)
    fake = _JournalOs()
    _use_os(monkeypatch, fake)
    if failure == "write-ENOSPC":
        fake.write_error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    else:
        fake.fsync_error = OSError(errno.EIO, os.strerror(errno.EIO))
    code = errno.ENOSPC if failure == "write-ENOSPC" else errno.EIO
    _journal_error(q, path, code, lambda q: q.compact())
    assert temp_files(path) == []
    assert _generation(path) == generation + 1
    assert _view(open_queue(path)) == view
    assert _view(q) == view
    _use_os(monkeypatch, os)
    q.put("after")
    reader = open_queue(path)
    assert reader.check() == []
    assert _journal_bytes(path).startswith(_header(generation + 1))
    assert [t.payload for t in reader.peek()] == [{"n": 2}, "three", "after"]


# check, compact and the command line


def test_check_reports_a_torn_last_line_and_fix_cuts_it(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """``check`` reports torn bytes and leaves them; ``check(fix=True)`` cuts them and reports nothing."""
    before, _, data, start = _seeded_journal(path, open_queue, clock, "put")
    cut = start + (len(data) - start) // 2
    copy = _copy(path, tmp_path / "copy" / "Queue.json", data[:cut])
    q = open_queue(copy)
    problems = q.check()
    assert len(problems) == 1
    assert f"a {TORN} of {cut - start} bytes" in problems[0]
    assert _journal_bytes(copy) == data[:cut]
    assert q.check(fix=True) == []
    assert _journal_bytes(copy) == data[:start]
    assert q.check() == []
    assert _view(open_queue(copy)) == before


BAD_HEADERS = {
    "not-json": b"garbage\n",
    "foreign-json": b'{"hello": 1}\n',
    "wrong-format": b'{"format":"djq.queue","version":1,"generation":1}\n',
    "no-generation": b'{"format":"djq.journal","version":1}\n',
    "generation-not-int": b'{"format":"djq.journal","version":1,"generation":"1"}\n',
    "an-event-line": b"",  # the journal starts with its first event: no header
}


@pytest.mark.parametrize("bad", list(BAD_HEADERS))
def test_a_bad_header_is_reported_and_refused(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock, bad: str
):
    """A journal whose first line is not a djq journal header: every call refuses it, check reports it."""
    q = open_queue(path)
    _seed(q, clock)
    data = _journal_bytes(path)
    header_end = data.index(b"\n") + 1
    damaged = BAD_HEADERS[bad] + data[header_end:]
    _replace_with(journal_path(path), damaged)
    fresh = open_queue(path)
    for call in (lambda r: r.stats(), lambda r: r.put("x")):
        with pytest.raises(djq.CorruptQueueError) as info:
            call(fresh)
        assert "bad header line" in info.value.reason
    problems = fresh.check()
    assert len(problems) == 1
    assert "bad header line" in problems[0]
    assert _journal_bytes(path) == damaged


def _djq(*args: str) -> subprocess.CompletedProcess[str]:
    return run_djq(*args)


def test_cli_compact_folds_the_journal_into_the_snapshot(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """``djq compact``: Queue.json holds every task at the next generation, the journal only its header."""
    q = open_queue(path)
    _seed(q, clock)
    view = _view(q)
    generation = _generation(path)
    assert len(_lines(_journal_bytes(path))) >= 8
    result = _djq("--queue", str(path), "--json", "compact")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"compacted": True}
    assert _journal_bytes(path) == _header(generation + 1)
    snapshot = decode(path.read_bytes(), path)
    assert (snapshot.storage, snapshot.generation) == ("journal", generation + 1)
    assert [r.snapshot() for r in snapshot.state.tasks.values()] == view["tasks"]
    assert _view(q) == view
    assert _view(open_queue(path)) == view


def test_cli_compact_of_a_rewrite_queue_does_nothing(path: Path, open_queue: Callable[..., djq.Queue]):
    """``djq --storage rewrite compact`` on a rewrite queue: nothing to fold, the file unchanged."""
    open_queue(path, storage="rewrite").put("x")
    before = path.read_bytes()
    result = _djq("--queue", str(path), "--storage", "rewrite", "--json", "compact")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"compacted": False}
    assert path.read_bytes() == before
    assert not journal_path(path).exists()


def test_cli_check_reports_a_torn_line_and_fix_cuts_it(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """``djq check`` exits 1 naming the torn line; ``djq check --fix`` cuts it and exits 0."""
    _, _, data, start = _seeded_journal(path, open_queue, clock, "ack")
    copy = _copy(path, tmp_path / "copy" / "Queue.json", data[: start + 5])
    result = _djq("--queue", str(copy), "--json", "check")
    assert result.returncode == 1
    problems = orjson.loads(result.stdout)["problems"]
    assert len(problems) == 1
    assert f"a {TORN} of 5 bytes" in problems[0]
    assert _journal_bytes(copy) == data[: start + 5]
    result = _djq("--queue", str(copy), "--json", "check", "--fix")
    assert result.returncode == 0, result.stdout
    assert _journal_bytes(copy) == data[:start]
    result = _djq("--queue", str(copy), "check")
    assert result.returncode == 0
    assert result.stdout.strip().endswith("ok")


def test_cli_check_reports_a_corrupt_middle_line(
    tmp_path: Path, path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """``djq check`` exits 1 naming the byte of a corrupt line before the last, and changes nothing."""
    copy, bad_at, damaged = _damaged_middle_line(tmp_path, path, open_queue, clock, "json")
    result = _djq("--queue", str(copy), "--json", "check")
    assert result.returncode == 1
    problems = orjson.loads(result.stdout)["problems"]
    assert len(problems) == 1
    assert f"bad line at byte {bad_at}" in problems[0]
    assert _journal_bytes(copy) == damaged


# Mixed storage


def test_a_rewrite_queue_refuses_a_journal_queue_and_leaves_its_files(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """``storage="rewrite"`` on a journal queue: ConfigError naming storage, for reads and writes alike.

    Rewriting Queue.json would drop every change still in the journal, so nothing is written.
    """
    q = open_queue(path)
    _seed(q, clock)
    snapshot, journal = path.read_bytes(), _journal_bytes(path)
    rewrite = open_queue(path, storage="rewrite")
    calls: list[Callable[[djq.Queue], object]] = [
        lambda r: r.stats(),
        lambda r: r.peek(),
        lambda r: r.put("x"),
        lambda r: r.get(),
        lambda r: r.purge(),
        lambda r: r.check(fix=True),
    ]
    for call in calls:
        with pytest.raises(djq.ConfigError) as info:
            call(rewrite)
        assert info.value.field == "storage"
        assert "journal" in str(info.value)
        assert (path.read_bytes(), _journal_bytes(path)) == (snapshot, journal)
    assert temp_files(path) == []
    assert q.check() == []


def test_a_journal_queue_takes_over_a_rewrite_queue_at_its_first_write(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """A rewrite-storage file opened in journal storage: read as is, converted by the first write."""
    old = open_queue(path, storage="rewrite", max_attempts=2)
    _seed(old, clock)
    view = _view(old)
    assert not journal_path(path).exists()
    q = open_queue(path)
    assert _view(q) == view
    assert not journal_path(path).exists(), "a read wrote something"
    q.put("converted")
    snapshot = decode(path.read_bytes(), path)
    assert (snapshot.storage, snapshot.generation) == ("journal", 1)
    assert _journal_bytes(path).startswith(_header(1))
    after = _view(open_queue(path))
    assert after["tasks"][:-1] == view["tasks"]
    assert after["tasks"][-1].payload == "converted"
    with pytest.raises(djq.ConfigError):
        old.stats()


# Issue 11: what the journal records, and what a call that raised left


def test_a_get_many_that_leased_one_task_journals_one_token(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """get_many(50) that leases 1 task writes 1 token, and replaying that line gives the same state."""
    q = open_queue(path)
    q.put("only")
    tasks = q.get_many(50, lease=30.0, owner="w")
    assert len(tasks) == 1
    line = _lines(_journal_bytes(path))[-1]
    doc = orjson.loads(line[9:])
    assert doc["op"] == "lease_many"
    assert doc["tokens"] == [tasks[0].token]
    assert len(line) < 200
    fresh = open_queue(path)
    assert _view(fresh) == _view(q)
    clock.advance(1)
    assert q.get_many(50) == []  # nothing ready, nothing changed: no line at all
    assert _lines(_journal_bytes(path))[-1] == line


def test_a_get_many_that_only_reclaimed_journals_one_token(
    path: Path, open_queue: Callable[..., djq.Queue], clock: FakeClock
):
    """A lease that reclaims an expired last attempt (the task dies) and leases nothing: one token."""
    q = open_queue(path, max_attempts=1)
    q.put("once")
    assert q.get(lease=1.0) is not None
    clock.advance(5)
    assert q.get_many(20) == []
    doc = orjson.loads(_lines(_journal_bytes(path))[-1][9:])
    assert (doc["op"], len(doc["tokens"])) == ("lease_many", 1)
    assert q.stats().dead == 1
    assert _view(open_queue(path)) == _view(q)


@pytest.mark.parametrize(
    "fields",
    [
        {"op": ["put"]},  # unhashable: a bare TypeError before
        {"op": "ack", "id": 1, "token": "t"},
        {"op": "put_many", "payloads": "ab", "priority": 0, "delay": 0.0, "max_attempts": 1},
        {"op": "lease_many", "tokens": [1], "owner": "w", "duration": 30.0},
        {"op": "nack", "id": "1", "token": "t", "delay": "soon"},
        {"op": "purge", "states": [["ready"]]},
    ],
)
def test_a_checksum_valid_line_with_wrong_types_is_corruption(
    path: Path, open_queue: Callable[..., djq.Queue], fields: dict[str, Any]
):
    """A whole line (its checksum matches) that is no valid operation: CorruptQueueError, never TypeError."""
    q = open_queue(path)
    q.put_many(["a", "b"])
    doc = orjson.dumps({**fields, "now": 1.0})
    bad = b"%08x %s\n" % (zlib.crc32(doc), doc)
    with journal_path(path).open("ab") as f:
        f.write(bad)
    with pytest.raises(djq.CorruptQueueError):
        open_queue(path).stats()
    problems = open_queue(path).check()
    assert len(problems) == 1, problems
    assert "bad line" in problems[0]
    with journal_path(path).open("ab") as f:  # not the last line any more: still corruption
        f.write(encode_line(djq.ops.Reap(), 2.0))
    with pytest.raises(djq.CorruptQueueError):
        open_queue(path).stats()


@pytest.mark.parametrize("version", [None, "1", 0, 1.0])
def test_a_journal_header_without_a_version_djq_writes_is_corruption(
    path: Path, open_queue: Callable[..., djq.Queue], version: Any
):
    q = open_queue(path)
    q.put_many(["a", "b"])
    header = {"format": "djq.journal", "generation": _generation(path)}
    if version is not None:
        header["version"] = version
    data = _journal_bytes(path)
    _replace_with(journal_path(path), orjson.dumps(header) + b"\n" + data[data.index(b"\n") + 1 :])
    with pytest.raises(djq.CorruptQueueError, match="version"):
        open_queue(path).stats()


def test_a_failed_compaction_after_an_append_does_not_fail_the_call(
    path: Path,
    open_queue: Callable[..., djq.Queue],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    """The append is durable: the compaction after it is housekeeping, logged and tried again later."""
    caplog.set_level(logging.WARNING)
    q = open_queue(path, fsync=True, compact_bytes=1)
    q.put_many(["a", "b"])
    generation = _generation(path)
    fake = _JournalOs()
    fake.fsync_error = OSError(errno.EIO, os.strerror(errno.EIO))  # the new snapshot's fsync
    monkeypatch.setattr(djq.files, "os", fake)
    names = [f"p{i}" for i in range(12)]
    for name in names:  # the journal soon outgrows the snapshot: every put then tries to compact
        q.put(name)
    assert caplog.text.count("compaction failed") >= 2
    assert _generation(path) == generation
    assert [t.payload for t in open_queue(path).peek(100)] == ["a", "b", *names]
    assert open_queue(path).check() == []
    monkeypatch.setattr(djq.files, "os", os)
    q.put("last")  # tried again: it works now
    assert _generation(path) == generation + 1
    assert [t.payload for t in open_queue(path).peek(100)] == ["a", "b", *names, "last"]
    assert open_queue(path).check() == []


def test_a_read_error_on_the_journal_is_a_storage_error(
    path: Path, open_queue: Callable[..., djq.Queue], monkeypatch: pytest.MonkeyPatch
):
    """``pread`` failing (EIO) is StorageError naming the journal, never a raw OSError."""
    q = open_queue(path)
    q.put_many(["a", "b"])
    writer = open_queue(path)
    writer.put("c")

    class _Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def pread(self, *args: Any) -> bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(djq.journal, "os", _Os())
    monkeypatch.setattr(djq.files, "os", _Os())
    with pytest.raises(djq.StorageError) as info:
        q.stats()
    assert not isinstance(info.value, djq.CorruptQueueError)
    assert info.value.errno == errno.EIO
    assert info.value.path == str(journal_path(path))
    monkeypatch.setattr(djq.journal, "os", os)
    monkeypatch.setattr(djq.files, "os", os)
    assert q.stats().ready == 3


def test_stat_untimed_reports_what_lstat_does_but_no_times(tmp_path: Path):
    """The journal's stat (statx without timestamps): lstat's type, inode and size; a missing file raises."""
    target = tmp_path / "file"
    target.write_bytes(b"12345")
    link = tmp_path / "link"
    link.symlink_to(target)
    for name in (target, link):
        untimed, full = djq.files.stat_untimed(os.fsencode(name)), os.lstat(name)
        assert (untimed.st_mode, untimed.st_ino, untimed.st_size) == (full.st_mode, full.st_ino, full.st_size)
    with pytest.raises(FileNotFoundError):
        djq.files.stat_untimed(os.fsencode(tmp_path / "missing"))
