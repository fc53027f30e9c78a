"""Simulations: N producer and M consumer processes against one ``Queue.json``, measured.

``simulate(...)`` spawns the workers (``djq.workers``, which import only the core), starts
them together at a barrier, samples the queue file while they run, stops when every task
is acked (or at ``time_limit``, reported as such), and returns a ``Run`` of pandas
DataFrames (``djq.frames``). ``sweep(grid)`` runs a grid of simulations and returns one
summary row per run. With ``mode="broker"`` a ``BrokerManager`` runs a broker for the run
and the workers are its clients. Imports from djq: the core, ``workers``, ``frames``,
``manager``, ``remote``.

Example::

    from djq import sim
    run = sim.simulate(producers=4, consumers=4, tasks=2_000, lock="filelock")
    run.summary["throughput_per_s"], run.summary["lock_wait_p99_s"]
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import orjson
import pandas as pd

from . import frames
from .errors import ConfigError
from .manager import BrokerManager
from .model import CONFIG_FIELDS, MAX_DELAY, LockKind, QueueConfig, StorageKind, WaitKind, check_seconds
from .queue import Queue
from .remote import connect
from .workers import Crew, Dist, WorkerSpec

__all__ = ["QUEUE_OPTIONS", "SIM_QUEUE", "Run", "SimConfig", "load", "simulate", "sweep"]

FILELOCK_POLL_INTERVAL: Final = 0.05  #: seconds; filelock's own default, when none is given
_MODES: Final = ("direct", "broker")
_FRAMES: Final = ("tasks", "locks", "ops", "depth", "workers", "batches")
_START_METHODS: Final = ("spawn", "forkserver", "fork")
_MAX_SEED: Final = (1 << 48) - 1  #: seed * 7919 + i (a worker's seed) stays below 2**63


def _dist(name: str, value: float | str | Dist) -> Dist:
    """Accept 0.002, "0.002", "exp:0.002" or a Dist; seconds."""
    if isinstance(value, Dist):
        return value
    kind, _, mean = str(value).rpartition(":") if isinstance(value, str) else ("", "", value)
    try:
        seconds = float(mean)
    except ValueError:
        raise ConfigError(f"{name} must be seconds, or 'exp:MEAN', not {value!r}", field=name) from None
    if kind not in ("", "const", "exp") or not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{name} must be seconds >= 0, or 'exp:MEAN', not {value!r}", field=name)
    return Dist(kind=kind or "const", mean=seconds)


#: The queue options a simulation takes: every ``QueueConfig`` field but ``path`` (each run's
#: ``Queue.json`` lives in its folder, the ``path`` of ``SimConfig``).
QUEUE_OPTIONS: Final = tuple(name for name in CONFIG_FIELDS if name != "path")
#: The queue a simulation opens when told nothing: ``QueueConfig``'s defaults, fsync off.
SIM_QUEUE: Final = QueueConfig(path=Path("Queue.json"), fsync=False)
_NO_TIME: Final = Dist()  #: no work, no think time


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class SimConfig:
    """How a simulation runs; stored on the ``Run`` so a result says how it was produced.

    Takes the simulation's own options (the fields below) and any queue option (a field of
    ``QueueConfig`` but ``path``: ``lock``, ``storage``, ``fsync``, ``lease``, ...), which
    every worker's queue gets, in ``queue``; read them as ``config.queue.lock`` or, as
    before, ``config.lock``. Times are in seconds. ``fsync`` is off by default: the
    simulation studies the lock and the file, and fsync is a variable of its own (turn it
    on to see its cost).

    Raises:
        ConfigError: an unknown or invalid option, naming it.
    """

    producers: int = 2
    consumers: int = 2
    tasks: int = 1_000
    mode: str = "direct"  #: "direct": workers take the file lock; "broker": a broker owns the file
    payload_bytes: int = 100
    work: Dist = _NO_TIME  #: consumer time per task ("exp:0.002" or 0.002)
    think: Dist = _NO_TIME  #: producer pause between puts (closed loop)
    rate: float | None = None  #: puts per second per producer, Poisson (open loop)
    batch: int = 1  #: tasks per put_many (producers) and per get_many + ack_many (consumers)
    start_method: str = "spawn"  #: "spawn" works everywhere, notebooks included
    seed: int = 0
    path: Path | None = None  #: folder of the run; a fresh temporary folder when None
    progress: bool = False
    time_limit: float = 300.0
    sample_interval: float = 0.01  #: seconds between the runner's looks at the queue file
    queue: QueueConfig = SIM_QUEUE  #: the queue every worker opens (its path: the run's Queue.json)

    def __init__(self, *, queue: QueueConfig = SIM_QUEUE, **options: Any) -> None:
        """Split ``options`` into the simulation's and the queue's; validate both."""
        given = {name: options.pop(name) for name in QUEUE_OPTIONS if name in options}
        for f in dataclasses.fields(self):
            if f.name != "queue":
                object.__setattr__(self, f.name, options.pop(f.name, f.default))
        if options:
            name = sorted(options)[0]
            known = ", ".join([f.name for f in dataclasses.fields(self)][:-1] + list(QUEUE_OPTIONS))
            raise ConfigError(f"unknown simulation option {name!r}; the options are: {known}", field=name)
        object.__setattr__(self, "queue", dataclasses.replace(queue, **given))  # validates them
        self._check()

    def __getattr__(self, name: str) -> Any:
        """Read a queue option through: ``config.lock`` is ``config.queue.lock``."""
        if name in QUEUE_OPTIONS:
            return getattr(self.queue, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check(self) -> None:
        """Validate the simulation's own fields; raise ``ConfigError`` naming the first bad one."""
        for name in ("producers", "consumers", "tasks", "batch"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}", field=name)
        if type(self.payload_bytes) is not int or self.payload_bytes < 0:
            raise ConfigError("payload_bytes must be an integer >= 0", field="payload_bytes")
        object.__setattr__(self, "work", _dist("work", self.work))
        object.__setattr__(self, "think", _dist("think", self.think))
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        if self.mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, not {self.mode!r}", field="mode")
        if self.start_method not in _START_METHODS:
            raise ConfigError(f"start_method must be one of {_START_METHODS}", field="start_method")
        rate = self.rate
        if rate is not None and not (
            isinstance(rate, int | float) and not isinstance(rate, bool) and 0 < rate < math.inf
        ):
            raise ConfigError(
                f"rate must be a finite number of puts per second > 0, not {rate!r:.80}", field="rate"
            )
        for name in ("time_limit", "sample_interval"):
            value = getattr(self, name)
            if value is None:
                raise ConfigError(f"{name} must be seconds > 0, not None", field=name)
            check_seconds(name, value, low=0.0, high=MAX_DELAY)  # finite: not NaN, not infinity
            if value <= 0:
                raise ConfigError(f"{name} must be seconds > 0, not {value!r:.80}", field=name)
        # the workers' seeds (seed * 7919 + i) and config.json must stay within 64-bit integers
        if type(self.seed) is not int or not 0 <= self.seed <= _MAX_SEED:
            raise ConfigError(
                f"seed must be an integer from 0 to {_MAX_SEED}, not {self.seed!r:.80}", field="seed"
            )
        if self.queue.lock is LockKind.FLOCK and self.queue.poll_interval is not None:
            raise ConfigError(
                "flock does not poll: poll_interval is for 'filelock' and 'soft'", field="poll_interval"
            )

    def queue_config(self, path: Path) -> QueueConfig:
        """The queue every worker opens, at ``path``."""
        return dataclasses.replace(self.queue, path=path)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, the queue's options among the others (as ``config.json`` holds them)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "queue"}
        for name in ("work", "think"):
            out[name] = f"{out[name].kind}:{out[name].mean:g}"
        out["path"] = None if self.path is None else str(self.path)
        for name in QUEUE_OPTIONS:
            value = getattr(self.queue, name)
            out[name] = value.value if isinstance(value, enum.Enum) else value
        return out


@dataclass(kw_only=True)
class Run:
    """One simulation's results: tidy frames (see ``djq.frames``) and a summary.

    ``summary["lost"]`` and ``summary["acked_twice"]`` are the correctness oracle: both
    are 0 on every completed run.
    """

    config: SimConfig
    tasks: pd.DataFrame
    locks: pd.DataFrame
    ops: pd.DataFrame
    depth: pd.DataFrame
    workers: pd.DataFrame
    summary: pd.Series
    batches: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=frames.BATCH_COLUMNS))
    path: Path | None = None

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the frames as CSV, the summary and the config as JSON; return the folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name in _FRAMES:
            getattr(self, name).to_csv(out / f"{name}.csv", index=False)
        (out / "summary.json").write_bytes(_json(self.summary.to_dict()))
        (out / "config.json").write_bytes(_json(self.config.to_dict()))
        return out

    def to_chrome_trace(self, file: str | os.PathLike[str]) -> Path:
        """Write lock wait and hold spans per worker as a Chrome trace (open in Perfetto)."""
        names = sorted(self.locks["worker"].unique())
        tids = {name: i + 1 for i, name in enumerate(names)}
        events: list[dict[str, Any]] = [
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": name}}
            for name, tid in tids.items()
        ]
        for row in self.locks.itertuples(index=False):
            tid = tids[row.worker]
            for kind, start, dur in (
                ("wait", row.requested_s, row.wait_s),
                ("hold", row.acquired_s, row.hold_s),
            ):
                events.append(
                    {"name": f"{kind} {row.op}", "cat": kind, "ph": "X", "pid": 1, "tid": tid,
                     "ts": start * 1e6, "dur": dur * 1e6}
                )  # fmt: skip
        path = Path(file)
        path.write_bytes(orjson.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
        return path

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<Run {self.config.producers}P/{self.config.consumers}C lock={self.config.queue.lock.value} "
            f"acked={s['acked']}/{s['tasks']} throughput={s['throughput_per_s']:.0f}/s "
            f"lost={s['lost']} acked_twice={s['acked_twice']}>"
        )


def _json(data: Mapping[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str)


def load(folder: str | os.PathLike[str]) -> Run:
    """Read a run written by ``Run.save``."""
    src = Path(folder)
    config = orjson.loads((src / "config.json").read_bytes())
    frames_ = {
        name: pd.read_csv(src / f"{name}.csv", dtype={"task_id": str})
        for name in _FRAMES
        if (src / f"{name}.csv").exists()
    }
    summary = pd.Series(orjson.loads((src / "summary.json").read_bytes()), dtype=object)
    return Run(config=SimConfig(**config), summary=summary, path=src, **frames_)


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
    start_method: str = "spawn",
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
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
    """Run N producers and M consumers against one queue file and measure everything.

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
        start_method: "spawn" (works everywhere, notebooks included), "forkserver" or "fork".
        seed: the workers' random seed.
        path: folder of the run; a fresh temporary folder when None.
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
        A ``Run`` with ``tasks``, ``locks``, ``ops``, ``depth``, ``workers``, ``batches`` frames and
        a ``summary``.

    Raises:
        ConfigError: an option is invalid.
        SimulationError: the workers could not start.
    """
    return _Runner(SimConfig(**locals())).run()


class _Runner:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.folder = Path(config.path) if config.path else Path(tempfile.mkdtemp(prefix="djq-sim-"))
        self.records = self.folder / "records"
        self.queue_path = self.folder / "Queue.json"
        self.samples: list[tuple[int, int, int, int]] = []

    def _specs(self) -> list[WorkerSpec]:
        c = self.config
        queue = c.queue_config(self.queue_path)
        shares = [c.tasks // c.producers + (i < c.tasks % c.producers) for i in range(c.producers)]
        producers = [
            WorkerSpec(role="producer", index=i, queue=queue, out=self.records / f"P{i}.json",
                       seed=c.seed * 7919 + i, tasks=n, payload_bytes=c.payload_bytes, batch=c.batch,
                       think=c.think, rate=c.rate, lease=c.queue.lease, mode=c.mode)
            for i, n in enumerate(shares)
        ]  # fmt: skip
        consumers = [
            WorkerSpec(role="consumer", index=i, queue=queue, out=self.records / f"C{i}.json",
                       seed=c.seed * 7919 + 1000 + i, tasks=c.tasks, work=c.work, lease=c.queue.lease,
                       mode=c.mode, batch=c.batch)
            for i in range(c.consumers)
        ]  # fmt: skip
        return producers + consumers

    def _prepare(self) -> Queue:
        self.records.mkdir(parents=True, exist_ok=True)
        queue = Queue.from_config(self.config.queue_config(self.queue_path))
        if queue.stats().total:
            raise ConfigError(
                f"{self.queue_path} is not empty; a simulation starts from an empty queue", field="path"
            )
        return queue

    def run(self) -> Run:
        queue = self._prepare()
        if self.config.mode != "broker":
            return self._run(queue)
        options = {name: getattr(self.config.queue, name) for name in QUEUE_OPTIONS}
        with BrokerManager(self.queue_path, **options):  # the broker gets the whole queue config
            return self._run(queue)

    def _broker_batches(self) -> list[list[Any]]:
        if self.config.mode != "broker":
            return []
        with connect(self.queue_path) as client:
            return list(client.metrics(rows=True)["batches"])

    def _run(self, queue: Queue) -> Run:
        with Crew(self._specs(), self.config.start_method) as crew:
            t0 = crew.start()
            limit_hit = self._watch(queue, crew, t0)
        return self._collect(crew, t0, limit_hit, self._broker_batches())

    def _watch(self, queue: Queue, crew: Crew, t0: int) -> bool:
        """Sample the file until every worker exits; stop them all at the time limit or a failure."""
        bar = _progress(self.config)
        until = t0 + int(self.config.time_limit * 1e9)
        try:
            return crew.watch(until, self.config.sample_interval, lambda: self._sample(queue, bar))
        finally:
            if bar is not None:
                bar.close()

    def _sample(self, queue: Queue, bar: Any) -> None:
        stats = queue.stats()
        self.samples.append(
            (time.perf_counter_ns(), stats.ready, stats.delayed, stats.leased + stats.expired)
        )
        if bar is not None:
            bar.update(stats.acked_total - bar.n)

    def _collect(self, crew: Crew, t0: int, limit_hit: bool, batches: list[list[Any]]) -> Run:
        records, rows = crew.outcomes()
        workers = pd.DataFrame(rows)
        ops = frames.raw_ops(records, t0)
        tasks = frames.task_frame(ops, t0)
        locks = frames.lock_frame([*records, frames.broker_record(batches)] if batches else records, t0)
        batch = frames.batch_frame(batches, t0)
        depth = frames.depth_frame(self.samples, t0)
        summary = frames.summarize(tasks, locks, depth, expected=self.config.tasks)
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
        )
        return Run(
            config=self.config, tasks=tasks, locks=locks, ops=frames.op_frame(ops), depth=depth,
            workers=workers, batches=batch, summary=pd.Series(summary, dtype=object), path=self.folder,
        )  # fmt: skip


def _progress(config: SimConfig) -> Any:
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=config.tasks,
        desc=f"{config.producers}P/{config.consumers}C {config.queue.lock.value}",
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
    queue = config.queue
    poll = queue.poll_interval
    if poll is None and queue.lock is not LockKind.FLOCK:
        poll = FILELOCK_POLL_INTERVAL
    return {
        "producers": config.producers,
        "consumers": config.consumers,
        "lock": queue.lock.value,
        "poll_interval_s": poll,
        "mode": config.mode,
        "storage": queue.storage.value,
        "wait": queue.wait.value,
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


def sweep(  # noqa: D417 (the run options are simulate's, documented there)
    grid: Mapping[str, Sequence[Any]],
    *,
    repeats: int = 1,
    progress: bool = True,
    producers: int = 2,
    consumers: int = 2,
    tasks: int = 1_000,
    mode: str = "direct",
    payload_bytes: int = 100,
    work: float | str | Dist = 0.0,
    think: float | str | Dist = 0.0,
    rate: float | None = None,
    batch: int = 1,
    start_method: str = "spawn",
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
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
) -> pd.DataFrame:
    """Run every combination of ``grid`` ``repeats`` times; return one summary row per run.

    Args:
        grid: option name -> values, e.g. ``{"producers": [1, 2], "lock": ["flock", "filelock"]}``;
            ``"workers": [1, 2, 4]`` means that many producers and as many consumers.
        repeats: runs per point (seeds ``seed``, ``seed + 1``, ...).
        progress: show a progress bar over the runs (each run shows none).
        producers, ..., file_mode: the options of every run, as for ``simulate`` (a grid value
            wins). With ``path``, each run gets its own sub-folder.

    Returns:
        A DataFrame with the grid values, ``repeat`` and every summary field as columns.
    """
    common: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("grid", "repeats", "progress")}
    names = list(grid)
    points = list(itertools.product(*(grid[n] for n in names)))
    if type(repeats) is not int or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, not {repeats!r:.80}", field="repeats")
    base_seed = int(common.pop("seed", 0))
    root = common.pop("path", None)
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(points) * repeats, desc="sweep", unit="run")
    try:
        for i, (values, repeat) in enumerate(itertools.product(points, range(repeats))):
            point = dict(zip(names, values, strict=True))
            options = {**common, **point}
            if "workers" in options:  # N workers: N producers and N consumers
                options["producers"] = options["consumers"] = options.pop("workers")
            path = None if root is None else Path(root) / f"run-{i:03d}"
            run = simulate(**options, seed=base_seed + repeat, path=path)
            rows.append({**point, "repeat": repeat, **run.summary.to_dict()})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    frame = pd.DataFrame(rows)
    return frame.loc[:, ~frame.columns.duplicated()]
