"""The machine's floors, measured where peers.py measures: what no queue on this machine can beat.

- ``fdatasync``: append about 200 bytes to a file in the measurement folder and
  ``fdatasync`` it; a durable call of a file queue that appends costs at least this.
- ``overwrite``: the same bytes written over zeros synced beforehand, then ``fdatasync``
  (the file's size does not change: data alone is flushed); djq's journal writes so, and
  a durable call of any file queue costs at least this.
- ``socket``: one round trip of a small message over a Unix socket between two Python
  processes (``socket.socketpair``, plain ``send``/``recv``); a broker's call costs at least this.
- ``flock``: one acquisition of an ``flock`` that two processes take in turn as fast as they
  can (each lock, then unlock, over and over); a call under a contended file lock costs
  at least this.
- ``wakeup``: the CPU (not the wall time) of one ``time.sleep`` of 100 us: what a process
  pays of its own CPU each time it blocks and is woken (in a flush, a lock, a socket read),
  before the slower code after the wake-up (``benchmarks/wakeups.py`` measures that too).

Each is the median of a few rounds, in microseconds. ``python3 benchmarks/floors.py
[--dir DIR]`` prints them; peers.py prints them above its tables.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from djq import floors

ROUNDS = 5


def fdatasync_us(folder: Path, ops: int = 300, *, over_zeros: bool = False) -> float:
    """Microseconds per append (or write over zeros) of ~200 bytes plus ``fdatasync`` (``djq.floors``)."""
    return floors.fdatasync(folder, ops=ops, rounds=ROUNDS, over_zeros=over_zeros) * 1e6


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(256):
        sock.sendall(data)


def socket_us(ops: int = 5000) -> float:
    """Microseconds per round trip of a 64-byte message to another Python process and back."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = ctx.Process(target=_echo, args=(theirs,), daemon=True)
    child.start()
    theirs.close()
    message, rounds = b"m" * 64, []
    try:
        ours.sendall(message)  # the child is up once this comes back
        ours.recv(256)
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(ops // ROUNDS):
                ours.sendall(message)
                ours.recv(256)
            rounds.append((time.perf_counter() - start) / (ops // ROUNDS) * 1e6)
    finally:
        ours.close()
        child.join(10)
        if child.is_alive():
            child.kill()
    return statistics.median(rounds)


def _contend(path: str, ops: int, barrier: object) -> None:
    fd = os.open(path, os.O_RDWR)
    barrier.wait(30)  # type: ignore[attr-defined]
    for _ in range(ops):
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def flock_us(folder: Path, ops: int = 20000) -> float:
    """Microseconds per acquisition when two processes take one ``flock`` in turn."""
    ctx = multiprocessing.get_context("spawn")
    rounds = []
    with tempfile.TemporaryDirectory(dir=folder, prefix="floor-") as where:
        path = str(Path(where) / "lock")
        Path(path).touch()
        for _ in range(3):
            barrier = ctx.Barrier(3)
            procs = [ctx.Process(target=_contend, args=(path, ops // 2, barrier)) for _ in range(2)]
            for p in procs:
                p.start()
            barrier.wait(30)
            start = time.perf_counter()
            for p in procs:
                p.join(120)
            rounds.append((time.perf_counter() - start) / ops * 1e6)
            for p in procs:
                if p.is_alive():
                    p.kill()
    return statistics.median(rounds)


def timed_us(run: Callable[[], object], ops: int) -> tuple[float, float]:
    """Microseconds of wall time and of this process's CPU per call of ``run``, over ``ops`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(ops):
        run()
    return (time.perf_counter() - wall) / ops * 1e6, (time.process_time() - cpu) / ops * 1e6


def sleep_us(ops: int, seconds: float = 100e-6) -> tuple[float, float]:
    """Microseconds of wall time and of this process's CPU per ``time.sleep(seconds)``."""
    return timed_us(lambda: time.sleep(seconds), ops)


def wakeup_us(ops: int = 1000) -> float:
    """Microseconds of CPU one sleep of 100 us and its wake-up cost the sleeper (median of rounds)."""
    return statistics.median(sleep_us(ops // ROUNDS)[1] for _ in range(ROUNDS))


def measure(folder: Path) -> dict[str, float]:
    """Every floor, in microseconds: ``fdatasync``, ``overwrite``, ``socket``, ``flock``, ``wakeup``."""
    return {
        "fdatasync": fdatasync_us(folder),
        "overwrite": fdatasync_us(folder, over_zeros=True),
        "socket": socket_us(),
        "flock": flock_us(folder),
        "wakeup": wakeup_us(),
    }


def line(floors: dict[str, float]) -> str:
    """The floors as peers.py prints them."""
    return (
        f"floors:    append+fdatasync {floors['fdatasync']:,.0f} us, write over zeros+fdatasync "
        f"{floors['overwrite']:,.0f} us; Unix-socket round trip between two "
        f"processes {floors['socket']:,.0f} us; flock contended by two processes "
        f"{floors['flock']:,.1f} us per acquisition; a sleep and wake-up costs the sleeper "
        f"{floors['wakeup']:,.0f} us of CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    print(line(measure(parser.parse_args().dir)))


if __name__ == "__main__":
    main()
