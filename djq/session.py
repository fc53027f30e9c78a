"""The runs of one lab session: which exist, their labels, the summary and the comparison data.

A ``Session`` is the bookkeeping behind the notebook panel (``djq.widgets.Lab``), in
plain Python and pandas, with no widgets, threads or drawing, so it can be tested and
used on its own. It numbers the runs (``begin``), keeps the finished ones (``keep``),
forgets them (``forget``), allows one run at a time, and builds the tables and the data
the panel shows: ``summary_table``, ``comparison`` (what the "Compare" tab draws), ``verdict`` (how a
finished run went, for the status line) and ``failure`` (an error, on one line). Imports
from djq: ``sim``, ``model``, ``errors``; third-party: pandas. ::

    from djq import sim
    from djq.session import Session, verdict
    session = Session()
    number = session.begin()                                    # 1
    run = sim.simulate(tasks=100, path=session.folder(number))
    kept = session.keep(number, run, wall_s=2.5)               # "#1 2P/2C flock, 100 tasks"
    session.end()
    verdict(kept).kind                                          # "ok"
    session.summary_table()                                     # one row per kept run
"""

from __future__ import annotations

import math
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pandas as pd

from . import sim
from .errors import DjqError
from .model import DEFAULT_STORAGE
from .runs import backend_of

__all__ = ["Comparison", "LabRun", "Session", "Verdict", "describe", "failure", "panel_options", "verdict"]

#: The options the tables show, in this order; ``poll_interval_s`` comes from the summary;
#: ``backend``: "file", "postgres(for_update)", "postgres(skip_locked)" or "redis".
OPTION_COLUMNS: Final = (
    "producers", "consumers", "tasks", "backend", "lock", "poll_interval_s", "mode", "storage", "fsync",
    "work", "batch",
)  # fmt: skip
FILE_CONTROLS: Final = ("lock", "poll_interval", "storage")  #: the panel's controls a server ignores
#: The summary fields the tables show, in this order.
RESULT_COLUMNS: Final = (
    "completed", "acked", "lost", "acked_twice", "redelivered", "duration_s", "throughput_per_s",
    "throughput_bound_per_s", "latency_p50_s", "latency_p99_s", "queue_wait_p50_s", "lock_wait_p50_s",
    "lock_wait_p99_s", "lock_hold_mean_s", "lock_utilisation", "contended_share", "owner_changes",
    "jain_fairness", "events_per_write",
)  # fmt: skip
#: The results the Compare tab's short table shows beside the options that differ.
KEY_RESULTS: Final = ("throughput_per_s", "latency_p99_s", "lock_wait_p99_s")
_CONFIG_COLUMNS: Final = ("producers", "consumers", "tasks", "lock", "mode", "storage", "fsync", "batch")
WAIT_BINS: Final = 40  #: bins of the lock-wait histograms in the comparison
MIN_WAIT: Final = 1e-6  #: seconds; shorter lock waits are drawn at this value on the log axis
_DETAIL_CHARS: Final = 200  #: longest worker error quoted in a verdict
_MESSAGE_CHARS: Final = 400  #: longest error message; longer ones are cut with an ellipsis
_BUSY_RUN: Final = "a run is already going: wait for it to finish"
_BUSY_FORGET: Final = "a run is going: forget the runs once it has finished"


@dataclass(frozen=True, slots=True)
class LabRun:
    """One run the session kept: its number in the session, a label, the ``Run``, wall time.

    Attributes:
        number: 1 for the first run the session started, then 2, 3, ... (also in the folder name).
        label: ``#2 4P/4C filelock(5 ms) work=exp:2ms, 1000 tasks`` (see ``describe``).
        run: the ``djq.sim.Run`` with its frames and summary.
        wall_s: seconds the simulation took, start-up of the workers included.
    """

    number: int
    label: str
    run: sim.Run
    wall_s: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a run went, or why it could not, in words for a status line (see ``verdict``, ``failure``).

    Attributes:
        kind: "ok"; "warning" when the run did not complete; "error" when the oracle
            failed (tasks lost or acked twice) or the run raised.
        headline: "" for "ok", else "Incomplete", "Oracle failed", "Error" (a ``DjqError``)
            or "Unexpected error".
        text: one line: the label, tasks acked, duration, throughput, lock wait p99, and why
            the run is not ok when it is not; for a failure ``"ConfigError: ..."``.
    """

    kind: str
    headline: str
    text: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """What the "Compare" tab shows: a snapshot of the kept runs and the data of its plots.

    Attributes:
        runs: the kept runs, oldest first; empty when there is nothing to compare.
        table: one row per run, indexed by label (``Session.summary_table``).
        throughput: one row per run, indexed ``#1``, ``#2``, ...: ``throughput_per_s`` and
            ``throughput_bound_per_s`` (tasks per second).
        waits: legend label (``"#1 ... (n=50)"``) -> that run's lock waits in seconds, at
            least ``MIN_WAIT``; runs without any lock wait are left out.
        wait_edges: common log-spaced bin edges (seconds) for ``waits``; () when it is empty.
    """

    runs: tuple[LabRun, ...]
    table: pd.DataFrame
    throughput: pd.DataFrame
    waits: dict[str, pd.Series]
    wait_edges: tuple[float, ...]

    @property
    def brief(self) -> pd.DataFrame:
        """``table`` cut to what tells the runs apart: the options that differ, then ``KEY_RESULTS``.

        With one run no option differs: only the results.
        """
        differ = [c for c in OPTION_COLUMNS if len({str(v) for v in self.table[c]}) > 1]  # NaN too
        return self.table.loc[:, [*differ, *KEY_RESULTS]]

    @property
    def labels(self) -> list[str]:
        """The runs' labels, oldest first (the legend of the overlaid latency CDFs)."""
        return [kept.label for kept in self.runs]

    @property
    def sources(self) -> list[sim.Run]:
        """The runs' ``sim.Run`` objects, oldest first (what ``plot.latency_cdf`` overlays)."""
        return [kept.run for kept in self.runs]


def describe(config: sim.SimConfig) -> str:
    """A short label naming what sets this run apart: ``2P/2C filelock(5 ms) broker fsync, 500 tasks``.

    Options at their defaults (direct mode, ``model.DEFAULT_STORAGE``, no fsync, no work,
    batch 1) are left out. A server queue is named by its backend (and PostgreSQL's claim)
    instead of the lock.

    Example:
        >>> describe(sim.SimConfig(producers=1, consumers=3, tasks=50, lock="soft", poll_interval=0.005))
        '1P/3C soft(5 ms), 50 tasks'
    """
    if config.backend != "file":
        return _describe_server(config)
    parts = [f"{config.producers}P/{config.consumers}C {config.lock.value}"]
    if config.poll_interval is not None:
        parts[0] += f"({config.poll_interval * 1e3:g} ms)"
    if config.mode != "direct":
        parts.append(config.mode)
    if config.storage is not DEFAULT_STORAGE:
        parts.append(config.storage.value)
    if config.fsync:
        parts.append("fsync")
    if config.work.mean > 0:
        kind = "exp:" if config.work.kind == "exp" else ""
        parts.append(f"work={kind}{config.work.mean * 1e3:g}ms")
    if config.batch > 1:
        parts.append(f"batch={config.batch}")
    return " ".join(parts) + f", {config.tasks} tasks"


def _describe_server(config: sim.SimConfig) -> str:
    parts = [f"{config.producers}P/{config.consumers}C {_backend(config)}"]
    if config.fsync:
        parts.append("fsync")
    if config.work.mean > 0:
        parts.append(f"work={'exp:' if config.work.kind == 'exp' else ''}{config.work.mean * 1e3:g}ms")
    if config.batch > 1:
        parts.append(f"batch={config.batch}")
    return " ".join(parts) + f", {config.tasks} tasks"


def _backend(config: sim.SimConfig) -> str:
    """``file``, ``postgres(skip_locked)``, ``postgres(for_update)`` or ``redis``."""
    if config.backend == "postgres":
        return f"postgres({config.claim or 'skip_locked'})"
    return config.backend


def panel_options(values: dict[str, Any]) -> dict[str, Any]:
    """The panel's control values as ``sim.simulate`` options: ``queue`` text and ``claim`` resolved.

    An empty ``queue`` is a fresh file per run (``claim`` dropped); a server URL drops the
    file's controls (``FILE_CONTROLS``), keeps ``claim`` for PostgreSQL only, and names a
    fresh queue (``lab-<hex>``) unless the URL has ``?name=``, so the panel can follow it.

    Raises:
        ConfigError: the URL's scheme is unknown.
    """
    options = dict(values)
    target, claim = str(options.pop("queue", "")).strip(), options.pop("claim", None)
    backend = backend_of(target or None)
    if backend == "file":
        return {**options, "queue": target or None}
    for name in FILE_CONTROLS:
        options.pop(name, None)
    options["queue"] = target
    if backend == "postgres":
        options["claim"] = claim
    if "name=" not in target.partition("?")[2]:
        options["name"] = f"lab-{secrets.token_hex(4)}"
    return options


def verdict(kept: LabRun) -> Verdict:
    """Say how a kept run went: complete and correct, incomplete (and why), or the oracle failed."""
    s = kept.run.summary
    text = (
        f"{kept.label}: {s['acked']}/{s['tasks']} tasks acked in {s['duration_s']:.3g} s, "
        f"{s['throughput_per_s']:.4g} tasks/s; lock wait p99 {s['lock_wait_p99_s'] * 1e3:.3g} ms"
    )
    if not s["completed"]:
        why = "the time limit was hit" if s["time_limit_hit"] else f"{s['workers_failed']} worker(s) failed"
        detail = _worker_error(kept.run)
        return Verdict("warning", "Incomplete", f"{text}; {why}{': ' + detail if detail else ''}")
    if s["lost"] or s["acked_twice"]:
        return Verdict("error", "Oracle failed", f"{text}; lost {s['lost']}, acked twice {s['acked_twice']}")
    return Verdict("ok", "", text)


def failure(exc: BaseException) -> Verdict:
    """An error as a verdict: ``ConfigError: flock does not poll: ...`` on one line, cut short.

    Example:
        >>> failure(ValueError("not  a   number"))
        Verdict(kind='error', headline='Unexpected error', text='ValueError: not a number')
    """
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _MESSAGE_CHARS:
        text = text[: _MESSAGE_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return Verdict("error", "Error" if isinstance(exc, DjqError) else "Unexpected error", text)


def _worker_error(run: sim.Run) -> str:
    """The first failed worker's error on one line, cut short; "" when none says why."""
    failed = run.workers.loc[~run.workers["ok"].astype(bool), "error"]
    if not len(failed) or not failed.iloc[0]:
        return ""
    return " ".join(str(failed.iloc[0]).split())[:_DETAIL_CHARS]


def _options_row(run: sim.Run) -> dict[str, Any]:
    """The options of a run as the tables show them (read from ``run.config`` field by field)."""
    config = run.config
    row = {name: getattr(config, name) for name in _CONFIG_COLUMNS}
    row["lock"], row["storage"] = config.lock.value, config.storage.value
    row["backend"] = _backend(config)
    if config.backend != "file":
        row["lock"] = row["storage"] = None
    row["work"] = f"{config.work.kind}:{config.work.mean:g}"
    row["poll_interval_s"] = run.summary.get("poll_interval_s")
    return row


def _log_edges(waits: Sequence[pd.Series], bins: int) -> tuple[float, ...]:
    """Log-spaced edges from the smallest to the largest value (widened when they are equal)."""
    low = min(float(s.min()) for s in waits)
    high = max(float(s.max()) for s in waits)
    if high <= low * 1.01:
        low, high = low / 2, high * 2
    return tuple(low * (high / low) ** (i / bins) for i in range(bins + 1))


class Session:
    """The runs of one session: numbered as they start, kept when they finish, one at a time.

    Not thread-safe beyond what the panel needs: one thread runs (``begin`` ... ``end``)
    while another may read ``runs`` and build tables from a snapshot of it.

    Args:
        root: folder for the runs' files (``folder(n)`` is ``root/run-00n``); a new
            temporary folder when None.

    Attributes:
        root: that folder.
        runs: the ``LabRun``s kept this session, oldest first.
        started: how many runs were begun (failed ones included): the last run's number.
    """

    def __init__(self, *, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="djq-lab-"))
        self.runs: list[LabRun] = []
        self.started = 0
        self._running = False

    @property
    def running(self) -> bool:
        """True between ``begin`` and ``end``."""
        return self._running

    def check_idle(self) -> None:
        """Raise ``RuntimeError`` while a run is going: one run at a time."""
        if self._running:
            raise RuntimeError(_BUSY_RUN)

    def begin(self) -> int:
        """Start the next run and return its number (1, 2, ...).

        Raises:
            RuntimeError: a run is already going.
        """
        self.check_idle()
        self._running = True
        self.started += 1
        return self.started

    def folder(self, number: int) -> Path:
        """The folder of run ``number``: ``root/run-001`` for the first."""
        return self.root / f"run-{number:03d}"

    def keep(self, number: int, run: sim.Run, *, wall_s: float) -> LabRun:
        """Keep a finished run under its number, labelled from its config; return it."""
        kept = LabRun(number=number, label=f"#{number} {describe(run.config)}", run=run, wall_s=wall_s)
        self.runs.append(kept)
        return kept

    def end(self) -> None:
        """The run begun last is over, kept or not: another may begin."""
        self._running = False

    def forget(self) -> None:
        """Forget the kept runs (their files stay under ``root``); numbering goes on.

        Raises:
            RuntimeError: a run is going.
        """
        if self._running:
            raise RuntimeError(_BUSY_FORGET)
        self.runs.clear()

    def summary_table(self, runs: Sequence[LabRun] | None = None) -> pd.DataFrame:
        """One row per run (default: every kept run), indexed by label: options, then results."""
        chosen = list(self.runs if runs is None else runs)
        rows = []
        for kept in chosen:
            summary = kept.run.summary
            row = _options_row(kept.run)
            row.update({c: summary.get(c, math.nan) for c in RESULT_COLUMNS}, wall_s=kept.wall_s)
            rows.append(row)
        columns = [*OPTION_COLUMNS, *RESULT_COLUMNS, "wall_s"]
        return pd.DataFrame(rows, index=pd.Index([r.label for r in chosen], name="run"), columns=columns)

    def comparison(self, *, bins: int = WAIT_BINS) -> Comparison:
        """The kept runs compared: the table, throughput per run and the lock waits to overlay."""
        runs = tuple(self.runs)
        waits = {}
        for kept in runs:
            series = kept.run.locks["wait_s"].dropna().clip(lower=MIN_WAIT)
            if len(series):
                waits[f"{kept.label} (n={len(series)})"] = series
        columns = ["throughput_per_s", "throughput_bound_per_s"]
        throughput = pd.DataFrame(
            [[float(r.run.summary[c]) for c in columns] for r in runs],
            index=pd.Index([f"#{r.number}" for r in runs], name="run"),
            columns=columns,
        )
        edges = _log_edges(list(waits.values()), bins) if waits else ()
        return Comparison(runs, self.summary_table(runs), throughput, waits, edges)
