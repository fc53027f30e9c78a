"""The broker's wire format (``djq.wire``): what a request may be, and how errors travel back.

Pure functions on bytes: no broker, no socket, no file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import orjson
import pytest

import djq
from djq import wire
from djq.errors import BrokerError, BrokerProtocolError, ConfigError
from djq.model import EventType, QueueStats, Task, TaskState


def _raw(message: object) -> bytes:
    return orjson.dumps(message)


# Requests


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (EventType.PUT_MANY, {"payloads": [{"n": 1}, "x"], "priority": 3, "delay": 1.5}),
        (EventType.LEASE, {"lease": 10.0, "timeout": 0.5, "owner": "w1"}),
        (EventType.ACK, {"id": "1", "token": "abc"}),
        (EventType.NACK, {"id": "1", "token": "abc", "delay": 2.0}),
        (EventType.EXTEND, {"id": "1", "token": "abc", "lease": 5.0}),
        (EventType.REQUEUE, {"id": "1"}),
        (EventType.PURGE, {"dead_only": True}),
        (EventType.STATS, {}),
        (EventType.PEEK, {"limit": 3}),
        (EventType.DEAD, {}),
        (EventType.CHECK, {"fix": False}),
        (EventType.PING, {}),
        (EventType.METRICS, {"rows": True}),
        (EventType.SHUTDOWN, {}),
    ],
)
def test_every_request_the_client_sends_decodes_to_the_same_op_and_arguments(op, args):
    """encode_request then decode_request gives back the op and exactly its arguments."""
    request = wire.decode_request(wire.encode_request(op, **args))
    assert request.op is op
    assert request.args == args


def test_omitted_arguments_get_the_queues_defaults():
    """A request may leave out optional arguments: delay 0, priority 0, limit 10, flags False."""
    assert wire.decode_request(_raw({"op": "put_many", "payloads": [1]})).args == {
        "payloads": [1],
        "priority": 0,
        "delay": 0.0,
    }
    assert wire.decode_request(_raw({"op": "peek"})).args == {"limit": 10}
    assert wire.decode_request(_raw({"op": "purge"})).args == {"dead_only": False}
    lease = wire.decode_request(_raw({"op": "lease"})).args
    assert lease == {"lease": None, "timeout": None, "owner": None}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{",
        b"\xff\xfe\x00",
        b'{"op": "put_many", "payloads": [1]} trailing',
    ],
)
def test_a_request_that_is_not_json_is_a_protocol_error(data):
    """Bytes that are not one JSON document are refused as a protocol error."""
    with pytest.raises(BrokerProtocolError, match="not JSON"):
        wire.decode_request(data)


@pytest.mark.parametrize("message", [[], ["op", "stats"], "stats", 1, None, True])
def test_a_request_that_is_not_an_object_is_a_protocol_error(message):
    """A JSON array, string, number or null is not a request."""
    with pytest.raises(BrokerProtocolError, match="JSON object"):
        wire.decode_request(_raw(message))


@pytest.mark.parametrize(
    "message",
    [{}, {"op": "nope"}, {"op": None}, {"op": 3}, {"op": ["stats"]}, {"op": {"x": 1}}, {"OP": "stats"}],
)
def test_a_request_without_an_op_the_broker_serves_is_a_protocol_error(message):
    """A missing, unknown or non-string op is refused."""
    with pytest.raises(BrokerProtocolError, match="'op'"):
        wire.decode_request(_raw(message))


@pytest.mark.parametrize(
    "message",
    [
        {"op": "put", "payload": 1},  # an event type, but not a request: clients send put_many
        {"op": "reap"},
        {"op": "stats", "limit": 1},
        {"op": "put_many", "payloads": [1], "max_attempts": 99},
        {"op": "ack", "id": "1", "token": "t", "lease": 1.0},
        {"op": "shutdown", "now": True},
    ],
)
def test_unexpected_arguments_are_a_protocol_error(message):
    """An op the broker does not take as a request, or any argument the op does not take, is refused."""
    with pytest.raises(BrokerProtocolError, match="bad arguments"):
        wire.decode_request(_raw(message))


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"op": "put_many", "payloads": "abc"}, "payloads"),
        ({"op": "put_many", "payloads": {"n": 1}}, "payloads"),
        ({"op": "put_many", "payloads": [1], "priority": 1.5}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": "high"}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": True}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": False}, "priority"),
        ({"op": "put_many", "payloads": [1], "priority": 0.0}, "priority"),
        ({"op": "put_many", "payloads": [1], "delay": -1}, "delay"),
        ({"op": "put_many", "payloads": [1], "delay": "soon"}, "delay"),
        ({"op": "lease", "lease": 0}, "lease"),
        ({"op": "lease", "lease": 10**9}, "lease"),
        ({"op": "lease", "timeout": -0.5}, "timeout"),
        ({"op": "lease", "timeout": True}, "timeout"),
        ({"op": "lease", "owner": 7}, "owner"),
        ({"op": "ack", "id": 1, "token": "t"}, "id"),
        ({"op": "ack", "id": "1", "token": None}, "token"),
        ({"op": "nack", "id": "1", "token": "t", "delay": -3}, "delay"),
        ({"op": "extend", "id": "1", "token": "t", "lease": "long"}, "lease"),
        ({"op": "requeue", "id": ["1"]}, "id"),
        ({"op": "peek", "limit": "5"}, "limit"),
        ({"op": "peek", "limit": 2.0}, "limit"),
        ({"op": "peek", "limit": True}, "limit"),
    ],
)
def test_a_bad_argument_value_is_a_config_error_naming_the_field(message, field):
    """An argument of the right name with a value the direct Queue would refuse names its field."""
    with pytest.raises(ConfigError) as info:
        wire.decode_request(_raw(message))
    assert info.value.field == field


def test_the_priority_check_matches_the_direct_queue(tmp_path: Path):
    """A priority the direct Queue refuses (0.0, False) is refused by the wire too."""
    with djq.Queue(tmp_path / "Queue.json", fsync=False) as q:
        for priority in (0.0, False):
            with pytest.raises(ConfigError):
                q.put("x", priority=priority)  # type: ignore[arg-type]
            with pytest.raises(ConfigError):
                wire.decode_request(_raw({"op": "put_many", "payloads": ["x"], "priority": priority}))


# Replies


def test_an_ok_reply_returns_its_value():
    """encode_ok then decode_reply gives the value back, including None and falsy values."""
    for value in (None, 0, "", [], {"a": [1, 2]}, ["1", "2"]):
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


def test_tasks_and_stats_are_rebuilt_and_malformed_ones_refused():
    """task_from_json and stats_from_json rebuild the dataclasses; other shapes are protocol errors."""
    task = {
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
    rebuilt = wire.task_from_json(orjson.loads(wire.encode_ok(task))["ok"])
    assert isinstance(rebuilt, Task)
    assert rebuilt.state is TaskState.LEASED
    assert rebuilt.token == "t"
    for bad in ({**task, "state": "lost"}, {"id": "1"}, None, [1]):
        with pytest.raises(BrokerProtocolError, match="malformed task"):
            wire.task_from_json(bad)
    with pytest.raises(BrokerProtocolError, match="malformed stats"):
        wire.stats_from_json({"ready": 1})
    assert isinstance(wire.stats_from_json(_stats_fields()), QueueStats)


def _stats_fields() -> dict[str, int]:
    return {f.name: 0 for f in dataclasses.fields(QueueStats)}


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
