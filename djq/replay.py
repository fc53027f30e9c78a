"""Journal lines applied to a state, and a whole journal checked against its snapshot.

``replay`` is what every reader of journal storage runs on the bytes it has not applied
yet: each complete line decoded (``lines``) and applied by the pure rules
(``state.apply``), a torn last line left alone, anything else that fails corruption.
``check_journal`` reads a journal whole, as ``djq check`` does, and says what is wrong
with it. ``journal`` owns the files; this module reads bytes it is given (and, for
``check_journal``, the two files). Imports from djq: ``errors``, ``files``, ``lines``,
``snapshot``, ``state``, ``storage``.
"""

from __future__ import annotations

from pathlib import Path

from . import files, state
from .errors import CorruptQueueError, LeaseError
from .lines import decode_header, decode_line, is_checksummed
from .snapshot import SnapshotFile
from .state import QueueState
from .storage import Problem

__all__ = ["check_journal", "replay"]


def replay(current: QueueState, data: bytes, start: int, *, path: Path, at: int) -> tuple[int, int]:
    """Apply every complete line of ``data`` from ``start`` to ``current``.

    ``at`` is where ``data`` starts in the journal at ``path`` (for error messages).
    Returns the bytes applied and where in ``data`` the last applied line starts (-1: none).

    Raises:
        CorruptQueueError: a line before the last does not decode or does not apply.
    """
    pos, last = start, -1
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return pos - start, last  # a torn last line (or none): never applied
        try:
            event, now = decode_line(data[pos:end])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if data.find(b"\n", end + 1) < 0 and not is_checksummed(data[pos:end]):
                return pos - start, last  # the last line is damaged: torn, never applied
            raise CorruptQueueError(path=str(path), reason=f"bad line at byte {at + pos}: {exc}") from None
        try:
            state.apply(current, event, now=now)
        except Exception as exc:  # a checksum-valid line with a value the rules cannot take
            kind = "" if isinstance(exc, LeaseError) else f"{type(exc).__name__}: "
            raise CorruptQueueError(
                path=str(path), reason=f"line at byte {at + pos} does not apply: {kind}{exc}"
            ) from None
        pos, last = end + 1, pos


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
