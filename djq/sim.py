"""Simulations: N producer and M consumer processes against one queue, measured.

``simulate(...)`` spawns the workers (``djq.workers``, which import only the core), starts
them together at a barrier, samples the queue file while they run, stops when every task
is acked (or at ``time_limit``, reported as such), and returns a ``Run`` of pandas
DataFrames (``djq.frames``). ``sweep(grid)`` runs a grid of simulations and returns one
summary row per run. With ``mode="broker"`` a ``BrokerManager`` runs a broker for the run
and the workers are its clients. ``SimConfig``, ``Run`` and ``load`` live in ``djq.runs``
and are re-exported here.

``queue=`` picks the queue: None (a fresh ``Queue.json`` in the run's folder), the path
of a queue file (it must hold no task), or a server URL (``postgresql://``, ``redis://``,
``unix://``): the same workers open it with ``djq.open``, the runner samples its
``stats()`` into ``depth`` and the server's own view into ``server`` (``djq.probes``).
A server run uses a fresh queue name (``sim-<hex>``) unless ``name=`` is given; the
queue must hold no task when the run starts, and the runner purges whatever the run left
in it (nothing, when it completed; its counters stay). Imports from djq: the core,
``opener``, ``workers``, ``frames``, ``leases``, ``manager``, ``probes``, ``remote``, ``runs``.

Example::

    from djq import sim
    run = sim.simulate(producers=4, consumers=4, tasks=2_000, lock="filelock")
    run.summary["throughput_per_s"], run.summary["lock_wait_p99_s"]
    pg = sim.simulate(queue="postgresql:///djq", claim="for_update", work="exp:0.002")
    pg.summary["server_lock_wait_share"], pg.server   # the server's own view
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import platform
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from . import frames, leases
from .api import BaseQueue
from .errors import ConfigError
from .manager import BrokerManager
from .model import LockKind, StorageKind, WaitKind
from .opener import open_queue, split_name
from .probes import Probe, open_probe
from .queue import Queue
from .remote import connect
from .runs import QUEUE_OPTIONS, SIM_QUEUE, Run, SimConfig, load
from .workers import Crew, Dist, WorkerSpec

__all__ = ["QUEUE_OPTIONS", "SIM_QUEUE", "Run", "SimConfig", "load", "simulate", "sweep"]

FILELOCK_POLL_INTERVAL: Final = 0.05  #: seconds; filelock's own default, when none is given


_Q: Final = SIM_QUEUE  #: the defaults of the queue options in the signatures below


def simulate(
    *,
    producers: int = 2,
    consumers: int = 2,
    tasks: int = 1_000,
    mode: str = "direct",
    payload_bytes: int = 100,
    work: float | str | Dist = 0.0,
    think: float | str | Dist = 0.0,
    rate: float | None = None,
    batch: int = 1,
    consumer_concurrency: int = 1,
    heartbeat: bool = False,
    kills: Sequence[float] = (),
    start_method: str = "spawn",
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    queue: str | os.PathLike[str] | None = None,
    name: str | None = None,
    claim: str | None = None,
    progress: bool = False,
    time_limit: float = 300.0,
    sample_interval: float = 0.01,
    lock: LockKind | str = _Q.lock,
    storage: StorageKind | str = _Q.storage,
    wait: WaitKind | str = _Q.wait,
    lock_timeout: float | None = _Q.lock_timeout,
    poll_interval: float | None = _Q.poll_interval,
    fsync: bool = _Q.fsync,
    lease: float = _Q.lease,
    max_attempts: int = _Q.max_attempts,
    max_payload_bytes: int = _Q.max_payload_bytes,
    max_file_bytes: int = _Q.max_file_bytes,
    compact_bytes: int = _Q.compact_bytes,
    file_mode: int = _Q.file_mode,
) -> Run:
    """Run N producers and M consumers against one queue (a file or a server's) and measure everything.

    The parameters are the fields of ``SimConfig`` (its own, then the queue's options,
    ``QUEUE_OPTIONS``), with the same defaults; tests/test_widgets.py keeps them in step.

    Args:
        producers: producer processes.
        consumers: consumer processes.
        tasks: tasks put, then acked, in all.
        mode: "direct" (the workers take the file lock) or "broker" (a broker owns the file).
        payload_bytes: size of each task's payload.
        work: consumer seconds per task: ``0.002`` or ``"exp:0.002"`` (exponential times).
        think: producer pause between puts (closed loop), as ``work``.
        rate: puts per second per producer, Poisson (open loop); None: as fast as they can.
        batch: tasks per put_many (producers) and per get_many + ack_many (consumers).
        consumer_concurrency: async consumers per consumer process: K coroutines sharing one
            async handle (``djq.open(..., asynchronous=True)``), each getting, working and
            acking; 1 (the default) runs the sync client. ``consumers=1,
            consumer_concurrency=8`` against ``consumers=8`` is one process of 8 coroutines
            against 8 processes on the same queue.
        heartbeat: consumers extend each lease every half lease while they work on its task
            (a thread beside the work, as ``Consumer.run(heartbeat=True)``).
        kills: seconds from the start; at each, one more consumer (chosen by ``seed``)
            SIGKILLs itself part-way through the next task it gets, its lease held. The
            task comes back when the lease runs out; the run's ``kills`` frame
            (``djq.leases.kill_frame``) says when. Fewer kills than consumers.
        start_method: "spawn" (works everywhere, notebooks included), "forkserver" or "fork".
        seed: the workers' random seed.
        path: folder of the run; a fresh temporary folder when None.
        queue: None (a fresh ``Queue.json`` in the run's folder), a queue file's path, or a
            server URL (``postgresql://...``, ``redis://...``, ``unix://...``).
        name: the queue's name in the server; None: a fresh one per run.
        claim: PostgreSQL only: "skip_locked" (None: the default) or "for_update".
        progress: show a progress bar.
        time_limit: seconds the run may last; then it stops, reported as incomplete.
        sample_interval: seconds between the runner's looks at the queue file.
        lock: the file lock: "flock", "filelock" or "soft" (``djq.model.LockKind``).
        storage: "journal" or "rewrite" (``djq.model.StorageKind``).
        wait: how a waiting get learns of a put (``djq.model.WaitKind``).
        lock_timeout: seconds a lock may be waited for; None: for ever.
        poll_interval: seconds between tries of a polling lock; None: the lock's default.
        fsync: fsync every change (off here by default: a variable of its own).
        lease: seconds a consumer holds a task before it is delivered again.
        max_attempts: deliveries before a task goes to the dead letters.
        max_payload_bytes: largest payload accepted.
        max_file_bytes: largest queue file accepted.
        compact_bytes: journal size that triggers a compaction.
        file_mode: permissions of the queue's files.

    Returns:
        A ``Run`` with ``tasks``, ``locks``, ``ops``, ``depth``, ``workers``, ``batches``,
        ``server``, ``kills`` frames and a ``summary`` (``frames.summarize``,
        ``frames.server_summary``, ``leases.lease_summary`` and the run's metadata:
        backend, server version and durability, claim).

    Raises:
        ConfigError: an option is invalid, or one the server refuses (before any process starts).
        SimulationError: the workers could not start.
        BrokerUnavailable: the server cannot be reached.
    """
    return _Runner(SimConfig(**locals())).run()


class _Runner:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.folder = Path(config.path) if config.path else Path(tempfile.mkdtemp(prefix="djq-sim-"))
        self.records = self.folder / "records"
        self.server = config.backend != "file"
        target = config.target
        self.queue_path = self.folder / "Queue.json" if target is None or self.server else _file(target)
        self.url, name = split_name(target) if self.server and target else ("", None)
        if name is not None and config.name is not None and name != config.name:
            raise ConfigError(
                f"the queue is named twice: name={config.name!r} and ?name={name!r}", field="name"
            )
        self.name = config.name or name or f"sim-{secrets.token_hex(4)}"
        self.samples: list[tuple[int, int, int, int]] = []
        self.acked_before = 0  # a named server queue keeps its counters from earlier runs
        self.probe: Probe | None = None

    def _specs(self) -> list[WorkerSpec]:
        c = self.config
        queue = c.queue_config(self.queue_path)
        server: dict[str, Any] = {"target": self.url, "name": self.name,
                                  "options": tuple(c.server_options().items())}  # fmt: skip
        where = server if self.server else {}
        victims = random.Random(c.seed).sample(range(c.consumers), len(c.kills))
        dying = dict(zip(victims, sorted(c.kills), strict=True))  # consumer index -> when it dies
        shares = [c.tasks // c.producers + (i < c.tasks % c.producers) for i in range(c.producers)]
        producers = [
            WorkerSpec(role="producer", index=i, queue=queue, out=self.records / f"P{i}.json",
                       seed=c.seed * 7919 + i, tasks=n, payload_bytes=c.payload_bytes, batch=c.batch,
                       think=c.think, rate=c.rate, lease=c.queue.lease, mode=c.mode, **where)
            for i, n in enumerate(shares)
        ]  # fmt: skip
        consumers = [
            WorkerSpec(role="consumer", index=i, queue=queue, out=self.records / f"C{i}.json",
                       seed=c.seed * 7919 + 1000 + i, tasks=c.tasks + self.acked_before, work=c.work,
                       lease=c.queue.lease, mode=c.mode, batch=c.batch,
                       concurrency=c.consumer_concurrency, heartbeat=c.heartbeat, die_at=dying.get(i),
                       **where)
            for i in range(c.consumers)
        ]  # fmt: skip
        return producers + consumers

    def _prepare(self) -> BaseQueue:
        """Open the runner's queue (the server refuses bad options here) and check it is empty."""
        self.records.mkdir(parents=True, exist_ok=True)
        if not self.server:
            queue: BaseQueue = Queue.from_config(self.config.queue_config(self.queue_path))
            if queue.stats().total:
                raise ConfigError(
                    f"{self.queue_path} is not empty; a simulation starts from an empty queue", field="path"
                )
            return queue
        queue = open_queue(
            _runner_url(self.url, self.config.backend), name=self.name, **self.config.server_options()
        )
        try:
            stats = queue.stats()
            if stats.total:
                raise ConfigError(f"the queue {self.name!r} at {queue!r} holds {stats.total} tasks; a "
                                  "simulation starts from an empty queue", field="name")  # fmt: skip
            self.acked_before = stats.acked_total
            self.probe = open_probe(self.config, self.url, self.name)
        except BaseException:
            queue.close()
            raise
        return queue

    def run(self) -> Run:
        queue = self._prepare()
        try:
            if self.config.mode != "broker":
                return self._run(queue)
            options = {name: getattr(self.config.queue, name) for name in QUEUE_OPTIONS}
            with BrokerManager(self.queue_path, **options):  # the broker gets the whole queue config
                return self._run(queue)
        finally:
            if self.server:
                queue.purge()  # what an incomplete run left; it started empty, so nothing else
            queue.close()
            if self.probe is not None:
                self.probe.close()

    def _broker_batches(self) -> list[list[Any]]:
        if self.config.mode != "broker":
            return []
        with connect(self.queue_path) as client:
            return list(client.metrics(rows=True)["batches"])

    def _run(self, queue: BaseQueue) -> Run:
        with Crew(self._specs(), self.config.start_method) as crew:
            t0 = crew.start()
            if self.probe is not None:
                self.probe.sample(t0, force=True)  # the first look: Redis's counters' baseline
                self.probe.rows.clear()
            limit_hit = self._watch(queue, crew, t0)
        return self._collect(crew, t0, limit_hit, self._broker_batches())

    def _watch(self, queue: BaseQueue, crew: Crew, t0: int) -> bool:
        """Sample the file until every worker exits; stop them all at the time limit or a failure."""
        bar = _progress(self.config)
        until = t0 + int(self.config.time_limit * 1e9)
        try:
            return crew.watch(until, self.config.sample_interval, lambda: self._sample(queue, bar))
        finally:
            if bar is not None:
                bar.close()

    def _sample(self, queue: BaseQueue, bar: Any) -> None:
        stats = queue.stats()
        now = time.perf_counter_ns()
        self.samples.append((now, stats.ready, stats.delayed, stats.leased + stats.expired))
        if self.probe is not None:
            self.probe.sample(now)
        if bar is not None:
            bar.update(stats.acked_total - self.acked_before - bar.n)

    def _collect(self, crew: Crew, t0: int, limit_hit: bool, batches: list[list[Any]]) -> Run:
        records, rows = crew.outcomes()
        workers = pd.DataFrame(rows)
        ops = frames.raw_ops(records, t0)
        tasks = frames.task_frame(ops, t0)
        locks = frames.lock_frame([*records, frames.broker_record(batches)] if batches else records, t0)
        batch = frames.batch_frame(batches, t0)
        depth = frames.depth_frame(self.samples, t0)
        server = frames.server_frame(self.probe.rows if self.probe else [], t0)
        summary = frames.summarize(tasks, locks, depth, expected=self.config.tasks)
        summary.update(frames.server_summary(self.config.backend, server, summary["duration_s"]))
        kills = leases.kill_frame(ops)
        summary.update(leases.lease_summary(tasks, frames.op_frame(ops), kills))
        summary.update(
            completed=bool(workers["ok"].all()) and not limit_hit and summary["acked"] == self.config.tasks,
            time_limit_hit=limit_hit,
            workers_failed=int((~workers["ok"]).sum()),
            broker_batches=len(batch),
            broker_writes=int(batch["wrote"].sum()),
            events_per_write=float(batch["events"].sum() / batch["wrote"].sum())
            if batch["wrote"].any()
            else math.nan,
            **_metadata(self.config, self.folder),
            **self._server_metadata(),
        )
        return Run(
            config=self.config, tasks=tasks, locks=locks, ops=frames.op_frame(ops), depth=depth,
            workers=workers, batches=batch, server=server, summary=pd.Series(summary, dtype=object),
            path=self.folder, kills=kills,
        )  # fmt: skip

    def _server_metadata(self) -> dict[str, Any]:
        """The server's version and durability, the queue's name and the probe's error ("" or why)."""
        if self.probe is None:
            return {}
        return {"queue_name": self.name, "probe_error": self.probe.error, **self.probe.metadata()}


def _file(target: str) -> Path:
    """The path a file target names (a ``file:`` URL's path)."""
    return Path(urlsplit(target).path) if target.startswith("file:") else Path(target)


def _runner_url(url: str, backend: str) -> str:
    """PostgreSQL: ``url`` with the runner's own ``application_name`` (the probe counts the workers')."""
    if backend != "postgres":
        return url
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, "application_name=djq-runner"]))
    return urlunsplit(parts._replace(query=query))


def _progress(config: SimConfig) -> Any:
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    what = config.queue.lock.value if config.backend == "file" else config.backend
    return tqdm(
        total=config.tasks,
        desc=f"{config.producers}P/{config.consumers}C {what}",
        unit="task",
    )


def _fs_type(folder: Path) -> str:
    """The file system type of ``folder`` from /proc/mounts ("ext4", "tmpfs", ...)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    target, best = str(folder.resolve()), ("", "unknown")
    for line in mounts:
        parts = line.split()
        inside = len(parts) > 2 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/"))
        if inside and len(parts[1]) >= len(best[0]):
            best = (parts[1], parts[2])
    return best[1]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _metadata(config: SimConfig, folder: Path) -> dict[str, Any]:
    queue, file = config.queue, config.backend == "file"
    poll = queue.poll_interval
    if poll is None and queue.lock is not LockKind.FLOCK:
        poll = FILELOCK_POLL_INTERVAL
    return {
        "producers": config.producers,
        "consumers": config.consumers,
        "backend": config.backend,
        "claim": ("skip_locked" if config.claim is None else config.claim)
        if config.backend == "postgres"
        else None,
        "lock": queue.lock.value if file else None,  # a server takes no file lock
        "poll_interval_s": poll if file else None,
        "mode": config.mode,
        "storage": queue.storage.value if file else None,
        "wait": queue.wait.value if file else None,
        "fsync": queue.fsync,
        "start_method": config.start_method,
        "python": platform.python_version(),
        "djq": _version("djq"),
        "filelock": _version("filelock"),
        "orjson": _version("orjson"),
        "platform": sys.platform,
        "fs_type": _fs_type(folder),
        "cpu_count": os.cpu_count(),
    }


def sweep(
    grid: Mapping[str, Sequence[Any]], *, repeats: int = 1, progress: bool = True, **options: Any
) -> pd.DataFrame:
    """Run every combination of ``grid`` ``repeats`` times; return one summary row per run.

    Args:
        grid: option name -> values, e.g. ``{"producers": [1, 2], "lock": ["flock", "filelock"]}``;
            ``"workers": [1, 2, 4]`` means that many producers and as many consumers.
        repeats: runs per point (seeds ``seed``, ``seed + 1``, ...).
        progress: show a progress bar over the runs (each run shows none).
        **options: the options of every run, as for ``simulate`` (a grid value wins). With
            ``path``, each run gets its own sub-folder.

    Returns:
        A DataFrame with the grid values, ``repeat`` and every summary field as columns.
    """
    if type(repeats) is not int or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, not {repeats!r:.80}", field="repeats")
    names = list(grid)
    root = options.pop("path", None)
    runs = []  # (grid point, repeat, the run's options), every one checked before any run starts
    for i, (values, repeat) in enumerate(
        itertools.product(itertools.product(*grid.values()), range(repeats))
    ):
        point = dict(zip(names, values, strict=True))
        run_options = {**options, **point, "path": None if root is None else Path(root) / f"run-{i:03d}"}
        if "workers" in run_options:  # N workers: N producers and N consumers
            run_options["producers"] = run_options["consumers"] = run_options.pop("workers")
        run_options["seed"] = SimConfig(**run_options).seed + repeat
        SimConfig(**run_options)  # the repeat's seed too
        runs.append((point, repeat, run_options))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="sweep", unit="run")
    rows = []
    try:
        for point, repeat, run_options in runs:
            rows.append({**point, "repeat": repeat, **simulate(**run_options).summary.to_dict()})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    frame = pd.DataFrame(rows)
    return frame.loc[:, ~frame.columns.duplicated()]


def _sweep_signature() -> inspect.Signature:
    """The parameters of sweep: its own, then simulate's run options (what Shift-Tab shows)."""
    own = list(inspect.signature(sweep).parameters.values())[:3]  # grid, repeats, progress
    runs = [p for name, p in inspect.signature(simulate).parameters.items() if name != "progress"]
    return inspect.Signature([*own, *runs], return_annotation=pd.DataFrame)


sweep.__signature__ = _sweep_signature()  # type: ignore[attr-defined]
