"""What blocking costs a djq call here: CPU of its own, not only the time it waits.

A durable put blocks in ``fdatasync``, a contended call in ``flock``, a broker's client in
its socket read. Each block and wake-up costs the process CPU beside the wait: the
kernel switching it out and back in, and the code after the wake-up running with cold
caches. On a 2-core machine with four workers that CPU is what runs out. One run
measures, in rounds that alternate the variants:

- ``sleep``: a ``time.sleep`` of 100 us alone: the CPU of one block and wake-up;
- ``flush``: a write of 200 bytes over zeros plus ``fdatasync`` (peers.py's floor);
- ``djq put``: a put with ``fsync=True`` whose ``os.fdatasync`` is real; replaced by
  nothing; by a busy wait as long as the median flush; by a sleep as long.

"CPU beyond none" is each put's CPU minus the put's without the flush: a busy wait adds
its own length, a sleep adds the wake-up (its own CPU and the slower code after it), the
real flush adds the kernel's flush work and the wake-up. Run ``python3
benchmarks/wakeups.py [--ops N] [--rounds K] [--dir DIR]``; use a real disk for ``--dir``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import floors

import djq
import djq.floors

SLEEP = 100e-6  #: seconds one ``sleep`` row sleeps
PAYLOAD = {"p": 0, "n": 0, "pad": "x" * 160}  #: about peers.py's 200 bytes a task


def flushes(folder: Path, ops: int) -> tuple[float, float]:
    """A write of 200 bytes over zeros synced beforehand, then ``fdatasync`` (``djq.floors.Floor``).

    The CPU includes writing and syncing those zeros once (the wall time does not): one
    flush's CPU spread over the ``ops``.
    """
    with djq.floors.Floor(folder, over_zeros=True) as floor:
        cpu = time.process_time()
        wall = floor.measure(ops) * 1e6
        return wall, (time.process_time() - cpu) / ops * 1e6


def puts(folder: Path, ops: int, flush: Callable[[int], None] | None) -> tuple[float, float]:
    """A djq put with ``fsync=True``; ``flush`` stands in for ``os.fdatasync`` unless None."""
    real = os.fdatasync
    with tempfile.TemporaryDirectory(dir=folder, prefix="wakeups-") as where:
        queue = djq.Queue(Path(where) / "Queue.json", fsync=True)
        try:
            queue.put(PAYLOAD)  # the journal exists: every measured put is the steady state
            if flush is not None:
                os.fdatasync = flush
            return floors.timed_us(lambda: queue.put(PAYLOAD), ops)
        finally:
            os.fdatasync = real
            queue.close()


def _busy(seconds: float) -> Callable[[int], None]:
    def wait(fd: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return wait


def _asleep(seconds: float) -> Callable[[int], None]:
    return lambda fd: time.sleep(seconds)


def measure(folder: Path, ops: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Every row's median (wall us, CPU us) per op over ``rounds`` alternating rounds."""
    cells: dict[str, list[tuple[float, float]]] = {}
    for number in range(rounds):
        flush = flushes(folder, ops)
        seconds = flush[0] / 1e6
        row = {
            "sleep 100 us": floors.sleep_us(ops, SLEEP),
            "flush": flush,
            "djq put, flush real": puts(folder, ops, None),
            "djq put, flush replaced by nothing": puts(folder, ops, lambda fd: None),
            "djq put, flush replaced by a busy wait as long": puts(folder, ops, _busy(seconds)),
            "djq put, flush replaced by a sleep as long": puts(folder, ops, _asleep(seconds)),
        }
        for name, cell in row.items():
            cells.setdefault(name, []).append(cell)
        print(f"round {number + 1} of {rounds} done", file=sys.stderr)
    return {
        name: (statistics.median(c[0] for c in cell), statistics.median(c[1] for c in cell))
        for name, cell in cells.items()
    }


def table(rows: dict[str, tuple[float, float]]) -> str:
    """The rows as the script prints them."""
    base = rows["djq put, flush replaced by nothing"][1]
    lines = [f"{'':48} {'wall us':>8} {'CPU us':>8} {'CPU beyond none':>16}"]
    for name, (wall, cpu) in rows.items():
        beyond = f"{cpu - base:16,.0f}" if name.startswith("djq") else ""
        lines.append(f"{name:48} {wall:8,.0f} {cpu:8,.0f} {beyond}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="ops per row and round (default 2,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians shown (default 3)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    args = parser.parse_args()
    if args.ops < 1 or args.rounds < 1:
        parser.error("--ops and --rounds must be at least 1")
    print(f"per op, medians of {args.rounds} rounds of {args.ops} ops, in {args.dir}")
    print(table(measure(args.dir, args.ops, args.rounds)))


if __name__ == "__main__":
    main()
