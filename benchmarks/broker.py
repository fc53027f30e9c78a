"""Direct locking against the broker's group commit, with 1, 2, 4 and 8 client processes.

Every client process is both producer and consumer: it repeats put, get, ack until the
run's tasks are done, so the queue stays shallow and what is measured is the cost of
moving one task through the file. In "direct" mode each
client takes the file lock for every call; in "broker" mode a broker process (started
with ``BrokerManager``) owns the file and the clients send it requests, and it writes
once per batch; "broker, no poll" is the same with clients that never poll for their
reply before blocking (``connect(spin=0)``), to show what the polling gains or costs.
The modes run side by side in one run, interleaved per client count, and the table prints
tasks/s for each, the ratios, the broker's events per write, and the CPU the client
processes spent per task (the broker's own is not counted). The machine has 2 cores:
above 2 clients (plus the broker) processes share them.

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

MODES = {"direct": None, "broker": djq.remote.SPIN, "broker, no poll": 0.0}  #: mode: the clients' spin


def _client(path: str, mode: str, count: int, barrier: Any, fsync: bool, cpu: Any) -> None:
    spin = MODES[mode]
    queue = djq.Queue(path, fsync=fsync) if spin is None else djq.connect(path, spin=spin)
    barrier.wait(60)
    started = time.process_time()
    done = 0
    while done < count:
        queue.put({"pad": "x" * 200})
        task = queue.get(timeout=5.0)
        if task is not None:
            queue.ack(task)
            done += 1
    cpu.put(time.process_time() - started)
    queue.close()


def run(mode: str, clients: int, tasks: int, fsync: bool, folder: Path) -> dict[str, Any]:
    """Move ``tasks`` tasks with ``clients`` processes; return tasks/s and the broker's counters."""
    name = f"{mode.replace(', ', '-').replace(' ', '-')}-{clients}-"
    path = Path(tempfile.mkdtemp(prefix=name, dir=folder)) / "Queue.json"  # a count may come again
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    cpu = ctx.Queue()
    shares = [tasks // clients + (i < tasks % clients) for i in range(clients)]
    manager = djq.BrokerManager(path, fsync=fsync) if MODES[mode] is not None else None
    if manager is not None:
        manager.start()
    procs = [ctx.Process(target=_client, args=(str(path), mode, n, barrier, fsync, cpu)) for n in shares]
    try:
        for p in procs:
            p.start()
        barrier.wait(60)
        start = time.perf_counter()
        spent = [cpu.get(timeout=600) for _ in procs]
        elapsed = time.perf_counter() - start
        for p in procs:
            p.join(60)
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
    return {"tasks_per_s": acked / elapsed, "acked": acked, "cpu_us": sum(spent) / acked * 1e6, **counters}


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
    print("tasks/s; client CPU: us per task, all client processes (the broker's not counted)")
    head = ("clients", "direct", "broker", "no poll", "broker/direct", "broker/no poll", "events/write",
            "CPU direct", "CPU broker", "CPU no poll")  # fmt: skip
    widths = [max(len(h), 7) for h in head]
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for clients in counts:
            got = {mode: run(mode, clients, args.tasks, args.fsync, Path(tmp)) for mode in MODES}
            direct, broker, blocking = got.values()
            cells = (
                clients, direct["tasks_per_s"], broker["tasks_per_s"], blocking["tasks_per_s"],
                f"{broker['tasks_per_s'] / direct['tasks_per_s']:.2f}",
                f"{broker['tasks_per_s'] / blocking['tasks_per_s']:.2f}",
                f"{broker['applied'] / max(broker['writes'], 1):.2f}",
                direct["cpu_us"], broker["cpu_us"], blocking["cpu_us"],
            )  # fmt: skip
            print(" ".join(f"{c:>{w},.0f}" if isinstance(c, float) else f"{c:>{w}}"
                           for c, w in zip(cells, widths, strict=True)), flush=True)  # fmt: skip
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
