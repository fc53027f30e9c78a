"""The locks that guard ``Queue.json``, each one measured.

The lock kind is an experimental variable (``model.LockKind``):

* ``"flock"``: ``fcntl.flock`` on ``Queue.json.lock``, waiting in the kernel. No polling:
  the kernel wakes the next waiter when the holder releases. The default. Only a wait
  with a finite timeout polls (flock has no timeout), in the caller's thread.
* ``"filelock"``: ``filelock.FileLock`` on the same file: non-blocking tries, sleeping
  ``poll_interval`` between them (the package's 0.05 s unless told otherwise). It uses
  ``flock`` underneath, so it excludes ``"flock"`` users of the same queue too.
* ``"soft"``: ``filelock.SoftFileLock``: a marker file ``Queue.json.softlock`` that exists
  while held. It does not exclude the other two kinds: never mix it with them on one
  queue. It is not crash-safe: a holder killed between creating the marker and writing
  its owner into it leaves an empty marker that filelock never breaks (found by
  tests/test_crash.py), so later calls wait for ever unless ``lock_timeout`` is set.

The lock file of ``flock`` and ``filelock`` is separate from ``Queue.json`` (which is
replaced on every write, so a lock on it would protect nothing) and is never deleted
(deleting it lets two holders in at once). There is no silent fallback between kinds.

Every lock records when it was requested, acquired and released
(``time.perf_counter_ns``): running totals always (``stats()``), and every acquisition
when a ``metrics.LockRecorder`` is attached. Nothing is logged or formatted while the
lock is held. Imports from djq: ``errors``, ``model``, ``metrics``, ``process``.
"""

from __future__ import annotations

import errno
import fcntl
import inspect
import math
import os
import time
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import filelock

from . import process
from .errors import ConfigError, LockTimeout, StorageError
from .metrics import LockRecorder, LockStatistics
from .model import LockKind

__all__ = ["FileLockLock", "FlockLock", "Lock", "SoftLock", "lock_path", "make"]

_NS: Final = 1e9
_POLL_MIN: Final = 0.0005  #: seconds; a timed flock wait first tries again after this long
_POLL_MAX: Final = 0.01  #: seconds; the longest pause between its tries
_FILELOCK_PARAMS: Final = inspect.signature(filelock.FileLock.__init__).parameters
# filelock 4 unlinks its lock file on release unless told not to, and may fall back to a
# soft lock on file systems without flock: both would break the rules above.
_FILELOCK_SAFETY: Final[dict[str, Any]] = {
    name: value
    for name, value in (("preserve_lock_file", True), ("fallback_to_soft", False))
    if name in _FILELOCK_PARAMS
}


@runtime_checkable
class Lock(Protocol):
    """What a queue needs of a lock. Pass any object like this as ``Queue(lock=...)``."""

    path: Path
    recorder: LockRecorder | None

    def acquire(self, *, timeout: float | None = None, op: str = "") -> None:
        """Block until held (``timeout`` None), or raise ``LockTimeout`` after ``timeout`` s."""

    def release(self) -> None:
        """Release the lock."""

    def stats(self) -> LockStatistics:
        """Return running totals of this lock in this process."""

    def close(self) -> None:
        """Release any file the lock keeps open."""


class _MeasuredLock:
    """Times every acquisition; subclasses implement ``_acquire`` and ``_release``."""

    def __init__(self, path: Path, *, recorder: LockRecorder | None = None) -> None:
        self.path = path
        self._name = os.fspath(path)  # a str: os.stat of a Path calls Python code first
        self.recorder = recorder
        self._op = ""
        self._requested_ns = self._acquired_ns = 0
        self._acquisitions = self._timeouts = 0
        self._wait_ns_total = self._hold_ns_total = self._wait_ns_max = 0

    def acquire(self, *, timeout: float | None = None, op: str = "") -> None:
        """Block until held (``timeout`` None), or raise ``LockTimeout`` after ``timeout`` s."""
        requested = time.perf_counter_ns()
        try:
            self._acquire(timeout)
        except LockTimeout:
            self._timeouts += 1
            raise
        self._acquired_ns = time.perf_counter_ns()
        self._requested_ns = requested
        self._op = op

    def release(self) -> None:
        """Release the lock, then account for the acquisition.

        The release time is read just before the unlock, so no other holder's acquire can
        be timed before it: hold intervals of one lock never overlap in the records.
        """
        released = time.perf_counter_ns()
        self._release()
        wait = self._acquired_ns - self._requested_ns
        self._acquisitions += 1
        self._wait_ns_total += wait
        self._wait_ns_max = max(self._wait_ns_max, wait)
        self._hold_ns_total += released - self._acquired_ns
        if self.recorder is not None:
            self.recorder.record(self._op, self._requested_ns, self._acquired_ns, released)

    def stats(self) -> LockStatistics:
        """Return running totals of this lock in this process."""
        return LockStatistics(
            acquisitions=self._acquisitions,
            timeouts=self._timeouts,
            wait_s_total=self._wait_ns_total / _NS,
            hold_s_total=self._hold_ns_total / _NS,
            wait_s_max=self._wait_ns_max / _NS,
        )

    def __enter__(self) -> _MeasuredLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _timeout_error(self, timeout: float) -> LockTimeout:
        return LockTimeout(path=str(self.path), timeout=timeout)

    def _acquire(self, timeout: float | None) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release any file the lock keeps open."""


class FlockLock(_MeasuredLock):
    """``fcntl.flock`` on a lock file that is never deleted; waits in the kernel.

    ``timeout=None`` (or infinity) blocks in the kernel. flock has no timeout of its
    own, so a finite ``timeout`` on a busy lock tries again without blocking, the pause
    doubling from 0.5 ms to 10 ms, until the deadline: no helper thread, no second file
    descriptor, nothing left behind that could take the lock after a ``LockTimeout``.
    Not shared across ``fork()``: a child opens its own file (a shared descriptor would
    share the lock with the parent).
    """

    def __init__(self, path: Path, *, recorder: LockRecorder | None = None, mode: int = 0o600) -> None:
        """Describe the lock; the file is opened at the first acquire."""
        super().__init__(path, recorder=recorder)
        self.mode = mode
        self._fd: int | None = None
        self._ident = (-1, -1)  # the open file's (st_dev, st_ino)
        self._pid = 0
        self._held: int | None = None

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, self.mode)
        except OSError as exc:
            raise _lock_error(self.path, exc) from exc

    def _shared_fd(self) -> int:
        if self._fd is None or self._pid != process.pid():
            self._fd = self._open()  # a forked child's inherited copy is left alone
            self._pid = process.pid()
            held = os.fstat(self._fd)  # an open file's inode never changes: read it once
            self._ident = (held.st_dev, held.st_ino)
        return self._fd

    def _acquire(self, timeout: float | None) -> None:
        deadline = None if timeout is None or math.isinf(timeout) else time.monotonic() + timeout
        pause = _POLL_MIN
        while True:
            fd = self._shared_fd()
            if deadline is None:
                self._flock(fd, fcntl.LOCK_EX)
            elif not self._flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout_error(timeout or 0.0)
                time.sleep(min(pause, left))
                pause = min(pause * 2, _POLL_MAX)
                continue
            if self._is_current(fd):
                self._held = fd
                return
            self._drop(fd)  # the lock file was deleted or replaced under us: lock the new one

    def _flock(self, fd: int, operation: int) -> bool:
        """``flock(fd, operation)``; False if a non-blocking try found the lock busy."""
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise _lock_error(self.path, exc, "lock") from exc
        return True

    def _is_current(self, fd: int) -> bool:
        """Whether the path still names the file ``fd`` holds (RELIABILITY row 20).

        One ``stat``: the inode of a file held open is never reused, so the path naming it
        means the file is still linked (no ``fstat`` for ``st_nlink``).
        """
        try:
            st = os.stat(self._name, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return fd == self._fd and (st.st_dev, st.st_ino) == self._ident

    def _drop(self, fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if fd == self._fd:
            self._fd = None

    def _release(self) -> None:
        fd, self._held = self._held, None
        if fd is None:
            raise RuntimeError(f"{self!r} is not held")
        fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (releasing the lock if held)."""
        if self._fd is not None and self._pid == process.pid():
            os.close(self._fd)
        self._fd = self._held = None


class FileLockLock(_MeasuredLock):
    """``filelock.FileLock``: tries without blocking, sleeping ``poll_interval`` between tries."""

    def __init__(
        self,
        path: Path,
        *,
        recorder: LockRecorder | None = None,
        poll_interval: float | None = None,
        mode: int = 0o600,
    ) -> None:
        """Describe the lock; ``poll_interval`` None keeps filelock's own default."""
        super().__init__(path, recorder=recorder)
        self.poll_interval = poll_interval
        self._lock = self._make(mode)

    def _make(self, mode: int) -> filelock.BaseFileLock:
        return filelock.FileLock(self.path, mode=mode, thread_local=False, **_FILELOCK_SAFETY)

    def _acquire(self, timeout: float | None) -> None:
        if not self.path.parent.is_dir():  # filelock would make it with its own (wider) mode
            raise _lock_error(self.path, FileNotFoundError(errno.ENOENT, "the folder does not exist"))
        try:
            self._lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=self.poll_interval)
        except filelock.Timeout as exc:
            raise self._timeout_error(timeout or 0.0) from exc
        except OSError as exc:
            raise _lock_error(self.path, exc) from exc

    def _release(self) -> None:
        self._lock.release()


class SoftLock(FileLockLock):
    """``filelock.SoftFileLock``: a marker file that exists while the lock is held.

    A holder killed while holding leaves the marker behind; filelock decides when such a
    marker is stale. It does not exclude ``flock`` or ``filelock`` users of the same queue.
    """

    def _make(self, mode: int) -> filelock.BaseFileLock:
        return filelock.SoftFileLock(self.path, mode=mode, thread_local=False)


def lock_path(queue_path: Path, kind: LockKind) -> Path:
    """Return the lock file ``kind`` uses for the queue at ``queue_path``."""
    suffix = ".softlock" if kind is LockKind.SOFT else ".lock"
    return queue_path.with_name(queue_path.name + suffix)


def make(
    kind: LockKind | str,
    queue_path: Path,
    *,
    poll_interval: float | None = None,
    recorder: LockRecorder | None = None,
    mode: int = 0o600,
) -> Lock:
    """Return a new lock of ``kind`` for the queue at ``queue_path``.

    Raises:
        ConfigError: ``kind`` is not a lock kind, or ``poll_interval`` is given for ``flock``.
    """
    try:
        kind = LockKind(kind)
    except ValueError:
        kinds = ", ".join(repr(k.value) for k in LockKind)
        raise ConfigError(f"lock must be one of {kinds}, not {kind!r}", field="lock") from None
    path = lock_path(queue_path, kind)
    if kind is LockKind.FLOCK:
        if poll_interval is not None:
            raise ConfigError(
                "flock does not poll: poll_interval is for 'filelock' and 'soft'", field="poll_interval"
            )
        return FlockLock(path, recorder=recorder, mode=mode)
    cls = SoftLock if kind is LockKind.SOFT else FileLockLock
    return cls(path, recorder=recorder, poll_interval=poll_interval, mode=mode)


def _lock_error(path: Path, exc: OSError, what: str = "open") -> StorageError:
    return StorageError(
        f"cannot {what} the lock file {path}: {exc.strerror or exc}", path=str(path), errno=exc.errno
    )
