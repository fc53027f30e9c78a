"""Leases in simulations: long-tailed work, heartbeats, planned kills, and what they cost."""

from __future__ import annotations

import random
import signal

import pytest

import djq
from djq import frames, holding, leases, sim
from djq.workers import Dist, WorkerSpec

MS = 1_000_000  # nanoseconds


def test_lognormal_has_the_p99_it_was_given():
    """Dist.lognormal(p99=x) puts 1 % of its draws above x (by formula, and nearly so by sampling)."""
    work = Dist.lognormal(p99=0.08)
    assert work.quantile(0.99) == pytest.approx(0.08)
    assert work.quantile(0.5) < work.mean < work.quantile(0.99)  # a long right tail
    rng = random.Random(1)
    draws = sorted(work.sample(rng) for _ in range(20_000))
    assert draws[int(0.99 * len(draws))] == pytest.approx(0.08, rel=0.1)


def test_a_lognormal_work_time_is_accepted_by_name():
    """work="lognormal:MEAN" is a lognormal of that mean, and survives to_dict."""
    config = sim.SimConfig(work="lognormal:0.01")
    assert config.work == Dist(kind="lognormal", mean=0.01)
    assert sim.SimConfig(**config.to_dict()).work == config.work


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kills": (0.1, 0.2)}, "kills"),  # 2 consumers: one must live
        ({"kills": "0.1", "consumers": 3}, "kills"),
        ({"kills": (-1.0,), "consumers": 3}, "kills"),
        ({"kills": (None,), "consumers": 3}, "kills"),
        ({"kills": (0.1,), "consumers": 3, "batch": 2}, "kills"),
        ({"heartbeat": True, "consumer_concurrency": 2}, "kills"),
        ({"heartbeat": 1}, "heartbeat"),
    ],
)
def test_bad_kills_and_heartbeats_are_refused(options, field):
    """Kills need a survivor and one task at a time; heartbeat is a bool."""
    with pytest.raises(djq.ConfigError) as info:
        sim.SimConfig(**options)
    assert info.value.field == field


def test_an_op_log_keeps_its_rows_on_disk(tmp_path):
    """Every row appended is on disk at once; a torn last line is left out when read back."""
    path = tmp_path / "C0.ops"
    log = holding.OpLog(path)
    log.append(["get", 1, 2, ["7"], True, 1])
    log.append(["kill", 3, 3, ["7"], True, 1])
    assert list(log) == holding.read_log(path)
    with path.open("ab") as f:
        f.write(b'["ack", 4, 5, ["')  # a write cut short
    assert holding.read_log(path) == [["get", 1, 2, ["7"], True, 1], ["kill", 3, 3, ["7"], True, 1]]
    assert holding.read_log(tmp_path / "none.ops") == []


class _Queue:
    """Stands in for a queue: counts extends, or refuses them."""

    def __init__(self, *, lost: bool = False) -> None:
        self.extends: list[float | None] = []
        self.lost = lost

    def extend(self, task, *, lease=None):
        self.extends.append(lease)
        if self.lost:
            raise djq.LeaseLost(task_id=task.id, token=task.token)
        return task


class _Ticks:
    """A stop event that says "not yet" ``n`` times, then "stop": beats without waiting."""

    def __init__(self, n: int) -> None:
        self.n = n

    def wait(self, timeout=None) -> bool:
        self.n -= 1
        return self.n < 0


TASK = djq.Task(id="7", payload=None, attempts=2, token="t")


def test_the_heartbeat_extends_until_told_to_stop():
    """Each beat extends the lease by the whole lease and records an extend row."""
    queue, ops = _Queue(), []
    holding._beat(queue, TASK, 0.5, _Ticks(3), ops)
    assert queue.extends == [0.5, 0.5, 0.5]
    assert [row[0] for row in ops] == ["extend"] * 3
    assert all(row[4] for row in ops)


def test_the_heartbeat_stops_at_a_lost_lease():
    """A refused extend is recorded as not ok and ends the beats."""
    queue, ops = _Queue(lost=True), []
    holding._beat(queue, TASK, 0.5, _Ticks(5), ops)
    assert len(queue.extends) == 1
    assert [(row[0], row[4]) for row in ops] == [("extend", False)]


def test_work_shorter_than_half_a_lease_needs_no_beat():
    """No thread, no extend, when the work ends before the first beat would come."""
    queue, ops = _Queue(), []
    holding.work(queue, TASK, 0.0, lease=1.0, heartbeat=True, ops=ops)
    assert queue.extends == []
    assert ops == []


def _raw(rows_by_worker):
    records = [
        {"role": "consumer", "index": int(worker[1:]), "ops": rows, "locks": []}
        for worker, rows in rows_by_worker.items()
    ]
    return frames.raw_ops(records, 0)


def test_a_kill_is_recovered_when_its_task_is_leased_again():
    """recovery_s runs from the kill to the next delivery; a task re-leased before the kill was not held."""
    raw = _raw(
        {
            "C0": [
                ["get", 0, 10 * MS, ["1"], True, 1],
                ["kill", 30 * MS, 30 * MS, ["1"], True, 1],
            ],
            "C1": [
                ["get", 0, 5 * MS, ["2"], True, 1],
                ["get", 250 * MS, 260 * MS, ["1"], True, 2],
                ["ack", 270 * MS, 280 * MS, ["1"], True, 2],
                ["get", 300 * MS, 301 * MS, ["3"], True, 2],
                ["ack", 310 * MS, 311 * MS, ["2"], False, 1],
            ],
            "C2": [
                ["get", 0, 1 * MS, ["3"], True, 1],
                ["get", 200 * MS, 210 * MS, ["3"], True, 2],  # C2's lease on 3 ran out: C1 took it
                ["kill", 400 * MS, 400 * MS, ["3"], True, 1],
            ],
        }
    )
    kills = leases.kill_frame(raw)
    assert list(kills.columns) == leases.KILL_COLUMNS
    first, second = kills.itertuples()
    assert (first.worker, first.task_id, first.held, first.relet_by) == ("C0", "1", True, "C1")
    assert first.recovery_s == pytest.approx(0.23)
    assert not second.held
    assert second.recovery_s != second.recovery_s
    tasks = frames.task_frame(raw, 0)  # no puts: an empty task frame
    summary = leases.lease_summary(tasks, frames.op_frame(raw), kills)
    assert summary["kills"] == 2
    assert summary["kill_duplicates"] == 1
    assert summary["late_acks"] == 1
    assert summary["recovery_mean_s"] == pytest.approx(0.23)


def test_duplicates_are_deliveries_beyond_the_first():
    """A task delivered 3 times has 2 duplicates; one never delivered has none."""
    tasks = frames.task_frame(_raw({}), 0).reindex(range(3))
    tasks["attempts"] = [1, 3, 0]
    assert leases.duplicates(tasks).tolist() == [0, 2, 0]


def test_a_killed_consumer_is_planned_not_failed(tmp_path):
    """A run with a kill completes: its victim's task comes back once its lease runs out."""
    run = sim.simulate(producers=1, consumers=3, tasks=30, work=0.01, lease=0.3, kills=(0.0,),
                       seed=3, path=tmp_path, time_limit=60)  # fmt: skip
    s = run.summary
    assert s["completed"]
    assert s["lost"] == 0
    assert s["acked_twice"] == 0
    assert run.workers["killed"].sum() == 1
    assert (run.workers.loc[run.workers["killed"], "exitcode"] == -signal.SIGKILL).all()
    assert len(run.kills) == 1
    assert s["kills"] == 1
    kill = run.kills.iloc[0]
    assert kill["held"]
    assert kill["recovery_s"] > 0
    assert s["duplicates"] >= 1  # the dead consumer's delivery counts
    assert sim.load(run.save(tmp_path / "saved")).kills.shape == run.kills.shape


def test_a_heartbeat_keeps_a_task_longer_than_its_lease(tmp_path):
    """Work of 1.2 s on a 1 s lease, extended each half lease: delivered once, acked once."""
    run = sim.simulate(producers=1, consumers=2, tasks=2, work=1.2, lease=1.0, heartbeat=True,
                       path=tmp_path, time_limit=60)  # fmt: skip
    s = run.summary
    assert s["completed"]
    assert s["lost"] == 0
    assert s["acked_twice"] == 0
    assert s["extends"] >= 2
    assert s["duplicates"] == 0
    assert s["late_acks"] == 0


def test_worker_specs_carry_heartbeat_and_death():
    """The spec's defaults change nothing: no heartbeat, no death."""
    spec = WorkerSpec(role="consumer", index=0, queue=sim.SIM_QUEUE, out=None, seed=0)
    assert spec.heartbeat is False
    assert spec.die_at is None
