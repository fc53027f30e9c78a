"""SIGKILL writers at random moments: the queue stays valid and nothing acked or put is lost.

A forked child puts, gets and acks (fsync on, as the crash safety under test includes
fsync) and keeps a ledger; the parent kills it after a random 0-50 ms, then checks the
files against the ledger, and at the end drains every task that is left, including the
leases the killed children never acked. This runs in both storages (rewrite: Queue.json
replaced whole; journal: lines appended to Queue.json.journal), once more in journal
storage with a child that compacts after most writes, so kills land inside compactions,
and with a broker: a forked broker serves a forked client that keeps the ledger, and
the broker is the one killed (mid-batch, mid-write, mid-compaction). Compaction is also
killed deterministically just before and after each of its two atomic replaces
(Queue.json, then the journal). Every kill is checked with the same ledger: every put
that was answered is in the file or was acked, no acked task is back, none is doubled.

The test run prints one line per case and the totals (more than 1,000 kills per run);
``benchmarks/soak.py`` runs the same harness for 20,000. Reproduce a failure with
``CRASH_TEST_SEED=<seed> pytest tests/test_crash.py`` (the seed is printed and attached
to the failure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import workers

import djq
from djq.broker import Broker
from djq.files import temp_files
from djq.journal import journal_path
from djq.model import DEFAULT_COMPACT_BYTES, QueueConfig, Task, TaskState
from djq.snapshot import decode

SEED = int(os.environ.get("CRASH_TEST_SEED", "20240917"))
MAX_KILL_DELAY = 0.050  #: seconds; each kill lands uniformly in [0, this) after the fork
#: The children's leases outlive the test, so a task leased by a killed child is never
#: delivered again during the run (each id is leased at most once); the final drain
#: moves the clock past them instead of sleeping.
CHILD_LEASE = 3600.0
CHILD_MAX_ATTEMPTS = 1_000  #: a task leased by several killed children never goes dead
FUTURE = 10_000.0  #: seconds; the drain's clock is this far ahead, past every child lease
TEMP_FILES_MESSAGE = "temp files left by crashed writers"
TORN_MESSAGE = "torn last line"  #: a kill mid-append may leave one; the next write cuts it


@dataclasses.dataclass(frozen=True)
class Case:
    """One way of killing: who writes (a direct child, or a broker serving a client child), and how."""

    kind: str  #: "direct", "compaction" or "broker": how the totals count its kills
    lock: str = "flock"
    storage: str = "journal"
    compact_bytes: int = DEFAULT_COMPACT_BYTES
    compact: float = 0.0  #: a direct child compacts after a step with this probability

    @property
    def name(self) -> str:
        extra = f"-compact_bytes={self.compact_bytes}" if self.compact_bytes != DEFAULT_COMPACT_BYTES else ""
        return f"{self.kind}-{self.lock}-{self.storage}{extra}"


#: The cases and their kills per CI run. Journal storage replays the whole journal in
#: every fresh queue (the parent opens three per kill), so each kill costs more as the
#: journal grows; flock is the default lock, so it gets the most kills. ``compact_bytes=1``
#: folds the journal whenever it outgrows Queue.json (and the direct child also compacts
#: after half of its steps), so most of the writer's time is spent compacting. A broker
#: kill costs two forks and the broker's start (about 1.5 direct kills).
CASES: dict[str, tuple[Case, int]] = {
    case.name: (case, kills)
    for case, kills in [
        (Case("direct", "flock", "rewrite"), 200),
        (Case("direct", "flock", "journal"), 200),
        (Case("direct", "filelock", "rewrite"), 50),
        (Case("direct", "filelock", "journal"), 50),
        (Case("compaction", "flock", "journal", compact_bytes=1, compact=0.5), 220),
        (Case("broker", "flock", "journal"), 120),
        (Case("broker", "flock", "journal", compact_bytes=1), 120),
        (Case("broker", "flock", "rewrite"), 60),
    ]
}
#: What every case of this run did, printed at the end of the module (``_print_totals``).
TOTALS: Counter[str] = Counter()


def _fork(target: Any, *args: Any, **kwargs: Any) -> int:
    """Fork a child running ``target``; return its pid (the child never returns)."""
    # os.fork copies only the calling thread: with other threads alive the child could
    # inherit a lock held by one of them (and Python 3.12+ warns, an error here).
    assert threading.active_count() == 1, f"threads alive before fork: {threading.enumerate()}"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        workers.run_forked(target, *args, **kwargs)
    return pid


def _reap(pid: int, *, kill_after: float | None) -> int:
    """SIGKILL the child after ``kill_after`` s (None: it ends by itself); reap it; return its status."""
    reaped = False
    try:
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return status


def _kill_direct(path: Path, ledger: Path, case: Case, child_seed: int, delay: float) -> int:
    """Fork a child running ``workers.crash_child``, SIGKILL it after ``delay``; return its status."""
    pid = _fork(
        workers.crash_child,
        str(path),
        str(ledger),
        case.lock,
        child_seed,
        lease=CHILD_LEASE,
        max_attempts=CHILD_MAX_ATTEMPTS,
        storage=case.storage,
        compact_bytes=case.compact_bytes,
        compact=case.compact,
    )
    return _reap(pid, kill_after=delay)


def _serve_until_killed(path: str, ready_fd: int, case: Case) -> None:
    """Forked broker: serve ``path`` (fsync on, the children's leases); b"b" on ``ready_fd`` once ready."""
    config = QueueConfig(
        path=Path(path),
        lock=case.lock,
        storage=case.storage,
        fsync=True,
        lease=CHILD_LEASE,
        max_attempts=CHILD_MAX_ATTEMPTS,
        compact_bytes=case.compact_bytes,
    )
    broker = Broker(path, config=config)

    def say_ready() -> None:
        if broker.ready.wait(10):
            os.write(ready_fd, b"b")

    threading.Thread(target=say_ready, daemon=True).start()
    broker.serve()  # until killed


def _broker_client(path: str, ledger: str, seed: int, ready_fd: int) -> None:
    """Forked client of the broker: put, get and ack, logging like ``crash_child``, until the broker dies."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        q = djq.connect(path, timeout=10)
        os.write(ready_fd, b"c")
        workers.ledger_steps(q, fd, random.Random(seed), seed)
    except djq.BrokerError:
        return  # the broker was killed (BrokerUnavailable): what was answered is in the ledger
    raise AssertionError("the broker was not killed within 10 s")


def _read_byte(fd: int, timeout: float) -> bytes:
    """One byte from ``fd`` within ``timeout`` s (b"" on timeout or end of file)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return os.read(fd, 1) if poller.poll(timeout * 1000) else b""


def _kill_broker(path: Path, ledger: Path, case: Case, child_seed: int, delay: float) -> int:
    """Fork a broker and a client of it; SIGKILL the broker ``delay`` s after the client connected.

    Returns the broker's status; the client must then end by itself, having seen the
    broker go (``BrokerUnavailable``).
    """
    ready_r, ready_w = os.pipe()
    broker = client = None
    try:
        broker = _fork(_serve_until_killed, str(path), ready_w, case)
        assert _read_byte(ready_r, 10) == b"b", "the broker did not start; see its stderr"
        client = _fork(_broker_client, str(path), str(ledger), child_seed, ready_w)
        os.close(ready_w)
        ready_w = -1
        assert _read_byte(ready_r, 10) == b"c", "the client did not connect; see its stderr"
        status = _reap(broker, kill_after=delay)
        broker = None
        client_status = _reap_within(client, 15.0)
        client = None
        assert os.waitstatus_to_exitcode(client_status) == 0, "the broker's client failed; see its stderr"
        return status
    finally:
        for pid in (broker, client):
            if pid is not None:
                _reap(pid, kill_after=0)
        for fd in (ready_r, ready_w):
            if fd >= 0:
                os.close(fd)


def _reap_within(pid: int, seconds: float) -> int:
    """Reap a child that should end by itself within ``seconds``; SIGKILL it (and fail) if not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.001)
    _reap(pid, kill_after=0)
    raise AssertionError(f"child {pid} did not end within {seconds} s")


def _read_ledger(ledger: Path) -> dict[str, list[str]]:
    """Return the ids of each ledger event, in order."""
    events: dict[str, list[str]] = {"put": [], "acking": [], "acked": []}
    try:
        text = ledger.read_text(encoding="ascii")
    except FileNotFoundError:
        return events
    if not text.endswith("\n") and text:
        # The kill landed inside the child's one write of a line: possible when the line
        # crosses a page boundary of the file (seen once in thousands of kills). That
        # event counts as not recorded, like a kill just before the write; the cut keeps
        # the next child's lines whole.
        text = text[: text.rfind("\n") + 1]
        os.truncate(ledger, len(text))
    for line in text.splitlines(keepends=True):
        kind, _, task_id = line[:-1].partition(" ")
        events[kind].append(task_id)
    return events


def _log(ledger_fd: int, event: str, task_id: str) -> None:
    os.write(ledger_fd, f"{event} {task_id}\n".encode())


def _inspect(path: Path, case: Case) -> tuple[dict[str, Task], list[Path], int]:
    """Open the queue afresh after a kill; return its tasks, the temp files left, the torn lines (0 or 1)."""
    q = djq.Queue(path, lock=case.lock, storage=case.storage)
    try:
        q.stats()  # parses, or raises
        problems = [p for p in q.check() if not p.startswith(TEMP_FILES_MESSAGE)]
        torn = [p for p in problems if TORN_MESSAGE in p]
        assert [p for p in problems if p not in torn] == []
        tasks = {task_id: record.snapshot() for task_id, record in q.file.load().tasks.items()}
    finally:
        q.close()
    return tasks, temp_files(path), len(torn)


def _write_once(path: Path, case: Case, ledger_fd: int, n: int) -> None:
    """One real write through a fresh queue, logged like the children's: ack a task, or put one."""
    q = djq.Queue(
        path,
        lock=case.lock,
        lease=CHILD_LEASE,
        max_attempts=CHILD_MAX_ATTEMPTS,
        storage=case.storage,
        compact_bytes=case.compact_bytes,
    )
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


def _check_ledger(events: dict[str, list[str]], tasks: dict[str, Task]) -> None:
    acking = set(events["acking"])
    lost = sorted(set(events["put"]) - tasks.keys() - acking, key=int)
    assert lost == [], f"put returned, never acked, but gone from the file: {lost}"
    back = sorted(set(events["acked"]) & tasks.keys(), key=int)
    assert back == [], f"acked but back in the file: {back}"
    twice = sorted((i for i, c in Counter(events["acking"]).items() if c > 1), key=int)
    assert twice == [], f"delivered twice although no lease expired: {twice}"
    dead = sorted((i for i, t in tasks.items() if t.state is TaskState.DEAD), key=int)
    assert dead == [], f"dead letters: {dead}"


def _check_payloads(seen: dict[str, Any], tasks: dict[str, Task]) -> None:
    """No task duplicated: an id keeps its payload from kill to kill, and no payload is under two ids.

    Every payload put is distinct (a child's seed and a random number, or the parent's
    counter), so a change applied twice (a journal line replayed onto a snapshot that
    already holds it) would show up as a second id with the same payload.
    """
    for task_id, task in tasks.items():
        assert seen.setdefault(task_id, task.payload) == task.payload, f"task {task_id} changed its payload"
    payloads = Counter(repr(t.payload) for t in tasks.values())
    twice = [p for p, n in payloads.items() if n > 1]
    assert twice == [], f"the same payload under two ids: {twice}"


@pytest.fixture(scope="module", autouse=True)
def _print_totals(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module: print the kills of this run and what the ledger found (shown despite capture)."""
    TOTALS.clear()
    yield
    kinds = ", ".join(f"{TOTALS[k]} {k}" for k in ("direct", "compaction", "broker"))
    line = (
        f"crash totals: {TOTALS['kills']} SIGKILLs ({kinds}); ledger: {TOTALS['put']} puts answered, "
        f"{TOTALS['acked']} acks answered, {TOTALS['lost']} answered puts lost, "
        f"{TOTALS['back']} acked tasks back, {TOTALS['drained']} drained at the ends "
        f"({TOTALS['abandoned']} abandoned leases); {TOTALS['temp']} kills left a temp file, "
        f"{TOTALS['torn']} a torn line: each removed by the next write"
    )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("case", [c for c, _ in CASES.values()], ids=list(CASES))
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, case: Case):
    """A writer (or a broker) killed at random moments, again and again: no answered put lost, no ack undone.

    After every kill the files load and check cleanly (but for a temp file or a torn last
    line, which the next write removes), every put that returned is there or was acked,
    no task is duplicated; at the end every task left is delivered exactly once. The
    compaction case folds the journal whenever it outgrows Queue.json (``compact_bytes=1``)
    and after half of the child's steps, so many kills land between a compaction's replace
    of Queue.json and its replace of the journal, or inside either.
    """
    kill_again_and_again(tmp_path, case, CASES[case.name][1], SEED)


def kill_again_and_again(
    folder: Path,
    case: Case,
    kills: int,
    seed: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Kill ``kills`` writers of ``case`` in ``folder``, checking the ledger after each; return the counts.

    The counts (``kills``, ``put``, ``acked``, ``drained``, ``abandoned``, ``temp``,
    ``torn``, ``stale``, ``lost``, ``back``) are also added to ``TOTALS``. Raises
    AssertionError (with the seed in a note) at the first kill the ledger or the files
    disagree with. ``progress`` is called after each kill with the kills done.
    """
    print(f"CRASH_TEST_SEED={seed}")
    rng = random.Random(f"{seed}-{case.name}")
    kill_one = _kill_broker if case.kind == "broker" else _kill_direct
    path = folder / "q" / "Queue.json"
    ledger = folder / "ledger.txt"
    ledger_fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    counts: Counter[str] = Counter()
    payloads: dict[str, Any] = {}
    kill = -1
    try:
        for kill in range(kills):
            status = kill_one(path, ledger, case, rng.randrange(2**32), rng.uniform(0, MAX_KILL_DELAY))
            assert os.WIFSIGNALED(status), f"the child exited on its own ({status:#x}); see its stderr"
            assert os.WTERMSIG(status) == signal.SIGKILL

            counts["stale"] += 0 <= _journal_generation(path) < _snapshot_generation(path)
            tasks, temps, torn = _inspect(path, case)
            assert len(temps) <= 1, f"more than one temp file after one kill: {temps}"
            counts["temp"] += len(temps)
            counts["torn"] += torn
            _check_ledger(_read_ledger(ledger), tasks)
            _check_payloads(payloads, tasks)

            _write_once(path, case, ledger_fd, kill)  # the next write cleans up
            assert temp_files(path) == [], "a temp file survived the next write"
            journal = journal_path(path)
            if journal.exists():  # its lines, then only the zeros it grows into
                lines, _, zeros = journal.read_bytes().partition(b"\0")
                assert lines.endswith(b"\n"), "a torn line survived the next write"
                assert not zeros.strip(b"\0"), "bytes other than zeros after the journal's end"
            if progress is not None:
                progress(kill + 1)

        kill = -1  # the end: everything left is delivered
        tasks, _, _ = _inspect(path, case)
        events = _read_ledger(ledger)
        _check_ledger(events, tasks)
        _check_payloads(payloads, tasks)
        delivered = _drain(path, case, len(tasks))
        assert sorted(delivered, key=int) == sorted(tasks, key=int), (
            "the drain did not deliver each task left once"
        )
        unacked = set(events["put"]) - set(events["acking"])
        assert unacked <= set(delivered), f"never delivered: {sorted(unacked - set(delivered), key=int)}"
        assert not set(events["acked"]) & set(delivered), "an acked task was delivered again"

        stats = workers.final_stats(str(path), case.lock, storage=case.storage)
        assert stats.total == 0
        assert stats.put_total == stats.acked_total
        assert stats.dead_total == 0
        abandoned = [i for i, t in tasks.items() if t.state is TaskState.LEASED]
        counts.update(
            kills=kills,
            put=len(events["put"]),
            acked=len(events["acked"]),
            drained=len(delivered),
            abandoned=len(abandoned),
        )
        counts["lost"] = counts["back"] = 0  # checked after every kill and at the end
        print(
            f"{case.name}: {kills} kills, {counts['temp']} left a temp file, {counts['torn']} a torn line, "
            f"{counts['stale']} a journal older than Queue.json (generation {_snapshot_generation(path)}); "
            f"{stats.put_total} tasks put, {len(events['put'])} puts, {len(events['acked'])} acks answered; "
            f"{len(delivered)} drained, {len(abandoned)} of them leases the killed writers never acked"
        )
        TOTALS.update(counts)
        TOTALS[case.kind] += kills
        return counts
    except BaseException as exc:
        where = "at the end" if kill < 0 else f"after kill {kill}"
        exc.add_note(f"reproduce with CRASH_TEST_SEED={seed} ({case.name}, {where})")
        raise
    finally:
        os.close(ledger_fd)


def _snapshot_generation(path: Path) -> int:
    """The generation of Queue.json (0 before it exists)."""
    return decode(path.read_bytes(), path).generation if path.exists() else 0


def _journal_generation(path: Path) -> int:
    """The generation in the journal's header (-1 without a journal or a complete header)."""
    try:
        header, newline, _ = journal_path(path).read_bytes().partition(b"\n")
    except FileNotFoundError:
        return -1
    return int(orjson.loads(header)["generation"]) if newline else -1


#: Where a compaction is killed: just before or after its 1st ``os.replace`` (Queue.json)
#: or its 2nd (the journal). What the files then hold: (Queue.json's generation, the
#: journal's, the temp files left), the generations relative to the queue's before.
COMPACTION_STEPS = {
    "before-snapshot-replace": (0, 0, 1),
    "after-snapshot-replace": (1, 0, 0),
    "before-journal-replace": (1, 0, 1),
    "after-journal-replace": (1, 1, 0),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", list(COMPACTION_STEPS))
def test_sigkill_at_each_step_of_a_compaction_loses_nothing(tmp_path: Path, step: str):
    """A compaction killed just before or after each of its atomic replaces: every task stays, once.

    The files are then the old pair, the new snapshot with the old journal (already folded
    into it: ignored, never applied twice), or the new pair; a fresh queue sees exactly the
    tasks of before, the next write removes any temp file and starts a journal of the
    snapshot's generation, and the queue then checks clean.
    """
    path = tmp_path / "q" / "Queue.json"
    q = djq.Queue(path, fsync=True)
    try:
        q.put_many([{"n": n} for n in range(6)])
        for _ in range(2):
            task = q.get()
            assert task is not None
            q.ack(task)
        assert q.get() is not None  # one task stays leased
        q.put("last")
        before = [r.snapshot() for r in q.file.load().tasks.values()]
        generation = _snapshot_generation(path)
        assert _journal_generation(path) == generation
    finally:
        q.close()

    when, _, which = step.partition("-")
    replace = 1 if which == "snapshot-replace" else 2
    status = _reap(_fork(workers.compact_until_killed, str(path), replace, when), kill_after=None)
    assert os.WIFSIGNALED(status), f"the child was not killed at {step} ({status:#x}); see its stderr"
    assert os.WTERMSIG(status) == signal.SIGKILL
    TOTALS.update(kills=1, compaction=1)

    snapshot_step, journal_step, temps = COMPACTION_STEPS[step]
    assert _snapshot_generation(path) == generation + snapshot_step
    assert _journal_generation(path) == generation + journal_step
    assert len(temp_files(path)) == temps
    q = djq.Queue(path, fsync=True)
    try:
        assert [r.snapshot() for r in q.file.load().tasks.values()] == before
        assert [p for p in q.check() if not p.startswith(TEMP_FILES_MESSAGE)] == []
        q.put("after")
        assert temp_files(path) == []
        assert _journal_generation(path) == _snapshot_generation(path) == generation + snapshot_step
    finally:
        q.close()
    fresh = djq.Queue(path)
    try:
        assert fresh.check() == []
        tasks = [r.snapshot() for r in fresh.file.load().tasks.values()]
        assert tasks[:-1] == before
        assert tasks[-1].payload == "after"
        assert fresh.stats().put_total == 8
    finally:
        fresh.close()


def _drain(path: Path, case: Case, expected: int) -> list[str]:
    """Get and ack until empty, with a clock past every lease; return the ids delivered."""
    q = djq.Queue(
        path,
        lock=case.lock,
        storage=case.storage,
        clock=lambda: time.time() + FUTURE,
        max_attempts=CHILD_MAX_ATTEMPTS,
    )
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
