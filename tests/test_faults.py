"""Fault injection at every I/O call, as SQLite tests it (RELIABILITY R2).

A fixed workload (puts, gets, acks, nacks, an extend, compactions; both storages; fsync
on) runs once while every call djq makes to ``os.open``, ``os.write``, ``os.pwrite``,
``os.read``, ``os.pread``, ``os.fsync``, ``os.fdatasync``, ``os.replace``, ``os.link`` and
``os.ftruncate`` (which undoes a failed append: persistent faults fail it too) is counted
(the ``os`` name of djq.files, djq.snapshot, djq.journal and djq.locks is a counting
wrapper). Then, for k = 1..N, the workload reruns from the same start (same clock, same
tokens) with the k-th call failing, with ENOSPC (a write then writes half and returns
short, as a filling disk does) and with EIO, and again (SQLite's persistent mode) with
every call from the k-th to the end of that step failing. After the call that met the
fault:

* it raised ``StorageError`` if and only if its change did not happen: the committed
  state (what a fresh ``Queue`` sees) is the state before the call if it raised, the
  state after it (as in the run without faults) if it did not;
* the files decode (a fresh queue's ``check()`` reports nothing), and the writer and
  a queue open since the start (a process with a cache) see the committed state;
* the workload continues: a put, a get and an ack work and a fresh queue sees them.

Once per storage a real subprocess reads the committed state too. N is large enough in
journal storage to sample k, but every call site (file and line of the call) is
covered at least once. The run prints ``fault injection <storage>: N=.. calls, .. call
sites, .. runs, .. held``.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

import djq
import djq.api
import djq.engine
import djq.files
import djq.journal
import djq.locks
import djq.snapshot
from djq.snapshot import encode

MODULES = (djq.files, djq.snapshot, djq.journal, djq.locks)
ERRNOS = (errno.ENOSPC, errno.EIO)
MAX_RUNS = 220  #: per storage and errno; above it k is sampled (every call site kept)
T0 = 1_764_300_000.25


class _FaultyOs:
    """Stands in for ``os`` in djq's modules: counts the I/O calls while ``counting``; fails one.

    ``fail_at`` is the 1-based number of the call to fail (it raises before doing anything);
    ``sites`` records, for each counted call, its name, the djq file and line that made it,
    and the workload step it was in.
    """

    def __init__(self) -> None:
        self.counting = False
        self.count = 0
        self.step = -1
        self.fail_at = 0
        self.persistent = False  #: every call from ``fail_at`` on fails, not only that one
        self.code = errno.EIO
        self.fired_in: int | None = None  #: the step in which the fault was raised
        self.sites: list[tuple[str, str, int]] = []
        self.tokens = itertools.count()  #: the lease tokens handed out (reset for every run)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        if self.counting:
            self.count += 1
            caller = sys._getframe(2)
            site = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"
            self.sites.append((name, site, self.step))
            if self.count == self.fail_at or (self.persistent and 0 < self.fail_at <= self.count):
                if self.fired_in is None:
                    self.fired_in = self.step
                fd, data = (*args, b"")[:2] if name in ("write", "pwrite") else (0, b"")
                if self.code == errno.ENOSPC and not self.persistent and len(data) > 1:
                    part = bytes(data[: len(data) // 2])  # the disk fills part way
                    return os.write(fd, part) if name == "write" else os.pwrite(fd, part, args[2])
                raise OSError(self.code, os.strerror(self.code))
        return getattr(os, name)(*args, **kw)

    def open(self, *args: Any, **kw: Any) -> Any:
        return self._call("open", *args, **kw)

    def write(self, *args: Any, **kw: Any) -> Any:
        return self._call("write", *args, **kw)

    def pwrite(self, *args: Any, **kw: Any) -> Any:
        return self._call("pwrite", *args, **kw)

    def read(self, *args: Any, **kw: Any) -> Any:
        return self._call("read", *args, **kw)

    def pread(self, *args: Any, **kw: Any) -> Any:
        return self._call("pread", *args, **kw)

    def fsync(self, *args: Any, **kw: Any) -> Any:
        return self._call("fsync", *args, **kw)

    def fdatasync(self, *args: Any, **kw: Any) -> Any:
        return self._call("fdatasync", *args, **kw)

    def replace(self, *args: Any, **kw: Any) -> Any:
        return self._call("replace", *args, **kw)

    def ftruncate(self, *args: Any, **kw: Any) -> Any:
        return self._call("ftruncate", *args, **kw)

    def link(self, *args: Any, **kw: Any) -> Any:
        return self._call("link", *args, **kw)


Step = Callable[[djq.Queue, dict[str, Any], FakeClock], object]


def _get(q: djq.Queue, held: dict[str, Any], key: str, **kw: Any) -> None:
    task = q.get(**kw)
    assert task is not None
    held[key] = task


def _get_many(q: djq.Queue, held: dict[str, Any], key: str, n: int) -> None:
    tasks = q.get_many(n, lease=30.0)
    assert tasks
    held[key] = tasks


def _advance_and_extend(q: djq.Queue, held: dict[str, Any], clock: FakeClock) -> None:
    clock.advance(1.0)
    q.extend(held["m"][1], lease=60.0)


def _put_from_another_process(q: djq.Queue, clock: FakeClock) -> None:
    """A put through a second handle, as another process makes one: ``q`` must read its line."""
    with djq.Queue(q.path, storage=q.config.storage, clock=clock, fsync=True, compact_bytes=1) as other:
        other.put("o")


STEPS: list[tuple[str, Step]] = [
    ("put", lambda q, h, c: q.put("a")),
    ("put_many", lambda q, h, c: q.put_many(["b", "c", {"n": 4}])),
    ("get", lambda q, h, c: _get(q, h, "t1", lease=30.0, owner="w1")),
    ("get_many", lambda q, h, c: _get_many(q, h, "m", 2)),
    ("ack", lambda q, h, c: q.ack(h["t1"])),
    ("nack", lambda q, h, c: q.nack(h["m"][0])),
    ("extend", _advance_and_extend),
    ("ack_many", lambda q, h, c: q.ack_many([h["m"][1]])),
    ("put-priority", lambda q, h, c: q.put("e", priority=5)),
    ("compact", lambda q, h, c: q.compact()),
    ("get_many-50", lambda q, h, c: _get_many(q, h, "all", 50)),
    ("nack-delay", lambda q, h, c: q.nack(h["all"][0], delay=5.0)),
    ("ack_many-rest", lambda q, h, c: q.ack_many(h["all"][1:])),
    ("put-other", lambda q, h, c: _put_from_another_process(q, c)),  # the next step reads its line
    ("put_many-2", lambda q, h, c: q.put_many(["f", "g"])),
    ("get-2", lambda q, h, c: _get(q, h, "t2", lease=30.0)),
    ("ack-2", lambda q, h, c: q.ack(h["t2"])),
]


@dataclass
class _Run:
    """One run of the workload: the queue, its clock and tokens, what each step left."""

    path: Path
    storage: str
    fake: _FaultyOs
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    held: dict[str, Any] = field(default_factory=dict)

    def open(self) -> djq.Queue:
        # compact_bytes=1: a journal longer than its snapshot is folded after the append
        return djq.Queue(self.path, storage=self.storage, clock=self.clock, fsync=True, compact_bytes=1)


def _committed(run: _Run) -> bytes:
    """The state a fresh process sees (a new ``Queue``; nothing is counted or failed)."""
    counting, run.fake.counting = run.fake.counting, False
    try:
        with run.open() as fresh:
            return fresh.engine.look(lambda current, now: encode(current))
    finally:
        run.fake.counting = counting


def _problems(run: _Run) -> list[str]:
    counting, run.fake.counting = run.fake.counting, False
    try:
        with run.open() as fresh:
            return fresh.check()
    finally:
        run.fake.counting = counting


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _FaultyOs:
    fake = _FaultyOs()
    for module in MODULES:
        monkeypatch.setattr(module, "os", fake)

    def token() -> str:
        return f"tok{next(fake.tokens):04d}"

    monkeypatch.setattr(djq.api, "new_token", token)
    monkeypatch.setattr(djq.api, "new_tokens", lambda n: tuple(token() for _ in range(n)))
    return fake


def _reference(tmp_path: Path, storage: str, fake: _FaultyOs) -> tuple[list[bytes], list[bytes]]:
    """Run the workload without faults; return the committed state before and after each step."""
    fake.tokens = itertools.count()
    fake.count, fake.fail_at, fake.persistent, fake.sites = 0, 0, False, []
    run = _Run(tmp_path / "reference" / "Queue.json", storage, fake)
    q = run.open()
    before, after = [], []
    for i, (_, step) in enumerate(STEPS):
        before.append(_committed(run))
        fake.step, fake.counting = i, True
        try:
            step(q, run.held, run.clock)
        finally:
            fake.counting = False
        after.append(_committed(run))
    q.close()
    assert _problems(run) == []
    return before, after


def _sample(fake: _FaultyOs) -> list[int]:
    """Every k up to MAX_RUNS; beyond, the first call of each site and a seeded sample of the rest."""
    n = len(fake.sites)
    if n <= MAX_RUNS:
        return list(range(1, n + 1))
    first: dict[tuple[str, str], int] = {}
    for k, (name, site, _) in enumerate(fake.sites, start=1):
        first.setdefault((name, site), k)
    rest = sorted(set(range(1, n + 1)) - set(first.values()))
    chosen = set(first.values()) | set(random.Random(11).sample(rest, max(MAX_RUNS - len(first), 0)))
    return sorted(chosen)


def _subprocess_view(run: _Run) -> bytes:
    code = (
        "import sys, djq\n"
        "from djq.snapshot import encode\n"
        "q = djq.Queue(sys.argv[1], storage=sys.argv[2])\n"
        "sys.stdout.buffer.write(q.engine.look(lambda s, now: encode(s)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(run.path), run.storage], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def _faulted_run(
    tmp_path: Path,
    storage: str,
    fake: _FaultyOs,
    k: int,
    code: int,
    expected: tuple[list[bytes], list[bytes]],
) -> tuple[str | None, _Run]:
    """Rerun the workload with call ``k`` failing; return what did not hold (None if all did)."""
    before, after = expected
    fake.tokens = itertools.count()
    fake.count, fake.fail_at, fake.code, fake.fired_in, fake.sites = 0, k, code, None, []
    run = _Run(tmp_path / f"{storage}-{k}-{code}-{int(fake.persistent)}" / "Queue.json", storage, fake)
    q = run.open()
    other = run.open()  # another process that keeps its cache: it looks after every step

    def seen(queue: djq.Queue) -> bytes:
        return queue.engine.look(lambda current, now: encode(current))

    try:
        for i, (name, step) in enumerate(STEPS):
            fake.step, fake.counting = i, True
            raised: BaseException | None = None
            try:
                step(q, run.held, run.clock)
            except djq.StorageError as exc:
                raised = exc
            except Exception as exc:  # anything else is a failure of djq's error contract
                return f"step {name}: {type(exc).__name__}: {exc}", run
            finally:
                fake.counting = False
            if seen(other) != _committed(run):
                return f"step {name}: a process with a cache sees another state than a fresh one", run
            if fake.fired_in is None:
                if raised is not None:
                    return f"step {name}: raised {raised!r} without a fault", run
                continue
            view = _committed(run)
            if raised is not None and view != before[i]:
                return f"step {name}: raised {raised!r} but its change is committed", run
            if raised is None and view != after[i]:
                changed = "is not" if view == before[i] else "differs from the run without faults, "
                return f"step {name}: returned but its change {changed} committed", run
            if seen(q) != view:
                return f"step {name}: the writer sees another state than a fresh queue", run
            problems = _problems(run)
            if problems:
                return f"step {name}: check() reports {problems}", run
            q.put("after")  # the workload can go on
            task = q.get(lease=30.0)
            if task is None:
                return f"step {name}: no task after the fault", run
            q.ack(task)
            if not _committed(run) == seen(q) == seen(other) or _problems(run):
                return f"step {name}: after the fault, the next calls left the processes out of step", run
            return None, run
        return f"call {k} was never made", run
    finally:
        fake.counting = False
        q.close()
        other.close()


@pytest.mark.parametrize("storage", ["journal", "rewrite"])
def test_every_io_call_failing_leaves_the_committed_state(
    tmp_path: Path, fake: _FaultyOs, storage: str, capsys: pytest.CaptureFixture[str]
):
    """Fail the k-th I/O call for every sampled k: StorageError iff not committed, files valid."""
    expected = _reference(tmp_path, storage, fake)
    sites = list(fake.sites)
    n = len(sites)
    kinds = {name for name, _, _ in sites}
    assert {"open", "write", "fsync", "replace"} <= kinds, kinds
    if storage == "journal":
        assert {"fdatasync", "pread", "pwrite", "link"} <= kinds, kinds
    ks = _sample(fake)
    assert {(sites[k - 1][0], sites[k - 1][1]) for k in ks} == {(s[0], s[1]) for s in sites}
    failures = []
    runs = 0
    subprocess_checked = False
    for code, persistent in itertools.product(ERRNOS, (False, True)):
        for k in ks:
            fake.persistent = persistent
            failure, run = _faulted_run(tmp_path, storage, fake, k, code, expected)
            fake.persistent = False
            runs += 1
            if failure is not None:
                name, site, _ = sites[k - 1]
                mode = "and every call after it" if persistent else "alone"
                failures.append(f"k={k} ({name} at {site}, {errno.errorcode[code]}, {mode}): {failure}")
            elif not subprocess_checked and k >= n // 2:
                assert _subprocess_view(run) == _committed(run)  # a real other process agrees
                subprocess_checked = True
    held = runs - len(failures)
    with capsys.disabled():
        print(
            f"\nfault injection {storage}: N={n} calls, {len({(s[0], s[1]) for s in sites})} call sites, "
            f"{runs} runs ({len(ks)} k x {len(ERRNOS)} errnos x the k-th call alone or every call "
            f"from it failing), {held} held"
        )
    assert subprocess_checked
    assert not failures, "\n".join(failures[:30])
