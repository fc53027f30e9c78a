"""The codec (``encode``/``decode``), ``check_payload`` and ``QueueFile`` on a real folder."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import errno
import math
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

import djq
import djq.engine
import djq.files
import djq.locks
import djq.storage
from djq.errors import CorruptQueueError, PayloadError, StorageError, UnsupportedVersion
from djq.files import temp_files
from djq.model import TaskState
from djq.ops import check_payload
from djq.snapshot import FORMAT, VERSION, decode, encode
from djq.state import QueueState, ack, lease, nack, put
from djq.storage import QueueFile

WHERE = "some/dir/Queue.json"


def _state() -> QueueState:
    """A small state with a ready, a leased, a dead and a delayed task (ids 2, 3, 4, 5)."""
    s = QueueState()
    put(s, {"n": 1}, now=10.0)
    put(s, ["a", 1, 1.5, True, None], priority=3, now=11.0)
    put(s, "text", max_attempts=1, now=12.0)
    put(s, 7, priority=-2, now=13.0)
    put(s, {"later": {"deep": [1, {"x": False}]}}, delay=100.0, now=14.0)
    first = lease(s, token="t-1", owner="pid-1", duration=30.0, now=20.0)
    assert first is not None
    ack(s, first.id, "t-1", now=21.0)  # the priority-3 task leaves
    held = lease(s, token="t-2", owner="pid-2", duration=30.0, now=22.0)  # {"n": 1}
    assert held is not None
    dying = lease(s, token="t-3", owner="pid-3", duration=30.0, now=23.0)  # "text"
    assert dying is not None
    assert nack(s, dying.id, "t-3", now=24.0) is TaskState.DEAD
    return s


def _doc() -> dict[str, Any]:
    """The decoded JSON document of ``_state()``: tasks[0] is leased, [1] dead, [2] ready."""
    doc = orjson.loads(encode(_state()))
    assert [t["state"] for t in doc["tasks"]] == ["leased", "dead", "ready", "ready"]
    return doc


def _corrupt(doc: object) -> CorruptQueueError:
    with pytest.raises(CorruptQueueError) as info:
        decode(orjson.dumps(doc), WHERE)
    assert type(info.value) is CorruptQueueError
    assert info.value.path == WHERE
    assert WHERE in str(info.value)
    return info.value


# The codec: round trip


def test_encode_decode_round_trip():
    s = _state()
    data = encode(s)
    back = decode(data, WHERE).state
    assert back == s
    assert list(back.tasks) == list(s.tasks)  # put order survives
    assert encode(back) == data  # and the bytes are stable


def test_round_trip_of_an_empty_state():
    s = QueueState()
    assert decode(encode(s), WHERE).state == s


def test_encoded_file_has_the_header():
    doc = orjson.loads(encode(QueueState()))
    assert doc["format"] == FORMAT
    assert doc["version"] == VERSION
    assert doc["tasks"] == []


def test_round_trip_keeps_bools_ints_and_floats_apart():
    s = QueueState()
    payload = {"t": True, "one": 1, "f": 1.0, "z": -0.0, "big": 2**64 - 1, "neg": -(2**63)}
    put(s, payload, now=0.5)
    got = decode(encode(s), WHERE).state.tasks["1"].payload
    assert got == payload
    assert [type(v) for v in got.values()] == [bool, int, float, float, int, int]
    assert math.copysign(1.0, got["z"]) == -1.0


def test_decode_accepts_a_path_object():
    state = decode(encode(_state()), Path(WHERE)).state
    assert len(state.tasks) == 4


def test_decode_accepts_surrounding_whitespace():
    assert decode(b"\n " + encode(_state()) + b"\n", WHERE).state == _state()


# The codec: every validation rule names its field

COUNTERS = ["revision", "next_seq", "put_total", "acked_total", "dead_total"]
TASK_FIELDS = [
    "id",
    "seq",
    "state",
    "priority",
    "attempts",
    "max_attempts",
    "enqueued_at",
    "available_at",
    "lease",
    "payload",
]


@pytest.mark.parametrize("key", COUNTERS)
@pytest.mark.parametrize("value", [None, -1, 1.0, "3", True, [1]])
def test_counter_must_be_a_non_negative_integer(key: str, value: object):
    doc = _doc()
    doc[key] = value
    assert f'"{key}"' in _corrupt(doc).reason


@pytest.mark.parametrize("key", COUNTERS)
def test_counter_missing(key: str):
    doc = _doc()
    del doc[key]
    assert f'"{key}"' in _corrupt(doc).reason


@pytest.mark.parametrize("value", [None, "1", 1.0, True])
def test_version_must_be_an_integer(value: object):
    doc = _doc()
    doc["version"] = value
    assert '"version"' in _corrupt(doc).reason


def test_version_missing():
    doc = _doc()
    del doc["version"]
    assert '"version"' in _corrupt(doc).reason


@pytest.mark.parametrize("value", [0, -1])
def test_version_below_one_is_unknown(value: int):
    doc = _doc()
    doc["version"] = value
    assert f"version {value}" in _corrupt(doc).reason


@pytest.mark.parametrize("value", [VERSION + 1, 99])
def test_newer_version_is_unsupported(value: int):
    doc = _doc()
    doc["version"] = value
    with pytest.raises(UnsupportedVersion) as info:
        decode(orjson.dumps(doc), WHERE)
    assert isinstance(info.value, CorruptQueueError)
    assert info.value.path == WHERE
    assert str(value) in info.value.reason
    assert "newer" in info.value.reason


@pytest.mark.parametrize("value", [None, {}, "x", 3])
def test_tasks_must_be_a_list(value: object):
    doc = _doc()
    doc["tasks"] = value
    assert '"tasks"' in _corrupt(doc).reason


def test_tasks_missing():
    doc = _doc()
    del doc["tasks"]
    assert '"tasks"' in _corrupt(doc).reason


@pytest.mark.parametrize("item", [None, 1, "task", [], [1, 2], True])
def test_task_must_be_an_object(item: object):
    doc = _doc()
    doc["tasks"][1] = item
    assert _corrupt(doc).reason == "tasks[1]: not an object"


@pytest.mark.parametrize("field", TASK_FIELDS)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_task_field_missing(field: str, index: int):
    doc = _doc()
    del doc["tasks"][index][field]
    reason = _corrupt(doc).reason
    assert reason.startswith(f"tasks[{index}]: ")
    assert "missing" in reason
    assert field in reason


def test_several_missing_fields_are_all_named():
    doc = _doc()
    del doc["tasks"][2]["seq"]
    del doc["tasks"][2]["attempts"]
    assert _corrupt(doc).reason == "tasks[2]: missing attempts, seq"


BAD_VALUES = [
    ("id", 5),
    ("id", ""),
    ("id", None),
    ("id", ["1"]),
    ("seq", "3"),
    ("seq", 0),
    ("seq", -1),
    ("seq", 3.0),
    ("seq", True),
    ("seq", None),
    ("state", "done"),
    ("state", "READY"),
    ("state", "unknown"),
    ("state", 1),
    ("state", None),
    ("state", ["ready"]),
    ("state", {"ready": 1}),
    ("priority", "0"),
    ("priority", 0.5),
    ("priority", None),
    ("priority", True),
    ("attempts", -1),
    ("attempts", "1"),
    ("attempts", 1.0),
    ("attempts", False),
    ("max_attempts", 0),
    ("max_attempts", "5"),
    ("max_attempts", 5.0),
    ("enqueued_at", "now"),
    ("enqueued_at", None),
    ("enqueued_at", True),
    ("enqueued_at", [1.0]),
    ("available_at", "soon"),
    ("available_at", None),
    ("available_at", {"t": 1}),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
@pytest.mark.parametrize("index", [0, 2])
def test_task_field_wrong_value(field: str, value: object, index: int):
    """Wrong types and values are a CorruptQueueError naming the field, never a TypeError."""
    doc = _doc()
    doc["tasks"][index][field] = value
    reason = _corrupt(doc).reason
    assert reason.startswith(f"tasks[{index}]: ")
    assert f'"{field}"' in reason


def test_unknown_state_is_named():
    doc = _doc()
    doc["tasks"][2]["state"] = "paused"
    reason = _corrupt(doc).reason
    assert '"state"' in reason
    assert "paused" in reason


def test_duplicate_task_ids():
    doc = _doc()
    doc["tasks"][2]["id"] = doc["tasks"][0]["id"]
    reason = _corrupt(doc).reason
    assert reason.startswith("tasks[2]: ")
    assert "duplicate id" in reason
    assert repr(doc["tasks"][0]["id"]) in reason


@pytest.mark.parametrize("offset", [0, 1, 100])
def test_seq_must_be_below_next_seq(offset: int):
    doc = _doc()
    doc["tasks"][2]["seq"] = doc["next_seq"] + offset
    reason = _corrupt(doc).reason
    assert reason.startswith("tasks[2]: ")
    assert '"next_seq"' in reason
    assert "seq" in reason


def test_leased_task_without_lease():
    doc = _doc()
    doc["tasks"][0]["lease"] = None
    reason = _corrupt(doc).reason
    assert reason.startswith("tasks[0]: ")
    assert '"lease"' in reason


@pytest.mark.parametrize("index", [1, 2])
def test_lease_on_a_task_that_is_not_leased(index: int):
    doc = _doc()
    doc["tasks"][index]["lease"] = {"owner": "me", "token": "t", "expires_at": 5.0}
    reason = _corrupt(doc).reason
    assert reason.startswith(f"tasks[{index}]: ")
    assert '"lease"' in reason


@pytest.mark.parametrize(
    "lease",
    [
        {"token": "t", "expires_at": 5.0},
        {"owner": "me", "expires_at": 5.0},
        {"owner": "me", "token": "t"},
        {"owner": 1, "token": "t", "expires_at": 5.0},
        {"owner": "me", "token": None, "expires_at": 5.0},
        {"owner": "me", "token": "t", "expires_at": "later"},
        {"owner": "me", "token": "t", "expires_at": None},
        {"owner": "me", "token": "t", "expires_at": True},
        "t-2",
        [],
        ["me", "t", 5.0],
        7,
    ],
)
def test_malformed_lease(lease: object):
    doc = _doc()
    doc["tasks"][0]["lease"] = lease
    reason = _corrupt(doc).reason
    assert reason.startswith("tasks[0]: ")
    assert '"lease"' in reason


@pytest.mark.parametrize(
    "doc",
    [
        {"hello": 1},
        {},
        [],
        [1, 2],
        1,
        "djq.queue",
        None,
        True,
        {"format": "other.queue", "version": 1, "tasks": []},
        {"format": FORMAT.upper(), "version": 1},
        {"version": 1, "tasks": []},
    ],
)
def test_foreign_json_is_not_a_djq_queue(doc: object):
    assert "not a djq queue" in _corrupt(doc).reason


# The codec: bytes that are not a queue at all


def _decode_corrupt(data: bytes) -> CorruptQueueError:
    with pytest.raises(CorruptQueueError) as info:
        decode(data, WHERE)
    assert type(info.value) is CorruptQueueError
    assert info.value.path == WHERE
    return info.value


def test_empty_bytes():
    assert _decode_corrupt(b"").reason == "the file is empty"


@pytest.mark.parametrize("data", [b" ", b"\n", b"\t\r\n "])
def test_whitespace_only(data: bytes):
    assert "not valid JSON" in _decode_corrupt(data).reason


def test_truncated_at_every_offset_is_corrupt_and_nothing_else():
    data = encode(_state())
    assert len(data) > 500
    for n in range(len(data)):
        with pytest.raises(CorruptQueueError) as info:
            decode(data[:n], WHERE)
        assert type(info.value) is CorruptQueueError, n
        assert info.value.path == WHERE, n


@pytest.mark.parametrize(
    "make",
    [
        lambda data: b"\0" * 64,
        lambda data: b"\0",
        lambda data: data[:200] + b"\0" * 32 + data[200:],
        lambda data: data[:200] + b"\0" * 32,
        lambda data: data + b"\0" * 32,
        lambda data: b"\0" * 32 + data,
        lambda data: data[:100] + b"\0" + data[101:],
    ],
    ids=[
        "all-nul",
        "one-nul",
        "nul-run-inside",
        "nul-tail-after-cut",
        "nul-padding",
        "nul-prefix",
        "nul-byte",
    ],
)
def test_nul_bytes(make: Callable[[bytes], bytes]):
    _decode_corrupt(make(encode(_state())))


def test_invalid_utf8():
    data = encode(_state())
    assert b'"text"' in data
    _decode_corrupt(data.replace(b'"text"', b'"te\xffxt"'))
    _decode_corrupt(data.replace(b'"text"', b'"te\xc3xt"'))  # a cut multi-byte sequence
    _decode_corrupt(data.replace(b'"text"', b'"\xed\xa0\x80"'))  # an encoded lone surrogate


def test_byte_order_mark():
    _decode_corrupt(b"\xef\xbb\xbf" + encode(_state()))


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_files(codec: str):
    _decode_corrupt(encode(_state()).decode().encode(codec))


def test_deep_nesting_in_the_file_is_rejected():
    _decode_corrupt(b"[" * 100_000 + b"]" * 100_000)
    doc = _doc()
    payload = b"[" * 100_000 + b"]" * 100_000
    doc["tasks"][2]["payload"] = "PAYLOAD"
    _decode_corrupt(orjson.dumps(doc).replace(b'"PAYLOAD"', payload))


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_non_finite_numbers_in_the_file(number: bytes):
    doc = _doc()
    doc["tasks"][2]["enqueued_at"] = "NUMBER"
    _decode_corrupt(orjson.dumps(doc).replace(b'"NUMBER"', number))


def test_trailing_garbage_after_the_document():
    _decode_corrupt(encode(_state()) + b"{}")


# check_payload


@pytest.mark.parametrize(
    "payload",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,  # orjson writes unsigned 64-bit integers too
        0.5,
        -0.0,
        1e300,
        "",
        "héllo ✓ 😀",
        "with \0 nul",
        [],
        {},
        [1, "a", None, [2.5, {"k": [True]}]],
        {"a": {"b": {"c": [1, 2, 3]}}, "": 0, "ü": "x"},
    ],
)
def test_check_payload_accepts_json_values(payload: object):
    copy = check_payload(payload, max_bytes=1 << 20)
    assert copy == payload
    assert type(copy) is type(payload)


def test_check_payload_returns_a_private_copy():
    payload = {"a": [1, 2]}
    copy = check_payload(payload, max_bytes=100)
    assert copy == payload
    assert copy is not payload
    assert copy["a"] is not payload["a"]
    payload["a"].append(3)
    assert copy == {"a": [1, 2]}


@pytest.mark.parametrize(
    "payload",
    [
        {"a": True},
        {"a": 1},
        {"a": 1.0},
        [True, 1, 1.0, False, 0, 0.0],
        {"nested": [{"x": True}, {"x": 1}, {"x": 1.0}]},
    ],
)
def test_check_payload_keeps_bool_int_and_float_apart(payload: object):
    copy = check_payload(payload, max_bytes=1000)
    assert orjson.dumps(copy) == orjson.dumps(payload)
    assert repr(copy) == repr(payload)


def test_check_payload_keeps_the_sign_of_zero():
    assert math.copysign(1.0, check_payload(-0.0, max_bytes=10)) == -1.0


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Name(enum.StrEnum):
    ADA = "ada"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def _nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return outer


class _Sub(dict):
    pass


REFUSED = {
    "nan": float("nan"),
    "inf": math.inf,
    "-inf": -math.inf,
    "nan-inside": {"a": [1.0, float("nan")]},
    "tuple": (1, 2),
    "tuple-inside": {"a": (1, 2)},
    "empty-tuple": (),
    "set": {1, 2},
    "frozenset": frozenset({1}),
    "bytes": b"abc",
    "bytearray": bytearray(b"abc"),
    "int-key": {1: "a"},
    "none-key": {None: "a"},
    "tuple-key": {(1, 2): "a"},
    "bool-key": {True: "a"},
    "int-2**64": 2**64,
    "int--2**63-1": -(2**63) - 1,
    "huge-int-inside": [1, 10**30],
    "datetime": datetime.datetime(2026, 1, 2, 3, 4, 5),
    "date": datetime.date(2026, 1, 2),
    "time": datetime.time(3, 4),
    "uuid": uuid.UUID(int=7),
    "decimal": decimal.Decimal("1.5"),
    "dataclass": Point(1, 2),
    "enum": Color.RED,
    "int-enum": Level.HIGH,
    "str-enum": Name.ADA,
    "dict-subclass": _Sub(a=1),
    "object": object(),
    "lone-surrogate": "\ud800",
    "too-deep": _nested(300),
    "far-too-deep": _nested(100_000),
}


@pytest.mark.parametrize("payload", list(REFUSED.values()), ids=list(REFUSED))
def test_check_payload_refuses(payload: object):
    with pytest.raises(PayloadError) as info:
        check_payload(payload, max_bytes=1 << 20)
    assert isinstance(info.value, ValueError)


def test_check_payload_allows_moderate_nesting():
    assert check_payload(_nested(100), max_bytes=1000) == _nested(100)


def test_check_payload_size_limit_is_on_the_encoded_bytes():
    payload = "x" * 98  # 100 bytes encoded, with the quotes
    assert check_payload(payload, max_bytes=100) == payload
    with pytest.raises(PayloadError, match="101 bytes encoded, over the limit of 100"):
        check_payload(payload + "x", max_bytes=100)


def test_check_payload_refuses_a_large_payload_with_a_small_message():
    with pytest.raises(PayloadError) as info:
        check_payload("x" * (2 << 20), max_bytes=1 << 20)
    assert len(str(info.value)) < 200


def test_check_payload_error_chains_the_orjson_error():
    with pytest.raises(PayloadError) as info:
        check_payload({1, 2}, max_bytes=100)
    assert isinstance(info.value.__cause__, TypeError)


# QueueFile


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q" / "Queue.json"


def test_load_of_a_missing_file_is_an_empty_state_and_writes_nothing(path: Path):
    qf = QueueFile(path)
    assert qf.load() == QueueState()
    assert qf.reads == 0
    assert not path.parent.exists()
    assert qf.file_bytes() == 0


def test_save_then_load_elsewhere(path: Path):
    QueueFile(path).save(_state())
    assert QueueFile(path).load() == _state()
    assert path.read_bytes() == encode(_state())


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_write_creates_0600_even_with_umask_000(path: Path, fsync: bool):
    with _umask(0o000):
        QueueFile(path, fsync=fsync).save(_state())
        assert _mode(path) == 0o600
        QueueFile(path, fsync=fsync).save(QueueState())  # a replacement is 0600 too
    assert _mode(path) == 0o600


def test_file_mode_is_exact_whatever_the_umask(path: Path):
    with _umask(0o077):
        QueueFile(path, mode=0o640).save(_state())
    assert _mode(path) == 0o640


def test_new_folder_is_0700_even_with_umask_000(path: Path):
    with _umask(0o000):
        QueueFile(path).save(_state())
    assert _mode(path.parent) == 0o700


def test_every_new_folder_is_0700_even_with_umask_000(tmp_path: Path):
    path = tmp_path / "a" / "b" / "c" / "Queue.json"
    with _umask(0o000):
        QueueFile(path).save(_state())
    modes = {p.name: oct(_mode(p)) for p in (tmp_path / "a", tmp_path / "a" / "b", path.parent)}
    assert modes == {"a": "0o700", "b": "0o700", "c": "0o700"}


def test_an_existing_folder_keeps_its_mode(path: Path):
    with _umask(0o022):
        path.parent.mkdir(mode=0o750)
        QueueFile(path).save(_state())
    assert _mode(path.parent) == 0o750


def test_save_replaces_the_file_never_rewrites_it(path: Path):
    qf = QueueFile(path)
    qf.save(_state())
    with path.open("rb") as reader:  # a reader of the old version keeps a whole old version
        old_inode = os.fstat(reader.fileno()).st_ino
        qf.save(QueueState())
        assert os.stat(path).st_ino != old_inode
        assert reader.read() == encode(_state())
    assert path.read_bytes() == encode(QueueState())
    assert qf.writes == 2
    assert temp_files(path) == []


def test_file_is_read_only_when_changed(path: Path):
    writer = QueueFile(path)
    writer.save(_state())
    assert writer.reads == 0
    assert writer.load() == _state()  # its own write is cached, not read back
    assert writer.reads == 0

    reader = QueueFile(path)
    assert reader.has_changed()
    first = reader.load()
    assert reader.reads == 1
    assert reader.load() is first
    assert reader.load() is first
    assert reader.reads == 1
    assert not reader.has_changed()

    changed = _state()
    put(changed, "new", now=50.0)
    writer.save(changed)  # another QueueFile writes: the reader must notice
    assert reader.has_changed()
    assert reader.load() == changed
    assert reader.reads == 2
    assert reader.load() == changed
    assert reader.reads == 2

    assert writer.load() is changed
    assert writer.reads == 0


def test_same_size_rewrite_is_noticed(path: Path):
    a, b = QueueState(), QueueState()
    put(a, "aaaa", now=1.0)
    put(b, "bbbb", now=1.0)
    assert len(encode(a)) == len(encode(b))
    writer, reader = QueueFile(path), QueueFile(path)
    writer.save(a)
    assert reader.load() == a
    writer.save(b)
    assert reader.load() == b
    assert reader.reads == 2


def test_invalidate_forces_a_read(path: Path):
    qf = QueueFile(path)
    qf.save(_state())
    qf.invalidate()
    assert qf.load() == _state()
    assert qf.reads == 1
    qf.close()
    assert qf.load() == _state()
    assert qf.reads == 2


def test_deleted_file_reads_as_empty(path: Path):
    qf = QueueFile(path)
    qf.save(_state())
    path.unlink()
    assert qf.has_changed()
    assert qf.load() == QueueState()


class _Os:
    """Stands in for the ``os`` module inside ``djq.storage``: the real one plus overrides."""

    def __init__(self, **overrides: Callable[..., Any]) -> None:
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_a_short_writing_os_write_still_writes_everything(path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []

    def short_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return os.write(fd, bytes(data[:7]))

    monkeypatch.setattr(djq.files, "os", _Os(write=short_write))
    QueueFile(path).save(_state())
    monkeypatch.undo()
    assert len(calls) > 10
    assert path.read_bytes() == encode(_state())


def test_symlink_at_the_queue_path_is_refused_on_load(tmp_path: Path):
    target = tmp_path / "target.json"
    QueueFile(target).save(_state())
    before = target.read_bytes()
    link = tmp_path / "Queue.json"
    link.symlink_to(target)
    qf = QueueFile(link)
    with pytest.raises(StorageError) as info:
        qf.load()
    assert info.value.errno == errno.ELOOP
    assert info.value.path == str(link)
    assert not isinstance(info.value, CorruptQueueError)
    with pytest.raises(StorageError):
        qf.load()  # every time: a refusal is not cached
    assert target.read_bytes() == before
    assert link.is_symlink()


def test_dangling_symlink_at_the_queue_path_is_refused(tmp_path: Path):
    link = tmp_path / "Queue.json"
    link.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(StorageError) as info:
        QueueFile(link).load()
    assert info.value.errno == errno.ELOOP
    assert not (tmp_path / "nowhere.json").exists()


def test_save_never_writes_through_a_symlink(tmp_path: Path):
    target = tmp_path / "target.json"
    target.write_bytes(b"not djq's file")
    link = tmp_path / "Queue.json"
    link.symlink_to(target)
    with contextlib.suppress(StorageError):  # whether it is refused: test_save_refuses_a_symlink
        QueueFile(link).save(_state())
    assert target.read_bytes() == b"not djq's file"


def test_save_refuses_a_symlink(tmp_path: Path):
    """RELIABILITY 6.4 #18: a symlink at Queue.json is refused, not silently replaced."""
    target = tmp_path / "target.json"
    target.write_bytes(b"not djq's file")
    link = tmp_path / "Queue.json"
    link.symlink_to(target)
    qf = QueueFile(link)
    with pytest.raises(StorageError) as info:
        qf.save(_state())
    assert info.value.errno == errno.ELOOP
    assert link.is_symlink()
    assert target.read_bytes() == b"not djq's file"
    assert temp_files(link) == []


@pytest.mark.timeout(10)
def test_fifo_at_the_queue_path_is_refused_without_blocking(path: Path):
    path.parent.mkdir()
    os.mkfifo(path, 0o600)
    with pytest.raises(CorruptQueueError) as info:
        QueueFile(path).load()
    assert "not a regular file" in info.value.reason
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


def test_directory_at_the_queue_path_is_refused(path: Path):
    path.mkdir(parents=True)
    (path / "inside").write_bytes(b"x")
    qf = QueueFile(path)
    with pytest.raises(CorruptQueueError) as info:
        qf.load()
    assert "not a regular file" in info.value.reason
    with pytest.raises(StorageError) as saved:
        qf.save(_state())
    assert saved.value.errno == errno.EISDIR
    assert (path / "inside").read_bytes() == b"x"
    assert temp_files(path) == []


def test_oversize_file_is_refused_before_reading(path: Path, monkeypatch: pytest.MonkeyPatch):
    path.parent.mkdir()
    with path.open("wb") as f:
        f.truncate(1001)  # sparse
    reads: list[int] = []

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return os.read(fd, n)

    monkeypatch.setattr(djq.files, "os", _Os(read=counting_read))
    with pytest.raises(CorruptQueueError) as info:
        QueueFile(path, max_file_bytes=1000).load()
    assert "1001 bytes" in info.value.reason
    assert "1000" in info.value.reason
    assert reads == []


def test_huge_sparse_file_is_refused_by_the_default_limit(path: Path, monkeypatch: pytest.MonkeyPatch):
    path.parent.mkdir()
    with path.open("wb") as f:
        f.truncate((1 << 30) + 1)

    def no_read(fd: int, n: int) -> bytes:
        raise AssertionError("read a file that is over the limit")

    monkeypatch.setattr(djq.files, "os", _Os(read=no_read))
    with pytest.raises(CorruptQueueError, match="over the limit"):
        QueueFile(path).load()


def test_file_at_the_limit_is_read(path: Path):
    QueueFile(path).save(_state())
    size = path.stat().st_size
    assert QueueFile(path, max_file_bytes=size).load() == _state()


@pytest.mark.parametrize(
    "data", [b"", b"{", b'{"hello": 1}', b"\0" * 10], ids=["empty", "cut", "foreign", "nul"]
)
def test_corrupt_file_is_never_cached(path: Path, data: bytes):
    path.parent.mkdir()
    path.write_bytes(data)
    qf = QueueFile(path)
    for _ in range(2):
        with pytest.raises(CorruptQueueError):
            qf.load()
    assert qf.reads == 0
    assert path.read_bytes() == data


def _leftovers(path: Path) -> list[Path]:
    names = [
        f".{path.name}.123.deadbeef.tmp",
        f".{path.name}.99999.00000000.tmp",
        f".{path.name}.1.x.tmp",
    ]
    made = []
    for name in names:
        made.append(path.parent / name)
        made[-1].write_bytes(b'{"half": ')
    return sorted(made)


def test_temp_files_lists_only_djq_temp_files_of_this_queue(path: Path):
    QueueFile(path).save(_state())
    leftovers = _leftovers(path)
    for decoy in (
        f"{path.name}.tmp",
        f".{path.name}.tmp.bak",
        ".Other.json.1.abcd.tmp",
        f"{path.name}.lock",
        f".{path.name}.1.abcd.tmpx",
    ):
        (path.parent / decoy).write_bytes(b"keep")
    assert temp_files(path) == leftovers


def test_remove_temp_files_removes_leftovers_of_crashed_writers(path: Path):
    qf = QueueFile(path)
    qf.save(_state())
    before = path.read_bytes()
    leftovers = _leftovers(path)
    decoys = [path.parent / f"{path.name}.tmp", path.parent / ".Other.json.1.abcd.tmp"]
    for decoy in decoys:
        decoy.write_bytes(b"keep")
    assert qf.remove_temp_files() == leftovers
    assert temp_files(path) == []
    assert all(d.read_bytes() == b"keep" for d in decoys)
    assert path.read_bytes() == before
    assert qf.remove_temp_files() == []


def test_remove_temp_files_removes_a_symlink_not_its_target(tmp_path: Path, path: Path):
    path.parent.mkdir()
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    link = path.parent / f".{path.name}.1.abcd.tmp"
    link.symlink_to(target)
    assert QueueFile(path).remove_temp_files() == [link]
    assert not link.is_symlink()
    assert target.read_bytes() == b"keep"


def test_temp_files_of_a_missing_folder(tmp_path: Path):
    assert temp_files(tmp_path / "none" / "Queue.json") == []


def test_a_temp_file_is_never_parsed_as_state(path: Path):
    qf = QueueFile(path)
    qf.save(_state())
    _leftovers(path)
    assert QueueFile(path).load() == _state()


# Issue 11: a task's id is its seq


@pytest.mark.parametrize("new_id", ["99", "5", "x", "05", "2"])
def test_a_task_id_that_is_not_its_seq_is_refused(new_id: str):
    """A hand-edited id (at or above next_seq, or any other than str(seq)) would be overwritten by a put."""
    doc = _doc()
    doc["tasks"][2]["id"] = new_id
    reason = _corrupt(doc).reason
    assert reason.startswith("tasks[2]: ")
    assert repr(new_id) in reason


def test_a_hand_edited_id_at_next_seq_never_loses_the_task(tmp_path: Path):
    """The queue is refused as corrupt, so the next put cannot overwrite the edited task."""
    path = tmp_path / "q" / "Queue.json"
    with djq.Queue(path, storage="rewrite", fsync=False) as q:
        q.put("keep")
    doc = orjson.loads(path.read_bytes())
    doc["tasks"][0]["id"] = str(doc["next_seq"])
    path.write_bytes(orjson.dumps(doc))
    before = path.read_bytes()
    with (
        djq.Queue(path, storage="rewrite", fsync=False) as q,
        pytest.raises(CorruptQueueError, match="is not its"),
    ):
        q.put("new")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("lease", ["owner"]), ("state", ["ready"]), ("lease", "x"), ("payload", None), ("seq", True)],
)
def test_a_wrong_typed_task_field_is_corruption(field: str, value: Any):
    doc = _doc()
    doc["tasks"][0][field] = value
    if field == "payload":
        del doc["tasks"][0][field]
    assert _corrupt(doc).reason.startswith("tasks[0]: ")


# Issue 11, RELIABILITY row 28: the lock kind is recorded, and a kind that does not exclude it refused


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("storage", ["rewrite", "journal"])
@pytest.mark.parametrize(("first", "then"), [("flock", "soft"), ("soft", "flock"), ("filelock", "soft")])
def test_a_lock_kind_that_does_not_exclude_the_recorded_one_is_refused(
    tmp_path: Path, storage: str, first: str, then: str
):
    """ConfigError naming both kinds, for reads and writes, before anything is written."""
    path = tmp_path / "q" / "Queue.json"
    with djq.Queue(path, lock=first, storage=storage, fsync=False) as q:
        q.put("a")
    recorded = orjson.loads(djq.engine.lock_kind_path(path).read_bytes())
    assert recorded == {"format": "djq.lockkind", "version": 1, "lock": first}
    before = _files(path.parent)
    with djq.Queue(path, lock=then, storage=storage, fsync=False) as other:
        for call in (lambda: other.put("b"), other.stats, lambda: other.get(), other.check):
            with pytest.raises(djq.ConfigError) as info:
                call()
            assert info.value.field == "lock"
            assert f"lock={first!r}" in str(info.value)
            assert f"lock={then!r}" in str(info.value)
    assert _files(path.parent) == before  # not even a soft lock's marker
    with djq.Queue(path, lock=first, storage=storage, fsync=False) as q:
        assert q.stats().ready == 1


def test_flock_and_filelock_exclude_each_other_so_both_open_the_queue(tmp_path: Path):
    """``filelock`` takes an flock on the same lock file: the two kinds may share a queue."""
    path = tmp_path / "q" / "Queue.json"
    with djq.Queue(path, lock="flock", fsync=False) as q:
        q.put("a")
    with djq.Queue(path, lock="filelock", fsync=False) as q:
        q.put("b")
        assert q.stats().ready == 2


@pytest.mark.parametrize("storage", ["rewrite", "journal"])
def test_a_queue_without_a_recorded_kind_accepts_any_and_records_its_next_writer(
    tmp_path: Path, storage: str
):
    """A djq 0.1 queue has no record: any kind opens it; the first write records that kind."""
    path = tmp_path / "q" / "Queue.json"
    with djq.Queue(path, storage=storage, fsync=False) as q:
        q.put("a")
    djq.engine.lock_kind_path(path).unlink()
    with djq.Queue(path, lock="soft", storage=storage, fsync=False) as q:
        assert q.stats().ready == 1
        assert not djq.engine.lock_kind_path(path).exists()  # a read records nothing
        q.put("b")
    assert orjson.loads(djq.engine.lock_kind_path(path).read_bytes())["lock"] == "soft"
    with djq.Queue(path, storage=storage, fsync=False) as q, pytest.raises(djq.ConfigError):
        q.stats()


def test_a_custom_lock_is_not_checked_or_recorded(tmp_path: Path):
    path = tmp_path / "q" / "Queue.json"
    with djq.Queue(path, lock="soft", fsync=False) as q:
        q.put("a")
    with djq.Queue(path, lock=djq.locks.make("flock", path), fsync=False) as q:
        q.put("b")
        assert q.stats().ready == 2
    assert orjson.loads(djq.engine.lock_kind_path(path).read_bytes())["lock"] == "soft"


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b'{"format": "djq.lockkind", "version": 1, "lock": "spin"}']
)
def test_a_bad_lock_kind_record_is_corruption(tmp_path: Path, data: bytes):
    path = tmp_path / "q" / "Queue.json"
    with djq.Queue(path, fsync=False) as q:
        q.put("a")
    djq.engine.lock_kind_path(path).write_bytes(data)
    with djq.Queue(path, fsync=False) as q:
        with pytest.raises(CorruptQueueError, match="lock kind"):
            q.stats()
        problems = q.check()
        assert any("lock kind" in p for p in problems), problems
