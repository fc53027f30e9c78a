"""Sleep until a file in a folder changes: Linux inotify through ctypes, or None where absent.

A waiting consumer uses this to sleep until ``Queue.json`` or its journal changes,
instead of looking at them (or worse, taking the lock) over and over. ``Watcher`` watches
the queue's folder (the files themselves are replaced by rename, so a watch on a file
would be lost) for writes, renames into it and new files, and reports only events on
the names it was given. Where inotify is missing or out of watches, ``watcher()``
returns None and the caller polls instead. It sleeps in ``poll(2)``, never ``select``
(which fails on descriptors numbered 1,024 or more), and ``interrupt()`` (from another
thread) wakes every sleeper for good, so a closing queue's waiters never sleep on a
descriptor about to be closed. Stdlib only; imports nothing from djq.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import select
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = ["Watcher", "watcher"]

_IN_MODIFY: Final = 0x002
_IN_CLOSE_WRITE: Final = 0x008
_IN_MOVED_TO: Final = 0x080
_IN_CREATE: Final = 0x100
_IN_NONBLOCK: Final = 0o4000
_IN_CLOEXEC: Final = 0o2000000
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_MAX_POLL_MS: Final = 2**31 - 1  #: poll's timeout is a C int of milliseconds (about 24 days)
_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            _libc = lib
        except (OSError, AttributeError):
            return None
    return _libc


class Watcher:
    """An inotify descriptor watching one folder for changes to some of its files.

    Safe to share between threads, but for ``close``: call it only when no thread is in
    ``wait`` (``interrupt`` first, and let them return).
    """

    def __init__(self, fd: int, names: Iterable[str]) -> None:
        """Wrap an inotify descriptor that already watches the folder (the watcher then owns it)."""
        self._fd = fd
        self._names = {os.fsencode(n) for n in names}
        try:
            self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            os.close(fd)
            raise
        self.interrupted = False

    def drain(self) -> bool:
        """Consume every pending event; return True if one was about a watched name."""
        hit = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return hit
            pos = 0
            while pos + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                hit = hit or name in self._names
                pos += _EVENT.size + length

    def wait(self, timeout: float | None) -> bool:
        """Sleep until a watched file changes or ``timeout`` seconds pass; True if one changed.

        Also True, at once and from then on, after ``interrupt()``.
        """
        if self.interrupted:
            return True
        ms = -1 if timeout is None else min(math.ceil(max(timeout, 0.0) * 1000), _MAX_POLL_MS)
        poll = select.poll()  # one per call: a poll object refuses concurrent use by threads
        poll.register(self._fd, select.POLLIN)
        poll.register(self._wake, select.POLLIN)
        ready = {fd for fd, _ in poll.poll(ms)}
        if self._wake in ready or self.interrupted:
            return True
        return self._fd in ready and self.drain()

    def interrupt(self) -> None:
        """Wake every thread sleeping in ``wait``, now and in every later call."""
        self.interrupted = True
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)  # never read back: it stays readable

    def fileno(self) -> int:
        """The inotify descriptor, readable when events are pending (for ``selectors``)."""
        return self._fd

    def close(self) -> None:
        """Stop watching; close both descriptors (a later ``wait`` returns True at once)."""
        self.interrupted = True
        for fd in (self._fd, self._wake):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake = -1


def watcher(folder: str | os.PathLike[str], names: Iterable[str]) -> Watcher | None:
    """Return a ``Watcher`` of ``names`` in ``folder``, or None where inotify cannot watch it."""
    libc = _load_libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None
    mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
    if libc.inotify_add_watch(fd, os.fsencode(Path(folder)), mask) < 0:
        os.close(fd)
        return None  # no such folder yet, or out of watches: the caller polls
    try:
        return Watcher(fd, names)
    except OSError:  # out of descriptors for its wake-up (the watcher closed fd)
        return None
