"""The broker's wire: requests and replies as orjson bytes, and the files beside the queue.

A request is one JSON object ``{"op": <EventType value>, ...arguments}``; a reply is
``{"ok": value}`` or ``{"error": {"type": <djq error class>, "attrs": {...}}}``. Both
travel with ``Connection.send_bytes``/``recv_bytes``: nothing is ever unpickled, and an
error class is rebuilt only if it is one of djq's own. Everything a client sends is
checked here, with the same checks as the direct ``Queue``, before the broker acts on it.
Imports from djq: ``errors``, ``model``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from . import errors
from .errors import BrokerProtocolError, ConfigError, DjqError
from .model import (
    JSON,
    MAX_LEASE_DURATION,
    MIN_LEASE_DURATION,
    EventType,
    QueueStats,
    Task,
    TaskState,
    check_priority,
    check_seconds,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "BrokerPaths",
    "Request",
    "broker_paths",
    "config_fields",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_ok",
    "encode_request",
    "stats_from_json",
    "task_from_json",
]

MAX_BATCH: Final = 10_000  #: most tasks one get_many may lease
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
    queue = Path(os.path.abspath(queue_path))
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
    """One decoded, checked request."""

    op: EventType
    args: dict[str, Any]


def encode_request(op: EventType, **args: JSON) -> bytes:
    """Return the bytes of one request."""
    return orjson.dumps({"op": op.value, **args})


_ARGS: Final[dict[EventType, tuple[str, ...]]] = {
    EventType.PUT_MANY: ("payloads", "priority", "delay"),
    EventType.LEASE: ("lease", "timeout", "owner"),
    EventType.LEASE_MANY: ("n", "lease", "timeout", "owner"),
    EventType.ACK: ("id", "token"),
    EventType.ACK_MANY: ("leases",),
    EventType.NACK: ("id", "token", "delay"),
    EventType.EXTEND: ("id", "token", "lease"),
    EventType.REQUEUE: ("id",),
    EventType.PURGE: ("dead_only",),
    EventType.STATS: (),
    EventType.PEEK: ("limit",),
    EventType.DEAD: (),
    EventType.CHECK: ("fix",),
    EventType.PING: (),
    EventType.METRICS: ("rows",),
    EventType.SHUTDOWN: (),
}


def decode_request(data: bytes) -> Request:
    """Parse and check one request; the arguments are exactly those its op takes.

    Raises:
        BrokerProtocolError: not JSON, not an object, an unknown op or wrong arguments.
        ConfigError: an argument of the right name has a bad value (naming it).
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BrokerProtocolError(f"a request is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BrokerProtocolError(f"a request must be a JSON object, not {type(message).__name__}")
    try:
        op = EventType(message.pop("op", None))
    except ValueError:
        raise BrokerProtocolError("a request needs an 'op' the broker serves") from None
    names = _ARGS.get(op)
    if names is None or set(message) - set(names):
        raise BrokerProtocolError(f"bad arguments for {op.value!r}: {sorted(message)}")
    args = {name: message.get(name) for name in names}
    _check_args(op, args)
    return Request(op, args)


def _check_args(op: EventType, args: dict[str, Any]) -> None:
    for name in ("id", "token"):
        if name in args and not isinstance(args[name], str):
            raise ConfigError(f"{name} must be a string, not {args[name]!r}", field=name)
    if "delay" in args:
        args["delay"] = 0.0 if args["delay"] is None else args["delay"]
        check_seconds("delay", args["delay"], low=0.0, high=math.inf)
    if "lease" in args:
        check_seconds("lease", args["lease"], low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)
    if "timeout" in args:
        check_seconds("timeout", args["timeout"], low=0.0, high=math.inf)
    if op is EventType.PUT_MANY:
        args["priority"] = 0 if args["priority"] is None else args["priority"]
        check_priority(args["priority"])
        if not isinstance(args["payloads"], list):
            raise ConfigError("payloads must be a list", field="payloads")
    if "n" in args and (type(args["n"]) is not int or not 1 <= args["n"] <= MAX_BATCH):
        raise ConfigError(f"n must be an integer from 1 to {MAX_BATCH}, not {args['n']!r}", field="n")
    if "leases" in args:
        leases = args["leases"]
        if not isinstance(leases, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in leases
        ):
            raise ConfigError("leases must be a list of [id, token] string pairs", field="leases")
    if "owner" in args and not isinstance(args["owner"], str | None):
        raise ConfigError(f"owner must be a string, not {args['owner']!r}", field="owner")
    if "limit" in args:
        args["limit"] = 10 if args["limit"] is None else args["limit"]
        if type(args["limit"]) is not int:
            raise ConfigError(f"limit must be an integer, not {args['limit']!r}", field="limit")
    for flag in ("dead_only", "fix", "rows"):
        if flag in args:
            args[flag] = bool(args[flag])


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


def task_from_json(value: Any) -> Task:
    """Rebuild a ``Task`` from its reply object."""
    try:
        return Task(**{**value, "state": TaskState(value["state"])})
    except (TypeError, KeyError, ValueError) as exc:
        raise BrokerProtocolError(f"the broker sent a malformed task: {exc}") from None


def stats_from_json(value: Any) -> QueueStats:
    """Rebuild ``QueueStats`` from its reply object."""
    try:
        return QueueStats(**value)
    except TypeError as exc:
        raise BrokerProtocolError(f"the broker sent malformed stats: {exc}") from None


def config_fields(config: Any) -> dict[str, Any]:
    """Return a ``QueueConfig`` as a JSON object (paths as strings)."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
