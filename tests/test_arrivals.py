"""Intended against actual send times: the open-loop producer's schedule, and djq.arrivals' measures."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import orjson
import pandas as pd
import pytest

from djq import arrivals, frames, sim
from djq.errors import ConfigError
from djq.model import QueueConfig
from djq.workers import WorkerSpec, produce


class _Barrier:
    def wait(self, timeout: float | None = None) -> int:
        return 0


class _Flag:
    value = 0


def _tasks(**columns: list[float]) -> pd.DataFrame:
    """A tasks frame with the given columns and NaN elsewhere."""
    n = len(next(iter(columns.values())))
    frame = pd.DataFrame(dict.fromkeys(frames.TASK_COLUMNS, np.nan), index=range(n))
    frame["task_id"] = [f"t{i}" for i in range(n)]
    for name, values in columns.items():
        frame[name] = values
    return frame


def test_a_schedule_that_falls_behind_keeps_its_intended_times(tmp_path):
    """At a rate no producer can keep up with, each intended time is still the last plus its Poisson gap.

    The gaps are exactly the seeded exponential draws (the clock is never reset to now),
    and every put is sent at or after its intended time.
    """
    rate, n, seed = 1e6, 40, 3  # a gap of 1 µs on average: every put is late
    spec = WorkerSpec(
        role="producer", index=0, queue=QueueConfig(path=tmp_path / "Queue.json", fsync=False),
        out=tmp_path / "P0.json", seed=seed, tasks=n, rate=rate,
    )  # fmt: skip
    produce(spec, _Barrier(), _Flag())
    rows = orjson.loads((tmp_path / "P0.json").read_bytes())["ops"]
    intended = [row[6] for row in rows]
    starts = [row[1] for row in rows]
    rng = random.Random(seed)
    gaps = [int(rng.expovariate(rate) * 1e9) for _ in range(n)]
    assert [b - a for a, b in itertools.pairwise(intended)] == gaps[1:]
    assert all(start >= due for start, due in zip(starts, intended, strict=True))
    assert [row[5] for row in rows] == intended  # created is the intended time in open loop


def test_closed_loop_puts_have_no_intended_time(tmp_path):
    """A think-time producer records None; the tasks frame has NaN there and a sent time before put."""
    spec = WorkerSpec(
        role="producer", index=0, queue=QueueConfig(path=tmp_path / "Queue.json", fsync=False),
        out=tmp_path / "P0.json", seed=1, tasks=5,
    )  # fmt: skip
    produce(spec, _Barrier(), _Flag())
    rows = orjson.loads((tmp_path / "P0.json").read_bytes())["ops"]
    assert [row[6] for row in rows] == [None] * 5
    record = {"role": "producer", "index": 0, "ops": rows, "locks": []}
    t0 = rows[0][1]
    tasks = frames.task_frame(frames.raw_ops([record], t0), t0)
    assert tasks["intended_s"].isna().all()
    assert (tasks["sent_s"] <= tasks["put_s"]).all()


def test_a_simulation_carries_intended_and_sent_times(tmp_path):
    """An open-loop run: every task has intended <= sent <= put, the new columns at the end."""
    run = sim.simulate(producers=1, consumers=1, tasks=30, rate=400.0, path=tmp_path, seed=2)
    assert run.summary["completed"]
    assert run.summary["lost"] == 0
    assert run.summary["acked_twice"] == 0
    assert list(run.tasks.columns[-2:]) == ["sent_s", "intended_s"]
    t = run.tasks
    assert (t["intended_s"] <= t["sent_s"]).all()
    assert (t["sent_s"] <= t["put_s"]).all()
    assert (t["intended_s"] == t["created_s"]).all()


def test_send_latencies_measure_from_both_send_times():
    """From intended = ack - intended, from sent = ack - sent; closed-loop and unacked tasks left out."""
    tasks = _tasks(
        intended_s=[0.0, 0.1, math.nan, 0.3],
        sent_s=[0.0, 0.25, 0.2, 0.3],
        acked_s=[0.01, 0.26, 0.21, math.nan],
    )
    lat = arrivals.send_latencies(tasks)
    assert list(lat.columns) == arrivals.LATENCY_COLUMNS
    assert list(lat["task_id"]) == ["t0", "t1"]
    assert lat["from_intended_s"].tolist() == pytest.approx([0.01, 0.16])
    assert lat["from_sent_s"].tolist() == pytest.approx([0.01, 0.01])
    assert lat["send_lag_s"].tolist() == pytest.approx([0.0, 0.15])


def test_omission_compares_the_quantiles():
    """Ninety on-time tasks and ten sent 0.1 s late: the p99 from intended is 11 times the p99 from sent."""
    intended = [i * 0.01 for i in range(100)]
    sent = [t + (0.1 if i >= 90 else 0.0) for i, t in enumerate(intended)]
    tasks = _tasks(intended_s=intended, sent_s=sent, acked_s=[s + 0.01 for s in sent])
    out = arrivals.omission(tasks, q=0.99)
    assert out["tasks"] == 100
    assert out["late_share"] == pytest.approx(0.10)
    assert out["from_sent_q_s"] == pytest.approx(0.01)
    assert out["from_intended_q_s"] == pytest.approx(0.11)
    assert out["ratio"] == pytest.approx(11.0)
    assert out["from_intended_max_s"] == pytest.approx(0.11)


def test_omission_without_open_loop_tasks_is_nan():
    """A closed-loop run has nothing to compare."""
    out = arrivals.omission(_tasks(sent_s=[0.0], acked_s=[0.1]))
    assert out["tasks"] == 0
    assert math.isnan(out["ratio"])
    assert math.isnan(out["late_share"])


def test_window_counts_keep_empty_windows():
    """Counts per window, a gap as zeros, the last time included when no end is given."""
    counts = arrivals.window_counts(pd.Series([0.0, 0.05, 0.31, 0.4]), window=0.1)
    assert counts.index.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert counts.tolist() == [2, 0, 0, 1, 1]
    bounded = arrivals.window_counts(pd.Series([0.0, 0.05, 0.31, 0.4]), window=0.1, start=0.1, end=0.4)
    assert bounded.tolist() == [0, 0, 1]
    assert arrivals.window_counts(pd.Series([], dtype=float), window=1.0).tolist() == [0]


def test_window_counts_refuse_a_bad_window():
    """A window must be a positive number of seconds."""
    with pytest.raises(ConfigError) as info:
        arrivals.window_counts(pd.Series([0.0]), window=0)
    assert info.value.field == "window"


def test_stalls_merge_overlapping_long_waits():
    """Two workers waiting through one stall make one interval; short waits are no stall."""
    locks = pd.DataFrame(
        {
            "requested_s": [0.0, 1.00, 1.02, 2.0],
            "acquired_s": [0.001, 1.15, 1.151, 2.2],
            "wait_s": [0.001, 0.15, 0.131, 0.2],
        }
    )
    found = arrivals.stalls(locks, min_wait_s=0.05)
    assert list(found.columns) == arrivals.STALL_COLUMNS
    assert found["start_s"].tolist() == pytest.approx([1.0, 2.0])
    assert found["end_s"].tolist() == pytest.approx([1.151, 2.2])
    assert found["waiters"].tolist() == [2, 1]
    assert arrivals.stalls(locks, min_wait_s=1.0).empty


def test_utilisation_is_service_time_over_servers_and_duration():
    """Two consumers busy 0.5 s each in a 1 s run: utilisation 0.5."""
    tasks = _tasks(acked_s=[0.5, 1.0], service_s=[0.5, 0.5])
    assert arrivals.utilisation(tasks, servers=2) == pytest.approx(0.5)
    assert arrivals.utilisation(tasks, servers=1, duration=2.0) == pytest.approx(0.5)
    assert math.isnan(arrivals.utilisation(tasks.iloc[:0], servers=2))


def test_steady_throughput_trims_the_edges():
    """Acks every 10 ms after a slow start and before a slow end: 100 per second."""
    acked = [0.0, 0.5] + [0.5 + 0.01 * i for i in range(1, 97)] + [2.0, 3.0]
    assert arrivals.steady_throughput(_tasks(acked_s=acked), trim=0.05) == pytest.approx(100.0)
    assert math.isnan(arrivals.steady_throughput(_tasks(acked_s=[1.0, 2.0])))


def test_latency_growth_is_the_slope_against_arrival_time():
    """Latency 0.1 s per second of arrival time gives a slope of 0.1; closed-loop rows use created."""
    arrival = np.linspace(0, 2, 21)
    tasks = _tasks(intended_s=list(arrival), acked_s=list(arrival * 1.1 + 0.01))
    assert arrivals.latency_growth(tasks) == pytest.approx(0.1)
    closed = _tasks(created_s=list(arrival), acked_s=list(arrival + 0.01))
    assert arrivals.latency_growth(closed) == pytest.approx(0.0, abs=1e-9)


def test_put_loop_applies_the_response_time_law():
    """Two producers, 0.1 s puts 0.05 s apart: R = 0.1 s, Z = 0.05 s, and N / X - Z gives R back.

    P1 starts 0.1 s late and stops 0.05 s early, so over the 0.4 s span (0.4 + 0.25) / 0.4
    producers are active on average: the law uses that, not N = 2.
    """
    ops = pd.DataFrame(
        {
            "worker": ["P0", "P0", "P0", "P1", "P1", "C0"],
            "op": ["put", "put", "put", "put", "put", "get"],
            "start_s": [0.0, 0.15, 0.3, 0.1, 0.25, 0.0],
            "end_s": [0.1, 0.25, 0.4, 0.2, 0.35, 0.3],
        }
    )
    ops["duration_s"] = ops["end_s"] - ops["start_s"]
    out = arrivals.put_loop(ops)
    assert out["producers"] == 2
    assert out["active_producers"] == pytest.approx((0.4 + 0.25) / 0.4)
    assert out["put_throughput_per_s"] == pytest.approx(5 / 0.4)
    assert out["put_response_s"] == pytest.approx(0.1)
    assert out["think_s"] == pytest.approx(0.05)
    assert out["response_time_law_s"] == pytest.approx((0.65 / 0.4) / (5 / 0.4) - 0.05)


def test_put_loop_without_puts_is_nan():
    """No put, no loop to measure."""
    ops = pd.DataFrame(
        {"worker": ["C0"], "op": ["get"], "start_s": [0.0], "end_s": [0.1], "duration_s": [0.1]}
    )
    out = arrivals.put_loop(ops)
    assert out["producers"] == 0
    assert math.isnan(out["response_time_law_s"])
