"""The broker's wire format (``djq.wire``): what a request may be, and how errors travel back.

Pure functions on bytes: no broker, no socket, no file. A request is an operation in
``ops``' one codec (plus a lease's ``wait``) or one of the broker's own control messages;
results are rebuilt by ``wire.decode_result``; a config travels as ``QueueConfig.to_json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

import djq
from djq import ops, wire
from djq.errors import BrokerError, BrokerProtocolError, ConfigError, PayloadError
from djq.model import (
    CONFIG_FIELDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    QueueConfig,
    QueueStats,
    Task,
    TaskState,
)


def _raw(message: object) -> bytes:
    return orjson.dumps(message)


def _decode(data: bytes, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> wire.Request:
    return wire.decode_request(data, max_payload_bytes=limit)


# Requests: operations

#: one operation of every kind the broker serves, with non-default values where it has them
SAMPLES: dict[str, ops.Op[Any]] = {
    "put": ops.Put(payload={"n": 1}, priority=-2, delay=0.5, max_attempts=3),
    "put_many": ops.PutMany(payloads=({"n": 1}, "x", [1, None]), priority=3, delay=1.5, max_attempts=7),
    "lease": ops.LeaseNext(token="t1", owner="w1", duration=10.0),
    "lease_many": ops.LeaseMany(tokens=("t1", "t2", "t3"), owner="w1", duration=5.0),
    "ack": ops.Ack(id="1", token="abc"),
    "ack_many": ops.AckMany(leases=(("1", "a"), ("2", "b"))),
    "nack": ops.Nack(id="1", token="abc", delay=2.0),
    "release": ops.Release(id="1", token="abc"),
    "pop": ops.Pop(),
    "ack_lease": ops.AckLease(id="1", token="abc", next_token="def", owner="w", duration=5.0),
    "extend": ops.Extend(id="1", token="abc", duration=5.0),
    "requeue": ops.Requeue(id="1"),
    "purge": ops.Purge(states=frozenset({TaskState.DEAD, TaskState.READY})),
    "reap": ops.Reap(),
    "stats": ops.Stats(),
    "peek": ops.Peek(limit=3),
    "dead": ops.Dead(),
    "check": ops.Check(fix=True),
}


def test_the_samples_cover_every_operation():
    """A new operation in ops.OPS fails here until SAMPLES gives it a value to round-trip."""
    assert set(SAMPLES) == set(ops.OPS)
    assert all(type(op) is ops.OPS[name] for name, op in SAMPLES.items())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_operation_decodes_to_an_equal_operation(name):
    """encode_request then decode_request gives back an equal operation of the same class."""
    op = SAMPLES[name]
    request = _decode(wire.encode_request(op, 2.5))
    assert type(request.op) is type(op)
    assert request.op == op
    assert request.control == ""
    assert request.args == {}
    assert request.wait == (2.5 if op.waits else 0.0)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_request_is_the_operations_one_codec_and_a_wait_only_for_leases(name):
    """The bytes are {"op": name, **op.to_json()}, plus "wait" for the leasing operations only."""
    op = SAMPLES[name]
    doc = orjson.loads(wire.encode_request(op, 1.0))
    expected: dict[str, Any] = {"op": op.name, **orjson.loads(orjson.dumps(op.to_json()))}
    if op.waits:
        expected["wait"] = 1.0
    assert doc == expected
    assert ops.from_json({k: v for k, v in doc.items() if k != "wait"}) == op


def test_the_leasing_operations_are_the_ones_that_wait():
    """Only lease, lease_many and pop carry a wait (what a client may block on at the broker)."""
    assert {name for name, cls in ops.OPS.items() if cls.waits} == {"lease", "lease_many", "pop"}


@pytest.mark.parametrize("op", [SAMPLES["lease"], SAMPLES["lease_many"]])
@pytest.mark.parametrize(
    ("wait", "decoded"), [(0.0, 0.0), (0, 0), (7.25, 7.25), (None, None), (math.inf, None)]
)
def test_a_leases_wait_travels_and_none_or_infinity_mean_for_ever(op, wait, decoded):
    """A wait of seconds comes back as sent; None and infinity (sent as null) mean wait for ever."""
    assert _decode(wire.encode_request(op, wait)).wait == decoded


def test_a_lease_without_a_wait_does_not_wait():
    """A lease request that leaves out "wait" waits 0 s (returns at once when nothing is ready)."""
    doc = {"op": "lease", "token": "t", "owner": "w", "duration": 1.0}
    assert _decode(_raw(doc)).wait == 0.0


@pytest.mark.parametrize("wait", [-0.5, -1, True, False, "5", [1], {"s": 1}])
@pytest.mark.parametrize("op", [SAMPLES["lease"], SAMPLES["lease_many"]])
def test_a_bad_wait_is_a_config_error_naming_wait(op, wait):
    """A negative wait, a bool or anything not a number of seconds is refused, naming "wait"."""
    doc = {"op": op.name, **op.to_json(), "wait": wait}
    with pytest.raises(ConfigError) as info:
        _decode(_raw(doc))
    assert info.value.field == "wait"


@pytest.mark.parametrize("name", ["ack", "put_many", "stats"])
def test_a_wait_on_an_operation_that_does_not_wait_is_refused(name):
    """Only leases take a wait; on any other operation it is an unknown field."""
    op = SAMPLES[name]
    with pytest.raises(ConfigError):
        _decode(_raw({"op": op.name, **op.to_json(), "wait": "soon"}))


def test_omitted_fields_get_the_operations_defaults():
    """A request may leave out optional fields: delay 0, priority 0, limit 10, flags False, ..."""
    assert _decode(_raw({"op": "put_many", "payloads": [1]})).op == ops.PutMany(
        payloads=(1,), priority=0, delay=0.0, max_attempts=DEFAULT_MAX_ATTEMPTS
    )
    assert _decode(_raw({"op": "put", "payload": None})).op == ops.Put(payload=None)
    assert _decode(_raw({"op": "nack", "id": "1", "token": "t"})).op == ops.Nack(id="1", token="t", delay=0.0)
    assert _decode(_raw({"op": "peek"})).op == ops.Peek(limit=10)
    assert _decode(_raw({"op": "purge"})).op == ops.Purge(states=None)
    assert _decode(_raw({"op": "purge", "states": None})).op == ops.Purge(states=None)
    assert _decode(_raw({"op": "check"})).op == ops.Check(fix=False)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{",
        b"\xff\xfe\x00",
        b'{"op": "stats"} trailing',
        b'{"op": "put", "payload": NaN}',
    ],
)
def test_a_request_that_is_not_json_is_a_protocol_error(data):
    """Bytes that are not one JSON document are refused as a protocol error."""
    with pytest.raises(BrokerProtocolError, match="not JSON"):
        _decode(data)


@pytest.mark.parametrize("message", [[], ["op", "stats"], "stats", 1, None, True])
def test_a_request_that_is_not_an_object_is_a_protocol_error(message):
    """A JSON array, string, number or null is not a request."""
    with pytest.raises(BrokerProtocolError, match="JSON object"):
        _decode(_raw(message))


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"op": "nope"},
        {"op": None},
        {"op": 3},
        {"op": True},
        {"op": ""},
        {"op": "Stats"},
        {"op": "hello"},
        {"OP": "stats"},
        {"hello": wire.PROTOCOL},  # a second hello is not a request
        {"op": "put_many ", "payloads": [1]},
    ],
)
def test_a_request_without_an_op_the_broker_serves_is_a_protocol_error(message):
    """A missing, unknown or non-string op is refused."""
    with pytest.raises(BrokerProtocolError, match="'op'"):
        _decode(_raw(message))


@pytest.mark.parametrize("message", [{"op": ["stats"]}, {"op": {"x": 1}}])
def test_an_op_that_is_a_list_or_an_object_is_a_protocol_error(message):
    """A non-string op that JSON cannot hash is refused like any other unknown op."""
    with pytest.raises(BrokerProtocolError, match="'op'"):
        _decode(_raw(message))


@pytest.mark.parametrize(
    "message",
    [
        {"op": "stats", "limit": 1},
        {"op": "reap", "x": 1},
        {"op": "dead", "limit": 3},
        {"op": "put_many", "payloads": [1], "n": 2},
        {"op": "put_many", "payloads": [1], "payload": 1},
        {"op": "put", "payload": 1, "payloads": [1]},
        {"op": "ack", "id": "1", "token": "t", "lease": 1.0},
        {"op": "requeue", "id": "1", "token": "t"},
        {"op": "peek", "limit": 1, "fix": True},
        # djq 0.1's argument names are unknown fields now
        {"op": "lease", "token": "t", "owner": "w", "duration": 1.0, "lease": 1.0},
        {"op": "lease", "token": "t", "owner": "w", "duration": 1.0, "timeout": 1.0},
        {"op": "lease_many", "tokens": ["t"], "owner": "w", "duration": 1.0, "n": 1},
        {"op": "extend", "id": "1", "token": "t", "lease": 5.0},
        {"op": "purge", "dead_only": True},
    ],
)
def test_an_unknown_field_is_a_config_error_naming_op(message):
    """Any field the operation does not have is refused (ConfigError, field "op")."""
    with pytest.raises(ConfigError, match="bad fields") as info:
        _decode(_raw(message))
    assert info.value.field == "op"


@pytest.mark.parametrize(
    "message",
    [
        {"op": "put"},
        {"op": "put_many"},
        {"op": "put_many", "priority": 1},
        {"op": "lease"},
        {"op": "lease", "token": "t", "owner": "w"},
        {"op": "lease", "owner": "w", "duration": 1.0},
        {"op": "lease_many", "owner": "w", "duration": 1.0},
        {"op": "ack", "id": "1"},
        {"op": "ack", "token": "t"},
        {"op": "ack_many"},
        {"op": "nack", "id": "1"},
        {"op": "extend", "id": "1", "token": "t"},
        {"op": "requeue"},
    ],
)
def test_a_missing_field_is_a_config_error_naming_op(message):
    """An operation without a field it needs is refused (ConfigError, field "op")."""
    with pytest.raises(ConfigError, match="bad fields") as info:
        _decode(_raw(message))
    assert info.value.field == "op"


_LEASE = {"op": "lease", "token": "t", "owner": "w", "duration": 10.0}
_LEASES = {"op": "lease_many", "tokens": ["t"], "owner": "w", "duration": 10.0}


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"op": "put_many", "payloads": "abc"}, "payloads"),
        ({"op": "put_many", "payloads": {"n": 1}}, "payloads"),
        ({"op": "put_many", "payloads": None}, "payloads"),
        ({"op": "put_many", "payloads": [1], "priority": 1.5}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": "high"}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": True}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": False}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": 0.0}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": None}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": 1 << 63}, "priority"),
        ({"op": "put_many", "payloads": [1], "delay": -1}, "delay"),
        ({"op": "put_many", "payloads": [1], "delay": "soon"}, "delay"),
        ({"op": "put_many", "payloads": [1], "delay": None}, "delay"),
        ({"op": "put_many", "payloads": [1], "delay": 1e12}, "delay"),
        ({"op": "put_many", "payloads": [1], "max_attempts": 0}, "max_attempts"),
        ({"op": "put_many", "payloads": [1], "max_attempts": 2.0}, "max_attempts"),
        ({"op": "put_many", "payloads": [1], "max_attempts": True}, "max_attempts"),
        ({"op": "put", "payload": 1, "priority": "high"}, "priority"),
        ({"op": "put", "payload": 1, "delay": -1}, "delay"),
        ({"op": "put", "payload": 1, "max_attempts": -5}, "max_attempts"),
        # a lease's duration is what the user passed as ``lease``: its errors name "lease"
        ({**_LEASE, "duration": 0}, "lease"),
        ({**_LEASE, "duration": 10**9}, "lease"),
        ({**_LEASE, "duration": None}, "lease"),
        ({**_LEASE, "duration": True}, "lease"),
        ({**_LEASE, "duration": "long"}, "lease"),
        ({**_LEASE, "owner": 7}, "owner"),
        ({**_LEASE, "owner": ""}, "owner"),
        ({**_LEASE, "owner": None}, "owner"),
        ({**_LEASE, "token": ""}, "token"),
        ({**_LEASE, "token": 1}, "token"),
        ({**_LEASES, "tokens": []}, "tokens"),
        ({**_LEASES, "tokens": "t"}, "tokens"),
        ({**_LEASES, "tokens": ["t", ""]}, "tokens"),
        ({**_LEASES, "tokens": ["t", 2]}, "tokens"),
        ({**_LEASES, "tokens": ["t"] * (ops.MAX_BATCH + 1)}, "tokens"),
        ({**_LEASES, "duration": -1.0}, "lease"),
        ({**_LEASES, "owner": ["w"]}, "owner"),
        ({"op": "ack", "id": 1, "token": "t"}, "id"),
        ({"op": "ack", "id": None, "token": "t"}, "id"),
        ({"op": "ack", "id": "1", "token": None}, "token"),
        ({"op": "ack", "id": "1", "token": ""}, "token"),
        ({"op": "ack_many", "leases": "1:t"}, "leases"),
        ({"op": "ack_many", "leases": [["1", "t", "x"]]}, "leases"),
        ({"op": "ack_many", "leases": [["1"]]}, "leases"),
        ({"op": "ack_many", "leases": [{"id": "1", "token": "t"}]}, "leases"),
        ({"op": "ack_many", "leases": [[1, "t"]]}, "id"),
        ({"op": "ack_many", "leases": [["1", ""]]}, "token"),
        ({"op": "nack", "id": "1", "token": "t", "delay": -3}, "delay"),
        ({"op": "nack", "id": "1", "token": "t", "delay": False}, "delay"),
        ({"op": "extend", "id": "1", "token": "t", "duration": "long"}, "lease"),
        ({"op": "extend", "id": "1", "token": "t", "duration": 0.0}, "lease"),
        ({"op": "extend", "id": 1, "token": "t", "duration": 1.0}, "id"),
        ({"op": "requeue", "id": ["1"]}, "id"),
        ({"op": "purge", "states": "dead"}, "states"),
        ({"op": "purge", "states": True}, "states"),
        ({"op": "purge", "states": {"dead": True}}, "states"),
        ({"op": "peek", "limit": "5"}, "limit"),
        ({"op": "peek", "limit": 2.0}, "limit"),
        ({"op": "peek", "limit": True}, "limit"),
        ({"op": "peek", "limit": None}, "limit"),
        ({"op": "check", "fix": 1}, "fix"),
        ({"op": "check", "fix": "yes"}, "fix"),
        ({"op": "check", "fix": None}, "fix"),
    ],
)
def test_a_bad_field_value_is_a_config_error_naming_the_field(message, field):
    """A field of the right name with a value the client's own operation refuses names its field."""
    with pytest.raises(ConfigError) as info:
        _decode(_raw(message))
    assert info.value.field == field
    with pytest.raises(ConfigError) as direct:  # the very check the client ran (ops' one codec)
        ops.from_json(orjson.loads(_raw(message)))
    assert direct.value.field == field


@pytest.mark.parametrize("states", [["lost"], ["dead", "DEAD"], [1], [None]])
def test_a_bad_state_in_purges_states_names_states(states):
    """A purge of a state that does not exist names the field "states"."""
    with pytest.raises(ConfigError) as info:
        _decode(_raw({"op": "purge", "states": states}))
    assert info.value.field == "states"


def test_the_priority_check_matches_the_direct_queue(tmp_path: Path):
    """A priority the direct Queue refuses (0.0, False) is refused by the wire too."""
    with djq.Queue(tmp_path / "Queue.json", fsync=False) as q:
        for priority in (0.0, False):
            with pytest.raises(ConfigError):
                q.put("x", priority=priority)  # type: ignore[arg-type]
            with pytest.raises(ConfigError):
                _decode(_raw({"op": "put_many", "payloads": ["x"], "priority": priority}))


# Requests: payload sizes


def test_a_payload_over_the_limit_is_a_payload_error():
    """Each payload is measured as orjson encodes it; one byte over the limit is refused."""
    at_limit, over = "x" * 8, "x" * 9  # 10 and 11 bytes with their quotes
    assert _decode(_raw({"op": "put_many", "payloads": [at_limit, 1]}), limit=10).op == ops.PutMany(
        payloads=(at_limit, 1)
    )
    assert _decode(_raw({"op": "put", "payload": at_limit}), limit=10).op == ops.Put(payload=at_limit)
    with pytest.raises(PayloadError, match="over the limit of 10"):
        _decode(_raw({"op": "put_many", "payloads": [1, over]}), limit=10)
    with pytest.raises(PayloadError, match="over the limit of 10"):
        _decode(_raw({"op": "put", "payload": over}), limit=10)
    with pytest.raises(PayloadError):
        _decode(_raw({"op": "put", "payload": {"k": [over]}}), limit=10)


def test_the_limit_counts_each_payload_not_the_batch():
    """Many small payloads together may exceed the limit; only one payload over it is refused."""
    request = _decode(_raw({"op": "put_many", "payloads": ["x" * 8] * 100}), limit=10)
    assert len(request.op.payloads) == 100  # type: ignore[union-attr]


def test_the_limit_applies_only_to_payloads():
    """Fields that are not payloads (tokens, ids) are not measured against the payload limit."""
    op = ops.LeaseMany(tokens=("t" * 50,), owner="w" * 50, duration=1.0)
    assert _decode(wire.encode_request(op), limit=10).op == op


# Requests: control messages


@pytest.mark.parametrize(
    ("name", "args", "decoded"),
    [
        ("ping", {}, {}),
        ("metrics", {}, {"rows": False}),
        ("metrics", {"rows": False}, {"rows": False}),
        ("metrics", {"rows": True}, {"rows": True}),
        ("shutdown", {}, {}),
    ],
)
def test_every_control_message_decodes_to_its_name_and_arguments(name, args, decoded):
    """encode_control then decode_request gives a control request, with no operation."""
    request = _decode(wire.encode_control(name, **args))
    assert request.control == name
    assert request.op is None
    assert request.args == decoded
    assert set(request.args) == set(wire.CONTROL[name])


def test_the_control_table_names_the_brokers_own_messages():
    """ping, metrics and shutdown are the broker's own; none of them is an operation."""
    assert set(wire.CONTROL) == {"ping", "metrics", "shutdown"}
    assert not set(wire.CONTROL) & set(ops.OPS)


@pytest.mark.parametrize(
    "message",
    [
        {"op": "shutdown", "now": True},
        {"op": "ping", "rows": True},
        {"op": "metrics", "rows": True, "reset": True},
        {"op": "ping", "wait": 1.0},
    ],
)
def test_control_arguments_it_does_not_take_are_a_protocol_error(message):
    """A control message with an argument it does not take is refused."""
    with pytest.raises(BrokerProtocolError, match="bad arguments"):
        _decode(_raw(message))


# Hello


def test_a_hello_of_the_same_protocol_is_accepted():
    """encode_hello is what check_hello accepts: this version of the wire."""
    assert orjson.loads(wire.encode_hello()) == {"hello": wire.PROTOCOL}
    wire.check_hello(wire.encode_hello())


@pytest.mark.parametrize("version", [1, 3, wire.PROTOCOL + 1, 0, "2", [2], None])
def test_a_hello_of_another_protocol_names_both_versions(version):
    """Another version is refused with a message naming this side's version and the other's."""
    with pytest.raises(BrokerProtocolError, match="protocol mismatch") as info:
        wire.check_hello(_raw({"hello": version}))
    assert f"protocol {wire.PROTOCOL}" in str(info.value)
    assert "run the same djq on both" in str(info.value)
    if version is not None:
        assert str(version) in str(info.value).split("the other", 1)[1]


@pytest.mark.parametrize(
    "data",
    [
        _raw({"op": "ping"}),  # djq 0.1's first message: a request, no hello
        _raw({"op": "put_many", "payloads": [1], "priority": 0, "delay": 0.0}),
        _raw({}),
        _raw([{"hello": 2}]),
        b"not json",
        b"",
    ],
)
def test_a_message_without_a_hello_is_a_djq_0_1_client_or_a_stranger(data):
    """A first message that is not a hello (a djq 0.1 client sends its request) is refused."""
    with pytest.raises(BrokerProtocolError, match="protocol mismatch") as info:
        wire.check_hello(data)
    message = str(info.value)
    assert f"protocol {wire.PROTOCOL}" in message
    assert "1 (djq 0.1)" in message


def test_the_refused_hello_travels_back_to_the_client():
    """The broker answers a refused hello with encode_error: the client raises the same error."""
    with pytest.raises(BrokerProtocolError) as refused:
        wire.check_hello(_raw({"op": "ping"}))
    with pytest.raises(BrokerProtocolError, match="protocol mismatch") as info:
        wire.decode_reply(wire.encode_error(refused.value))
    assert str(info.value) == str(refused.value)


# Replies


def test_an_ok_reply_returns_its_value():
    """encode_ok then decode_reply gives the value back, including None and falsy values."""
    for value in (None, 0, "", [], {"a": [1, 2]}, ["1", "2"], False):
        assert wire.decode_reply(wire.encode_ok(value)) == value


@pytest.mark.parametrize(
    ("error", "attrs"),
    [
        (djq.LeaseLost(task_id="7", token="abc"), {"task_id": "7", "token": "abc"}),
        (djq.UnknownTask(task_id="99"), {"task_id": "99"}),
        (djq.ConfigError("bad lease", field="lease"), {"field": "lease"}),
        (djq.PayloadError("too big"), {}),
        (
            djq.StorageError("disk full", path="/q/Queue.json", errno=28),
            {"path": "/q/Queue.json", "errno": 28},
        ),
        (djq.CorruptQueueError(path="/q/Queue.json", reason="truncated"), {"reason": "truncated"}),
        (djq.LockTimeout(path="/q/Queue.json.lock", timeout=2.5), {"timeout": 2.5}),
        (djq.BrokerProtocolError("a request is not JSON"), {}),
    ],
)
def test_a_djq_error_is_rebuilt_with_its_class_message_and_data(error, attrs):
    """The client raises the same djq error class the broker raised, with its message and attributes."""
    with pytest.raises(type(error)) as info:
        wire.decode_reply(wire.encode_error(error))
    assert type(info.value) is type(error)
    assert str(info.value) == str(error)
    for name, value in attrs.items():
        assert getattr(info.value, name) == value


def test_a_decode_request_error_travels_back_with_its_field():
    """A request the broker refuses reaches the client as the same ConfigError, naming the field."""
    with pytest.raises(ConfigError) as refused:
        _decode(_raw({**_LEASE, "duration": 0}))
    with pytest.raises(ConfigError) as info:
        wire.decode_reply(wire.encode_error(refused.value))
    assert info.value.field == "lease"
    assert str(info.value) == str(refused.value)


def test_an_error_that_is_not_djqs_comes_back_as_broker_error():
    """A bug in the broker (any other exception) reaches the client as BrokerError, with its text."""
    with pytest.raises(BrokerError, match="the broker failed: KeyError: 'boom'") as info:
        wire.decode_reply(wire.encode_error(KeyError("boom")))
    assert type(info.value) is BrokerError


def test_an_error_with_data_orjson_cannot_encode_still_travels_with_its_message():
    """An error whose attributes are not JSON is sent with its message only (same class)."""
    error = djq.DjqError("odd", thing=object())
    with pytest.raises(djq.DjqError, match=r"^odd$"):
        wire.decode_reply(wire.encode_error(error))


@pytest.mark.parametrize(
    "name",
    ["ValueError", "SystemExit", "os", "Any", "_rebuild", "errors", "", None, 3, ["LeaseLost"]],
)
def test_an_unknown_error_type_is_refused(name):
    """Only djq's own error classes are rebuilt; any other name is a protocol error, never raised."""
    data = _raw({"error": {"type": name, "attrs": {"message": "x"}}})
    with pytest.raises(BrokerProtocolError, match="unknown error"):
        wire.decode_reply(data)


def test_error_attributes_that_are_not_an_object_are_refused():
    """An error whose attrs are not a JSON object is a protocol error."""
    with pytest.raises(BrokerProtocolError, match="unknown error"):
        wire.decode_reply(_raw({"error": {"type": "LeaseLost", "attrs": ["7"]}}))


def test_error_attributes_the_class_does_not_take_keep_the_class_and_message():
    """Unexpected attributes (a newer broker) still give the right class and message."""
    with pytest.raises(djq.LeaseLost, match=r"^gone$"):
        wire.decode_reply(_raw({"error": {"type": "LeaseLost", "attrs": {"message": "gone", "new": 1}}}))


@pytest.mark.parametrize(
    "data",
    [b"nope", _raw([1]), _raw("ok"), _raw({}), _raw({"error": "LeaseLost"}), _raw({"result": 1})],
)
def test_a_reply_the_broker_never_sends_is_a_protocol_error(data):
    """A reply that is not JSON, or has neither ok nor an error object, is refused."""
    with pytest.raises(BrokerProtocolError):
        wire.decode_reply(data)


# Results: wire.decode_result

_TASK: dict[str, Any] = {
    "id": "1",
    "payload": {"n": 1},
    "priority": 0,
    "state": "leased",
    "attempts": 1,
    "max_attempts": 5,
    "enqueued_at": 1.0,
    "available_at": 1.0,
    "lease_expires_at": 31.0,
    "owner": "w",
    "token": "t",
}


def _stats_fields() -> dict[str, int]:
    return {f.name: i for i, f in enumerate(dataclasses.fields(QueueStats))}


def _through_the_wire(value: Any) -> Any:
    """What the client's decode_reply hands to decode_result."""
    return wire.decode_reply(wire.encode_ok(value))


def test_the_result_kinds_cover_every_operation():
    """Every operation's result kind is one of those tested below."""
    kinds = {"none", "ids", "task", "task?", "tasks", "state", "count", "stats", "strings"}
    assert {cls.result for cls in ops.OPS.values()} <= kinds


def test_a_task_is_rebuilt_with_its_state():
    """A task result (extend, requeue) is a Task whose state is a TaskState."""
    task = wire.decode_result(SAMPLES["extend"], _through_the_wire(_TASK))
    assert isinstance(task, Task)
    assert task == Task(**{**_TASK, "state": TaskState.LEASED})
    assert task.state is TaskState.LEASED
    assert task.token == "t"
    assert wire.decode_result(SAMPLES["requeue"], _through_the_wire({**_TASK, "state": "ready"})).state is (
        TaskState.READY
    )


def test_a_task_travels_back_as_it_left():
    """encode_ok of a Task's fields, then decode_result, gives an equal Task."""
    task = Task(id="9", payload=[1, "x"], priority=-4, state=TaskState.DEAD, attempts=5, enqueued_at=2.5)
    value = _through_the_wire({f.name: getattr(task, f.name) for f in dataclasses.fields(Task)})
    assert wire.decode_result(SAMPLES["requeue"], value) == task


def test_a_lease_returns_a_task_or_none():
    """lease's result is a Task, or None when nothing was ready."""
    assert wire.decode_result(SAMPLES["lease"], _through_the_wire(None)) is None
    assert isinstance(wire.decode_result(SAMPLES["lease"], _through_the_wire(_TASK)), Task)


@pytest.mark.parametrize("name", ["lease_many", "peek", "dead"])
def test_task_lists_are_rebuilt(name):
    """lease_many, peek and dead return lists of Tasks (possibly empty)."""
    tasks = wire.decode_result(
        SAMPLES[name], _through_the_wire([_TASK, {**_TASK, "id": "2", "state": "dead"}])
    )
    assert [t.id for t in tasks] == ["1", "2"]
    assert [t.state for t in tasks] == [TaskState.LEASED, TaskState.DEAD]
    assert wire.decode_result(SAMPLES[name], _through_the_wire([])) == []


@pytest.mark.parametrize("name", ["put", "put_many", "ack_many", "reap"])
def test_id_lists_are_rebuilt_as_strings(name):
    """put, put_many, ack_many and reap return lists of ids."""
    assert wire.decode_result(SAMPLES[name], _through_the_wire(["1", "22"])) == ["1", "22"]
    assert wire.decode_result(SAMPLES[name], _through_the_wire([])) == []


def test_the_other_result_kinds_are_rebuilt():
    """nack a TaskState, purge a count, stats QueueStats, check strings, ack nothing."""
    assert wire.decode_result(SAMPLES["nack"], _through_the_wire("dead")) is TaskState.DEAD
    assert wire.decode_result(SAMPLES["nack"], _through_the_wire("ready")) is TaskState.READY
    assert wire.decode_result(SAMPLES["purge"], _through_the_wire(3)) == 3
    stats = wire.decode_result(SAMPLES["stats"], _through_the_wire(_stats_fields()))
    assert stats == QueueStats(**_stats_fields())
    assert wire.decode_result(SAMPLES["check"], _through_the_wire(["ok", "fixed 1"])) == ["ok", "fixed 1"]
    assert wire.decode_result(SAMPLES["check"], _through_the_wire([])) == []
    assert wire.decode_result(SAMPLES["ack"], _through_the_wire(None)) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("extend", {**_TASK, "state": "lost"}),
        ("extend", {**_TASK, "state": None}),
        ("extend", {"id": "1"}),
        ("extend", {k: v for k, v in _TASK.items() if k != "id"}),
        ("extend", {**_TASK, "colour": "red"}),
        ("extend", None),
        ("extend", [1]),
        ("requeue", "1"),
        ("lease", {**_TASK, "state": "lost"}),
        ("lease", [_TASK]),
        ("lease_many", None),
        ("lease_many", [_TASK, None]),
        ("peek", [{**_TASK, "state": "gone"}]),
        ("dead", 3),
        ("put_many", None),
        ("put_many", 7),
        ("reap", None),
        ("nack", "lost"),
        ("nack", None),
        ("purge", "many"),
        ("purge", None),
        ("purge", [1]),
        ("stats", {"ready": 1}),
        ("stats", {**_stats_fields(), "new": 1}),
        ("stats", None),
        ("stats", [0] * 9),
        ("check", None),
        ("check", 1),
    ],
)
def test_a_malformed_result_is_a_value_error(name, value):
    """A value that is not a result of the operation raises ValueError naming the operation."""
    with pytest.raises(ValueError, match=f"not a result of '{name}'"):
        wire.decode_result(SAMPLES[name], _through_the_wire(value))


# QueueConfig travels as JSON


def test_a_config_travels_whole_through_json():
    """QueueConfig.from_json(to_json) gives an equal config, also through orjson bytes."""
    for config in (
        QueueConfig(),
        QueueConfig(
            path=Path("/tmp/q/Queue.json"),
            lock="filelock",
            storage="rewrite",
            wait="poll",
            lock_timeout=5.0,
            poll_interval=0.002,
            fsync=False,
            lease=12.5,
            max_attempts=3,
            max_payload_bytes=4096,
            max_file_bytes=1 << 25,
            compact_bytes=8192,
            file_mode=0o640,
        ),
    ):
        fields = config.to_json()
        assert list(fields) == list(CONFIG_FIELDS)
        assert isinstance(fields["path"], str)
        assert QueueConfig.from_json(fields) == config
        assert QueueConfig.from_json(orjson.loads(orjson.dumps(fields))) == config
        assert QueueConfig.from_json(_through_the_wire(fields)) == config


def test_a_config_with_an_unknown_field_is_a_config_error_naming_it():
    """A field QueueConfig does not have (a newer djq, a typo) is refused, naming it."""
    with pytest.raises(ConfigError, match="unknown queue option 'colour'") as info:
        QueueConfig.from_json({**QueueConfig().to_json(), "colour": "red"})
    assert info.value.field == "colour"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"lease": 0}, "lease"),
        ({"lock": "spin"}, "lock"),
        ({"fsync": "yes"}, "fsync"),
        ({"max_payload_bytes": 0}, "max_payload_bytes"),
        (None, "config"),
        ([["lease", 1.0]], "config"),
    ],
)
def test_a_config_with_a_bad_value_is_a_config_error_naming_the_field(fields, field):
    """A bad value, or a config that is not an object, is refused naming the field."""
    with pytest.raises(ConfigError) as info:
        QueueConfig.from_json(fields)
    assert info.value.field == field


# Paths


def test_broker_paths_sit_beside_the_queue_file_and_are_absolute(tmp_path: Path, monkeypatch):
    """The socket, key, info and log files are named after the queue file, in its folder."""
    monkeypatch.chdir(tmp_path)
    paths = wire.broker_paths("q/Queue.json")
    assert paths.queue == tmp_path / "q" / "Queue.json"
    assert paths.socket == tmp_path / "q" / "Queue.json.sock"
    assert paths.key == tmp_path / "q" / "Queue.json.key"
    assert paths.info == tmp_path / "q" / "Queue.json.broker"
    assert paths.log == tmp_path / "q" / "Queue.json.broker.log"


def test_a_socket_path_too_long_for_a_unix_address_is_a_config_error(tmp_path: Path):
    """A queue whose socket path would not fit in sockaddr_un is refused, naming the path."""
    deep = tmp_path / ("d" * 120) / "Queue.json"
    assert len(os.fsencode(deep)) > 107
    with pytest.raises(ConfigError, match="shorter folder") as info:
        wire.broker_paths(deep)
    assert info.value.field == "path"


# Framing: multiprocessing.connection's, written and read by djq itself past the handshake


@pytest.mark.parametrize("size", [0, 5, 70_000])
def test_frame_writes_the_bytes_send_bytes_writes(size: int):
    """``wire.frame`` is ``Connection.send_bytes``' framing, so mpc's handshake and djq's messages mix."""
    from multiprocessing import connection as mpc

    data = os.urandom(size)
    ours, theirs = mpc.Pipe()  # a socket pair on POSIX
    try:
        ours.send_bytes(data)
        sent = b""
        while len(sent) < size + 4:
            sent += os.read(theirs.fileno(), 1 << 20)
        assert sent == wire.frame(data)
        assert wire.frame_size(sent) == (4, size)
    finally:
        ours.close()
        theirs.close()


def test_frame_size_reads_both_forms_and_waits_for_a_whole_prefix():
    long = b"\xff\xff\xff\xff" + (7).to_bytes(8, "big") + b"payload"
    assert wire.frame_size(long) == (12, 7)
    assert wire.frame_size(long[:11]) is None  # the long form's length is not all here
    assert wire.frame_size(b"\0\0\0") is None
    assert wire.frame_size(bytearray(b"\0\0\0\x02hi")) == (4, 2)


@pytest.mark.parametrize(
    "prefix", [(wire.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big"), (-2).to_bytes(4, "big", signed=True)]
)
def test_frame_size_refuses_a_length_over_the_limit_or_negative(prefix: bytes):
    with pytest.raises(ValueError, match="announced a message of"):
        wire.frame_size(prefix)
