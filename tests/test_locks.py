"""Every lock kind excludes other processes, times out when asked, never deletes its file,
and measures every acquisition."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

import djq
from djq import locks
from djq.model import LockKind

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def _folder(queue_path: Path) -> None:
    """Locks live in the queue's folder, which the queue creates; here the test does."""
    queue_path.parent.mkdir()


def _make(kind: str, queue_path: Path, **options) -> locks.Lock:
    if kind != "flock":
        options.setdefault("poll_interval", 0.001)  # keep the polling kinds quick in tests
    return locks.make(kind, queue_path, **options)


def _increment(kind: str, queue_path: str, counter: str, times: int) -> None:
    """Child: read-modify-write a counter file under the lock, `times` times."""
    lock = _make(kind, Path(queue_path))
    path = Path(counter)
    for _ in range(times):
        lock.acquire(op="increment")
        try:
            path.write_text(str(int(path.read_text()) + 1))
        finally:
            lock.release()


def _hold(kind: str, queue_path: str, held, release) -> None:
    """Child: take the lock, say so, and keep it until told to release."""
    lock = _make(kind, Path(queue_path))
    lock.acquire()
    held.set()
    release.wait(60)
    lock.release()


def _reap(processes) -> None:
    for p in processes:
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join()


@pytest.mark.timeout(120)
def test_lock_excludes_other_processes(lock_kind, queue_path, tmp_path):
    """Two processes incrementing a file under the lock never lose an update."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [
        SPAWN.Process(target=_increment, args=(lock_kind, str(queue_path), str(counter), 150))
        for _ in range(2)
    ]
    try:
        for p in procs:
            p.start()
    finally:
        _reap(procs)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text() == "300"


@contextlib.contextmanager
def _held_elsewhere(kind: str, queue_path: Path):
    """Hold the lock in another process for the block; yield the event that releases it."""
    held, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=_hold, args=(kind, str(queue_path), held, release))
    holder.start()
    try:
        assert held.wait(60)
        yield release
    finally:
        release.set()
        _reap([holder])
    assert holder.exitcode == 0


@pytest.mark.timeout(120)
def test_busy_lock_times_out_then_is_acquired_after_release(lock_kind, queue_path):
    """A held lock raises LockTimeout (a TimeoutError) for a bounded wait, and is free after release."""
    with _held_elsewhere(lock_kind, queue_path) as release:
        lock = _make(lock_kind, queue_path)
        with pytest.raises(djq.LockTimeout) as info:
            lock.acquire(timeout=0)
        with pytest.raises(TimeoutError):
            lock.acquire(timeout=0.05)
        assert info.value.path == str(lock.path)
        assert lock.stats().timeouts == 2
        release.set()
        lock.acquire(timeout=60)
        lock.release()


def test_queue_times_out_with_lock_timeout(lock_kind, queue_path):
    """A queue whose lock is busy fails the call with LockTimeout and changes nothing."""
    with _held_elsewhere(lock_kind, queue_path):
        q = djq.Queue(queue_path, lock=lock_kind, lock_timeout=0.01, fsync=False)
        with pytest.raises(djq.LockTimeout):
            q.put("x")
    assert not queue_path.exists()


def test_recorder_sees_every_acquisition_in_order(lock_kind, queue_path):
    """Each acquisition is recorded with its op, and requested <= acquired <= released."""
    recorder = djq.LockRecorder()
    q = djq.Queue(queue_path, lock=lock_kind, fsync=False, recorder=recorder)
    q.put("x")
    q.ack(q.get())
    samples = recorder.samples()
    assert [s.op for s in samples] == ["put", "lease", "ack"]
    for s in samples:
        assert s.requested_ns <= s.acquired_ns <= s.released_ns
        assert s.wait_s >= 0
        assert s.hold_s >= 0
    stats = q.lock.stats()
    assert stats.acquisitions == 3
    assert stats.hold_s_total == pytest.approx(sum(s.hold_s for s in samples))


@pytest.mark.parametrize("kind", ["flock", "filelock"])
def test_lock_file_is_never_deleted_and_owner_only(kind, queue_path):
    """The flock-based kinds keep their lock file after release, mode 0600."""
    lock = locks.make(kind, queue_path)
    lock.acquire()
    lock.release()
    assert lock.path.exists()
    assert lock.path.stat().st_mode & 0o777 == 0o600


def test_flock_relocks_a_lock_file_replaced_under_it(queue_path):
    """If the lock file is deleted and recreated, a lock re-opens it instead of locking a ghost."""
    first = locks.make("flock", queue_path)
    first.acquire()
    first.release()
    first.path.unlink()
    first.path.touch()
    first.acquire()
    try:
        other = locks.make("flock", queue_path)
        with pytest.raises(djq.LockTimeout):
            other.acquire(timeout=0)
    finally:
        first.release()


def test_forked_child_does_not_share_the_parents_flock(queue_path):
    """A lock object used in a forked child opens its own file: the parent's hold excludes it."""
    lock = locks.make("flock", queue_path)
    lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # child: the same object must not think it holds the parent's lock
            try:
                lock.acquire(timeout=0)
                os._exit(1)
            except djq.LockTimeout:
                os._exit(0)
            except BaseException:
                os._exit(2)
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("child hung")
    finally:
        lock.release()
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_lock_in_a_missing_folder_is_a_storage_error(tmp_path):
    """A lock never creates folders itself (the queue makes them 0700): it names the missing path."""
    for kind in ("flock", "filelock"):
        with pytest.raises(djq.StorageError) as info:
            locks.make(kind, tmp_path / "missing" / "Queue.json").acquire(timeout=1)
        assert "missing" in str(info.value)


def test_release_without_acquire_is_an_error(queue_path):
    """Releasing a flock that is not held raises instead of silently doing nothing."""
    with pytest.raises(RuntimeError):
        locks.make("flock", queue_path).release()


def test_make_refuses_unknown_kinds_and_poll_interval_for_flock(queue_path):
    """No silent fallback: an unknown kind or a meaningless option is a ConfigError."""
    with pytest.raises(djq.ConfigError):
        locks.make("spinlock", queue_path)
    with pytest.raises(djq.ConfigError):
        locks.make(LockKind.FLOCK, queue_path, poll_interval=0.1)
    with pytest.raises(djq.ConfigError):
        djq.Queue(queue_path, lock="spinlock")


def test_queue_accepts_a_lock_object(queue_path):
    """Any object with the Lock protocol can guard a queue."""
    lock = locks.make("flock", queue_path)
    q = djq.Queue(queue_path, lock=lock, fsync=False)
    q.put("x")
    assert q.lock is lock
    assert lock.stats().acquisitions == 1


def test_soft_lock_leaves_no_marker_after_release(queue_path):
    """The soft lock's marker exists only while held."""
    lock = locks.make("soft", queue_path)
    lock.acquire()
    assert lock.path.exists()
    lock.release()
    assert not lock.path.exists()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(60)
def test_timed_out_waits_leave_no_thread_or_descriptor(lock_kind, queue_path):
    """LockTimeout after a timed wait leaves nothing behind that could take the lock later.

    (A waiter thread blocked in flock would take the lock when the holder releases, and
    keep a descriptor and a thread until then.)
    """
    holder = _make(lock_kind, queue_path)
    holder.acquire()
    waiter = _make(lock_kind, queue_path)
    with pytest.raises(djq.LockTimeout):
        waiter.acquire(timeout=0.01)  # opens what the lock keeps open for good
    threads, fds = threading.active_count(), _open_fds()
    for _ in range(20):
        with pytest.raises(djq.LockTimeout):
            waiter.acquire(timeout=0.01)
    assert threading.active_count() == threads
    assert _open_fds() == fds
    assert waiter.stats().timeouts == 21
    holder.release()
    time.sleep(0.05)  # a late helper would grab it now
    third = _make(lock_kind, queue_path)
    third.acquire(timeout=0)  # free: nothing of the timed-out waits took it
    third.release()
    assert threading.active_count() == threads
    for lock in (holder, waiter, third):
        lock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [1e9, math.inf], ids=["1e9", "inf"])
def test_a_long_wait_under_contention_takes_the_lock_and_releases_it(lock_kind, queue_path, timeout):
    """A huge finite (or infinite) timeout on a busy lock waits for the holder, then holds and releases."""
    holder = _make(lock_kind, queue_path)
    held = threading.Event()

    def hold() -> None:  # in its own thread: filelock refuses one thread waiting on itself
        holder.acquire()
        held.set()
        time.sleep(0.2)
        holder.release()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    waiter = _make(lock_kind, queue_path)
    started = time.monotonic()
    waiter.acquire(timeout=timeout)
    assert 0.15 < time.monotonic() - started < 30
    thread.join()
    other = _make(lock_kind, queue_path)
    with pytest.raises(djq.LockTimeout):
        other.acquire(timeout=0)
    waiter.release()
    other.acquire(timeout=0)  # released for good: no one else holds it
    other.release()
    for lock in (holder, waiter, other):
        lock.close()


def test_a_timed_flock_wait_is_granted_soon_after_release(queue_path):
    """Polling without a helper thread still takes a released flock within milliseconds."""
    holder = locks.make("flock", queue_path)
    holder.acquire()
    released = []
    timer = threading.Timer(0.1, lambda: (holder.release(), released.append(time.monotonic())))
    timer.start()
    waiter = locks.make("flock", queue_path)
    waiter.acquire(timeout=10)
    acquired = time.monotonic()
    timer.join()
    assert acquired - released[0] < 0.05
    waiter.release()
