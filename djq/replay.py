"""Journal lines applied to a state, and a whole journal checked against its snapshot.

``replay`` is what every reader of journal storage runs on the bytes it has not applied
yet: each complete line decoded (``lines``) and applied by the pure rules
(``state.apply``), a torn last line left alone, anything else that fails corruption.
A put needs only the tasks they add (``count_puts``): its process applies them after it
lets go of the lock.
``check_journal`` reads a journal whole, as ``djq check`` does, and says what is wrong
with it. ``journal`` owns the files; this module reads bytes it is given (and, for
``check_journal``, the two files). Imports from djq: ``errors``, ``files``, ``lines``,
``ops``, ``snapshot``, ``state``, ``storage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import orjson

from . import files, ops, state
from .errors import CorruptQueueError, LeaseError
from .lines import decode_header, decode_line, is_checksummed
from .snapshot import SnapshotFile
from .state import QueueState
from .storage import Problem

__all__ = ["apply_line", "check_journal", "count_puts", "replay"]

#: The tasks a line of each operation that changes a queue adds (None: as many as its payloads).
_ADDS: Final = {name: 0 for name, cls in ops.OPS.items() if cls.writes} | {"put": 1, "put_many": None}


def replay(current: QueueState, data: bytes, start: int, *, path: Path, at: int) -> tuple[int, int]:
    """Apply every complete line of ``data`` from ``start`` to ``current``.

    ``at`` is where ``data`` starts in the journal at ``path`` (for error messages).
    Returns the bytes applied and where in ``data`` the last applied line starts (-1: none).

    Raises:
        CorruptQueueError: a line before the last does not decode or does not apply.
    """
    pos, last = start, -1
    while (end := data.find(b"\n", pos)) >= 0:
        try:
            event, now = decode_line(data[pos:end])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if data.find(b"\n", end + 1) < 0 and not is_checksummed(data[pos:end]):
                break  # the last line is damaged: torn, never applied
            raise CorruptQueueError(path=str(path), reason=f"bad line at byte {at + pos}: {exc}") from None
        apply_line(current, event, now, path=path, at=at + pos)
        pos, last = end + 1, pos
    return pos - start, last


def count_puts(data: bytes, start: int) -> tuple[int, int, int] | None:
    """Count the tasks the complete lines of ``data`` from ``start`` add, without applying them.

    What a put needs of the lines others wrote: how many tasks they added (its ids follow
    on). Each line's checksum is checked and its JSON read; ``replay`` judges the rest
    when it applies them. Returns the bytes counted, the tasks they add and where the last
    counted line starts (-1: none); None when a line is not plainly an operation that
    changes a queue (a torn last line, say): ``replay`` must decide what it is.
    """
    pos, last, tasks = start, -1, 0
    while (end := data.find(b"\n", pos)) >= 0:
        line = data[pos:end]
        if not is_checksummed(line):
            return None
        try:
            fields = orjson.loads(line[9:])
            adds = _ADDS[fields["op"]]
            if adds is None:
                payloads = fields["payloads"]
                adds = len(payloads) if type(payloads) is list else -1
        except (ValueError, KeyError, TypeError):  # not an object, or an unknown operation
            return None
        if adds < 0:
            return None
        tasks += adds
        pos, last = end + 1, pos
    return pos - start, tasks, last


def apply_line(current: QueueState, op: ops.Op[Any], now: float, *, path: Path, at: int) -> None:
    """Apply one decoded line, the line at byte ``at`` of the journal at ``path``.

    Raises:
        CorruptQueueError: the rules cannot take it (a checksum-valid line with a bad value).
    """
    try:
        state.advance(current, op, now=now)
    except Exception as exc:
        kind = "" if isinstance(exc, LeaseError) else f"{type(exc).__name__}: "
        reason = f"line at byte {at} does not apply: {kind}{exc}"
        raise CorruptQueueError(path=str(path), reason=reason) from None


def check_journal(snapshot_file: SnapshotFile, path: Path) -> list[Problem]:
    """Read the snapshot and the journal at ``path`` afresh; return what is wrong with the journal.

    A torn last line, or bytes other than zeros after the journal's end (its first NUL),
    is a fixable "torn" problem; a bad header, a generation ahead of the snapshot's, or a
    bad line before the last is "corrupt"; a journal older than the snapshot is fine.
    """
    try:
        snapshot = snapshot_file.load()
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except (OSError, CorruptQueueError) as exc:
        return [Problem("io" if not isinstance(exc, CorruptQueueError) else "corrupt", str(exc))]
    end = data.find(b"\n")
    if end < 0:
        return [Problem("corrupt", f"{path}: no complete header line")] if data else []
    try:
        generation = decode_header(data[:end], path)
    except CorruptQueueError as exc:
        return [Problem("corrupt", str(exc))]
    if generation < snapshot.generation:
        return []  # folded already; the next write replaces it
    if generation > snapshot.generation:
        return [
            Problem(
                "corrupt", f"{path}: generation {generation} is ahead of the snapshot's {snapshot.generation}"
            )
        ]
    stop = data.find(0, end + 1)
    body = data if stop < 0 else data[:stop]  # the journal ends at its first NUL
    try:
        applied, _ = replay(snapshot.state, body, end + 1, path=path, at=0)
    except CorruptQueueError as exc:
        return [Problem("corrupt", str(exc))]
    torn = len(body) - (end + 1) - applied
    junk = stop >= 0 and not files.only_zeros(data, stop)
    found = [f"a torn last line of {torn} bytes"] if torn else []
    found += [f"bytes other than zeros after its end (byte {stop})"] if junk else []
    message = f"{path}: {' and '.join(found)} (never applied; the next write cuts it)"
    return [Problem("torn", message, fixable=True)] if found else []
