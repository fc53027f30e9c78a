"""This process's pid, without a system call each time it is asked.

``os.getpid()`` is a system call (glibc stopped caching it), and the hot paths ask on
every call: a forked child must never use its parent's lock, files or sockets. Here the
pid is read once, and again in every child ``os.fork`` makes (``os.register_at_fork``),
which is every way Python forks (``multiprocessing``'s fork and forkserver included); a
child that ``exec``s starts afresh. Imports nothing from djq.
"""

from __future__ import annotations

import os

__all__ = ["pid"]

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """Return this process's pid: ``os.getpid()`` as of the last fork."""
    return _pid
