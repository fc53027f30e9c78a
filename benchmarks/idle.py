"""Lock traffic of idle consumers: waiting by polling against waiting on change notifications.

One producer puts tasks at a steady rate (Poisson arrivals, 50 per second by default)
and four consumers take them, so the consumers are idle most of the time. The run is
made twice side by side, with ``wait="poll"`` (every waiting consumer takes the queue's
lock, then polls the file's metadata: djq 0.1's way) and ``wait="notify"`` (one waiting
consumer at a time holds the waiting turn and sleeps on inotify; the others sleep too
and never take the queue's lock while nothing is ready). It prints the queue-lock
acquisitions per second of the producer and of the consumers, and their ratio: a
consumer needs two per task (lease and ack), so 2.0 means no acquisition was wasted.

Run: ``python3 benchmarks/idle.py [--rate 50] [--consumers 4] [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import os

import djq
from djq import sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="puts per second (default: 50)")
    parser.add_argument("--consumers", type=int, default=4, help="consumer processes (default: 4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default: 5)")
    parser.add_argument("--storage", default="journal", help="journal or rewrite (default: journal)")
    args = parser.parse_args()
    tasks = int(args.rate * args.seconds)
    print(
        f"djq {djq.__version__}: 1 producer at {args.rate:g} puts/s, {args.consumers} consumers, "
        f"{tasks} tasks, storage={args.storage}, {os.cpu_count()} cores"
    )
    print(f"{'wait':<7} {'producer acq/s':>15} {'consumers acq/s':>16} {'ratio':>6} {'lease acq/task':>15}")
    for wait in ("poll", "notify"):
        run = sim.simulate(
            producers=1,
            consumers=args.consumers,
            tasks=tasks,
            rate=args.rate,
            wait=wait,
            storage=args.storage,
        )
        locks, seconds = run.locks, float(run.summary["duration_s"])
        producer = (locks["role"] == "producer").sum() / seconds
        consumers = (locks["role"] == "consumer").sum() / seconds
        leases = (locks["op"] == "lease").sum() / tasks
        print(f"{wait:<7} {producer:>15.1f} {consumers:>16.1f} {consumers / producer:>6.2f} {leases:>15.2f}")


if __name__ == "__main__":
    main()
