"""Direct locking against the broker's group commit, with 1, 2, 4 and 8 client processes.

Every client process is both producer and consumer: it repeats put, get, ack until the
run's tasks are done, so the queue stays shallow and what is measured is the cost of
moving one task through the file. In "direct" mode each
client takes the file lock for every call; in "broker" mode a broker process (started
with ``BrokerManager``) owns the file and the clients send it requests, and it writes
once per batch. Both modes run side by side in one run, interleaved per client count,
and the table prints tasks/s for each and their ratio, with the broker's events per
write. The machine has 2 cores: above 2 clients (plus the broker) processes share them.

Run: ``python3 benchmarks/broker.py [--tasks 2000] [--clients 1,2,4,8] [--fsync]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import djq


def _client(path: str, mode: str, count: int, barrier: Any, fsync: bool) -> None:
    queue = djq.connect(path) if mode == "broker" else djq.Queue(path, fsync=fsync)
    barrier.wait(60)
    done = 0
    while done < count:
        queue.put({"pad": "x" * 200})
        task = queue.get(timeout=5.0)
        if task is not None:
            queue.ack(task)
            done += 1
    queue.close()


def run(mode: str, clients: int, tasks: int, fsync: bool, folder: Path) -> dict[str, Any]:
    """Move ``tasks`` tasks with ``clients`` processes; return tasks/s and the broker's counters."""
    path = folder / f"{mode}-{clients}" / "Queue.json"
    path.parent.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    shares = [tasks // clients + (i < tasks % clients) for i in range(clients)]
    manager = djq.BrokerManager(path, fsync=fsync) if mode == "broker" else None
    if manager is not None:
        manager.start()
    procs = [ctx.Process(target=_client, args=(str(path), mode, n, barrier, fsync)) for n in shares]
    try:
        for p in procs:
            p.start()
        barrier.wait(60)
        start = time.perf_counter()
        for p in procs:
            p.join(600)
        elapsed = time.perf_counter() - start
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"{mode} x{clients}: a client failed")
        counters = djq.connect(path).metrics() if manager is not None else {}
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        if manager is not None:
            manager.stop()
    acked = djq.Queue(path).stats().acked_total
    return {"tasks_per_s": acked / elapsed, "acked": acked, **counters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per run (default: 2000)")
    parser.add_argument("--clients", default="1,2,4,8", help="client counts (default: 1,2,4,8)")
    parser.add_argument("--fsync", action="store_true", help="fsync every write (default: off)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the queue files (default: a temp dir)"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    print(f"djq {djq.__version__}: {args.tasks} tasks per run (put+get+ack each), fsync={args.fsync}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    head = ("clients", "direct tasks/s", "broker tasks/s", "broker/direct", "events/write")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (7, 15, 15, 14, 13), strict=True)))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for clients in counts:
            direct = run("direct", clients, args.tasks, args.fsync, Path(tmp))
            broker = run("broker", clients, args.tasks, args.fsync, Path(tmp))
            per_write = broker["applied"] / max(broker["writes"], 1)
            print(
                f"{clients:>7} {direct['tasks_per_s']:>15.0f} {broker['tasks_per_s']:>15.0f} "
                f"{broker['tasks_per_s'] / direct['tasks_per_s']:>14.2f} {per_write:>13.2f}",
                flush=True,
            )
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
