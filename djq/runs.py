"""A simulation's configuration and its results: ``SimConfig``, ``Run``, ``load``.

``SimConfig`` takes the simulation's own options and any queue option (a ``QueueConfig``
field but ``path``) and checks them all before a process starts; ``Run`` holds the tidy
frames of one run (``djq.frames``) and its summary, and saves, loads and exports them.
``djq.sim`` runs simulations and re-exports these names. Imports from djq: the core
(``errors``, ``model``), ``opener`` (its schemes, never a server library), ``workers``
(``Dist``) and ``frames``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import pandas as pd

from . import frames, leases
from .errors import ConfigError
from .model import CLAIMS, CONFIG_FIELDS, MAX_DELAY, SERVER_FIELDS, LockKind, QueueConfig, check_seconds
from .opener import backend_of
from .workers import Dist

__all__ = [
    "BACKENDS",
    "CLAIMS",
    "QUEUE_OPTIONS",
    "SERVER_FIELDS",
    "SIM_QUEUE",
    "Run",
    "SimConfig",
    "backend_of",
    "load",
]

_MODES: Final = ("direct", "broker")
_FRAMES: Final = ("tasks", "locks", "ops", "depth", "workers", "batches", "server", "kills")
_START_METHODS: Final = ("spawn", "forkserver", "fork")
_MAX_SEED: Final = (1 << 48) - 1  #: seed * 7919 + i (a worker's seed) stays below 2**63


def _dist(name: str, value: float | str | Dist) -> Dist:
    """Accept 0.002, "0.002", "exp:0.002", "lognormal:0.002" (the mean) or a Dist; seconds."""
    if isinstance(value, Dist):
        return value
    kind, _, mean = str(value).rpartition(":") if isinstance(value, str) else ("", "", value)
    try:
        seconds = float(mean)
    except ValueError:
        raise ConfigError(f"{name} must be seconds, or 'exp:MEAN', not {value!r}", field=name) from None
    if kind not in ("", "const", "exp", "lognormal") or not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{name} must be seconds >= 0, or 'exp:MEAN', not {value!r}", field=name)
    return Dist(kind=kind or "const", mean=seconds)


#: The queue options a simulation takes: every ``QueueConfig`` field but ``path`` (each run's
#: ``Queue.json`` lives in its folder, the ``path`` of ``SimConfig``).
QUEUE_OPTIONS: Final = tuple(name for name in CONFIG_FIELDS if name != "path")
#: The queue a simulation opens when told nothing: ``QueueConfig``'s defaults, fsync off.
SIM_QUEUE: Final = QueueConfig(path=Path("Queue.json"), fsync=False)
_NO_TIME: Final = Dist()  #: no work, no think time
#: What a simulation's queue target names: "file" (None or a path), or a server's kind.
BACKENDS: Final = ("file", "postgres", "redis")


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class SimConfig:
    """How a simulation runs; stored on the ``Run`` so a result says how it was produced.

    Takes the simulation's own options (the fields below) and any queue option (a field of
    ``QueueConfig`` but ``path``: ``lock``, ``storage``, ``fsync``, ``lease``, ...), which
    every worker's queue gets, in ``queue``; read them as ``config.queue.lock`` or, as
    before, ``config.lock``. Times are in seconds. ``fsync`` is off by default: the
    simulation studies the lock and the file, and fsync is a variable of its own (turn it
    on to see its cost).

    The queue itself is ``target``, also given as ``queue=`` (what ``simulate`` calls it):
    None (a fresh ``Queue.json`` in the run's folder), the path of a queue file, or a
    server URL (``postgresql://``, ``redis://``, ``unix://``; see ``djq.open``). On a
    server only ``SERVER_FIELDS`` may differ from ``SIM_QUEUE``'s defaults, the mode is
    "direct", and ``claim`` is PostgreSQL's.

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
    consumer_concurrency: int = 1  #: async consumers (coroutines on one handle) per consumer process
    heartbeat: bool = False  #: consumers extend each lease every half lease while they work on its task
    kills: tuple[float, ...] = ()  #: seconds from the start: then one more consumer dies mid-task
    start_method: str = "spawn"  #: "spawn" works everywhere, notebooks included
    seed: int = 0
    path: Path | None = None  #: folder of the run; a fresh temporary folder when None
    target: str | None = None  #: the queue (``simulate(queue=...)``): None, a file's path or a server URL
    name: str | None = None  #: the queue's name in the server; None: a fresh one per run
    claim: str | None = None  #: PostgreSQL only: "skip_locked" (None: its default) or "for_update"
    progress: bool = False
    time_limit: float = 300.0
    sample_interval: float = 0.01  #: seconds between the runner's looks at the queue file
    queue: QueueConfig = SIM_QUEUE  #: the queue every worker opens (its path: the run's Queue.json)

    def __init__(
        self, *, queue: QueueConfig | str | os.PathLike[str] | None = SIM_QUEUE, **options: Any
    ) -> None:
        """Split ``options`` into the simulation's and the queue's; validate both.

        ``queue`` is the workers' ``QueueConfig``, or the queue's target (as ``target=``).
        """
        if not isinstance(queue, QueueConfig):
            if "target" in options:
                raise ConfigError("the queue is given twice: queue= and target=", field="queue")
            options["target"], queue = queue, SIM_QUEUE
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
        for name in ("producers", "consumers", "tasks", "batch", "consumer_concurrency"):
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
        self._check_kills()
        if self.queue.lock is LockKind.FLOCK and self.queue.poll_interval is not None:
            raise ConfigError(
                "flock does not poll: poll_interval is for 'filelock' and 'soft'", field="poll_interval"
            )
        self._check_target()

    def _check_kills(self) -> None:
        """``heartbeat`` and ``kills``: one task at a time per process, and a consumer left alive."""
        if type(self.heartbeat) is not bool:
            raise ConfigError(
                f"heartbeat must be True or False, not {self.heartbeat!r:.80}", field="heartbeat"
            )
        if isinstance(self.kills, str) or not isinstance(self.kills, tuple | list):
            raise ConfigError(f"kills must be a sequence of seconds, not {self.kills!r:.80}", field="kills")
        object.__setattr__(self, "kills", tuple(self.kills))
        for value in self.kills:
            check_seconds("kills", math.nan if value is None else value, low=0.0, high=MAX_DELAY)
        if len(self.kills) >= self.consumers:
            raise ConfigError(
                f"{len(self.kills)} kills need more than {self.consumers} consumers", field="kills"
            )
        if (self.heartbeat or self.kills) and (self.batch > 1 or self.consumer_concurrency > 1):
            raise ConfigError("heartbeat and kills are for batch=1 and consumer_concurrency=1", field="kills")

    def _check_target(self) -> None:
        """The queue's target, name and claim, and the options that backend takes."""
        target = self.target
        if target is not None and not isinstance(target, str | os.PathLike):
            raise ConfigError(f"queue must be None, a path or a URL, not {target!r:.80}", field="queue")
        if target is not None:
            object.__setattr__(self, "target", os.fspath(target))
        backend = backend_of(self.target)
        if self.claim is not None and self.claim not in CLAIMS:
            raise ConfigError(f"claim must be one of {CLAIMS} or None, not {self.claim!r:.80}", field="claim")
        if self.claim is not None and backend != "postgres":
            raise ConfigError(f"claim is PostgreSQL's option, not the {backend} queue's", field="claim")
        if self.name is not None and (backend == "file" or type(self.name) is not str):
            raise ConfigError(
                "name= picks a queue inside a server (a string); a file queue is named by its path",
                field="name",
            )
        if backend == "file":
            return
        if self.mode != "direct":
            raise ConfigError(f"mode {self.mode!r} is for a queue file; a {backend} queue is its own broker",
                              field="mode")  # fmt: skip
        for name in QUEUE_OPTIONS:
            if name not in SERVER_FIELDS and getattr(self.queue, name) != getattr(SIM_QUEUE, name):
                raise ConfigError(
                    f"{name} is an option of the file queue, not of a {backend} queue", field=name
                )

    @property
    def backend(self) -> str:
        """The backend ``target`` names: "file", "postgres" or "redis"."""
        return backend_of(self.target)

    def server_options(self) -> dict[str, Any]:
        """The options a server queue is opened with: ``SERVER_FIELDS``, and ``claim`` if given."""
        options = {name: getattr(self.queue, name) for name in SERVER_FIELDS}
        return options if self.claim is None else {**options, "claim": self.claim}

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

    ``server`` is the server's own view, sampled during the run (empty for a file queue).
    ``kills`` has one row per consumer killed as planned (``djq.leases.kill_frame``).

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
    server: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=frames.SERVER_COLUMNS))
    kills: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=leases.KILL_COLUMNS))
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
        s, c = self.summary, self.config
        queue = f"lock={c.queue.lock.value}" if c.backend == "file" else f"queue={c.backend}"
        if c.claim is not None:
            queue += f"({c.claim})"
        return (
            f"<Run {c.producers}P/{c.consumers}C {queue} "
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
        name: pd.read_csv(
            src / f"{name}.csv", dtype={"task_id": str, "key": str}, keep_default_na=name != "server"
        )
        for name in _FRAMES
        if (src / f"{name}.csv").exists()
    }
    summary = pd.Series(orjson.loads((src / "summary.json").read_bytes()), dtype=object)
    return Run(config=SimConfig(**config), summary=summary, path=src, **frames_)
