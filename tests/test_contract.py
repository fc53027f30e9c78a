"""The queue's contract, written once and run against every client.

Every kind of ``conftest.CLIENT_KINDS``: the direct ``Queue`` in each lock kind and
storage, the broker, PostgreSQL and Redis. The few tests about the queue file itself run
on the file's clients only (``FILE_KINDS``).
"""

from __future__ import annotations

import threading

import pytest
from conftest import FILE_KINDS

import djq
from djq import TaskState


@pytest.fixture
def queue(open_queue):
    """The client under test (overrides the direct-only fixture of conftest)."""
    return open_queue()


def test_put_returns_after_the_task_is_in_the_queue(queue, open_queue):
    """Once put returns, another client opening the queue sees the task."""
    task_id = queue.put({"n": 1})
    other = open_queue()
    assert [t.id for t in other.peek(10)] == [task_id]
    assert other.peek(1)[0].payload == {"n": 1}


def test_highest_priority_first_then_fifo(queue):
    """Order: highest priority first, first in first out within a priority."""
    low = queue.put_many(["a", "b"])
    high = queue.put("c", priority=5)
    also_low = queue.put("d")
    got = [queue.get().id for _ in range(4)]
    assert got == [high, *low, also_low]


def test_get_on_an_empty_queue_returns_none(queue):
    """Empty is a value: get returns None, it does not raise."""
    assert queue.get() is None


def test_delayed_task_waits_for_its_time(queue, clock):
    """A task put with a delay is not delivered before its time."""
    queue.put("later", delay=10.0)
    assert queue.get() is None
    assert queue.stats().delayed == 1
    clock.advance(10.0)
    assert queue.get().payload == "later"


def test_unacked_task_comes_back_after_its_lease_with_attempts_raised(queue, clock):
    """At-least-once: a lease that expires delivers the task again."""
    queue.put("x")
    first = queue.get(lease=5.0)
    assert queue.get() is None
    clock.advance(5.0)
    second = queue.get()
    assert (second.id, second.attempts) == (first.id, 2)
    assert second.token != first.token


def test_ack_after_the_task_was_leased_again_raises_lease_lost(queue, clock):
    """The old holder's ack fails instead of acking someone else's work."""
    queue.put("x")
    stale = queue.get(lease=1.0)
    clock.advance(1.0)
    fresh = queue.get()
    with pytest.raises(djq.LeaseLost) as info:
        queue.ack(stale)
    assert info.value.task_id == stale.id
    queue.ack(fresh)
    assert queue.stats().acked_total == 1


def test_acked_task_is_never_delivered_again(queue, clock):
    """After an ack the task is gone, even long after its lease would have expired."""
    queue.put("x")
    queue.ack(queue.get(lease=1.0))
    clock.advance(100.0)
    assert queue.get() is None
    with pytest.raises(djq.LeaseLost):
        queue.nack(djq.Lease(id="1", token="whatever"))


def test_expired_lease_not_yet_reclaimed_can_still_be_acked(queue, clock):
    """A lease past its expiry still holds until someone else leases the task."""
    queue.put("x")
    task = queue.get(lease=1.0)
    clock.advance(2.0)
    queue.ack(task)
    assert queue.stats().acked_total == 1


def test_task_goes_to_dead_letters_after_max_attempts(open_queue, clock):
    """After max_attempts deliveries without an ack, nack returns DEAD and the task is dead."""
    q = open_queue(max_attempts=2)
    task_id = q.put("poison")
    assert q.nack(q.get()) is TaskState.READY
    assert q.nack(q.get()) is TaskState.DEAD
    assert q.get() is None
    assert [t.id for t in q.dead()] == [task_id]
    assert q.stats().dead_total == 1


def test_expired_lease_on_the_last_attempt_goes_to_dead_letters(open_queue, clock):
    """Expiry counts like a nack: the last delivery's expiry sends the task to the dead letters."""
    q = open_queue(max_attempts=2)
    q.put("slow")
    q.get(lease=1.0)
    clock.advance(1.0)
    q.get(lease=1.0)
    clock.advance(1.0)
    assert q.get() is None
    assert q.stats().dead == 1


def test_requeued_dead_task_is_delivered_again_with_attempts_reset(open_queue, clock):
    """Dead letters can be inspected and requeued."""
    q = open_queue(max_attempts=2)
    task_id = q.put("poison")
    q.nack(q.get())
    q.nack(q.get())
    assert q.requeue(task_id).attempts == 0
    assert q.get().attempts == 1
    with pytest.raises(djq.UnknownTask):
        q.requeue(task_id)


def test_release_gives_a_task_back_uncounted_in_its_place(open_queue, clock):
    """release: the task is ready at once, first in line, its delivery not counted (never dead for it)."""
    q = open_queue(max_attempts=1)
    first, second = q.put("first"), q.put("second")
    task = q.get()
    assert task.id == first
    assert q.release(task) is None
    stats = q.stats()
    assert (stats.ready, stats.leased, stats.dead) == (2, 0, 0)
    again = q.get()
    assert (again.id, again.attempts) == (first, 1)
    with pytest.raises(djq.LeaseLost):
        q.release(task)  # its token no longer holds the task
    q.ack(again)
    assert q.get().id == second


def test_pop_takes_tasks_for_good_in_delivery_order(queue, clock):
    """pop: priority then FIFO, the task gone at once (counted as acked), None when nothing is ready."""
    low, high = queue.put("low"), queue.put("high", priority=5)
    queue.put("later", delay=10.0)
    first = queue.pop()
    assert (first.id, first.payload, first.state, first.attempts) == (high, "high", TaskState.DONE, 1)
    assert queue.pop().id == low
    assert queue.pop() is None
    stats = queue.stats()
    assert (stats.ready, stats.delayed, stats.leased, stats.acked_total) == (0, 1, 0, 2)
    clock.advance(10.0)
    assert queue.pop().payload == "later"


def test_pop_reclaims_an_expired_lease(queue, clock):
    """A task whose lease expired can be popped: the lease is reclaimed first."""
    queue.put("x")
    queue.get(lease=1.0)
    assert queue.pop() is None
    clock.advance(1.0)
    assert queue.pop().attempts == 2


def test_ack_and_get_acks_and_leases_the_next_in_one_call(queue, clock):
    """ack_and_get: the ack is done, the next task leased; a stale token raises and leases nothing."""
    first_id, second_id = queue.put("first"), queue.put("second")
    first = queue.get()
    second = queue.ack_and_get(first, lease=5.0)
    assert (second.id, second.attempts) == (second_id, 1)
    assert second.lease_expires_at == clock() + 5.0
    with pytest.raises(djq.LeaseLost):
        queue.ack_and_get(first)  # its lease is gone: nothing else happens
    stats = queue.stats()
    assert (stats.leased, stats.acked_total) == (1, 1)
    assert queue.ack_and_get(second) is None  # acked; nothing was left to lease
    assert queue.stats().acked_total == 2
    assert first_id not in {t.id for t in queue.peek()}


def test_nack_with_delay_hides_the_task_until_then(queue, clock):
    """A nacked task comes back after the delay asked for."""
    queue.put("x")
    assert queue.nack(queue.get(), delay=3.0) is TaskState.READY
    assert queue.get() is None
    clock.advance(3.0)
    assert queue.get().attempts == 2


def test_extend_keeps_the_task_leased(queue, clock):
    """extend moves the expiry: the task is not redelivered at the old time."""
    queue.put("x")
    task = queue.get(lease=2.0)
    clock.advance(1.5)
    renewed = queue.extend(task, lease=10.0)
    assert renewed.lease_expires_at == clock.now + 10.0
    clock.advance(5.0)
    assert queue.get() is None
    queue.ack(renewed)


def test_extend_after_the_task_was_leased_again_raises_lease_lost(queue, clock):
    """A stale token cannot extend someone else's lease."""
    queue.put("x")
    stale = queue.get(lease=1.0)
    clock.advance(1.0)
    queue.get()
    with pytest.raises(djq.LeaseLost):
        queue.extend(stale)


def test_bad_payload_is_refused_and_nothing_is_written(queue):
    """A payload that is not JSON is refused before anything is written."""
    with pytest.raises(djq.PayloadError):
        queue.put({1, 2})
    with pytest.raises(djq.PayloadError):
        queue.put(float("nan"))
    assert queue.stats().put_total == 0


@pytest.mark.parametrize("client_kind", FILE_KINDS)
def test_bad_payload_leaves_no_file(queue, queue_path):
    """A payload that is not JSON is refused before the file is touched."""
    with pytest.raises(djq.PayloadError):
        queue.put({1, 2})
    assert not queue_path.exists()


def test_bad_options_raise_config_error_naming_the_field(queue):
    """Invalid options fail loudly, naming what was wrong, before any I/O."""
    with pytest.raises(djq.ConfigError) as info:
        queue.put("x", delay=-1.0)
    assert info.value.field == "delay"
    with pytest.raises(djq.ConfigError) as info:
        queue.get(lease=0.0)
    assert info.value.field == "lease"
    with pytest.raises(djq.ConfigError):
        queue.put("x", priority=1.5)


def test_purge_removes_everything_or_only_the_dead(open_queue, clock):
    """purge(dead_only=True) keeps live tasks; purge() removes all."""
    q = open_queue(max_attempts=1)
    q.put("dies")
    q.nack(q.get())
    q.put_many(["a", "b"])
    assert q.purge(dead_only=True) == 1
    assert q.stats().ready == 2
    assert q.purge() == 2
    assert q.stats().total == 0


def test_stats_count_every_state(queue, clock):
    """stats reports ready, delayed, leased, expired and dead tasks and the totals."""
    queue.put_many(["a", "b", "c"])
    queue.put("d", delay=60.0)
    queue.get(lease=1.0)
    queue.ack(queue.get(lease=100.0))
    clock.advance(2.0)
    s = queue.stats()
    assert (s.ready, s.delayed, s.leased, s.expired, s.dead) == (1, 1, 0, 1, 0)
    assert (s.put_total, s.acked_total, s.total) == (4, 1, 3)
    assert s.file_bytes > 0


def test_waiting_get_returns_when_another_client_puts(open_queue):
    """get(timeout=...) wakes up for a task put by another client while it waits."""
    consumer = open_queue()
    producer = open_queue()
    consumer.stats()
    started = threading.Event()

    def put_when_waiting() -> None:
        started.wait(10)
        producer.put("hello")

    thread = threading.Thread(target=put_when_waiting)
    thread.start()
    try:
        started.set()
        task = consumer.get(timeout=30.0)
    finally:
        thread.join(30)
    assert task is not None
    assert task.payload == "hello"


def test_waiting_get_gives_up_after_its_timeout(queue):
    """get with a timeout returns None when nothing comes."""
    assert queue.get(timeout=0.05) is None


def test_producer_and_consumer_run_ack_and_nack(queue, clock):
    """Consumer.run acks when the handler returns and nacks when it raises."""
    producer = djq.Producer(queue)
    producer.send_many([{"ok": True}, {"ok": False}])
    seen = []

    def handler(task: djq.Task) -> None:
        seen.append(task.payload)
        if not task.payload["ok"]:
            raise RuntimeError("boom")

    consumer = djq.Consumer(queue)
    assert consumer.run(handler, max_tasks=2, timeout=0) == 2
    assert (consumer.acked, consumer.nacked, producer.sent) == (1, 1, 2)
    assert seen == [{"ok": True}, {"ok": False}]
    assert queue.stats().ready == 1


def test_consumer_iterates_over_leased_tasks(queue):
    """Iterating a Consumer yields leased tasks; the caller acks."""
    queue.put_many([1, 2])
    consumer = iter(djq.Consumer(queue))
    first, second = next(consumer), next(consumer)
    assert [first.payload, second.payload] == [1, 2]
    queue.ack(first)
    queue.ack(second)


@pytest.mark.parametrize("client_kind", FILE_KINDS)
def test_file_is_created_owner_only(queue, queue_path):
    """Files the queue creates are readable and writable by their owner only."""
    queue.put("x")
    assert queue_path.stat().st_mode & 0o777 == 0o600
    assert queue_path.parent.stat().st_mode & 0o777 == 0o700


def test_check_reports_a_healthy_queue(queue):
    """check() returns no problems for a queue djq wrote."""
    queue.put("x")
    assert queue.check() == []


def test_get_many_leases_each_task_under_its_own_token(queue, clock):
    """get_many leases up to n tasks in delivery order, each with its own lease; [] when none."""
    queue.put_many(["a", "b", "c"])
    got = queue.get_many(2, lease=5.0)
    assert [t.payload for t in got] == ["a", "b"]
    assert len({t.token for t in got}) == 2
    assert [t.payload for t in queue.get_many(5)] == ["c"]
    assert queue.get_many(3) == []
    with pytest.raises(djq.ConfigError):
        queue.get_many(0)


def test_ack_many_acks_the_held_and_names_the_lost(queue, clock):
    """ack_many acks every task whose lease holds and returns the ids whose lease was lost."""
    queue.put_many(["a", "b"])
    first = queue.get(lease=1.0)
    second = queue.get(lease=100.0)
    clock.advance(1.0)
    again = queue.get()  # "a" comes back under a new lease
    assert queue.ack_many([first, second]) == [first.id]
    assert queue.ack_many([again]) == []
    assert queue.stats().acked_total == 2
