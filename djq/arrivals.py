"""Arrivals and what a measurement can hide: intended against actual send times, windows, loads.

An open-loop producer (``sim.simulate(rate=...)``) keeps a schedule: each task has an
*intended* send time (``tasks["intended_s"]``), the previous one plus an exponential gap.
The producer is synchronous, so while a put is held up (a lock held, a stall) the next
puts are sent late, at ``tasks["sent_s"]``, as soon as it can. Latency measured from the
actual send time leaves out the time a task waited to be sent: the load generator has
*coordinated* with the system and *omitted* the bad samples (Tene, "How NOT to measure
latency", and HdrHistogram's notes on coordinated omission). `send_latencies` gives both
latencies per task and `omission` their quantiles side by side.

The rest are the small measurements lesson 10 (open against closed systems; Schroeder,
Wierman and Harchol-Balter, NSDI 2006) reads off a run: `window_counts` (events per time
window), `stalls` (when the workers waited long for the lock), `utilisation` (how busy the
consumers were), `steady_throughput` (a saturated run's rate without its edges),
`latency_growth` (how fast latency grows with arrival time past capacity) and `put_loop`
(a closed loop around the put, against the interactive response time law R = N / X - Z).

Pure functions of the frames of ``djq.frames`` (times in seconds from the run's start);
pandas and numpy; from djq only ``errors`` (a bad window raises ``ConfigError``).

Example::

    from djq import arrivals, sim
    run = sim.simulate(producers=2, consumers=2, tasks=400, rate=100, work="exp:0.004")
    arrivals.omission(run.tasks)["ratio"]          # p99 from intended / p99 from sent
    arrivals.window_counts(run.tasks["sent_s"], window=0.05)
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = [
    "LATENCY_COLUMNS",
    "STALL_COLUMNS",
    "latency_growth",
    "omission",
    "put_loop",
    "send_latencies",
    "stalls",
    "steady_throughput",
    "utilisation",
    "window_counts",
]

LATENCY_COLUMNS: Final = [
    "task_id", "intended_s", "sent_s", "acked_s", "send_lag_s", "from_intended_s", "from_sent_s",
]  # fmt: skip
STALL_COLUMNS: Final = ["start_s", "end_s", "duration_s", "waiters"]


def send_latencies(tasks: pd.DataFrame) -> pd.DataFrame:
    """One row per acked task that had an intended send time (open loop), ordered by it.

    Columns: ``send_lag_s`` (actual send - intended: how late the producer sent it),
    ``from_intended_s`` (ack - intended send) and ``from_sent_s`` (ack - actual send).
    Closed-loop tasks (``intended_s`` NaN) and unacked ones are left out.
    """
    done = tasks.dropna(subset=["intended_s", "acked_s"])
    frame = done[["task_id", "intended_s", "sent_s", "acked_s"]].copy()
    frame["send_lag_s"] = frame["sent_s"] - frame["intended_s"]
    frame["from_intended_s"] = frame["acked_s"] - frame["intended_s"]
    frame["from_sent_s"] = frame["acked_s"] - frame["sent_s"]
    return frame[LATENCY_COLUMNS].sort_values("intended_s", kind="stable").reset_index(drop=True)


def omission(tasks: pd.DataFrame, *, q: float = 0.99, late_s: float = 0.001) -> dict[str, float]:
    """The ``q`` quantile, mean and max of latency from the intended and the actual send time.

    Args:
        tasks: a run's ``tasks`` frame.
        q: the quantile to compare (0.99: the p99).
        late_s: a task sent more than this after its intended time counts as sent late.

    Returns:
        ``tasks`` (open-loop tasks acked), ``late_share`` (the share sent late),
        ``from_intended_q_s``, ``from_sent_q_s`` and their ``ratio`` (intended / sent:
        how much the actual send times hide), the same for the ``mean`` and the ``max``,
        and ``q``. NaN where there is no open-loop task.
    """
    lat = send_latencies(tasks)
    out: dict[str, float] = {"q": q, "tasks": float(len(lat))}
    for name, intended, sent in (
        ("q", lat["from_intended_s"].quantile(q), lat["from_sent_s"].quantile(q)),
        ("mean", lat["from_intended_s"].mean(), lat["from_sent_s"].mean()),
        ("max", lat["from_intended_s"].max(), lat["from_sent_s"].max()),
    ):
        out[f"from_intended_{name}_s"], out[f"from_sent_{name}_s"] = float(intended), float(sent)
        out[f"{name}_ratio"] = float(intended / sent) if sent > 0 else math.nan
    out["ratio"] = out.pop("q_ratio")
    out["late_share"] = float((lat["send_lag_s"] > late_s).mean()) if len(lat) else math.nan
    return out


def window_counts(
    times: pd.Series, *, window: float, start: float = 0.0, end: float | None = None
) -> pd.Series:
    """How many of ``times`` fall in each window ``[start + k window, start + (k + 1) window)``.

    Every window up to ``end`` (the last time when None) is there, an empty one as 0, so
    a gap in the events shows as zeros. The index is each window's start, in seconds.
    """
    if not window > 0:
        raise ConfigError(f"window must be > 0 seconds, got {window!r}", field="window")
    values = pd.Series(times, dtype=float).dropna()
    if end is None:  # up to the last time, that one included
        last = float(values.max()) if len(values) else start
        bins = int(_windows(last - start, window)) + 1
    else:
        bins = max(1, math.ceil(_windows(end - start, window)))
        values = values[values < end]
    values = values[values >= start]
    which = np.floor(_windows(values.to_numpy() - start, window)).astype(int)
    counts = np.bincount(which, minlength=bins)[:bins]
    index = pd.Index(start + window * np.arange(bins), name="window_start_s")
    return pd.Series(counts, index=index, name="count")


def _windows(span: Any, window: float) -> Any:
    """``span / window`` in windows, rounded to 1e-9 so 0.3 / 0.1 is 3, not 2.9999999999999996."""
    return np.round(np.asarray(span, dtype=float) / window, 9)


def stalls(locks: pd.DataFrame, *, min_wait_s: float) -> pd.DataFrame:
    """Intervals in which some worker waited at least ``min_wait_s`` for the lock, merged.

    Each long wait is ``[requested_s, acquired_s]``; overlapping ones are merged, and
    ``waiters`` counts the long waits in each. A lock held by someone outside the run
    (a stall) shows here, though it is not in the run's own lock records.
    """
    long = locks[locks["wait_s"] >= min_wait_s].sort_values("requested_s")
    rows: list[list[float]] = []
    for start, end in zip(long["requested_s"], long["acquired_s"], strict=True):
        if rows and start <= rows[-1][1]:
            rows[-1][1] = max(rows[-1][1], end)
            rows[-1][2] += 1
        else:
            rows.append([start, end, 1])
    frame = pd.DataFrame(rows, columns=["start_s", "end_s", "waiters"], dtype=float)
    frame["duration_s"] = frame["end_s"] - frame["start_s"]
    frame["waiters"] = frame["waiters"].astype("int64")
    return frame[STALL_COLUMNS]


def utilisation(tasks: pd.DataFrame, *, servers: int, duration: float | None = None) -> float:
    """The consumers' busy share: service time summed over ``servers`` x ``duration`` (the utilisation law).

    A task's service is ``service_s`` (from its delivery to its ack); ``duration`` is the
    run's (its last ack) when None.
    """
    acked = tasks.dropna(subset=["acked_s"])
    span = float(acked["acked_s"].max()) if duration is None and len(acked) else duration
    if not span or span <= 0 or servers < 1:
        return math.nan
    return float(acked["service_s"].sum()) / (servers * span)


def steady_throughput(tasks: pd.DataFrame, *, trim: float = 0.1) -> float:
    """Tasks acked per second between the ``trim`` and ``1 - trim`` quantiles of the ack times.

    On a saturated run (the queue never empty) that is the consumers' capacity, without
    the start (the queue filling) and the end (the last tasks draining).
    """
    acked = tasks["acked_s"].dropna().sort_values().to_numpy()
    if len(acked) < 3:
        return math.nan
    lo, hi = int(trim * (len(acked) - 1)), math.ceil((1 - trim) * (len(acked) - 1))
    span = acked[hi] - acked[lo]
    return float((hi - lo) / span) if span > 0 else math.nan


def latency_growth(tasks: pd.DataFrame) -> float:
    """Seconds of latency gained per second of arrival time: the least-squares slope.

    Latency is ack - intended send time for open-loop tasks (ack - created otherwise),
    against that time. About 0 for a stable queue; past capacity a backlog builds and
    the slope approaches rho - 1 (arrivals at rho times the capacity).
    """
    done = tasks.dropna(subset=["acked_s"])
    arrival = done["intended_s"].fillna(done["created_s"])
    if len(done) < 2 or float(arrival.max() - arrival.min()) <= 0:
        return math.nan
    return float(np.polyfit(arrival.to_numpy(), (done["acked_s"] - arrival).to_numpy(), 1)[0])


def put_loop(ops: pd.DataFrame) -> dict[str, Any]:
    """A closed loop around the put: N producers, each putting, then away for a while, then putting.

    Returns ``producers`` (N), ``active_producers`` (their time-average number between the
    first put and the last: a producer that starts late or finishes early counts for the
    part of the span it was putting), ``put_throughput_per_s`` (X: puts per second over
    that span), ``put_response_s`` (R: the mean put call), ``think_s`` (Z: the mean time
    from a producer's put returning to its next put: its think time, if it was given one,
    plus its own work between two puts) and ``response_time_law_s``, N / X - Z with the
    active N: what the interactive response time law (Denning and Buzen) says R must be.
    """
    puts = ops[ops["op"] == "put"].sort_values(["worker", "start_s"], kind="stable")
    span = float(puts["end_s"].max() - puts["start_s"].min()) if len(puts) else 0.0
    if span <= 0:
        names = (
            "active_producers",
            "put_throughput_per_s",
            "put_response_s",
            "think_s",
            "response_time_law_s",
        )
        return {"producers": int(puts["worker"].nunique()), **dict.fromkeys(names, math.nan)}
    each = puts.groupby("worker").agg(first=("start_s", "min"), last=("end_s", "max"))
    active = float((each["last"] - each["first"]).sum()) / span
    x = len(puts) / span
    gaps = puts["start_s"] - puts.groupby("worker")["end_s"].shift(1)
    think = float(gaps.mean()) if gaps.notna().any() else 0.0
    return {
        "producers": len(each),
        "active_producers": active,
        "put_throughput_per_s": x,
        "put_response_s": float(puts["duration_s"].mean()),
        "think_s": think,
        "response_time_law_s": active / x - think,
    }
