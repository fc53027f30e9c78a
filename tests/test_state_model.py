"""Hypothesis stateful test: ``djq.state`` (driven through ``apply``) against a naive model.

The reference model is a plain list of dicts in put order. It picks the next task by
sorting, reclaims expired leases by scanning, and keeps its own counters; it shares no
code with ``djq.state``. After every step the real state must agree with it on every
task's id, state, attempts, times and token, on the counters, on the delivery order
(``peek``), on ``stats`` and on ``next_deadline``. Time is a float the test advances.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, precondition, rule

from djq.errors import LeaseLost, UnknownTask
from djq.model import QueueStats, TaskState
from djq.ops import Ack, Extend, LeaseNext, Nack, Purge, Put, PutMany, Reap, Requeue
from djq.snapshot import encode
from djq.state import QueueState, apply, next_deadline, peek, stats

START = 1_000_000.0
READY, LEASED, DEAD = "ready", "leased", "dead"

# Small, round numbers so that deadlines collide with the clock exactly (the <= edges).
priorities = st.integers(min_value=-1, max_value=2)
delays = st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]) | st.floats(min_value=0.0, max_value=10.0)
durations = st.sampled_from([0.5, 1.0, 2.0, 5.0]) | st.floats(min_value=0.001, max_value=10.0)
steps = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 30.0]) | st.floats(min_value=0.0, max_value=10.0)
max_attempts = st.integers(min_value=1, max_value=3)
payloads = st.none() | st.integers(min_value=-1000, max_value=1000) | st.text(max_size=3)


class StateMachine(RuleBasedStateMachine):
    """Random puts, leases, acks, nacks, extends, requeues, purges, reaps and clock moves."""

    leases = Bundle("leases")  # (id, token) of every lease ever given: current and stale
    ids = Bundle("ids")  # every id ever put

    def __init__(self) -> None:
        super().__init__()
        self.state = QueueState()
        self.now = START
        self.tokens = 0
        self.issued: list[tuple[str, str]] = []
        self.acked: set[str] = set()
        # The model: tasks in put order, and the counters.
        self.model: list[dict[str, Any]] = []
        self.next_seq = 1
        self.put_total = self.acked_total = self.dead_total = self.purged_total = 0

    # --- the model -------------------------------------------------------------------

    def _find(self, task_id: str) -> dict[str, Any] | None:
        found = [t for t in self.model if t["id"] == task_id]
        assert len(found) <= 1
        return found[0] if found else None

    def _holds(self, task_id: str, token: str) -> dict[str, Any] | None:
        t = self._find(task_id)
        return t if t is not None and t["state"] == LEASED and t["token"] == token else None

    def _give_back(self, t: dict[str, Any], available_at: float) -> None:
        """End a lease: to the dead letters when every attempt is used, else back to ready."""
        if t["attempts"] >= t["max_attempts"]:
            t["state"] = DEAD
            self.dead_total += 1
        else:
            t["state"] = READY
            t["available_at"] = available_at
        t["token"] = t["owner"] = t["expires"] = None

    def _model_reap(self) -> list[str]:
        expired = [t for t in self.model if t["state"] == LEASED and t["expires"] <= self.now]
        for t in expired:
            self._give_back(t, t["enqueued_at"])
        return [t["id"] for t in expired]

    def _model_order(self) -> list[str]:
        """Ready tasks in delivery order, then delayed ones by time (what peek promises)."""
        now_ = [t for t in self.model if t["state"] == READY and t["available_at"] <= self.now]
        later = [t for t in self.model if t["state"] == READY and t["available_at"] > self.now]
        now_.sort(key=lambda t: (-t["priority"], t["seq"]))
        later.sort(key=lambda t: (t["available_at"], -t["priority"], t["seq"]))
        return [t["id"] for t in now_ + later]

    def _model_put(self, payload: Any, priority: int, delay: float, attempts: int) -> str:
        seq = self.next_seq
        self.next_seq += 1
        self.put_total += 1
        self.model.append(
            {
                "id": str(seq),
                "seq": seq,
                "payload": payload,
                "priority": priority,
                "state": READY,
                "attempts": 0,
                "max_attempts": attempts,
                "enqueued_at": self.now,
                "available_at": self.now + delay,
                "owner": None,
                "token": None,
                "expires": None,
            }
        )
        return str(seq)

    # --- helpers ---------------------------------------------------------------------

    def _apply(self, op: Any) -> Any:
        """Apply ``op`` to the real state; check revision moves exactly when something changed."""
        before = self._content()
        revision = self.state.revision
        try:
            result = apply(self.state, op, now=self.now)
        except (LeaseLost, UnknownTask):
            assert self._content() == before, "a refused transition changed the state"
            assert self.state.revision == revision
            raise
        if self._content() == before:
            assert self.state.revision == revision, f"revision moved on a no-op {op!r}"
        else:
            assert self.state.revision > revision, f"revision did not move on {op!r}"
        return result

    def _content(self) -> bytes:
        """The encoded state without its revision."""
        return encode(dataclasses.replace(self.state, revision=0))

    def _refused(self, op: Any, error: type[Exception]) -> None:
        try:
            self._apply(op)
        except error:
            return
        raise AssertionError(f"{op!r} should have raised {error.__name__}")

    # --- rules -----------------------------------------------------------------------

    @rule(target=ids, payload=payloads, priority=priorities, delay=delays, attempts=max_attempts)
    def put(self, payload: Any, priority: int, delay: float, attempts: int) -> str:
        got = self._apply(Put(payload=payload, priority=priority, delay=delay, max_attempts=attempts))
        expected = self._model_put(payload, priority, delay, attempts)
        assert got == [expected]  # apply gives the client API's result: the new ids
        assert all(type(task_id) is str for task_id in got)
        assert self.state.tasks[expected].state is TaskState.READY
        return expected

    @rule(
        target=ids,
        count=st.integers(min_value=0, max_value=3),
        priority=priorities,
        delay=delays,
        attempts=max_attempts,
    )
    def put_many(self, count: int, priority: int, delay: float, attempts: int) -> Any:
        batch = tuple(range(count))
        got = self._apply(PutMany(payloads=batch, priority=priority, delay=delay, max_attempts=attempts))
        expected = [self._model_put(p, priority, delay, attempts) for p in batch]
        assert got == expected
        assert all(self.state.tasks[task_id].state is TaskState.READY for task_id in expected)
        return multiple(*expected)

    @rule(target=leases, duration=durations)
    def lease(self, duration: float) -> Any:
        self.tokens += 1
        token = f"tok-{self.tokens}"
        owner = f"w{self.tokens % 3}"
        task = self._apply(LeaseNext(token=token, owner=owner, duration=duration))
        self._model_reap()
        eligible = [t for t in self.model if t["state"] == READY and t["available_at"] <= self.now]
        if not eligible:
            assert task is None
            return multiple()
        t = sorted(eligible, key=lambda t: (-t["priority"], t["seq"]))[0]
        t.update(
            state=LEASED, attempts=t["attempts"] + 1, owner=owner, token=token, expires=self.now + duration
        )
        assert task is not None, f"expected task {t['id']} to be leased"
        assert (task.id, task.attempts, task.owner, task.token, task.lease_expires_at) == (
            t["id"],
            t["attempts"],
            owner,
            token,
            t["expires"],
        )
        self.issued.append((t["id"], token))
        return (t["id"], token)

    @rule(ref=leases)
    def ack(self, ref: tuple[str, str]) -> None:
        task_id, token = ref
        t = self._holds(task_id, token)
        if t is None:
            self._refused(Ack(id=task_id, token=token), LeaseLost)
            return
        assert self._apply(Ack(id=task_id, token=token)) is None
        assert task_id not in self.acked, f"task {task_id} acked twice"
        self.acked.add(task_id)
        self.model.remove(t)
        self.acked_total += 1

    @rule(ref=leases, delay=delays)
    def nack(self, ref: tuple[str, str], delay: float) -> None:
        task_id, token = ref
        t = self._holds(task_id, token)
        if t is None:
            self._refused(Nack(id=task_id, token=token, delay=delay), LeaseLost)
            return
        got = self._apply(Nack(id=task_id, token=token, delay=delay))
        self._give_back(t, self.now + delay if delay else t["enqueued_at"])
        assert got is TaskState(t["state"])

    @rule(ref=leases, duration=durations)
    def extend(self, ref: tuple[str, str], duration: float) -> None:
        task_id, token = ref
        t = self._holds(task_id, token)
        if t is None:
            self._refused(Extend(id=task_id, token=token, duration=duration), LeaseLost)
            return
        task = self._apply(Extend(id=task_id, token=token, duration=duration))
        t["expires"] = self.now + duration
        assert task.lease_expires_at == t["expires"]

    @rule(task_id=ids, op=st.sampled_from(["ack", "nack", "extend"]))
    def forged_token(self, task_id: str, op: str) -> None:
        forged = {
            "ack": Ack(id=task_id, token="forged"),
            "nack": Nack(id=task_id, token="forged"),
            "extend": Extend(id=task_id, token="forged", duration=1.0),
        }[op]
        self._refused(forged, LeaseLost)

    @precondition(lambda self: any(t["state"] == DEAD for t in self.model))
    @rule(data=st.data())
    def requeue_a_dead_task(self, data: st.DataObject) -> None:
        self.requeue(data.draw(st.sampled_from([t["id"] for t in self.model if t["state"] == DEAD])))

    @rule(task_id=ids)
    def requeue(self, task_id: str) -> None:
        t = self._find(task_id)
        if t is None or t["state"] != DEAD:
            self._refused(Requeue(id=task_id), UnknownTask)
            return
        task = self._apply(Requeue(id=task_id))
        t.update(state=READY, attempts=0, available_at=t["enqueued_at"])
        assert (task.id, task.state, task.attempts) == (task_id, TaskState.READY, 0)

    @rule()
    def purge_dead(self) -> None:
        removed = self._apply(Purge(states=frozenset({TaskState.DEAD})))
        doomed = [t for t in self.model if t["state"] == DEAD]
        self.model = [t for t in self.model if t["state"] != DEAD]
        self.purged_total += len(doomed)
        assert removed == len(doomed)

    @rule()
    def reap(self) -> None:
        got = self._apply(Reap())
        assert got == self._model_reap()

    @rule(seconds=steps)
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(limit=st.integers(min_value=0, max_value=5))
    def peek_some(self, limit: int) -> None:
        before = encode(self.state)
        assert [t.id for t in peek(self.state, limit, now=self.now)] == self._model_order()[:limit]
        assert encode(self.state) == before

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def every_task_is_in_exactly_one_live_state(self) -> None:
        for task_id, r in self.state.tasks.items():
            assert task_id == r.id
            assert r.state in (TaskState.READY, TaskState.LEASED, TaskState.DEAD)
            held = (r.owner, r.token, r.lease_expires_at)
            if r.state is TaskState.LEASED:
                assert None not in held
                assert 1 <= r.attempts <= r.max_attempts
            else:
                assert held == (None, None, None)
                assert 0 <= r.attempts <= r.max_attempts
            assert r.attempts < r.max_attempts or r.state is not TaskState.READY
        assert stats(self.state, now=self.now).total == len(self.state.tasks)

    @invariant()
    def no_two_live_leases_on_one_task(self) -> None:
        accepted = [
            (task_id, token)
            for task_id, token in self.issued
            if (r := self.state.tasks.get(task_id)) is not None
            and r.state is TaskState.LEASED
            and r.token == token
        ]
        task_ids = [task_id for task_id, _ in accepted]
        assert len(task_ids) == len(set(task_ids)), accepted
        assert accepted == [(i, tok) for i, tok in self.issued if self._holds(i, tok) is not None]

    @invariant()
    def tasks_match_the_model(self) -> None:
        got = [
            (
                r.id,
                r.seq,
                r.payload,
                r.priority,
                r.state.value,
                r.attempts,
                r.max_attempts,
                r.enqueued_at,
                r.available_at,
                r.owner,
                r.token,
                r.lease_expires_at,
            )
            for r in self.state.tasks.values()
        ]
        expected = [
            (
                t["id"],
                t["seq"],
                t["payload"],
                t["priority"],
                t["state"],
                t["attempts"],
                t["max_attempts"],
                t["enqueued_at"],
                t["available_at"],
                t["owner"],
                t["token"],
                t["expires"],
            )
            for t in self.model
        ]
        assert got == expected

    @invariant()
    def counters_match_the_model(self) -> None:
        s = self.state
        assert (s.next_seq, s.put_total, s.acked_total, s.dead_total) == (
            self.next_seq,
            self.put_total,
            self.acked_total,
            self.dead_total,
        )
        assert s.acked_total == len(self.acked)
        assert s.put_total == len(s.tasks) + s.acked_total + self.purged_total  # no task lost

    @invariant()
    def order_matches_the_model(self) -> None:
        assert [t.id for t in peek(self.state, len(self.model) + 1, now=self.now)] == self._model_order()

    @invariant()
    def stats_and_deadline_match_the_model(self) -> None:
        def count(state: str, when: str) -> int:
            key = "available_at" if state == READY else "expires"
            due = [t for t in self.model if t["state"] == state and t[key] <= self.now]
            return len(due) if when == "due" else sum(t["state"] == state for t in self.model) - len(due)

        assert stats(self.state, now=self.now) == QueueStats(
            ready=count(READY, "due"),
            delayed=count(READY, "later"),
            leased=count(LEASED, "later"),
            expired=count(LEASED, "due"),
            dead=sum(t["state"] == DEAD for t in self.model),
            put_total=self.put_total,
            acked_total=self.acked_total,
            dead_total=self.dead_total,
            file_bytes=0,
        )
        moments = [t["available_at"] for t in self.model if t["state"] == READY]
        moments += [t["expires"] for t in self.model if t["state"] == LEASED]
        future = [m for m in moments if m > self.now]
        assert next_deadline(self.state, now=self.now) == (min(future) if future else None)


StateMachine.TestCase.settings = settings(
    max_examples=800,  # 17-30 s on the 2-core dev machine; the budget is 60 s
    stateful_step_count=50,
    derandomize=True,
    deadline=None,
    database=None,
)
TestStateMachine = StateMachine.TestCase
