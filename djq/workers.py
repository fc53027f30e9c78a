"""Simulation workers: producer and consumer processes that record what they saw.

Entry points are top-level functions in a module that imports only the core (never
pandas or matplotlib), so a spawned worker starts fast and measures the lock, not the
import. A worker opens its own queue, waits at a start barrier until every worker is
ready, keeps every timestamp in memory (``time.perf_counter_ns``: one CLOCK_MONOTONIC
across processes on Linux), and writes its records once, at the end, as one JSON file.
In broker mode a worker is a broker client and takes no lock: the broker's batches are
the lock's only users. On a server (``spec.target``, a URL) a worker opens its queue with
``djq.open(target, name=..., **options)`` and records no lock: the server's view is the
runner's to sample. ``Crew`` is the parent's side of the same processes: it starts
them, releases them together, watches them, reaps them and reads back what they wrote.
With ``concurrency`` K > 1 a consumer process runs K coroutines on one async handle.
Imports from djq: ``aio``, ``aqueue``, ``errors``, ``model``, ``metrics``, ``queue``, ``remote``,
``aremote`` (for a broker run with coroutines), ``opener``, ``holding`` (heartbeats and planned kills).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from . import holding
from .aio import AsyncBaseQueue
from .api import BaseQueue
from .aqueue import AsyncQueue
from .aremote import AsyncBrokerClient
from .errors import DjqError, LeaseLost, SimulationError
from .metrics import LockRecorder
from .model import QueueConfig, Task
from .opener import open_queue
from .queue import Queue
from .remote import BrokerClient, connect

__all__ = ["Crew", "Dist", "WorkerSpec", "consume", "main", "produce", "worker_name"]

_IDLE_GET_TIMEOUT: Final = 0.05  #: seconds an idle consumer waits before looking at the stop flag
_START_TIMEOUT: Final = 120.0  #: seconds for every worker to reach the start barrier
_REAP_TIMEOUT: Final = 10.0  #: seconds the workers get to stop before they are killed
LOGNORMAL_SIGMA: Final = 1.0  #: the sigma of ``Dist(kind="lognormal")``: p99 / median = e**2.33 = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Dist:
    """A distribution of seconds: constant, exponential, or lognormal (a long tail).

    ``kind`` is ``"const"`` (always ``mean``), ``"exp"`` (exponential) or ``"lognormal"``
    (sigma ``LOGNORMAL_SIGMA``: the p99 is about 6.2 x the mean, 10 x the median).

    Example:
        >>> work = Dist.lognormal(p99=0.08)  # mean about 13 ms, median 8 ms, 1 in 100 over 80 ms
        >>> round(work.quantile(0.99), 6), round(work.mean, 4)
        (0.08, 0.0129)
    """

    kind: str = "const"
    mean: float = 0.0

    def sample(self, rng: random.Random) -> float:
        """Draw one value in seconds."""
        if self.mean <= 0:
            return 0.0
        if self.kind == "exp":
            return rng.expovariate(1.0 / self.mean)
        if self.kind == "lognormal":
            return rng.lognormvariate(self._mu(), LOGNORMAL_SIGMA)
        return self.mean

    @classmethod
    def lognormal(cls, *, p99: float) -> Dist:
        """The lognormal distribution (``LOGNORMAL_SIGMA``) whose 99th percentile is ``p99`` seconds."""
        z99 = statistics.NormalDist().inv_cdf(0.99)
        return cls(kind="lognormal", mean=p99 * math.exp(LOGNORMAL_SIGMA**2 / 2 - z99 * LOGNORMAL_SIGMA))

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0 < q < 1) in seconds, from the formula (not from samples)."""
        if self.mean <= 0 or self.kind == "const":
            return max(self.mean, 0.0)
        if self.kind == "exp":
            return -self.mean * math.log1p(-q)
        return math.exp(self._mu() + LOGNORMAL_SIGMA * statistics.NormalDist().inv_cdf(q))

    def _mu(self) -> float:
        """The lognormal's mu: the mean of the logarithm of its values."""
        return math.log(self.mean) - LOGNORMAL_SIGMA**2 / 2


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """Everything one worker process needs; plain data, so it pickles to a spawned child."""

    role: str  #: "producer" or "consumer"
    index: int
    queue: QueueConfig
    out: Path  #: where the worker writes its records at the end
    seed: int
    tasks: int = 0  #: producer: how many tasks to put; consumer: how many acks end the run
    payload_bytes: int = 0
    batch: int = 1  #: tasks per put_many (producer) or get_many + ack_many (consumer)
    think: Dist = Dist()  #: producer pause between puts (closed loop)
    rate: float | None = None  #: producer puts per second, Poisson arrivals (open loop)
    work: Dist = Dist()  #: consumer time spent on each task
    lease: float | None = None
    mode: str = "direct"  #: "direct" (take the file lock) or "broker" (ask the broker)
    target: str | None = None  #: a server URL (then ``queue`` is unused); None: the file ``queue.path``
    name: str | None = None  #: the queue's name in the server
    options: tuple[tuple[str, Any], ...] = ()  #: the server queue's options (``djq.open``'s)
    concurrency: int = 1  #: consumer: coroutines on one async handle (1: the sync client, no event loop)
    heartbeat: bool = False  #: consumer: extend each lease every half lease while working on its task
    die_at: float | None = None  #: consumer: seconds from the start; then SIGKILL itself in its next task


class _Flag(Protocol):
    value: int


class _Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


def worker_name(role: str, index: int) -> str:
    """Return the short name of a worker: ``P0``, ``C3``."""
    return f"{role[0].upper()}{index}"


def _open(spec: WorkerSpec, recorder: LockRecorder) -> Queue | BrokerClient | BaseQueue:
    if spec.target is not None:
        served: BaseQueue = open_queue(spec.target, name=spec.name, **dict(spec.options))
        return served
    if spec.mode == "broker":
        return connect(spec.queue.path)
    return Queue.from_config(spec.queue, recorder=recorder)


def _open_async(spec: WorkerSpec, recorder: LockRecorder) -> AsyncBaseQueue:
    if spec.target is not None:
        options = dict(spec.options)
        server: AsyncBaseQueue = open_queue(spec.target, name=spec.name, asynchronous=True, **options)
        return server
    if spec.mode == "broker":
        return AsyncBrokerClient(spec.queue.path)
    fields = spec.queue.to_json()
    return AsyncQueue(fields.pop("path"), recorder=recorder, **fields)


def _finish(spec: WorkerSpec, recorder: LockRecorder, ops: list[Any], extra: dict[str, Any]) -> None:
    record = {"role": spec.role, "index": spec.index, "pid": os.getpid(), "ops": ops, **extra}
    record["locks"] = recorder.rows()
    tmp = spec.out.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(record))
    tmp.replace(spec.out)  # the parent never sees half a record


def produce(spec: WorkerSpec, barrier: _Barrier, stop: _Flag) -> None:
    """Put ``spec.tasks`` tasks, closed loop (think time) or open loop (Poisson ``rate``).

    Each op row is ``[op, start_ns, end_ns, task_ids, ok, created_ns, intended_ns]``;
    ``created_ns`` is when the task arrived (the scheduled time in open loop, so a producer
    that falls behind does not hide the backlog: no coordinated omission). ``intended_ns``
    is the open loop's schedule (None in closed loop): each arrival is the previous one
    plus an exponential gap, never reset to the clock, so a producer that falls behind
    keeps its intended times and sends the late puts as soon as it can (``start_ns``).
    """
    rng = random.Random(spec.seed)
    recorder = LockRecorder()
    queue = _open(spec, recorder)
    pad = "x" * spec.payload_bytes
    ops: list[Any] = []
    barrier.wait(60)
    next_arrival = time.perf_counter_ns()
    intended: int | None = None  #: the open loop's schedule; None in closed loop
    done = 0
    while done < spec.tasks and not stop.value:
        n = min(spec.batch, spec.tasks - done)
        if spec.rate:
            next_arrival += int(rng.expovariate(spec.rate) * 1e9)
            _sleep_until(next_arrival)
            created = intended = next_arrival
        else:
            time.sleep(spec.think.sample(rng))
            created = time.perf_counter_ns()
        payloads = [{"p": spec.index, "n": done + i, "pad": pad} for i in range(n)]
        start = time.perf_counter_ns()
        ids = queue.put_many(payloads)
        ops.append(["put", start, time.perf_counter_ns(), ids, True, created, intended])
        done += n
    _finish(spec, recorder, ops, {"put": done})


def consume(spec: WorkerSpec, barrier: _Barrier, stop: _Flag) -> None:
    """Get, work, ack until the queue has acked ``spec.tasks`` tasks or the stop flag is set.

    Each op row is ``[op, start_ns, end_ns, task_ids, ok, attempts]``. With
    ``spec.concurrency`` K > 1, K coroutines do this on one async handle (``_consume_async``).
    With ``spec.heartbeat`` a thread extends the lease while the task is worked on (an
    ``extend`` row each time). With ``spec.die_at`` the consumer SIGKILLs itself part-way
    through the first task it gets after that time (a ``kill`` row first), and writes
    each row to ``<out>.ops`` as it goes, since it never reaches the end.
    """
    if spec.concurrency > 1:
        asyncio.run(_consume_async(spec, barrier, stop))
        return
    rng = random.Random(spec.seed)
    recorder = LockRecorder()
    queue = _open(spec, recorder)
    ops: list[Any] = [] if spec.die_at is None else holding.OpLog(spec.out.with_suffix(".ops"))
    lease = spec.queue.lease if spec.lease is None else spec.lease
    barrier.wait(60)
    die_ns = None if spec.die_at is None else time.perf_counter_ns() + int(spec.die_at * 1e9)
    while not stop.value:
        start = time.perf_counter_ns()
        tasks = queue.get_many(
            spec.batch, lease=spec.lease, timeout=_IDLE_GET_TIMEOUT, owner=f"C{spec.index}"
        )
        _row(ops, "get", start, tasks)
        if not tasks:
            if queue.stats().acked_total >= spec.tasks:
                break
            continue
        if die_ns is not None and time.perf_counter_ns() >= die_ns:
            seconds = spec.work.sample(rng) * rng.random()
            holding.die(queue, tasks[0], seconds, lease=lease, heartbeat=spec.heartbeat, ops=ops)
        for task in tasks:
            holding.work(queue, task, spec.work.sample(rng), lease=lease, heartbeat=spec.heartbeat, ops=ops)
        start = time.perf_counter_ns()
        if len(tasks) == 1:
            try:
                queue.ack(tasks[0])
                lost = []
            except LeaseLost:
                lost = [tasks[0].id]
        else:
            lost = queue.ack_many(tasks)
        _row(ops, "ack", start, tasks, lost)
    _finish(spec, recorder, ops, {})


async def _consume_async(spec: WorkerSpec, barrier: _Barrier, stop: _Flag) -> None:
    """``consume`` with ``spec.concurrency`` coroutines sharing one async handle, in one process.

    Each coroutine gets, works (``asyncio.sleep``: the others run meanwhile) and acks; the
    rows of all of them are the process's, as one consumer's would be.
    """
    rng = random.Random(spec.seed)
    recorder = LockRecorder()
    ops: list[Any] = []
    barrier.wait(60)  # before any coroutine runs: nothing else on this loop to hold up

    async def one(queue: AsyncBaseQueue, owner: str) -> None:
        while not stop.value:
            start = time.perf_counter_ns()
            tasks = await queue.get_many(spec.batch, lease=spec.lease, timeout=_IDLE_GET_TIMEOUT, owner=owner)
            _row(ops, "get", start, tasks)
            if not tasks:
                if (await queue.stats()).acked_total >= spec.tasks:
                    return
                continue
            for _ in tasks:
                await asyncio.sleep(spec.work.sample(rng))
            start = time.perf_counter_ns()
            _row(ops, "ack", start, tasks, await queue.ack_many(tasks))

    async with _open_async(spec, recorder) as queue:
        await asyncio.gather(*(one(queue, f"C{spec.index}.{k}") for k in range(spec.concurrency)))
    _finish(spec, recorder, ops, {})


def _row(ops: list[Any], op: str, start: int, tasks: list[Task], lost: list[str] | None = None) -> None:
    """Record a get (``lost`` None) or an ack of ``tasks`` that began at ``start``, now ended."""
    end = time.perf_counter_ns()
    attempts = max((t.attempts for t in tasks), default=0)
    if lost is None:
        ops.append([op, start, end, [t.id for t in tasks], True, attempts])
        return
    ops.append([op, start, end, [t.id for t in tasks if t.id not in lost], True, attempts])
    if lost:
        ops.append([op, start, end, lost, False, attempts])


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.perf_counter_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def main(spec: WorkerSpec, barrier: _Barrier, stop: _Flag) -> None:
    """Process entry point: run the worker's role; on failure leave the reason and re-raise.

    The reason goes to ``<out>.error`` so the parent can report it with the run.
    """
    try:
        (produce if spec.role == "producer" else consume)(spec, barrier, stop)
    except BaseException as exc:  # process boundary: record, then let the process fail
        kind = "" if isinstance(exc, DjqError) else "unexpected "
        spec.out.with_suffix(".error").write_text(f"{kind}{type(exc).__name__}: {exc}")
        raise


class Crew:
    """The worker processes of one run, seen from the parent: started together, watched, reaped.

    Use it as a context manager around ``start`` and ``watch``: leaving it sets the stop
    flag and reaps every process (killing any that does not stop within a few seconds);
    then ``outcomes`` reads what each worker wrote.
    """

    def __init__(self, specs: Sequence[WorkerSpec], start_method: str) -> None:
        ctx: Any = multiprocessing.get_context(start_method)
        self.specs = list(specs)
        self.barrier = ctx.Barrier(len(self.specs) + 1)  # the workers and the parent
        self.stop = ctx.RawValue("b", 0)
        self.procs = [
            ctx.Process(target=main, args=(s, self.barrier, self.stop), name=s.out.stem, daemon=True)
            for s in self.specs
        ]

    def __enter__(self) -> Crew:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.value = 1
        _reap(self.procs)

    def start(self, timeout: float = _START_TIMEOUT) -> int:
        """Start every worker, release them together; return when (``perf_counter_ns``).

        Raises:
            SimulationError: a worker died, or not all reached the barrier within ``timeout``.
        """
        for p in self.procs:
            p.start()
        waiter = threading.Thread(target=_wait_quietly, args=(self.barrier,), daemon=True)
        waiter.start()
        deadline = time.monotonic() + timeout
        while waiter.is_alive():
            if self.failed() or time.monotonic() > deadline:
                self.barrier.abort()
                raise SimulationError(f"workers did not start: {self.errors() or self._exits(timeout)}")
            waiter.join(0.05)
        if self.barrier.broken:
            raise SimulationError(f"workers did not start: {self.errors() or 'the start barrier broke'}")
        return time.perf_counter_ns()

    def watch(self, until_ns: int, interval: float, sample: Callable[[], object]) -> bool:
        """Call ``sample`` every ``interval`` s until every worker exits; return whether time ran out.

        At ``until_ns`` (``perf_counter_ns``) every worker is told to stop, and so is every
        worker once one fails (the run cannot finish as asked). A last sample is taken when
        they all exit in time.
        """
        while any(p.is_alive() for p in self.procs):
            sample()
            if time.perf_counter_ns() > until_ns:
                self.stop.value = 1
                return True
            if self.failed():
                self.stop.value = 1
            time.sleep(interval)
        sample()
        return False

    def failed(self) -> bool:
        """Whether any worker has exited with an error (a consumer killed as planned has not)."""
        return any(
            p.exitcode not in (None, 0) and not _killed(s, p)
            for s, p in zip(self.specs, self.procs, strict=True)
        )

    def errors(self) -> str:
        """The reasons the failed workers left (``main`` writes them), one per worker."""
        found = sorted((s.out.stem, s.out.with_suffix(".error")) for s in self.specs)
        return "; ".join(f"{stem}: {error.read_text()}" for stem, error in found if error.exists())

    def outcomes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The records the workers wrote, and one row per worker: pid, exit code, ok, error, killed.

        A consumer that killed itself as planned (``die_at``) is ok: its record is read from
        its ``.ops`` file (its lock rows died with it).
        """
        records, rows = [], []
        for spec, proc in zip(self.specs, self.procs, strict=True):
            error = spec.out.with_suffix(".error")
            killed = _killed(spec, proc)
            record = orjson.loads(spec.out.read_bytes()) if spec.out.exists() else None
            if killed:
                ops = holding.read_log(spec.out.with_suffix(".ops"))
                record = {"role": spec.role, "index": spec.index, "pid": proc.pid, "ops": ops, "locks": []}
            if record is not None:
                records.append(record)
            rows.append(
                {"worker": worker_name(spec.role, spec.index), "role": spec.role, "pid": proc.pid,
                 "exitcode": proc.exitcode, "ok": record is not None and (proc.exitcode == 0 or killed),
                 "error": error.read_text() if error.exists() else "", "killed": killed}
            )  # fmt: skip
        return records, rows

    def _exits(self, timeout: float) -> str:
        dead = [f"{p.name} exited with code {p.exitcode}" for p in self.procs if p.exitcode not in (None, 0)]
        return ", ".join(dead) + " (see its stderr)" if dead else f"timed out after {timeout:g} s"


def _killed(spec: WorkerSpec, proc: Any) -> bool:
    """Whether ``proc`` is a consumer that SIGKILLed itself as its spec said (``die_at``)."""
    return spec.die_at is not None and proc.exitcode == -signal.SIGKILL


def _wait_quietly(barrier: Any) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()


def _reap(procs: Sequence[Any]) -> None:
    """Join every worker; kill any that does not stop within a few seconds."""
    deadline = time.monotonic() + _REAP_TIMEOUT
    for p in procs:
        if p.pid is None:
            continue
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)
