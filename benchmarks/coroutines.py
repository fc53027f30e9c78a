"""One process, many consumer coroutines: the async client beside the sync one, on every backend.

For each backend (the file queue, the broker, PostgreSQL, Redis) and each per-task work
time, a fresh queue is filled with N tasks and then drained by one process: first by the
sync client (one loop of get, work, ack), then by the async client with 1, 8 and 64
coroutines on one handle (each a loop of ``await get``, work as ``await asyncio.sleep``,
``await ack``). The table prints items/s for each, and the ratio of each async column to
the sync one from the same run. Every drain checks that each task was acked exactly once.

With no work a drain measures what one call costs, and coroutines can only add the
loop's and the worker thread's hops. With work (``--work-ms``, time a handler waits on
something else: a web request, a disk) one sync loop leaves the queue idle while it
waits, and K coroutines overlap K waits: that is what the async client is for.

Run: ``python3 benchmarks/coroutines.py [--n 2000] [--work-ms 0,1] [--coroutines 1,8,64]
[--backends file,broker,postgres,redis] [--fsync on|off]``; ``--quick`` is a smoke run.
The servers are scratch servers (``djq.scratch``) removed at the end, or the ones
``DJQ_POSTGRES_URL`` / ``DJQ_REDIS_URL`` name; a backend that cannot run gets one line
saying why. The machine's 2 cores are shared by this process, a broker and a server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import djq
from djq import scratch

BACKENDS = ("file", "broker", "postgres", "redis")


class Backend:
    """Fresh queues of one backend: ``sync()`` and ``asynchronous()`` open a client of the current one."""

    def __init__(self, kind: str, folder: Path, url: str | None, fsync: bool) -> None:
        self.kind, self.folder, self.url, self.fsync = kind, folder, url, fsync
        self.manager: djq.BrokerManager | None = None
        self.path = folder / "Queue.json"
        self.name = ""

    def fresh(self, label: str) -> None:
        """Move on to a new, empty queue for the next measurement."""
        self.stop()
        self.name = f"coro_{secrets.token_hex(3)}_{label}"
        self.path = self.folder / self.name / "Queue.json"
        if self.kind == "broker":
            self.manager = djq.BrokerManager(self.path, fsync=self.fsync)
            self.manager.start()

    def sync(self) -> djq.BaseQueue:
        if self.kind == "broker":
            return djq.connect(self.path)
        if self.kind == "file":
            return djq.open(self.path, fsync=self.fsync)
        return djq.open(str(self.url), name=self.name, fsync=self.fsync)

    def asynchronous(self) -> djq.AsyncBaseQueue:
        if self.kind == "broker":
            return djq.AsyncBrokerClient(self.path)
        if self.kind == "file":
            return djq.open(self.path, fsync=self.fsync, asynchronous=True)
        return djq.open(str(self.url), name=self.name, fsync=self.fsync, asynchronous=True)

    def stop(self) -> None:
        if self.manager is not None:
            self.manager.stop()
            self.manager = None


def fill(queue: djq.BaseQueue, n: int) -> None:
    for start in range(0, n, 500):
        queue.put_many([{"n": i, "pad": "x" * 100} for i in range(start, min(start + 500, n))])


def drain_sync(queue: djq.BaseQueue, work: float) -> list[str]:
    acked = []
    while (task := queue.get()) is not None:
        if work:
            time.sleep(work)
        queue.ack(task)
        acked.append(task.id)
    return acked


async def drain_async(queue: djq.AsyncBaseQueue, work: float, coroutines: int) -> list[str]:
    acked: list[str] = []

    async def consumer() -> None:
        while (task := await queue.get()) is not None:
            if work:
                await asyncio.sleep(work)
            await queue.ack(task)
            acked.append(task.id)

    async with queue:
        await asyncio.gather(*(consumer() for _ in range(coroutines)))
    return acked


def measure(backend: Backend, n: int, work: float, coroutines: int | None) -> float:
    """Fill a fresh queue with ``n`` tasks, drain it (sync when ``coroutines`` is None); items/s."""
    backend.fresh("sync" if coroutines is None else f"a{coroutines}")
    with backend.sync() as filler:
        fill(filler, n)
    start = time.perf_counter()
    if coroutines is None:
        with backend.sync() as queue:
            acked = drain_sync(queue, work)
    else:
        acked = asyncio.run(drain_async(backend.asynchronous(), work, coroutines))
    elapsed = time.perf_counter() - start
    if len(acked) != n or len(set(acked)) != n:
        raise RuntimeError(f"{backend.kind}: acked {len(acked)} ({len(set(acked))} distinct) of {n}")
    return n / elapsed


@contextmanager
def servers(kinds: list[str], fsync: bool) -> Iterator[Callable[[str], str]]:
    """Yield ``url(kind)``: DJQ_*_URL or a scratch server started on first use, removed at the end."""
    started: dict[str, str] = {}
    with ExitStack() as stack:

        def url(kind: str) -> str:
            if kind not in started:
                found = scratch.url_of(kind)
                if found is None:
                    server = (
                        scratch.postgres() if kind == "postgres" else scratch.redis(fsync=fsync)
                    ).start()
                    stack.callback(server.remove)
                    found = server.url
                started[kind] = found
            return started[kind]

        yield url


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tasks per drain (default 2000)")
    parser.add_argument("--work-ms", default="0,1", help="per-task work times in ms (default 0,1)")
    parser.add_argument("--coroutines", default="1,8,64", help="async columns (default 1,8,64)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="default: all four")
    parser.add_argument("--fsync", choices=("on", "off"), default="off", help="durability (default off)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: n=100, work 0 and 1 ms")
    args = parser.parse_args()
    n = 100 if args.quick else args.n
    works = [float(w) / 1000 for w in args.work_ms.split(",") if w]
    columns = _ints(args.coroutines)
    kinds = [k for k in args.backends.split(",") if k]
    fsync = args.fsync == "on"
    unknown = sorted(set(kinds) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; they are {', '.join(BACKENDS)}")
    load = os.getloadavg()
    print(f"djq {djq.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load {load[0]:.2f}; n={n} per drain, fsync {args.fsync}; items/s (async/sync)")  # fmt: skip
    head = f"{'backend':<9} {'work':>6} {'sync':>8} " + " ".join(f"{f'async x{k}':>17}" for k in columns)
    print(head)
    with tempfile.TemporaryDirectory(prefix="djq-coroutines-") as folder, servers(kinds, fsync) as url:
        for kind in kinds:
            try:
                where = url(kind) if kind in ("postgres", "redis") else None
            except Exception as exc:  # no server binary, no client library: one line, the rest goes on
                print(f"{kind:<9} cannot run: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
                continue
            backend = Backend(kind, Path(folder), where, fsync)
            try:
                for work in works:
                    sync = measure(backend, n, work, None)
                    cells = []
                    for k in columns:
                        rate = measure(backend, n, work, k)
                        cells.append(f"{rate:>9.0f} ({rate / sync:4.2f})")
                    print(f"{kind:<9} {work * 1000:>4g}ms {sync:>8.0f} " + " ".join(cells), flush=True)
            finally:
                backend.stop()
    print("the async columns run in this one process; the broker and the servers are other processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
