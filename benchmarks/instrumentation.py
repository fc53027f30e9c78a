"""What djq's own measuring costs: per-operation overhead with and without a recorder.

Runs, side by side in one process and interleaved round by round, (1) a bare lock
acquire+release and (2) a put + get + ack on a small queue, each once with no
``LockRecorder`` attached and once with one, and prints the ratio. The simulation
attaches a recorder to every worker, so the ratio is what measuring adds to what it
measures. Run: ``python3 benchmarks/instrumentation.py [--rounds 5] [--ops 2000]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import djq
from djq import locks


def _lock_ns(kind: str, folder: Path, ops: int, recorder: djq.LockRecorder | None) -> float:
    lock = locks.make(kind, folder / "Queue.json", recorder=recorder)
    start = time.perf_counter_ns()
    for _ in range(ops):
        lock.acquire(op="bench")
        lock.release()
    return (time.perf_counter_ns() - start) / ops


def _queue_ns(kind: str, folder: Path, ops: int, recorder: djq.LockRecorder | None) -> float:
    queue = djq.Queue(folder / "Queue.json", lock=kind, fsync=False, recorder=recorder)
    queue.put_many([{"pad": "x" * 200}] * 100)
    start = time.perf_counter_ns()
    for n in range(ops):
        queue.put({"n": n})
        queue.ack(queue.get())
    return (time.perf_counter_ns() - start) / ops


def measure(what, kind: str, ops: int, rounds: int) -> tuple[float, float]:
    """Median ns per op without and with a recorder, interleaved round by round."""
    bare, recorded = [], []
    for _ in range(rounds):
        for sink, recorder in ((bare, None), (recorded, djq.LockRecorder())):
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "q").mkdir()
                sink.append(what(kind, Path(tmp) / "q", ops, recorder))
    return statistics.median(bare), statistics.median(recorded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--ops", type=int, default=2000, help="ops per round (default: 2000)")
    args = parser.parse_args()
    print(f"djq {djq.__version__}: median of {args.rounds} interleaved rounds, {args.ops} ops each")
    print(f"{'what':<24} {'lock':<9} {'bare us/op':>11} {'recorded us/op':>15} {'ratio':>7}")
    for label, what, ops in (
        ("acquire+release", _lock_ns, args.ops),
        ("put+get+ack, depth 100", _queue_ns, args.ops // 4),
    ):
        for kind in ("flock", "filelock", "soft"):
            bare, recorded = measure(what, kind, ops, args.rounds)
            print(
                f"{label:<24} {kind:<9} {bare / 1e3:>11.2f} {recorded / 1e3:>15.2f} {recorded / bare:>7.3f}"
            )


if __name__ == "__main__":
    main()
