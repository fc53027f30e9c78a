"""How busy the machine's CPUs were between two moments, from the kernel's ``/proc/stat`` (Linux).

A simulation on a small machine measures the scheduler as much as the queue once its
processes want more CPU than there is. ``read()`` before and after a run, then
``busy_cores(before, after)``, says how many of the machine's cores were busy on average
in between: close to ``os.cpu_count()`` means every core was taken, and more workers can
only wait for one. It counts the whole machine (the workers, the runner, a server, and
anything else running), not one process tree.

Busy time is user + nice + system + irq + softirq + steal (a virtual CPU that had work
but was not given the real one); idle is idle + iowait. ``read()`` returns None where
there is no ``/proc/stat`` (not Linux), and ``busy_cores`` then NaN. Stdlib only;
imports nothing from djq.

Example::

    from djq import cpu
    before = cpu.read()
    ...  # run something
    print(f"{cpu.busy_cores(before, cpu.read()):.1f} of {os.cpu_count()} cores busy")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["STAT", "CpuTimes", "busy_cores", "parse", "read"]

STAT: Final = Path("/proc/stat")
_BUSY: Final = (0, 1, 2, 5, 6, 7)  #: user, nice, system, irq, softirq, steal in the "cpu" line
_IDLE: Final = (3, 4)  #: idle, iowait


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative CPU time of all cores since boot, in clock ticks: busy and in all."""

    busy: int
    total: int


def parse(text: str) -> CpuTimes:
    r"""The machine-wide ``cpu`` line of ``/proc/stat``'s text as a `CpuTimes`.

    Raises:
        ValueError: the text has no ``cpu`` line with at least 8 numbers.

    Example:
        >>> parse("cpu  100 0 50 800 10 0 5 20 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
        CpuTimes(busy=175, total=985)
    """
    for line in text.splitlines():
        name, *fields = line.split() or [""]
        if name == "cpu" and len(fields) >= 8:
            ticks = [int(f) for f in fields[:8]]
            busy = sum(ticks[i] for i in _BUSY)
            return CpuTimes(busy=busy, total=busy + sum(ticks[i] for i in _IDLE))
    raise ValueError("no machine-wide 'cpu' line with 8 fields in /proc/stat's text")


def read(path: Path = STAT) -> CpuTimes | None:
    """The machine's CPU times now; None where ``path`` cannot be read (not Linux)."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError):
        return None


def busy_cores(before: CpuTimes | None, after: CpuTimes | None, *, cpus: int | None = None) -> float:
    """Mean number of busy cores between two readings: busy share x ``cpus`` (``os.cpu_count()``).

    NaN when a reading is missing or no time passed between them.

    Example:
        >>> busy_cores(CpuTimes(busy=100, total=400), CpuTimes(busy=250, total=600), cpus=2)
        1.5
    """
    if before is None or after is None or after.total <= before.total:
        return math.nan
    share = (after.busy - before.busy) / (after.total - before.total)
    return share * (cpus if cpus is not None else os.cpu_count() or 1)
