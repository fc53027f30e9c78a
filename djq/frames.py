"""Workers' raw records -> tidy pandas DataFrames with units in column names, and a summary.

The first module allowed to import pandas. Times are seconds from the run's start (the
moment every worker passed the start barrier), measured with ``time.perf_counter_ns``
in the workers. Imports from djq: ``model``, ``metrics``, ``workers``.

Frames:

* ``ops``: one row per client call: worker, role, op, start_s, end_s, duration_s, n, ok.
* ``tasks``: one row per task put: task_id, producer, consumer, attempts, acks, created_s,
  put_s, got_s, acked_s (each when the call returned), queue_wait_s (first delivery -
  put; slightly negative when a consumer got the task before the producer's call
  returned), service_s (ack - last delivery), latency_s (ack - created), sent_s (when the
  put call began: the actual send time), intended_s (the open loop's scheduled send time,
  NaN for a closed-loop put; ``djq.arrivals`` compares the two).
* ``locks``: one row per lock acquisition: worker, role, op, requested_s, acquired_s,
  released_s, wait_s, hold_s, handoff_s (this acquire - the previous release, by anyone),
  contended (the lock was held when this one asked).
* ``batches``: one row per batch the broker applied (broker mode only): requested_s,
  acquired_s, released_s (its file lock), events, wait_s, hold_s, apply_s, write_s (the
  append and, with fsync, its fdatasync, which runs once the lock is released), wrote.
* ``depth``: the queue file sampled over time by the runner: time_s, ready, delayed,
  leased, depth (all tasks in the file).
* ``server``: the server's own view, sampled by the runner (``djq.probes``; empty for a
  file queue): time_s, metric, key, value. PostgreSQL: ``active`` (the run's backends in a
  statement, by ``key`` = wait_event_type/wait_event, ``CPU/running`` when none), ``idle``
  (the others, e.g. ``Client/ClientRead``: waiting for their client), ``locks_waiting``
  (ungranted ``pg_locks`` of the whole server). Redis: ``calls`` and ``usec`` per
  command (``key``) since the previous sample, ``cpu_s`` (the main thread's CPU seconds
  since then: the time its one thread was busy), ``blocked_clients``, ``connected_clients``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

import numpy as np
import pandas as pd

from .workers import worker_name

__all__ = [
    "BATCH_COLUMNS",
    "DEPTH_COLUMNS",
    "LOCK_COLUMNS",
    "OP_COLUMNS",
    "SERVER_COLUMNS",
    "TASK_COLUMNS",
    "batch_frame",
    "broker_record",
    "depth_frame",
    "free_while_wanted_s",
    "jain_index",
    "lock_frame",
    "mean_finite",
    "op_frame",
    "raw_ops",
    "server_frame",
    "server_summary",
    "short_term_jain",
    "summarize",
    "task_frame",
]

OP_COLUMNS: Final = ["worker", "role", "op", "start_s", "end_s", "duration_s", "n", "ok"]
TASK_COLUMNS: Final = [
    "task_id", "producer", "consumer", "attempts", "acks", "created_s", "put_s", "got_s",
    "acked_s", "queue_wait_s", "service_s", "latency_s", "sent_s", "intended_s",
]  # fmt: skip
LOCK_COLUMNS: Final = [
    "worker", "role", "op", "requested_s", "acquired_s", "released_s", "wait_s", "hold_s",
    "handoff_s", "contended",
]  # fmt: skip
DEPTH_COLUMNS: Final = ["time_s", "ready", "delayed", "leased", "depth"]
BATCH_COLUMNS: Final = [
    "requested_s", "acquired_s", "released_s", "events", "wait_s", "hold_s", "apply_s", "write_s", "wrote",
]  # fmt: skip
SERVER_COLUMNS: Final = ["time_s", "metric", "key", "value"]
_NS: Final = 1e9


def raw_ops(records: list[dict[str, Any]], t0_ns: int) -> pd.DataFrame:
    """Every client call of every worker, with its task ids: the input of ``op_frame`` and ``task_frame``."""
    rows = [  # a put row has a 7th field, its intended send time (None in closed loop)
        (worker_name(r["role"], r["index"]), r["role"], op, start, end, ids, ok, extra, *(more or [None]))
        for r in records
        for op, start, end, ids, ok, extra, *more in r["ops"]
    ]
    raw = pd.DataFrame(
        rows, columns=["worker", "role", "op", "start_ns", "end_ns", "task_ids", "ok", "extra", "intended_ns"]
    )
    raw["start_s"] = (raw["start_ns"] - t0_ns) / _NS
    raw["end_s"] = (raw["end_ns"] - t0_ns) / _NS
    raw["duration_s"] = raw["end_s"] - raw["start_s"]
    raw["n"] = raw["task_ids"].map(len).astype("int64")
    raw["ok"] = raw["ok"].astype(bool)
    return raw


def op_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per client call, as the client saw it."""
    return raw[OP_COLUMNS].sort_values("start_s", kind="stable").reset_index(drop=True)


def _exploded(raw: pd.DataFrame, op: str) -> pd.DataFrame:
    part = raw[(raw["op"] == op) & (raw["n"] > 0)]
    return part.explode("task_ids").rename(columns={"task_ids": "task_id"})


def task_frame(raw: pd.DataFrame, t0_ns: int) -> pd.DataFrame:
    """One row per task put, with its whole life: put, deliveries, ack."""
    puts = _exploded(raw, "put")
    tasks = pd.DataFrame(
        {
            "task_id": puts["task_id"].astype(str),
            "producer": puts["worker"],
            "created_s": (puts["extra"] - t0_ns) / _NS,
            "put_s": puts["end_s"],
            "sent_s": puts["start_s"],
            "intended_s": (pd.to_numeric(puts["intended_ns"]) - t0_ns) / _NS,
        }
    ).drop_duplicates("task_id")
    gets = _exploded(raw, "get").sort_values("end_s", kind="stable")
    delivered = gets.groupby("task_id").agg(
        got_s=("end_s", "min"), last_got_s=("end_s", "max"), attempts=("extra", "max")
    )
    acks = _exploded(raw, "ack")
    acks = acks[acks["ok"]]
    acked = acks.groupby("task_id").agg(
        acked_s=("end_s", "min"), acks=("end_s", "size"), consumer=("worker", "first")
    )
    tasks = tasks.join(delivered, on="task_id").join(acked, on="task_id")
    tasks["attempts"] = tasks["attempts"].fillna(0).astype("int64")
    tasks["acks"] = tasks["acks"].fillna(0).astype("int64")
    tasks["queue_wait_s"] = tasks["got_s"] - tasks["put_s"]
    tasks["service_s"] = tasks["acked_s"] - tasks["last_got_s"]
    tasks["latency_s"] = tasks["acked_s"] - tasks["created_s"]
    return tasks[TASK_COLUMNS].sort_values("put_s", kind="stable").reset_index(drop=True)


def lock_frame(records: list[dict[str, Any]], t0_ns: int) -> pd.DataFrame:
    """One row per lock acquisition, ordered by when it was acquired."""
    rows = [
        (worker_name(r["role"], r["index"]), r["role"], op, req, acq, rel)
        for r in records
        for op, req, acq, rel in r["locks"]
    ]
    raw = pd.DataFrame(rows, columns=["worker", "role", "op", "req", "acq", "rel"])
    raw = raw.sort_values("acq", kind="stable").reset_index(drop=True)
    previous_release = raw["rel"].shift(1)
    frame = pd.DataFrame(
        {
            "worker": raw["worker"],
            "role": raw["role"],
            "op": raw["op"],
            "requested_s": (raw["req"] - t0_ns) / _NS,
            "acquired_s": (raw["acq"] - t0_ns) / _NS,
            "released_s": (raw["rel"] - t0_ns) / _NS,
            "wait_s": (raw["acq"] - raw["req"]) / _NS,
            "hold_s": (raw["rel"] - raw["acq"]) / _NS,
            "handoff_s": (raw["acq"] - previous_release) / _NS,
            "contended": (raw["req"] < previous_release).astype(bool),
        }
    )
    return frame[LOCK_COLUMNS]


def broker_record(batches: list[list[Any]]) -> dict[str, Any]:
    """The broker's batch rows as one more record for ``lock_frame`` (worker ``B0``, op "batch")."""
    return {"role": "broker", "index": 0, "ops": [], "locks": [("batch", r, a, x) for r, a, x, *_ in batches]}


def batch_frame(batches: list[list[Any]], t0_ns: int) -> pd.DataFrame:
    """One row per broker batch: its lock times, how many events it applied, apply and write time."""
    raw = pd.DataFrame(batches, columns=["req", "acq", "rel", "events", "apply_ns", "write_ns", "wrote"])
    frame = pd.DataFrame(
        {
            "requested_s": (raw["req"] - t0_ns) / _NS,
            "acquired_s": (raw["acq"] - t0_ns) / _NS,
            "released_s": (raw["rel"] - t0_ns) / _NS,
            "events": raw["events"].astype("int64"),
            "wait_s": (raw["acq"] - raw["req"]) / _NS,
            "hold_s": (raw["rel"] - raw["acq"]) / _NS,
            "apply_s": raw["apply_ns"] / _NS,
            "write_s": raw["write_ns"] / _NS,
            "wrote": raw["wrote"].astype(bool),
        }
    )
    return frame[BATCH_COLUMNS]


def depth_frame(samples: list[tuple[int, int, int, int]], t0_ns: int) -> pd.DataFrame:
    """The runner's samples of the queue file: (t_ns, ready, delayed, leased)."""
    frame = pd.DataFrame(samples, columns=["t_ns", "ready", "delayed", "leased"])
    frame["time_s"] = (frame["t_ns"] - t0_ns) / _NS
    frame["depth"] = frame["ready"] + frame["delayed"] + frame["leased"]
    return frame[DEPTH_COLUMNS].reset_index(drop=True)


def jain_index(counts: pd.Series | list[float]) -> float:
    """Jain's fairness index, (sum x)^2 / (n * sum x^2): 1 when all equal, 1/n when one takes all."""
    x = np.asarray(counts, dtype=float)
    if x.size == 0 or not np.any(x):
        return math.nan
    return float(x.sum() ** 2 / (x.size * np.square(x).sum()))


# --- lock analysis of notebook 02: free-while-wanted time, short-term fairness -------------


def mean_finite(values: Iterable[float]) -> float:
    """The mean of the values that are numbers (not NaN or infinite); NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def free_while_wanted_s(locks: pd.DataFrame) -> float:
    """Seconds during which nobody held the lock but at least one worker was waiting for it.

    Sweeps the ``locks`` frame's events in time order: a request starts a wait, an
    acquisition ends it and starts a hold, a release ends the hold. Time with a waiter
    and no holder is pure waste: nobody could work on the queue (a polling waiter asleep
    in its interval, or a woken one waiting for a core).
    """
    n = len(locks)
    times = np.concatenate(
        [locks["requested_s"], locks["acquired_s"], locks["acquired_s"], locks["released_s"]]
    )
    waiting = np.concatenate([np.ones(n), -np.ones(n), np.zeros(2 * n)])
    holding = np.concatenate([np.zeros(2 * n), np.ones(n), -np.ones(n)])
    order = np.argsort(times, kind="stable")
    times, waiting, holding = times[order], np.cumsum(waiting[order]), np.cumsum(holding[order])
    idle_and_wanted = (waiting[:-1] > 0) & (holding[:-1] == 0)
    return float(np.sum(np.diff(times)[idle_and_wanted]))


def short_term_jain(locks: pd.DataFrame, *, role: str, width_s: float) -> float:
    """Mean Jain's index of lock acquisitions per worker of ``role`` in windows of ``width_s`` seconds.

    Only the span while every worker of the role is active counts (from the last one's
    first acquisition to the first one's last), cut into whole windows; a window where
    nobody acquired is left out of the mean (its index is NaN). NaN when not one window fits.
    """
    mine = locks[locks["role"] == role]
    times = mine.groupby("worker")["acquired_s"]
    start, end = times.min().max(), times.max().min()
    windows = int((end - start) // width_s) if len(mine) else 0
    inside = mine[(mine["acquired_s"] >= start) & (mine["acquired_s"] < start + windows * width_s)]
    if windows < 1 or inside.empty:
        return math.nan
    counts = pd.crosstab((inside["acquired_s"] - start) // width_s, inside["worker"])
    counts = counts.reindex(range(windows), fill_value=0)
    return mean_finite(jain_index(c) for c in counts.to_numpy())


def _quantiles(prefix: str, values: pd.Series) -> dict[str, float]:
    values = values.dropna()
    if values.empty:
        return {f"{prefix}_{q}_s": math.nan for q in ("p50", "p95", "p99", "max")}
    p50, p95, p99 = values.quantile([0.5, 0.95, 0.99]).tolist()
    return {
        f"{prefix}_p50_s": p50,
        f"{prefix}_p95_s": p95,
        f"{prefix}_p99_s": p99,
        f"{prefix}_max_s": values.max(),
    }


def _owner_changes(locks: pd.DataFrame) -> int:
    workers = locks["worker"]
    return int((workers != workers.shift(1)).sum() - 1) if len(workers) else 0


def _littles_law(tasks: pd.DataFrame, depth: pd.DataFrame, duration: float) -> dict[str, float]:
    """L (time-average depth sampled from the file) against lambda * W (from the clients)."""
    done = tasks.dropna(subset=["acked_s"])
    if done.empty or depth.empty or duration <= 0:
        return {"littles_law_L": math.nan, "littles_law_lambda_W": math.nan, "littles_law_error": math.nan}
    d = depth[(depth["time_s"] >= 0) & (depth["time_s"] <= duration)].sort_values("time_s")
    times = np.append(d["time_s"].to_numpy(), duration)
    area = float(np.sum(d["depth"].to_numpy() * np.diff(times)))
    mean_depth = area / (duration - times[0]) if len(d) and duration > times[0] else math.nan
    lam_w = len(done) / duration * float((done["acked_s"] - done["put_s"]).mean())
    error = abs(mean_depth - lam_w) / lam_w if lam_w > 0 else math.nan
    return {"littles_law_L": mean_depth, "littles_law_lambda_W": lam_w, "littles_law_error": error}


def summarize(
    tasks: pd.DataFrame, locks: pd.DataFrame, depth: pd.DataFrame, *, expected: int
) -> dict[str, Any]:
    """Throughput, percentiles, lock statistics, fairness and the correctness oracle.

    ``lost`` (put and never acked) and ``acked_twice`` must both be 0 on a completed run.
    """
    acked = tasks.dropna(subset=["acked_s"])
    duration = float(acked["acked_s"].max()) if len(acked) else math.nan
    consumers = acked.groupby("consumer").size()
    held = locks["hold_s"].sum()
    overlaps = int((locks["handoff_s"] < 0).sum())
    summary: dict[str, Any] = {
        "tasks": expected,
        "put": len(tasks),
        "acked": len(acked),
        "lost": int(expected - len(acked)),
        "acked_twice": int((tasks["acks"] > 1).sum()),
        "redelivered": int((tasks["attempts"] > 1).sum()),
        "duration_s": duration,
        "throughput_per_s": len(acked) / duration if duration > 0 else math.nan,
        **_quantiles("latency", acked["latency_s"]),
        **_quantiles("queue_wait", acked["queue_wait_s"]),
        **_quantiles("lock_wait", locks["wait_s"]),
        "lock_hold_mean_s": float(locks["hold_s"].mean()) if len(locks) else math.nan,
        "lock_acquisitions": len(locks),
        "lock_utilisation": float(held / duration) if duration > 0 else math.nan,
        # the utilisation law: the lock serves every task, so X <= 1 / (lock time per task)
        "lock_demand_s": float(held / len(acked)) if len(acked) else math.nan,
        "throughput_bound_per_s": float(len(acked) / held) if held > 0 else math.nan,
        "contended_share": float(locks["contended"].mean()) if len(locks) else math.nan,
        "owner_changes": _owner_changes(locks),
        "lock_overlaps": overlaps,
        "handoff_mean_s": float(locks["handoff_s"].mean()) if len(locks) > 1 else math.nan,
        "starvation_s": float(locks["wait_s"].max()) if len(locks) else math.nan,
        "jain_fairness": jain_index(consumers.to_numpy()),
    }
    summary.update(_littles_law(tasks, depth, duration))
    return summary


def server_frame(rows: list[tuple[int, str, str, float]], t0_ns: int) -> pd.DataFrame:
    """The probe's samples, (t_ns, metric, key, value), as the ``server`` frame."""
    raw = pd.DataFrame(rows, columns=["t_ns", "metric", "key", "value"])
    raw["time_s"] = (raw["t_ns"] - t0_ns) / _NS
    raw["value"] = raw["value"].astype(float)
    return raw[SERVER_COLUMNS].reset_index(drop=True)


def server_summary(backend: str, server: pd.DataFrame, duration: float) -> dict[str, float]:
    """What the server saw of the run, only where it can tell (NaN elsewhere and for files).

    - ``server_lock_wait_share``: PostgreSQL: of the samples of the run's backends busy in
      a statement, the share waiting on a heavyweight lock (wait_event_type ``Lock``: a row
      lock is ``Lock/tuple`` or ``Lock/transactionid``). NaN for Redis: one thread runs
      every command to its end, so no command ever waits on a lock the server could report;
      its clients wait in the socket's queue instead (see ``server_busy_share``).
    - ``server_row_lock_share``: the same share for row locks only (``Lock/tuple`` and
      ``Lock/transactionid``: a claim waiting behind another's locked row). The rest of
      ``Lock`` is mostly ``Lock/object``: NOTIFY's queue lock, taken by every put.
    - ``server_lwlock_share``, ``server_io_share``, ``server_cpu_share``: the same share for
      ``LWLock`` (the server's internal locks), ``IO`` and no wait event (running).
    - ``server_active_mean``, ``server_locks_waiting_mean``: backends in a statement, and
      ungranted ``pg_locks``, per sample.
    - ``server_busy_share``: Redis: the main thread's CPU time over the run's duration, how
      much of the run its one big lock was held; ``server_script_us_per_call``: mean
      microseconds per ``evalsha`` (one djq operation); ``server_blocked_clients_mean``:
      clients blocked in ``BLPOP`` (idle consumers) per sample.
    """
    out = dict.fromkeys(
        ("server_lock_wait_share", "server_row_lock_share", "server_lwlock_share", "server_io_share",
         "server_cpu_share", "server_active_mean", "server_locks_waiting_mean", "server_busy_share",
         "server_script_us_per_call", "server_blocked_clients_mean"), math.nan,
    )  # fmt: skip
    samples = server["time_s"].nunique() if len(server) else 0
    out["server_samples"] = samples
    if backend == "postgres" and samples:
        active = server[server["metric"] == "active"]
        kinds = active.groupby(active["key"].map(lambda key: str(key).partition("/")[0]))["value"].sum()
        busy = float(kinds.sum())
        for name, kind in (("lock_wait", "Lock"), ("lwlock", "LWLock"), ("io", "IO"), ("cpu", "CPU")):
            out[f"server_{name}_share"] = float(kinds.get(kind, 0.0)) / busy if busy else math.nan
        rows = active.loc[active["key"].isin(["Lock/tuple", "Lock/transactionid"]), "value"].sum()
        out["server_row_lock_share"] = float(rows) / busy if busy else math.nan
        out["server_active_mean"] = busy / samples
        out["server_locks_waiting_mean"] = float(
            server.loc[server["metric"] == "locks_waiting", "value"].mean()
        )
    elif backend == "redis" and samples:
        per = server.groupby(["metric", "key"])["value"].sum()
        if duration > 0:
            out["server_busy_share"] = float(per.get(("cpu_s", ""), math.nan)) / duration
        calls = float(per.get(("calls", "evalsha"), 0.0))
        out["server_script_us_per_call"] = (
            float(per.get(("usec", "evalsha"), 0.0)) / calls if calls else math.nan
        )
        blocked = server.loc[server["metric"] == "blocked_clients", "value"]
        out["server_blocked_clients_mean"] = float(blocked.mean()) if len(blocked) else math.nan
    return out
