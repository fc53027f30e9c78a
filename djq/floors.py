"""The machine's durable-write floor: one small append plus ``fdatasync``, timed where a queue lives.

A durable call of any file queue, and a durable commit of any server on the same disk,
costs at least one append and one flush of the device's write cache. ``fdatasync``
measures that floor in a folder of the caller's choice (the queue's file system, not
necessarily ``/tmp``): a fresh file, about 200 bytes appended and ``os.fdatasync``-ed
``ops`` times, split into ``rounds`` rounds, and the median round's time per append.
A disk's flush time drifts (by 2x between minutes on some virtual disks), so a notebook
that compares measurements with it measures it in the same run, between them.

With ``over_zeros`` the lines are written over zeros written and synced beforehand (as
djq's journal writes), so the ``fdatasync`` flushes data alone, not the file's size: on
ext4 about a third less. ``Floor`` keeps one such file open, for measuring again and again between other work
without creating files. Stdlib only; imports from djq: ``errors``. ``benchmarks/floors.py`` prints it beside
its other floors.

Example::

    from djq import floors
    floors.fdatasync("/tmp") * 1e6   # microseconds per durable append, e.g. 250.0
"""

from __future__ import annotations

import operator
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Final

from .errors import ConfigError

__all__ = ["LINE_BYTES", "Floor", "fdatasync"]

LINE_BYTES: Final = 200  #: bytes per append, about one small task's journal line


def _count(value: int, field: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{field} must be an integer, got {value!r}", field=field) from None
    if number < 1:
        raise ConfigError(f"{field} must be >= 1, got {number}", field=field)
    return number


class Floor:
    """A file kept open in ``folder`` to time append + ``fdatasync`` on, again and again.

    Measuring between other work (a notebook's calls, say) must not create files: on
    ext4 a file's creation is metadata that the next ``fdatasync`` of *any* file in the
    file system commits too, so a fresh file per measurement would slow down the very
    calls it is compared with. The file lives in a temporary sub-folder of ``folder``,
    removed by ``close`` (or leaving the ``with`` block).
    """

    def __init__(self, folder: str | os.PathLike[str], *, over_zeros: bool = False) -> None:
        self._where = tempfile.mkdtemp(dir=folder, prefix="djq-floor-")
        flags = os.O_WRONLY | os.O_CREAT | (0 if over_zeros else os.O_APPEND)
        self._fd = os.open(Path(self._where) / "journal", flags, 0o600)
        self._line = b"x" * (LINE_BYTES - 1) + b"\n"
        self.over_zeros = over_zeros  #: lines are written over zeros, not appended
        self._at = self._zeros = 0  # with over_zeros: where the next line goes, where the zeros end

    def measure(self, ops: int = 1) -> float:
        """Seconds per write of ``LINE_BYTES`` bytes plus ``os.fdatasync``, the mean over ``ops``."""
        count = _count(ops, "ops")
        if self.over_zeros and self._at + count * LINE_BYTES > self._zeros:  # zeros first, untimed
            more = count * LINE_BYTES
            os.pwrite(self._fd, bytes(more), self._zeros)
            os.fdatasync(self._fd)
            self._zeros += more
        start = time.perf_counter()
        for _ in range(count):
            if self.over_zeros:
                os.pwrite(self._fd, self._line, self._at)
                self._at += LINE_BYTES
            else:
                os.write(self._fd, self._line)
            os.fdatasync(self._fd)
        return (time.perf_counter() - start) / count

    def close(self) -> None:
        """Close and remove the file (again: nothing)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            shutil.rmtree(self._where, ignore_errors=True)

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fdatasync(
    folder: str | os.PathLike[str], *, ops: int = 300, rounds: int = 5, over_zeros: bool = False
) -> float:
    """Seconds per append of ``LINE_BYTES`` bytes plus ``os.fdatasync``, in a fresh file in ``folder``.

    Args:
        folder: where the file goes (a temporary sub-folder, removed after).
        ops: appends in all (at least one per round).
        rounds: rounds the appends are split into; the median round is returned.
        over_zeros: write each line over zeros synced beforehand instead (djq's journal).

    Returns:
        The median over the rounds of the time per append + ``fdatasync``, in seconds.

    Raises:
        ConfigError: ``ops`` or ``rounds`` is not an integer >= 1, or ``ops < rounds``.
        OSError: the folder cannot hold the file.
    """
    total, count = _count(ops, "ops"), _count(rounds, "rounds")
    if total < count:
        raise ConfigError(f"ops ({total}) must be at least rounds ({count})", field="ops")
    with Floor(folder, over_zeros=over_zeros) as floor:
        return statistics.median(floor.measure(total // count) for _ in range(count))
