"""A waiting ``get`` (timeout > 0) of the direct ``Queue``: threads, closing, leaks, odd files.

Threads sharing one ``Queue`` each get every task at most once and lose none; a waiting
get never returns early, even when ``Queue.json.wait`` cannot be locked; ``close()`` from
another thread ends a waiting get cleanly; a ``Queue`` dropped without ``close()`` leaves
no descriptor behind (inotify instances are limited to 128 per user); a process with
descriptors numbered past 1,024 waits as well as any.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import djq
import djq.queue

PACKAGE = Path(djq.__file__).resolve().parent


def _fds() -> list[str]:
    """What this process has open: the targets of /proc/self/fd."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/self/fd/{name}"))
    return found


def _count(kind: str) -> int:
    return sum(1 for target in _fds() if target == f"anon_inode:{kind}")


def _open(path: Path, **options: Any) -> djq.Queue:
    return djq.Queue(path, fsync=False, **options)


def _later(seconds: float, action: Any) -> threading.Thread:
    """Run ``action`` in a thread after ``seconds``."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _put_later(seconds: float, path: Path, payload: Any) -> threading.Thread:
    """Put ``payload`` from another ``Queue`` (as another process would) after ``seconds``."""

    def put() -> None:
        with _open(path) as other:
            other.put(payload)

    return _later(seconds, put)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("many", [False, True], ids=["get", "get_many"])
def test_threads_sharing_one_queue_get_every_task_once(queue_path: Path, many: bool):
    """Eight threads waiting on one Queue (timeout > 0) while another puts: every task reaches one caller.

    The waiting turn is per thread: two threads of one Queue never both "hold" the flock
    (it belongs to the shared descriptor), so no RuntimeError, and no lease lost.
    """
    total, consumers = 400, 8
    q = _open(queue_path)
    got: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def consume() -> None:
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                tasks = q.get_many(3, timeout=0.2) if many else [t for t in [q.get(timeout=0.2)] if t]
                if not tasks:
                    if q.stats().acked_total >= total:
                        return
                    continue
                for task in tasks:
                    q.ack(task)
                with lock:
                    got.extend(t.id for t in tasks)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(consumers)]
    for t in threads:
        t.start()
    put = []
    for n in range(total):
        put.append(q.put({"n": n}))
        if n % 50 == 0:
            time.sleep(0.01)  # let the consumers run dry and wait now and then
    for t in threads:
        t.join(90)
    try:
        assert errors == []
        assert not any(t.is_alive() for t in threads)
        assert Counter(got) == Counter(put), "a task was lost or delivered twice"
        stats = q.stats()
        assert (stats.total, stats.leased, stats.acked_total) == (0, 0, total)
    finally:
        q.close()


class _FailingUnlock:
    """``fcntl`` for djq.queue whose unlock fails, as a closed or broken descriptor would."""

    def __init__(self) -> None:
        import fcntl

        self.real = fcntl
        self.LOCK_EX, self.LOCK_NB, self.LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN
        self.failures = 0

    def flock(self, fd: int, operation: int) -> None:
        if operation == self.LOCK_UN:
            self.failures += 1
            raise OSError(9, "Bad file descriptor")
        self.real.flock(fd, operation)


def test_a_failure_after_a_lease_never_loses_the_task(queue_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Giving the turn back fails after a waiting get leased a task: the task still reaches the caller."""
    fake = _FailingUnlock()
    monkeypatch.setattr(djq.queue, "fcntl", fake)
    q = _open(queue_path)
    try:
        q.stats()  # makes nothing; the folder appears with the first write
        _put_later(0.2, queue_path, "x")
        task = q.get(timeout=10)
        assert task is not None
        assert task.payload == "x"
        assert fake.failures >= 1
        q.ack(task)
        _put_later(0.2, queue_path, "y")
        again = q.get(timeout=10)  # the turn file is opened again
        assert again is not None
        assert again.payload == "y"
    finally:
        q.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wait", ["notify", "poll", "no-inotify"])
@pytest.mark.parametrize("many", [False, True], ids=["get", "get_many"])
def test_close_while_another_thread_waits_ends_its_get_cleanly(
    queue_path: Path, wait: str, many: bool, monkeypatch: pytest.MonkeyPatch
):
    """close() from another thread: the waiting get returns None ([]) promptly, never a raw OSError.

    Its files (turn, inotify, the engine's) are closed once it has left, and the queue
    can be used again afterwards.
    """
    if wait == "no-inotify":
        monkeypatch.setattr(djq.queue, "watcher", lambda *a: None)
    q = _open(queue_path, wait="poll" if wait == "poll" else "notify")
    q.put("first")
    q.ack(q.get())
    before = len(_fds())
    outcome: list[Any] = []

    def wait_long() -> None:
        try:
            outcome.append(q.get_many(2, timeout=30) if many else q.get(timeout=30))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    waiter = threading.Thread(target=wait_long)
    waiter.start()
    time.sleep(0.3)  # it is asleep now, holding the turn and the watch
    started = time.monotonic()
    q.close()
    waiter.join(10)
    assert not waiter.is_alive(), "the waiting get did not return after close()"
    assert time.monotonic() - started < 2.0
    assert outcome == [[] if many else None]
    assert len(_fds()) <= before - (0 if wait == "poll" else 1), "close() left the waiter's files open"
    q.put("again")  # a closed queue opens what it needs again
    task = q.get(timeout=1)
    assert task is not None
    assert task.payload == "again"
    q.close()


@pytest.mark.timeout(120)
def test_a_queue_dropped_without_close_leaks_no_descriptor(queue_path: Path):
    """300 queues, each with waiting gets, dropped without close(): the fd count stays flat.

    Each would otherwise keep its lock file, its journal, its turn and an inotify instance
    (the user's limit is 128 of them by default).
    """
    first = _open(queue_path)
    first.put("make the folder")
    first.ack(first.get())
    first.close()
    gc.collect()
    before, inotify_before = len(_fds()), _count("inotify")
    threads_before = threading.active_count()
    for n in range(300):
        q = _open(queue_path)
        q.put(n)
        task = q.get(timeout=0.5)
        assert task is not None
        q.ack(task)
        if n % 3 == 0:
            assert q.get(timeout=0.005) is None  # waits: takes the turn, makes the watch
        else:
            assert q.get_many(2, timeout=0.005) == []
        del q
    gc.collect()
    assert _count("inotify") == inotify_before
    assert len(_fds()) <= before + 1, "descriptors leaked by queues dropped without close()"
    assert threading.active_count() == threads_before


def test_queue_json_wait_that_cannot_be_locked_still_finds_work(queue_path: Path):
    """Queue.json.wait a directory or a symlink: waiting gets look for themselves, never give up early."""
    q = _open(queue_path)
    try:
        q.put("make the folder")
        q.ack(q.get())
        turn = queue_path.with_name(queue_path.name + ".wait")
        with contextlib.suppress(FileNotFoundError):
            turn.unlink()
        for odd in ("directory", "symlink"):
            if odd == "directory":
                turn.mkdir()
            else:
                turn.rmdir()
                turn.symlink_to(queue_path.parent / "elsewhere")
            started = time.monotonic()
            assert q.get(timeout=0.3) is None
            assert time.monotonic() - started >= 0.3, "a waiting get returned None before its timeout"
            putter = _put_later(0.2, queue_path, odd)
            task = q.get(timeout=10)
            putter.join()
            assert task is not None
            assert task.payload == odd
            assert time.monotonic() - started < 5
            q.ack(task)
        assert not (queue_path.parent / "elsewhere").exists(), "the turn was followed through the symlink"
    finally:
        q.close()


@pytest.mark.timeout(60)
def test_waiting_get_works_with_descriptors_past_1024(queue_path: Path):
    """With more than 1,024 descriptors open, a waiting get waits and wakes (poll, not select)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft < wanted + 100:
        if hard != resource.RLIM_INFINITY and hard < wanted + 100:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + 100, hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(wanted)]
    q = _open(queue_path)
    try:
        q.put("make the folder")
        q.ack(q.get())
        started = time.monotonic()
        assert q.get(timeout=0.2) is None
        assert time.monotonic() - started >= 0.2
        assert max(int(n) for n in os.listdir("/proc/self/fd")) >= 1024
        _later(0.2, lambda: q.put("late"))
        task = q.get(timeout=10)
        assert task is not None
        assert task.payload == "late"
    finally:
        q.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_no_select_select_in_djq():
    """select.select fails on descriptors numbered 1,024 or more: djq waits with poll or selectors."""
    users = [p.name for p in PACKAGE.glob("*.py") if "select.select(" in p.read_text(encoding="utf-8")]
    assert users == []


def test_a_forked_child_waits_on_its_own_turn_and_watch(queue_path: Path):
    """A Queue used in a forked child gets its own turn and inotify (the parent's are left alone)."""
    q = _open(queue_path)
    try:
        q.put("make the folder")
        q.ack(q.get())
        assert q.get(timeout=0.01) is None  # the parent now has a turn file and a watch
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for a task the parent puts
            code = 1
            try:
                os.close(read)
                os.write(write, b"r")
                task = q.get(timeout=20)
                code = 0 if task is not None and task.payload == "to the child" else 3
            finally:
                os._exit(code)
        os.close(write)
        assert os.read(read, 1) == b"r"
        os.close(read)
        time.sleep(0.2)
        with _open(queue_path) as other:
            other.put("to the child")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        q.close()


def test_turn_is_held_by_one_thread_at_a_time(tmp_path: Path):
    """The turn object itself: a second thread of the same process is told the turn is busy."""
    turn = djq.queue._Turn(tmp_path / "Queue.json.wait", 0o600)
    assert turn.take() == "taken"
    seen = SimpleNamespace(result=None)
    other = threading.Thread(target=lambda: setattr(seen, "result", turn.take()))
    other.start()
    other.join()
    assert seen.result == "busy"
    turn.give_back()
    assert turn.take() == "taken"
    turn.give_back()
    turn.close()


def test_a_dropped_queue_leaves_a_lock_object_it_was_given_alone(queue_path: Path):
    """The caller's lock object may guard other queues: collecting one queue never closes it."""
    from djq import locks

    queue_path.parent.mkdir()
    lock = locks.make("flock", queue_path)
    q = _open(queue_path, lock=lock)
    q.put("x")
    lock.acquire()  # held for another queue, say
    del q
    gc.collect()
    lock.release()  # still held until now: not closed under its holder
    with _open(queue_path, lock=lock) as other:
        assert other.get() is not None
