"""The broker's wire: operations and replies as orjson bytes, and the files beside the queue.

A request is one JSON object: an operation in ``ops``' one codec plus how long a lease
may wait (``{"op": "lease", "token": ..., "owner": ..., "duration": ..., "wait": 5.0}``),
or one of the broker's own messages (``ping``, ``metrics``, ``shutdown``). A reply is
``{"ok": value}`` or ``{"error": {"type": <djq error class>, "attrs": {...}}}``. Both
travel in ``multiprocessing.connection``'s framing (a 4-byte big-endian signed length, or
-1 then an 8-byte one, then the bytes; ``frame`` and ``frame_size``), so the handshake can
be ``multiprocessing``'s own; past it, both sides frame the messages themselves, on their
sockets' descriptors (a call's reply is one read, not ``recv_bytes``' two). A message is at
most ``MAX_MESSAGE_BYTES``; nothing is ever unpickled, and an error class is rebuilt only
if it is one of djq's own. Everything a client sends is
checked here with the same checks the client ran when it built the operation (the broker's
trust boundary). The first message of every connection is a hello naming the protocol
version; a client and a broker of different versions part with one clear error.
Imports from djq: ``errors``, ``model``, ``ops``.
"""

from __future__ import annotations

import math
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from . import errors, ops
from .errors import BrokerProtocolError, ConfigError, DjqError, PayloadError
from .model import JSON, QueueStats, Task, TaskState, _check_path, check_seconds

__all__ = [
    "CONTROL",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL",
    "BrokerPaths",
    "Request",
    "broker_paths",
    "check_hello",
    "decode_reply",
    "decode_request",
    "decode_result",
    "encode_control",
    "encode_error",
    "encode_hello",
    "encode_ok",
    "encode_request",
    "frame",
    "frame_size",
]

R = TypeVar("R")
PROTOCOL: Final = 2  #: the wire's version: 1 was djq 0.1 (no hello); 2 sends operations in ops' codec
CONTROL: Final = {"ping": (), "metrics": ("rows",), "shutdown": ()}  #: the broker's own messages, their args
MAX_MESSAGE_BYTES: Final = 64 << 20  #: largest request or reply; a longer one closes the connection
_MAX_UNIX_PATH: Final = 107  #: bytes in sockaddr_un.sun_path, less the terminating NUL


@dataclass(frozen=True, slots=True)
class BrokerPaths:
    """The files a broker keeps beside ``Queue.json`` (all owner-only)."""

    queue: Path
    socket: Path  #: the Unix socket clients connect to
    key: Path  #: the authkey, 0600, new at every start
    info: Path  #: JSON {pid, address, started_at}; the broker holds an flock on it while alive
    log: Path  #: stdout and stderr of a broker started in the background


def broker_paths(queue_path: str | os.PathLike[str]) -> BrokerPaths:
    """Return the broker's files for a queue file (absolute; the socket path must fit).

    Raises:
        ConfigError: the socket path is longer than a Unix socket address allows.
    """
    queue = Path(os.path.abspath(_check_path(queue_path)))  # ConfigError "path" unless it names a file
    socket = queue.with_name(queue.name + ".sock")
    if len(os.fsencode(socket)) > _MAX_UNIX_PATH:
        raise ConfigError(
            f"the broker's socket path {socket} is longer than the {_MAX_UNIX_PATH} bytes a Unix "
            "socket allows; use a queue file in a shorter folder",
            field="path",
        )
    return BrokerPaths(
        queue=queue,
        socket=socket,
        key=queue.with_name(queue.name + ".key"),
        info=queue.with_name(queue.name + ".broker"),
        log=queue.with_name(queue.name + ".broker.log"),
    )


# Requests


@dataclass(frozen=True, slots=True)
class Request:
    """One decoded, checked request: an operation (with its wait) or a control message."""

    op: ops.Op[Any] | None = None
    wait: float | None = 0.0  #: seconds a lease may wait for a task; None: as long as it takes
    control: str = ""  #: "ping", "metrics" or "shutdown" when ``op`` is None
    args: dict[str, Any] = field(default_factory=dict)


def frame(data: bytes) -> bytes:
    """Return ``data`` framed as ``multiprocessing.connection.Connection.send_bytes`` frames it."""
    size = len(data)
    return (struct.pack("!i", size) if size <= 0x7FFF_FFFF else struct.pack("!iQ", -1, size)) + data


def frame_size(head: bytes | bytearray) -> tuple[int, int] | None:
    """Return (header bytes, body bytes) of the message ``head`` begins; None if its prefix is not all here.

    Raises:
        ValueError: the prefix announces a negative message or one over ``MAX_MESSAGE_BYTES``.
    """
    if len(head) < 4:
        return None
    (size,) = struct.unpack_from("!i", head)
    header = 4
    if size == -1:  # the long form: 8 more bytes of length
        if len(head) < 12:
            return None
        (size,) = struct.unpack_from("!Q", head, 4)
        header = 12
    if not 0 <= size <= MAX_MESSAGE_BYTES:
        raise ValueError(f"announced a message of {size} bytes (the limit is {MAX_MESSAGE_BYTES})")
    return header, size


def socket_timeouts(fd: int, seconds: float) -> None:
    """Make blocking reads and writes on socket ``fd`` fail after ``seconds`` (0: wait for ever)."""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock = socket.socket(fileno=os.dup(fd))  # shares the socket, so its options
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.close()


def encode_request(op: ops.Op[Any], wait: float | None = 0.0) -> bytes:
    """Return the bytes of one operation (and, for a lease, how long it may wait)."""
    doc: dict[str, JSON] = {"op": op.name, **op.to_json()}
    if op.waits:
        doc["wait"] = wait
    return orjson.dumps(doc)


def encode_control(name: str, **args: JSON) -> bytes:
    """Return the bytes of one of the broker's own messages."""
    return orjson.dumps({"op": name, **args})


def encode_hello() -> bytes:
    """Return the first message of a connection: this side's protocol version."""
    return orjson.dumps({"hello": PROTOCOL})


def check_hello(data: bytes) -> None:
    """Accept a peer's hello, or raise naming both versions.

    Raises:
        BrokerProtocolError: not a hello, or another protocol version.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        message = None
    version = message.get("hello") if isinstance(message, dict) else None
    if version != PROTOCOL:
        raise BrokerProtocolError(
            f"protocol mismatch: this side speaks djq wire protocol {PROTOCOL}, the other "
            f"{'1 (djq 0.1) or unknown' if version is None else version}; run the same djq on both"
        )


def decode_request(data: bytes, *, max_payload_bytes: int) -> Request:
    """Parse and check one request, with the checks the client ran when it built it.

    Raises:
        BrokerProtocolError: not JSON, not an object, or an unknown operation.
        ConfigError: a field is missing, unknown or has a bad value (naming it).
        PayloadError: a payload is over ``max_payload_bytes``.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BrokerProtocolError(f"a request is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BrokerProtocolError(f"a request must be a JSON object, not {type(message).__name__}")
    name = message.get("op")
    if not isinstance(name, str) or (name not in ops.OPS and name not in CONTROL):
        raise BrokerProtocolError(f"a request needs an 'op' the broker serves, not {name!r:.40}")
    if name in CONTROL:
        return _control(name, message)
    wait = message.pop("wait", 0.0)
    op = ops.from_json(message)
    if op.waits:
        check_seconds("wait", wait, low=0.0, high=math.inf)
    elif wait != 0.0:
        raise ConfigError(f"only a lease may wait, not {op.name!r}", field="wait")
    _check_sizes(op, max_payload_bytes)
    return Request(op=op, wait=None if wait is None or wait == math.inf else wait)


def _control(name: str, message: dict[str, Any]) -> Request:
    args = {k: v for k, v in message.items() if k != "op"}
    if set(args) - set(CONTROL[name]):
        raise BrokerProtocolError(f"bad arguments for {name!r}: {sorted(args)}")
    return Request(control=name, args={k: bool(args.get(k)) for k in CONTROL[name]})


def _check_sizes(op: ops.Op[Any], limit: int) -> None:
    """A payload that came as JSON survives the round trip: only its size is left to check."""
    payloads = (
        op.payloads if isinstance(op, ops.PutMany) else (op.payload,) if isinstance(op, ops.Put) else ()
    )
    for payload in payloads:
        size = len(orjson.dumps(payload))
        if size > limit:
            raise PayloadError(f"payload is {size} bytes encoded, over the limit of {limit}")


# Replies
def encode_ok(value: Any) -> bytes:
    """Return the bytes of a successful reply (tasks and stats travel as objects)."""
    return orjson.dumps({"ok": value})


def encode_error(exc: BaseException) -> bytes:
    """Return the bytes of a failed reply; anything not djq's own becomes a ``BrokerError``."""
    if isinstance(exc, DjqError):
        name, attrs = type(exc).__name__, exc._attrs
    else:
        name, attrs = "BrokerError", {"message": f"the broker failed: {type(exc).__name__}: {exc}"}
    try:
        return orjson.dumps({"error": {"type": name, "attrs": attrs}})
    except TypeError:
        return orjson.dumps({"error": {"type": name, "attrs": {"message": str(exc)}}})


def decode_reply(data: bytes) -> Any:
    """Return a reply's value, or raise the djq error it carries.

    Raises:
        BrokerProtocolError: the reply is not one the broker sends.
        DjqError: the error the broker reported (``LeaseLost``, ``ConfigError``, ...).
    """
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BrokerProtocolError(f"the broker's reply is not JSON: {exc}") from None
    if isinstance(reply, dict) and "ok" in reply:
        return reply["ok"]
    error = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(error, dict):
        raise BrokerProtocolError(f"the broker's reply has neither ok nor error: {reply!r:.200}")
    raise _rebuild(error.get("type"), error.get("attrs"))


def _rebuild(name: Any, attrs: Any) -> DjqError:
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, DjqError) and isinstance(attrs, dict)):
        return BrokerProtocolError(f"the broker sent an unknown error: {name!r}")
    try:
        return cls(**attrs)
    except TypeError:
        return cls(str(attrs.get("message", "")))


# Results: how each operation's result (``Op.result`` names its kind) comes back from JSON


def decode_result(op: ops.Op[R], value: Any) -> R:
    """Rebuild ``op``'s result from its JSON form (a broker's reply).

    Raises:
        ValueError: the value is not a result of this operation.
    """
    try:
        result: R = _RESULTS[op.result](value)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not a result of {op.name!r}: {exc}") from None
    return result


def _task(value: Any) -> Task:
    return Task(**{**value, "state": TaskState(value["state"])})


def _list(values: Any) -> list[Any]:
    if type(values) is not list:
        raise TypeError(f"expected a list, not {type(values).__name__}")
    return values


_RESULTS: Final[dict[str, Callable[[Any], Any]]] = {
    "none": lambda value: None,
    "ids": lambda values: [str(v) for v in _list(values)],
    "task": _task,
    "task?": lambda value: None if value is None else _task(value),
    "tasks": lambda values: [_task(v) for v in _list(values)],
    "state": TaskState,
    "count": int,
    "stats": lambda value: QueueStats(**value),
    "strings": lambda values: [str(v) for v in _list(values)],
}
