"""Unit tests of the pure state machine ``djq.state``: no files, no sleeps, time is ``now=``."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest

from djq import ops, state
from djq.errors import ConfigError, LeaseLost, UnknownTask
from djq.model import DEFAULT_MAX_ATTEMPTS, MAX_DELAY, MAX_LEASE_DURATION, QueueStats, Task, TaskState
from djq.ops import (
    Ack,
    AckLease,
    AckMany,
    Dead,
    Extend,
    LeaseMany,
    LeaseNext,
    Nack,
    Peek,
    Pop,
    Purge,
    Put,
    PutMany,
    Reap,
    Release,
    Requeue,
    Stats,
)
from djq.snapshot import encode
from djq.state import (
    RULES,
    QueueState,
    ack,
    ack_lease,
    ack_many,
    apply,
    dead,
    extend,
    lease,
    lease_many,
    nack,
    next_deadline,
    peek,
    pop,
    purge,
    put,
    put_many,
    reap,
    release,
    requeue,
    stats,
)

T0 = 1_000_000.0  # an arbitrary wall-clock moment; every test counts from here
LEASE = 10.0  # the lease duration most tests use


def _lease(s: QueueState, token: str, *, now: float = T0, duration: float = LEASE) -> Task | None:
    return lease(s, token=token, owner="w1", duration=duration, now=now)


def _leased_one(*, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> tuple[QueueState, Task]:
    """A state with one task, leased under token "t1" from T0 until T0 + LEASE."""
    s = QueueState()
    put(s, {"n": 1}, max_attempts=max_attempts, now=T0)
    task = _lease(s, "t1")
    assert task is not None
    return s, task


def _dead_one() -> QueueState:
    """A state with one task ("1") in the dead letters."""
    s, task = _leased_one(max_attempts=1)
    assert nack(s, task.id, "t1", now=T0 + 1) is TaskState.DEAD
    return s


def _ids(tasks: list[Task]) -> list[str]:
    return [t.id for t in tasks]


def _drain(s: QueueState, *, now: float) -> list[str]:
    """Lease every task that is ready at ``now``, in delivery order; return their ids."""
    out = []
    for i in itertools.count():
        task = _lease(s, f"drain-{i}", now=now)
        if task is None:
            return out
        out.append(task.id)
    raise AssertionError("unreachable")  # pragma: no cover


class Unchanged:
    """Compare a state before and after a call: deep copy and encoded bytes both."""

    def __init__(self, s: QueueState) -> None:
        self.s = s
        self.copy = copy.deepcopy(s)
        self.bytes = encode(s)

    def check(self) -> None:
        assert self.s == self.copy
        assert encode(self.s) == self.bytes


# --- put ---------------------------------------------------------------------------------


def test_put_returns_a_ready_snapshot_with_the_next_id():
    """put returns a READY task snapshot whose ids count up from "1"."""
    s = QueueState()
    first = put(s, {"n": 1}, now=T0)
    second = put(s, "two", priority=3, max_attempts=2, now=T0 + 1)
    assert first == Task(id="1", payload={"n": 1}, enqueued_at=T0, available_at=T0)
    assert (second.id, second.payload, second.priority, second.max_attempts) == ("2", "two", 3, 2)
    assert second.state is TaskState.READY
    assert second.attempts == 0
    assert (second.owner, second.token, second.lease_expires_at) == (None, None, None)


def test_put_with_delay_sets_available_at_to_now_plus_delay():
    """A delayed put is enqueued now and available at now + delay."""
    s = QueueState()
    task = put(s, None, delay=7.5, now=T0)
    assert (task.enqueued_at, task.available_at) == (T0, T0 + 7.5)


def test_put_raises_put_total_and_next_seq():
    """Each put raises put_total and next_seq by one."""
    s = QueueState()
    put(s, 1, now=T0)
    put(s, 2, now=T0)
    assert (s.put_total, s.next_seq, list(s.tasks)) == (2, 3, ["1", "2"])


def test_put_many_appends_in_order_with_consecutive_ids():
    """put_many appends its payloads in order with consecutive ids and shared options."""
    s = QueueState()
    put(s, "a", now=T0)
    tasks = put_many(s, iter(["b", "c", "d"]), priority=2, delay=1.0, max_attempts=3, now=T0)
    assert _ids(tasks) == ["2", "3", "4"]
    assert [t.payload for t in tasks] == ["b", "c", "d"]
    assert {(t.priority, t.available_at, t.max_attempts) for t in tasks} == {(2, T0 + 1.0, 3)}
    assert list(s.tasks) == ["1", "2", "3", "4"]
    assert s.put_total == 4


def test_put_many_of_nothing_changes_nothing():
    """put_many with no payloads returns [] and leaves the state as it was."""
    s = QueueState()
    put(s, "a", now=T0)
    before = Unchanged(s)
    assert put_many(s, [], now=T0) == []
    before.check()


def test_put_keeps_its_own_payload_object():
    """The snapshot carries the payload put, with the same value as the stored record."""
    s = QueueState()
    task = put(s, {"k": [1, 2.5, "x", None, True]}, now=T0)
    assert task.payload == s.tasks["1"].payload == {"k": [1, 2.5, "x", None, True]}


# --- lease order -------------------------------------------------------------------------


def test_lease_takes_the_highest_priority_first():
    """Among ready tasks the highest priority is leased first, whatever the put order."""
    s = QueueState()
    for prio in (0, 5, -1, 2):
        put(s, prio, priority=prio, now=T0)
    assert _drain(s, now=T0) == ["2", "4", "1", "3"]


def test_lease_is_fifo_within_a_priority():
    """Tasks of one priority are leased in put order."""
    s = QueueState()
    put_many(s, ["a", "b"], priority=1, now=T0)
    put_many(s, ["c", "d"], priority=0, now=T0)
    put_many(s, ["e", "f"], priority=1, now=T0)
    assert _drain(s, now=T0) == ["1", "2", "5", "6", "3", "4"]


def test_lease_skips_delayed_tasks_until_available_at():
    """A delayed task is skipped, even at higher priority, until now reaches available_at."""
    s = QueueState()
    put(s, "late", priority=9, delay=5.0, now=T0)
    put(s, "now", now=T0)
    assert _drain(s, now=T0 + 4.999) == ["2"]
    assert _lease(s, "x", now=T0 + 4.999) is None
    task = _lease(s, "y", now=T0 + 5.0)
    assert task is not None
    assert task.id == "1"


def test_delayed_task_of_higher_priority_wins_once_available():
    """Once available, a delayed task is ordered by its priority like any other."""
    s = QueueState()
    put(s, "low", priority=0, now=T0)
    put(s, "high", priority=1, delay=1.0, now=T0)
    assert _drain(s, now=T0 + 2) == ["2", "1"]


def test_lease_returns_none_on_an_empty_queue():
    """lease on an empty state returns None and changes nothing."""
    s = QueueState()
    before = Unchanged(s)
    assert _lease(s, "t1") is None
    before.check()


def test_lease_returns_none_when_every_task_is_leased_delayed_or_dead():
    """lease returns None when no task is ready now."""
    s = _dead_one()
    put(s, "delayed", delay=100.0, now=T0)
    put(s, "leased", now=T0)
    assert _lease(s, "t2", now=T0 + 1) is not None
    assert _lease(s, "t3", now=T0 + 2) is None


def test_lease_sets_owner_token_state_and_expiry():
    """A leased task carries the owner, the token and now + duration as its expiry."""
    s = QueueState()
    put(s, "a", now=T0)
    task = lease(s, token="tok", owner="pid-7", duration=12.5, now=T0 + 1)
    assert task is not None
    assert (task.state, task.owner, task.token, task.lease_expires_at) == (
        TaskState.LEASED,
        "pid-7",
        "tok",
        T0 + 13.5,
    )
    record = s.tasks["1"]
    assert (record.state, record.owner, record.token, record.lease_expires_at) == (
        TaskState.LEASED,
        "pid-7",
        "tok",
        T0 + 13.5,
    )


def test_every_lease_raises_attempts():
    """attempts counts deliveries: every lease of the task raises it by one."""
    s = QueueState()
    put(s, "a", now=T0)
    seen = []
    for i in range(3):
        task = _lease(s, f"t{i}", now=T0 + i)
        assert task is not None
        seen.append(task.attempts)
        nack(s, task.id, f"t{i}", now=T0 + i)
    assert seen == [1, 2, 3]


# --- expiry, redelivery, dead letters -----------------------------------------------------


def test_expired_lease_is_reclaimed_by_the_next_lease_and_redelivered():
    """The next lease after the expiry reclaims the task and delivers it again, attempts raised."""
    s, first = _leased_one()
    again = _lease(s, "t2", now=T0 + LEASE)  # expiry is inclusive: lease_expires_at <= now
    assert again is not None
    assert (again.id, again.token, again.attempts) == (first.id, "t2", 2)
    assert again.lease_expires_at == T0 + 2 * LEASE


def test_lease_is_not_reclaimed_before_it_expires():
    """A lease that has not expired is not reclaimed by another lease."""
    s, _ = _leased_one()
    assert _lease(s, "t2", now=T0 + LEASE - 0.001) is None
    assert s.tasks["1"].token == "t1"


def test_reclaimed_task_keeps_its_place_in_the_order():
    """A reclaimed task keeps its seq, so it comes before later tasks of its priority."""
    s, _ = _leased_one()
    put(s, "later", now=T0 + 1)
    assert _drain(s, now=T0 + LEASE) == ["1", "2"]


def test_expired_lease_after_max_attempts_deliveries_goes_dead():
    """A task delivered max_attempts times whose lease expires goes to DEAD, dead_total raised."""
    s = QueueState()
    put(s, "a", max_attempts=3, now=T0)
    now = T0
    for attempt in (1, 2, 3):
        task = _lease(s, f"t{attempt}", now=now)
        assert task is not None
        assert task.attempts == attempt
        now += LEASE
    assert s.dead_total == 0
    assert _lease(s, "t4", now=now) is None
    record = s.tasks["1"]
    assert (record.state, record.attempts) == (TaskState.DEAD, 3)
    assert (record.owner, record.token, record.lease_expires_at) == (None, None, None)
    assert s.dead_total == 1


def test_nack_after_max_attempts_deliveries_goes_dead():
    """Nacking the max_attempts-th delivery sends the task to DEAD and raises dead_total."""
    s = QueueState()
    put(s, "a", max_attempts=2, now=T0)
    first = _lease(s, "t1")
    assert first is not None
    assert nack(s, "1", "t1", now=T0 + 1) is TaskState.READY
    assert s.dead_total == 0
    second = _lease(s, "t2", now=T0 + 2)
    assert second is not None
    assert second.attempts == 2
    assert nack(s, "1", "t2", now=T0 + 3) is TaskState.DEAD
    assert s.tasks["1"].state is TaskState.DEAD
    assert s.dead_total == 1
    assert _ids(dead(s)) == ["1"]


def test_max_attempts_one_dies_on_the_first_expiry():
    """With max_attempts=1 the first expired lease sends the task to the dead letters."""
    s, _ = _leased_one(max_attempts=1)
    assert reap(s, now=T0 + LEASE) == ["1"]
    assert s.tasks["1"].state is TaskState.DEAD
    assert s.dead_total == 1


def test_dead_task_is_never_leased():
    """A dead task is not delivered again, however late it is."""
    s = _dead_one()
    assert _lease(s, "t2", now=T0 + 1e6) is None
    assert s.tasks["1"].state is TaskState.DEAD


def test_reap_returns_reclaimed_ids_and_keeps_available_at():
    """reap reclaims exactly the expired leases, returns their ids, and leaves available_at alone."""
    s = QueueState()
    put_many(s, ["a", "b", "c"], now=T0)
    _lease(s, "t1", duration=5.0)
    _lease(s, "t2", duration=20.0)
    _lease(s, "t3", duration=5.0)
    assert reap(s, now=T0 + 5.0) == ["1", "3"]
    assert [s.tasks[i].state for i in "123"] == [TaskState.READY, TaskState.LEASED, TaskState.READY]
    assert s.tasks["1"].available_at == T0
    assert s.tasks["1"].attempts == 1
    assert s.tasks["1"].token is None


def test_reap_with_nothing_expired_changes_nothing():
    """reap with no expired lease returns [] and leaves the state as it was."""
    s, _ = _leased_one()
    put(s, "ready", now=T0)
    before = Unchanged(s)
    assert reap(s, now=T0 + LEASE - 1) == []
    before.check()


# --- ack -------------------------------------------------------------------------------------


def test_ack_removes_the_task_and_raises_acked_total():
    """ack removes the task from the state and raises acked_total."""
    s, task = _leased_one()
    put(s, "other", now=T0)
    ack(s, task.id, "t1", now=T0 + 1)
    assert list(s.tasks) == ["2"]
    assert (s.acked_total, s.put_total, s.dead_total) == (1, 2, 0)


def test_ack_of_an_expired_but_not_reclaimed_lease_succeeds():
    """A lease that expired but was not reclaimed yet still holds: its ack succeeds."""
    s, task = _leased_one()
    ack(s, task.id, "t1", now=T0 + LEASE + 100)
    assert s.tasks == {}
    assert s.acked_total == 1


def test_ack_after_reclaim_raises_lease_lost():
    """After the expired lease was reclaimed (and the task leased again) the old token is lost."""
    s, task = _leased_one()
    assert _lease(s, "t2", now=T0 + LEASE) is not None
    with pytest.raises(LeaseLost):
        ack(s, task.id, "t1", now=T0 + LEASE)
    ack(s, task.id, "t2", now=T0 + LEASE)
    assert s.acked_total == 1


def _stale_scenarios() -> dict[str, Callable[[], tuple[QueueState, str, str]]]:
    """Ways to hold an (id, token) pair that does not hold the task, by name."""

    def wrong_token():
        s, _ = _leased_one()
        return s, "1", "not-t1"

    def unknown_id():
        s, _ = _leased_one()
        return s, "99", "t1"

    def after_ack():
        s, _ = _leased_one()
        put(s, "other", now=T0)
        ack(s, "1", "t1", now=T0 + 1)
        return s, "1", "t1"

    def after_nack():
        s, _ = _leased_one()
        nack(s, "1", "t1", now=T0 + 1)
        return s, "1", "t1"

    def after_reclaim_and_release():
        s, _ = _leased_one()
        assert _lease(s, "t2", now=T0 + LEASE) is not None
        return s, "1", "t1"

    def after_reap():
        s, _ = _leased_one()
        reap(s, now=T0 + LEASE)
        return s, "1", "t1"

    def never_leased():
        s = QueueState()
        put(s, "a", now=T0)
        return s, "1", "t1"

    def dead_task():
        return _dead_one(), "1", "t1"

    def after_purge():
        s, _ = _leased_one()
        purge(s, now=T0 + 1)
        return s, "1", "t1"

    def token_of_another_task():
        s, _ = _leased_one()
        put(s, "b", now=T0)
        assert _lease(s, "t2") is not None
        return s, "1", "t2"

    return {
        f.__name__: f
        for f in (
            wrong_token,
            unknown_id,
            after_ack,
            after_nack,
            after_reclaim_and_release,
            after_reap,
            never_leased,
            dead_task,
            after_purge,
            token_of_another_task,
        )
    }


STALE = _stale_scenarios()
HELD_OPS: dict[str, Callable[[QueueState, str, str], object]] = {
    "ack": lambda s, i, t: ack(s, i, t, now=T0 + 2),
    "nack": lambda s, i, t: nack(s, i, t, delay=1.0, now=T0 + 2),
    "extend": lambda s, i, t: extend(s, i, t, duration=5.0, now=T0 + 2),
    "release": lambda s, i, t: release(s, i, t, now=T0 + 2),
}


@pytest.mark.parametrize("op", list(HELD_OPS))
@pytest.mark.parametrize("scenario", list(STALE))
def test_stale_or_unknown_token_raises_lease_lost_and_changes_nothing(op: str, scenario: str):
    """ack, nack and extend with a token that does not hold the task raise LeaseLost, state untouched."""
    s, task_id, token = STALE[scenario]()
    before = Unchanged(s)
    with pytest.raises(LeaseLost) as info:
        HELD_OPS[op](s, task_id, token)
    assert (info.value.task_id, info.value.token) == (task_id, token)
    before.check()


# --- nack --------------------------------------------------------------------------------


def test_nack_returns_the_task_to_ready_at_once():
    """nack without delay makes the task ready at once, lease fields cleared."""
    s, _ = _leased_one()
    assert nack(s, "1", "t1", now=T0 + 1) is TaskState.READY
    record = s.tasks["1"]
    assert (record.state, record.available_at, record.attempts) == (TaskState.READY, T0, 1)  # as put
    assert (record.owner, record.token, record.lease_expires_at) == (None, None, None)
    task = _lease(s, "t2", now=T0 + 1)
    assert task is not None
    assert task.attempts == 2


def test_nack_with_delay_makes_the_task_available_after_the_delay():
    """nack with delay makes the task available at now + delay, not before."""
    s, _ = _leased_one()
    nack(s, "1", "t1", delay=30.0, now=T0 + 2)
    assert s.tasks["1"].available_at == T0 + 32
    assert _lease(s, "t2", now=T0 + 31.999) is None
    task = _lease(s, "t3", now=T0 + 32)
    assert task is not None
    assert task.id == "1"


def test_nacked_task_keeps_its_place_in_the_order():
    """A nacked task keeps its seq: it is delivered before tasks of its priority put after it."""
    s, _ = _leased_one()
    put(s, "later", now=T0 + 1)
    nack(s, "1", "t1", now=T0 + 2)
    assert _drain(s, now=T0 + 2) == ["1", "2"]


# --- release -----------------------------------------------------------------------------


def test_release_gives_the_task_back_uncounted_and_first_in_line():
    """release: ready at once, in its place, lease fields cleared, the delivery not counted."""
    s, _ = _leased_one()
    put(s, "later", now=T0 + 1)
    release(s, "1", "t1", now=T0 + 2)
    record = s.tasks["1"]
    assert (record.state, record.available_at, record.attempts) == (TaskState.READY, T0, 0)
    assert (record.owner, record.token, record.lease_expires_at) == (None, None, None)
    assert _drain(s, now=T0 + 2) == ["1", "2"]


def test_release_of_the_last_attempt_keeps_the_task_alive():
    """A nack of the last allowed delivery sends the task to the dead letters; a release does not."""
    s = QueueState()
    put(s, "a", max_attempts=1, now=T0)
    released, nacked = copy.deepcopy(s), s
    for target, give_back in ((released, release), (nacked, nack)):
        _lease(target, "t1", now=T0)
        give_back(target, "1", "t1", now=T0 + 1)
    assert (released.tasks["1"].state, released.tasks["1"].attempts) == (TaskState.READY, 0)
    assert (nacked.tasks["1"].state, nacked.dead_total) == (TaskState.DEAD, 1)


# --- pop and ack_lease ---------------------------------------------------------------------


def test_pop_takes_the_next_task_for_good_in_delivery_order():
    """pop: highest priority first, then FIFO; the task leaves at once, counted as acked."""
    s = QueueState()
    put(s, "low", now=T0)
    put(s, "high", priority=5, now=T0)
    first = pop(s, now=T0)
    assert first is not None
    assert (first.payload, first.state, first.attempts, first.token) == ("high", TaskState.DONE, 1, None)
    assert first.id not in s.tasks
    assert s.acked_total == 1
    assert pop(s, now=T0).payload == "low"
    assert pop(s, now=T0) is None


def test_pop_reclaims_an_expired_lease_first():
    """A lease that expired is reclaimed by pop, which may then take that very task."""
    s, _ = _leased_one()
    assert pop(s, now=T0 + 1) is None  # the lease still holds
    task = pop(s, now=T0 + LEASE + 1)
    assert (task.id, task.attempts) == ("1", 2)


def test_ack_lease_acks_then_leases_the_next_and_a_stale_token_changes_nothing():
    """ack_lease is ack then lease; with a token that lost the task it raises and leases nothing."""
    s, _ = _leased_one()
    put(s, "next", now=T0 + 1)
    before = Unchanged(s)
    with pytest.raises(LeaseLost):
        ack_lease(s, "1", "stale", next_token="n1", owner="w2", duration=LEASE, now=T0 + 2)
    before.check()
    task = ack_lease(s, "1", "t1", next_token="n1", owner="w2", duration=LEASE, now=T0 + 2)
    assert (task.id, task.token, task.owner, task.state) == ("2", "n1", "w2", TaskState.LEASED)
    assert "1" not in s.tasks
    assert s.acked_total == 1
    assert ack_lease(s, "2", "n1", next_token="n2", owner="w2", duration=LEASE, now=T0 + 3) is None
    assert s.acked_total == 2


# --- extend ------------------------------------------------------------------------------


def test_extend_moves_the_expiry_to_now_plus_duration():
    """extend sets lease_expires_at to now + duration and returns the new snapshot."""
    s, _ = _leased_one()
    task = extend(s, "1", "t1", duration=60.0, now=T0 + 5)
    assert task.lease_expires_at == s.tasks["1"].lease_expires_at == T0 + 65
    assert (task.token, task.owner, task.attempts) == ("t1", "w1", 1)


def test_extended_lease_is_not_reclaimed_at_the_old_expiry():
    """After extend the lease outlives its old expiry and is reclaimed at the new one."""
    s, _ = _leased_one()
    extend(s, "1", "t1", duration=60.0, now=T0 + 5)
    assert _lease(s, "t2", now=T0 + LEASE) is None
    assert _lease(s, "t3", now=T0 + 64.999) is None
    again = _lease(s, "t4", now=T0 + 65)
    assert again is not None
    assert again.attempts == 2


def test_extend_can_shorten_a_lease():
    """extend with a short duration moves the expiry earlier too."""
    s, _ = _leased_one()
    extend(s, "1", "t1", duration=1.0, now=T0 + 1)
    assert reap(s, now=T0 + 2) == ["1"]


def test_extend_of_an_expired_but_not_reclaimed_lease_succeeds():
    """Like ack, extend still holds a lease that expired but was not reclaimed."""
    s, _ = _leased_one()
    task = extend(s, "1", "t1", duration=5.0, now=T0 + LEASE + 1)
    assert task.lease_expires_at == T0 + LEASE + 6
    assert reap(s, now=T0 + LEASE + 2) == []


# --- requeue -----------------------------------------------------------------------------


def test_requeue_moves_a_dead_task_to_ready_with_attempts_reset():
    """requeue turns a dead task into a ready one, available now, attempts back to 0."""
    s = _dead_one()
    task = requeue(s, "1", now=T0 + 50)
    assert (task.state, task.attempts, task.available_at) == (TaskState.READY, 0, T0)  # as put
    assert s.tasks["1"].state is TaskState.READY
    assert dead(s) == []
    assert s.dead_total == 1  # a counter of events, not of current dead letters
    again = _lease(s, "t2", now=T0 + 50)
    assert again is not None
    assert again.attempts == 1


def test_requeued_task_gets_max_attempts_fresh_deliveries():
    """After requeue a task may again be delivered max_attempts times before dying."""
    s = _dead_one()  # max_attempts == 1
    requeue(s, "1", now=T0 + 2)
    assert _lease(s, "t2", now=T0 + 2) is not None
    assert nack(s, "1", "t2", now=T0 + 3) is TaskState.DEAD
    assert s.dead_total == 2


@pytest.mark.parametrize("where", ["unknown", "ready", "leased", "acked"])
def test_requeue_of_a_task_that_is_not_dead_raises_unknown_task(where: str):
    """requeue of an id that is not in the dead letters raises UnknownTask and changes nothing."""
    s, _ = _leased_one()
    put(s, "ready", now=T0)
    if where == "acked":
        ack(s, "1", "t1", now=T0)
    task_id = {"unknown": "99", "ready": "2", "leased": "1", "acked": "1"}[where]
    before = Unchanged(s)
    with pytest.raises(UnknownTask) as info:
        requeue(s, task_id, now=T0 + 1)
    assert info.value.task_id == task_id
    before.check()


# --- purge -------------------------------------------------------------------------------


def _mixed() -> QueueState:
    """A state with one task in each state: "1" dead, "2" leased, "3" ready, "4" delayed."""
    s = _dead_one()
    put(s, "leased", now=T0)
    assert _lease(s, "t2", now=T0 + 1) is not None
    put(s, "ready", now=T0 + 1)
    put(s, "delayed", delay=100.0, now=T0 + 1)
    return s


def test_purge_removes_every_task_and_keeps_the_counters():
    """purge without states removes every task, returns the count, and keeps the counters."""
    s = _mixed()
    counters = (s.next_seq, s.put_total, s.acked_total, s.dead_total)
    assert purge(s, now=T0 + 2) == 4
    assert s.tasks == {}
    assert (s.next_seq, s.put_total, s.acked_total, s.dead_total) == counters
    assert put(s, "new", now=T0 + 3).id == "5"  # ids are never reused


def test_purge_of_dead_only_keeps_the_other_tasks():
    """purge(states={DEAD}) removes only the dead letters."""
    s = _mixed()
    assert purge(s, states=frozenset({TaskState.DEAD}), now=T0 + 2) == 1
    assert list(s.tasks) == ["2", "3", "4"]
    assert s.tasks["2"].token == "t2"


def test_purge_of_several_states():
    """purge removes exactly the tasks in the given states (delayed tasks are READY)."""
    s = _mixed()
    assert purge(s, states=frozenset({TaskState.READY, TaskState.DEAD}), now=T0 + 2) == 3
    assert list(s.tasks) == ["2"]


@pytest.mark.parametrize(
    "states",
    [None, frozenset({TaskState.DEAD}), frozenset(), frozenset({TaskState.DONE})],
    ids=["all", "dead", "no-states", "done"],
)
def test_purge_of_nothing_changes_nothing(states: frozenset[TaskState] | None):
    """purge that matches no task returns 0 and leaves the state (and revision) as it was."""
    s = QueueState()
    if states is not None:
        put(s, "ready", now=T0)
    before = Unchanged(s)
    assert purge(s, states=states, now=T0) == 0
    before.check()


# --- peek, dead --------------------------------------------------------------------------


def _for_peek() -> QueueState:
    s = QueueState()
    put(s, "a", priority=0, now=T0)  # 1
    put(s, "b", priority=2, delay=9.0, now=T0)  # 2 delayed until T0+9
    put(s, "c", priority=1, now=T0)  # 3
    put(s, "d", priority=0, delay=3.0, now=T0)  # 4 delayed until T0+3
    put(s, "e", priority=1, now=T0)  # 5
    put(s, "f", priority=5, delay=3.0, now=T0)  # 6 delayed until T0+3
    put(s, "g", priority=9, now=T0)  # 7, leased below
    assert _lease(s, "t7") is not None
    return s


def test_peek_orders_eligible_by_priority_and_seq_then_delayed_by_time():
    """peek lists ready tasks in delivery order, then delayed ones by available_at, priority, seq."""
    s = _for_peek()
    assert _ids(peek(s, 100, now=T0)) == ["3", "5", "1", "6", "4", "2"]
    assert _ids(peek(s, 100, now=T0 + 3)) == ["6", "3", "5", "1", "4", "2"]


def test_peek_matches_the_lease_order():
    """The eligible part of peek is the order in which lease delivers."""
    s = _for_peek()
    expected = _ids(peek(s, 100, now=T0 + 3))[:5]
    assert _drain(s, now=T0 + 3) == expected


def test_peek_changes_nothing():
    """peek does not lease, reap or reorder, even with expired leases about."""
    s = _for_peek()
    before = Unchanged(s)
    peek(s, 100, now=T0 + 1000)
    before.check()


@pytest.mark.parametrize(("limit", "count"), [(0, 0), (-3, 0), (2, 2), (6, 6), (100, 6)])
def test_peek_returns_at_most_limit_tasks(limit: int, count: int):
    """peek returns at most limit tasks, none for a zero or negative limit."""
    s = _for_peek()
    assert len(peek(s, limit, now=T0)) == count


def test_peek_leaves_out_leased_and_dead_tasks():
    """peek lists only READY tasks."""
    s = _mixed()
    tasks = peek(s, 10, now=T0 + 2)
    assert _ids(tasks) == ["3", "4"]
    assert {t.state for t in tasks} == {TaskState.READY}


def test_dead_lists_the_dead_letters_in_put_order():
    """dead returns snapshots of the dead tasks in put order."""
    s = QueueState()
    put_many(s, ["a", "b", "c"], max_attempts=1, now=T0)
    for token in ("t1", "t2", "t3"):
        assert _lease(s, token) is not None
    nack(s, "3", "t3", now=T0)
    nack(s, "1", "t1", now=T0)
    assert _ids(dead(s)) == ["1", "3"]
    assert {t.state for t in dead(s)} == {TaskState.DEAD}


# --- stats, next_deadline ------------------------------------------------------------------


def test_stats_counts_each_state():
    """stats counts ready, delayed, leased, expired and dead tasks, and copies the counters."""
    s = _mixed()
    put(s, "expiring", now=T0 + 1)  # 5
    assert _lease(s, "t5", now=T0 + 1, duration=1.0) is not None  # expires T0 + 2
    put(s, "ready2", now=T0 + 1)  # 6
    ack_me = put(s, "acked", priority=9, now=T0 + 1)  # 7
    assert _lease(s, "t7", now=T0 + 1) is not None
    ack(s, ack_me.id, "t7", now=T0 + 1)
    before = Unchanged(s)
    got = stats(s, now=T0 + 2, file_bytes=123)
    assert got == QueueStats(
        ready=2,
        delayed=1,
        leased=1,
        expired=1,
        dead=1,
        put_total=7,
        acked_total=1,
        dead_total=1,
        file_bytes=123,
    )
    assert got.total == len(s.tasks) == 6
    before.check()


def test_stats_of_an_empty_state_is_all_zero():
    """stats of a fresh state counts nothing."""
    assert stats(QueueState(), now=T0) == QueueStats(
        ready=0,
        delayed=0,
        leased=0,
        expired=0,
        dead=0,
        put_total=0,
        acked_total=0,
        dead_total=0,
        file_bytes=0,
    )


def test_stats_sees_a_delayed_task_become_ready_and_a_lease_expire():
    """The same state counts differently at a later now: delays end, leases expire."""
    s = QueueState()
    put(s, "d", delay=5.0, now=T0)
    put(s, "l", now=T0)
    assert _lease(s, "t2", now=T0, duration=5.0) is not None
    early, late = stats(s, now=T0 + 4.9), stats(s, now=T0 + 5.0)
    assert (early.ready, early.delayed, early.leased, early.expired) == (0, 1, 1, 0)
    assert (late.ready, late.delayed, late.leased, late.expired) == (1, 0, 0, 1)


def test_next_deadline_is_none_when_nothing_waits():
    """next_deadline is None for an empty state or one with only ready-now and dead tasks."""
    assert next_deadline(QueueState(), now=T0) is None
    s = _dead_one()
    put(s, "ready", now=T0)
    assert next_deadline(s, now=T0) is None


def test_next_deadline_is_the_earliest_delay_end_or_lease_expiry():
    """next_deadline is the first available_at of a delayed task or expiry of a lease after now."""
    s = QueueState()
    put(s, "d", delay=8.0, now=T0)
    put(s, "l", now=T0)
    assert _lease(s, "t2", now=T0, duration=5.0) is not None
    before = Unchanged(s)
    assert next_deadline(s, now=T0) == T0 + 5.0
    assert next_deadline(s, now=T0 + 5.0) == T0 + 8.0  # the expiry is not after now
    assert next_deadline(s, now=T0 + 8.0) is None
    before.check()


def test_next_deadline_ignores_dead_tasks():
    """A dead task never changes by itself, so it adds no deadline."""
    s = _dead_one()
    assert next_deadline(s, now=T0 - 100) is None


# --- apply -------------------------------------------------------------------------------


def _apply_cases() -> dict[str, tuple[ops.Op[object], Callable[[QueueState, float], object]]]:
    """Each operation next to the direct call it stands for, as the client API sees its result."""
    dead_only = frozenset({TaskState.DEAD})
    return {
        "put": (
            Put(payload={"x": 1}, priority=2, delay=1.5, max_attempts=3),
            lambda s, now: [put(s, {"x": 1}, priority=2, delay=1.5, max_attempts=3, now=now).id],
        ),
        "put_many": (
            PutMany(payloads=("a", "b"), priority=1, delay=0.5, max_attempts=2),
            lambda s, now: _ids(put_many(s, ("a", "b"), priority=1, delay=0.5, max_attempts=2, now=now)),
        ),
        "put_many_empty": (PutMany(payloads=()), lambda s, now: _ids(put_many(s, (), now=now))),
        "lease": (
            LeaseNext(token="tn", owner="o", duration=4.0),
            lambda s, now: lease(s, token="tn", owner="o", duration=4.0, now=now),
        ),
        "lease_many": (
            LeaseMany(tokens=("ta", "tb", "tc"), owner="o", duration=4.0),
            lambda s, now: lease_many(s, tokens=("ta", "tb", "tc"), owner="o", duration=4.0, now=now),
        ),
        "ack": (Ack(id="2", token="t2"), lambda s, now: ack(s, "2", "t2", now=now)),
        "ack_many": (
            AckMany(leases=(("2", "t2"), ("3", "zz"))),
            lambda s, now: ack_many(s, (("2", "t2"), ("3", "zz")), now=now),
        ),
        "ack_stale": (Ack(id="2", token="zz"), lambda s, now: ack(s, "2", "zz", now=now)),
        "nack": (Nack(id="2", token="t2", delay=3.0), lambda s, now: nack(s, "2", "t2", delay=3.0, now=now)),
        "nack_stale": (Nack(id="3", token="t2"), lambda s, now: nack(s, "3", "t2", now=now)),
        "release": (Release(id="2", token="t2"), lambda s, now: release(s, "2", "t2", now=now)),
        "pop": (Pop(), lambda s, now: pop(s, now=now)),
        "ack_lease": (
            AckLease(id="2", token="t2", next_token="tn", owner="o", duration=4.0),
            lambda s, now: ack_lease(s, "2", "t2", next_token="tn", owner="o", duration=4.0, now=now),
        ),
        "ack_lease_stale": (
            AckLease(id="2", token="zz", next_token="tn", owner="o", duration=4.0),
            lambda s, now: ack_lease(s, "2", "zz", next_token="tn", owner="o", duration=4.0, now=now),
        ),
        "extend": (
            Extend(id="2", token="t2", duration=7.0),
            lambda s, now: extend(s, "2", "t2", duration=7.0, now=now),
        ),
        "extend_stale": (
            Extend(id="9", token="t2", duration=7.0),
            lambda s, now: extend(s, "9", "t2", duration=7.0, now=now),
        ),
        "requeue": (Requeue(id="1"), lambda s, now: requeue(s, "1", now=now)),
        "requeue_unknown": (Requeue(id="3"), lambda s, now: requeue(s, "3", now=now)),
        "purge": (Purge(), lambda s, now: purge(s, now=now)),
        "purge_dead": (Purge(states=dead_only), lambda s, now: purge(s, states=dead_only, now=now)),
        "reap": (Reap(), lambda s, now: reap(s, now=now)),
        "stats": (Stats(), lambda s, now: stats(s, now=now)),
        "peek": (Peek(limit=3), lambda s, now: peek(s, 3, now=now)),
        "dead": (Dead(), lambda s, now: dead(s)),
    }


APPLY_CASES = _apply_cases()


@pytest.mark.parametrize("now", [T0 + 1, T0 + 100], ids=["lease-live", "lease-expired"])
@pytest.mark.parametrize("name", list(APPLY_CASES))
def test_apply_gives_the_same_result_and_state_as_the_direct_call(name: str, now: float):
    """apply(op) returns (or raises) the API's form of the direct call's result, leaving the same state."""
    op, direct = APPLY_CASES[name]
    via_op, via_call = _mixed(), _mixed()

    def outcome(run: Callable[[], object]) -> tuple[str, object]:
        try:
            return "returned", run()
        except (LeaseLost, UnknownTask) as exc:
            return "raised", (type(exc), exc.args, exc.task_id)

    got = outcome(lambda: apply(via_op, op, now=now))
    expected = outcome(lambda: direct(via_call, now))
    assert got == expected
    assert via_op == via_call
    assert encode(via_op) == encode(via_call)


READ_CASES = [name for name, (op, _) in APPLY_CASES.items() if not op.writes]


@pytest.mark.parametrize("now", [T0 + 1, T0 + 100], ids=["lease-live", "lease-expired"])
@pytest.mark.parametrize("name", READ_CASES)
def test_apply_of_a_read_operation_changes_nothing(name: str, now: float):
    """An operation that does not write (``writes`` False) leaves the state and its revision alone."""
    op, _ = APPLY_CASES[name]
    s = _mixed()
    before = Unchanged(s)
    apply(s, op, now=now)
    before.check()


def test_apply_returns_ids_for_puts_not_snapshots():
    """Put and PutMany give the client API's result through apply: the new ids, as strings."""
    s = QueueState()
    assert apply(s, Put(payload="a"), now=T0) == ["1"]
    assert apply(s, PutMany(payloads=("b", "c"), delay=2.0), now=T0) == ["2", "3"]
    assert apply(s, PutMany(payloads=()), now=T0) == []
    assert [(r.payload, r.available_at) for r in s.tasks.values()] == [
        ("a", T0),
        ("b", T0 + 2),
        ("c", T0 + 2),
    ]


def test_apply_cases_cover_every_rule_and_every_rule_every_operation_but_check():
    """The apply test above has a case for every rule, and RULES has one for every operation but check."""
    assert {type(op) for op, _ in APPLY_CASES.values()} == set(RULES)
    assert set(RULES) == set(ops.OPS.values()) - {ops.Check}
    assert sorted(READ_CASES) == ["dead", "peek", "stats"]


def test_apply_refuses_an_operation_without_a_rule():
    """check is the storage's operation, not a rule of the state: apply raises TypeError, changes nothing."""
    s = _mixed()
    before = Unchanged(s)
    with pytest.raises(TypeError):
        apply(s, ops.Check(), now=T0)
    before.check()


# --- operations validate their fields when built ---------------------------------------------


BAD_OPS: dict[str, Callable[[], object]] = {
    "empty-token": lambda: LeaseNext(token="", owner="o", duration=1.0),
    "empty-owner": lambda: LeaseNext(token="t", owner="", duration=1.0),
    "int-token": lambda: LeaseNext(token=1, owner="o", duration=1.0),
    "zero-duration": lambda: LeaseNext(token="t", owner="o", duration=0.0),
    "long-duration": lambda: LeaseNext(token="t", owner="o", duration=43_200.001),
    "nan-duration": lambda: LeaseNext(token="t", owner="o", duration=float("nan")),
    "list-tokens": lambda: LeaseMany(tokens=["a"], owner="o", duration=1.0),
    "no-tokens": lambda: LeaseMany(tokens=(), owner="o", duration=1.0),
    "an-empty-token": lambda: LeaseMany(tokens=("a", ""), owner="o", duration=1.0),
    "list-leases": lambda: AckMany(leases=[("1", "t")]),
    "short-lease": lambda: AckMany(leases=(("1",),)),
    "lease-empty-token": lambda: AckMany(leases=(("1", ""),)),
    "list-payloads": lambda: PutMany(payloads=["a"]),
    "negative-delay": lambda: Put(payload=1, delay=-1.0),
    "infinite-delay": lambda: Put(payload=1, delay=float("inf")),
    "delay-over-a-century": lambda: Put(payload=1, delay=MAX_DELAY * 2),
    "nan-delay": lambda: PutMany(payloads=(1,), delay=float("nan")),
    "priority-2**63": lambda: Put(payload=1, priority=1 << 63),
    "priority-below-int64": lambda: Put(payload=1, priority=-(1 << 63) - 1),
    "bool-priority": lambda: Put(payload=1, priority=True),
    "zero-attempts": lambda: Put(payload=1, max_attempts=0),
    "nack-negative-delay": lambda: Nack(id="1", token="t", delay=-0.5),
    "extend-zero": lambda: Extend(id="1", token="t", duration=0.0),
    "int-id": lambda: Requeue(id=1),
    "int-lease-id": lambda: AckMany(leases=((1, "t"),)),
    "set-states": lambda: Purge(states={TaskState.DEAD}),
    "string-states": lambda: Purge(states=frozenset({"dead"})),
}


@pytest.mark.parametrize("name", list(BAD_OPS))
def test_an_operation_with_a_bad_field_is_refused_when_built(name: str):
    """A bad field raises ConfigError when the operation is built, before it reaches any state."""
    with pytest.raises(ConfigError):
        BAD_OPS[name]()


def test_an_id_no_task_has_is_refused_by_the_rule_not_when_built():
    """Any string is an id (even ""): an operation on a missing task is refused by its rule."""
    s = _mixed()
    before = Unchanged(s)
    with pytest.raises(LeaseLost):
        apply(s, Ack(id="", token="t2"), now=T0 + 2)
    with pytest.raises(UnknownTask):
        apply(s, Requeue(id=""), now=T0 + 2)
    assert apply(s, AckMany(leases=(("", "t2"),)), now=T0 + 2) == [""]
    before.check()


def test_operations_at_their_limits_are_accepted():
    """The edges of the documented ranges are valid operations."""
    LeaseNext(token="t", owner="o", duration=0.001)
    LeaseNext(token="t", owner="o", duration=43_200.0)
    Put(payload=None, delay=0.0, priority=(1 << 63) - 1)
    Put(payload=None, delay=MAX_DELAY, priority=-(1 << 63))
    Purge(states=frozenset())
    Purge(states=None)


@pytest.mark.parametrize(
    "build",
    [
        lambda: LeaseNext(token="t", owner="o", duration=None),
        lambda: LeaseMany(tokens=("t",), owner="o", duration=None),
        lambda: Extend(id="1", token="t", duration=None),
        lambda: Put(payload=1, delay=None),
        lambda: PutMany(payloads=(1,), delay=None),
        lambda: Nack(id="1", token="t", delay=None),
    ],
    ids=["lease", "lease_many", "extend", "put", "put_many", "nack"],
)
def test_a_missing_duration_or_delay_is_refused_when_built(build: Callable[[], object]):
    """None is no duration and no delay: refused when built, not a TypeError inside a rule."""
    with pytest.raises(ConfigError):
        build()


def test_a_lease_without_duration_leaves_the_state_as_it_was():
    """Whether refused when built or by the rule, a lease with no duration changes nothing."""
    s = QueueState()
    put(s, "a", now=T0)
    before = Unchanged(s)
    with pytest.raises((ConfigError, TypeError)):
        apply(s, LeaseNext(token="t", owner="o", duration=None), now=T0)
    before.check()


# --- revision ------------------------------------------------------------------------------


def test_revision_rises_on_every_change():
    """Every transition that changes something raises revision."""
    s = QueueState()
    steps: list[Callable[[], object]] = [
        lambda: put(s, "a", max_attempts=1, now=T0),
        lambda: put_many(s, ["b", "c"], now=T0),
        lambda: _lease(s, "t1"),
        lambda: extend(s, "1", "t1", duration=1.0, now=T0),
        lambda: nack(s, "1", "t1", now=T0),  # to DEAD
        lambda: requeue(s, "1", now=T0),
        lambda: _lease(s, "t1b"),
        lambda: reap(s, now=T0 + LEASE),  # "1" to DEAD
        lambda: _lease(s, "t2"),
        lambda: ack(s, "2", "t2", now=T0),
        lambda: purge(s, states=frozenset({TaskState.DEAD}), now=T0),
        lambda: purge(s, now=T0),
    ]
    revisions = [s.revision]
    for step in steps:
        step()
        revisions.append(s.revision)
    assert all(b > a for a, b in itertools.pairwise(revisions)), revisions


def test_lease_that_only_reclaims_raises_revision():
    """A lease that only moves an expired lease to the dead letters raises revision, returning None."""
    s, _ = _leased_one(max_attempts=1)
    rev = s.revision
    assert _lease(s, "t2", now=T0 + LEASE) is None
    assert s.tasks["1"].state is TaskState.DEAD
    assert s.revision > rev


def test_revision_does_not_move_on_no_ops():
    """Calls that change nothing leave revision (and everything else) as it was."""
    s = _mixed()
    assert _lease(s, "tx", now=T0 + 2) is not None  # "3" leased: a change, not a no-op
    before = Unchanged(s)
    assert _lease(s, "ty", now=T0 + 2) is None  # nothing ready: no-op
    assert purge(s, states=frozenset({TaskState.DONE}), now=T0 + 2) == 0
    assert reap(s, now=T0 + 2) == []
    assert put_many(s, [], now=T0 + 2) == []
    peek(s, 10, now=T0 + 2)
    stats(s, now=T0 + 2)
    next_deadline(s, now=T0 + 2)
    dead(s)
    with pytest.raises(LeaseLost):
        ack(s, "3", "wrong", now=T0 + 2)
    with pytest.raises(UnknownTask):
        requeue(s, "3", now=T0 + 2)
    before.check()


def test_revision_stays_put_on_an_empty_state():
    """Lease, purge and reap on an empty state do not raise revision."""
    s = QueueState()
    _lease(s, "t1")
    purge(s, now=T0)
    reap(s, now=T0)
    assert s.revision == 0


# --- the transition table ----------------------------------------------------------------

#: The state changes that are a plain function of (state, operation): what a task in one
#: live state becomes when its holder (token "t1") performs the operation on it. Attempts,
#: dead letters, token checks and order are explicit code in djq.state, tested above. This
#: table used to be djq.state.TRANSITIONS; it lives here now, as the functions' specification.
TRANSITIONS: dict[tuple[TaskState, type[ops.Op[object]]], TaskState] = {
    (TaskState.READY, LeaseNext): TaskState.LEASED,
    (TaskState.LEASED, Ack): TaskState.DONE,
    (TaskState.LEASED, Nack): TaskState.READY,  # DEAD when attempts run out
    (TaskState.LEASED, Release): TaskState.READY,  # never DEAD: the delivery is not counted
    (TaskState.LEASED, Reap): TaskState.READY,  # DEAD when attempts run out
    (TaskState.LEASED, Extend): TaskState.LEASED,
    (TaskState.DEAD, Requeue): TaskState.READY,
}

_LIVE_STATES = (TaskState.READY, TaskState.LEASED, TaskState.DEAD)
_TASK_OPS: tuple[type[ops.Op[object]], ...] = (LeaseNext, Ack, Nack, Release, Extend, Requeue, Reap)


def _one_task_in(state: TaskState) -> QueueState:
    """A state whose only task "1" is in ``state``, with plenty of attempts left (unless DEAD)."""
    if state is TaskState.DEAD:
        return _dead_one()
    if state is TaskState.LEASED:
        return _leased_one()[0]
    s = QueueState()
    put(s, "a", now=T0)
    return s


# The lease from _leased_one has expired by T0 + LEASE, but is not reclaimed: only reap runs then.
_TASK_OP_CALLS: dict[type[ops.Op[object]], tuple[ops.Op[object], float, Callable[[QueueState], object]]] = {
    LeaseNext: (
        LeaseNext(token="fresh", owner="w1", duration=LEASE),
        T0 + 1,
        lambda s: _lease(s, "fresh", now=T0 + 1),
    ),
    Ack: (Ack(id="1", token="t1"), T0 + 1, lambda s: ack(s, "1", "t1", now=T0 + 1)),
    Nack: (Nack(id="1", token="t1"), T0 + 1, lambda s: nack(s, "1", "t1", now=T0 + 1)),
    Release: (Release(id="1", token="t1"), T0 + 1, lambda s: release(s, "1", "t1", now=T0 + 1)),
    Extend: (
        Extend(id="1", token="t1", duration=1.0),
        T0 + 1,
        lambda s: extend(s, "1", "t1", duration=1.0, now=T0 + 1),
    ),
    Requeue: (Requeue(id="1"), T0 + 1, lambda s: requeue(s, "1", now=T0 + 1)),
    Reap: (Reap(), T0 + LEASE, lambda s: reap(s, now=T0 + LEASE)),
}


def _do(s: QueueState, op: type[ops.Op[object]], via: str) -> None:
    """Perform ``op`` on task "1" as its holder would, by the function or through apply; swallow refusals."""
    built, now, call = _TASK_OP_CALLS[op]
    try:
        if via == "function":
            call(s)
        else:
            apply(s, built, now=now)
    except (LeaseLost, UnknownTask):
        pass


@pytest.mark.parametrize("via", ["function", "apply"])
@pytest.mark.parametrize("op", _TASK_OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("start", _LIVE_STATES, ids=str)
def test_transitions_table_agrees_with_the_functions(start: TaskState, op: type[ops.Op[object]], via: str):
    """A task moves to TRANSITIONS[(state, op)] when listed, and is left alone otherwise."""
    s = _one_task_in(start)
    before = Unchanged(s)
    _do(s, op, via)
    record = s.tasks.get("1")
    got = TaskState.DONE if record is None else record.state
    if (start, op) in TRANSITIONS:
        assert got is TRANSITIONS[start, op]
    else:
        assert got is start
        before.check()


def test_transitions_table_names_only_task_events_and_live_states():
    """TRANSITIONS starts only from live states, names only task operations, and ends DONE only by ack."""
    assert {state for state, _ in TRANSITIONS} <= set(_LIVE_STATES)
    assert {op for _, op in TRANSITIONS} <= set(_TASK_OPS)
    assert set(_TASK_OPS) == set(_TASK_OP_CALLS)
    assert all(op in ops.OPS.values() and op.writes for op in _TASK_OPS)
    assert [key for key, end in TRANSITIONS.items() if end is TaskState.DONE] == [(TaskState.LEASED, Ack)]


def test_a_lease_extended_back_to_an_earlier_expiry_is_reclaimed_once():
    """Found by the model test: extend 1.0, 0.5, 1.0 left two index entries for one lease."""
    s = state.QueueState()
    state.put(s, "x", max_attempts=1, now=0.0)
    task = state.lease(s, token="t", owner="o", duration=0.5, now=0.0)
    for duration in (1.0, 0.5, 1.0):
        state.extend(s, task.id, "t", duration=duration, now=0.0)
    assert state.reap(s, now=1.0) == [task.id]
    assert (s.dead_total, state.stats(s, now=1.0).dead) == (1, 1)


def test_lease_many_leases_in_delivery_order_and_stops_when_none_is_ready():
    """lease_many gives each task its own token, highest priority first, and fewer when fewer are ready."""
    s = QueueState()
    put_many(s, ["a", "b"], now=T0)
    put(s, "c", priority=1, now=T0)
    got = lease_many(s, tokens=("x", "y", "z", "w"), owner="o", duration=5.0, now=T0)
    assert [(t.payload, t.token) for t in got] == [("c", "x"), ("a", "y"), ("b", "z")]
    assert lease_many(s, tokens=("v",), owner="o", duration=5.0, now=T0) == []


def test_ack_many_acks_what_is_held_and_returns_the_lost():
    """ack_many acks every lease that still holds and names the others; it never raises."""
    s = QueueState()
    put_many(s, ["a", "b"], now=T0)
    first, second = lease_many(s, tokens=("x", "y"), owner="o", duration=5.0, now=T0)
    assert ack_many(s, [(first.id, "x"), (second.id, "stale")], now=T0) == [second.id]
    assert (s.acked_total, first.id in s.tasks, second.id in s.tasks) == (1, False, True)


# --- the wall clock stepping back (RELIABILITY row 17) -------------------------------------

BACK = 3600.0  # the wall clock steps back an hour


def _fresh_index(s: QueueState) -> QueueState:
    """The same tasks with the index rebuilt from them (what a process that just loaded sees)."""
    s.index = None
    return s


@pytest.mark.parametrize("reload", [False, True], ids=["indexed", "reloaded"])
def test_a_task_put_without_a_delay_is_available_when_the_clock_steps_back(reload: bool):
    """Put at T0 without a delay, then the clock reads an hour earlier: ready, listed and leased."""
    s = QueueState()
    put(s, "a", now=T0)
    if reload:
        _fresh_index(s)
    now = T0 - BACK
    assert state.has_work(s, now=now)
    assert next_deadline(s, now=now) is None  # nothing to wait for: it is ready
    assert (stats(s, now=now).ready, stats(s, now=now).delayed) == (1, 0)
    assert _ids(peek(s, 10, now=now)) == ["1"]
    task = _lease(s, "t1", now=now)
    assert task is not None
    assert (task.id, task.lease_expires_at) == ("1", now + LEASE)


def test_undelayed_tasks_are_not_held_behind_a_delayed_one_when_the_clock_steps_back():
    """A delayed task first in time must not block the undelayed ones put after it."""
    s = QueueState()
    put(s, "delayed", delay=5.0, now=T0)
    put(s, "now", now=T0 + 1)
    put(s, "now too", priority=-1, now=T0 + 2)
    now = T0 - BACK
    assert (stats(s, now=now).ready, stats(s, now=now).delayed) == (2, 1)
    assert _ids(peek(s, 10, now=now)) == ["2", "3", "1"]  # delayed ones last
    assert _drain(s, now=now) == ["2", "3"]
    assert not state.has_work(s, now=now)


def test_a_delay_is_still_honoured_when_the_clock_steps_back():
    """A delayed task waits for its available_at: longer, by at most the step back."""
    s = QueueState()
    put(s, "d", delay=5.0, now=T0)
    assert _lease(s, "t1", now=T0 - BACK) is None
    assert not state.has_work(s, now=T0 + 4.999)
    assert next_deadline(s, now=T0 - BACK) == T0 + 5.0
    task = _lease(s, "t2", now=T0 + 5.0)
    assert task is not None


def test_a_lease_still_expires_by_its_deadline_when_the_clock_steps_back():
    """A lease lasts longer (until its deadline) when the clock steps back; then the task is ready at once."""
    s, _ = _leased_one()
    assert reap(s, now=T0 - BACK) == []
    assert _lease(s, "t2", now=T0 - BACK) is None
    assert (stats(s, now=T0 - BACK).leased, stats(s, now=T0 - BACK).ready) == (1, 0)
    again = _lease(s, "t3", now=T0 + LEASE)
    assert again is not None
    assert (again.id, again.attempts) == ("1", 2)


def test_a_reclaimed_undelayed_task_is_available_after_the_clock_steps_back():
    """Reclaimed at its deadline, the task keeps available_at == enqueued_at: ready whatever the clock."""
    s, _ = _leased_one()
    assert reap(s, now=T0 + LEASE) == ["1"]
    assert state.has_work(s, now=T0 - BACK)
    assert _ids(peek(s, 10, now=T0 - BACK)) == ["1"]
    assert _lease(s, "t2", now=T0 - BACK) is not None


@pytest.mark.parametrize("reload", [False, True], ids=["indexed", "reloaded"])
def test_a_task_given_back_while_the_clock_is_behind_stays_available(reload: bool):
    """nack(delay=0) and requeue at a clock behind the put: available as the clock steps back further."""
    s, _ = _leased_one(max_attempts=2)
    put(s, "b", now=T0)
    assert nack(s, "1", "t1", now=T0 - BACK) is TaskState.READY
    task = _lease(s, "t2", now=T0 - BACK)
    assert task is not None
    assert task.id == "1"
    assert nack(s, "1", "t2", now=T0 - BACK) is TaskState.DEAD
    requeue(s, "1", now=T0 - BACK)
    if reload:
        _fresh_index(s)
    now = T0 - 2 * BACK
    assert (stats(s, now=now).ready, stats(s, now=now).delayed) == (2, 0)
    assert _drain(s, now=now) == ["1", "2"]


@pytest.mark.parametrize("reload", [False, True], ids=["indexed", "reloaded"])
@pytest.mark.parametrize("give_back", ["nack", "requeue", "reap"])
def test_a_task_given_back_without_a_delay_stays_available_when_the_clock_then_steps_back(give_back, reload):
    """Given back at T0 + 50 without a delay (nack, requeue, an expired lease), then the clock steps back."""
    s, _ = _leased_one(max_attempts=1 if give_back == "requeue" else 2)
    if give_back == "reap":
        assert reap(s, now=T0 + 50) == ["1"]
    else:
        nack(s, "1", "t1", now=T0 + 50)
    if give_back == "requeue":
        requeue(s, "1", now=T0 + 50)
    if reload:
        _fresh_index(s)
    now = T0 + 50 - BACK
    assert (stats(s, now=now).ready, stats(s, now=now).delayed) == (1, 0)
    assert next_deadline(s, now=now) is None
    assert _drain(s, now=now) == ["1"]


def test_a_delayed_task_reclaimed_after_its_lease_is_available_when_the_clock_then_steps_back():
    """Put with a delay, leased, its lease expired: it was available, so it is again, whatever the clock."""
    s = QueueState()
    put(s, "d", delay=5.0, now=T0)
    assert _lease(s, "t1", now=T0 + 5.0) is not None
    assert reap(s, now=T0 + 5.0 + LEASE) == ["1"]
    assert _drain(s, now=T0 - BACK) == ["1"]


@pytest.mark.parametrize("reload", [False, True], ids=["indexed", "reloaded"])
def test_a_lease_outliving_the_longest_lease_after_the_clock_steps_back_is_clamped(reload):
    """RELIABILITY row 17: the clock steps back 30 days; the lease ends MAX_LEASE_DURATION on."""
    s, first = _leased_one(max_attempts=3)
    back = T0 - 30 * 86400.0
    if reload:
        _fresh_index(s)
    assert _lease(s, "t2", now=back) is None  # the lease is still held: clamped, not reclaimed
    assert s.tasks["1"].lease_expires_at == back + MAX_LEASE_DURATION
    assert next_deadline(s, now=back) == back + MAX_LEASE_DURATION
    assert _lease(s, "t3", now=back + MAX_LEASE_DURATION - 1) is None
    again = _lease(s, "t4", now=back + MAX_LEASE_DURATION)
    assert again is not None
    assert (again.id, again.attempts) == ("1", 2)
    with pytest.raises(LeaseLost):
        ack(s, "1", first.token, now=back + MAX_LEASE_DURATION)  # the first holder's ack changes nothing
    ack(s, "1", "t4", now=back + MAX_LEASE_DURATION)
    assert (len(s.tasks), s.acked_total) == (0, 1)


def test_a_clamped_lease_can_still_be_acked_by_its_holder():
    """Clamping shortens a lease; its token still holds the task until then."""
    s, first = _leased_one()
    back = T0 - 30 * 86400.0
    assert reap(s, now=back) == []
    assert s.tasks["1"].lease_expires_at == back + MAX_LEASE_DURATION
    ack(s, "1", first.token, now=back + 1.0)
    assert s.acked_total == 1


def test_leases_within_the_longest_lease_are_never_touched_by_the_clamp():
    """Without a step back beyond MAX_LEASE_DURATION, reap changes nothing that has not expired."""
    s, _ = _leased_one()
    revision = s.revision
    assert reap(s, now=T0 - 3600.0) == []
    assert (s.tasks["1"].lease_expires_at, s.revision) == (T0 + LEASE, revision)


def test_the_clock_stepping_back_through_apply_changes_only_what_it_should():
    """Through the operations (what journal replay runs): stats, peek and lease agree after a step back."""
    s = QueueState()
    apply(s, PutMany(payloads=("a", "b")), now=T0)
    apply(s, Put(payload="c", delay=30.0), now=T0)
    now = T0 - BACK
    counts = apply(s, Stats(), now=now)
    assert (counts.ready, counts.delayed) == (2, 1)
    assert _ids(apply(s, Peek(limit=10), now=now)) == ["1", "2", "3"]
    leased = apply(s, LeaseMany(tokens=("x", "y", "z"), owner="o", duration=1.0), now=now)
    assert _ids(leased) == ["1", "2"]


def test_advance_makes_the_change_apply_makes_without_its_result():
    """A journal's replay uses ``advance``: every operation leaves the state exactly as ``apply`` does."""
    script: list[tuple[ops.Op, float]] = [
        (PutMany(payloads=({"n": 1}, "two", [3])), 1.0),
        (Put(payload="four", priority=2), 1.0),
        (LeaseNext(token="a", owner="w", duration=5.0), 2.0),
        (LeaseMany(tokens=("b", "c", "d"), owner="w", duration=5.0), 2.0),
        (AckLease(id="4", token="a", next_token="e", owner="w", duration=5.0), 3.0),
        (Ack(id="1", token="b"), 3.0),
        (Nack(id="2", token="c", delay=1.0), 3.0),
        (Extend(id="3", token="d", duration=9.0), 3.0),
        (LeaseNext(token="f", owner="v", duration=1.0), 20.0),  # reclaims what expired
        (Pop(), 21.0),
        (Reap(), 40.0),
        (LeaseNext(token="g", owner="v", duration=1.0), 41.0),  # nothing ready: a reclaim only
    ]
    applied, advanced = QueueState(), QueueState()
    for op, now in script:
        apply(applied, op, now=now)
        assert state.advance(advanced, op, now=now) is None
        assert advanced == applied, op
        assert advanced.revision == applied.revision
    with pytest.raises(LeaseLost):
        state.advance(advanced, Ack(id="1", token="b"), now=50.0)
