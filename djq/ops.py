"""The operations: everything a client can ask of a queue, each one frozen dataclass.

This is the one vocabulary every part of djq speaks. An operation is built by the client
API with every argument resolved (defaults, lease tokens, the owner, ``max_attempts``)
and is **validated when built**: a bad field raises ``ConfigError`` naming it, before any
lock, socket or query. The same object is applied by the state machine
(``state.apply``), written to the journal and sent to the broker, with **one codec**:
``op.to_json()`` and ``ops.from_json(doc)``. A server backend executes it itself.

``OPS`` maps each operation's name (what the journal and the wire write in ``"op"``) to
its class. Adding an operation: its dataclass here and its ``OPS`` entry, its rule in
``state``, its method in ``api.BaseQueue``, and the CLI.

Example:
    >>> op = Nack(id="1", token="t1", delay=2.0)
    >>> op.to_json()
    {'id': '1', 'token': 't1', 'delay': 2.0}
    >>> from_json({"op": "nack", "id": "1", "token": "t1", "delay": 2.0}) == op
    True
    >>> Nack(id="1", token="t1", delay=-1.0)
    Traceback (most recent call last):
    ...
    djq.errors.ConfigError: delay must be between 0 and 3.15576e+09 s, not -1.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, TypeVar, dataclass_transform

import orjson

from .errors import ConfigError, PayloadError
from .model import (
    DEFAULT_MAX_ATTEMPTS,
    JSON,
    MAX_DELAY,
    MAX_LEASE_DURATION,
    MIN_LEASE_DURATION,
    QueueStats,
    Task,
    TaskState,
    check_priority,
    check_seconds,
)

__all__ = [
    "MAX_BATCH",
    "MAX_PEEK",
    "MAX_TEXT",
    "OPS",
    "Ack",
    "AckLease",
    "AckMany",
    "Check",
    "Dead",
    "Extend",
    "LeaseMany",
    "LeaseNext",
    "Nack",
    "Op",
    "Peek",
    "Pop",
    "Purge",
    "Put",
    "PutMany",
    "Reap",
    "Release",
    "Requeue",
    "Stats",
    "check_payload",
    "from_json",
    "nothing",
]

R = TypeVar("R")
MAX_BATCH: Final = 10_000  #: most tasks one get_many may lease
MAX_PEEK: Final = 100_000  #: most tasks one peek may list
MAX_TEXT: Final = 200  #: longest owner, token or task id, in characters


# One check, one encoder and one decoder per field name: the same name means the same thing
# in every operation.


def _seconds(name: str, value: Any, *, low: float, high: float) -> None:
    if value is None:
        raise ConfigError(f"{name} must be a number of seconds, not None", field=name)
    check_seconds(name, value, low=low, high=high)


def _string(name: str, value: Any) -> None:
    """A task id: any string a file can hold (even "": the rule refuses an id no task has)."""
    if type(value) is not str or len(value) > MAX_TEXT or not _encodable(value):
        raise ConfigError(
            f"{name} must be a string of at most {MAX_TEXT} characters, not {value!r:.80}", field=name
        )


def _text(name: str, value: Any) -> None:
    """An owner or a token: a short, non-empty, printable string (which is valid UTF-8 too)."""
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT or not value.isprintable():
        raise ConfigError(
            f"{name} must be a printable string of 1 to {MAX_TEXT} characters, not {value!r:.80}",
            field=name,
        )


def _encodable(text: str) -> bool:
    """True if ``text`` is valid UTF-8 when encoded: no lone surrogates (what orjson refuses)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _positive(name: str, value: Any, high: int = 1 << 31) -> None:
    if type(value) is not int or not 1 <= value <= high:
        raise ConfigError(f"{name} must be an integer from 1 to {high}, not {value!r:.80}", field=name)


def _tokens(name: str, value: Any) -> None:
    if type(value) is not tuple or not 1 <= len(value) <= MAX_BATCH:
        raise ConfigError(f"{name} must be 1 to {MAX_BATCH} tokens", field=name)
    for token in value:
        if type(token) is not str or not 0 < len(token) <= MAX_TEXT or not token.isprintable():
            _text(name, token)  # raises, naming the field


def _leases(name: str, value: Any) -> None:
    if type(value) is not tuple or not all(type(p) is tuple and len(p) == 2 for p in value):
        raise ConfigError(f"{name} must be (id, token) pairs", field=name)
    for task_id, token in value:  # the common case in one test per pair; else the full checks
        if type(task_id) is not str or len(task_id) > MAX_TEXT or not task_id.isascii():
            _string("id", task_id)
        if type(token) is not str or not 0 < len(token) <= MAX_TEXT or not token.isprintable():
            _text("token", token)


def _states(name: str, value: Any) -> None:
    if value is not None and not (type(value) is frozenset and all(type(s) is TaskState for s in value)):
        raise ConfigError(f"{name} must be a set of task states or None, not {value!r:.80}", field=name)


def _flag(name: str, value: Any) -> None:
    if type(value) is not bool:
        raise ConfigError(f"{name} must be True or False, not {value!r:.80}", field=name)


def _limit(name: str, value: Any) -> None:
    if type(value) is not int or not 0 <= value <= MAX_PEEK:
        raise ConfigError(f"{name} must be an integer from 0 to {MAX_PEEK}, not {value!r:.80}", field=name)


def _payloads(name: str, value: Any) -> None:
    if type(value) is not tuple:
        raise ConfigError(f"{name} must be a tuple of payloads", field=name)


def _priority(name: str, value: Any) -> None:
    if type(value) is not int or not -(1 << 63) <= value < 1 << 63:  # the common case in one test
        check_priority(value)


def _delay(name: str, value: Any) -> None:
    if type(value) is not float or not 0.0 <= value <= MAX_DELAY:  # the common case in one test
        _seconds(name, value, low=0.0, high=MAX_DELAY)


def _duration(name: str, value: Any) -> None:
    """A lease's duration is what the user passed as ``lease``: the error names that."""
    if type(value) is not float or not MIN_LEASE_DURATION <= value <= MAX_LEASE_DURATION:
        _seconds("lease", value, low=MIN_LEASE_DURATION, high=MAX_LEASE_DURATION)


_CHECKS: Final[dict[str, Callable[[str, Any], None] | None]] = {
    "payload": None,  # checked by check_payload, against the config's limit
    "payloads": _payloads,
    "priority": _priority,
    "delay": _delay,
    "max_attempts": _positive,
    "token": _text,
    "next_token": _text,
    "tokens": _tokens,
    "owner": _text,
    "duration": _duration,
    "id": _string,  # an id no task has is the rule's to refuse (LeaseLost, UnknownTask)
    "leases": _leases,
    "states": _states,
    "limit": _limit,
    "fix": _flag,
}
_ENCODE: Final[dict[str, Callable[[Any], Any]]] = {
    "states": lambda states: None if states is None else sorted(states),
}


_TASK_STATES: Final = {s.value: s for s in TaskState}


def _state_set(names: list[Any]) -> Any:
    """The task states a list names; anything that names none is left for ``_states`` to refuse."""
    states = [_TASK_STATES.get(n) if type(n) is str else None for n in names]
    return frozenset(states) if None not in states else names


def _tuple(value: Any) -> Any:
    """A JSON list as the tuple an operation holds; anything else is left for the field's check."""
    return tuple(value) if type(value) is list else value


_DECODE: Final[dict[str, Callable[[Any], Any]]] = {
    "payloads": _tuple,
    "tokens": _tuple,
    "leases": lambda pairs: tuple(_tuple(p) for p in pairs) if type(pairs) is list else pairs,
    "states": lambda states: _state_set(states) if type(states) is list else states,
}


class Op(Generic[R]):
    """One operation; ``R`` is the type of its result.

    Class attributes: ``name`` (its key in ``OPS``), ``writes`` (it may change the queue:
    the journal records it and the broker batches it), ``waits`` (a lease: a client may
    wait for it), ``result`` (how its result travels as JSON: ``wire.decode_result``).
    """

    __slots__ = ()
    name: ClassVar[str]
    writes: ClassVar[bool] = True
    waits: ClassVar[bool] = False
    result: ClassVar[str] = "none"
    _fields: ClassVar[tuple[str, ...]] = ()

    _checks: ClassVar[tuple[tuple[str, Callable[[str, Any], None]], ...]] = ()
    _encoders: ClassVar[tuple[tuple[str, Callable[[Any], Any]], ...]] = ()
    _decoders: ClassVar[tuple[tuple[str, Callable[[Any], Any]], ...]] = ()

    def __post_init__(self) -> None:
        """Check every field with the one check of its name (``_CHECKS``)."""
        for name, check in self._checks:
            check(name, getattr(self, name))

    def to_json(self) -> dict[str, JSON]:
        """Return the fields as JSON-ready values (the journal's and the wire's codec)."""
        doc = {name: getattr(self, name) for name in self._fields}
        for name, encode in self._encoders:
            doc[name] = encode(doc[name])
        return doc


@dataclass_transform(kw_only_default=True, frozen_default=True)
def _op(
    name: str, *, writes: bool = True, waits: bool = False, result: str = "none"
) -> Callable[[type], type]:
    """Make a class a frozen operation named ``name`` and enter it in ``OPS``."""

    def register(cls: type) -> type:
        cls.name, cls.writes, cls.waits, cls.result = name, writes, waits, result  # type: ignore[attr-defined]
        made: Any = dataclass(frozen=True, slots=True, kw_only=True)(cls)
        made._fields = fields = tuple(f.name for f in dataclasses.fields(made))
        # per class, once: no lookups per build, no call for a field with nothing to check or decode
        made._checks = tuple((n, check) for n in fields if (check := _CHECKS[n]) is not None)
        made._encoders = tuple((n, _ENCODE[n]) for n in fields if n in _ENCODE)
        made._decoders = tuple((n, _DECODE[n]) for n in fields if n in _DECODE)
        OPS[name] = made
        return made  # type: ignore[no-any-return]

    return register


OPS: Final[dict[str, type[Op[Any]]]] = {}  #: every operation, by the name the journal and wire use


# Operations that change the queue


@_op("put", result="ids")
class Put(Op[list[str]]):
    """Append one task (djq 0.1 wrote these; ``put`` now builds a ``PutMany``)."""

    payload: JSON
    priority: int = 0
    delay: float = 0.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


@_op("put_many", result="ids")
class PutMany(Op[list[str]]):
    """Append tasks in order, each leasable ``delay`` seconds from now."""

    payloads: tuple[JSON, ...]
    priority: int = 0
    delay: float = 0.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


@_op("lease", waits=True, result="task?")
class LeaseNext(Op[Task | None]):
    """Reclaim expired leases, then lease the next task to ``owner`` under ``token``."""

    token: str
    owner: str
    duration: float


@_op("lease_many", waits=True, result="tasks")
class LeaseMany(Op[list[Task]]):
    """Lease up to ``len(tokens)`` tasks to ``owner``, each under its own token."""

    tokens: tuple[str, ...]
    owner: str
    duration: float


@_op("pop", waits=True, result="task?")
class Pop(Op[Task | None]):
    """Reclaim expired leases, then take the next task for good, at most once: it leaves in the same write."""


@_op("ack_lease", result="task?")
class AckLease(Op[Task | None]):
    """Ack the lease ``id``/``token``, then lease the next task under ``next_token``: one lock, one write.

    Not a waiting operation: the ack must happen now. ``ack_and_get`` waits with a ``LeaseNext``.
    """

    id: str
    token: str
    next_token: str
    owner: str
    duration: float


@_op("ack")
class Ack(Op[None]):
    """Finish a leased task."""

    id: str
    token: str


@_op("ack_many", result="ids")
class AckMany(Op[list[str]]):
    """Finish every ``(id, token)`` lease that still holds; the result names the lost ones."""

    leases: tuple[tuple[str, str], ...]


@_op("nack", result="state")
class Nack(Op[TaskState]):
    """Give a leased task back, leasable again after ``delay`` seconds."""

    id: str
    token: str
    delay: float = 0.0


@_op("release")
class Release(Op[None]):
    """Give a leased task back as if it was never delivered: ready at once, its attempt uncounted."""

    id: str
    token: str


@_op("extend", result="task")
class Extend(Op[Task]):
    """Renew a lease for ``duration`` seconds from now."""

    id: str
    token: str
    duration: float


@_op("requeue", result="task")
class Requeue(Op[Task]):
    """Move a dead task back to ready, its attempts reset."""

    id: str


@_op("purge", result="count")
class Purge(Op[int]):
    """Remove every task in ``states`` (every task when None)."""

    states: frozenset[TaskState] | None = None


@_op("reap", result="ids")
class Reap(Op[list[str]]):
    """Reclaim every expired lease."""


# Operations that only read


@_op("stats", writes=False, result="stats")
class Stats(Op[QueueStats]):
    """Count the tasks in each state."""


@_op("peek", writes=False, result="tasks")
class Peek(Op[list[Task]]):
    """Up to ``limit`` ready tasks in delivery order, without leasing them."""

    limit: int = 10


@_op("dead", writes=False, result="tasks")
class Dead(Op[list[Task]]):
    """The dead letters."""


@_op("check", writes=False, result="strings")
class Check(Op[list[str]]):
    """Validate the stored queue; with ``fix``, repair only what is safe to repair."""

    fix: bool = False


# The codec


def from_json(doc: Any) -> Op[Any]:
    """Build the operation a JSON object describes: ``{"op": name, **fields}``.

    Raises:
        ConfigError: an unknown operation, a missing or unknown field, or a bad value.
    """
    if type(doc) is not dict:
        raise ConfigError(f"an operation must be a JSON object, not {type(doc).__name__}", field="op")
    fields = dict(doc)
    cls = OPS.get(fields.pop("op", None))
    if cls is None:
        raise ConfigError(f"unknown operation {doc.get('op')!r}", field="op")
    for name, decode in cls._decoders:
        if name in fields:
            fields[name] = decode(fields[name])
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad fields for {cls.name!r}: {exc}", field="op") from None


def nothing(op: Op[R]) -> R:
    """What a lease returns when no task came: None for one, [] for many."""
    return [] if isinstance(op, LeaseMany) else None  # type: ignore[return-value]


def check_payload(payload: JSON, *, max_bytes: int) -> JSON:
    """Return a private copy of ``payload`` after checking it survives a JSON round trip.

    Raises:
        PayloadError: orjson cannot write it, it reads back different (NaN, infinities,
            tuples, dates, dataclasses, ...), or it encodes to more than ``max_bytes``.
    """
    try:
        data = orjson.dumps(payload)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise PayloadError(f"payload is not JSON that djq can store: {exc}") from exc
    if len(data) > max_bytes:
        raise PayloadError(f"payload is {len(data)} bytes encoded, over the limit of {max_bytes}")
    copy = orjson.loads(data)
    if copy != payload or not _same_types(copy, payload):
        raise PayloadError(
            "payload does not survive a JSON round trip unchanged (NaN or infinity, a tuple, "
            f"a date, a dataclass or another non-JSON type?): {data[:80]!r}"
        )
    return copy


def _same_types(copy: Any, original: Any) -> bool:
    """Check what ``==`` forgives: 1 == 1.0 == True, and -0.0 == 0.0 are different JSON.

    Called after ``copy == original`` held, so both have the same shape. Scalars inside a
    dict or list are compared in the loop; only nested containers recurse.
    """
    kind = type(copy)
    if kind is not type(original):
        return False
    if kind is dict:
        pairs: Any = ((value, original[key]) for key, value in copy.items())
    elif kind is list:
        pairs = zip(copy, original, strict=True)
    else:
        return True
    for value, other in pairs:
        inner = type(value)
        if inner is not type(other) or ((inner is dict or inner is list) and not _same_types(value, other)):
            return False
    return True
