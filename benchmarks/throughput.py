"""Single-process throughput of djq: ``put``, and ``get`` + ``ack``, per lock, fsync and depth.

What is measured: one process, one ``djq.Queue`` object, no contention. For every lock
kind ("flock", "filelock", "soft") x fsync on/off x queue depth (tasks already in the
file: 100, 1,000 and 10,000 by default) it times, with ``time.perf_counter_ns``:

* put: N single ``q.put(payload)`` calls (payloads of about 200 bytes of JSON);
* get+ack: N pairs of ``q.get(timeout=0)`` then ``q.ack(task)``; one pair is one op.

The queue is pre-filled with one ``put_many`` call. The depth is held between ``depth``
and ``depth + depth // 10`` while measuring: every ``depth // 10`` ops an untimed step
trims the queue back (``purge`` + ``put_many``) after puts, or tops it up (``put_many``)
after get+acks. Only the N ops themselves are timed; the lock and file counters reported
are those of the timed ops only. Every measurement gets a fresh temporary folder (removed
afterwards), and the lock kinds take turns going first, so the ratios to ``flock`` compare
runs made side by side under the same conditions.

How to run, from the repository root (the full run takes a few minutes on 2 cores)::

    python3 benchmarks/throughput.py            # the full table
    python3 benchmarks/throughput.py --quick    # a smoke run of a few seconds
    python3 benchmarks/throughput.py --depths 100 1000 --ops 500 100 --locks flock soft
    python3 benchmarks/throughput.py --help

The table goes to stdout, one progress line per cell to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import djq

LOCKS = ("flock", "filelock", "soft")
DEFAULT_PLAN = {100: 600, 1_000: 300, 10_000: 50}  #: depth -> N timed ops; about 2-3 minutes in all
DEFAULT_REPEAT = 3
QUICK_PLAN = {100: 20, 1_000: 10}
OPS = ("put", "get+ack")
PAYLOAD_BYTES = 200


@dataclass(frozen=True)
class Counters:
    """What the lock and the file did, as running totals or as a difference of two."""

    acquisitions: int = 0
    hold_ns: int = 0
    reads: int = 0
    writes: int = 0

    @classmethod
    def of(cls, q: djq.Queue) -> Counters:
        s = q.lock.stats()
        return cls(s.acquisitions, round(s.hold_s_total * 1e9), q.file.reads, q.file.writes)

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(a - b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[int, int, int, int]:
        return (self.acquisitions, self.hold_ns, self.reads, self.writes)


@dataclass(frozen=True)
class Result:
    """One measurement: one op kind in one cell (lock x fsync x depth)."""

    op: str
    lock: str
    fsync: bool
    depth: int
    latencies_ns: list[int]
    counters: Counters
    file_bytes: int
    rounds: tuple[float, ...] = ()  #: ops/s of each round, when several were merged

    @classmethod
    def merge(cls, parts: Sequence[Result]) -> Result:
        """Pool the rounds of one measurement: all latencies, summed counters."""
        first = parts[0]
        latencies = [ns for p in parts for ns in p.latencies_ns]
        counters = sum((p.counters for p in parts), Counters())
        rounds = tuple(p.ops_per_s for p in parts)
        return cls(
            first.op, first.lock, first.fsync, first.depth, latencies, counters, first.file_bytes, rounds
        )

    @property
    def spread(self) -> float:
        """(slowest - fastest round) / pooled ops/s; 0 for a single round."""
        return (max(self.rounds) - min(self.rounds)) / self.ops_per_s if self.rounds else 0.0

    @property
    def n(self) -> int:
        return len(self.latencies_ns)

    @property
    def ops_per_s(self) -> float:
        """N over the summed time of the timed ops (the untimed refills left out)."""
        return self.n / (sum(self.latencies_ns) / 1e9)

    def percentile_ms(self, p: float) -> float:
        """Nearest-rank percentile, in ms (with fewer than 100 ops, p99 is the slowest op)."""
        ordered = sorted(self.latencies_ns)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] / 1e6

    def per_op(self, value: int) -> float:
        return value / self.n

    @property
    def held_fraction(self) -> float:
        return self.counters.hold_ns / sum(self.latencies_ns)


def make_payload(i: int, size: int = PAYLOAD_BYTES) -> dict[str, object]:
    """Return a JSON object of ``size`` bytes (compact encoding), numbered ``i``."""
    head = {"n": i, "kind": "benchmark", "pad": ""}
    pad = size - len(json.dumps(head, separators=(",", ":")))
    head["pad"] = "x" * max(pad, 0)
    return head


def payloads(start: int, count: int) -> list[dict[str, object]]:
    return [make_payload(i) for i in range(start, start + count)]


def timed_loop(
    q: djq.Queue, n: int, every: int, op: Callable[[int], object], refill: Callable[[], object]
) -> tuple[list[int], Counters]:
    """Time ``op(i)`` n times, calling the untimed ``refill`` every ``every`` ops."""
    clock = time.perf_counter_ns
    latencies: list[int] = []
    counted = Counters()
    start = Counters.of(q)
    for i in range(n):
        if i and i % every == 0:
            counted += Counters.of(q) - start
            refill()
            start = Counters.of(q)
        t0 = clock()
        op(i)
        latencies.append(clock() - t0)
    return latencies, counted + (Counters.of(q) - start)


def get_ack(q: djq.Queue) -> None:
    task = q.get(timeout=0.0)
    if task is None:
        raise RuntimeError(f"{q.path} ran dry: the depth bookkeeping of the benchmark is wrong")
    q.ack(task)


def run_put(q: djq.Queue, depth: int, n: int) -> tuple[list[int], Counters]:
    every = max(1, depth // 10)
    q.put_many(payloads(0, depth))
    fresh = payloads(depth, n)

    def trim() -> None:  # back to `depth` tasks
        q.purge()
        q.put_many(payloads(0, depth))

    return timed_loop(q, n, every, lambda i: q.put(fresh[i]), trim)


def run_get_ack(q: djq.Queue, depth: int, n: int) -> tuple[list[int], Counters]:
    every = max(1, depth // 10)
    q.put_many(payloads(0, depth + every))
    return timed_loop(q, n, every, lambda i: get_ack(q), lambda: q.put_many(payloads(0, every)))


def measure(op: str, lock: str, fsync: bool, depth: int, n: int, parent: str | None) -> Result:
    """Run one measurement in a fresh temporary folder, removed afterwards."""
    runner = run_put if op == "put" else run_get_ack
    with tempfile.TemporaryDirectory(prefix="djq-bench-", dir=parent) as folder:
        q = djq.Queue(Path(folder) / "Queue.json", lock=lock, fsync=fsync)
        try:
            latencies, counters = runner(q, depth, n)
            size = q.path.stat().st_size
        finally:
            q.close()
    return Result(op, lock, fsync, depth, latencies, counters, size)


def file_system(folder: str) -> str:
    """Return 'type (device on mount point)' for ``folder``, from /proc/mounts (Linux)."""
    real = os.path.realpath(folder)
    best: tuple[str, str, str] | None = None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown (no /proc/mounts)"
    for line in lines:
        device, mount, kind = line.split()[:3]
        mount = mount.replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) >= len(best[1])):
            best = (device, mount, kind)
    if best is None:
        return "unknown"
    return f"{best[2]} ({best[0]} on {best[1]})"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def version_of(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def print_header(args: argparse.Namespace, parent: str) -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    fs = file_system(parent)
    print("djq throughput benchmark: one process, one Queue object, no contention")
    print(f"date:      {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"machine:   {os.cpu_count()} CPUs ({usable} usable), {platform.platform()}")
    print(f"python:    {platform.python_implementation()} {platform.python_version()}")
    print(f"load:      {load_average()} at the start (other processes on the machine add noise)")
    print(
        f"versions:  djq {djq.__version__}, filelock {version_of('filelock')}, orjson {version_of('orjson')}"
    )
    print(f"folders:   a fresh temporary folder per measurement under {parent}, on {fs}")
    if fs.startswith("tmpfs"):
        print("           (tmpfs: fsync costs nothing here; use --dir on a real disk to see it)")
    print(f"payload:   {len(json.dumps(make_payload(0), separators=(',', ':')))} bytes of JSON per task")
    plan = ", ".join(f"N={n} at depth {d:,}" for d, n in zip(args.depths, args.ops, strict=True))
    print(f"ops:       {plan}; depth held within [depth, depth + depth//10]")
    print(f"rounds:    {args.repeat} per cell, pooled; the lock kinds take turns going first")
    print()


TITLE = (
    f"{'op':<8} {'lock':<9} {'fsync':<5} {'depth':>6} {'N':>5} {'ops/s':>8} {'spread':>6} {'p50 ms':>8} "
    f"{'p99 ms':>8} {'held':>5} {'acq/op':>6} {'rd/op':>5} {'wr/op':>5} {'file KB':>8}"
)


def format_row(r: Result) -> str:
    c = r.counters
    return (
        f"{r.op:<8} {r.lock:<9} {'on' if r.fsync else 'off':<5} {r.depth:>6} {r.n:>5} "
        f"{r.ops_per_s:>8,.0f} {r.spread:>6.0%} {r.percentile_ms(50):>8.2f} {r.percentile_ms(99):>8.2f} "
        f"{r.held_fraction:>5.0%} {r.per_op(c.acquisitions):>6.1f} {r.per_op(c.reads):>5.2f} "
        f"{r.per_op(c.writes):>5.2f} {r.file_bytes / 1024:>8,.0f}"
    )


def print_results(results: Sequence[Result]) -> None:
    for op in OPS:
        rows = [r for r in results if r.op == op]
        if rows:
            print(f"{op}: one {'put()' if op == 'put' else 'get() + ack()'} per op")
            print(TITLE)
            print("\n".join(format_row(r) for r in rows))
            print()
    print("N: timed ops, all rounds pooled (ops/s and percentiles are over all of them); spread:")
    print("(fastest - slowest round) / ops/s; held: share of the op's time spent holding the lock;")
    print("acq/rd/wr per op: lock acquisitions, file reads (re-reads of Queue.json), file writes.")
    print()


def print_ratios(results: Sequence[Result], locks: Sequence[str]) -> None:
    base = "flock" if "flock" in locks else locks[0]
    by_key = {(r.op, r.fsync, r.depth, r.lock): r.ops_per_s for r in results}
    print(f"throughput relative to {base} (same op, fsync and depth; measured side by side)")
    print(f"{'op':<8} {'fsync':<5} {'depth':>6} " + " ".join(f"{k:>9}" for k in locks))
    for op in OPS:
        for depth in sorted({r.depth for r in results}):
            for fsync in (True, False):
                reference = by_key.get((op, fsync, depth, base))
                if reference is None:
                    continue
                ratios = " ".join(f"{by_key[(op, fsync, depth, k)] / reference:>9.2f}" for k in locks)
                print(f"{op:<8} {'on' if fsync else 'off':<5} {depth:>6} {ratios}")
    print()


def cells(args: argparse.Namespace, round_: int) -> list[tuple[str, bool, int, int]]:
    """Every (lock, fsync, depth, N) of one round, the lock kinds taking turns going first."""
    groups = [(d, n, f) for d, n in zip(args.depths, args.ops, strict=True) for f in args.fsync]
    plan = []
    for group, (depth, n, fsync) in enumerate(groups):
        turn = (group + round_) % len(args.locks)
        plan += [(lock, fsync, depth, n) for lock in [*args.locks[turn:], *args.locks[:turn]]]
    return plan


def run_cell(lock: str, fsync: bool, depth: int, n: int, parent: str) -> list[Result]:
    return [measure(op, lock, fsync, depth, n, parent) for op in OPS]


def progress(where: str, lock: str, fsync: bool, depth: int, pair: list[Result], seconds: float) -> None:
    print(
        f"{where} {lock:<8} fsync={'on ' if fsync else 'off'} depth={depth:>6} N={pair[0].n:>4}: "
        f"put {pair[0].ops_per_s:>7,.0f} ops/s, get+ack {pair[1].ops_per_s:>7,.0f} ops/s ({seconds:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def run_all(args: argparse.Namespace, parent: str) -> list[Result]:
    """Run every cell ``args.repeat`` times; return one pooled Result per op and cell."""
    parts: dict[tuple[str, str, bool, int], list[Result]] = {
        (op, lock, fsync, depth): []
        for depth in args.depths
        for fsync in args.fsync
        for lock in args.locks
        for op in OPS
    }
    for round_ in range(args.repeat):
        plan = cells(args, round_)
        for index, (lock, fsync, depth, n) in enumerate(plan, 1):
            started = time.perf_counter()
            pair = run_cell(lock, fsync, depth, n, parent)
            for r in pair:
                parts[(r.op, lock, fsync, depth)].append(r)
            where = f"[round {round_ + 1}/{args.repeat}, cell {index:>2}/{len(plan)}]"
            progress(where, lock, fsync, depth, pair, time.perf_counter() - started)
    return [Result.merge(p) for p in parts.values()]


def default_ops(depth: int) -> int:
    """N for a depth without a default: about the same time per cell as the defaults."""
    return max(10, min(2_000, round(6_000 / math.sqrt(depth))))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Single-process put and get+ack throughput of djq per lock kind, fsync and depth.",
        epilog="Example: python3 benchmarks/throughput.py --depths 100 1000 --ops 300 200",
    )
    add = parser.add_argument
    add("--depths", type=positive, nargs="+", help=f"queue depths (default {list(DEFAULT_PLAN)})")
    add(
        "--ops",
        type=positive,
        nargs="+",
        help=f"timed ops N per depth, one value or one per depth (default {list(DEFAULT_PLAN.values())}; "
        "for other depths about 6000/sqrt(depth))",
    )
    add(
        "--repeat",
        type=positive,
        help=f"rounds per cell, pooled; lock kinds rotate who goes first (default {DEFAULT_REPEAT}, quick 1)",
    )
    add("--locks", nargs="+", choices=LOCKS, default=list(LOCKS), help="lock kinds (default: all)")
    add("--fsync", choices=("both", "on", "off"), default="both", help="fsync settings (default: both)")
    add("--dir", help="existing folder to create the temporary folders in (default: system temp)")
    add("--quick", action="store_true", help=f"smoke run: depth: N {QUICK_PLAN}, 1 round")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    args.depths = args.depths or list(plan)
    scale = 30 if args.quick else 1
    args.ops = args.ops or [plan.get(d, max(2, default_ops(d) // scale)) for d in args.depths]
    args.repeat = args.repeat or (1 if args.quick else DEFAULT_REPEAT)
    if len(args.ops) == 1:
        args.ops *= len(args.depths)
    if len(args.ops) != len(args.depths):
        parser.error(f"--ops needs 1 or {len(args.depths)} values (one per depth), not {len(args.ops)}")
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a folder")
    args.fsync = {"both": [True, False], "on": [True], "off": [False]}[args.fsync]
    args.locks = list(dict.fromkeys(args.locks))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parent = args.dir or tempfile.gettempdir()
    started = time.perf_counter()
    print_header(args, parent)
    sys.stdout.flush()
    results = run_all(args, parent)
    print_results(results)
    print_ratios(results, args.locks)
    print(f"load:      {load_average()} at the end (1, 5 and 15 minute averages)")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
